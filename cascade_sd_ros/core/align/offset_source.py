"""The measured clock offset as a stage runs it: estimator, strobe sync and tracker behind one object.

The drafter (it decodes every event anyway) feeds it events (with their triggers and each packet's
``seq``) and frames as they arrive and calls :meth:`update` from a timer of its own: an estimate
costs a fraction of a second of CPU, so it runs at most every ``every_ns`` of event time
(``settled_every_ns`` once the applied offset is confident and, for a counted strobe alias, the
estimate has agreed with it: the data only have to confirm it then), never on the round's critical
path. A strobe fit is cheap and runs whenever new edges came, so a
strobe whose alias the bound or the streams' starts pick (:class:`StrobeStart`) is applied from its
first edges on, before any estimate. :meth:`round_offset` is what a round opening takes and keeps;
the applied value never changes a round already open.
"""

from __future__ import annotations

import threading

import numpy as np

from cascade_sd_ros.core.align.offset_tracker import AppliedOffset, OffsetTracker, RoundOffsets
from cascade_sd_ros.core.align.region_offsets import RegionOffsetEstimator
from cascade_sd_ros.core.align.strobe_start import StrobeStart
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
        trigger_pairing: str = "auto",
        max_rounds: int = 64,
    ) -> None:
        if every_ns <= 0 or settled_every_ns <= 0 or max_rounds < 1:
            raise ValueError("ClockOffsetSource: every_ns and settled_every_ns > 0, max_rounds >= 1")
        reach = max(bound_ns or 0, 400_000_000) + abs(int(initial_ns))
        self.tracker = OffsetTracker(initial_ns=initial_ns, pinned=pinned, bound_ns=bound_ns)
        self.estimator = RegionOffsetEstimator(max_offset_ns=reach)
        self.sync = TriggerSync(channel=trigger_channel, edge=trigger_edge, max_offset_ns=reach)
        self.start = StrobeStart(trigger_pairing)
        self.start_note = ""  # why the count from the streams' starts was (not) trusted, last fit
        self.bound_ns = bound_ns
        self._fitted_edges = 0  # sync.edges_seen at the last strobe fit
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

    def add_packet(self, seq: int, first_ns: int) -> None:
        """A decoded packet's ``seq`` and first datum (event clock): where the event stream starts."""
        if not self.pinned:
            self.start.observe_packet(seq, first_ns)

    def add_triggers(
        self, t_ns: np.ndarray, channel: np.ndarray, value: np.ndarray, arrival_s: float | None = None
    ) -> None:
        """Trigger events (event clock); ``arrival_s``: when their packet arrived (any steady clock)."""
        if not self.pinned and len(t_ns):
            kept = self.sync.add_triggers(t_ns, channel, value)
            if kept.size:
                self.start.observe_edge(int(kept[0]), arrival_s)

    def add_frame(self, t_ns: int, image: np.ndarray, arrival_s: float | None = None) -> None:
        if self.pinned:
            return
        self.estimator.add_frame(t_ns, image)
        self.sync.add_frame(t_ns)
        self.start.observe_frame(t_ns, arrival_s)

    def due(self) -> bool:
        """Whether an estimate (enough new event time) or a strobe fit (new edges) is due."""
        return self._estimate_due() or self._fit_due()

    def _estimate_due(self) -> bool:
        with self._lock:
            if self.pinned or self._newest_event_ns is None:
                return False
            if self._last_update_ns is None:
                return True
            every = self.settled_every_ns if self.tracker.settled() else self.every_ns
            return self._newest_event_ns - self._last_update_ns >= every

    def _fit_due(self) -> bool:
        return not self.pinned and self.sync.edges_seen > self._fitted_edges

    def update(self) -> AppliedOffset:
        """Run an estimate and a strobe fit, each if due; returns the applied offset."""
        estimate, fit = self._estimate_due(), self._fit_due()
        if not (estimate or fit):
            return self.tracker.current()
        with self._lock:
            if estimate:
                self._last_update_ns = self._newest_event_ns
            self._updating = True
        try:
            if estimate:
                self.tracker.observe_estimate(self.estimator.estimate())
                self.estimates += 1
            if fit:
                self._fit_strobe()
        finally:
            with self._lock:
                self._updating = False
        return self.tracker.current()

    def _fit_strobe(self) -> None:
        """One strobe fit: its alias kept, picked by the bound, the estimate or the streams' starts."""
        self._fitted_edges = self.sync.edges_seen
        period = self.sync.period_ns()
        prior, label = self.tracker.alias_prior(period)
        anchor, self.start_note = self.start.anchor(period)
        lo_hi = None
        if self.bound_ns is not None:
            lo_hi = (self.tracker.initial_ns - self.bound_ns, self.tracker.initial_ns + self.bound_ns)
        fit = self.sync.fit(prior_ns=prior, window_ns=lo_hi, start=anchor)
        self.tracker.observe_trigger(fit, label)

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
        self.start.reset()
        self.tracker.reset()
        with self._lock:
            self._newest_event_ns = None
            self._last_update_ns = None
            self._rounds.clear()
