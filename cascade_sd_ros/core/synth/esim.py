"""Event-camera simulator in the ESIM / v2e tradition, vectorised numpy.

Each pixel holds a reference log intensity ``ref``. The scene's log intensity ``L = log(I + eps)``
is sampled on a sub-step grid (>= 1 kHz); whenever ``L`` has moved ``k`` contrast thresholds away
from ``ref`` between two sub-steps the pixel emits ``k`` events, each stamped at the time the
straight line between the two samples crosses its level (ESIM's interpolation), and ``ref`` moves
by ``k`` thresholds. Thresholds differ per pixel (normal spread, fixed per sensor by the seed).
A pixel that fired less than ``refractory_us`` ago drops the event but still resets (a DVS pixel is
held in reset during its refractory period, so its reference follows the input). Optional
background activity adds Poisson ON/OFF noise events at ``noise_rate_hz`` per pixel.

Only pixels inside the source's *changed boxes* are evaluated at each sub-step (for a synthetic
scene: the boxes swept by moving objects), which keeps a 346x260 scene far faster than real time.
No Python loop runs per event: a sub-step's work is array operations over its changed pixels,
looping only over the number of thresholds crossed in that sub-step.

Events are :data:`cascade_sd_ros.core.events.CD_DTYPE` (t in µs, p 1 = ON, 0 = OFF), sorted by
(t, y, p, x) — the order in which the EVT 3.0 encoder packs same-time rows into vector words.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import numpy as np

from cascade_sd_ros.core.events import CD_DTYPE

Box = tuple[int, int, int, int]  # (y0, y1, x0, x1), half-open


class IntensitySource(Protocol):
    """What the simulator samples: linear intensity in [0, 1] and where it can change."""

    height: int
    width: int

    def intensity(self, t_s: float, box: Box | None = None) -> np.ndarray:
        """float32 [h, w] over ``box`` (whole frame when None)."""

    def changed_boxes(self, t0_s: float, t1_s: float) -> list[Box]:
        """Disjoint boxes outside which the intensity is the same at ``t0_s`` and ``t1_s``."""


@dataclass(frozen=True)
class EsimConfig:
    """Sensor model. Thresholds are in log-intensity units (0.2 ~ 22 % contrast)."""

    threshold_on: float = 0.2
    threshold_off: float = 0.2
    threshold_sigma: float = 0.03  # per-pixel standard deviation of both thresholds
    min_threshold: float = 0.01  # floor for the sampled per-pixel thresholds
    refractory_us: int = 100
    substep_hz: float = 1000.0  # sampling rate of the log intensity
    noise_rate_hz: float = 0.0  # background activity per pixel (ON and OFF together)
    log_eps: float = 0.01  # L = log(I + eps): keeps black pixels finite

    def __post_init__(self) -> None:
        for name in ("threshold_on", "threshold_off", "min_threshold", "log_eps"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"EsimConfig.{name} must be > 0, got {v}")
        if not (math.isfinite(self.threshold_sigma) and self.threshold_sigma >= 0):
            raise ValueError(f"EsimConfig.threshold_sigma must be >= 0, got {self.threshold_sigma}")
        if self.refractory_us < 0:
            raise ValueError(f"EsimConfig.refractory_us must be >= 0, got {self.refractory_us}")
        if not (math.isfinite(self.substep_hz) and self.substep_hz >= 1000.0):
            raise ValueError(f"EsimConfig.substep_hz must be >= 1000 (1 kHz), got {self.substep_hz}")
        if not (math.isfinite(self.noise_rate_hz) and self.noise_rate_hz >= 0):
            raise ValueError(f"EsimConfig.noise_rate_hz must be >= 0, got {self.noise_rate_hz}")

    @property
    def substep_us(self) -> int:
        return max(1, int(1e6 // self.substep_hz))


_NEVER = np.int64(-(2**62))  # last-fire time of a pixel that never fired


class EventSimulator:
    """One simulated sensor. ``reset`` references it to an image; ``advance`` runs it forward.

    Deterministic: the same seed and the same calls give the same events.
    """

    def __init__(self, height: int, width: int, config: EsimConfig = EsimConfig(), seed: int = 0) -> None:
        if height < 1 or width < 1 or height > 2048 or width > 2048:
            raise ValueError(f"sensor size must be 1..2048 per side (EVT 3.0 addresses 11 bits), got {height}x{width}")
        self.height, self.width, self.config = int(height), int(width), config
        rng = np.random.default_rng([seed, 0xE51])
        shape = (self.height, self.width)
        c = config
        self.threshold_on = np.maximum(c.min_threshold, rng.normal(c.threshold_on, c.threshold_sigma, shape)).astype(
            np.float32
        )
        self.threshold_off = np.maximum(c.min_threshold, rng.normal(c.threshold_off, c.threshold_sigma, shape)).astype(
            np.float32
        )
        self._noise_rng = np.random.default_rng([seed, 0x401])
        self._ref = np.zeros(shape, np.float32)  # reference log intensity
        self._last = np.zeros(shape, np.float32)  # log intensity at the last sub-step
        self._t_fire = np.full(shape, _NEVER, np.int64)
        self._t_us: int | None = None

    @property
    def t_us(self) -> int | None:
        """Time of the last sample (None before ``reset``)."""
        return self._t_us

    def log(self, intensity: np.ndarray) -> np.ndarray:
        return np.log(intensity.astype(np.float32, copy=False) + np.float32(self.config.log_eps))

    def reset(self, intensity: np.ndarray, t_us: int) -> None:
        """Reference every pixel to ``intensity`` (float [H, W] in [0, 1]) at ``t_us``; keeps the
        refractory state, so a scene cut on a running sensor stays physical."""
        self._check_frame(intensity)
        self._ref[:] = self.log(intensity)
        self._last[:] = self._ref
        self._t_us = int(t_us)

    def advance(self, source: IntensitySource, t_end_us: int) -> np.ndarray:
        """Sample ``source`` from the last time to ``t_end_us``; returns the events, sorted."""
        if self._t_us is None:
            raise RuntimeError("EventSimulator.advance before reset")
        if (source.height, source.width) != (self.height, self.width):
            raise ValueError(f"source is {source.height}x{source.width}, sensor is {self.height}x{self.width}")
        t_end_us = int(t_end_us)
        if t_end_us < self._t_us:
            raise ValueError(f"advance to {t_end_us} µs is before the current time {self._t_us} µs")
        t0 = self._t_us
        parts: list[tuple[np.ndarray, ...]] = []
        step = self.config.substep_us
        t = t0
        while t < t_end_us:
            tn = min(t + step, t_end_us)
            for box in source.changed_boxes(t * 1e-6, tn * 1e-6):
                self._substep(box, self.log(source.intensity(tn * 1e-6, box)), t, tn, parts)
            t = tn
        self._t_us = t_end_us
        if self.config.noise_rate_hz > 0 and t_end_us > t0:
            parts.append(self._noise(t0, t_end_us))
        return _assemble(parts)

    def simulate(
        self,
        frames: np.ndarray | Callable[[float], np.ndarray],
        times_s: Sequence[float] | np.ndarray,
    ) -> np.ndarray:
        """Events for a whole clip, starting from a fresh reference at ``times_s[0]``.

        ``frames``: an array of frames at ``times_s`` (uint8 RGB [N, H, W, 3], uint8 grey or float
        [N, H, W] in [0, 1]; in between, intensity is interpolated at the sub-step rate), or a
        function ``t_s -> frame`` sampled at every sub-step from ``times_s[0]`` to ``times_s[-1]``.
        """
        times = np.asarray(times_s, dtype=np.float64).reshape(-1)
        if len(times) < 1 or not np.all(np.isfinite(times)) or np.any(np.diff(times) <= 0):
            raise ValueError("times_s must be a non-empty, finite, strictly increasing sequence")
        source: IntensitySource
        if callable(frames):
            source = FunctionSource(frames, self.height, self.width)
        else:
            source = FrameSequenceSource(frames, times)
        t0_us = int(round(times[0] * 1e6))
        self.reset(source.intensity(times[0]), t0_us)
        return self.advance(source, int(round(times[-1] * 1e6)))

    # ------------------------------------------------------------------ internals

    def _check_frame(self, intensity: np.ndarray) -> None:
        if intensity.shape != (self.height, self.width):
            raise ValueError(f"intensity frame is {intensity.shape}, sensor is {(self.height, self.width)}")

    def _substep(self, box: Box, new: np.ndarray, t: int, tn: int, parts: list[tuple[np.ndarray, ...]]) -> None:
        y0, y1, x0, x1 = box
        ref = self._ref[y0:y1, x0:x1]
        last = self._last[y0:y1, x0:x1]
        d = new - ref
        c_on = self.threshold_on[y0:y1, x0:x1]
        c_off = self.threshold_off[y0:y1, x0:x1]
        iy, ix = np.nonzero((d >= c_on) | (d <= -c_off))
        if iy.size:
            dd = d[iy, ix]
            on = dd > 0
            c = np.where(on, c_on[iy, ix], c_off[iy, ix])
            sign = np.where(on, np.float32(1), np.float32(-1))
            n = np.floor(np.abs(dd) / c).astype(np.int64)  # thresholds crossed in this sub-step
            r, lp = ref[iy, ix], last[iy, ix]
            slope = new[iy, ix] - lp
            # A flat slope means the crossing is owed from before (not possible after a fresh
            # reference, kept for safety): stamp it at the sub-step start.
            inv = np.where(np.abs(slope) > 1e-12, 1.0 / np.where(slope == 0, 1, slope), 0.0)
            gy, gx = iy + y0, ix + x0
            t_fire = self._t_fire[gy, gx]
            span = tn - t
            refractory = self.config.refractory_us
            for k in range(1, int(n.max()) + 1):
                level = r + sign * (k * c)
                frac = np.clip((level - lp) * inv, 0.0, 1.0)
                tk = t + np.rint(frac * span).astype(np.int64)
                ok = (n >= k) & (tk - t_fire >= refractory)
                if ok.any():
                    parts.append((gx[ok], gy[ok], on[ok], tk[ok]))
                    t_fire = np.where(ok, tk, t_fire)
            self._t_fire[gy, gx] = t_fire
            ref[iy, ix] = r + sign * (n * c)  # the pixel resets even when refractory drops events
        last[:] = new

    def _noise(self, t0: int, t1: int) -> tuple[np.ndarray, ...]:
        rng = self._noise_rng
        count = int(rng.poisson(self.config.noise_rate_hz * self.height * self.width * (t1 - t0) * 1e-6))
        return (
            rng.integers(0, self.width, count),
            rng.integers(0, self.height, count),
            rng.integers(0, 2, count).astype(bool),
            rng.integers(t0, t1 + 1, count).astype(np.int64),
        )


def _assemble(parts: list[tuple[np.ndarray, ...]]) -> np.ndarray:
    if not parts:
        return np.zeros(0, CD_DTYPE)
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    p = np.concatenate([p[2] for p in parts])
    t = np.concatenate([p[3] for p in parts])
    order = np.lexsort((x, p, y, t))
    out = np.empty(order.size, CD_DTYPE)
    out["x"], out["y"], out["p"], out["t"] = x[order], y[order], p[order], t[order]
    return out


def to_intensity(frames: np.ndarray) -> np.ndarray:
    """Frames -> float32 luminance in [0, 1]: uint8 RGB [..., H, W, 3], uint8 grey [..., H, W]
    or float [..., H, W] already in [0, 1]."""
    a = np.asarray(frames)
    if a.dtype == np.uint8:
        f = a.astype(np.float32) / np.float32(255.0)
        if f.ndim >= 3 and f.shape[-1] == 3:
            f = f @ np.asarray([0.299, 0.587, 0.114], np.float32)
        return f
    if np.issubdtype(a.dtype, np.floating):
        if a.ndim >= 3 and a.shape[-1] == 3:
            a = a @ np.asarray([0.299, 0.587, 0.114], np.float32)
        if a.size and (not np.all(np.isfinite(a)) or a.min() < 0.0 or a.max() > 1.0):
            raise ValueError("float frames must be finite and within [0, 1]")
        return a.astype(np.float32, copy=False)
    raise ValueError(f"frames must be uint8 or float, got {a.dtype}")


class FunctionSource:
    """A callable ``t_s -> frame`` as an IntensitySource (whole frame may change anywhere)."""

    def __init__(self, fn: Callable[[float], np.ndarray], height: int, width: int) -> None:
        self._fn, self.height, self.width = fn, height, width

    def intensity(self, t_s: float, box: Box | None = None) -> np.ndarray:
        f = to_intensity(self._fn(t_s))
        if f.shape != (self.height, self.width):
            raise ValueError(f"frame function returned {f.shape}, expected {(self.height, self.width)}")
        if box is None:
            return f
        return f[box[0] : box[1], box[2] : box[3]]

    def changed_boxes(self, t0_s: float, t1_s: float) -> list[Box]:
        return [] if t0_s == t1_s else [(0, self.height, 0, self.width)]


class FrameSequenceSource:
    """Frames at known times, linearly cross-faded (in linear intensity) between neighbours.

    The cross-fade is what lets a low-frame-rate video drive a 1 kHz simulator: events spread
    over each frame interval instead of bunching at frame times. It does not compensate motion,
    so an object moving many pixels per frame leaves ON/OFF events at both positions rather than
    along its path; record at the highest frame rate available. Each interval's changed pixels
    are bounded once, so static parts of a video cost nothing.
    """

    def __init__(self, frames: np.ndarray, times_s: Sequence[float] | np.ndarray) -> None:
        f = to_intensity(frames)
        times = np.asarray(times_s, dtype=np.float64).reshape(-1)
        if f.ndim != 3 or f.shape[0] != len(times) or len(times) == 0:
            raise ValueError(
                f"need frames [N, H, W(, 3)] with N == len(times_s); got {np.shape(frames)} and {len(times)} times"
            )
        if not np.all(np.isfinite(times)) or np.any(np.diff(times) <= 0):
            raise ValueError("frame times must be finite and strictly increasing")
        self.frames, self.times = f, times
        self.height, self.width = int(f.shape[1]), int(f.shape[2])
        self._boxes: list[Box | None] = [_diff_box(f[i], f[i + 1]) for i in range(len(times) - 1)]

    def _segment(self, t_s: float) -> tuple[int, float]:
        i = int(np.clip(np.searchsorted(self.times, t_s, side="right") - 1, 0, max(0, len(self.times) - 2)))
        if len(self.times) == 1:
            return 0, 0.0
        w = (t_s - self.times[i]) / (self.times[i + 1] - self.times[i])
        return i, float(np.clip(w, 0.0, 1.0))

    def intensity(self, t_s: float, box: Box | None = None) -> np.ndarray:
        y0, y1, x0, x1 = box or (0, self.height, 0, self.width)
        i, w = self._segment(t_s)
        a = self.frames[i, y0:y1, x0:x1]
        if w == 0.0:
            return a.copy()
        b = self.frames[i + 1, y0:y1, x0:x1]
        return a + np.float32(w) * (b - a)

    def changed_boxes(self, t0_s: float, t1_s: float) -> list[Box]:
        if t0_s == t1_s or len(self.times) < 2:
            return []
        i0, _ = self._segment(t0_s)
        i1, w1 = self._segment(t1_s)
        if w1 == 0.0 and i1 > i0:
            i1 -= 1  # t1 sits exactly on a frame: the next segment has not started
        boxes = [b for b in self._boxes[i0 : i1 + 1] if b is not None]
        if not boxes:
            return []
        return [
            (min(b[0] for b in boxes), max(b[1] for b in boxes), min(b[2] for b in boxes), max(b[3] for b in boxes))
        ]


def _diff_box(a: np.ndarray, b: np.ndarray) -> Box | None:
    changed = a != b
    rows, cols = np.nonzero(changed.any(axis=1))[0], np.nonzero(changed.any(axis=0))[0]
    if rows.size == 0:
        return None
    return (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)
