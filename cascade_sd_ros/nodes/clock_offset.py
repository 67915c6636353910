"""The event-to-RGB clock offset between the nodes: measured in the drafter, followed by the others.

:class:`ClockOffsetMeter` is the drafter's side: the frames (its own ``image`` subscription) and
the decoded events (the drafter's, with their trigger edges) go, in the order they arrive, to a
worker thread of its own that feeds them to a :class:`~cascade_sd_ros.core.align.ClockOffsetSource`
and measures whenever the data make an estimate due (by event time: an estimate costs up to a few
hundred ms, never on the executor), and publishes each new applied offset on the latched
``clock_offset``. The estimates follow the data, not the wall clock: a replay at any rate, or a
worker running behind, measures at the same points of the stream. :class:`ClockOffsetInput` is the
refiner's and verifier's side: a confident ``clock_offset`` is applied from the next round on. The
events stay in the drafter, which decodes them anyway: the verifier's core, what the caption
latency is made of, never takes the raw stream.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from typing import Any, Callable

import numpy as np

from cascade_sd_ros.core.align import AppliedOffset, ClockJumpDetector, ClockOffsetSource, OffsetFollower, StreamOffsets
from cascade_sd_ros.nodes.common import InputStats, StageNode
from cascade_sd_ros.ros.outputs import ClockOffsetError, applied_from_msg, clock_offset_msg
from cascade_sd_ros.ros.stamps import StampError

# the images only feed the estimate: at most 4 s of a 30 Hz camera queued, not the events' depth
# (a thousand VGA frames would be 0.9 GB behind a busy drafter)
IMAGE_QOS_DEPTH = 120
# What may wait for the worker (a replay played as fast as the nodes take it runs seconds of event
# time ahead of the estimates): bounded by count, never by a time span, the oldest dropped first and
# counted. 2 M events (the packets the drafter buffers anyway) are about 40 MB; 128 MB of frames are
# 4.7 s of a 30 Hz VGA camera, 16 s at 346x260.
QUEUED_EVENTS = 2_000_000
QUEUED_FRAME_BYTES = 128 * 2**20
# A strobe is fitted at every packet with new edges (30 Hz), and each fit moves the applied value by
# microseconds: it is published each time (followers take the newest), logged only when it became
# confident, changed source or moved by more than this since the last line
LOG_MOVE_NS = 1_000_000


class ClockOffsetMeter:
    """The drafter's offset measurement (see module doc): ``on_image`` is the image callback,
    ``add_events`` takes each decoded packet, ``update_offset`` is the worker's work (feed what
    arrived, measure when due, publish a change)."""

    def __init__(
        self,
        node: StageNode[Any],
        source: ClockOffsetSource,
        publish: Callable[[Any], None],
        frame_id: str,
        jump_tolerance_ns: int,
    ) -> None:
        self._node = node
        self.source = source
        self._publish = publish
        self._frame_id = frame_id
        self._jump = ClockJumpDetector(jump_tolerance_ns)
        self._published: AppliedOffset | None = None
        self._logged: AppliedOffset | None = None  # the last confident value the log announced
        self.images = InputStats(node, "images")
        # the inputs in arrival order, waiting for the worker, each with its arrival time (steady
        # clock: the strobe's start check compares them): ("frame", t_ns, rgb, arrival_s) or
        # ("events", t_ns [N], cd [N], trigger_t_ns [M], triggers [M], width, height, seq, arrival_s)
        self._queue: deque[tuple[Any, ...]] = deque()
        self._queued_events = 0
        self._queued_frame_bytes = 0
        self._lock = threading.Lock()
        self._draining = False
        self.dropped = 0  # [inputs] dropped unmeasured: the worker was too far behind
        self._newest_ns: int | None = None  # newest event time fed: what a publish is stamped with
        self._worker = node.create_background_worker(self.update_offset)

    def on_image(self, msg: Any) -> None:
        """A frame for the estimate only (its stamp on the RGB clock): nothing keeps it beyond that."""
        frame = self.images.take_frame(msg)
        if frame is None:
            return
        t_ns, rgb = frame
        if self._jump.observe(t_ns):
            self._node.get_logger().warning("image time jumped backwards: the offset estimate starts over")
            self._restart()
        self._put(("frame", t_ns, rgb, time.monotonic()))

    def add_events(self, decoded: Any, width: int, height: int, seq: int) -> None:
        """One decoded packet (``ros.events.StreamEvents``) and its ``seq``: its CD events and its trigger
        edges; its seq and first datum say whether the node heard the event stream from its start."""
        if not len(decoded.t_ns) and not decoded.triggers.size:
            return
        if self.source.pinned and self._published is not None:
            return  # nothing to measure, and the pinned value is out
        item = (decoded.t_ns, decoded.cd, decoded.trigger_t_ns, decoded.triggers, width, height, seq)
        self._put(("events", *item, time.monotonic()))

    def reset(self) -> None:
        """Time jumped: the measurements start over (the applied value stays until the data move it)."""
        self._restart()
        self._jump.reset()

    def _restart(self) -> None:
        with self._lock:
            self._queue.clear()  # the old timeline's inputs
            self._queued_events = self._queued_frame_bytes = 0
            self._newest_ns = None
        self.source.reset()

    def _put(self, item: tuple[Any, ...]) -> None:
        with self._lock:
            self._queue.append(item)
            self._count(item, 1)
            while self._queued_events > QUEUED_EVENTS or self._queued_frame_bytes > QUEUED_FRAME_BYTES:
                self._count(self._queue.popleft(), -1)
                self.dropped += 1
        self._worker.wake()

    def _count(self, item: tuple[Any, ...], sign: int) -> None:
        if item[0] == "frame":
            self._queued_frame_bytes += sign * item[2].nbytes
        else:
            self._queued_events += sign * len(item[1])

    def idle(self) -> bool:
        """Everything that arrived is measured: nothing queued, nothing running, no estimate due
        (tests wait on it)."""
        with self._lock:
            if self._queue or self._draining:
                return False
        return self.source.idle()

    def update_offset(self) -> None:
        """The worker's work: feed what arrived, in order, measuring whenever an estimate falls due
        (so it measures at the same points of the stream however fast the stream came); a new
        applied offset is published (latched), stamped at the newest event fed."""
        with self._lock:
            waiting = len(self._queue)  # the rest is the next run's: a stop is never held up long
            self._draining = True
        try:
            for _ in range(waiting):
                with self._lock:
                    if not self._queue:
                        break
                    item = self._queue.popleft()
                    self._count(item, -1)
                self._feed(item)
                self._measure()
        finally:
            with self._lock:
                self._draining = False

    def _feed(self, item: tuple[Any, ...]) -> None:
        if item[0] == "frame":
            self.source.add_frame(item[1], item[2], arrival_s=item[3])
            return
        _, t_ns, cd, trigger_t_ns, triggers, width, height, seq, arrival_s = item
        present = [a for a in (t_ns, trigger_t_ns) if len(a)]
        self.source.add_packet(seq, min(int(a.min()) for a in present))  # where the event stream starts
        if triggers.size:
            self.source.add_triggers(trigger_t_ns, triggers["id"], triggers["p"], arrival_s=arrival_s)
        if len(t_ns):
            self.source.add_events(t_ns, cd["x"], cd["y"], cd["p"], width, height)
            newest = int(np.max(t_ns))
            with self._lock:
                self._newest_ns = newest if self._newest_ns is None else max(self._newest_ns, newest)

    def _measure(self) -> None:
        applied = self.source.update()  # an estimate only when due
        last = self._published
        if last is not None and _same(applied, last):
            return
        with self._lock:
            stamp = self._newest_ns
        if stamp is None:
            return  # nothing to stamp it with yet (and no rounds to apply it to): the first packet will do
        self._published = applied
        self._publish(clock_offset_msg(applied, stamp, self._frame_id))
        logged = self._logged
        if applied.confident and (
            logged is None or logged.source != applied.source or abs(applied.at(stamp) - logged.at(stamp)) > LOG_MOVE_NS
        ):
            self._logged = applied
            self._node.get_logger().info(
                f"clock offset {applied.at(stamp) / 1e6:.2f} ms applied ({applied.source}, "
                f"±{applied.uncertainty_ns / 1e6:.2f} ms)"
            )

    def values(self, configured_ns: int) -> dict[str, object]:
        """Diagnostics: the applied offset and what it rests on (last estimate, strobe fit)."""
        src = self.source
        tracker = src.tracker
        est, fit, applied = tracker.last_estimate, tracker.last_trigger, src.current()
        with self._lock:
            queued = len(self._queue)
        return {
            **self.images.values(),
            "frame_offset_inputs_queued": queued,
            "frame_offset_inputs_dropped": self.dropped,
            "frame_offset_configured_ms": configured_ns / 1e6,
            "frame_offset_applied_ms": applied.offset_ns / 1e6,
            "frame_offset_source": applied.source,
            "frame_offset_confident": applied.confident,
            "frame_offset_uncertainty_ms": applied.uncertainty_ns / 1e6,
            "frame_offset_drift_ppm": applied.drift_ppm,
            "frame_offset_estimated_ms": est.offset_ns / 1e6 if est is not None else math.nan,
            "frame_offset_estimate": (
                "off (pinned)"
                if src.pinned
                else "no data yet"
                if est is None
                else "identifiable"
                if est.identifiable(tracker.min_correlation, tracker.min_margin)
                else "not identifiable (no motion to align by)"
            ),
            "frame_offset_estimate_r": math.nan if est is None else est.correlation,
            "frame_offset_estimates": src.estimates,
            "frame_offset_refused": tracker.refused,
            "frame_offset_trigger_matched": 0 if fit is None else fit.matched,
            "frame_offset_trigger_edges": src.sync.edges_seen,
            # which of the strobe's aliases (one frame period apart) is applied, and why
            "frame_offset_trigger_alias": tracker.trigger_alias or "none yet",
            "frame_offset_trigger_start": src.start_note or "no edges yet",
            "frame_offset_trigger_check": tracker.alias_note or "no confident estimate yet",
            "frame_offset_inputs_rejected": src.estimator.rejected,
        }


def _same(a: AppliedOffset, b: AppliedOffset) -> bool:
    return (a.offset_ns, a.drift_ppm, a.confident, a.source) == (b.offset_ns, b.drift_ppm, b.confident, b.source)


class ClockOffsetInput:
    """The ``clock_offset`` callback of the frame stages: the drafter's applied event-to-RGB offset,
    followed once confident (:class:`~cascade_sd_ros.core.align.OffsetFollower`: from the next round
    on); it also moves where the frames land on the event clock, hence when rounds open."""

    def __init__(self, node: StageNode[Any], follower: OffsetFollower, offsets: StreamOffsets) -> None:
        self._node = node
        self.follower = follower
        self._offsets = offsets
        self.stats = InputStats(node, "clock_offsets")

    def __call__(self, msg: Any) -> None:
        self.stats.tick()
        try:
            applied = applied_from_msg(msg)
        except (ClockOffsetError, StampError, ValueError) as exc:
            self.stats.bad(str(exc))
            return
        if self.follower.hear(applied):
            with self._node.lock:
                self._offsets.set("image", applied.at(applied.ref_ns))
