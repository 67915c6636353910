"""Detect a stream's time going backwards: a bag looping, a clock reset, sim time restarting."""
from __future__ import annotations

import threading


class ClockJumpDetector:
    """Flags a stamp more than ``tolerance_ns`` older than the newest seen so far.

    Small reorderings (network jitter, out-of-order delivery) stay below the tolerance and are
    handled by :class:`~cascade_sd_ros.core.align.TimeBuffer`; a jump means the history before it no
    longer describes the present, so the caller resets its buffers and rounds.
    """

    def __init__(self, tolerance_ns: int) -> None:
        if tolerance_ns < 0:
            raise ValueError(f"tolerance_ns must be >= 0, got {tolerance_ns}")
        self.tolerance_ns = tolerance_ns
        self._newest: int | None = None
        self._lock = threading.Lock()
        self.jumps = 0

    @property
    def newest(self) -> int | None:
        return self._newest

    def observe(self, t_ns: int) -> bool:
        """Record ``t_ns``; True when it is a backward jump (the detector then restarts at ``t_ns``)."""
        with self._lock:
            if self._newest is not None and t_ns < self._newest - self.tolerance_ns:
                self._newest = t_ns
                self.jumps += 1
                return True
            if self._newest is None or t_ns > self._newest:
                self._newest = t_ns
            return False

    def reset(self) -> None:
        with self._lock:
            self._newest = None
