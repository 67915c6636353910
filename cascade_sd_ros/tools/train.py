"""`cascade-sd train`: train the tiny model zoo (target, refiner, drafter) on synthetic scenes.

Renders the dataset once (cached as .npz under --data-dir), trains each stage with teacher-forced
cross-entropy on caption tokens, saves it as a Hugging Face folder under --out, checks it on
held-out scenes, and plots the loss curves to --plot. Reproducible from --seed on a given machine;
--max-minutes caps each stage's wall time.

Nothing it did not make is replaced without being asked: --out is required, a folder inside the
installed package (the shipped zoo) takes --force, and stage folders already in --out are replaced
only with --resume (which continues from them) or --force.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from cascade_sd_ros.core.synth.scene import MAX_OBJECTS, SCENE_OBJECTS

__all__ = ["add_arguments", "run", "check_out"]

_STAGE_CHOICES = ("target", "refiner", "drafter", "all", "head")


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def _positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _object_count(text: str) -> int:
    value = _int(text)
    if not 1 <= value <= MAX_OBJECTS:
        raise argparse.ArgumentTypeError(f"must be 1 to {MAX_OBJECTS}, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stage", choices=_STAGE_CHOICES, default="all", help="which stage(s) to train")
    parser.add_argument("--seed", type=_non_negative_int, default=0, help="seed of data, init and batches")
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="zoo folder to write (a folder inside the package, e.g. the shipped zoo, needs --force)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace stage folders already in --out, or write into the package's own zoo",
    )
    parser.add_argument("--data-dir", type=Path, default=Path("build/zoo-data"), help="dataset cache folder")
    parser.add_argument("--samples", type=_positive_int, default=30000, help="training clips (target, refiner)")
    parser.add_argument(
        "--event-samples", type=_positive_int, default=8000, help="training scenes with simulated events (drafter)"
    )
    parser.add_argument(
        "--eval-samples", type=_positive_int, default=200, help="held-out samples checked after training"
    )
    parser.add_argument(
        "--steps-scale",
        type=_positive_float,
        default=1.0,
        help="multiply every stage's step count (e.g. 0.01 for a smoke run, 3 on a GPU)",
    )
    parser.add_argument(
        "--lr-scale",
        type=_positive_float,
        default=1.0,
        help="multiply every learning rate (e.g. 0.3 to fine-tune with --resume)",
    )
    parser.add_argument("--batch-scale", type=_positive_int, default=1, help="multiply every batch size (GPU)")
    parser.add_argument(
        "--max-minutes",
        type=_positive_float,
        nargs="+",
        default=None,
        metavar="MIN",
        help="wall-time budget per stage (one value for each, or three: target refiner "
        "drafter); the step count shrinks to fit and is recorded in zoo.json",
    )
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--threads", type=_positive_int, default=2, help="torch CPU threads")
    parser.add_argument("--workers", type=_positive_int, default=1, help="processes rendering the dataset")
    parser.add_argument("--plot", type=Path, default=Path("build/zoo-train/loss.png"), help="loss-curve PNG")
    parser.add_argument(
        "--no-grow",
        action="store_true",
        help="train the target from scratch instead of growing it from the trained refiner",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue training from the stage weights already in --out (a fresh schedule)",
    )
    parser.add_argument(
        "--max-objects",
        type=_object_count,
        default=None,
        metavar="N",
        help=f"scenes of 1 to N objects (1-{MAX_OBJECTS}; default: {SCENE_OBJECTS} for the stages, "
        "the target's own mix for --stage head); 3-4 give the 17-23-word captions of busier scenes",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    head = parser.add_argument_group(
        "--stage head (the feature-level draft head and alignment MLP, "
        "distilled from the zoo's own models into --out/head)"
    )
    head.add_argument(
        "--zoo",
        type=Path,
        default=None,
        help="zoo whose target and event drafter the head serves (default: the shipped one)",
    )
    head.add_argument("--head-samples", type=_positive_int, default=1500, help="training scenes with events")
    head.add_argument(
        "--no-video-memory",
        action="store_true",
        help="a head that attends to aligned event tokens only, not to the target's own video tokens "
        "(the ablation; heads made before video memory existed are so)",
    )


def _package_dir() -> Path:
    return Path(__file__).resolve().parents[1]


def check_out(
    out: Path, stages: tuple[str, ...], *, force: bool, keep_ok: bool = False, what: str = "training"
) -> str | None:
    """Why writing ``stages`` into ``out`` would destroy what this run did not make (None: it would not).

    A folder inside the installed package (the shipped zoo) and stage folders already in ``out``
    are replaced only with ``force`` (existing stage folders also with ``keep_ok``: --resume)."""
    resolved = out.resolve()
    if out.exists() and not out.is_dir():
        return f"--out {out} exists and is not a folder"
    package = _package_dir()
    if not force and (resolved == package or package in resolved.parents):
        return (
            f"--out {out} is inside the installed package ({package}); {what} there replaces the shipped "
            "zoo: choose another folder, or add --force"
        )
    existing = [s for s in stages if (out / s).exists()]
    if existing and not (force or keep_ok):
        return (
            f"--out {out} already holds {', '.join(existing)}; {what} would replace "
            f"{'it' if len(existing) == 1 else 'them'}: choose a new folder, or add --force"
        )
    return None


def _run_head(args: argparse.Namespace) -> int:
    import torch

    from cascade_sd_ros.core.head.run import HeadRunSettings, run_head_training

    torch.set_num_threads(args.threads)
    minutes = args.max_minutes[0] if args.max_minutes else 15.0
    settings = HeadRunSettings(
        zoo=args.zoo,
        out=args.out / "head",
        seed=args.seed,
        samples=args.head_samples,
        eval_samples=args.eval_samples,
        steps_scale=args.steps_scale,
        max_minutes=minutes,
        data_dir=args.data_dir,
        workers=args.workers,
        progress=not args.quiet,
        max_objects=args.max_objects,
        video_memory=not args.no_video_memory,
    )
    start = time.monotonic()
    summary = run_head_training(settings)
    summary["wall_s"] = round(time.monotonic() - start, 1)
    print(json.dumps(summary, indent=2))
    return 0


def run(args: argparse.Namespace) -> int:
    stages = ("target", "refiner", "drafter") if args.stage == "all" else (args.stage,)
    if args.max_minutes is not None and len(args.max_minutes) not in (1, 3):
        print(
            "cascade-sd train: error: --max-minutes takes one value or three (target refiner drafter)", file=sys.stderr
        )
        return 2
    why = check_out(args.out, stages, force=args.force, keep_ok=args.resume)
    if why is not None:
        print(f"cascade-sd train: error: {why}", file=sys.stderr)
        return 2
    if args.stage == "head":
        return _run_head(args)
    import torch

    from cascade_sd_ros.core.zoo.pipeline import TrainSettings, train_zoo

    torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"cascade-sd train: error: --device {args.device} but CUDA is not available", file=sys.stderr)
        return 2
    budgets = None
    if args.max_minutes is not None:
        values = args.max_minutes * 3 if len(args.max_minutes) == 1 else args.max_minutes
        budgets = dict(zip(("target", "refiner", "drafter"), values))
    settings = TrainSettings(
        seed=args.seed,
        samples=args.samples,
        event_samples=args.event_samples,
        eval_samples=args.eval_samples,
        steps_scale=args.steps_scale,
        batch_scale=args.batch_scale,
        lr_scale=args.lr_scale,
        max_minutes=budgets,
        device=args.device,
        workers=args.workers,
        data_dir=args.data_dir,
        progress=not args.quiet,
        grow_target=not args.no_grow,
        resume=args.resume,
        max_objects=args.max_objects or SCENE_OBJECTS,
    )
    start = time.monotonic()
    summary = train_zoo(stages, settings, out=args.out, plot=args.plot)
    summary["wall_s"] = round(time.monotonic() - start, 1)
    print(json.dumps(summary, indent=2))
    return 0
