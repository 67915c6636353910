"""The nodes' model path on one GPU: does a stage pick the static path, and what does it buy there?

One script for one device call (prepared for a session that has an H200; CPU-safe with --dry-run).

  1. choice: what each stage's node gets from its defaults (``backend=auto``, ``dtype=auto``) on
     ``--device``. With rclpy importable the real ``VideoVerifier`` node is built (in a context of its
     own) and its diagnostics values are read; without it (the GPU machine has no ROS) the same
     ``load_stage_model`` call its constructor makes is run, for all three stages of the shipped
     zoo. On CUDA every stage must report ``cuda-graphs``; on a CPU ``transformers`` with the reason.
     It also records each stage's warm-up time and whether the zoo's greedy captions on a few
     held-out scenes agree between the static path and transformers (bf16 on CUDA: near-ties may
     split, so this is reported, not required).
  2. target: a Video-LLaVA-7B-shaped target (Llama-7B text, CLIP ViT-L/14 at 224, 8 frames, random
     bf16 weights built on the GPU) through ``stage_model_from_hf`` -- the code ``load_stage_model``
     runs after loading a folder -- once with ``backend=cuda-graphs`` and once with
     ``backend=transformers`` over the same weights: construction (graph capture, compiling),
     warm-up, encode+prefill ms, decode ms/token as the verifier alone runs it (one token per call,
     one host sync each), chained decode ms/token (``propose(k)``), and verify ms for k drafts.

Results go to a JSON file, rewritten after every phase (a run cut short still reports what it
measured), and a table on stdout. Exit status 1 when a check fails (a stage on CUDA not on
cuda-graphs, a CPU stage without its fallback reason, static and transformers disagreeing on the
first tokens in float32).

    PYTHONUNBUFFERED=1 PYTHONPATH=$PWD python3 bench/gpu_nodes.py --out $OUT/gpu_nodes.json   # on the H200
    .venv/bin/python bench/gpu_nodes.py --dry-run                                             # CPU, tiny shape

The dry run uses the CPU and a tiny target shape in float32; its static path runs the same adapter
eagerly (no graphs on a CPU; ``backend=cuda-graphs`` is refused there, so the bench builds it with
``sized_static_adapter``, the function the static backend itself uses).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere (python3 bench/gpu_nodes.py)
    sys.path.insert(0, str(ROOT))

from cascade_sd_ros.core.stage_model import (  # noqa: E402
    BackendChoice,
    StageModel,
    default_stage_source,
    load_stage_model,
    sized_static_adapter,
    stage_model_from_hf,
)

ROLES = ("target", "refiner", "drafter")
QUESTION = "describe the scene"


# ----------------------------------------------------------------------------------------- shapes
# Video-LLaVA-7B-hf's shape and the dry run's tiny one: bench/gpu_verifier.py's, one definition
# (random weights: latency does not depend on the values).
if str(ROOT / "bench") not in sys.path:
    sys.path.insert(0, str(ROOT / "bench"))
from gpu_verifier import FULL, TINY, Shape  # noqa: E402


class ByteTokenizer:
    """A stand-in tokenizer for random-weight models: BOS, then one id per UTF-8 byte of the text,
    with "<video>"/"<image>" mapped to the config's placeholder ids (what ``build_prompt_ids`` needs)."""

    def __init__(self, vocab: int) -> None:
        self.vocab = vocab
        self.special = {"<video>": vocab - 1, "<image>": vocab - 2}

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = [1] if add_special_tokens else []
        for part in re.split(r"(<video>|<image>)", text):
            if part in self.special:
                ids.append(self.special[part])
            else:
                ids.extend(3 + b % (self.vocab - 5) for b in part.encode("utf-8"))
        return ids

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return " ".join(f"<{t}>" for t in token_ids)


# ----------------------------------------------------------------------------------------- utils
class Report:
    """The JSON result, rewritten after every phase so a cut-short run still returns its figures."""

    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.path = path
        self.data: dict[str, Any] = {"meta": meta, "choice": {}, "target": {}, "checks": {}}
        self.save()

    def put(self, section: str, key: str, value: Any) -> None:
        self.data.setdefault(section, {})[key] = value
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        tmp.replace(self.path)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn: Callable[[], Any], device: torch.device, reps: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def greedy(adapter: Any, context: Any, n: int) -> list[int]:
    """The verifier alone's loop: one token per call, one host sync each (EOS ignored: random weights)."""
    adapter.prefill(context)
    out: list[int] = []
    for _ in range(n):
        out.append(int(adapter.propose(out, 1).token_ids[0]))
    return out


# --------------------------------------------------------------------------------- phase 1: choice
def node_choice(device: str) -> dict[str, Any]:
    """What the verifier node reports when built from its defaults on ``device`` (needs rclpy)."""
    # this machine's DDS only: never multicast, and keep out of other runs' default domain
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_DOMAIN_ID", "177")
    import rclpy
    from rclpy.parameter import Parameter

    from cascade_sd_ros.nodes.video_verifier import VideoVerifier

    context = rclpy.context.Context()
    rclpy.init(context=context)
    try:
        t0 = time.perf_counter()
        node = VideoVerifier(context=context, parameter_overrides=[Parameter("device", value=device)])
        built_s = time.perf_counter() - t0
        seen: list[dict[str, object]] = []
        node.publish_status = lambda level, message, values: seen.append(values)  # type: ignore[method-assign]
        node.publish_diagnostics()
        result = {
            "via": "VideoVerifier node",
            "backend": seen[0]["backend"],
            "backend_reason": seen[0]["backend_reason"],
            "construct_s": round(built_s, 3),
            "warm_up_s": node.model.warm_up_s,
        }
        node.close()
        node.destroy_node()
        return result
    finally:
        if context.ok():
            rclpy.shutdown(context=context)


def loader_choice(role: str, device: str) -> tuple[dict[str, Any], StageModel]:
    """The call ``StageNode.__init__`` makes with the default parameters (dtype/backend auto)."""
    t0 = time.perf_counter()
    model = load_stage_model(
        default_stage_source(role), role, device=device, dtype="auto", backend="auto", max_new_tokens=32
    )
    load_s = time.perf_counter() - t0
    warm_s = model.warm_up(QUESTION)
    return {
        "via": "load_stage_model (the node's call, default parameters)",
        "backend": model.backend.name,
        "backend_reason": model.backend.reason,
        "adapter": type(model.adapter).__name__,
        "dtype": str(model.adapter.model.dtype),
        "load_s": round(load_s, 3),
        "warm_up_s": None if warm_s is None else round(warm_s, 3),
    }, model


def zoo_agreement(models: dict[str, StageModel], device: str, scenes: int) -> dict[str, Any]:
    """Greedy captions of the node's backend vs transformers on held-out zoo scenes, per stage."""
    from cascade_sd_ros.core.spec.engine import target_only_greedy
    from cascade_sd_ros.core.zoo.configs import DataGeometry
    from cascade_sd_ros.core.zoo.data import EVAL_STREAM, build_sample
    from cascade_sd_ros.core.zoo.load import read_zoo_meta

    meta = read_zoo_meta(Path(default_stage_source("target")))
    geometry = DataGeometry(**meta["geometry"]) if "geometry" in meta else DataGeometry()  # as load_zoo reads it
    out: dict[str, Any] = {}
    for role, model in models.items():
        ref = load_stage_model(
            default_stage_source(role), role, device=device, backend="transformers", max_new_tokens=32
        )
        same = 0
        for index in range(scenes):
            clip, events, _ = build_sample(0, EVAL_STREAM, index, geometry, with_events=True)
            pixels = {"target": clip, "refiner": clip[-1], "drafter": events}[role]
            a = target_only_greedy(model.adapter, model.context(pixels, QUESTION), 24)
            b = target_only_greedy(ref.adapter, ref.context(pixels, QUESTION), 24)
            same += a == b
        out[role] = {"scenes": scenes, "equal_captions": same}
    return out


def phase_choice(args: argparse.Namespace, rep: Report) -> bool:
    ok = True
    try:
        import rclpy  # noqa: F401

        have_ros = True
    except ImportError:
        have_ros = False
    rep.put("choice", "rclpy", have_ros)
    if have_ros:
        node = node_choice(args.device)
        rep.put("choice", "verifier_node", node)
        print(f"verifier node on {args.device}: backend {node['backend']} ({node['backend_reason']})")
        ok &= _check_choice(rep, "verifier_node", node, args.device)
    models: dict[str, StageModel] = {}
    for role in ROLES:
        info, model = loader_choice(role, args.device)
        models[role] = model
        rep.put("choice", role, info)
        print(
            f"{role:8s} on {args.device}: backend {info['backend']} ({info['backend_reason']}), "
            f"{info['dtype']}, load {info['load_s']} s, warm-up {info['warm_up_s']} s"
        )
        ok &= _check_choice(rep, role, info, args.device)
    if args.zoo_scenes > 0:
        agree = zoo_agreement(models, args.device, args.zoo_scenes)
        rep.put("choice", "zoo_greedy_agreement", agree)
        print(
            "zoo greedy captions, node backend vs transformers: "
            + ", ".join(f"{r} {v['equal_captions']}/{v['scenes']}" for r, v in agree.items())
        )
        if torch.device(args.device).type != "cuda":  # float32 on both sides: must agree exactly
            for role, v in agree.items():
                ok &= v["equal_captions"] == v["scenes"]
                rep.put("checks", f"zoo_{role}_captions_equal", v["equal_captions"] == v["scenes"])
    return ok


def _check_choice(rep: Report, name: str, info: dict[str, Any], device: str) -> bool:
    if torch.device(device).type == "cuda":
        good = info["backend"] == "cuda-graphs"
    else:
        good = info["backend"] == "transformers" and "needs CUDA" in str(info["backend_reason"])
    rep.put("checks", f"{name}_backend", good)
    return good


# -------------------------------------------------------------------------------- phase 2: target
def build_target(shape: Shape, device: torch.device, dtype: torch.dtype, seed: int) -> Any:
    """Random weights, initialised on ``device`` directly (a 7B model never touches host memory)."""
    from transformers import VideoLlavaForConditionalGeneration

    torch.manual_seed(seed)
    with torch.device(device), torch.no_grad():
        model = VideoLlavaForConditionalGeneration._from_config(shape.config(), dtype=dtype)
    model.eval()
    model.generation_config.eos_token_id = 2
    model.generation_config.pad_token_id = 0
    return model


def time_stage(
    name: str, stage: StageModel, frames: np.ndarray, args: argparse.Namespace, rep: Report, built_s: float
) -> dict[str, Any]:
    adapter = stage.adapter
    device = adapter.device
    ctx = stage.context(frames, QUESTION)
    warm_s = stage.warm_up(QUESTION)
    result: dict[str, Any] = {
        "backend": stage.backend.name,
        "backend_reason": stage.backend.reason,
        "adapter": type(adapter).__name__,
        "build_s": round(built_s, 3),
        "warm_up_s": None if warm_s is None else round(warm_s, 3),
        "context_positions": len(ctx.input_ids),
    }
    result["prefill_ms"] = round(median_ms(lambda: adapter.prefill(ctx), device, args.reps), 3)
    rep.put("target", name, result)
    tokens = greedy(adapter, ctx, args.tokens)
    result["greedy_tokens"] = tokens

    def step_loop() -> None:  # decode as the verifier alone runs it: one call, one sync per token
        out = tokens[:1]
        for t in tokens[1:]:
            adapter.propose(out, 1)
            out.append(t)

    adapter.prefill(ctx)
    loop_ms = median_ms(step_loop, device, max(1, args.reps // 3))
    result["decode_ms_per_token"] = round(loop_ms / max(1, len(tokens) - 1), 3)
    chained = median_ms(lambda: adapter.propose(tokens[:1], len(tokens)), device, max(1, args.reps // 3))
    result["chained_decode_ms_per_token"] = round(chained / max(1, len(tokens) - 1), 3)
    base = tokens[: len(tokens) // 2]
    verify: dict[str, float] = {}
    for k in args.verify_k:
        draft = tokens[len(base) : len(base) + k] or [3] * k
        draft = (draft * k)[:k]
        adapter.next_logits(base)
        verify[str(k)] = round(
            median_ms(lambda d=draft: (adapter.score(base, d), adapter.next_logits(base)), device, args.reps), 3
        )
    result["verify_ms"] = verify
    rep.put("target", name, result)
    print(
        f"{name:14s} [{result['backend']}] build {result['build_s']} s, warm-up {result['warm_up_s']} s, "
        f"prefill {result['prefill_ms']} ms, decode {result['decode_ms_per_token']} ms/token "
        f"(chained {result['chained_decode_ms_per_token']}), verify {verify}"
    )
    return result


def phase_target(args: argparse.Namespace, rep: Report) -> bool:
    from transformers import VideoLlavaImageProcessor

    device = torch.device(args.device)
    shape = TINY if args.dry_run else FULL
    dtype = torch.float32 if device.type != "cuda" else torch.bfloat16
    t0 = time.perf_counter()
    model = build_target(shape, device, dtype, args.seed)
    rep.put(
        "target",
        "shape",
        dataclasses.asdict(shape) | {"dtype": str(dtype), "init_s": round(time.perf_counter() - t0, 2)},
    )
    processor = VideoLlavaImageProcessor(
        size={"shortest_edge": shape.image_size}, crop_size={"height": shape.image_size, "width": shape.image_size}
    )
    tokenizer = ByteTokenizer(shape.vocab)
    frames = np.random.default_rng(args.seed).integers(
        0, 256, (shape.frames, shape.image_size, shape.image_size, 3), dtype=np.uint8
    )
    # transformers first: the static adapter re-points q/k/v and gate/up at fused matrices (same
    # values, same memory), which leaves HF's forward as it was either way
    t0 = time.perf_counter()
    hf = stage_model_from_hf(model, "target", tokenizer, processor, backend="transformers", max_new_tokens=args.tokens)
    ref = time_stage("transformers", hf, frames, args, rep, time.perf_counter() - t0)
    t0 = time.perf_counter()
    if device.type == "cuda":
        static = stage_model_from_hf(
            model, "target", tokenizer, processor, backend="cuda-graphs", max_new_tokens=args.tokens
        )
    else:  # backend=cuda-graphs is refused off CUDA: the same sized adapter, eager
        static = dataclasses.replace(
            hf,
            adapter=sized_static_adapter(model, "target", "video", hf.num_frames, args.tokens),
            backend=BackendChoice("cuda-graphs", "dry run: the static adapter, eager on the CPU"),
        )
    ours = time_stage("static", static, frames, args, rep, time.perf_counter() - t0)
    speed = ref["decode_ms_per_token"] / max(ours["decode_ms_per_token"], 1e-9)
    rep.put("target", "decode_speedup", round(speed, 2))
    n = len(ref["greedy_tokens"])
    agree = next((i for i, (a, b) in enumerate(zip(ref["greedy_tokens"], ours["greedy_tokens"])) if a != b), n)
    rep.put("target", "greedy_tokens_agree_for", agree)
    print(
        f"static vs transformers: decode {speed:.2f}x; greedy tokens agree for {agree}/{n} "
        f"({'float32: must be all' if dtype == torch.float32 else 'bf16 random weights: near-ties may split'})"
    )
    if dtype == torch.float32:
        rep.put("checks", "target_tokens_equal", agree == n)
        return agree == n
    return True


# -------------------------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny target shape in float32 (seconds)")
    p.add_argument("--device", default=None, help="default: cuda, or cpu for --dry-run")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default $OUT/gpu_nodes.json or out/)")
    p.add_argument("--tokens", type=int, default=32, help="greedy tokens per decode timing")
    p.add_argument(
        "--verify-k",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1, 4, 8, 16],
        help="draft lengths to time verification for (comma-separated)",
    )
    p.add_argument("--reps", type=int, default=6, help="timed repetitions per figure")
    p.add_argument("--zoo-scenes", type=int, default=4, help="held-out zoo scenes for the caption agreement")
    p.add_argument("--phases", default="choice,target", help="comma-separated: choice, target")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.device is None:
        args.device = "cpu" if args.dry_run else "cuda"
    if args.dry_run:
        args.tokens = min(args.tokens, 8)
        args.reps = min(args.reps, 2)
        args.verify_k = [k for k in args.verify_k if k <= 4] or [1]
        args.zoo_scenes = min(args.zoo_scenes, 1)
    if args.out is None:
        args.out = (
            Path(os.environ["OUT"]) / "gpu_nodes.json" if os.environ.get("OUT") else ROOT / "out" / "gpu_nodes.json"
        )
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available here (use --dry-run on a CPU)", file=sys.stderr)
        return 2
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": args.device,
        "dry_run": args.dry_run,
        "argv": list(argv) if argv is not None else sys.argv[1:],
    }
    if torch.device(args.device).type == "cuda":
        meta["gpu"] = torch.cuda.get_device_name(torch.device(args.device))
    import transformers

    meta["transformers"] = transformers.__version__
    rep = Report(args.out, meta)
    ok = True
    phases = set(args.phases.split(","))
    if "choice" in phases:
        ok &= phase_choice(args, rep)
    if "target" in phases:
        ok &= phase_target(args, rep)
    rep.put("checks", "all_ok", bool(ok))
    print(f"{'OK' if ok else 'FAILED'}: results in {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
