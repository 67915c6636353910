"""The event-to-RGB clock offset between the nodes: measured in the drafter, followed by the others.

:class:`ClockOffsetMeter` is the drafter's side: it feeds the frames (its own ``image`` subscription)
and the decoded events (the drafter's, with their trigger edges) to a
:class:`~cascade_sd_ros.core.align.ClockOffsetSource`, runs it on a background timer (an estimate
costs up to a few hundred ms: never on the executor) and publishes each new applied offset on the
latched ``clock_offset``. :class:`ClockOffsetInput` is the refiner's and verifier's side: a confident
``clock_offset`` is applied from the next round on. The events stay in the drafter, which decodes them
anyway: the verifier's core, what the caption latency is made of, never takes the raw stream.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

from cascade_sd_ros.core.align import AppliedOffset, ClockJumpDetector, ClockOffsetSource, OffsetFollower, StreamOffsets
from cascade_sd_ros.nodes.common import InputStats, StageNode
from cascade_sd_ros.ros.image import stamped_rgb8
from cascade_sd_ros.ros.outputs import ClockOffsetError, applied_from_msg, clock_offset_msg
from cascade_sd_ros.ros.stamps import StampError

OFFSET_UPDATE_S = 0.5  # [s] how often the meter looks at its estimate (it measures only when due)
# the images only feed the estimate: at most 4 s of a 30 Hz camera queued, not the events' depth
# (a thousand VGA frames would be 0.9 GB behind a busy drafter)
IMAGE_QOS_DEPTH = 120


class ClockOffsetMeter:
    """The drafter's offset measurement (see module doc): ``on_image`` is the image callback,
    ``add_events`` takes each decoded packet, ``update_offset`` is the background timer's work."""

    def __init__(
        self,
        node: StageNode[Any],
        source: ClockOffsetSource,
        publish: Callable[[Any], None],
        newest_event_ns: Callable[[], int | None],
        frame_id: str,
        jump_tolerance_ns: int,
    ) -> None:
        self._node = node
        self.source = source
        self._publish = publish
        self._newest_event_ns = newest_event_ns
        self._frame_id = frame_id
        self._jump = ClockJumpDetector(jump_tolerance_ns)
        self._published: AppliedOffset | None = None
        self.images = InputStats(node, "images")

    def on_image(self, msg: Any) -> None:
        """A frame for the estimate only (its stamp on the RGB clock): nothing keeps it beyond that."""
        self.images.tick()
        frame = stamped_rgb8(msg)
        if isinstance(frame, str):
            self.images.bad(frame)
            return
        t_ns, rgb = frame
        if self._jump.observe(t_ns):
            self._node.get_logger().warning("image time jumped backwards: the offset estimate starts over")
            self.source.reset()
        self.source.add_frame(t_ns, rgb, arrival_s=time.monotonic())

    def add_events(self, decoded: Any, width: int, height: int, seq: int) -> None:
        """One decoded packet (``ros.events.StreamEvents``) and its ``seq``: its CD events and its trigger
        edges; its seq and first datum say whether the node heard the event stream from its start."""
        present = [a for a in (decoded.t_ns, decoded.trigger_t_ns) if len(a)]
        if present:
            self.source.add_packet(seq, min(int(a.min()) for a in present))
        if decoded.triggers.size:
            self.source.add_triggers(
                decoded.trigger_t_ns, decoded.triggers["id"], decoded.triggers["p"], arrival_s=time.monotonic()
            )
        if len(decoded.t_ns):
            cd = decoded.cd
            self.source.add_events(decoded.t_ns, cd["x"], cd["y"], cd["p"], width, height)

    def reset(self) -> None:
        """Time jumped: the measurements start over (the applied value stays until the data move it)."""
        self.source.reset()
        self._jump.reset()

    def update_offset(self) -> None:
        """Measure when due; a new applied offset is published (latched), stamped at the newest event."""
        applied = self.source.update()
        last = self._published
        if last is not None and _same(applied, last):
            return
        stamp = self._newest_event_ns()
        if stamp is None:
            return  # nothing to stamp it with yet (and no rounds to apply it to): the first packet will do
        self._published = applied
        self._publish(clock_offset_msg(applied, stamp, self._frame_id))
        if applied.confident and (last is None or not last.confident or last.offset_ns != applied.offset_ns):
            self._node.get_logger().info(
                f"clock offset {applied.at(stamp) / 1e6:.2f} ms applied ({applied.source}, "
                f"±{applied.uncertainty_ns / 1e6:.2f} ms)"
            )

    def values(self, configured_ns: int) -> dict[str, object]:
        """Diagnostics: the applied offset and what it rests on (last estimate, strobe fit)."""
        src = self.source
        tracker = src.tracker
        est, fit, applied = tracker.last_estimate, tracker.last_trigger, src.current()
        return {
            **self.images.values(),
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
