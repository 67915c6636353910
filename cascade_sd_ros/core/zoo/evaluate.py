"""Evaluate a loaded zoo on held-out synthetic scenes through the runtime path (adapters + engine).

Per stage: its own greedy caption (exact match, per-attribute accuracy), its decode cost per token,
and its acceptance against the target in lossless-greedy speculative decoding (stage -> target, and
the full drafter -> refiner -> target cascade), checking that every cascade output equals the
target's own greedy caption.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from cascade_sd_ros.core.spec.adapter import HFAdapter, StageContext
from cascade_sd_ros.core.spec.engine import CascadeDecoder, target_only_greedy
from cascade_sd_ros.core.zoo.configs import STAGES
from cascade_sd_ros.core.zoo.data import EVAL_STREAM, build_sample
from cascade_sd_ros.core.zoo.load import Zoo
from cascade_sd_ros.core.zoo.metrics import score_captions

__all__ = ["evaluate_zoo"]

MODE = "lossless-greedy"


def _timed_greedy(adapter: HFAdapter, context: StageContext, max_new_tokens: int) -> tuple[list[int], float]:
    """Greedy caption ids (EOS dropped) and decode seconds after the prefill."""
    adapter.prefill(context)
    t0 = time.perf_counter()
    ids = target_only_greedy(adapter, None, max_new_tokens)
    return ids, time.perf_counter() - t0


def evaluate_zoo(
    zoo: Zoo,
    scenes: int,
    seed: int,
    gamma: int = 4,
    max_new_tokens: int = 24,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Figures of ``zoo`` on ``scenes`` held-out scenes from ``seed`` (the eval scene stream)."""
    if scenes < 1:
        raise ValueError(f"scenes must be >= 1, got {scenes}")
    if gamma < 1:
        raise ValueError(f"gamma must be >= 1, got {gamma}")
    eos = zoo.target.eos_token_id
    truth: list[str] = []
    texts: dict[str, list[str]] = {s: [] for s in STAGES}
    decode_s = {s: 0.0 for s in STAGES}
    decode_tokens = {s: 0 for s in STAGES}
    pair = {s: [0, 0] for s in ("refiner", "drafter")}  # drafted, accepted: stage -> target
    chain = {s: [0, 0] for s in ("refiner", "drafter")}  # in the full cascade, by the stage above
    exact_runs = runs = 0
    target_forwards = target_tokens = 0
    for i in range(scenes):
        clip, events, caption = build_sample(seed, EVAL_STREAM, i, zoo.geometry, with_events=True)
        assert events is not None
        truth.append(caption)
        ctx = {
            "target": zoo.context("target", clip),
            "refiner": zoo.context("refiner", clip[-1]),
            "drafter": zoo.context("drafter", events),
        }
        own: dict[str, list[int]] = {}
        for stage in STAGES:
            ids, seconds = _timed_greedy(zoo.adapter(stage), ctx[stage], max_new_tokens)
            own[stage] = ids
            decode_s[stage] += seconds
            decode_tokens[stage] += len(ids)
            texts[stage].append(zoo.decode([t for t in ids if t != eos]))
        for stage in ("refiner", "drafter"):
            result = CascadeDecoder([zoo.adapter(stage), zoo.target], mode=MODE, gamma=gamma, adaptive=False).generate(
                [ctx[stage], ctx["target"]], max_new_tokens
            )
            pair[stage][0] += result.stats.stages[0].drafted
            pair[stage][1] += result.stats.stages[0].accepted
            exact_runs += result.token_ids == own["target"]
            runs += 1
        result = CascadeDecoder(
            [zoo.drafter, zoo.refiner, zoo.target], mode=MODE, gamma=gamma, adaptive=False
        ).generate([ctx["drafter"], ctx["refiner"], ctx["target"]], max_new_tokens)
        for k, student in enumerate(("drafter", "refiner")):
            chain[student][0] += result.stats.stages[k].drafted
            chain[student][1] += result.stats.stages[k].accepted
        exact_runs += result.token_ids == own["target"]
        runs += 1
        target_forwards += result.stats.target_forwards
        target_tokens += len(result.token_ids)
        if progress is not None:
            progress(i + 1)
    stages: dict[str, Any] = {}
    for stage in STAGES:
        adapter = zoo.adapter(stage)
        score = score_captions(texts[stage], truth)
        stages[stage] = {
            **score.as_dict(),
            "ms_per_token": round(1e3 * decode_s[stage] / max(decode_tokens[stage], 1), 3),
            "params": int(sum(p.numel() for p in adapter.model.parameters())),
            "text_layers": int(adapter.model.config.get_text_config().num_hidden_layers),
            "acceptance": None if stage == "target" else round(pair[stage][1] / max(pair[stage][0], 1), 4),
        }
    return {
        "mode": MODE,
        "gamma": gamma,
        "scenes": scenes,
        "seed": seed,
        "stages": stages,
        "cascade": {
            "acceptance": {s: round(chain[s][1] / max(chain[s][0], 1), 4) for s in ("drafter", "refiner")},
            "target_forwards_per_token": round(target_forwards / max(target_tokens, 1), 4),
            "outputs_equal_target": round(exact_runs / max(runs, 1), 4),
        },
        "examples": [{"truth": truth[i], **{s: texts[s][i] for s in STAGES}} for i in range(min(3, scenes))],
    }
