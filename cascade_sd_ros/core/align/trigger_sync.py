"""The event-to-RGB offset and drift from hardware triggers: the frame camera's exposure strobe wired
into the event camera's trigger input (EVT 3.0 ``EXT_TRIGGER``).

Each exposure puts one edge on the event clock; each frame carries its stamp on the RGB clock. Matched
pairs give ``edge = frame + offset + drift * (frame - ref)`` exactly, up to the RGB stamps' own jitter.
A strobe train is periodic, so the match is only known modulo the frame period: shifting every frame
to the next edge fits as well. :meth:`TriggerSync.fit` says how many such aliases fit equally and
takes the one nearest a prior (the events-vs-frames estimate, a pinned value) when it has one;
without a prior and with several aliases it claims nothing.

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
    resolved_by_prior: bool  # the prior picked among aliases

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

    def add_triggers(self, t_ns: np.ndarray, channel: np.ndarray, value: np.ndarray) -> None:
        """Trigger events on the event clock (any order within a call; calls in time order)."""
        t = np.asarray(t_ns, np.int64)
        mine = (np.asarray(channel) == self.channel) & (np.asarray(value) == self.edge)
        with self._lock:
            self.others_seen += int(t.size - mine.sum())
            for v in np.sort(t[mine]).tolist():
                self._edges.append(int(v))
                self.edges_seen += 1

    def add_frame(self, t_ns: int) -> None:
        """A frame's stamp on the RGB clock."""
        with self._lock:
            self._frames.append(int(t_ns))

    def fit(self, prior_ns: int | None = None) -> TriggerFit | None:
        """Offset and drift from the edges and frames so far; None without enough matches, or when
        several aliases fit and no prior picks one (``prior_ns``: an offset known to better than a
        third of the frame period)."""
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
        scores = np.array([self._matches(edges, frames, int(d)) for d in cand.tolist()])
        top = int(scores.max())
        if top < self.min_matches:
            return None
        # candidates that fit as well as the best, grouped: each group one alias
        good = np.sort(cand[scores >= top - max(1, top // 20)])
        groups = np.split(good, np.flatnonzero(np.diff(good) > 2 * self.tolerance_ns) + 1)
        centres = np.array([int(np.median(g)) for g in groups], np.int64)
        if centres.size == 1:
            chosen, by_prior = int(centres[0]), False
        elif prior_ns is None:
            return None
        else:
            gaps = np.abs(centres - int(prior_ns))
            order = np.argsort(gaps)
            spacing = float(np.min(np.diff(np.sort(centres))))
            if gaps[order[0]] > spacing / 3:  # the prior lies between aliases: it cannot pick
                return None
            chosen, by_prior = int(centres[order[0]]), True
        return self._refine(edges, frames, chosen, int(centres.size), by_prior)

    def _matches(self, edges: np.ndarray, frames: np.ndarray, offset_ns: int) -> int:
        want = frames + offset_ns
        i = np.clip(np.searchsorted(edges, want), 1, edges.size - 1)
        near = np.minimum(np.abs(edges[i] - want), np.abs(edges[i - 1] - want))
        return int(np.count_nonzero(near <= self.tolerance_ns))

    def _refine(
        self, edges: np.ndarray, frames: np.ndarray, offset_ns: int, aliases: int, by_prior: bool
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
            if np.ptp(x) > 0:
                b, a = np.polyfit(x, y, 1)
            else:
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
            resolved_by_prior=by_prior,
        )
