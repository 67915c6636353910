"""The event-to-RGB offset and drift from hardware triggers: the frame camera's exposure strobe wired
into the event camera's trigger input (EVT 3.0 ``EXT_TRIGGER``).

Each exposure puts one edge on the event clock; each frame carries its stamp on the RGB clock. Matched
pairs give ``edge = frame + offset + drift * (frame - ref)`` exactly, up to the RGB stamps' own jitter.
A strobe train is periodic, so the match is only known modulo the frame period: shifting every frame
to the next edge fits as well, and missing edges, dropped frames or spurious edges do not break that
symmetry inside a window. :meth:`TriggerSync.fit` says how many such aliases fit and picks one by,
in this order: the one nearest a prior good to a third of the period (``prior``: the confident
estimate, or the alias an earlier fit applied, so an applied alias never flaps on a short window's
noise); the only one that fits (``unique``); the only one inside a bound narrower than half the
period (``bound``: ``frame_offset`` ± ``frame_offset_bound``); the count from the streams' starts (``stream start``: the first exposure's edge pairs with the first
frame, :class:`~cascade_sd_ros.core.align.strobe_start.StrobeStart` says when that holds), accepted
only if the line fitted to every later pair passes through that first pair. Otherwise it claims
nothing.

Robust to a missing edge (that frame stays unmatched) and to extra edges (other channels and the
other edge are never kept; a spurious edge is matched only if it lies where a frame's edge belongs,
and then only instead of a missing one). Memory is bounded by count: the last ``max_edges`` edges and
``max_frames`` frame stamps.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

ALIAS_BY = ("unique", "bound", "prior", "stream start")
# [ns] pairs spanning less than this fit an offset alone: 1000 ppm (the most a clock model allows)
# moves it 0.5 ms over half of it, while a slope from a few jittered stamps could be anything
MIN_DRIFT_SPAN_NS = 1_000_000_000


@dataclass(frozen=True)
class TriggerFit:
    """Offset (event clock minus RGB clock) at RGB time ``ref_ns``, drift, and how well it fits."""

    offset_ns: int
    drift_ppm: float
    ref_ns: int  # [ns] RGB clock time the offset holds at (the newest matched frame)
    matched: int  # [count] frames matched to an edge
    unmatched: int  # [count] frames in the window with no edge where theirs belongs (missing edges)
    residual_ns: float  # [ns] RMS of the matched pairs' residuals (the RGB stamps' jitter)
    aliases: int  # [count] offsets one frame period apart that fit as well; 1 = unique
    alias_by: str  # what picked the alias: one of ALIAS_BY

    @property
    def resolved_by_prior(self) -> bool:
        return self.alias_by == "prior"

    def offset_at(self, t_rgb_ns: int) -> int:
        """The offset at RGB time ``t_rgb_ns`` (drift included)."""
        return int(round(self.offset_ns + self.drift_ppm * 1e-6 * (int(t_rgb_ns) - self.ref_ns)))


class TriggerSync:
    """Collects strobe edges (event clock) and frame stamps (RGB clock) and fits offset and drift.

    ``channel`` and ``edge`` select the strobe (EVT 3.0 value 1 = rising: exposure start on most
    rigs). ``tolerance_ns`` is how far a frame's edge may lie from where the fit puts it (the RGB
    stamps' jitter must stay inside it).
    """

    def __init__(
        self,
        channel: int = 0,
        edge: int = 1,
        max_offset_ns: int = 1_000_000_000,
        tolerance_ns: int = 2_000_000,
        min_matches: int = 8,
        max_edges: int = 600,
        max_frames: int = 300,
    ) -> None:
        if edge not in (0, 1) or not 0 <= channel <= 31:
            raise ValueError(f"TriggerSync: edge must be 0 or 1 and channel 0..31, got {edge}, {channel}")
        if min(max_offset_ns, tolerance_ns) <= 0 or min_matches < 3 or min(max_edges, max_frames) < min_matches:
            raise ValueError(
                "TriggerSync: max_offset_ns and tolerance_ns must be > 0, min_matches >= 3, "
                "max_edges and max_frames >= min_matches"
            )
        self.channel, self.edge = int(channel), int(edge)
        self.max_offset_ns = int(max_offset_ns)
        self.tolerance_ns = int(tolerance_ns)
        self.min_matches = int(min_matches)
        self._lock = threading.Lock()
        self._edges: deque[int] = deque(maxlen=max_edges)
        self._frames: deque[int] = deque(maxlen=max_frames)
        self.edges_seen = 0  # [count] strobe edges kept (right channel and edge)
        self.others_seen = 0  # [count] trigger events of another channel or edge

    def reset(self) -> None:
        with self._lock:
            self._edges.clear()
            self._frames.clear()

    @property
    def has_edges(self) -> bool:
        with self._lock:
            return bool(self._edges)

    def add_triggers(self, t_ns: np.ndarray, channel: np.ndarray, value: np.ndarray) -> np.ndarray:
        """Trigger events on the event clock (any order within a call; calls in time order); returns
        the strobe edges kept (its channel and edge), sorted."""
        t = np.asarray(t_ns, np.int64)
        mine = (np.asarray(channel) == self.channel) & (np.asarray(value) == self.edge)
        kept = np.sort(t[mine])
        with self._lock:
            self.others_seen += int(t.size - mine.sum())
            self._edges.extend(kept.tolist())
            self.edges_seen += int(kept.size)
        return kept

    def add_frame(self, t_ns: int) -> None:
        """A frame's stamp on the RGB clock."""
        with self._lock:
            self._frames.append(int(t_ns))

    def period_ns(self) -> int | None:
        """The frame period: the median interval between kept frame stamps (drops and jitter aside)."""
        with self._lock:
            frames = np.array(sorted(self._frames), np.int64)
        return _median_interval(frames)

    def fit(
        self,
        prior_ns: int | None = None,
        window_ns: tuple[int, int] | None = None,
        start: tuple[int, int] | None = None,
    ) -> TriggerFit | None:
        """Offset and drift from the edges and frames so far; None without enough matches, or when
        several aliases fit and nothing picks one (module doc). ``prior_ns``: an offset known to
        better than a third of the frame period; ``window_ns``: (lo, hi), where the offset must lie;
        ``start``: (first edge, first frame) of streams heard from their starts."""
        with self._lock:
            edges = np.array(sorted(self._edges), np.int64)
            frames = np.array(sorted(self._frames), np.int64)
        if edges.size < self.min_matches or frames.size < self.min_matches:
            return None
        # only frames whose edge (at any allowed offset) can be in the kept edge window
        frames = frames[(frames >= edges[0] - self.max_offset_ns) & (frames <= edges[-1] + self.max_offset_ns)]
        if frames.size < self.min_matches:
            return None
        # candidate offsets: every edge near the newest few frames
        probes = frames[-min(16, frames.size) :]
        cands = []
        for f in probes.tolist():
            lo, hi = np.searchsorted(edges, [f - self.max_offset_ns, f + self.max_offset_ns + 1])
            cands.append(edges[lo:hi] - f)
        cand = np.unique(np.concatenate(cands)) if cands else np.zeros(0, np.int64)
        if cand.size == 0:
            return None
        scores = self._matches(edges, frames, cand)
        top = int(scores.max())
        if top < self.min_matches:
            return None
        # candidates that fit as well as the best, grouped: each group one alias
        centres = self._aliases(cand[scores >= top - max(1, top // 20)])
        period = _median_interval(frames)
        if prior_ns is not None:  # first: an alias applied before stays (no flapping on a short window's noise)
            gaps = np.abs(centres - int(prior_ns))
            best = int(np.argmin(gaps))
            spacing = float(np.min(np.diff(np.sort(centres)))) if centres.size > 1 else float(period or 0)
            if gaps[best] > spacing / 3:  # the prior lies between aliases (or off the only one): it cannot pick
                return None
            return self._refine(edges, frames, int(centres[best]), int(centres.size), "prior")
        if centres.size == 1:
            return self._refine(edges, frames, int(centres[0]), 1, "unique")
        if window_ns is not None and period and window_ns[1] - window_ns[0] + 2 * self.tolerance_ns < period:
            # a bound narrower than a period holds one alias at most: any that fits inside is it (a
            # short window's end frames favour none, so it need not be the best-scoring one)
            inside = self._aliases(cand[scores >= self.min_matches])
            inside = inside[(inside >= window_ns[0] - self.tolerance_ns) & (inside <= window_ns[1] + self.tolerance_ns)]
            if inside.size == 1:
                return self._refine(edges, frames, int(inside[0]), int(centres.size), "bound")
            if inside.size == 0:
                return None
        if start is not None:
            return self._from_start(edges, frames, start, int(centres.size))
        return None

    def _aliases(self, good: np.ndarray) -> np.ndarray:
        good = np.sort(good)
        groups = np.split(good, np.flatnonzero(np.diff(good) > 2 * self.tolerance_ns) + 1)
        return np.array([int(np.median(g)) for g in groups if g.size], np.int64)

    def _from_start(
        self, edges: np.ndarray, frames: np.ndarray, start: tuple[int, int], aliases: int
    ) -> TriggerFit | None:
        """The alias that pairs the first edge with the first frame, if every later pair agrees: the
        fit over the window's matched pairs must pass through the first pair within the tolerance
        (a spurious first edge, or a first pair that is not one, gives no such fit: nothing claimed)."""
        edge0, frame0 = int(start[0]), int(start[1])
        fit = self._refine(edges, frames, edge0 - frame0, aliases, "stream start")
        if fit is None or abs(fit.offset_at(frame0) - (edge0 - frame0)) > self.tolerance_ns:
            return None
        return fit

    def _matches(self, edges: np.ndarray, frames: np.ndarray, offsets_ns: np.ndarray) -> np.ndarray:
        """Per candidate offset, how many frames have an edge within the tolerance of theirs (all
        candidates in one search, in blocks that bound the memory)."""
        out = np.zeros(offsets_ns.size, np.int64)
        block = max(1, 200_000 // max(1, frames.size))
        for k in range(0, offsets_ns.size, block):
            want = frames[None, :] + offsets_ns[k : k + block, None]
            i = np.clip(np.searchsorted(edges, want), 1, edges.size - 1)
            near = np.minimum(np.abs(edges[i] - want), np.abs(edges[i - 1] - want))
            out[k : k + block] = np.count_nonzero(near <= self.tolerance_ns, axis=1)
        return out

    def _refine(
        self, edges: np.ndarray, frames: np.ndarray, offset_ns: int, aliases: int, alias_by: str
    ) -> TriggerFit | None:
        """Least squares of (edge - frame) on frame time over the matched pairs, twice (the second
        match uses the first fit's drift, so a long window still matches at its ends)."""
        ref = int(frames[-1])
        a, b = float(offset_ns), 0.0
        for _ in range(2):
            want = frames + np.round(a + b * (frames - ref)).astype(np.int64)
            i = np.clip(np.searchsorted(edges, want), 1, edges.size - 1)
            pick = np.where(np.abs(edges[i] - want) <= np.abs(edges[i - 1] - want), i, i - 1)
            ok = np.abs(edges[pick] - want) <= self.tolerance_ns
            if ok.sum() < self.min_matches:
                return None
            x = (frames[ok] - ref).astype(np.float64)
            y = (edges[pick[ok]] - frames[ok]).astype(np.float64)
            if np.ptp(x) >= MIN_DRIFT_SPAN_NS:
                b, a = np.polyfit(x, y, 1)
            else:  # a short span: the slope would be the stamps' jitter, and drift is ppm (µs here)
                a, b = float(y.mean()), 0.0
        resid = y - (a + b * x)
        return TriggerFit(
            offset_ns=int(round(a)),
            drift_ppm=float(b * 1e6),
            ref_ns=ref,
            matched=int(ok.sum()),
            unmatched=int(frames.size - ok.sum()),
            residual_ns=float(np.sqrt(np.mean(resid**2))),
            aliases=aliases,
            alias_by=alias_by,
        )


def _median_interval(frames: np.ndarray) -> int | None:
    """[ns] the median positive interval of sorted stamps (a dropped frame or a jittered one aside)."""
    gaps = np.diff(frames)
    gaps = gaps[gaps > 0]
    return int(np.median(gaps)) if gaps.size >= 2 else None
