"""Evaluation figures of a cascade run, computed from per-round records (no ROS, no files).

A replay (or the demo) turns every final ``VerifiedCaption`` into a :class:`RoundRecord`; this
module derives what a report states about them: acceptance per stage, latency percentiles, the
alignment skew, degraded rounds, the speed-up over the verifier alone on the same rounds, and
caption accuracy against ground truth. Everything is a pure function of the records, so a test can
recompute a written report from the recorded output bag and get the same numbers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np

#: Latency components of ``VerifiedCaption`` (``latency_<name>_ms``), in breakdown order.
LATENCY_COMPONENTS: tuple[str, ...] = ("total", "wait", "prefill", "verify", "draft")
#: Alignment skews of ``VerifiedCaption`` (``<name>_ms``).
SKEW_COMPONENTS: tuple[str, ...] = ("skew_frame", "skew_clip", "clip_span")
#: Percentiles every distribution is summarised by.
PERCENTILES: tuple[int, ...] = (50, 95, 99)
#: Stage names by ``DraftTokens.STAGE_*`` index.
STAGE_NAMES: tuple[str, ...] = ("drafter", "refiner")


@dataclass(frozen=True)
class Baseline:
    """The verifier alone on one round's clip and prompt (greedy), as the speed-up reference."""

    token_ids: tuple[int, ...]  # [token id] caption tokens, prompt excluded
    text: str  # [text] decoded caption
    decode_ms: float  # [ms] prefill + token-by-token decoding wall time
    target_forwards: int  # [count] forward passes after prefill


@dataclass(frozen=True)
class RoundRecord:
    """One round as its final ``VerifiedCaption`` reported it (fields named as in the message)."""

    round_id: int
    stamp_ns: int  # [ns] sensor time T of the round (event clock)
    text: str
    token_ids: tuple[int, ...]
    mode_name: str
    lossless: bool
    drafted_per_stage: tuple[int, ...]  # [tokens] index = stage
    accepted_per_stage: tuple[int, ...]  # [tokens] index = stage
    target_forwards: int
    latency_ms: Mapping[str, float]  # LATENCY_COMPONENTS -> ms
    skew_ms: Mapping[str, float]  # SKEW_COMPONENTS -> ms (NaN where the round had no such input)
    degraded: bool
    degraded_reason: str
    ground_truth: str | None = None  # [text] caption of the scene the round falls in, if known
    baseline: Baseline | None = None

    def __post_init__(self) -> None:
        if len(self.drafted_per_stage) != len(self.accepted_per_stage):
            raise ValueError(
                f"round {self.round_id}: drafted_per_stage has {len(self.drafted_per_stage)} entries "
                f"but accepted_per_stage has {len(self.accepted_per_stage)}"
            )
        for name in LATENCY_COMPONENTS:
            if name not in self.latency_ms:
                raise ValueError(f"round {self.round_id}: latency component {name!r} missing")
        for name in SKEW_COMPONENTS:
            if name not in self.skew_ms:
                raise ValueError(f"round {self.round_id}: skew component {name!r} missing")

    @property
    def verifier_ms(self) -> float:
        """[ms] the verifier's own compute on this round: prefill plus verification passes."""
        return float(self.latency_ms["prefill"]) + float(self.latency_ms["verify"])


@dataclass(frozen=True)
class SceneInterval:
    """A ground-truth scene on the RGB camera clock and the event clock's true offset from it."""

    index: int
    start_ns: int  # [ns] RGB camera clock
    end_ns: int  # [ns] RGB camera clock
    caption: str
    event_offset_ns: int = 0  # [ns] event clock minus RGB clock

    def contains_event_time(self, t_event_ns: int) -> bool:
        """Whether event-clock time ``t_event_ns`` falls in ``[start, end)`` on the RGB clock."""
        t_rgb = t_event_ns - self.event_offset_ns
        return self.start_ns <= t_rgb < self.end_ns


@dataclass(frozen=True)
class Distribution:
    """Percentiles of one quantity over the rounds where it was defined (NaN entries left out)."""

    count: int
    mean: float | None
    percentiles: dict[str, float | None] = field(default_factory=dict)  # "p50" -> value
    max: float | None = None

    def to_dict(self) -> dict[str, float | int | None]:
        return {"count": self.count, "mean": self.mean, **self.percentiles, "max": self.max}


def distribution(values: Iterable[float], percentiles: Sequence[int] = PERCENTILES) -> Distribution:
    """Mean, percentiles (linear interpolation, numpy's default) and max of the finite values."""
    arr = np.asarray([float(v) for v in values], dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    keys = [f"p{p}" for p in percentiles]
    if arr.size == 0:
        return Distribution(0, None, {k: None for k in keys}, None)
    qs = np.percentile(arr, list(percentiles))
    return Distribution(int(arr.size), float(arr.mean()), {k: float(q) for k, q in zip(keys, qs)}, float(arr.max()))


def match_ground_truth(stamp_ns: int, scenes: Sequence[SceneInterval]) -> SceneInterval | None:
    """The scene whose interval holds the round's time T (converted to the RGB clock), if any."""
    for scene in scenes:
        if scene.contains_event_time(stamp_ns):
            return scene
    return None


def normalise_caption(text: str) -> str:
    """Lower case, single spaces, no trailing full stop: how captions are compared."""
    return " ".join(text.lower().strip().rstrip(".").split())


def word_accuracy(predicted: str, truth: str) -> float:
    """1 − word-level edit distance / truth length, floored at 0 (1.0 means identical words)."""
    pred = normalise_caption(predicted).split()
    ref = normalise_caption(truth).split()
    if not ref:
        return 1.0 if not pred else 0.0
    # Levenshtein over words, one row at a time.
    prev = list(range(len(ref) + 1))
    for i, pw in enumerate(pred, start=1):
        cur = [i] + [0] * len(ref)
        for j, rw in enumerate(ref, start=1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (pw != rw))
        prev = cur
    return max(0.0, 1.0 - prev[-1] / len(ref))


def clauses(text: str) -> frozenset[str]:
    """A caption's object clauses ("a red circle moves left and a blue square is still" -> two),
    so that captions listing the same objects in another order compare equal."""
    return frozenset(c.strip() for c in normalise_caption(text).split(" and ") if c.strip())


def acceptance(rounds: Sequence[RoundRecord]) -> dict[str, dict[str, float | int | None]]:
    """Draft tokens checked and accepted per stage over all rounds, and their ratio."""
    n_stages = max((len(r.drafted_per_stage) for r in rounds), default=0)
    out: dict[str, dict[str, float | int | None]] = {}
    for s in range(n_stages):
        drafted = sum(r.drafted_per_stage[s] for r in rounds if s < len(r.drafted_per_stage))
        accepted = sum(r.accepted_per_stage[s] for r in rounds if s < len(r.accepted_per_stage))
        name = STAGE_NAMES[s] if s < len(STAGE_NAMES) else f"stage{s}"
        out[name] = {"drafted": drafted, "accepted": accepted, "rate": accepted / drafted if drafted else None}
    return out


def round_acceptance(record: RoundRecord) -> list[float | None]:
    """Per-stage acceptance ratio of one round (None where the stage drafted nothing)."""
    return [a / d if d else None for d, a in zip(record.drafted_per_stage, record.accepted_per_stage)]


def speedup(rounds: Sequence[RoundRecord]) -> dict[str, float | int | None]:
    """The cascade against the verifier alone on the rounds that have a baseline.

    ``speedup_verifier`` compares verifier compute (prefill + passes) summed over those rounds;
    ``speedup_with_waits`` also charges the cascade its waiting (for drafts, and for frames, which
    a live verifier alone would wait for too: a lower bound); ``forward_reduction`` compares
    verifier forward passes; ``lossless_match`` is the share of rounds whose caption tokens equal
    the baseline's (1.0 is the lossless-greedy contract).
    """
    with_base = [r for r in rounds if r.baseline is not None]
    if not with_base:
        return {"rounds": 0, "baseline_ms": None, "cascade_ms": None, "speedup_verifier": None,
                "cascade_ms_with_waits": None, "speedup_with_waits": None,
                "baseline_forwards": None, "cascade_forwards": None, "forward_reduction": None,
                "tokens_per_forward": None, "lossless_match": None}
    base_ms = sum(r.baseline.decode_ms for r in with_base if r.baseline)
    casc_ms = sum(r.verifier_ms for r in with_base)
    waits_ms = casc_ms + sum(float(r.latency_ms["wait"]) for r in with_base)
    base_fw = sum(r.baseline.target_forwards for r in with_base if r.baseline)
    casc_fw = sum(r.target_forwards for r in with_base)
    tokens = sum(len(r.token_ids) for r in with_base)
    matches = sum(1 for r in with_base if r.baseline and tuple(r.baseline.token_ids) == tuple(r.token_ids))
    return {
        "rounds": len(with_base),
        "baseline_ms": base_ms,
        "cascade_ms": casc_ms,
        "speedup_verifier": base_ms / casc_ms if casc_ms > 0 else None,
        "cascade_ms_with_waits": waits_ms,
        "speedup_with_waits": base_ms / waits_ms if waits_ms > 0 else None,
        "baseline_forwards": base_fw,
        "cascade_forwards": casc_fw,
        "forward_reduction": base_fw / casc_fw if casc_fw > 0 else None,
        "tokens_per_forward": tokens / casc_fw if casc_fw > 0 else None,
        "lossless_match": matches / len(with_base),
    }


def accuracy(rounds: Sequence[RoundRecord]) -> dict[str, float | int | None]:
    """Caption accuracy on rounds with ground truth: exact match, match of the object clauses in
    any order, and mean word accuracy."""
    scored = [r for r in rounds if r.ground_truth is not None]
    if not scored:
        return {"rounds": 0, "exact_match": None, "any_order_match": None, "word_accuracy": None,
                "baseline_exact_match": None}
    exact = sum(normalise_caption(r.text) == normalise_caption(r.ground_truth or "") for r in scored)
    any_order = sum(clauses(r.text) == clauses(r.ground_truth or "") for r in scored)
    words = [word_accuracy(r.text, r.ground_truth or "") for r in scored]
    based = [r for r in scored if r.baseline is not None]
    base_exact = (
        sum(normalise_caption(r.baseline.text) == normalise_caption(r.ground_truth or "") for r in based if r.baseline)
        / len(based) if based else None
    )
    return {"rounds": len(scored), "exact_match": exact / len(scored), "any_order_match": any_order / len(scored),
            "word_accuracy": float(np.mean(words)), "baseline_exact_match": base_exact}


def degraded_summary(rounds: Sequence[RoundRecord]) -> dict[str, object]:
    """How many rounds were degraded, their ids, and a count per reason."""
    bad = [r for r in rounds if r.degraded]
    reasons: dict[str, int] = {}
    for r in bad:
        key = r.degraded_reason or "(no reason given)"
        reasons[key] = reasons.get(key, 0) + 1
    return {"count": len(bad), "round_ids": [r.round_id for r in bad], "reasons": reasons}


def summarise(rounds: Sequence[RoundRecord]) -> dict[str, object]:
    """Every figure a report states about a run, as a JSON-ready dict."""
    modes = sorted({r.mode_name for r in rounds})
    return {
        "rounds": len(rounds),
        "modes": modes,
        "tokens": sum(len(r.token_ids) for r in rounds),
        "target_forwards": sum(r.target_forwards for r in rounds),
        "acceptance": acceptance(rounds),
        "latency_ms": {c: distribution(r.latency_ms[c] for r in rounds).to_dict() for c in LATENCY_COMPONENTS},
        "verifier_ms": distribution(r.verifier_ms for r in rounds).to_dict(),
        # Skew is signed; its size is what alignment quality means, so summarise |skew|.
        "abs_skew_ms": {c: distribution(abs(r.skew_ms[c]) for r in rounds).to_dict() for c in SKEW_COMPONENTS},
        "degraded": degraded_summary(rounds),
        "baseline": speedup(rounds),
        "accuracy": accuracy(rounds),
    }


def round_to_dict(record: RoundRecord) -> dict[str, object]:
    """One round as a JSON-ready dict (NaN skews become None)."""

    def clean(v: float) -> float | None:
        return None if not math.isfinite(float(v)) else float(v)

    base = record.baseline
    return {
        "round_id": record.round_id,
        "stamp_ns": record.stamp_ns,
        "caption": record.text,
        "ground_truth": record.ground_truth,
        "token_ids": list(record.token_ids),
        "mode": record.mode_name,
        "lossless": record.lossless,
        "drafted_per_stage": list(record.drafted_per_stage),
        "accepted_per_stage": list(record.accepted_per_stage),
        "acceptance_per_stage": round_acceptance(record),
        "target_forwards": record.target_forwards,
        "latency_ms": {k: clean(record.latency_ms[k]) for k in LATENCY_COMPONENTS},
        "skew_ms": {k: clean(record.skew_ms[k]) for k in SKEW_COMPONENTS},
        "degraded": record.degraded,
        "degraded_reason": record.degraded_reason,
        "baseline": None if base is None else {
            "caption": base.text, "token_ids": list(base.token_ids), "decode_ms": base.decode_ms,
            "target_forwards": base.target_forwards, "same_tokens": tuple(base.token_ids) == tuple(record.token_ids),
        },
    }
