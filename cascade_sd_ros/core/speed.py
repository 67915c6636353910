"""The one speed figure: caption latency, the cascade against the verifier alone on the same rounds.

Caption latency is what a robot waits (its throughput, :class:`Throughput`, is the other side): from the moment a round's inputs are all there (a frame past
``T + slop`` on the verifier's clock, see ``RoundBook.mark_inputs_ready``) to its final
``VerifiedCaption`` (``latency_caption_ms``). ``demo``, ``replay`` and the benches all compare the
two runs with :func:`compare`, on the rounds both finished, and print the verifier-alone run beside
the target's bare cost (no ROS, same machine) so a stalled reference cannot flatter the ratio.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping


@dataclass(frozen=True)
class Latency:
    """Percentiles of caption latency over some rounds [ms]."""

    n: int
    p50_ms: float | None
    p95_ms: float | None
    mean_ms: float | None

    @staticmethod
    def of(values_ms: Iterable[float]) -> "Latency":
        xs = sorted(float(v) for v in values_ms if v is not None and math.isfinite(float(v)))
        if not xs:
            return Latency(0, None, None, None)
        return Latency(len(xs), _percentile(xs, 50), _percentile(xs, 95), sum(xs) / len(xs))

    def to_dict(self) -> dict[str, float | int | None]:
        return {
            "n": self.n,
            "p50_ms": _round(self.p50_ms),
            "p95_ms": _round(self.p95_ms),
            "mean_ms": _round(self.mean_ms),
        }


@dataclass(frozen=True)
class SpeedComparison:
    """Cascade against the verifier alone, on the rounds both finished."""

    cascade: Latency
    alone: Latency
    bare: Latency  # the target's own cost for the same captions, without ROS (None-filled if unmeasured)
    speedup_p50: float | None  # alone p50 / cascade p50: > 1 means the cascade answers sooner
    speedup_p95: float | None
    alone_over_bare: float | None  # alone p50 / bare p50: near 1 means an honest reference

    def to_dict(self) -> dict[str, object]:
        return {
            "caption_latency_cascade": self.cascade.to_dict(),
            "caption_latency_alone": self.alone.to_dict(),
            "target_bare": self.bare.to_dict(),
            "speedup_p50": _round(self.speedup_p50, 3),
            "speedup_p95": _round(self.speedup_p95, 3),
            "alone_over_bare": _round(self.alone_over_bare, 3),
        }


def compare(
    cascade_ms: Mapping[int, float], alone_ms: Mapping[int, float], bare_ms: Mapping[int, float] | None = None
) -> SpeedComparison:
    """Caption latency per round id for both runs (and optionally the bare target's cost per round);
    only rounds present and finite in both runs count."""
    both = [r for r in cascade_ms if r in alone_ms and _finite(cascade_ms[r]) and _finite(alone_ms[r])]
    c = Latency.of(cascade_ms[r] for r in both)
    a = Latency.of(alone_ms[r] for r in both)
    b = Latency.of((bare_ms or {}).get(r, math.nan) for r in both)
    return SpeedComparison(c, a, b, _ratio(a.p50_ms, c.p50_ms), _ratio(a.p95_ms, c.p95_ms), _ratio(a.p50_ms, b.p50_ms))


@dataclass(frozen=True)
class Throughput:
    """Final captions per second of playback under a steady stream: the final captions, how long the
    stream played (wall), and the rounds any output named (a verifier alone names only the rounds it
    captions; a cascade's drafter names every round it opens). When rounds open
    faster than the verifier can caption them, it finishes the newest and drops the rest (its
    ``max_pending``), so this is its capacity; when they open slower, the stream sets the rate and
    both runs show the same figure."""

    rounds_seen: int
    finals: int
    playback_s: float

    @property
    def per_s(self) -> float | None:
        return self.finals / self.playback_s if self.playback_s > 0 else None

    def to_dict(self) -> dict[str, float | int | None]:
        return {
            "rounds_seen": self.rounds_seen,
            "finals": self.finals,
            "playback_s": _round(self.playback_s, 3),
            "captions_per_s": _round(self.per_s, 3),
        }


def throughput_ratio(cascade: Throughput, alone: Throughput) -> float | None:
    """Cascade captions per second over the verifier alone's on the same stream (> 1: more captions)."""
    return _ratio(cascade.per_s, alone.per_s)


def by_caption_length(
    tokens: Mapping[int, int],
    cascade_ms: Mapping[int, float],
    alone_ms: Mapping[int, float],
    bare_ms: Mapping[int, float] | None = None,
) -> dict[int, SpeedComparison]:
    """:func:`compare` per caption length (tokens committed, per round id): prefill is paid by both
    runs, so the cascade's ratio grows with the caption; a robot's descriptions are longer than the
    zoo's. Keys in increasing length; only lengths with a round both runs finished."""
    out: dict[int, SpeedComparison] = {}
    for n in sorted(set(tokens.values())):
        rounds = {r for r, k in tokens.items() if k == n}
        part = compare(
            {r: v for r, v in cascade_ms.items() if r in rounds},
            {r: v for r, v in alone_ms.items() if r in rounds},
            {r: v for r, v in (bare_ms or {}).items() if r in rounds},
        )
        if part.cascade.n:
            out[n] = part
    return out


def _percentile(sorted_xs: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if len(sorted_xs) == 1:
        return sorted_xs[0]
    pos = (len(sorted_xs) - 1) * q / 100.0
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


def _ratio(num: float | None, den: float | None) -> float | None:
    return num / den if num is not None and den is not None and den > 0 else None


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(float(x))


def _round(x: float | None, digits: int = 2) -> float | None:
    return None if x is None else round(float(x), digits)


#: A verifier-alone reference more than this fraction over the target's bare cost is not honest:
#: it was slowed by something other than the target (a stalled executor, a shared core), which
#: flatters the cascade's ratio.
HONEST_MARGIN = 0.15

#: Parts of caption latency, in the order they are stacked; "other" is the rest.
CAPTION_PARTS: tuple[str, ...] = ("prefill", "verify", "draft_wait", "other")


def honest_reference(alone_over_bare: float | None, margin: float = HONEST_MARGIN) -> bool | None:
    """Whether the verifier alone came within ``margin`` of the target's bare cost. None when that
    cannot be told: the floor was not measured, or it measured slower than the verifier alone by more
    than ``margin`` (a floor is not slower than what stands on it: the bare decode itself was slowed,
    e.g. timed after playback on a busy machine; see :func:`floor_disturbed`)."""
    if alone_over_bare is None or floor_disturbed(alone_over_bare, margin):
        return None
    return alone_over_bare <= 1.0 + margin


def floor_disturbed(alone_over_bare: float | None, margin: float = HONEST_MARGIN) -> bool:
    """The target's bare cost measured more than ``margin`` over the verifier alone's."""
    return alone_over_bare is not None and alone_over_bare < 1.0 / (1.0 + margin)


def caption_parts(caption_ms: float, prefill_ms: float, verify_ms: float, draft_wait_ms: float) -> dict[str, float]:
    """Where one round's caption latency went, in the verifier (``VerifiedCaption`` fields): prefill
    (clip preprocessing, encode and prompt), verification passes, waiting for drafts once the clip
    was in, and "other", the rest (the worker coming to the round, publishing, Python), so the parts
    add up to ``caption_ms`` exactly. "other" is NaN where caption latency is unknown."""
    parts = {"prefill": float(prefill_ms), "verify": float(verify_ms), "draft_wait": float(draft_wait_ms)}
    total = float(caption_ms)
    parts["other"] = total - sum(parts.values()) if math.isfinite(total) else math.nan
    return parts


@dataclass(frozen=True)
class BareCaption:
    """The target's own greedy caption of one clip, timed without ROS: the reference's floor."""

    tokens: list[int]
    prefill_ms: float  # from pixels: preprocessing, encode and prompt, as the node's prefill figure
    decode_ms: float

    @property
    def total_ms(self) -> float:
        return self.prefill_ms + self.decode_ms


def bare_caption(target: Any, frames: Any, question: str, max_new_tokens: int) -> BareCaption:
    """Decode ``frames`` ([F, H, W, 3] uint8) with the target ``StageModel`` alone, greedy, timed.
    The caller holds ``torch.inference_mode`` and sets the thread count it wants measured."""
    import time

    from cascade_sd_ros.core.spec.engine import target_only_greedy

    t0 = time.perf_counter()
    target.adapter.prefill(target.context(frames, question))
    t1 = time.perf_counter()
    tokens = target_only_greedy(target.adapter, None, max_new_tokens)
    t2 = time.perf_counter()
    return BareCaption(list(tokens), (t1 - t0) * 1e3, (t2 - t1) * 1e3)
