"""`cascade-sd distill`: SpecVLM-style online distillation of refiner and drafter toward the target.

Takes model folders (default: the packaged zoo) so the same command serves a real target on a
user's own data: --data FILE.npz with `video` uint8 [N, F, H, W, 3] and `events` uint8 [N, H, W, 3]
(and `captions`, `geometry`, as `cascade-sd train` caches them), at the models' resolution.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cascade_sd_ros.tools.train import _non_negative_int, _positive_float, _positive_int

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--zoo", type=Path, default=None, help="zoo folder with target/refiner/drafter (default: packaged)")
    parser.add_argument("--target", type=Path, default=None, help="target model folder (overrides --zoo)")
    parser.add_argument("--refiner", type=Path, default=None, help="refiner model folder (overrides --zoo)")
    parser.add_argument("--drafter", type=Path, default=None, help="drafter model folder (overrides --zoo)")
    parser.add_argument("--stage", choices=("refiner", "drafter", "both"), default="both", help="students to distil")
    parser.add_argument("--out", type=Path, default=None, help="zoo folder to write (default: the --zoo folder)")
    parser.add_argument("--data", type=Path, default=None, help="own data (.npz); default: synthetic scenes")
    parser.add_argument("--data-dir", type=Path, default=Path("build/zoo-data"), help="synthetic data cache folder")
    parser.add_argument("--samples", type=_positive_int, default=8000, help="fresh synthetic scenes to distil on")
    parser.add_argument("--eval-samples", type=_positive_int, default=200, help="held-out scenes for agreement")
    parser.add_argument("--seed", type=_non_negative_int, default=0)
    parser.add_argument("--steps-scale", type=_positive_float, default=1.0, help="multiply the step count")
    parser.add_argument("--batch-scale", type=_positive_int, default=1, help="multiply the batch size")
    parser.add_argument("--max-minutes", type=_positive_float, default=None, help="wall-time budget per student")
    parser.add_argument("--lambda-logit", type=float, default=1.0, help="weight of the logit cross-entropy")
    parser.add_argument("--lambda-feat", type=float, default=0.1,
                        help="weight of the feature Smooth-L1 (applied where the widths match)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=_positive_int, default=2)
    parser.add_argument("--workers", type=_positive_int, default=1, help="processes rendering synthetic data")
    parser.add_argument("--plot", type=Path, default=Path("build/zoo-train/distill_loss.png"))
    parser.add_argument("--quiet", action="store_true")


def run(args: argparse.Namespace) -> int:
    import torch

    from cascade_sd_ros.core.zoo.distill import DistillWeights
    from cascade_sd_ros.core.zoo.distill_run import DistillSettings, distill_zoo
    from cascade_sd_ros.core.zoo.load import ZooFolderError, default_zoo_path

    if args.lambda_logit < 0 or args.lambda_feat < 0 or args.lambda_logit + args.lambda_feat == 0:
        print("error: --lambda-logit and --lambda-feat must be >= 0 and not both 0", file=sys.stderr)
        return 2
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"error: --device {args.device} but CUDA is not available", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    root = args.zoo if args.zoo is not None else default_zoo_path()
    folders = {s: getattr(args, s) or root / s for s in ("target", "refiner", "drafter")}
    students = ("refiner", "drafter") if args.stage == "both" else (args.stage,)
    settings = DistillSettings(
        seed=args.seed, samples=args.samples, eval_samples=args.eval_samples, data=args.data, data_dir=args.data_dir,
        steps_scale=args.steps_scale, batch_scale=args.batch_scale, max_minutes=args.max_minutes, device=args.device,
        workers=args.workers, weights=DistillWeights(args.lambda_logit, args.lambda_feat), progress=not args.quiet,
    )
    try:
        summary = distill_zoo(folders, students, args.out or root, settings, plot=args.plot)
    except (ZooFolderError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0
