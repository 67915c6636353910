"""``cascade-sd demo``: synthetic scenes through the three real nodes, over DDS, in one process.

A sensor-player node publishes each scene's EventPackets and Images with their own stamps (event
clock offset, RGB jitter and dropped frames included) at sensor rate; the drafter, refiner and
verifier nodes run unchanged on one executor (``--executor``: rclpy's MultiThreadedExecutor, or its
experimental EventsExecutor, much lighter on this GIL-bound composition).
Per scene it prints the verified caption, the ground truth, the verifier's own greedy caption on the
same clip (lossless modes: equal) and acceptance per stage and latency. The scenes then run a second
time through the verifier node alone (same process, same run): the speed-up is the ratio of the
verifier's time per caption (prefill, verification passes, waiting for drafts) alone and in the
cascade. Tokens per verifier step say what the drafts save in target passes whatever the machine;
on a small CPU all three stages share the cores and one interpreter, which the wall-clock ratio
includes.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
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
    parser.add_argument("--drop-rate", type=float, default=0.05,
                        help="probability of dropping an RGB frame (default 0.05)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--timeout", type=float, default=60.0, help="[s] per-scene wait for its caption (default 60)")
    parser.add_argument("--executor", default="multi-threaded", choices=["multi-threaded", "events"],
                        help="rclpy executor the nodes spin on (default multi-threaded; events: rclpy's "
                             "experimental EventsExecutor, C++ wait handling: ~4x lower latency here)")
    parser.add_argument("--fast", action="store_true",
                        help="publish each scene as fast as the queues allow instead of at sensor rate")


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
    alone_ms: float  # the verifier node without upstream stages on the same scene, same run
    breakdown_ms: dict[str, float]  # the cascade's verifier time by part
    target_forwards: int  # cascade verifier passes after prefill (the alone decode needs one per token)
    tokens: int  # caption tokens committed


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # weight-loading bars would bury the captions
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
            device=args.device, timeout_s=args.timeout, rate=None if args.fast else 1.0, executor=args.executor,
        )
    except (ValueError, FileNotFoundError) as exc:
        print(f"cascade-sd demo: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({
            "scenes": [
                {"index": r.index, "caption": r.caption, "ground_truth": r.ground_truth,
                 "verifier_alone": r.verifier_alone, "equal": r.equal, "acceptance": r.acceptance,
                 "latency_ms": r.latency_ms, "degraded": r.degraded,
                 "verifier_ms": {**{k: round(v, 2) for k, v in r.breakdown_ms.items()}, "alone": round(r.alone_ms, 2)},
                 "target_forwards": r.target_forwards}
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
        acc = ", ".join(f"{k.replace('_', ' ')} {'-' if v is None else f'{v:.0%}'}" for k, v in r.acceptance.items())
        print(f"\nscene {r.index}")
        print(f"  verified      : {r.caption if r.caption is not None else '(no caption in time)'}")
        print(f"  ground truth  : {r.ground_truth}")
        verdict = "equal" if r.equal else "DIFFERENT" if r.equal is False else "n/a"
        print(f"  verifier alone: {r.verifier_alone}  [{verdict}]")
        lat = "-" if r.latency_ms is None else f"{r.latency_ms:.0f} ms"
        print(f"  acceptance    : {acc}; latency {lat}" + (f"; degraded: {r.degraded}" if r.degraded else ""))
    sp = "n/a" if speedup is None else f"{speedup:.2f}x"
    tps = info.get("tokens_per_verifier_step")
    print(f"\nspeed-up over the verifier alone (verifier time, same clips, same run): {sp}")
    if tps is not None:
        print(f"tokens per verifier step: {tps:.2f} (the verifier alone: 1.00); all three stages share this "
              f"process's cores and GIL, which the wall-clock figure includes")


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
    rate: float | None = 1.0,
    executor: str = "multi-threaded",
) -> tuple[list[SceneResult], float | None, dict[str, Any]]:
    """Run the scenes; returns per-scene results, the speed-up and run info."""
    from cascade_sd_ros.core.synth.clocks import ClockModel
    from cascade_sd_ros.core.synth.packets import PacketConfig
    from cascade_sd_ros.core.synth.stream import StreamConfig, iter_scenes
    from cascade_sd_ros.tools.pipeline import PipelineConfig, load_models, scene_rounds, trained_params, zoo_meta

    meta = zoo_meta(PipelineConfig(models=sources, stages=stages, device=device).source("target"))
    geometry = dict(meta.get("geometry", {}))
    size = int(geometry.get("image_size", 64))
    stream = StreamConfig(
        n_scenes=n_scenes + 1, height=size, width=size, seed=seed,  # + a lead-out scene
        scene_duration_s=float(geometry.get("scene_duration_s", 2.0)),
        clocks=ClockModel(event_offset_ns=offset_ns, jitter_ms=jitter_ms, drop_rate=drop_rate),
        packets=PacketConfig(time_threshold_us=5000),
    )
    rounds = scene_rounds(stream)
    params = rounds.params()
    for node in ("video_verifier", "frame_refiner"):
        params[node] = {**params[node], "mode": mode}
    # what the zoo was trained on (its zoo.json), so its models see what they learnt from
    for node, values in trained_params(meta).items():
        params[node] = {**params.get(node, {}), **values}
    config = PipelineConfig(models=sources, stages=stages, device=device, params=params, executor=executor)
    # the same verifier node with no upstream stages: the speed-up's reference, same scenes, same run
    alone_params = {**params, "video_verifier": {**params["video_verifier"], "use_drafts": "none"}}
    alone_config = PipelineConfig(models=sources, stages=("verifier",), device=device, params=alone_params,
                                  executor=executor)
    scenes = list(iter_scenes(stream))
    models = load_models(config)
    cascade = _run_pass(config, models, scenes, rounds, rate, timeout_s)
    alone = _run_pass(alone_config, {"target": models["target"]}, scenes, rounds, rate, timeout_s)
    target = models["target"]
    budget = int(params["common"].get("max_new_tokens", 32))
    results = [
        _scene_result(i, scenes[i].truth.caption, cascade, alone, rounds.round_ids[i], target, budget)
        for i in range(n_scenes)
    ]
    done = [r for r in results if r.caption is not None and r.alone_ms > 0]
    alone_ms = sum(r.alone_ms for r in done)
    casc_ms = sum(r.cascade_ms for r in done)
    speedup = alone_ms / casc_ms if casc_ms > 0 and alone_ms > 0 else None
    steps = sum(r.target_forwards for r in results)
    tokens = sum(r.tokens for r in results)
    info = {"mode": mode, "stages": list(stages), "models": dict(config.models) or "shipped zoo",
            "offset_ms": offset_ns / 1e6, "jitter_ms": jitter_ms, "drop_rate": drop_rate,
            "playback": "as fast as possible" if rate is None else f"{rate:g}x sensor rate", "executor": executor,
            # tokens committed per verifier step (the verifier alone commits exactly 1): what the
            # drafts save in target passes, independent of how this machine shares its cores
            "tokens_per_verifier_step": tokens / steps if steps else None}
    return results, speedup, info


@dataclass(frozen=True)
class PassOutput:
    """One run of the scenes through a pipeline: final captions, the verifier's updates and clips."""

    finals: dict[int, Any]  # scene index -> final VerifiedCaption (None: none in time)
    updates: dict[int, Any]  # round id -> final CaptionUpdate
    inputs: dict[int, Any]  # round id -> RoundInputs (the clip)


def _run_pass(config: Any, models: dict[str, Any], scenes: list[Any], rounds: Any, rate: float | None,
              timeout_s: float) -> PassOutput:
    import rclpy

    from cascade_sd_ros.tools.pipeline import SensorPlayer, build_pipeline, new_context, play_scenes

    context = new_context()
    pipeline = None
    player = None
    try:
        pipeline = build_pipeline(config, context, models=models)
        player = SensorPlayer(context=context)
        pipeline.start()
        images = sum(1 for s in config.stages if s in ("refiner", "verifier"))
        events = sum(1 for s in config.stages if s in ("drafter", "verifier"))
        player.wait_matched(images, events)
        finals = play_scenes(pipeline, player, scenes, rounds, timeout_s=timeout_s, rate=rate)
        verifier = pipeline.verifier
        return PassOutput(finals, dict(verifier.finals), dict(verifier.inputs))
    finally:
        if pipeline is not None:
            pipeline.close()
        if player is not None:
            player.destroy_node()
        if context.ok():
            rclpy.shutdown(context=context)


def _verifier_ms(u: Any) -> dict[str, float]:
    """The verifier's own time on a round: prefill, verification passes, waiting for drafts."""
    return {"prefill": u.latency_prefill_ms, "verify": u.latency_verify_ms,
            "draft_wait": u.latency_wait_ms - u.input_wait_ms}


def _scene_result(index: int, truth: str, cascade: PassOutput, alone: PassOutput, round_id: int, target: Any,
                  max_new_tokens: int) -> SceneResult:
    import torch

    from cascade_sd_ros.core.spec.engine import target_only_greedy

    msg = cascade.finals.get(index)
    if msg is None:
        return SceneResult(index, None, truth, None, None,
                           {"drafter": None, "refiner": None, "drafter_by_refiner": None}, None, "", 0.0, 0.0,
                           {}, 0, 0)
    # by the verifier: drafts it checked itself, per stage (the drafter's only when the refiner was
    # not there first); by the refiner: the drafter tokens it kept in the refiner drafts used
    acc: dict[str, float | None] = {
        name: (msg.accepted_per_stage[s] / msg.drafted_per_stage[s] if msg.drafted_per_stage[s] else None)
        for s, name in enumerate(("drafter", "refiner"))}
    u = cascade.updates.get(round_id)
    acc["drafter_by_refiner"] = (u.upstream_accepted / u.upstream_drafted
                                 if u is not None and u.upstream_drafted else None)
    inp = cascade.inputs.get(round_id)
    alone_text, equal, casc_ms, parts = None, None, 0.0, {}
    if inp is not None and u is not None:
        # lossless means: exactly the verifier's own greedy caption on the clip the cascade used
        with torch.inference_mode():
            ids = target_only_greedy(target.adapter, target.context(inp.frames, inp.question), max_new_tokens)
        alone_text = target.decode(ids)
        equal = list(ids) == list(msg.token_ids)
        parts = _verifier_ms(u)
        casc_ms = sum(parts.values())
    a = alone.updates.get(round_id)
    alone_ms = sum(_verifier_ms(a).values()) if a is not None else 0.0
    return SceneResult(index, msg.text, truth, alone_text, equal, acc, float(msg.latency_total_ms),
                       msg.degraded_reason, casc_ms, alone_ms, parts, int(msg.target_forwards), len(msg.token_ids))
