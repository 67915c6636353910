"""The real nodes as separate processes on zoo scenes: caption latency of the cascade against the
verifier alone (interleaved scene by scene, see ``cascade-sd demo``), per configuration.

For each configuration it prints caption latency p50/p95 (cascade, verifier alone, the target's
bare greedy decode without ROS in this process), the p50 ratio, tokens per verifier step, the
consecutive-accept rate, which draft source supplied the accepted tokens, and where the cascade's
verifier time went (prefill, verification passes, waiting for drafts, the rest). With the verifier's
draft head on (``--param video_verifier:draft_head=auto``) it also prints what the head ran on per
round (the cascade verifier's last /diagnostics: event tokens on time, late, or none).

    .venv/bin/python bench/nodes.py --scenes 10
    .venv/bin/python bench/nodes.py --scenes 10 --configs all,refiner --noise 0,0.1
    .venv/bin/python bench/nodes.py --scenes 10 --alpha 0.5,0.7,0.9   # controlled acceptance (see below)
    .venv/bin/python bench/nodes.py --scenes 10 --max-objects 4       # busier scenes: longer captions

``--alpha``: BENCHMARK-ONLY controlled acceptance (``core/stages/controlled.py``): the drafter's and
refiner's drafts are rewritten so each token is the target's with that probability, their models
still running; the nodes' speed against acceptance, apart from what the zoo's stages happen to know.

Run on a quiet machine: every other process competes with the stages for the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STAGE_SETS = {
    "all": ("drafter", "refiner", "verifier"),
    "refiner": ("refiner", "verifier"),
    "drafter": ("drafter", "verifier"),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--zoo", default="", help="zoo folder with target/ refiner/ drafter/ (default: the shipped one)"
    )
    parser.add_argument("--max-objects", type=int, default=2, help="scenes of 1 to N objects (longer captions)")
    parser.add_argument("--configs", default="all", help=f"comma-separated stage sets from {sorted(STAGE_SETS)}")
    parser.add_argument("--noise", default="0.1", help="comma-separated background activity rates [ev/px/s]")
    parser.add_argument("--one-process", action="store_true", help="compose the stages in one process instead")
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NODE:NAME=VALUE",
        help="node parameter for every configuration (as cascade-sd demo --param)",
    )
    parser.add_argument(
        "--alpha",
        default="",
        help="comma-separated controlled per-token acceptances of the upstream drafts (benchmark only; "
        "empty: the stages' own drafts)",
    )
    parser.add_argument(
        "--measure-offset",
        action="store_true",
        help="the demo's default: the drafter measures the clock offset (default here: the true one, pinned, "
        "so the figures compare with earlier sessions'; --alpha always pins it)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON line per configuration")
    args = parser.parse_args()
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")

    from transformers.utils import logging as hf_logging

    from cascade_sd_ros.tools.demo import run_demo
    from cascade_sd_ros.tools.replay.pipeline import parse_params

    hf_logging.disable_progress_bar()
    heard = DiagnosticsListener()
    alphas: list[float | None] = [float(x) for x in args.alpha.split(",")] if args.alpha else [None]
    runs = [(n, float(x), a) for n in args.configs.split(",") for x in args.noise.split(",") for a in alphas]
    for name, noise, alpha in runs:
        results, speed, info = run_demo(
            n_scenes=args.scenes,
            seed=args.seed,
            sources={role: f"{args.zoo}/{role}" for role in ("target", "refiner", "drafter")} if args.zoo else {},
            mode="lossless-greedy",
            stages=STAGE_SETS[name],
            offset_ns=30_000_000,
            jitter_ms=2.0,
            drop_rate=0.05,
            device="cpu",
            timeout_s=60.0,
            rate=1.0,
            one_process=args.one_process,
            noise_hz=noise,
            overrides=parse_params(args.param),
            controlled_alpha=alpha,
            # controlled drafts' reference clips are cut with the pinned offset
            oracle_offset=alpha is not None or not args.measure_offset,
            max_objects=args.max_objects,
        )
        equal = sum(bool(r.equal) for r in results)
        parts = (
            {
                k: statistics.median(r.parts_ms[k] for r in results if r.parts_ms)
                for k in ("prefill", "verify", "draft_wait", "other")
            }
            if any(r.parts_ms for r in results)
            else {}
        )
        row = {
            "stages": name,
            "noise_hz": noise,
            "controlled_alpha": alpha,
            "params": args.param,
            "oracle_offset": info["oracle_offset"],
            "scenes": len(results),
            "equal": equal,
            **speed.to_dict(),
            "tokens_per_verifier_step": info["tokens_per_verifier_step"],
            "consecutive_accept_rate": info["consecutive_accept_rate"],
            "accepted_by_source": info["accepted_by_source"],
            "head": heard.head_counts(),
            "cascade_parts_p50_ms": parts,
            "processes": info["processes"],
            "by_caption_length": {
                n: {"n": d["caption_latency_cascade"]["n"], "speedup_p50": d["speedup_p50"]}
                for n, d in info["by_caption_length"].items()
            },
        }
        if args.json:
            print(json.dumps(row), flush=True)
            continue
        c, a, b = speed.cascade, speed.alone, speed.bare
        print(
            f"stages {name:8s} noise {noise:4.2f} {'' if alpha is None else f'alpha {alpha:g} '}"
            f"{' '.join(args.param)} equal {equal}/{len(results)}  "
            f"cascade p50 {c.p50_ms:.0f} p95 {c.p95_ms:.0f} ms | alone p50 {a.p50_ms:.0f} p95 {a.p95_ms:.0f} ms "
            f"| bare p50 {b.p50_ms:.0f} ms | speed-up p50 {speed.speedup_p50:.2f}x "
            f"(alone/bare {speed.alone_over_bare:.2f}) | tokens/step {info['tokens_per_verifier_step']:.2f} "
            f"| consecutive-accept {_fmt(info['consecutive_accept_rate'])} "
            f"| accepted by source {json.dumps(info['accepted_by_source'])} | head {json.dumps(row['head'])} "
            f"| cascade parts p50 {json.dumps(parts)} | by caption length {json.dumps(row['by_caption_length'])}",
            flush=True,
        )
    heard.close()
    return 0


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


class DiagnosticsListener:
    """The last /diagnostics values of every cascade verifier (its own rclpy context, spun in the
    background): what the draft head ran on, which the captions do not carry."""

    def __init__(self) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor

        from cascade_sd_ros.tools.pipeline import new_context

        self._context = new_context()
        self._node = rclpy.create_node("bench_diagnostics", context=self._context)
        self._lock = threading.Lock()
        self._values: dict[str, str] = {}
        self._node.create_subscription(DiagnosticArray, "/diagnostics", self._heard, 50)
        self._executor = SingleThreadedExecutor(context=self._context)
        self._executor.add_node(self._node)
        self._thread = threading.Thread(target=self._executor.spin, daemon=True)
        self._thread.start()

    def _heard(self, msg: Any) -> None:
        for status in msg.status:
            if status.name.endswith("video_verifier") and "/cascade/" in status.hardware_id:
                with self._lock:
                    self._values = {kv.key: kv.value for kv in status.values}

    def head_counts(self) -> dict[str, str]:
        keys = ("draft_head", "features.received", "features.refused")
        with self._lock:
            values, self._values = self._values, {}
        return {k: v for k, v in values.items() if k in keys or k.startswith(("head.", "steps_checking_"))}

    def close(self) -> None:
        import rclpy

        self._executor.shutdown()
        self._node.destroy_node()
        rclpy.shutdown(context=self._context)
        self._thread.join(timeout=5.0)


if __name__ == "__main__":
    raise SystemExit(main())
