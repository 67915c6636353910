"""Speculative decoding engine vs target-only `generate()` vs transformers assisted generation.

On the same models and prompts, in one run: tokens/s of

* `target-only generate()`      — transformers greedy decoding of the VideoLlava target (8 frames);
* `assisted generate()`         — transformers assisted generation (`assistant_model=`), whose
  assistant must take the target's inputs (prompt + video): the drafter's weights in a VideoLlava
  shell (random models: a truncated copy of the target, see below);
* `engine 2-stage (same assistant)` — this engine with that very assistant (same models, same inputs:
  the engine-vs-engine comparison);
* `engine 2-stage (event drafter)` and `engine 3-stage` — drafter on its own image (event frame),
  refiner on one RGB frame, target on the video: the cascade this package is for;
* zoo only, a drafter with another tokenizer (issue 16): `foreign-tokenizer drafter` — the zoo drafter
  under a different tokenizer (`core.zoo.foreign`: other ids, specials, word marks), drafting as text
  through `core.spec.text_drafts.TextDrafter` on its event image; against `universal assisted
  generate()` — transformers' universal assisted generation (`assistant_tokenizer=`) with that same
  drafter's language model as the assistant (UAG re-tokenises the target's prompt as text, so the
  assistant sees the question but no image: it cannot be given inputs of its own);

with acceptance per stage, target forwards, and whether each output equals target-only generate()
token for token. It also measures the verify cost ratio c(k) = time(target forward of k tokens) /
time(forward of 1 token) after the prefill.

Models: `--models zoo` (the trained tiny zoo via `cascade_sd_ros.core.zoo.load_zoo`, default when its
weights exist) or `--models random` (seeded random models; acceptance then only means something
because every draft model's language model is a truncated copy of the target's: same embeddings,
first layer(s), final norm and LM head).

    .venv/bin/python bench/spec.py [--models zoo|random] [--prompts N] [--max-new-tokens N] [--json]
    .venv/bin/python bench/spec.py --quick --json      # < 1 min on the 2-core dev machine
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import (
    AutoTokenizer,
    LlamaForCausalLM,
    LlavaForConditionalGeneration,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    VideoLlavaForConditionalGeneration,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench scripts run from a checkout

from cascade_sd_ros.core.spec.adapter import HFAdapter, StageContext  # noqa: E402
from cascade_sd_ros.core.spec.engine import CascadeDecoder  # noqa: E402
from cascade_sd_ros.core.spec.prompt import build_prompt_ids  # noqa: E402
from cascade_sd_ros.core.spec.testing import tiny_models  # noqa: E402
from cascade_sd_ros.core.spec.text_drafts import TextDrafter  # noqa: E402

TARGET_ONLY = "target-only generate()"
UNIVERSAL = "universal assisted generate()"
FOREIGN = "engine 2-stage (foreign-tokenizer drafter)"
DAMPING = 0.05  # random models: scale of the residual outputs of decoder layers after the first
ASSISTED = "assisted generate()"


@dataclass(frozen=True)
class Prompt:
    target: StageContext
    refiner: StageContext
    drafter: StageContext
    foreign: StageContext | None = None  # the foreign-tokenizer drafter's (zoo only)


@dataclass
class Foreign:
    """A drafter with another tokenizer, as the engine and as transformers' UAG use it."""

    drafter: TextDrafter
    assistant: PreTrainedModel  # its language model alone, for universal assisted generation
    target_tokenizer: PreTrainedTokenizerBase
    assistant_tokenizer: PreTrainedTokenizerBase
    folder: tempfile.TemporaryDirectory  # where it was built; removed with it


@dataclass
class Setup:
    kind: str  # "zoo" or "random"
    target: HFAdapter
    refiner: HFAdapter
    drafter: HFAdapter
    assistant: HFAdapter  # VideoLlava taking the target's own inputs
    prompts: list[Prompt]
    note: str
    foreign: Foreign | None = None


@dataclass
class MethodRun:
    tokens: int = 0
    seconds: float = 0.0
    equal: bool = True
    drafted: dict[str, int] = field(default_factory=dict)
    accepted: dict[str, int] = field(default_factory=dict)
    target_forwards: int = 0
    traded: int = 0  # lossy modes: committed tokens the exact rule would have rejected
    same_tokens: int = 0  # positions equal to target-only generate()
    lossless: bool = True


# ------------------------------------------------------------------ models
def video_shell(
    source: LlavaForConditionalGeneration | VideoLlavaForConditionalGeneration,
    target: VideoLlavaForConditionalGeneration,
    layers: int | None = None,
) -> VideoLlavaForConditionalGeneration:
    """A VideoLlava with `source`'s weights (vision tower copied to image and video towers).

    `layers`: keep only the first decoder layers (a truncated copy when `source` is the target).
    """
    cfg = copy.deepcopy(target.config)
    cfg.text_config = copy.deepcopy(source.config.text_config)
    cfg.vision_config = copy.deepcopy(source.config.vision_config)
    cfg.vision_feature_layer = source.config.vision_feature_layer
    cfg.vision_feature_select_strategy = source.config.vision_feature_select_strategy
    if layers is not None:
        cfg.text_config.num_hidden_layers = layers
    shell = VideoLlavaForConditionalGeneration(cfg)
    state = {}
    for key, value in source.state_dict().items():
        if key.startswith("model.vision_tower."):
            rest = key[len("model.vision_tower.") :]
            state["model.image_tower." + rest] = value
            state["model.video_tower." + rest] = value
        else:
            state[key] = value
    wanted = shell.state_dict()
    missing = [k for k in wanted if k not in state]
    if missing:
        raise ValueError(f"cannot build the assistant shell: weights missing for {missing[:3]}...")
    shell.load_state_dict({k: state[k] for k in wanted})
    shell.generation_config = copy.deepcopy(target.generation_config)
    return shell.to(target.device, target.dtype).eval()


def zoo_available(root: Path | None = None) -> bool:
    """Whether `load_zoo` is importable and the zoo at `root` (default: the shipped one) has weights."""
    try:
        from cascade_sd_ros.core.zoo import default_zoo_path, load_zoo  # noqa: F401, PLC0415
    except ImportError:
        return False
    root = root or default_zoo_path()
    return all((root / s / "model.safetensors").is_file() for s in ("target", "refiner", "drafter"))


class _TextOnlyAssistant(LlamaForCausalLM):
    """A Llama LM that takes (and ignores) the target's video: universal assisted generation hands the
    assistant every keyword the target got, and the assistant has no use for the target's pixels."""

    def forward(self, *args: object, pixel_values_videos: torch.Tensor | None = None, **kwargs: object):  # noqa: ANN201
        return super().forward(*args, **kwargs)


def foreign_drafter(zoo: object, root: Path | None, device: str) -> Foreign:
    """The zoo drafter under another tokenizer, built into a temporary folder and loaded from it."""
    from cascade_sd_ros.core.stage_model import load_stage_model  # noqa: PLC0415
    from cascade_sd_ros.core.zoo import default_zoo_path  # noqa: PLC0415
    from cascade_sd_ros.core.zoo.foreign import build_foreign_drafter  # noqa: PLC0415

    folder = tempfile.TemporaryDirectory(prefix="foreign-drafter-")
    out = build_foreign_drafter((root or default_zoo_path()) / "drafter", Path(folder.name) / "drafter")
    stage = load_stage_model(str(out), "drafter", device=device, backend="transformers")
    ftok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    ztok = AutoTokenizer.from_pretrained((root or default_zoo_path()) / "target", local_files_only=True)
    target = zoo.target  # type: ignore[attr-defined]
    drafter = TextDrafter(stage.adapter, ftok, ztok, target.vocab_size, target.eos_token_id, name="foreign")
    llava = stage.adapter.model  # type: ignore[attr-defined]
    assistant = _TextOnlyAssistant(llava.config.text_config)
    assistant.model = llava.model.language_model  # the same weights, not a copy
    assistant.lm_head = llava.lm_head
    assistant.generation_config.eos_token_id = ftok.eos_token_id
    return Foreign(drafter, assistant.to(target.device).eval(), ztok, ftok, folder)


def setup_zoo(n_prompts: int, device: str, root: Path | None) -> Setup:
    from cascade_sd_ros.core.zoo import load_zoo  # noqa: PLC0415
    from cascade_sd_ros.core.zoo.data import EVAL_STREAM, build_sample  # noqa: PLC0415

    zoo = load_zoo(root, device=device)
    foreign = foreign_drafter(zoo, root, device)
    fmodel = foreign.drafter.drafter.model  # type: ignore[attr-defined]
    prompts = []
    for i in range(n_prompts):
        clip, events, _ = build_sample(0, EVAL_STREAM, i, zoo.geometry, with_events=True)
        drafter = zoo.context("drafter", events)
        fids = build_prompt_ids(foreign.assistant_tokenizer, zoo.prompt, "image", fmodel.config, 1)
        prompts.append(
            Prompt(
                zoo.context("target", clip),
                zoo.context("refiner", clip[-1]),
                drafter,
                StageContext(fids, drafter.pixel_values, "image"),
            )
        )
    # The assistant must take the target's inputs; the refiner (RGB-trained, the target was grown
    # from it) agrees with the target more in a VideoLlava shell than the event-trained drafter.
    shell = video_shell(zoo.refiner.model, zoo.target.model)
    assistant = HFAdapter(shell, name="assistant", modality="video")
    note = (
        f"trained tiny zoo ({root or 'cascade_sd_ros/zoo'}); scenes from the zoo's held-out stream; assistant = "
        "the zoo refiner's weights in a VideoLlava shell fed the target's 8-frame clip"
    )
    note += (
        "; foreign-tokenizer drafter = the zoo drafter under another tokenizer (core.zoo.foreign), drafting as text "
        "on its event image; universal assisted generate() = its language model as transformers' assistant "
        "(assistant_tokenizer=), which sees the prompt's text but no image"
    )
    return Setup("zoo", zoo.target, zoo.refiner, zoo.drafter, assistant, prompts, note, foreign)


def setup_random(n_prompts: int, quick: bool, device: str) -> Setup:
    sizes = (
        dict(vocab_size=256, hidden_size=128, target_layers=4)
        if quick
        else dict(vocab_size=2048, hidden_size=768, target_layers=6)
    )
    tm = tiny_models(
        0,
        **sizes,
        refiner_layers=2,
        drafter_layers=1,
        num_frames=8,
        image_size=16,
        patch_size=8,
        question_len=12,
        aligned=True,
        device=device,
    )
    # Random logits are nearly flat, so every extra layer flips argmaxes; damp what the layers after
    # the first add to the residual stream (target and refiner alike, so copies stay exact prefixes).
    with torch.no_grad():
        for model in (tm.target.model, tm.refiner.model):
            for layer in model.model.language_model.layers[1:]:
                layer.self_attn.o_proj.weight.mul_(DAMPING)
                layer.mlp.down_proj.weight.mul_(DAMPING)
    prompts = []
    for i in range(n_prompts):
        c = tm.make_contexts(100 + i)
        prompts.append(Prompt(c.target, c.refiner, c.drafter))
    shell = video_shell(tm.target.model, tm.target.model, layers=1)
    assistant = HFAdapter(shell, name="assistant", modality="video")
    note = (
        f"random models: target VideoLlava hidden {sizes['hidden_size']}, {sizes['target_layers']} layers, "
        f"vocab {sizes['vocab_size']}, 8 frames of 16 px (40 video tokens); refiner/drafter Llava with 2/1 "
        "layers, truncated copies of the target (its vision tower, projector, embeddings, first layers, norm "
        "and LM head) seeing the clip's last/first frame; assistant = the target truncated to 1 layer; residual "
        f"outputs of decoder layers after the first scaled by {DAMPING} so that truncated copies agree often"
    )
    return Setup("random", tm.target, tm.refiner, tm.drafter, assistant, prompts, note)


# ------------------------------------------------------------------ measurements
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def hf_generate(
    target: HFAdapter,
    ctx: StageContext,
    max_new: int,
    assistant: HFAdapter | None = None,
    foreign: Foreign | None = None,
) -> list[int]:
    kwargs = {"pixel_values_videos": ctx.pixel_values.to(target.device, target.model.dtype)}
    if assistant is not None:
        kwargs["assistant_model"] = assistant.model
    if foreign is not None:  # universal assisted generation: another tokenizer, drafts re-tokenised as text
        kwargs.update(
            assistant_model=foreign.assistant,
            tokenizer=foreign.target_tokenizer,
            assistant_tokenizer=foreign.assistant_tokenizer,
        )
    ids = torch.tensor([ctx.input_ids], device=target.device)
    with torch.inference_mode():
        out = target.model.generate(input_ids=ids, max_new_tokens=max_new, do_sample=False, **kwargs)
    return out[0, ids.shape[1] :].tolist()


def verify_cost_ratio(target: HFAdapter, ctx: StageContext, ks: Sequence[int], reps: int) -> dict[int, float]:
    """c(k) = median time of one target forward over k new tokens / the same for 1 token."""
    target.prefill(ctx)
    vocab = target.vocab_size
    times: dict[int, float] = {}
    for k in (1, *[k for k in ks if k != 1]):
        draft = [(7 * i + 3) % (vocab - 2) for i in range(k)]
        samples = []
        for _ in range(reps):
            target.score([], [])  # roll the cache back to the prompt (no forward)
            _sync(target.device)
            t0 = time.perf_counter()
            target.score([], draft)
            _sync(target.device)
            samples.append(time.perf_counter() - t0)
        times[k] = statistics.median(samples)
    return {k: times[k] / times[1] for k in times}


def run(setup: Setup, max_new: int, gamma: int, reps: int) -> dict:
    t, r, d, a = setup.target, setup.refiner, setup.drafter, setup.assistant
    engines: dict[str, tuple[Callable[[], CascadeDecoder], Callable[[Prompt], list[StageContext]]]] = {
        "engine target-only": (lambda: CascadeDecoder([t]), lambda p: [p.target]),
        "engine 2-stage (same assistant)": (
            lambda: CascadeDecoder([a, t], gamma=gamma),
            lambda p: [p.target, p.target],
        ),
        "engine 2-stage (event drafter)": (
            lambda: CascadeDecoder([d, t], gamma=gamma),
            lambda p: [p.drafter, p.target],
        ),
        "engine 3-stage": (
            lambda: CascadeDecoder([d, r, t], gamma=(gamma, gamma + 1)),
            lambda p: [p.drafter, p.refiner, p.target],
        ),
        # lossy modes: they report what they traded (tokens accepted that the exact rule would reject)
        "engine 3-stage pyramid (tau 0.3/0.3)": (
            lambda: CascadeDecoder([d, r, t], "pyramid", gamma=(gamma, gamma + 1), taus=(0.3, 0.3)),
            lambda p: [p.drafter, p.refiner, p.target],
        ),
        "engine 2-stage cascade (opt, alpha 0.3)": (
            lambda: CascadeDecoder([d, t], "cascade", gamma=gamma, deferral="opt", alpha=0.3),
            lambda p: [p.drafter, p.target],
        ),
    }
    foreign = setup.foreign
    if foreign is not None:
        engines[FOREIGN] = (lambda: CascadeDecoder([foreign.drafter, t], gamma=gamma), lambda p: [p.foreign, p.target])
    # transformers' own adaptive schedule from the same initial draft length (its default drafts 20)
    for gen in [a.model.generation_config] + ([foreign.assistant.generation_config] if foreign else []):
        gen.num_assistant_tokens = gamma
        gen.num_assistant_tokens_schedule = "heuristic"
    names = [TARGET_ONLY, ASSISTED, *([UNIVERSAL] if foreign else []), *engines]
    runs = {n: MethodRun() for n in names}
    # warm-up (first calls allocate and pick kernels)
    warm = setup.prompts[0]
    hf_generate(t, warm.target, 4)
    hf_generate(t, warm.target, 4, a)
    if foreign is not None:
        hf_generate(t, warm.target, 4, foreign=foreign)
    # one decoder per method for the whole run: its draft-length controllers keep what they learned
    # across captions, as transformers' "heuristic" schedule does for the assistant
    decoders = {name: make() for name, (make, _) in engines.items()}
    for name, (_, ctxs) in engines.items():
        decoders[name].generate(ctxs(warm), 4)
    for _ in range(reps):
        for p in setup.prompts:  # methods interleaved per prompt: load swings hit all alike
            _sync(t.device)
            t0 = time.perf_counter()
            ref = hf_generate(t, p.target, max_new)
            _sync(t.device)
            runs[TARGET_ONLY].seconds += time.perf_counter() - t0
            runs[TARGET_ONLY].tokens += len(ref)
            t0 = time.perf_counter()
            out = hf_generate(t, p.target, max_new, a)
            _sync(t.device)
            runs[ASSISTED].seconds += time.perf_counter() - t0
            runs[ASSISTED].tokens += len(out)
            runs[ASSISTED].equal &= out == ref
            if foreign is not None:
                t0 = time.perf_counter()
                out = hf_generate(t, p.target, max_new, foreign=foreign)
                _sync(t.device)
                runs[UNIVERSAL].seconds += time.perf_counter() - t0
                runs[UNIVERSAL].tokens += len(out)
                runs[UNIVERSAL].equal &= out == ref
            for name, (_, ctxs) in engines.items():
                decoder = decoders[name]
                t0 = time.perf_counter()
                res = decoder.generate(ctxs(p), max_new)
                _sync(t.device)
                m = runs[name]
                m.seconds += time.perf_counter() - t0
                m.tokens += len(res.token_ids)
                m.equal &= res.token_ids == ref
                m.same_tokens += sum(1 for x, y in zip(res.token_ids, ref) if x == y)
                m.lossless = res.lossless
                m.traded += res.stats.lossy_tokens
                m.target_forwards += res.stats.target_forwards
                for s in res.stats.stages[:-1]:
                    m.drafted[s.name] = m.drafted.get(s.name, 0) + s.drafted
                    m.accepted[s.name] = m.accepted.get(s.name, 0) + s.accepted
    base = runs[TARGET_ONLY].tokens / runs[TARGET_ONLY].seconds
    assisted = runs[ASSISTED].tokens / runs[ASSISTED].seconds
    universal = runs[UNIVERSAL].tokens / runs[UNIVERSAL].seconds if UNIVERSAL in runs else None
    methods = {}
    for name, m in runs.items():
        tps = m.tokens / m.seconds
        entry = {
            "tokens_per_s": round(tps, 2),
            "tokens": m.tokens,
            "seconds": round(m.seconds, 3),
            "equal_to_target": m.equal,
            "vs_target_only": round(tps / base, 3),
            "vs_assisted": round(tps / assisted, 3),
        }
        if universal is not None and name in (FOREIGN, UNIVERSAL):
            entry["vs_universal_assisted"] = round(tps / universal, 3)
        if not m.lossless:
            entry["lossless"] = False
            entry["traded_tokens"] = m.traded
            entry["token_agreement"] = round(m.same_tokens / max(runs[TARGET_ONLY].tokens, 1), 3)
        if m.drafted:
            # in target tokens: what the target checked (a text drafter's drafts re-tokenised into its ids)
            entry["acceptance"] = {
                s: round(m.accepted[s] / m.drafted[s], 3) if m.drafted[s] else None for s in m.drafted
            }
            entry["target_forwards"] = m.target_forwards
        methods[name] = entry
    return methods


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models",
        choices=("zoo", "random"),
        default=None,
        help="zoo (default when the trained zoo's weights exist) or random",
    )
    parser.add_argument(
        "--zoo-root",
        type=Path,
        default=None,
        help="zoo folder with target/ refiner/ drafter/ (default: the shipped cascade_sd_ros/zoo)",
    )
    parser.add_argument("--prompts", type=int, default=None, help="number of prompts (default 12, quick 3)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="caption budget (default 32, quick 16)")
    parser.add_argument("--gamma", type=int, default=4, help="initial draft length (adaptive)")
    parser.add_argument("--reps", type=int, default=1, help="passes over the prompts")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="small run for a smoke check (< 1 min)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    for name in ("prompts", "max_new_tokens", "gamma", "reps", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    torch.set_num_threads(args.threads)
    n_prompts = args.prompts or (3 if args.quick else 12)
    max_new = args.max_new_tokens or (16 if args.quick else 32)
    kind = args.models or ("zoo" if zoo_available(args.zoo_root) else "random")
    if kind == "zoo" and not zoo_available(args.zoo_root):
        parser.error(
            f"--models zoo: no trained zoo weights under {args.zoo_root or 'cascade_sd_ros/zoo'} "
            "(train them, or use --models random)"
        )
    t_start = time.perf_counter()
    if kind == "zoo":
        setup = setup_zoo(n_prompts, args.device, args.zoo_root)
    else:
        setup = setup_random(n_prompts, args.quick, args.device)
    methods = run(setup, max_new, args.gamma, args.reps)
    ks = (1, 2, 4, 8) if args.quick else (1, 2, 4, 8, 16)
    c_k = verify_cost_ratio(setup.target, setup.prompts[0].target, ks, reps=5 if args.quick else 20)
    result = {
        "models": kind,
        "note": setup.note,
        "prompts": n_prompts,
        "max_new_tokens": max_new,
        "gamma": args.gamma,
        "device": args.device,
        "threads": args.threads,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus",
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "methods": methods,
        "verify_cost_ratio": {str(k): round(v, 3) for k, v in c_k.items()},
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"models: {kind} - {setup.note}")
    print(f"{n_prompts} prompts x {args.reps}, max_new_tokens {max_new}, gamma {args.gamma} (adaptive), {args.device}")
    print(f"{'method':44s} {'tok/s':>8s} {'x target':>9s} {'x assisted':>11s} {'equal':>6s}  acceptance")
    for name, m in methods.items():
        acc = ", ".join(f"{s} {v:.2f}" for s, v in m.get("acceptance", {}).items() if v is not None)
        trade = (
            f"  (lossy: traded {m['traded_tokens']} tokens, agreement {m['token_agreement']:.2f})"
            if "traded_tokens" in m
            else ""
        )
        uni = f"  ({m['vs_universal_assisted']:.2f}x universal assisted)" if name == FOREIGN else ""
        print(
            f"{name:44s} {m['tokens_per_s']:8.1f} {m['vs_target_only']:9.2f} {m['vs_assisted']:11.2f} "
            f"{str(m['equal_to_target']):>6s}  {acc}{trade}{uni}"
        )
    print("verify cost ratio c(k): " + ", ".join(f"c({k})={v:.2f}" for k, v in c_k.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
