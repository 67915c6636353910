"""The event-to-RGB clock offset from the data: per-region event counts against per-region frame change.

Why regions: a scene in steady motion makes a steady *global* event rate and a steady global frame
difference, so the global correlation (:class:`~cascade_sd_ros.core.align.OffsetEstimator`) has no
peak. Locally it is never steady: a cell of the image is busy while an object's edge crosses it and
quiet before and after. Each cell's event count over a frame interval follows that cell's change of
log intensity between the interval's two frames (an event is a step of log intensity by the
contrast threshold), so the lag that makes the two agree across all cells is the clock offset.

The statistic, per candidate lag: both signals are made per-cell (rate per second), differenced over
consecutive intervals (only *changes* of activity locate a lag; a cell busy all along says nothing),
and correlated over all (interval, cell) pairs. A coarse scan then a fine one around the best lag
gives the peak; its sharpness (the correlation's drop 1.5 coarse steps away) and its margin over
the best lag far from it say how sure the estimate is.

Memory is bounded by count, never by a time span a message claims: at most ``max_chunks`` event
chunks (each as large as its input) and ``max_intervals`` frame intervals, a frame gap over
``max_interval_ns`` restarts the difference, and only event bins the intervals can reach at some lag
are ever made dense.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

_LOG_EPS = 0.01  # log(I + eps) on [0, 1] intensities, as the event simulator and DVS pixels see it
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # Rec. 601: what a monochrome event pixel sees of RGB
_CUT_FACTOR = 5.0  # a frame change this many times the median one is a cut: no event reports it


@dataclass(frozen=True)
class RegionEstimate:
    """One estimate: the offset (event clock minus frame clock), the peak's correlation, how many
    intervals took part, the margin over the best lag further than ``exclusion_ns`` away, and the
    peak's curvature-based standard deviation (``sigma_ns``; from the fine scan)."""

    offset_ns: int
    correlation: float
    intervals: int
    margin: float
    sigma_ns: float

    def identifiable(self, min_correlation: float = 0.2, min_margin: float = 0.05) -> bool:
        """A clear, isolated peak: enough agreement, and no rival lag far from it nearly as good."""
        return self.correlation >= min_correlation and self.margin >= min_margin


class RegionOffsetEstimator:
    """Cross-correlates per-cell signed event counts with per-cell change of log intensity over lags.

    The image is cut into ``grid`` x ``grid`` cells (events placed with the sensor geometry, frames
    block-averaged from their own size: the two cameras see the same field). Per frame interval and
    cell, the net event count (ON minus OFF) is what the cell's log intensity did between the two
    frames, divided by the contrast threshold; at the true lag the two agree. With cells of a few
    pixels the signed sums stay local (a leading and a trailing edge rarely share a cell), so each
    threshold crossing counts at its own time. Lags ``[-max_offset_ns, max_offset_ns]`` are scanned
    at ``coarse_step_ns``, then at ``fine_step_ns`` around the best.
    """

    def __init__(
        self,
        grid: int = 48,
        max_offset_ns: int = 400_000_000,
        coarse_step_ns: int = 8_000_000,
        fine_step_ns: int = 500_000,
        horizon_ns: int = 6_000_000_000,
        min_intervals: int = 12,
        exclusion_ns: int = 40_000_000,
        max_events: int = 400_000,
        max_chunks: int = 20_000,
        max_intervals: int = 400,
        max_interval_ns: int = 500_000_000,
        max_run_gap_ns: int = 100_000_000,
    ) -> None:
        if grid < 1 or grid > 128:
            raise ValueError(f"RegionOffsetEstimator: grid must be 1..128, got {grid}")
        if min(max_offset_ns, coarse_step_ns, fine_step_ns, horizon_ns, max_events) <= 0 or min_intervals < 4:
            raise ValueError(
                "RegionOffsetEstimator: offsets, steps, horizon and max_events must be > 0, min_intervals >= 4"
            )
        self.grid = grid
        self.max_offset_ns = int(max_offset_ns)
        self.coarse_step_ns = int(coarse_step_ns)
        self.fine_step_ns = int(fine_step_ns)
        self.horizon_ns = int(horizon_ns)
        self.min_intervals = int(min_intervals)
        self.exclusion_ns = int(exclusion_ns)
        self.max_events = int(max_events)
        self.max_interval_ns = int(max_interval_ns)
        self.max_run_gap_ns = int(max_run_gap_ns)
        self.rejected = 0  # frames set aside: a gap over max_interval_ns, another size, too small
        self._lock = threading.Lock()
        # per add_events call: (t ns, pixel, cell, +1/-1), oldest dropped first past max_events / the horizon
        self._chunks: deque[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = deque(maxlen=max_chunks)
        self._geometry: tuple[int, int] | None = None
        self._n_events = 0
        # (start ns, end ns, per-cell change of mean log intensity)
        self._intervals: deque[tuple[int, int, np.ndarray]] = deque(maxlen=max_intervals)
        self._prev: tuple[int, np.ndarray] | None = None

    @property
    def cells(self) -> int:
        return self.grid * self.grid

    def reset(self) -> None:
        with self._lock:
            self._chunks.clear()
            self._n_events = 0
            self._geometry = None
            self._intervals.clear()
            self._prev = None

    def add_events(
        self, t_ns: np.ndarray, x: np.ndarray, y: np.ndarray, p: np.ndarray, width: int, height: int
    ) -> None:
        """Events on the event clock at pixels ``(x, y)`` of a ``width`` x ``height`` sensor, polarity
        ``p`` (1 ON, 0 OFF); another geometry than before restarts the events."""
        t = np.asarray(t_ns, dtype=np.int64)
        if t.size == 0 or width < 1 or height < 1:
            return
        g = self.grid
        xs, ys = np.asarray(x, np.int64), np.asarray(y, np.int64)
        pixel = ys * width + xs
        cell = (np.minimum(ys * g // height, g - 1) * g + np.minimum(xs * g // width, g - 1)).astype(np.int32)
        sign = np.where(np.asarray(p) > 0, 1.0, -1.0)
        newest = int(t.max())
        with self._lock:
            if self._geometry != (width, height):
                self._chunks.clear()
                self._n_events = 0
                self._geometry = (width, height)
            if len(self._chunks) == self._chunks.maxlen:
                self._n_events -= len(self._chunks[0][0])
            self._chunks.append((t, pixel, cell, sign))
            self._n_events += t.size
            # the newest packet's time, not the newest ever: one packet from the far future must not
            # make every later one look too old to keep
            while self._chunks and (
                self._n_events > self.max_events or int(self._chunks[0][0].max()) < newest - self.horizon_ns
            ):
                self._n_events -= len(self._chunks.popleft()[0])

    def add_frame(self, t_ns: int, image: np.ndarray) -> None:
        """A frame on its own clock (uint8 grey or RGB), frames in stamp order; an older one, a gap over
        ``max_interval_ns`` or a new size restarts the difference."""
        img = np.asarray(image)
        luma = img[..., :3].astype(np.float32) @ _LUMA if img.ndim == 3 else img
        if luma.ndim != 2 or luma.shape[0] < self.grid or luma.shape[1] < self.grid:
            self.rejected += 1
            return
        log_i = self._cell_means(np.log(luma.astype(np.float32) / 255.0 + _LOG_EPS))
        with self._lock:
            prev = self._prev
            gap = None if prev is None else int(t_ns) - prev[0]
            if gap is not None and gap > self.max_interval_ns:
                self.rejected += 1
            elif prev is not None and gap is not None and gap > 0:
                self._intervals.append((prev[0], int(t_ns), log_i - prev[1]))
                while self._intervals and self._intervals[-1][1] - self._intervals[0][0] > self.horizon_ns:
                    self._intervals.popleft()
            self._prev = (int(t_ns), log_i)

    def _cell_means(self, a: np.ndarray) -> np.ndarray:
        g = self.grid
        h, w = a.shape
        rows = np.minimum(np.arange(h) * g // h, g - 1)
        cols = np.minimum(np.arange(w) * g // w, g - 1)
        by_row = np.zeros((g, w), np.float64)
        np.add.at(by_row, rows, a)
        out = np.zeros((g, g), np.float64)
        np.add.at(out.T, cols, by_row.T)
        area = np.bincount(rows, minlength=g)[:, None] * np.bincount(cols, minlength=g)[None, :]
        return (out / area).reshape(-1)

    def estimate(self) -> RegionEstimate | None:
        """The best offset so far, or None without enough intervals, events or change to say."""
        with self._lock:
            if len(self._intervals) < self.min_intervals or not self._chunks:
                return None
            iv = np.array([(a, b) for a, b, _ in self._intervals], dtype=np.int64)  # [I, 2]
            change = np.stack([c for _, _, c in self._intervals])  # [I, C]
            t = np.concatenate([c[0] for c in self._chunks])
            pixel = np.concatenate([c[1] for c in self._chunks])
            cell = np.concatenate([c[2] for c in self._chunks])
            sign = np.concatenate([c[3] for c in self._chunks])
        # only events some lag can put in an interval take part
        keep = (t >= iv[0, 0] - self.max_offset_ns) & (t < iv[-1, 1] + self.max_offset_ns)
        t, pixel, cell, sign = t[keep], pixel[keep], cell[keep], sign[keep]
        if t.size == 0:
            return None
        t = _centred_times(t, pixel, sign, self.max_run_gap_ns)
        segments = _segments(iv, change)
        levels = _levels(change, segments)  # [I, C] each cell's log intensity at each interval's end
        if levels is None:
            return None
        # only cells something happened in take part (most of a frame is still background)
        active = np.flatnonzero(np.abs(levels).max(axis=0) > 0)
        if active.size == 0:
            return None
        remap = np.full(self.cells, -1, np.int64)
        remap[active] = np.arange(active.size)
        cell = remap[cell]
        t, sign = t[cell >= 0], sign[cell >= 0]
        cell = cell[cell >= 0]
        levels = levels[:, active]
        lv_norm = float(np.sqrt(np.sum(levels * levels)))
        cells = active.size
        n_iv = len(iv)
        starts, ends = iv[:, 0], iv[:, 1]

        def corr(lag: int) -> float:
            te = t - lag  # event times on the frame clock at this lag
            k = np.searchsorted(starts, te, side="right") - 1
            ok = (k >= 0) & (te < ends[np.clip(k, 0, n_iv - 1)])
            net = np.bincount(k[ok] * cells + cell[ok], weights=sign[ok], minlength=n_iv * cells).reshape(n_iv, cells)
            s = _levels(net, segments)
            if s is None:
                return float("nan")
            # elementwise sums, not BLAS dot products: BLAS threads stall on a loaded machine
            s_norm = float(np.sqrt(np.sum(s * s)))
            return float(np.sum(s * levels)) / (s_norm * lv_norm) if s_norm > 0 else float("nan")

        coarse = np.arange(-self.max_offset_ns, self.max_offset_ns + 1, self.coarse_step_ns, dtype=np.int64)
        rc = np.array([corr(int(g)) for g in coarse])
        if np.all(np.isnan(rc)):
            return None
        best = int(coarse[int(np.nanargmax(rc))])
        far = (np.abs(coarse - best) > self.exclusion_ns) & ~np.isnan(rc)
        margin = float(np.nanmax(rc) - rc[far].max()) if far.any() else 0.0
        fine = np.arange(
            best - self.coarse_step_ns - self.coarse_step_ns // 2,
            best + self.coarse_step_ns + self.coarse_step_ns // 2 + 1,
            self.fine_step_ns,
            dtype=np.int64,
        )
        rf = np.array([corr(int(g)) for g in fine])
        k = int(np.nanargmax(rf))
        return RegionEstimate(
            offset_ns=int(fine[k]),
            correlation=float(rf[k]),
            intervals=n_iv,
            margin=margin,
            sigma_ns=_peak_sigma(fine, rf, k),
        )


def _centred_times(t: np.ndarray, pixel: np.ndarray, sign: np.ndarray, max_gap_ns: int) -> np.ndarray:
    """Each event moved to the middle of the threshold step it reports.

    A pixel fires once its log intensity has moved a whole threshold since its last event, so an event
    comes after the change it reports: on a ramp by half the time between two events. Uncorrected, a
    slow edge makes the events look late by that much and the offset with them (+7 ms on the synthetic
    scenes). Within a run (same pixel, same polarity, gaps under ``max_gap_ns``) an event is moved back
    by half the gap before it. A run's first event stays: when its step began is unknown (the change may
    have started anywhere inside it), and moving it by the next gap over-corrected (-2 ms, measured).
    """
    order = np.lexsort((t, pixel))
    ts, ps, ss = t[order], pixel[order], sign[order]
    gap = np.diff(ts)
    same = (ps[1:] == ps[:-1]) & (ss[1:] == ss[:-1]) & (gap <= max_gap_ns)
    shift = np.zeros(ts.size, np.int64)
    shift[1:][same] = gap[same] // 2
    out = np.empty_like(t)
    out[order] = ts - shift
    return out


def _segments(iv: np.ndarray, change: np.ndarray) -> list[tuple[int, int]]:
    """Runs of intervals whose levels can be chained: consecutive frames (an interval starts where the
    last ended), no cut between them (a frame change over ``_CUT_FACTOR`` times the median is a scene
    cut or an exposure jump, which no event reports)."""
    size = np.abs(change).mean(axis=1)
    cut = size > _CUT_FACTOR * max(float(np.median(size)), 1e-9)
    out: list[tuple[int, int]] = []
    start = 0
    for i in range(len(iv)):
        broken = cut[i] or (i > start and iv[i, 0] != iv[i - 1, 1])
        if broken:
            if i > start:
                out.append((start, i))
            start = i + 1 if cut[i] else i
    if len(iv) > start:
        out.append((start, len(iv)))
    return [(a, b) for a, b in out if b - a >= 3]


def _levels(steps: np.ndarray, segments: list[tuple[int, int]]) -> np.ndarray | None:
    """Per segment, the running sum of per-interval steps, centred per cell; segments stacked ([N, C]).
    None when no segment is long enough."""
    parts = []
    for a, b in segments:
        run = np.cumsum(steps[a:b], axis=0)
        parts.append(run - run.mean(axis=0))
    return np.concatenate(parts) if parts else None


def _peak_sigma(lags: np.ndarray, r: np.ndarray, k: int) -> float:
    """A standard deviation for the peak lag: where the correlation falls by 1 % of its peak value on
    each side (half that width), at least one fine step; inf when the peak sits on the scan's edge."""
    if k == 0 or k == len(r) - 1 or not np.isfinite(r[k]):
        return float("inf")
    drop = r[k] - 0.01 * abs(r[k])
    left = k
    while left > 0 and np.isfinite(r[left - 1]) and r[left - 1] >= drop:
        left -= 1
    right = k
    while right < len(r) - 1 and np.isfinite(r[right + 1]) and r[right + 1] >= drop:
        right += 1
    step = float(lags[1] - lags[0])
    return max(step, float(lags[right] - lags[left]) / 2.0)
