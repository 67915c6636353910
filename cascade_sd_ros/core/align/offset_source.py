"""The measured clock offset as a stage runs it: estimator, strobe sync and tracker behind one object.

The drafter (it decodes every event anyway) feeds it events (with their triggers) and frames as
they arrive and calls :meth:`update` from a timer of its own: an estimate costs a fraction of a
second of CPU, so it runs at most every ``every_ns`` of event time (``settled_every_ns`` once the applied offset is confident: the data
only have to confirm it then), never on the round's critical path. :meth:`round_offset` is what a
round opening takes and keeps; the applied value never changes a round already open.
"""

from __future__ import annotations

import threading

import numpy as np

from cascade_sd_ros.core.align.offset_tracker import AppliedOffset, OffsetTracker, RoundOffsets
from cascade_sd_ros.core.align.region_offsets import RegionOffsetEstimator
from cascade_sd_ros.core.align.trigger_sync import TriggerSync


class ClockOffsetSource:
    """Estimator + trigger sync + tracker (see module doc). ``max_rounds`` bounds the rounds remembered."""

    def __init__(
        self,
        initial_ns: int = 0,
        pinned: bool = False,
        bound_ns: int | None = 500_000_000,
        every_ns: int = 1_000_000_000,
        settled_every_ns: int = 5_000_000_000,
        trigger_channel: int = 0,
        trigger_edge: int = 1,
        max_rounds: int = 64,
    ) -> None:
        if every_ns <= 0 or settled_every_ns <= 0 or max_rounds < 1:
            raise ValueError("ClockOffsetSource: every_ns and settled_every_ns > 0, max_rounds >= 1")
        reach = max(bound_ns or 0, 400_000_000) + abs(int(initial_ns))
        self.tracker = OffsetTracker(initial_ns=initial_ns, pinned=pinned, bound_ns=bound_ns)
        self.estimator = RegionOffsetEstimator(max_offset_ns=reach)
        self.sync = TriggerSync(channel=trigger_channel, edge=trigger_edge, max_offset_ns=reach)
        self.pinned = pinned
        self.every_ns = int(every_ns)
        self.settled_every_ns = int(settled_every_ns)
        self._newest_event_ns: int | None = None
        self._last_update_ns: int | None = None
        self._rounds = RoundOffsets(max_rounds)
        self._lock = threading.Lock()
        self._updating = False
        self.estimates = 0  # [count] estimates run

    def add_events(
        self, t_ns: np.ndarray, x: np.ndarray, y: np.ndarray, p: np.ndarray, width: int, height: int
    ) -> None:
        if self.pinned or len(t_ns) == 0:
            return  # a pinned offset needs no measuring
        self.estimator.add_events(t_ns, x, y, p, width, height)
        with self._lock:
            newest = int(np.max(t_ns))
            if self._newest_event_ns is None or newest > self._newest_event_ns:
                self._newest_event_ns = newest

    def add_triggers(self, t_ns: np.ndarray, channel: np.ndarray, value: np.ndarray) -> None:
        if not self.pinned and len(t_ns):
            self.sync.add_triggers(t_ns, channel, value)

    def add_frame(self, t_ns: int, image: np.ndarray) -> None:
        if self.pinned:
            return
        self.estimator.add_frame(t_ns, image)
        self.sync.add_frame(t_ns)

    def due(self) -> bool:
        """Whether enough new event time passed for another estimate."""
        with self._lock:
            if self.pinned or self._newest_event_ns is None:
                return False
            if self._last_update_ns is None:
                return True
            every = self.settled_every_ns if self.tracker.current().confident else self.every_ns
            return self._newest_event_ns - self._last_update_ns >= every

    def update(self) -> AppliedOffset:
        """Run an estimate (and a strobe fit when edges came) if one is due; returns the applied offset."""
        if not self.due():
            return self.tracker.current()
        with self._lock:
            self._last_update_ns = self._newest_event_ns
            self._updating = True
        try:
            self.tracker.observe_estimate(self.estimator.estimate())
            self.estimates += 1
            if self.sync.has_edges:
                self.tracker.observe_trigger(self.sync.fit(prior_ns=self.tracker.prior_ns()))
        finally:
            with self._lock:
                self._updating = False
        return self.tracker.current()

    def idle(self) -> bool:
        """No estimate due and none running: what the data so far say is applied (tests wait on it)."""
        with self._lock:
            if self._updating:
                return False
        return not self.due()

    def current(self) -> AppliedOffset:
        return self.tracker.current()

    def round_offset(self, round_id: int) -> AppliedOffset:
        """The offset round ``round_id`` uses: the applied one when it first asks, the same ever after."""
        return self._rounds.fix(round_id, self.tracker.current())

    def reset(self) -> None:
        """Time jumped backwards: the measurements start over (the applied value and a pin stay)."""
        self.estimator.reset()
        self.sync.reset()
        self.tracker.reset()
        with self._lock:
            self._newest_event_ns = None
            self._last_update_ns = None
            self._rounds.clear()
