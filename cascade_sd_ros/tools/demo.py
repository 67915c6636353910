"""``cascade-sd demo``: synthetic scenes through the three real nodes, over DDS, in one process.

A sensor-player node publishes each scene's EventPackets and Images with their own stamps (event
clock offset, RGB jitter and dropped frames included); the drafter, refiner and verifier nodes run
on a MultiThreadedExecutor exactly as they would on a robot. Per scene it prints the verified
caption, the ground truth, whether it equals the verifier-alone caption on the same clip (measured
afterwards in the same run, on the same model), acceptance per stage and latency; overall, the
speed-up of the cascade's verifier time over the verifier alone.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

ROLES = ("target", "refiner", "drafter")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scenes", type=_positive_int, default=5, help="number of scenes (default 5)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--seed", type=int, default=0, help="scene generator seed (default 0)")
    parser.add_argument("--models", default="", metavar="SOURCE",
                        help="model source for all three stages: a zoo root folder with target/ refiner/ drafter/, "
                             "or tiny:SEED for tiny random models (default: the shipped zoo)")
    parser.add_argument("--model", action="append", default=[], metavar="ROLE=SOURCE",
                        help="model source of one stage (target, refiner, drafter); repeatable")
    parser.add_argument("--mode", default="lossless-greedy",
                        choices=["lossless-greedy", "lossless-sample", "pyramid", "cascade"], help="decoding mode")
    parser.add_argument("--stages", default="drafter,refiner,verifier",
                        help="comma-separated stages to run (the verifier is required)")
    parser.add_argument("--offset-ms", type=float, default=30.0, help="event clock minus RGB clock [ms] (default 30)")
    parser.add_argument("--jitter-ms", type=float, default=2.0, help="RGB stamp jitter std [ms] (default 2)")
    parser.add_argument("--drop-rate", type=float, default=0.05, help="probability of dropping an RGB frame (default 0.05)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--timeout", type=float, default=60.0, help="[s] per-scene wait for its caption (default 60)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _model_sources(args: argparse.Namespace) -> dict[str, str]:
    from pathlib import Path

    sources: dict[str, str] = {}
    if args.models:
        for role in ROLES:
            sources[role] = args.models if args.models.startswith("tiny:") else str(Path(args.models) / role)
    for spec in args.model:
        role, sep, source = spec.partition("=")
        if not sep or role not in ROLES or not source:
            raise ValueError(f"--model {spec!r}: expected ROLE=SOURCE with ROLE one of {', '.join(ROLES)}")
        sources[role] = source
    return sources


@dataclass(frozen=True)
class SceneResult:
    index: int
    caption: str | None
    ground_truth: str
    verifier_alone: str | None
    equal: bool | None
    acceptance: dict[str, float | None]
    latency_ms: float | None
    degraded: str
    cascade_ms: float  # verifier time: prefill + verify passes + waiting for drafts
    alone_ms: float  # verifier alone: prefill + greedy decode, same clip, same model


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    try:
        sources = _model_sources(args)
        stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
        if "verifier" not in stages:
            raise ValueError("--stages must include verifier (it is the authority on the caption)")
        if not (math.isfinite(args.offset_ms) and math.isfinite(args.jitter_ms) and args.jitter_ms >= 0):
            raise ValueError("--offset-ms and --jitter-ms must be finite (jitter >= 0)")
        if not 0.0 <= args.drop_rate < 1.0:
            raise ValueError(f"--drop-rate must lie in [0, 1), got {args.drop_rate}")
        results, speedup, info = run_demo(
            n_scenes=args.scenes, seed=args.seed, sources=sources, mode=args.mode, stages=stages,
            offset_ns=int(round(args.offset_ms * 1e6)), jitter_ms=args.jitter_ms, drop_rate=args.drop_rate,
            device=args.device, timeout_s=args.timeout,
        )
    except (ValueError, FileNotFoundError) as exc:
        print(f"cascade-sd demo: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({
            "scenes": [
                {"index": r.index, "caption": r.caption, "ground_truth": r.ground_truth,
                 "verifier_alone": r.verifier_alone, "equal": r.equal, "acceptance": r.acceptance,
                 "latency_ms": r.latency_ms, "degraded": r.degraded}
                for r in results
            ],
            "speedup": speedup,
            **info,
        }))
    else:
        _print_text(results, speedup, info)
    missing = [r.index for r in results if r.caption is None]
    return 1 if missing else 0


def _print_text(results: list[SceneResult], speedup: float | None, info: dict[str, Any]) -> None:
    print(f"cascade-sd demo: {len(results)} scenes, mode {info['mode']}, stages {', '.join(info['stages'])}, "
          f"models {info['models']}")
    for r in results:
        acc = ", ".join(f"{k} {'-' if v is None else f'{v:.0%}'}" for k, v in r.acceptance.items())
        print(f"\nscene {r.index}")
        print(f"  verified      : {r.caption if r.caption is not None else '(no caption in time)'}")
        print(f"  ground truth  : {r.ground_truth}")
        print(f"  verifier alone: {r.verifier_alone}  [{'equal' if r.equal else 'DIFFERENT' if r.equal is False else 'n/a'}]")
        lat = "-" if r.latency_ms is None else f"{r.latency_ms:.0f} ms"
        print(f"  acceptance    : {acc}; latency {lat}" + (f"; degraded: {r.degraded}" if r.degraded else ""))
    sp = "n/a" if speedup is None else f"{speedup:.2f}x"
    print(f"\nspeed-up over the verifier alone (verifier time, same clips, same run): {sp}")


def run_demo(
    *,
    n_scenes: int,
    seed: int,
    sources: dict[str, str],
    mode: str,
    stages: tuple[str, ...],
    offset_ns: int,
    jitter_ms: float,
    drop_rate: float,
    device: str,
    timeout_s: float,
) -> tuple[list[SceneResult], float | None, dict[str, Any]]:
    """Run the scenes; returns per-scene results, the speed-up and run info."""
    import rclpy

    from cascade_sd_ros.core.synth.clocks import ClockModel
    from cascade_sd_ros.core.synth.packets import PacketConfig
    from cascade_sd_ros.core.synth.stream import StreamConfig, iter_scenes
    from cascade_sd_ros.tools.pipeline import (
        PipelineConfig,
        SensorPlayer,
        build_pipeline,
        new_context,
        play_scenes,
        scene_rounds,
    )

    stream = StreamConfig(
        n_scenes=n_scenes + 1, height=64, width=64, seed=seed,  # + a lead-out scene
        clocks=ClockModel(event_offset_ns=offset_ns, jitter_ms=jitter_ms, drop_rate=drop_rate),
        packets=PacketConfig(time_threshold_us=5000),
    )
    rounds = scene_rounds(stream)
    params = rounds.params()
    params["video_verifier"] = {**params["video_verifier"], "mode": mode}
    params["frame_refiner"] = {**params["frame_refiner"], "mode": mode}
    config = PipelineConfig(models=sources, stages=stages, device=device, params=params)
    scenes = list(iter_scenes(stream))
    context = new_context()
    pipeline = None
    player = None
    try:
        pipeline = build_pipeline(config, context)
        player = SensorPlayer(context=context)
        pipeline.start()
        images = sum(1 for s in stages if s in ("refiner", "verifier"))
        events = sum(1 for s in stages if s in ("drafter", "verifier"))
        player.wait_matched(images, events)
        finals = play_scenes(pipeline, player, scenes, rounds, timeout_s=timeout_s)
        verifier = pipeline.verifier
        updates = dict(verifier.finals)
        inputs = dict(verifier.inputs)
        model = verifier.model
        budget = verifier.cfg.max_new_tokens
        pipeline.close()  # workers stopped: the target model is free for the baseline
        results = [
            _scene_result(i, scenes[i].truth.caption, finals.get(i), rounds.round_ids[i], updates, inputs, model, budget)
            for i in range(n_scenes)
        ]
    finally:
        if pipeline is not None:
            pipeline.close()
        if player is not None:
            player.destroy_node()
        if context.ok():
            rclpy.shutdown(context=context)
    alone = sum(r.alone_ms for r in results if r.caption is not None)
    casc = sum(r.cascade_ms for r in results if r.caption is not None)
    speedup = alone / casc if casc > 0 and alone > 0 else None
    info = {"mode": mode, "stages": list(stages), "models": dict(config.models) or "shipped zoo",
            "offset_ms": offset_ns / 1e6, "jitter_ms": jitter_ms, "drop_rate": drop_rate}
    return results, speedup, info


def _scene_result(index: int, truth: str, msg: Any, round_id: int, updates: dict, inputs: dict, model: Any,
                  max_new_tokens: int) -> SceneResult:
    import torch

    from cascade_sd_ros.core.spec.engine import target_only_greedy

    if msg is None:
        return SceneResult(index, None, truth, None, None, {"drafter": None, "refiner": None}, None, "", 0.0, 0.0)
    acc = {name: (msg.accepted_per_stage[s] / msg.drafted_per_stage[s] if msg.drafted_per_stage[s] else None)
           for s, name in enumerate(("drafter", "refiner"))}
    u = updates.get(round_id)
    inp = inputs.get(round_id)
    alone_text, equal, alone_ms, casc_ms = None, None, 0.0, 0.0
    if inp is not None and u is not None:
        t0 = time.perf_counter()
        with torch.inference_mode():
            ids = target_only_greedy(model.adapter, model.context(inp.frames, inp.question), max_new_tokens)
        alone_ms = (time.perf_counter() - t0) * 1e3
        alone_text = model.decode(ids)
        equal = list(ids) == list(msg.token_ids)
        casc_ms = u.latency_prefill_ms + u.latency_verify_ms + (u.latency_wait_ms - u.input_wait_ms)
    return SceneResult(index, msg.text, truth, alone_text, equal, acc, float(msg.latency_total_ms),
                       msg.degraded_reason, casc_ms, alone_ms)
