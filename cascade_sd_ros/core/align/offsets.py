"""Clock offsets between streams: configured, and estimated online.

Convention (as ``SceneGroundTruth.event_offset_ns``): an offset is *reference clock minus stream
clock*; the reference is the event camera's clock, on which rounds are stamped. A frame stamped
``t`` on the RGB clock happened at ``t + offset`` on the event clock.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Mapping

import numpy as np


class StreamOffsets:
    """Per-stream offsets onto the reference clock; unknown streams are rejected. A measured offset
    replaces a stream's value with :meth:`set` (thread-safe: frames are mapped while it changes)."""

    def __init__(self, offsets_ns: Mapping[str, int]) -> None:
        self._offsets = {str(k): int(v) for k, v in offsets_ns.items()}

    def set(self, stream: str, offset_ns: int) -> None:
        self.offset(stream)  # an unknown stream fails
        self._offsets = {**self._offsets, stream: int(offset_ns)}  # one reference swap: readers never see half

    def offset(self, stream: str) -> int:
        try:
            return self._offsets[stream]
        except KeyError:
            known = sorted(self._offsets)
            raise KeyError(f"no clock offset configured for stream {stream!r}; known: {known}") from None

    def to_reference(self, stream: str, t_ns: int) -> int:
        return int(t_ns) + self.offset(stream)

    def from_reference(self, stream: str, t_ns: int) -> int:
        return int(t_ns) - self.offset(stream)


@dataclass(frozen=True)
class OffsetEstimate:
    offset_ns: int  # event clock minus frame clock
    correlation: float  # Pearson r between event rate and frame-difference energy at that offset
    intervals: int  # frame intervals that took part
    margin: float  # correlation above the best offset further than the exclusion away (peak sharpness)

    def identifiable(self, min_correlation: float = 0.3, min_margin: float = 0.05) -> bool:
        """Whether the data pin the offset down: a clear, isolated correlation peak. Steady motion
        (constant event rate and frame difference) leaves the offset unidentifiable."""
        return self.correlation >= min_correlation and self.margin >= min_margin


class OffsetEstimator:
    """Event rate against frame-difference energy, cross-correlated over candidate offsets.

    Motion makes both events and frame differences; the lag maximising their correlation is the
    clock offset. Events are counted into ``bin_ns`` bins; each pair of consecutive frames gives one
    interval with its mean absolute difference.

    Memory is bounded by count, never by a time span a message claims: at most ``max_chunks``
    calls' bins (each as large as its input) and ``max_intervals`` frame intervals are kept, a frame
    gap over ``max_interval_ns`` is set aside (counted in ``rejected``), and the estimate only bins
    event times the frame intervals can reach at some lag.
    """

    def __init__(
        self,
        max_offset_ns: int = 200_000_000,
        step_ns: int = 2_000_000,
        bin_ns: int = 1_000_000,
        horizon_ns: int = 10_000_000_000,
        min_intervals: int = 8,
        exclusion_ns: int = 50_000_000,
        max_chunks: int = 20_000,
        max_intervals: int = 2_000,
        max_interval_ns: int = 1_000_000_000,
    ) -> None:
        if min(max_offset_ns, step_ns, bin_ns, horizon_ns) <= 0 or min_intervals < 3:
            raise ValueError("OffsetEstimator: offsets, step, bin and horizon must be > 0, min_intervals >= 3")
        self.max_offset_ns = max_offset_ns
        self.step_ns = step_ns
        self.bin_ns = bin_ns
        self.horizon_ns = horizon_ns
        self.min_intervals = min_intervals
        self.exclusion_ns = exclusion_ns
        self.max_interval_ns = max_interval_ns
        self.rejected = 0  # frame gaps set aside as implausible
        self._lock = threading.Lock()
        # (bin index, count) per add_events
        self._chunks: deque[tuple[np.ndarray, np.ndarray]] = deque(maxlen=max_chunks)
        self._intervals: deque[tuple[int, int, float]] = deque(maxlen=max_intervals)
        self._prev: tuple[int, np.ndarray] | None = None

    def reset(self) -> None:
        with self._lock:
            self._chunks.clear()
            self._intervals.clear()
            self._prev = None

    def add_events(self, t_ns: np.ndarray) -> None:
        """Event times on the event clock (any order)."""
        if len(t_ns) == 0:
            return
        idx, counts = np.unique(np.asarray(t_ns, dtype=np.int64) // self.bin_ns, return_counts=True)
        # O(packet): one small array pair per call, old ones dropped whole once past the horizon
        with self._lock:
            self._chunks.append((idx, counts))
            # the newest packet's time, not the newest ever: one packet from the far future must not
            # make every later one look too old to keep
            cutoff = int(idx[-1]) - self.horizon_ns // self.bin_ns
            while self._chunks and int(self._chunks[0][0][-1]) < cutoff:
                self._chunks.popleft()

    def add_frame(self, t_ns: int, image: np.ndarray) -> None:
        """A frame on its own clock, frames in stamp order (an older one restarts the difference)."""
        # every 4th pixel is plenty for a global motion energy and keeps large frames cheap
        small = np.asarray(image)[::4, ::4].astype(np.float32)
        if small.ndim == 3:
            small = small.mean(axis=2)
        with self._lock:
            prev = self._prev
            gap = None if prev is None else int(t_ns) - prev[0]
            if gap is not None and gap > self.max_interval_ns:
                self.rejected += 1  # a stream gap, or a stamp from nowhere: restart the difference
            elif prev is not None and gap is not None and gap > 0 and prev[1].shape == small.shape:
                energy = float(np.abs(small - prev[1]).mean())
                self._intervals.append((prev[0], int(t_ns), energy))
                while self._intervals and self._intervals[-1][1] - self._intervals[0][0] > self.horizon_ns:
                    self._intervals.popleft()
            self._prev = (int(t_ns), small)

    def estimate(self) -> OffsetEstimate | None:
        """The best offset so far, or None without enough motion or overlap to say."""
        with self._lock:
            if len(self._intervals) < self.min_intervals or not self._chunks:
                return None
            iv = np.array([(a, b) for a, b, _ in self._intervals], dtype=np.int64)  # [I, 2]
            energy = np.array([e for _, _, e in self._intervals], dtype=np.float64)  # [I]
            idx = np.concatenate([c[0] for c in self._chunks])
            cnt = np.concatenate([c[1] for c in self._chunks])
        # only events the intervals can reach at some lag matter: bins outside are dropped, so the
        # array below is sized by the frames' span (bounded by count and max_interval_ns), never by
        # how far apart event packets claim to be
        reach_lo = (int(iv[:, 0].min()) - self.max_offset_ns) // self.bin_ns - 1
        reach_hi = (int(iv[:, 1].max()) + self.max_offset_ns) // self.bin_ns + 1
        keep = (idx >= reach_lo) & (idx <= reach_hi)
        idx, cnt = idx[keep], cnt[keep]
        if idx.size == 0:
            return None
        lo_bin, hi_bin = int(idx.min()), int(idx.max())
        dense = np.bincount(idx - lo_bin, weights=cnt, minlength=hi_bin - lo_bin + 1).astype(np.float64)
        if energy.std() == 0.0:
            return None
        cum = np.concatenate([[0.0], np.cumsum(dense)])  # cum[j] = events in bins < lo_bin + j
        lags = np.arange(-self.max_offset_ns, self.max_offset_ns + 1, self.step_ns, dtype=np.int64)  # [L]
        ends = iv[None, :, :] + lags[:, None, None]  # [L, I, 2] on the event clock
        j = np.clip(ends // self.bin_ns - lo_bin, 0, len(dense))
        counts = cum[j[..., 1]] - cum[j[..., 0]]  # [L, I]
        covered = (ends[..., 0] // self.bin_ns >= lo_bin) & (ends[..., 1] // self.bin_ns <= hi_bin)
        span = np.maximum(iv[:, 1] - iv[:, 0], 1).astype(np.float64)  # [I] dropped frames widen an interval
        rate = counts / span[None, :]
        energy = energy / span
        corrs = np.full(len(lags), np.nan)
        used = np.zeros(len(lags), dtype=np.int64)
        for li in range(len(lags)):
            m = covered[li]
            if m.sum() < self.min_intervals:
                continue
            r, e = rate[li, m], energy[m]
            if r.std() == 0.0 or e.std() == 0.0:
                continue
            # ranks, not values: a scene cut is a huge frame difference without events, and must not
            # outweigh everything else
            corrs[li] = np.corrcoef(_ranks(r), _ranks(e))[0, 1]
            used[li] = int(m.sum())
        if np.all(np.isnan(corrs)):
            return None
        best = int(np.nanargmax(corrs))
        far = (np.abs(lags - lags[best]) > self.exclusion_ns) & ~np.isnan(corrs)
        margin = float(corrs[best] - corrs[far].max()) if far.any() else 0.0
        return OffsetEstimate(
            offset_ns=int(lags[best]), correlation=float(corrs[best]), intervals=int(used[best]), margin=margin
        )


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank), for a Spearman correlation."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(len(x), dtype=np.float64)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]
