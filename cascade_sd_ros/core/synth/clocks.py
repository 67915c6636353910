"""Separate clocks for the event and RGB cameras, with the truth kept.

World time (the scene's own time) maps to each camera's clock differently:

* event camera: ``event_stamp = world + event_offset_ns + drift`` (an offset between the two clocks
  that grows by ``event_drift_ppm`` of the time since the stream's start; packet header stamps
  and the event sensor's own time are on this clock);
* RGB camera: ``rgb_stamp = world + jitter`` with jitter ~ N(0, ``jitter_ms``) per frame, and each
  frame independently dropped with probability ``drop_rate``.

The RGB clock is the reference: ground truth intervals and ``event_offset_ns`` ("event clock
minus RGB clock") are stated against it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ClockModel:
    event_offset_ns: int = 0  # [ns] event camera clock minus RGB camera clock
    jitter_ms: float = 0.0  # [ms] standard deviation of RGB stamp jitter
    drop_rate: float = 0.0  # [probability] of dropping each RGB frame
    event_drift_ppm: float = 0.0  # [ppm] event clock rate minus RGB clock rate

    def __post_init__(self) -> None:
        if not isinstance(self.event_offset_ns, (int, np.integer)):
            raise TypeError(f"ClockModel.event_offset_ns must be an int (ns), got {self.event_offset_ns!r}")
        if not (math.isfinite(self.jitter_ms) and self.jitter_ms >= 0):
            raise ValueError(f"ClockModel.jitter_ms must be >= 0, got {self.jitter_ms}")
        if not (math.isfinite(self.drop_rate) and 0.0 <= self.drop_rate < 1.0):
            raise ValueError(f"ClockModel.drop_rate must be in [0, 1), got {self.drop_rate}")
        if not (math.isfinite(self.event_drift_ppm) and abs(self.event_drift_ppm) <= 1000.0):
            raise ValueError(f"ClockModel.event_drift_ppm must be within ±1000, got {self.event_drift_ppm}")

    def rgb_stamps(self, world_ns: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(stamps [ns] on the RGB clock, kept mask) for frames captured at ``world_ns``.

        Draws jitter then drops from ``rng`` in that order, one value per frame, so the same
        generator state gives the same result.
        """
        world = np.asarray(world_ns, dtype=np.int64)
        jitter = (
            np.rint(rng.normal(0.0, self.jitter_ms * 1e6, world.shape)).astype(np.int64)
            if self.jitter_ms > 0
            else np.zeros(world.shape, np.int64)
        )
        kept = rng.random(world.shape) >= self.drop_rate
        return world + jitter, kept

    def drift_ns(self, since_start_ns: np.ndarray | int) -> np.ndarray:
        """[ns] what the event clock has gained on the RGB clock ``since_start_ns`` after the start."""
        return np.rint(np.asarray(since_start_ns, np.float64) * self.event_drift_ppm * 1e-6).astype(np.int64)

    def offset_at(self, since_start_ns: int) -> int:
        """[ns] event clock minus RGB clock ``since_start_ns`` after the stream's start (the truth)."""
        return int(self.event_offset_ns) + int(self.drift_ns(since_start_ns))

    def event_stamp(self, world_ns: int, start_ns: int = 0) -> int:
        return int(world_ns) + self.offset_at(int(world_ns) - int(start_ns))
