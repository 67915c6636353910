"""``cascade-sd demo``: synthetic scenes through the three real nodes, over DDS, as a robot runs them.

Each stage node runs in a process of its own (``python -m cascade_sd_ros.nodes.<node>``), and the
verifier node alone (no drafts) in another: the reference. A sensor player in this process publishes
each scene's EventPackets and Images with their own stamps (event clock offset, RGB jitter and
dropped frames included) at sensor rate, to the cascade and to the verifier alone in turn, scene by
scene, so machine noise hits both. Per scene it prints the verified caption, the ground truth, the
verifier alone's caption (lossless modes: equal, token for token), acceptance per stage and caption
latency (inputs complete -> final caption, :mod:`cascade_sd_ros.core.speed`) for both runs and for
the target's bare greedy decode without ROS (in a process of its own on the verifiers' CPU, scene by
scene after both runs: :class:`BareClips`). ``--one-process`` composes everything in this process
instead (debugging; the stages then share one interpreter).

Nobody tells the stages the clock offset (``--oracle-offset`` pins the scenes' true one): they start
from ``frame_offset`` 0, the cascade's drafter measures it and the refiner and verifier follow. The
verifier alone has no drafter: it is told the offset each of the cascade's rounds used (an
:class:`~cascade_sd_ros.tools.pipeline.OffsetRelay`, before the scene that completes the round), as
is the bare floor, so every comparison is on the same clip. Per scene the demo prints the offset
used, where it came from and its error against the truth.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

from cascade_sd_ros.core.names import STAGE_NAMES
from cascade_sd_ros.core.synth.scene import MAX_OBJECTS, SCENE_OBJECTS

ROLES = ("target", "refiner", "drafter")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scenes", type=_positive_int, default=8, help="number of scenes (default 8)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--seed", type=int, default=0, help="scene generator seed (default 0)")
    parser.add_argument(
        "--max-objects",
        type=_positive_int,
        default=SCENE_OBJECTS,
        metavar="N",
        help="scenes of 1 to N objects (default 2; up to 4: longer captions, where decoding dominates; "
        "a zoo trained on busier scenes captions them, see `cascade-sd train --max-objects`)",
    )
    parser.add_argument(
        "--models",
        default="",
        metavar="SOURCE",
        help="model source for all three stages: a zoo root folder with target/ refiner/ drafter/, "
        "or tiny:SEED for tiny random models (default: the shipped zoo)",
    )
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="ROLE=SOURCE",
        help="model source of one stage (target, refiner, drafter); repeatable",
    )
    parser.add_argument(
        "--mode",
        default="lossless-greedy",
        choices=["lossless-greedy", "lossless-sample", "pyramid", "cascade"],
        help="decoding mode",
    )
    parser.add_argument(
        "--stages", default="drafter,refiner,verifier", help="comma-separated stages to run (the verifier is required)"
    )
    parser.add_argument("--offset-ms", type=float, default=30.0, help="event clock minus RGB clock [ms] (default 30)")
    offset = parser.add_mutually_exclusive_group()
    # As on a robot, nobody knows the offset: the drafter measures it (on its own core, from the events
    # it decodes anyway) and the verifier alone is told what each cascade round used, so both runs
    # still pick the same clips. --oracle-offset is the comparison run.
    offset.add_argument(
        "--oracle-offset",
        dest="oracle_offset",
        action="store_true",
        default=False,
        help="tell the stages the scenes' true clock offset, pinned (the comparison run)",
    )
    offset.add_argument(
        "--measure-offset",
        dest="oracle_offset",
        action="store_false",
        help="tell them nothing (default): the drafter measures the offset (events vs frames, or "
        "strobe triggers) and the refiner and verifier follow, as on a robot",
    )
    parser.add_argument("--jitter-ms", type=float, default=2.0, help="RGB stamp jitter std [ms] (default 2)")
    parser.add_argument(
        "--drop-rate", type=float, default=0.05, help="probability of dropping an RGB frame (default 0.05)"
    )
    parser.add_argument(
        "--noise-hz",
        type=float,
        default=0.1,
        help="event camera background activity [events per pixel per second] (default 0.1, the "
        "quiet end of real DVS sensors: a still scene still sends events, so the drafter hears "
        "time pass)",
    )
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--timeout", type=float, default=60.0, help="[s] per-scene wait for its caption (default 60)")
    parser.add_argument(
        "--executor",
        default="multi-threaded",
        choices=["multi-threaded", "events"],
        help="rclpy executor the nodes spin on (default multi-threaded; events: rclpy's "
        "experimental EventsExecutor, C++ wait handling: ~4x lower latency here)",
    )
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NODE:NAME=VALUE",
        help="a node parameter for both runs, e.g. video_verifier:draft_wait=0.01 (NODE: common, "
        "event_drafter, frame_refiner, video_verifier); repeatable",
    )
    parser.add_argument(
        "--one-process",
        action="store_true",
        help="compose all stages in this process (debugging); default: each stage node in a process "
        "of its own, as on a robot, and the verifier alone in another",
    )
    parser.add_argument(
        "--fast", action="store_true", help="publish each scene as fast as the queues allow instead of at sensor rate"
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _model_sources(args: argparse.Namespace) -> dict[str, str]:
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


def _check_vocabularies(sources: dict[str, str], stages: tuple[str, ...], device: str) -> None:
    from cascade_sd_ros.tools.pipeline import PipelineConfig, check_source_vocabularies

    check_source_vocabularies(PipelineConfig(models=sources, stages=stages, device=device))


@dataclass(frozen=True)
class SceneResult:
    index: int
    caption: str | None
    ground_truth: str
    verifier_alone: str | None  # the verifier node alone on the same scene (its own run)
    equal: bool | None  # the cascade's caption token for token the verifier alone's
    acceptance: dict[str, float | None]
    latency_ms: float | None  # caption latency in the cascade: inputs complete -> final caption
    alone_latency_ms: float | None  # the same for the verifier alone
    parts_ms: dict[str, float]  # the cascade's caption latency by part (see _parts)
    alone_parts_ms: dict[str, float]
    bare_ms: float | None  # the target's own greedy caption on the scene, no ROS, same machine
    degraded: str
    target_forwards: int  # cascade verifier passes after prefill (the alone decode needs one per token)
    tokens: int  # caption tokens committed
    offset_ms: float | None = None  # the clock offset the cascade's round picked its frames with
    offset_source: str = ""  # where it came from: pinned, trigger, estimate, initial
    offset_error_ms: float | None = None  # that minus the true offset
    accepted: tuple[int, ...] = ()  # cascade draft tokens accepted, per draft source (names.STAGE_NAMES)
    first_rejections: int = 0  # cascade verifications that rejected part of their draft


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
        if not (math.isfinite(args.noise_hz) and 0.0 <= args.noise_hz <= 100.0):
            raise ValueError(f"--noise-hz must lie in [0, 100] events per pixel per second, got {args.noise_hz}")
        if args.max_objects > MAX_OBJECTS:
            raise ValueError(
                f"--max-objects must be 1 to {MAX_OBJECTS} (a 48 px scene holds no more), got {args.max_objects}"
            )
        if args.executor != "multi-threaded" and not args.one_process:
            raise ValueError("--executor applies to --one-process (separate stage processes spin their own)")
        _check_vocabularies(sources, stages, args.device)  # a mix of vocabularies: one line, before anything runs
        results, speed, info = run_demo(
            n_scenes=args.scenes,
            seed=args.seed,
            sources=sources,
            mode=args.mode,
            stages=stages,
            offset_ns=int(round(args.offset_ms * 1e6)),
            jitter_ms=args.jitter_ms,
            drop_rate=args.drop_rate,
            device=args.device,
            timeout_s=args.timeout,
            rate=None if args.fast else 1.0,
            executor=args.executor,
            one_process=args.one_process,
            noise_hz=args.noise_hz,
            overrides=_overrides(args.param),
            oracle_offset=args.oracle_offset,
            max_objects=args.max_objects,
        )
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"cascade-sd demo: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the stage processes were stopped on the way out
        print("cascade-sd demo: interrupted", file=sys.stderr)
        return 130
    if args.json:
        print(
            json.dumps(
                {
                    "scenes": [
                        {
                            "index": r.index,
                            "caption": r.caption,
                            "ground_truth": r.ground_truth,
                            "verifier_alone": r.verifier_alone,
                            "equal": r.equal,
                            "acceptance": r.acceptance,
                            "latency_ms": _r(r.latency_ms),
                            "alone_latency_ms": _r(r.alone_latency_ms),
                            "bare_ms": _r(r.bare_ms),
                            "parts_ms": r.parts_ms,
                            "alone_parts_ms": r.alone_parts_ms,
                            "degraded": r.degraded,
                            "target_forwards": r.target_forwards,
                            "tokens": r.tokens,
                            "offset_ms": _r(r.offset_ms),
                            "offset_source": r.offset_source,
                            "offset_error_ms": _r(r.offset_error_ms),
                        }
                        for r in results
                    ],
                    **speed.to_dict(),
                    **info,
                }
            )
        )
    else:
        _print_text(results, speed, info)
    missing = [r.index for r in results if r.caption is None]
    return 1 if missing else 0


def _overrides(specs: list[str]) -> dict[str, dict[str, Any]]:
    from cascade_sd_ros.tools.replay.pipeline import parse_params

    return parse_params(specs)


def _r(x: float | None) -> float | None:
    return None if x is None else round(float(x), 2)


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f} ms"


def _print_text(results: list[SceneResult], speed: Any, info: dict[str, Any]) -> None:
    from cascade_sd_ros.core.report import offset_text

    print(
        f"cascade-sd demo: {len(results)} scenes, mode {info['mode']}, stages {', '.join(info['stages'])}, "
        f"models {info['models']}, {info['processes']}"
    )
    for r in results:
        acc = ", ".join(f"{k.replace('_', ' ')} {'-' if v is None else f'{v:.0%}'}" for k, v in r.acceptance.items())
        print(f"\nscene {r.index}")
        print(f"  verified      : {r.caption if r.caption is not None else '(no caption in time)'}")
        print(f"  ground truth  : {r.ground_truth}")
        verdict = "equal" if r.equal else "DIFFERENT" if r.equal is False else "n/a"
        if r.equal is False and r.offset_source == "initial":
            verdict += " (the clock offset was not measured yet: frames picked by the initial guess)"
        print(f"  verifier alone: {r.verifier_alone}  [{verdict}]")
        print(f"  acceptance    : {acc}" + (f"; degraded: {r.degraded}" if r.degraded else ""))
        if r.offset_ms is not None:
            print(f"  clock offset  : {offset_text(r.offset_ms, r.offset_source, r.offset_error_ms, 2)} ms")
        print(
            f"  caption latency: cascade {_ms(r.latency_ms)}, verifier alone {_ms(r.alone_latency_ms)} "
            f"(target bare {_ms(r.bare_ms)})"
        )
    c, a, b = speed.cascade, speed.alone, speed.bare
    sp = "n/a" if speed.speedup_p50 is None else f"{speed.speedup_p50:.2f}x"
    print(f"\ncaption latency (inputs complete -> final caption), {c.n} rounds:")
    print(f"  cascade       p50 {_ms(c.p50_ms)}, p95 {_ms(c.p95_ms)}")
    print(
        f"  verifier alone p50 {_ms(a.p50_ms)}, p95 {_ms(a.p95_ms)}  "
        f"(the target's bare cost, no ROS: p50 {_ms(b.p50_ms)}; same caption as the verifier alone in "
        f"{info.get('bare_same_caption', '-')} scenes)"
    )
    print(f"speed-up over the verifier alone (p50 caption latency): {sp}")
    print(f"clock offset: {info['offset_status']}")
    from cascade_sd_ros.core.speed import HONEST_MARGIN, floor_disturbed, honest_reference

    if floor_disturbed(speed.alone_over_bare):
        print(
            f"note: the target's bare decode took {1 / speed.alone_over_bare:.2f}x the verifier alone's time: "
            "the floor itself was slowed, so whether the reference is honest cannot be told"
        )

    if honest_reference(speed.alone_over_bare) is False:
        print(
            f"note: the verifier alone ran at {speed.alone_over_bare:.2f}x the target's bare cost (more than "
            f"{1 + HONEST_MARGIN:.2f}x): its node process, not the model, sets part of the reference"
        )
    tps = info.get("tokens_per_verifier_step")
    if tps is not None:
        print(f"tokens per verifier step: {tps:.2f} (the verifier alone: 1.00)")
    lengths = info.get("by_caption_length") or {}
    if len(lengths) > 1:
        print("by caption length (prefill is paid by both runs; decode is what the drafts save):")
        for n, row in lengths.items():
            print(
                f"  {n:3d} tokens, {row['caption_latency_cascade']['n']} rounds: cascade p50 "
                f"{_ms(row['caption_latency_cascade']['p50_ms'])}, alone {_ms(row['caption_latency_alone']['p50_ms'])}"
                f", speed-up {row['speedup_p50']:.2f}x"
            )


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
    one_process: bool = False,
    noise_hz: float = 0.1,
    overrides: dict[str, dict[str, Any]] | None = None,
    oracle_offset: bool = False,
    controlled_alpha: float | None = None,
    max_objects: int = SCENE_OBJECTS,
) -> tuple[list[SceneResult], Any, dict[str, Any]]:
    """Run the scenes through the cascade and through the verifier alone; returns per-scene results,
    the caption-latency comparison and run info.

    ``controlled_alpha`` (benchmarks only): the upstream stages' drafts are rewritten so each token is
    the target's with this probability (``core/stages/controlled.py``); the target's bare captions of
    every round are decoded first, with the pinned offset, as their reference."""
    if controlled_alpha is not None and not oracle_offset:
        raise ValueError("controlled acceptance needs the pinned offset: its reference clips are cut with it")
    from cascade_sd_ros.core.speed import by_caption_length, compare
    from cascade_sd_ros.core.stages.controlled import write_reference
    from cascade_sd_ros.core.synth.clocks import ClockModel
    from cascade_sd_ros.core.synth.esim import EsimConfig
    from cascade_sd_ros.core.synth.packets import PacketConfig
    from cascade_sd_ros.core.synth.stream import StreamConfig, iter_scenes
    from cascade_sd_ros.tools.pipeline import PipelineConfig, scene_rounds, trained_params, zoo_meta

    meta = zoo_meta(PipelineConfig(models=sources, stages=stages, device=device).source("target"))
    geometry = dict(meta.get("geometry", {}))
    size = int(geometry.get("image_size", 64))
    stream = StreamConfig(
        n_scenes=n_scenes + 1,
        height=size,
        width=size,
        seed=seed,  # + a lead-out scene
        scene_duration_s=float(geometry.get("scene_duration_s", 2.0)),
        clocks=ClockModel(event_offset_ns=offset_ns, jitter_ms=jitter_ms, drop_rate=drop_rate),
        packets=PacketConfig(time_threshold_us=5000),
        esim=replace(EsimConfig(), noise_rate_hz=noise_hz),
        max_objects=max_objects,
    )
    rounds = scene_rounds(stream)
    params = rounds.params(oracle=oracle_offset)
    for node in ("video_verifier", "frame_refiner"):
        params[node] = {**params[node], "mode": mode}
    # what the zoo was trained on (its zoo.json), so its models see what they learnt from
    for node, values in trained_params(meta).items():
        params[node] = {**params.get(node, {}), **values}
    reference_dir = (
        tempfile.TemporaryDirectory(prefix="cascade-sd-reference-") if controlled_alpha is not None else None
    )
    reference = None if reference_dir is None else Path(reference_dir.name) / "captions.json"
    if reference is not None:
        controlled = {"bench_reference_captions": str(reference), "bench_controlled_alpha": controlled_alpha}
        for node in ("event_drafter", "frame_refiner"):
            params[node] = {**params.get(node, {}), **controlled}
    # The runs take turns with the sensors: while one plays a scene the other's stream pauses for
    # seconds. A round whose clip reaches past its scene's last frames (an offset not measured yet)
    # waits for the next scene's first frames, as on a robot 33 ms later, instead of giving up after
    # max_wait in one run and not in the other (a draft opens the cascade's round early): otherwise
    # the two runs would caption different clips.
    params["video_verifier"] = {**params["video_verifier"], "max_wait": max(0.5, timeout_s / 2)}
    for node, values in (overrides or {}).items():
        params[node] = {**params.get(node, {}), **values}
    config = PipelineConfig(models=sources, stages=stages, device=device, params=params, executor=executor)
    # the same verifier node with no upstream stages: the speed-up's reference, same scenes, same run
    alone_params = {**params, "video_verifier": {**params["video_verifier"], "use_drafts": "none"}}
    alone_config = PipelineConfig(
        models=sources, stages=("verifier",), device=device, params=alone_params, executor=executor
    )
    scenes = list(iter_scenes(stream))
    budget = int(params["common"].get("max_new_tokens", 32))
    question = str(params["common"].get("prompt", "describe the scene"))
    bare_target = BareClips(config, question, budget, one_process)
    # the verifier alone has no drafter to measure the offset: it follows the cascade's, round by round
    relay = not oracle_offset
    with bare_target, reference_dir or contextlib.nullcontext():
        if reference is not None:  # the drafts' reference: the target's own captions, before any pass
            for i in range(n_scenes):
                bare_target.measure(i, scenes, rounds.round_ids[i])
            write_reference(reference, {rounds.round_ids[i]: bare_target.tokens[i] for i in bare_target.tokens})
        plan = PassPlan(
            config=config,
            alone_config=alone_config,
            scenes=tuple(scenes),
            rounds=rounds,
            rate=rate,
            timeout_s=timeout_s,
            bare=bare_target,
            relay=relay,
            one_process=one_process,
        )
        cascade, alone = run_passes(plan)
    bare = bare_target.costs
    results = [
        _scene_result(
            i, scenes[i].truth.caption, cascade.get(i), alone.get(i), bare.get(i), scenes[i].truth.event_offset_ns / 1e6
        )
        for i in range(n_scenes)
    ]
    speed = compare(
        {r.index: r.latency_ms for r in results if r.latency_ms is not None},
        {r.index: r.alone_latency_ms for r in results if r.alone_latency_ms is not None},
        {r.index: r.bare_ms for r in results if r.bare_ms is not None},
    )
    # the floor is only the verifier's cost if it decoded the verifier's caption
    both = [i for i in bare_target.tokens if i in alone]
    bare_same = sum(bare_target.tokens[i] == alone[i]["token_ids"] for i in both)
    steps = sum(r.target_forwards for r in results)
    tokens = sum(r.tokens for r in results)
    accepted = sum(sum(r.accepted) for r in results)
    rejected = sum(r.first_rejections for r in results)
    info = {
        "mode": mode,
        "stages": list(stages),
        "models": dict(config.models) or "shipped zoo",
        "offset_ms": offset_ns / 1e6,
        "oracle_offset": oracle_offset,
        "offset_status": _offset_status(results, oracle_offset),
        "jitter_ms": jitter_ms,
        "drop_rate": drop_rate,
        "noise_hz": noise_hz,
        "playback": "as fast as possible" if rate is None else f"{rate:g}x sensor rate",
        "processes": "one process" if one_process else "separate stage processes",
        "executor": executor,
        "controlled_alpha": controlled_alpha,
        "bare_same_caption": f"{bare_same}/{len(both)}",
        "by_caption_length": {
            n: part.to_dict()
            for n, part in by_caption_length(
                {r.index: r.tokens for r in results if r.latency_ms is not None},
                {r.index: r.latency_ms for r in results if r.latency_ms is not None},
                {r.index: r.alone_latency_ms for r in results if r.alone_latency_ms is not None},
                {r.index: r.bare_ms for r in results if r.bare_ms is not None},
            ).items()
        },
        # tokens committed per verifier step (the verifier alone commits exactly 1): what the
        # drafts save in target passes, independent of how this machine shares its cores
        "tokens_per_verifier_step": tokens / steps if steps else None,
        # of the draft tokens the verifier judged in order, the share accepted (EAGLE's acceptance
        # rate: accepted / (accepted + first rejections)), and which source supplied the accepted ones
        "consecutive_accept_rate": accepted / (accepted + rejected) if accepted + rejected else None,
        "accepted_by_source": {
            name: sum(r.accepted[s] for r in results if s < len(r.accepted)) for s, name in STAGE_NAMES.items()
        },
    }
    return results, speed, info


class BareClips:
    """The target's bare greedy caption per scene, timed in a process of its own without ROS
    (:class:`~cascade_sd_ros.tools.bare_process.BareProcess`): what the verifier alone should cost.

    Each round's clip is cut by the verifier's own rule (``select_clip`` at ``T`` minus the offset the
    round used, its ``clip_duration``, ``frames`` and ``slop``) from the frames the scenes published,
    so the bare caption is the verifier's caption (``same``: per scene, whether the tokens agree).
    With the stages as processes it runs on the verifiers' CPU and is measured scene by scene right
    after the two passes (:meth:`measure`), so machine noise hits the floor as it hits them; composed
    in one process, all scenes are measured between the cascade's pass and the verifier alone's."""

    def __init__(self, config: Any, question: str, budget: int, one_process: bool) -> None:
        from cascade_sd_ros.tools.bare_process import BareProcess
        from cascade_sd_ros.tools.replay.processes import verifier_params
        from cascade_sd_ros.tools.stage_processes import cpu_plan

        values = verifier_params(config.params)
        self.clip_ns = int(round(float(values["clip_duration"]) * 1e9))
        self.frames = int(values["frames"])
        self.slop_ns = int(round(float(values["slop"]) * 1e9))
        self.pinned_offset_ns = int(round(float(values["frame_offset"]) * 1e9))
        self.question = question
        self.budget = budget
        cpus = None if one_process else cpu_plan("verifier")
        self._target = BareProcess(config.source("target"), device=config.device, dtype=config.dtype, cpus=cpus)
        self.costs: dict[int, float] = {}
        self.tokens: dict[int, list[int]] = {}
        self._warm = False

    def measure(self, index: int, scenes: Sequence[Any], t_ns: int, offset_ns: int | None = None) -> None:
        """Time scene ``index``'s round at ``T = t_ns`` (event clock) with the clock offset the round
        used (None: the pinned one); the first call also warms the target up, untimed."""
        import numpy as np

        from cascade_sd_ros.core.align.buffer import TimeBuffer
        from cascade_sd_ros.core.align.clip import select_clip

        near = scenes[max(0, index - 1) : index + 2]  # a clip may reach back into the scene before
        frames: TimeBuffer[Any] = TimeBuffer(max(1, sum(len(s.frames) for s in near)))
        for scene in near:
            for f in scene.frames:
                frames.insert(int(f.stamp_ns), f.image)
        end = t_ns - (self.pinned_offset_ns if offset_ns is None else offset_ns)
        clip = select_clip(frames, end, self.clip_ns, self.frames, self.slop_ns)
        if clip is None:
            return  # the verifier had no frames either: nothing to decode
        pixels = np.stack(clip.items)
        self._target.wait_ready()
        if not self._warm:
            self._target.caption(pixels, self.question, self.budget)
            self._warm = True
        bare = self._target.caption(pixels, self.question, self.budget)
        self.costs[index] = bare.total_ms
        self.tokens[index] = list(bare.tokens)

    def __enter__(self) -> "BareClips":
        return self

    def __exit__(self, *exc: object) -> None:
        self._target.close()


def _final_fields(msg: Any, rejections: int = 0) -> dict[str, Any]:
    return {
        "first_rejections": rejections,
        "text": msg.text,
        "token_ids": list(msg.token_ids),
        "latency_caption_ms": float(msg.latency_caption_ms),
        "drafted": list(msg.drafted_per_stage),
        "accepted": list(msg.accepted_per_stage),
        "target_forwards": int(msg.target_forwards),
        "degraded_reason": msg.degraded_reason,
        "parts_ms": _parts(msg),
        "frame_offset_ms": float(msg.frame_offset_ms),
        "frame_offset_source": msg.frame_offset_source,
    }


def _parts(msg: Any) -> dict[str, float]:
    """Where a round's caption latency went, in the verifier (:func:`core.speed.caption_parts`)."""
    from cascade_sd_ros.core.speed import caption_parts

    parts = caption_parts(
        msg.latency_caption_ms, msg.latency_prefill_ms, msg.latency_verify_ms, msg.latency_draft_wait_ms
    )
    return {k: round(v, 2) for k, v in parts.items()}


@dataclass(frozen=True)
class PassPlan:
    """What the cascade's pass and the verifier alone's play, and how (:func:`run_passes`)."""

    config: Any  # the cascade's PipelineConfig
    alone_config: Any  # the verifier alone's: the same node without upstream stages
    scenes: tuple[Any, ...]  # the scenes played, a lead-out last
    rounds: Any  # SceneRounds: each scene's round id
    rate: float | None  # sensor-rate multiple; None: as fast as the nodes take them
    timeout_s: float  # per round's final caption
    bare: BareClips  # the target's bare floor, measured scene by scene
    relay: bool  # the verifier alone follows the clock offset of the cascade's rounds
    one_process: bool  # both runs composed in this process instead of stage processes


def run_passes(plan: PassPlan) -> tuple[dict[int, Any], dict[int, Any]]:
    """The final caption fields per scene index of the cascade and of the verifier alone."""
    return _one_process_passes(plan) if plan.one_process else _process_passes(plan)


def _one_process_passes(plan: PassPlan) -> tuple[dict[int, Any], dict[int, Any]]:
    """Both runs composed in this process, one after the other (for debugging), the bare floor of
    each scene between them (with the offset the cascade's round used); ``relay``: the verifier alone
    is told that offset before each round, as the cascade's drafter told the cascade's verifier."""
    from cascade_sd_ros.tools.pipeline import load_models

    scenes, rounds = plan.scenes, plan.rounds
    models = load_models(plan.config)
    cascade = _run_pass(plan.config, models, scenes, rounds, plan.rate, plan.timeout_s)
    for i in range(len(scenes) - 1):
        plan.bare.measure(i, scenes, rounds.round_ids[i], _round_offset_ns(cascade.get(i)))
    follow = cascade if plan.relay else None
    alone = _run_pass(
        plan.alone_config, {"target": models["target"]}, scenes, rounds, plan.rate, plan.timeout_s, follow
    )
    return cascade, alone


def _run_pass(
    config: Any,
    models: dict[str, Any],
    scenes: Sequence[Any],
    rounds: Any,
    rate: float | None,
    timeout_s: float,
    follow: dict[int, Any] | None = None,
) -> dict[int, Any]:
    """One run over the scenes; ``follow``: another run's finals, whose per-round clock offsets this
    run's verifier is told before the scene that completes each round."""
    import rclpy

    from cascade_sd_ros.tools.pipeline import OffsetRelay, SensorPlayer, build_pipeline, new_context, play_scenes

    context = new_context()
    pipeline = None
    player = None
    relay = None
    try:
        pipeline = build_pipeline(config, context, models=models)
        player = SensorPlayer(context=context)
        pipeline.start()
        player.wait_matched(config.image_subscribers(), config.event_subscribers())
        before = None
        if follow is not None:
            relay = OffsetRelay(context=context)
            _wait_until(relay.matched, 10.0)

            def before(i: int) -> None:
                _relay_round(relay.relay, follow.get(i - 1), rounds.round_ids[i - 1] if i > 0 else 0)

        finals = play_scenes(pipeline, player, scenes, rounds, timeout_s=timeout_s, rate=rate, before_scene=before)
        rejections = pipeline.collector.rejections if pipeline.collector is not None else {}
        return {i: _final_fields(m, rejections.get(int(m.round_id), 0)) for i, m in finals.items() if m is not None}
    finally:
        if pipeline is not None:
            pipeline.close()
        for node in (player, relay):
            if node is not None:
                node.destroy_node()
        if context.ok():
            rclpy.shutdown(context=context)


def _wait_until(cond: Any, timeout_s: float) -> bool:
    import time

    deadline = time.monotonic() + timeout_s
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.02)
    return bool(cond())


def _round_offset_ns(final: dict[str, Any] | None) -> int | None:
    """The clock offset a round's final caption says picked its frames (None: not reported)."""
    used = math.nan if final is None else final.get("frame_offset_ms", math.nan)
    return int(round(used * 1e6)) if math.isfinite(used) else None


def _relay_round(relay: Any, final: dict[str, Any] | None, t_ns: int) -> None:
    """Tell a follower the offset the leading run's round used (nothing when it did not finish)."""
    if final is not None and not relay(final["frame_offset_ms"], final["frame_offset_source"], t_ns):
        raise RuntimeError("the verifier alone did not acknowledge the clock offset it must follow")


def _process_passes(plan: PassPlan) -> tuple[dict[int, Any], dict[int, Any]]:
    """The cascade's stages and the verifier alone as separate processes (as on a robot), fed scene
    by scene in turn, so whatever else this machine does hits both runs alike, and after each scene
    the target's bare cost on it (``bare``). The verifiers and the bare target get a CPU of their
    own; this process (the sensor player) shares the others with the upstream stages.

    ``relay``: the verifier alone follows the offsets of the cascade's rounds, so the cascade plays
    each scene first (its round's offset is known once its final caption is) and the offset goes to
    the verifier alone before the same scene completes the same round there; otherwise the two runs
    take turns at going first."""
    from cascade_sd_ros.tools.stage_processes import StageProcesses, cpu_plan
    from cascade_sd_ros.tools.stage_taps import StageTaps

    rounds, relay, rate, timeout_s = plan.rounds, plan.relay, plan.rate, plan.timeout_s
    mine = os.sched_getaffinity(0)
    base = f"/cascade_sd_demo_{os.getpid()}"
    runs = {"cascade": (plan.config, f"{base}/cascade"), "alone": (plan.alone_config, f"{base}/alone")}
    finals: dict[str, dict[int, Any]] = {"cascade": {}, "alone": {}}
    player_cpus = cpu_plan("player", mine)
    try:
        if player_cpus:
            os.sched_setaffinity(0, player_cpus)
        with StageProcesses(available_cpus=mine) as procs, StageTaps() as taps:
            for name, (cfg, ns) in runs.items():
                procs.start(cfg, ns, tag=name)
                taps.add(name, ns, cfg, relay_offsets=relay and name == "alone")
            taps.wait_ready(procs, timeout_s=max(timeout_s, 120.0))
            order = list(runs)
            for i, scene in enumerate(plan.scenes):
                for name in order if i % 2 == 0 or relay else order[::-1]:  # neither run always goes first
                    if name == "alone" and relay and i > 0:
                        _relay_round(
                            lambda *a: taps.relay("alone", *a), finals["cascade"].get(i - 1), rounds.round_ids[i - 1]
                        )
                    taps.play(name, scene, rounds, rate)
                    if i == 0:
                        continue
                    msg = taps.wait_final(name, rounds.round_ids[i - 1], timeout_s, procs)
                    if msg is not None:
                        rejections = taps.taps[name].collector.rejections.get(int(msg.round_id), 0)
                        finals[name][i - 1] = _final_fields(msg, rejections)
                if i > 0:  # scene i-1's round is over in both runs: its floor, on the same CPU, now
                    offset = _round_offset_ns(finals["cascade"].get(i - 1))
                    plan.bare.measure(i - 1, plan.scenes, rounds.round_ids[i - 1], offset)
    finally:
        os.sched_setaffinity(0, mine)
    return finals["cascade"], finals["alone"]


def _scene_result(
    index: int,
    truth: str,
    casc: dict[str, Any] | None,
    alone: dict[str, Any] | None,
    bare_ms: float | None,
    true_offset_ms: float = math.nan,
) -> SceneResult:
    from cascade_sd_ros.core.report import offset_error_ms

    if casc is None:
        return SceneResult(
            index,
            None,
            truth,
            None if alone is None else alone["text"],
            None,
            dict.fromkeys(STAGE_NAMES.values()),
            None,
            None if alone is None else _finite(alone["latency_caption_ms"]),
            {},
            {} if alone is None else alone["parts_ms"],
            bare_ms,
            "",
            0,
            0,
        )
    acc: dict[str, float | None] = {
        name: (casc["accepted"][s] / casc["drafted"][s] if casc["drafted"][s] else None)
        for s, name in STAGE_NAMES.items()
    }
    equal = None if alone is None else casc["token_ids"] == alone["token_ids"]
    offset = _finite(casc["frame_offset_ms"])
    return SceneResult(
        index,
        casc["text"],
        truth,
        None if alone is None else alone["text"],
        equal,
        acc,
        _finite(casc["latency_caption_ms"]),
        None if alone is None else _finite(alone["latency_caption_ms"]),
        casc["parts_ms"],
        {} if alone is None else alone["parts_ms"],
        bare_ms,
        casc["degraded_reason"],
        casc["target_forwards"],
        len(casc["token_ids"]),
        offset,
        casc["frame_offset_source"],
        offset_error_ms(offset, true_offset_ms),
        tuple(casc["accepted"]),
        casc["first_rejections"],
    )


def _offset_status(results: list[SceneResult], oracle: bool) -> str:
    """One line: the offset pinned, or from which scene on the measured one was applied (and its
    error then), or that it was not yet confident when the scenes ran out."""
    if oracle:
        return "the scenes' true offset, pinned (--oracle-offset)"
    used = [r for r in results if r.offset_source not in ("", "initial")]
    if not used:
        return (
            f"not yet confident after {len(results)} scenes: every round used the initial guess "
            "(frame_offset 0); more scenes in motion let the drafter's estimate settle"
        )
    errors = [abs(r.offset_error_ms) for r in used if r.offset_error_ms is not None]
    worst = f", error at most {max(errors):.2f} ms" if errors else ""
    return f"measured by the drafter, applied from scene {used[0].index} on ({used[0].offset_source}{worst})"


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None
