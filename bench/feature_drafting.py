"""Feature-level drafting on the zoo: does the draft head gain from event features? (issue 17's ablation)

On the same held-out scenes, interleaved per scene, at equal output (every lossless run is checked
token for token against target-only `generate()`):

* `target-only generate()`: transformers greedy decoding of the target, the reference;
* `engine, event drafter`: today's token-level cascade (the 1-layer event LLaVA drafts);
* `head: target states` / `head: event features` / `head: fused`: the draft head's three inputs
  (with target states, a head trained with video rows also reads the target's own video tokens);
* `head: fused, no video tokens`: the same head without them (`HeadAdapter.read_video` off): what
  the target's video tokens add;
* `head: fused, no confidence stop` (with `--stop-below` > 0): the fused head drafting the
  controller's adapted length instead of stopping after its first unsure token;
* `head: fused + prefill hiding`: the first draft made from event features before the clip's prefill
  and carried in the prefill forward (`HFAdapter.prefill(context, caption=draft)`): verified for free;
* `head: fused + early tree`: before the clip's prefill the event drafter grows a draft tree
  (`tree.grow_tree`, one drafter forward per level: where it is unsure, as about colour, which events
  do not carry, it keeps every likely token, each with its own continuation); the tree rides in the
  prefill forward (`HFAdapter.prefill_tree`, tree attention) and the head drafts the rest;
* `head: fused + runner-up branches`: each round's head draft is a tree: at its first `--branches`
  unsure positions (probability < `tree.UNSURE_BELOW`) the head's second choice, followed by a copy
  of the chain's later tokens (`CascadeDecoder(tree_branches=N)`, `tree.deviation_tree`): no head
  forward of its own, a few more rows in the target's verify forward;
* `head: fused + early tree + branches`: both: the early tree in the prefill, branched head drafts after;
* `head: fused + merging`: per position, the head's or the event drafter's token, whichever stage's
  measured acceptance for that token class (colour/shape/motion/other, measured on calibration
  scenes of another stream) is higher.

Per method: alpha, the consecutive-accept rate (EAGLE's acceptance rate: of the draft tokens the
target judged in order, the share accepted = accepted / (accepted + first rejections)), acceptance
(accepted / drafted, which also counts the tokens after a rejection, so it falls as gamma grows),
accepted tokens per verify step, tokens per target forward (prefill included), speed-up over
target-only `generate()`; per head mode the head's cost per drafted token as a fraction of a one-token
target forward (medians over the scenes, timed side by side).

    .venv/bin/python bench/feature_drafting.py [--zoo DIR] [--scenes N] [--objects 1-4] [--gamma G] [--reps R] [--json]

Speed-ups are also given per caption length (the target's caption, in tokens): the prefill is paid
by every method, so the longer the caption, the more of it is decode that drafts can save.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench scripts run from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

from spec import hf_generate  # noqa: E402

from cascade_sd_ros.core.head import HeadAdapter, load_head  # noqa: E402
from cascade_sd_ros.core.head.adapter import STOP_BELOW, PrefillHidingHead, check_stop_below  # noqa: E402
from cascade_sd_ros.core.head.features import ProjectorTap  # noqa: E402
from cascade_sd_ros.core.head.merge import (  # noqa: E402
    MergedProposer,
    accepted_sources,
    class_acceptance,
    token_classes,
)
from cascade_sd_ros.core.head.run import trained_max_objects  # noqa: E402
from cascade_sd_ros.core.spec.adapter import StageContext  # noqa: E402
from cascade_sd_ros.core.spec.engine import CascadeDecoder, DecodeResult, RoundStats  # noqa: E402
from cascade_sd_ros.core.spec.tree import grow_tree, prefill_with_tree  # noqa: E402
from cascade_sd_ros.core.synth.scene import MAX_OBJECTS, parse_caption  # noqa: E402
from cascade_sd_ros.core.zoo import Zoo, default_zoo_path, load_zoo  # noqa: E402
from cascade_sd_ros.core.zoo.data import EVAL_STREAM, TRAIN_STREAM, build_sample  # noqa: E402

TARGET_ONLY = "target-only generate()"
FIXED_LENGTH = "head: fused, no confidence stop"
NO_VIDEO = "head: fused, no video tokens"


@dataclass
class Run:
    seconds: float = 0.0
    tokens: int = 0
    equal: bool = True
    drafted: int = 0
    accepted: int = 0
    verify_steps: int = 0
    rejections: int = 0  # verify steps that rejected a draft token (the rest accepted all they were shown)
    target_forwards: int = 0
    sources: Counter = field(default_factory=Counter)
    by_length: dict[int, list[float]] = field(default_factory=dict)  # caption tokens -> [seconds, tokens]

    def add(self, length: int, seconds: float, tokens: int) -> None:
        self.seconds += seconds
        self.tokens += tokens
        cell = self.by_length.setdefault(length, [0.0, 0])
        cell[0] += seconds
        cell[1] += tokens


def _scenes(
    zoo: Zoo, n: int, stream: int, offset: int = 0, objects: int | None = None, mix: int = 2
) -> list[tuple[StageContext, StageContext]]:
    """The stream's samples (scenes of 1 to ``mix`` objects) from ``offset`` on; with ``objects``,
    only those whose true caption names that many objects (chosen by the ground truth, never by what
    a model says)."""
    out = []
    i = offset
    mix = max(mix, objects or 1)
    while len(out) < n:
        clip, events, caption = build_sample(0, stream, i, zoo.geometry, max_objects=mix)
        i += 1
        if objects is None or len(parse_caption(caption)) == objects:
            out.append((zoo.context("target", clip), zoo.context("drafter", events)))
    return out


def _account(run: Run, res: DecodeResult, seconds: float, ref: list[int]) -> None:
    run.add(len(ref), seconds, len(res.token_ids))
    run.equal &= res.token_ids == ref
    run.drafted += res.stats.stages[0].drafted
    run.accepted += res.stats.stages[0].accepted
    run.verify_steps += len(res.stats.rounds)
    run.rejections += sum(1 for r in res.stats.rounds if r.accepted[0] < r.drafted[0])
    run.target_forwards += res.stats.target_forwards


def _calibrate(
    zoo: Zoo,
    head: HeadAdapter,
    scenes: Sequence[tuple[StageContext, StageContext]],
    gamma: int,
    max_new: int,
    classes: dict[int, str],
) -> dict[str, dict[str, float]]:
    """Per-class acceptance of the head and of the event drafter, each drafting alone."""
    table: dict[str, dict[str, float]] = {}
    for source in (head, zoo.drafter):
        prop = MergedProposer([source], classes, name=source.name)
        decoder = CascadeDecoder([prop, zoo.target], gamma=gamma)
        logs, accepted = [], []
        for ctx_t, ctx_d in scenes:
            prop.log.clear()
            res = decoder.generate([ctx_d, ctx_t], max_new)
            logs += list(prop.log)
            accepted += [r.accepted[0] for r in res.stats.rounds if r.drafted[0] > 0]
        table.update(class_acceptance(logs, accepted, classes))
    return table


def _step_costs(
    zoo: Zoo, head: HeadAdapter, scenes: Sequence[tuple[StageContext, StageContext]], gamma: int, reps: int
) -> dict[str, float]:
    """Median seconds of one head forward (a gamma-deep draft's time / its forwards) / a one-token target forward."""
    target = zoo.target
    fractions: dict[str, list[float]] = {m: [] for m in ("target", "events", "fused")}
    for ctx_t, ctx_d in scenes:
        head.prefill(ctx_d)
        target.prefill(ctx_t)
        caption = CascadeDecoder([target]).generate(None, 12).token_ids
        prefix = caption[: max(1, len(caption) // 2)]
        t_steps = []
        for _ in range(reps):
            target.score(prefix[:-1], [])  # cache at prefix minus one: the timed forward feeds one token
            t0 = time.perf_counter()
            target.score(prefix[:-1], prefix[-1:])
            t_steps.append(time.perf_counter() - t0)
        t_step = statistics.median(t_steps)
        for mode in fractions:
            head.mode = mode  # type: ignore[assignment]
            head.prefill(ctx_d)
            head.attach_target()
            target.score(prefix[:-1], [])  # as after a verify: the last committed token not yet fed
            samples = []
            for _ in range(reps):
                f0, t0 = head.forwards, time.perf_counter()
                head.propose(prefix, gamma)
                samples.append((time.perf_counter() - t0) / max(head.forwards - f0, 1))
            fractions[mode].append(statistics.median(samples) / t_step)
    head.mode = "fused"
    return {m: round(statistics.median(v), 3) for m, v in fractions.items()}


def run(
    zoo: Zoo,
    head: HeadAdapter,
    n_scenes: int,
    gamma: int,
    max_new: int,
    reps: int,
    calib: int,
    objects: int | None = None,
    mix: int = 2,
    tree_depth: int = 6,
    tree_nodes: int = 24,
    branches: int = 4,
) -> dict:
    scenes = _scenes(zoo, n_scenes, EVAL_STREAM, objects=objects, mix=mix)
    classes = token_classes(zoo.tokenizer.get_vocab())
    calib_scenes = _scenes(zoo, calib, TRAIN_STREAM, offset=10_000, mix=mix)
    table = _calibrate(zoo, head, calib_scenes, gamma, max_new, classes)
    t, d = zoo.target, zoo.drafter
    modes = {"head: target states": "target", "head: event features": "events", "head: fused": "fused"}
    merged = MergedProposer([head, d], classes, table, name="merged")
    hiding = PrefillHidingHead(head, gamma)

    def plain(decoder: CascadeDecoder) -> Callable[[StageContext, StageContext], tuple[DecodeResult, int]]:
        return lambda ctx_t, ctx_d: (decoder.generate([ctx_d, ctx_t], max_new), 0)

    hiding_decoder = CascadeDecoder([hiding, t], gamma=gamma)

    def hidden(ctx_t: StageContext, ctx_d: StageContext) -> tuple[DecodeResult, int]:
        hiding.prefill(ctx_d)  # the first draft from event features, before the clip's prefill
        t.prefill(ctx_t, caption=hiding.early_draft)  # it rides in the prefill forward: verified for free
        return hiding_decoder.generate(None, max_new), 1  # (+1: the prefill ran outside generate)

    tap = ProjectorTap(d.model)  # the drafter's prefill computes the head's event tokens anyway

    def early_tree_then(after_tree: CascadeDecoder) -> Callable[[StageContext, StageContext], tuple[DecodeResult, int]]:
        return lambda ctx_t, ctx_d: early_tree(after_tree, ctx_t, ctx_d)

    def early_tree(after_tree: CascadeDecoder, ctx_t: StageContext, ctx_d: StageContext) -> tuple[DecodeResult, int]:
        d.prefill(ctx_d)
        events = tap.take()
        tree = grow_tree(d, [], tree_depth, max_nodes=tree_nodes)  # before the clip's prefill
        first = prefill_with_tree(t, ctx_t, tree, max_new_tokens=max_new)  # verified in the prefill forward
        if not first.finished:  # the head drafts the rest, reading this round's target states at once
            head.prefill_events(events, ctx_d.input_ids[-1], target_current=True, context=ctx_d)
        res = after_tree.generate(None, max_new, committed=first.token_ids)
        res.stats.stages[0].drafted += first.drafted
        res.stats.stages[0].accepted += first.accepted
        # the prefill's verification is a round of its own (alpha counts its rejection)
        res.stats.rounds.insert(
            0, RoundStats((first.drafted,), (first.accepted,), len(first.token_ids), (tree_depth,), (0.0, 0.0), 1)
        )
        return res, 1  # (+1: the prefill ran outside generate)

    Method = tuple[Callable[[], None], Callable[[StageContext, StageContext], tuple[DecodeResult, int]], bool]
    floor = head.stop_below

    def use(mode: str, stop_below: float = floor, video: bool = True) -> Callable[[], None]:
        def setup() -> None:
            head.mode, head.stop_below, head.read_video = mode, stop_below, video  # type: ignore[assignment]

        return setup

    engines: dict[str, Method] = {}
    engines["engine, event drafter"] = (lambda: None, plain(CascadeDecoder([d, t], gamma=gamma)), False)
    for name, mode in modes.items():
        engines[name] = (use(mode), plain(CascadeDecoder([head, t], gamma=gamma)), False)
    if head.net.cfg.video_rows:  # the same weights without the target's video tokens in memory
        engines[NO_VIDEO] = (use("fused", video=False), plain(CascadeDecoder([head, t], gamma=gamma)), False)
    if floor > 0:  # the same head with drafts of the controller's adapted length, for comparison
        engines[FIXED_LENGTH] = (use("fused", 0.0), plain(CascadeDecoder([head, t], gamma=gamma)), False)
    engines["head: fused + prefill hiding"] = (use("fused"), hidden, False)
    engines["head: fused + early tree"] = (use("fused"), early_tree_then(CascadeDecoder([head, t], gamma=gamma)), False)
    branched = CascadeDecoder([head, t], gamma=gamma, tree_branches=branches)
    engines["head: fused + runner-up branches"] = (use("fused"), plain(branched), False)
    engines["head: fused + early tree + branches"] = (use("fused"), early_tree_then(branched), False)
    engines["head: fused + merging"] = (use("fused"), plain(CascadeDecoder([merged, t], gamma=gamma)), True)
    runs = {name: Run() for name in (TARGET_ONLY, *engines)}
    warm_t, warm_d = scenes[0]
    hf_generate(t, warm_t, 4)
    for setup, call, _ in engines.values():
        setup()
        call(warm_t, warm_d)
    for _ in range(reps):
        for ctx_t, ctx_d in scenes:  # methods interleaved per scene: load swings hit all alike
            t0 = time.perf_counter()
            ref = hf_generate(t, ctx_t, max_new)
            runs[TARGET_ONLY].add(len(ref), time.perf_counter() - t0, len(ref))
            for name, (setup, call, logged) in engines.items():
                setup()
                merged.log.clear()
                t0 = time.perf_counter()
                res, outside = call(ctx_t, ctx_d)
                seconds = time.perf_counter() - t0
                _account(runs[name], res, seconds, ref)
                runs[name].target_forwards += outside
                if logged:
                    runs[name].sources += accepted_sources(
                        merged.log, [r.accepted[0] for r in res.stats.rounds if r.drafted[0] > 0]
                    )
    ref_run = runs[TARGET_ONLY]
    base = ref_run.tokens / ref_run.seconds
    methods = {}
    for name, r in runs.items():
        entry: dict[str, object] = {
            "tokens_per_s": round(r.tokens / r.seconds, 1),
            "x_target_only": round(r.tokens / r.seconds / base, 2),
            "equal": r.equal,
            # at equal output the speed-up per caption length is the ratio of the times
            "x_target_only_by_length": {
                n: round(ref_run.by_length[n][0] / sec, 2) for n, (sec, _) in sorted(r.by_length.items())
            },
        }
        if name != TARGET_ONLY:
            entry.update(
                alpha=round(r.accepted / max(r.accepted + r.rejections, 1), 3),
                acceptance=round(r.accepted / max(r.drafted, 1), 3),
                accepted_per_verify=round(r.accepted / max(r.verify_steps, 1), 2),
                tokens_per_target_forward=round(r.tokens / max(r.target_forwards, 1), 2),
            )
        if r.sources:
            entry["accepted_by_source"] = dict(r.sources)
        methods[name] = entry
    costs = _step_costs(zoo, head, scenes[: min(4, len(scenes))], gamma, reps=7)
    ms_per_caption = {n: round(1e3 * sec / (count / n), 1) for n, (sec, count) in sorted(ref_run.by_length.items())}
    return {
        "methods": methods,
        "head_step_over_target_step": costs,
        "class_acceptance": table,
        "target_only_ms_per_caption_by_length": ms_per_caption,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", type=Path, default=None, help="zoo folder (default: the shipped one)")
    parser.add_argument("--head", type=Path, default=None, help="draft-head folder (default: the zoo's head/)")
    parser.add_argument("--scenes", type=int, default=12, help="held-out scenes")
    parser.add_argument("--calib", type=int, default=8, help="calibration scenes (another stream) for merging")
    parser.add_argument("--gamma", type=int, default=6, help="initial draft length (adaptive)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--reps", type=int, default=1, help="passes over the scenes")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument(
        "--objects",
        type=int,
        choices=range(1, MAX_OBJECTS + 1),
        default=None,
        help="only scenes whose true caption names this many objects (default: the target's training mix)",
    )
    parser.add_argument(
        "--stop-below",
        type=float,
        default=STOP_BELOW,
        help=f"the head's drafts end after a token less likely than this (0: full length; default {STOP_BELOW})",
    )
    parser.add_argument("--tree-depth", type=int, default=6, help="levels of the event drafter's early tree")
    parser.add_argument("--tree-nodes", type=int, default=24, help="nodes of the event drafter's early tree at most")
    parser.add_argument("--branches", type=int, default=4, help="unsure positions of a head draft that branch")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        check_stop_below(args.stop_below, "--stop-below")
    except ValueError as exc:
        parser.error(str(exc))
    for name in (
        "scenes",
        "calib",
        "gamma",
        "max_new_tokens",
        "reps",
        "threads",
        "tree_depth",
        "tree_nodes",
        "branches",
    ):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    torch.set_num_threads(args.threads)
    folder = args.head or (args.zoo or default_zoo_path()) / "head"
    if not folder.is_dir():
        parser.error(f"no draft head at {folder} (train one: cascade-sd train --stage head --out DIR)")
    start = time.perf_counter()
    zoo = load_zoo(args.zoo)
    mix = trained_max_objects(args.zoo)
    head_net, align, meta = load_head(folder)
    head = HeadAdapter(head_net, align, zoo.target, event_encoder=zoo.drafter.model, stop_below=args.stop_below)
    with torch.inference_mode():
        result = run(
            zoo,
            head,
            args.scenes,
            args.gamma,
            args.max_new_tokens,
            args.reps,
            args.calib,
            args.objects,
            mix,
            args.tree_depth,
            args.tree_nodes,
            args.branches,
        )
    result.update(
        zoo=str(args.zoo or "shipped"),
        scenes=args.scenes,
        objects=args.objects,
        scene_mix=f"1-{max(mix, args.objects or 1)} objects",
        reps=args.reps,
        gamma=args.gamma,
        tree_depth=args.tree_depth,
        tree_nodes=args.tree_nodes,
        branches=args.branches,
        stop_below=args.stop_below,
        max_new_tokens=args.max_new_tokens,
        threads=args.threads,
        head=str(folder),
        alignment=meta.get("held_out", {}).get("alignment"),
        machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus",
        load_average=[round(x, 1) for x in os.getloadavg()],
        date=time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        wall_s=round(time.perf_counter() - start, 1),
    )
    if args.json:
        print(json.dumps(result))
        return 0
    print(
        f"{args.scenes} held-out scenes x {args.reps}, gamma {args.gamma} (adaptive), head drafts stop below "
        f"{args.stop_below}, max_new_tokens "
        f"{args.max_new_tokens}, {args.threads} thread(s); load average {result['load_average']}"
    )
    print(
        f"{'method':36s} {'x gen()':>8s} {'equal':>6s} {'alpha':>6s} {'accept':>7s} {'acc/verify':>10s} {'tok/fwd':>8s}"
    )
    for name, m in result["methods"].items():
        print(
            f"{name:36s} {m['x_target_only']:8.2f} {str(m['equal']):>6s} {m.get('alpha', ''):>6} {m.get('acceptance', ''):>7} "
            f"{m.get('accepted_per_verify', ''):>10} {m.get('tokens_per_target_forward', ''):>8}"
            + (f"  accepted by source {m['accepted_by_source']}" if "accepted_by_source" in m else "")
        )
    lengths = result["target_only_ms_per_caption_by_length"]
    print(
        "by caption length (x target-only generate(), target-only ms per caption): "
        + "; ".join(f"{n} tokens {ms} ms" for n, ms in lengths.items())
    )
    for name, m in result["methods"].items():
        if name != TARGET_ONLY:
            print(f"  {name:36s} " + "  ".join(f"{n}: {x:.2f}x" for n, x in m["x_target_only_by_length"].items()))
    print("head step / target step: " + ", ".join(f"{k} {v}" for k, v in result["head_step_over_target_step"].items()))
    print(f"alignment (held out): {result['alignment']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
