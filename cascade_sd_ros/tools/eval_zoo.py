"""`cascade-sd eval-zoo`: accuracy per stage and acceptance against the target (lossless-greedy).

Prints one JSON object with --json (else a short table): per stage exact_match and shape / colour /
motion accuracy on held-out scenes, decode ms per token, and acceptance of its drafts by the target.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

from cascade_sd_ros.tools.train import _non_negative_int, _positive_int

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--zoo", type=Path, default=None, help="zoo folder (default: the packaged zoo)")
    parser.add_argument("--scenes", type=_positive_int, default=100, help="held-out scenes to evaluate")
    parser.add_argument(
        "--seed",
        type=_non_negative_int,
        default=0,
        help="held-out scene seed (the eval stream never overlaps training scenes)",
    )
    parser.add_argument("--gamma", type=_positive_int, default=4, help="draft length per round")
    parser.add_argument("--max-new-tokens", type=_positive_int, default=24)
    parser.add_argument("--threads", type=_positive_int, default=1, help="torch CPU threads")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--plot", type=Path, default=None, help="also draw per-stage accuracy and acceptance to this PNG"
    )


def plot_report(report: dict, path: Path) -> None:
    """Grouped bars: exact match, shape, colour, motion accuracy and acceptance per stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = ("exact_match", "shape", "colour", "motion", "acceptance")
    stages = list(report["stages"])
    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / len(stages)
    for k, stage in enumerate(stages):
        raw = [report["stages"][stage][m] for m in metrics]  # the target has no acceptance (None)
        values = [float("nan") if v is None else v for v in raw]
        bars = ax.bar([i + k * width for i in range(len(metrics))], values, width, label=stage)
        ax.bar_label(bars, labels=["" if v is None else f"{v:.2f}" for v in raw], fontsize=6)
    ax.set_xticks([i + width * (len(stages) - 1) / 2 for i in range(len(metrics))], metrics)
    ax.set_ylim(0, 1.1)
    ax.set_title(
        f"zoo on {report['scenes']} held-out scenes (acceptance: {report['mode']}, gamma {report['gamma']})", fontsize=9
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    import torch

    from cascade_sd_ros.core.zoo.evaluate import evaluate_zoo
    from cascade_sd_ros.core.zoo.load import ZooFolderError, default_zoo_path, load_zoo

    torch.set_num_threads(args.threads)
    root = args.zoo if args.zoo is not None else default_zoo_path()
    try:
        zoo = load_zoo(root)
    except (ZooFolderError, ValueError) as exc:
        print(f"cascade-sd eval-zoo: error: {exc}", file=sys.stderr)
        return 2
    start = time.monotonic()
    report = evaluate_zoo(zoo, args.scenes, args.seed, gamma=args.gamma, max_new_tokens=args.max_new_tokens)
    report = {
        "zoo": str(root),
        **report,
        "wall_s": round(time.monotonic() - start, 1),
        "machine": f"{platform.machine()} {platform.processor() or ''} torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s)".replace("  ", " "),
    }
    if args.plot is not None:
        plot_report(report, args.plot)
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"zoo {root}: {args.scenes} held-out scenes (seed {args.seed}), {report['mode']}, gamma {args.gamma}")
    print(f"{'stage':8} {'exact':>6} {'shape':>6} {'colour':>6} {'motion':>6} {'ms/tok':>7} {'accept':>7}")
    for name, s in report["stages"].items():
        acc = "-" if s["acceptance"] is None else f"{s['acceptance']:.3f}"
        print(
            f"{name:8} {s['exact_match']:6.3f} {s['shape']:6.3f} {s['colour']:6.3f} {s['motion']:6.3f} "
            f"{s['ms_per_token']:7.2f} {acc:>7}"
        )
    c = report["cascade"]
    print(
        f"cascade acceptance {c['acceptance']}, target forwards/token {c['target_forwards_per_token']}, "
        f"outputs equal to target {c['outputs_equal_target']:.3f}"
    )
    return 0
