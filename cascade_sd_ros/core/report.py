"""Evaluation figures of a cascade run, computed from per-round records (no ROS, no files).

A replay (or the demo) turns every final ``VerifiedCaption`` into a :class:`RoundRecord`; this
module derives what a report states about them: acceptance per stage, latency percentiles, the
alignment skew, degraded rounds, caption latency against the verifier alone on the same rounds
(:func:`cascade_sd_ros.core.speed.compare`, the one definition of speed-up, with the target's bare
cost beside it), and caption accuracy against ground truth. Everything is a pure function of the records, so a test can
recompute a written report from the recorded output bag and get the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np

from cascade_sd_ros.core import names
from cascade_sd_ros.core import speed as spd

#: Latency components of ``VerifiedCaption`` (``latency_<name>_ms``): caption latency (what a robot
#: waits: inputs complete -> final caption) first, then the verifier's parts of it and the rest.
LATENCY_COMPONENTS: tuple[str, ...] = ("caption", "prefill", "verify", "draft_wait", "total", "wait", "draft")
#: Alignment skews of ``VerifiedCaption`` (``<name>_ms``).
SKEW_COMPONENTS: tuple[str, ...] = ("skew_frame", "skew_clip", "clip_span")
#: Percentiles every distribution is summarised by.
PERCENTILES: tuple[int, ...] = (50, 95, 99)
#: Stage names by ``DraftTokens.STAGE_*`` index.
STAGE_NAMES: tuple[str, ...] = tuple(names.STAGE_NAMES[s] for s in sorted(names.STAGE_NAMES))


@dataclass(frozen=True)
class Reference:
    """One round's caption from a reference run: the verifier node alone (drafts off, same rounds),
    or the target's bare greedy decode of the round's clip without ROS."""

    token_ids: tuple[int, ...]  # [token id] caption tokens, prompt excluded
    text: str  # [text] decoded caption
    caption_ms: float  # [ms] caption latency (bare: preprocessing + prefill + decode)
    target_forwards: int  # [count] forward passes after prefill
    prefill_ms: float = math.nan  # [ms] of caption_ms: preprocessing, encode and prompt prefill
    verify_ms: float = math.nan  # [ms] of caption_ms: forward passes after prefill


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
    alone: Reference | None = None  # the verifier node alone on this round
    bare: Reference | None = None  # the target's bare cost on this round's clip (no ROS)
    frame_offset_ms: float = math.nan  # [ms] event minus RGB clock offset the round picked its frames with
    frame_offset_source: str = ""  # [text] pinned, trigger, estimate, initial ("" when not reported)
    true_offset_ms: float | None = None  # [ms] the ground truth's offset for the round's scene, if known

    @property
    def frame_offset_error_ms(self) -> float | None:
        """[ms] offset used minus the true one (None without both)."""
        return offset_error_ms(self.frame_offset_ms, self.true_offset_ms)

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
    def caption_parts_ms(self) -> dict[str, float]:
        """[ms] caption latency split into prefill, verify, draft_wait and other (the rest): they add up."""
        lat = self.latency_ms
        return spd.caption_parts(lat["caption"], lat["prefill"], lat["verify"], lat["draft_wait"])

    @property
    def reference(self) -> Reference | None:
        """What this round's speed is measured against: the verifier alone, else the bare target."""
        return self.alone if self.alone is not None else self.bare


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


def offset_error_ms(used_ms: float | None, true_ms: float | None) -> float | None:
    """[ms] the clock offset a round used minus the true one (None without both)."""
    if used_ms is None or true_ms is None or not math.isfinite(used_ms) or not math.isfinite(true_ms):
        return None
    return used_ms - true_ms


def offset_text(used_ms: float | None, source: str, error_ms: float | None, digits: int = 1) -> str:
    """The clock offset a round picked its frames with, where it came from, and its error against the
    truth when known: ``30.0 (estimate, +0.4)``; ``–`` when the round reported none."""
    if used_ms is None or not math.isfinite(used_ms):
        return "–"
    return f"{used_ms:.{digits}f} ({source or '?'}" + ("" if error_ms is None else f", {error_ms:+.{digits}f}") + ")"


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


def speed(rounds: Sequence[RoundRecord]) -> dict[str, object]:
    """Caption latency of the cascade against its reference on the same rounds, through
    :func:`cascade_sd_ros.core.speed.compare` (the one definition the demo and the benches use).

    The reference is the verifier node alone where that pass ran, else the target's bare decode
    (``--baseline offline``: then the ratio is against the bare cost itself). ``alone_over_bare``
    says how far the reference sat above the target's bare cost on the same clips;
    ``reference_honest`` is False when that is more than ``honest_margin`` over: a stalled or
    starved reference, which flatters the cascade (None: the bare cost was not measured; with the
    bare target as the reference it is 1 by construction). ``tokens_per_forward`` is caption tokens per
    cascade verifier pass (the verifier alone: 1 after the prefill's token); ``lossless_match`` is the
    share of rounds whose tokens equal the reference's (1.0 is the lossless-greedy contract),
    ``bare_match`` the same against the bare target; ``by_caption_length`` the comparison per
    caption length in tokens (:func:`cascade_sd_ros.core.speed.by_caption_length`).
    """
    alone = {r.round_id: r.alone for r in rounds if r.alone is not None}
    bare = {r.round_id: r.bare for r in rounds if r.bare is not None}
    kind = "verifier-alone" if alone else "target-bare" if bare else None
    ref = alone or bare
    cmp = spd.compare(
        {r.round_id: float(r.latency_ms["caption"]) for r in rounds},
        {rid: x.caption_ms for rid, x in ref.items()},
        {rid: x.caption_ms for rid, x in bare.items()},
    )
    both = [r for r in rounds if r.round_id in ref]
    casc_fw = sum(r.target_forwards for r in both)
    tokens = sum(len(r.token_ids) for r in both)
    return {
        "reference": kind,
        "rounds": cmp.cascade.n,
        "rounds_with_reference": len(both),
        **cmp.to_dict(),
        "honest_margin": spd.HONEST_MARGIN,
        "reference_honest": spd.honest_reference(cmp.alone_over_bare),
        "cascade_forwards": casc_fw,
        "reference_forwards": sum(ref[r.round_id].target_forwards for r in both),
        "tokens_per_forward": tokens / casc_fw if casc_fw > 0 else None,
        "lossless_match": _same_tokens(rounds, ref),
        "bare_match": _same_tokens(rounds, bare),
        "by_caption_length": {
            n: part.to_dict()
            for n, part in spd.by_caption_length(
                {r.round_id: len(r.token_ids) for r in rounds},
                {r.round_id: float(r.latency_ms["caption"]) for r in rounds},
                {rid: x.caption_ms for rid, x in ref.items()},
                {rid: x.caption_ms for rid, x in bare.items()},
            ).items()
        },
    }


def _same_tokens(rounds: Sequence[RoundRecord], refs: Mapping[int, Reference]) -> float | None:
    """Share of the rounds with a reference whose caption tokens equal it (None: no such round)."""
    pairs = [(r, refs[r.round_id]) for r in rounds if r.round_id in refs]
    return sum(tuple(x.token_ids) == tuple(r.token_ids) for r, x in pairs) / len(pairs) if pairs else None


def caption_breakdown(rounds: Sequence[RoundRecord]) -> dict[str, dict[str, float | int | None]]:
    """Distribution of each part of caption latency (prefill, verify, draft_wait, other) and of the
    whole, over the rounds with a caption latency. Means add up; percentiles need not."""
    timed = [r for r in rounds if math.isfinite(float(r.latency_ms["caption"]))]
    parts = [r.caption_parts_ms for r in timed]
    out = {k: distribution(p[k] for p in parts).to_dict() for k in spd.CAPTION_PARTS}
    out["caption"] = distribution(float(r.latency_ms["caption"]) for r in timed).to_dict()
    return out


def accuracy(rounds: Sequence[RoundRecord]) -> dict[str, float | int | None]:
    """Caption accuracy on rounds with ground truth: exact match, match of the object clauses in
    any order, and mean word accuracy."""
    scored = [r for r in rounds if r.ground_truth is not None]
    if not scored:
        return {
            "rounds": 0,
            "exact_match": None,
            "any_order_match": None,
            "word_accuracy": None,
            "reference_exact_match": None,
        }
    exact = sum(normalise_caption(r.text) == normalise_caption(r.ground_truth or "") for r in scored)
    any_order = sum(clauses(r.text) == clauses(r.ground_truth or "") for r in scored)
    words = [word_accuracy(r.text, r.ground_truth or "") for r in scored]
    refs = [(r, r.reference) for r in scored if r.reference is not None]
    ref_exact = (
        sum(normalise_caption(ref.text) == normalise_caption(r.ground_truth or "") for r, ref in refs) / len(refs)
        if refs
        else None
    )
    return {
        "rounds": len(scored),
        "exact_match": exact / len(scored),
        "any_order_match": any_order / len(scored),
        "word_accuracy": float(np.mean(words)),
        "reference_exact_match": ref_exact,
    }


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
        "caption_parts_ms": caption_breakdown(rounds),
        # Skew is signed; its size is what alignment quality means, so summarise |skew|.
        "abs_skew_ms": {c: distribution(abs(r.skew_ms[c]) for r in rounds).to_dict() for c in SKEW_COMPONENTS},
        "degraded": degraded_summary(rounds),
        "speed": speed(rounds),
        "accuracy": accuracy(rounds),
    }


def round_to_dict(record: RoundRecord) -> dict[str, object]:
    """One round as a JSON-ready dict (NaN skews become None)."""

    def clean(v: float) -> float | None:
        return None if not math.isfinite(float(v)) else float(v)

    def reference(ref: Reference | None) -> dict[str, object] | None:
        return (
            None
            if ref is None
            else {
                "caption": ref.text,
                "token_ids": list(ref.token_ids),
                "caption_ms": clean(ref.caption_ms),
                "prefill_ms": clean(ref.prefill_ms),
                "verify_ms": clean(ref.verify_ms),
                "target_forwards": ref.target_forwards,
                "same_tokens": tuple(ref.token_ids) == tuple(record.token_ids),
            }
        )

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
        "caption_parts_ms": {k: clean(v) for k, v in record.caption_parts_ms.items()},
        "skew_ms": {k: clean(record.skew_ms[k]) for k in SKEW_COMPONENTS},
        "degraded": record.degraded,
        "degraded_reason": record.degraded_reason,
        "verifier_alone": reference(record.alone),
        "target_bare": reference(record.bare),
        "frame_offset_ms": clean(record.frame_offset_ms),
        "frame_offset_source": record.frame_offset_source,
        "frame_offset_error_ms": record.frame_offset_error_ms,
    }
