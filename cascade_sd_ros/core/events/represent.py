"""Event representations for models: EventGPT-style chunk images, per-polarity counts, voxel
grids. Kernels loop once over the events into buffers that are allocated once and reused.

Events are CD_DTYPE arrays sorted by ``t`` (as decoders return them); coordinates outside the
given geometry are ignored.
"""

from __future__ import annotations

import numba
import numpy as np

from .types import CD_DTYPE

WHITE = (255, 255, 255)
ON_RED = (255, 0, 0)  # positive (brighter) events
OFF_BLUE = (0, 0, 255)  # negative (darker) events


def _check_events(events: np.ndarray) -> np.ndarray:
    if not isinstance(events, np.ndarray) or events.dtype != CD_DTYPE or events.ndim != 1:
        raise ValueError(f"events must be a 1-D array of CD_DTYPE {CD_DTYPE}")
    return events


def _check_geometry(width: int, height: int) -> None:
    for name, value in (("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def time_window(events: np.ndarray, t_start_us: int, t_end_us: int) -> np.ndarray:
    """The events with ``t_start_us <= t < t_end_us`` (a view; events sorted by t)."""
    t = _check_events(events)["t"]
    lo, hi = np.searchsorted(t, [t_start_us, t_end_us], side="left")
    return events[lo:hi]


@numba.njit(cache=True, nogil=True)
def _paint(x, y, p, starts, width, height, out):  # noqa: ANN001, ANN202
    # out [C, H, W, 3] uint8, already white. Later events overwrite earlier ones at a pixel.
    for c in range(starts.shape[0] - 1):
        for i in range(starts[c], starts[c + 1]):
            xi = np.int64(x[i])
            yi = np.int64(y[i])
            if xi < width and yi < height:
                if p[i] > 0:
                    out[c, yi, xi, 0] = 255
                    out[c, yi, xi, 1] = 0
                    out[c, yi, xi, 2] = 0
                else:
                    out[c, yi, xi, 0] = 0
                    out[c, yi, xi, 1] = 0
                    out[c, yi, xi, 2] = 255


class EventFrameRenderer:
    """EventGPT-style event images: the events are cut into ``num_chunks`` chunks of (nearly)
    equal event count, in time order; each chunk is drawn on white, ON events red and OFF events
    blue, the latest event at a pixel on top.

    ``render`` returns the renderer's own buffer, [num_chunks, height, width, 3] uint8, which the
    next call overwrites; copy it to keep it.
    """

    def __init__(self, width: int, height: int, num_chunks: int = 1) -> None:
        _check_geometry(width, height)
        if isinstance(num_chunks, bool) or not isinstance(num_chunks, (int, np.integer)) or num_chunks < 1:
            raise ValueError(f"num_chunks must be a positive integer, got {num_chunks!r}")
        self.width, self.height, self.num_chunks = int(width), int(height), int(num_chunks)
        self._images = np.empty((self.num_chunks, self.height, self.width, 3), np.uint8)
        self._starts = np.empty(self.num_chunks + 1, np.int64)

    def chunk_bounds(self, num_events: int) -> np.ndarray:
        """Start index of each chunk and the end: [num_chunks + 1] (the renderer's buffer)."""
        np.floor_divide(np.arange(self.num_chunks + 1, dtype=np.int64) * num_events, self.num_chunks, out=self._starts)
        return self._starts

    def render(self, events: np.ndarray) -> np.ndarray:
        events = _check_events(events)
        self._images.fill(255)
        starts = self.chunk_bounds(events.size)
        _paint(events["x"], events["y"], events["p"], starts, self.width, self.height, self._images)
        return self._images


@numba.njit(cache=True, nogil=True)
def _count(x, y, p, width, height, out):  # noqa: ANN001, ANN202
    for i in range(x.shape[0]):
        xi = np.int64(x[i])
        yi = np.int64(y[i])
        if xi < width and yi < height:
            out[1 if p[i] > 0 else 0, yi, xi] += 1


def count_image(events: np.ndarray, width: int, height: int, out: np.ndarray | None = None) -> np.ndarray:
    """Per-polarity event counts, [2, height, width] int32: channel 0 OFF, channel 1 ON.

    Pass ``out`` (same shape, int32) to reuse a buffer; it is zeroed first.
    """
    events = _check_events(events)
    _check_geometry(width, height)
    if out is None:
        out = np.zeros((2, height, width), np.int32)
    elif out.shape != (2, height, width) or out.dtype != np.int32:
        raise ValueError(f"out must be int32 with shape (2, {height}, {width}), got {out.dtype} {out.shape}")
    else:
        out.fill(0)
    _count(events["x"], events["y"], events["p"], width, height, out)
    return out


@numba.njit(cache=True, nogil=True)
def _voxel(x, y, p, t, t0, t1, width, height, out):  # noqa: ANN001, ANN202
    bins = out.shape[0]
    span = t1 - t0
    for i in range(x.shape[0]):
        xi = np.int64(x[i])
        yi = np.int64(y[i])
        if xi >= width or yi >= height or t[i] < t0 or t[i] > t1:
            continue
        tn = (bins - 1) * (t[i] - t0) / span if span > 0 else 0.0
        lo = int(np.floor(tn))
        frac = tn - lo
        v = 1.0 if p[i] > 0 else -1.0
        out[lo, yi, xi] += v * (1.0 - frac)
        if lo + 1 < bins:
            out[lo + 1, yi, xi] += v * frac


def voxel_grid(
    events: np.ndarray,
    width: int,
    height: int,
    num_bins: int,
    t_start_us: int | None = None,
    t_end_us: int | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Voxel grid [num_bins, height, width] float32 over [t_start_us, t_end_us] (default: the
    events' own span): each event adds its polarity (+1 ON, -1 OFF) to the two nearest time
    bins, split linearly (Zhu et al. 2019). Events outside the span are ignored.
    """
    events = _check_events(events)
    _check_geometry(width, height)
    if isinstance(num_bins, bool) or not isinstance(num_bins, (int, np.integer)) or num_bins < 1:
        raise ValueError(f"num_bins must be a positive integer, got {num_bins!r}")
    if out is None:
        out = np.zeros((num_bins, height, width), np.float32)
    elif out.shape != (num_bins, height, width) or out.dtype != np.float32:
        raise ValueError(f"out must be float32 with shape ({num_bins}, {height}, {width}), got {out.dtype} {out.shape}")
    else:
        out.fill(0)
    if events.size == 0:
        return out
    t0 = int(events["t"][0]) if t_start_us is None else int(t_start_us)
    t1 = int(events["t"][-1]) if t_end_us is None else int(t_end_us)
    if t1 < t0:
        raise ValueError(f"t_end_us ({t1}) is before t_start_us ({t0})")
    _voxel(events["x"], events["y"], events["p"], events["t"], t0, t1, width, height, out)
    return out
