"""`cascade-sd distill`: SpecVLM-style online distillation of refiner and drafter toward the target.

Takes model folders (default: the packaged zoo) so the same command serves a real target on a
user's own data: --data FILE.npz with `video` uint8 [N, F, H, W, 3] and `events` uint8 [N, H, W, 3]
(and `captions`, `geometry`, as `cascade-sd train` caches them), at the models' resolution.

The students (and a copy of the target) are written to --out; stage folders already there, and a
folder inside the installed package (the shipped zoo, the default --zoo), are replaced only with
--force: distilling in place is ``--out ZOO --force``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cascade_sd_ros.tools.train import _non_negative_int, _positive_float, _positive_int, check_out

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--zoo", type=Path, default=None, help="zoo folder with target/refiner/drafter (default: packaged)"
    )
    parser.add_argument("--target", type=Path, default=None, help="target model folder (overrides --zoo)")
    parser.add_argument("--refiner", type=Path, default=None, help="refiner model folder (overrides --zoo)")
    parser.add_argument("--drafter", type=Path, default=None, help="drafter model folder (overrides --zoo)")
    parser.add_argument("--stage", choices=("refiner", "drafter", "both"), default="both", help="students to distil")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="zoo folder to write (default: the --zoo folder, which then needs --force)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace stage folders already in --out (distil in place), or write into the package",
    )
    parser.add_argument("--data", type=Path, default=None, help="own data (.npz); default: synthetic scenes")
    parser.add_argument("--data-dir", type=Path, default=Path("build/zoo-data"), help="synthetic data cache folder")
    parser.add_argument("--samples", type=_positive_int, default=8000, help="fresh synthetic scenes to distil on")
    parser.add_argument("--eval-samples", type=_positive_int, default=200, help="held-out scenes for agreement")
    parser.add_argument("--seed", type=_non_negative_int, default=0)
    parser.add_argument("--steps-scale", type=_positive_float, default=1.0, help="multiply the step count")
    parser.add_argument("--batch-scale", type=_positive_int, default=1, help="multiply the batch size")
    parser.add_argument("--max-minutes", type=_positive_float, default=None, help="wall-time budget per student")
    parser.add_argument("--lambda-logit", type=float, default=1.0, help="weight of the logit cross-entropy")
    parser.add_argument(
        "--lambda-feat",
        type=float,
        default=0.1,
        help="weight of the feature Smooth-L1 (applied where the widths match)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=_positive_int, default=2)
    parser.add_argument("--workers", type=_positive_int, default=1, help="processes rendering synthetic data")
    parser.add_argument("--plot", type=Path, default=Path("build/zoo-train/distill_loss.png"))
    parser.add_argument("--quiet", action="store_true")


def _error(text: str) -> int:
    print(f"cascade-sd distill: error: {text}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    import math

    from cascade_sd_ros.core.zoo.load import ZooFolderError, check_stage_folder, default_zoo_path

    if (
        not (math.isfinite(args.lambda_logit) and math.isfinite(args.lambda_feat))
        or args.lambda_logit < 0
        or args.lambda_feat < 0
        or args.lambda_logit + args.lambda_feat == 0
    ):
        return _error("--lambda-logit and --lambda-feat must be finite, >= 0 and not both 0")
    root = args.zoo if args.zoo is not None else default_zoo_path()
    folders = {s: getattr(args, s) or root / s for s in ("target", "refiner", "drafter")}
    students = ("refiner", "drafter") if args.stage == "both" else (args.stage,)
    if args.data is not None and not args.data.is_file():
        return _error(f"distillation data {args.data} does not exist")
    try:  # the models it reads, before anything is loaded or written
        for stage in ("target", *students):
            check_stage_folder(folders[stage], stage)
    except (ZooFolderError, ValueError) as exc:
        return _error(str(exc))
    out = args.out or root
    replaced = (*students, *(("target",) if folders["target"].resolve() != (out / "target").resolve() else ()))
    why = check_out(out, replaced, force=args.force, what="distilling")
    if why is not None:
        return _error(why)

    import torch

    from cascade_sd_ros.core.zoo.distill import DistillWeights
    from cascade_sd_ros.core.zoo.distill_run import DistillSettings, distill_zoo

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        return _error(f"--device {args.device} but CUDA is not available")
    torch.set_num_threads(args.threads)
    settings = DistillSettings(
        seed=args.seed,
        samples=args.samples,
        eval_samples=args.eval_samples,
        data=args.data,
        data_dir=args.data_dir,
        steps_scale=args.steps_scale,
        batch_scale=args.batch_scale,
        max_minutes=args.max_minutes,
        device=args.device,
        workers=args.workers,
        weights=DistillWeights(args.lambda_logit, args.lambda_feat),
        progress=not args.quiet,
    )
    try:
        summary = distill_zoo(folders, students, out, settings, plot=args.plot)
    except (ZooFolderError, FileNotFoundError, ValueError) as exc:
        if getattr(args, "debug", False):
            raise
        return _error(str(exc))
    print(json.dumps(summary, indent=2))
    return 0
