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


class StaleRoundFilter:
    """After a backward time jump, drops round messages (drafts, commits) still in flight from before it.

    A bag loop resets a stage's rounds, but other stages' messages about the old timeline's rounds
    are still on the wire; one of them would reopen an old round in the fresh book, which then waits
    for frames that come seconds later (or never). Per source (one publisher, whose messages arrive
    in order), a message naming a round more than ``tolerance_ns`` ahead of this stage's newest input
    is stale until the source names one within that bound: from then on it speaks the new timeline.
    Before the first jump every message is admitted.
    """

    def __init__(self, tolerance_ns: int) -> None:
        if tolerance_ns < 0:
            raise ValueError(f"tolerance_ns must be >= 0, got {tolerance_ns}")
        self.tolerance_ns = tolerance_ns
        self._armed = False
        self._realigned: set[str] = set()
        self._lock = threading.Lock()
        self.stale = 0  # messages dropped as from before a jump

    def reset(self) -> None:
        """Time jumped backwards: every source is suspect until it names a round of the new timeline."""
        with self._lock:
            self._armed = True
            self._realigned.clear()

    def admit(self, source: str, round_t_ns: int, newest_input_ns: int | None) -> bool:
        """Whether a message from ``source`` about the round at ``round_t_ns`` belongs to the present;
        ``newest_input_ns`` is this stage's newest input stamp on the same (reference) clock."""
        with self._lock:
            if not self._armed or source in self._realigned:
                return True
            if newest_input_ns is not None and round_t_ns <= newest_input_ns + self.tolerance_ns:
                self._realigned.add(source)
                return True
            self.stale += 1
            return False
