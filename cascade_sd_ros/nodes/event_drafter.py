"""``event_drafter``: opens rounds on the event clock and drafts caption tokens from event images;
measures the event-to-RGB clock offset the other stages apply.

Subscribes ``events`` (event_camera_msgs/EventPacket), ``commit`` (Commit), ``prompt``
(std_msgs/String) and, to measure the offset, ``image`` (sensor_msgs/Image, 30 Hz: cheap beside the
events it decodes anyway); publishes ``drafter/drafts`` (DraftTokens, stage 0), ``drafter/features``
(EventFeatures: each round's event tokens, for the verifier's draft head; ``publish_features``),
``clock_offset`` (ClockOffset, latched: what the refiner and verifier follow) and ``/diagnostics``.
Callbacks only decode and buffer; rounds and drafting belong to the core stage
(:class:`~cascade_sd_ros.core.stages.DrafterStage`), which runs the model on its own thread.

The offset: measured from the data (events against frames; exact from strobe edges when the event
stream carries them) starting from ``frame_offset``, applied once confident, with hysteresis, and
published (:class:`~cascade_sd_ros.core.align.ClockOffsetSource`, on a thread of its own: an
estimate costs up to a few hundred ms). ``estimate_offset:=false`` pins ``frame_offset`` (published
as pinned; no image subscription).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.context import Context
from rclpy.parameter import Parameter

from cascade_sd_ros.core.align import ClockJumpDetector, ClockOffsetSource, StaleRoundFilter, TimeBuffer
from cascade_sd_ros.core.align.strobe_start import START_MODES
from cascade_sd_ros.core.events import CD_DTYPE, EventDecodeError, EventFrameRenderer
from cascade_sd_ros.core.head.features import ProjectorTap, features_payload
from cascade_sd_ros.core.head.io import event_encoder_fingerprint
from cascade_sd_ros.core.names import (
    NODE_OF_STAGE,
    TOPIC_CLOCK_OFFSET,
    TOPIC_COMMIT,
    TOPIC_DRAFTS_DRAFTER,
    TOPIC_EVENTS,
    TOPIC_FEATURES,
    TOPIC_IMAGE,
    TOPIC_PROMPT,
)
from cascade_sd_ros.core.rounds import Draft, RoundRecord
from cascade_sd_ros.core.stage_model import StageModel
from cascade_sd_ros.core.stages import DrafterStage, RoundOpener, StageInput
from cascade_sd_ros.core.stages.activity import ActivityTrigger
from cascade_sd_ros.nodes.clock_offset import IMAGE_QOS_DEPTH, ClockOffsetMeter
from cascade_sd_ros.nodes.common import (
    COMMON_PARAMS,
    CONTROLLED_PARAMS,
    FEATURES_QOS,
    FRAME_OFFSET_PARAM,
    GAMMA_MAX_PARAM,
    LATCHED_QOS,
    PROMPT_QOS,
    ROUND_QOS,
    InputStats,
    Param,
    StageConfig,
    StageNode,
    apply_draft_length,
    choice,
    commit_verdict,
    control_acceptance,
    spin_node,
    stage_config_fields,
    warm_up_event_decoders,
    with_defaults,
)
from cascade_sd_ros.ros.events import EventStream, PacketError, packet_input
from cascade_sd_ros.ros.outputs import draft_msg, event_features_msg
from cascade_sd_ros.ros.stamps import StampError, seconds_to_ns, stamp_to_ns
from cascade_sd_ros.ros.text_port import TextPort

# An event camera's driver sends 200-1000 packets/s, against an image topic's 30: the events queue
# holds a second of a 1 kHz driver, so a drafter busy with a draft (or a GIL held by the refiner's
# model beside it) does not lose packets: each lost packet is a hole in the event image.
EVENTS_QOS_DEPTH = 1000

PARAMS: tuple[Param, ...] = (
    Param(
        "model", "", "drafter model: a local HF folder, or tiny:SEED; empty = the shipped zoo's drafter", read_only=True
    ),
    *with_defaults(COMMON_PARAMS, sensor_qos_depth=EVENTS_QOS_DEPTH),
    Param("gamma", 4, "[tokens] draft length per proposal (live)", 1, 64, live=True),
    GAMMA_MAX_PARAM,
    *CONTROLLED_PARAMS,
    Param("lookahead", 2, "[drafts] proposals the drafter may run ahead of the last commit", 1, 16),
    Param(
        "early_tree_nodes",
        0,
        "[nodes] a round's first draft is a tree of at most this many tokens: where the drafter is unsure "
        "(colour, which events do not carry) it sends every likely token with its own continuation, and "
        "the verifier checks them all in its prefill forward (0: a plain chain, the default: on 2 CPU "
        "cores the tree raised tokens per verifier step but not caption latency; bench/RESULTS.md)",
        0,
        512,
        read_only=True,
    ),
    Param("early_tree_depth", 6, "[tokens] levels of that tree (one drafter forward each)", 1, 64, read_only=True),
    Param("event_window", 0.25, "[s] events in [T - event_window, T] form the drafter's image", 0.001, 10.0),
    Param("event_buffer_packets", 4096, "[packets] bound of the event buffer (oldest dropped, counted)", 16, 1_000_000),
    Param(
        "publish_features",
        True,
        "publish each round's event tokens (EventFeatures on drafter/features) for the verifier's draft head",
        read_only=True,
    ),
    Param(
        "activity_rounds",
        False,
        "also open a round when the event rate bursts (the scene changed), at most one per activity_min_gap",
        read_only=True,
    ),
    Param(
        "activity_factor",
        3.0,
        "a 100 ms bin with this many times the baseline's events is a burst",
        1.0,
        1000.0,
        read_only=True,
    ),
    Param(
        "activity_min_gap",
        1.0,
        "[s] at least this long between two activity rounds (a noisy sensor's bound)",
        0.1,
        3600.0,
        read_only=True,
    ),
    FRAME_OFFSET_PARAM,
    Param(
        "estimate_offset",
        True,
        "measure the event/frame clock offset (events against frames; exact from strobe trigger edges when "
        "the event stream has them), apply it once confident and publish it on clock_offset (the refiner "
        "and verifier follow it); false pins frame_offset. Subscribes this node to the images",
        read_only=True,
    ),
    Param(
        "frame_offset_bound",
        0.5,
        "[s] a measured offset further than this from frame_offset is refused (counted)",
        0.0,
        3600.0,
        read_only=True,
    ),
    Param(
        "trigger_channel",
        0,
        "trigger input the RGB exposure strobe is wired to (EVT 3.0 channel id)",
        0,
        31,
        read_only=True,
    ),
    Param("trigger_edge", "rising", "strobe edge that marks an exposure: rising or falling", read_only=True),
    Param(
        "trigger_pairing",
        "auto",
        "which strobe edge is the first frame's: auto counts from the streams' starts when this node heard "
        "both begin (event packets from seq 0, the first edge at the stream's start or after a silent line); "
        "start: always (the recording starts both cameras together); off: never (the bound or the estimate "
        "picks among the strobe's aliases, one frame period apart)",
        read_only=True,
    ),
)


@dataclass(frozen=True)
class DrafterConfig(StageConfig):
    gamma: int
    gamma_max: int
    lookahead: int
    early_tree_nodes: int
    early_tree_depth: int
    window_ns: int
    buffer_packets: int
    activity_rounds: bool
    activity_factor: float
    activity_min_gap_ns: int
    publish_features: bool
    frame_offset_ns: int
    estimate_offset: bool
    frame_offset_bound_ns: int
    trigger_channel: int
    trigger_edge: int
    trigger_pairing: str

    @staticmethod
    def from_params(p: dict[str, Any]) -> "DrafterConfig":
        choice(p["trigger_edge"], ["rising", "falling"], "trigger_edge")
        choice(p["trigger_pairing"], list(START_MODES), "trigger_pairing")
        return DrafterConfig(
            **stage_config_fields(p, "drafter"),
            gamma=p["gamma"],
            gamma_max=p["gamma_max"],
            lookahead=p["lookahead"],
            early_tree_nodes=p["early_tree_nodes"],
            early_tree_depth=p["early_tree_depth"],
            window_ns=seconds_to_ns(p["event_window"], "event_window"),
            buffer_packets=p["event_buffer_packets"],
            activity_rounds=bool(p["activity_rounds"]),
            activity_factor=float(p["activity_factor"]),
            activity_min_gap_ns=seconds_to_ns(p["activity_min_gap"], "activity_min_gap"),
            publish_features=bool(p["publish_features"]),
            frame_offset_ns=seconds_to_ns(p["frame_offset"], "frame_offset"),
            estimate_offset=bool(p["estimate_offset"]),
            frame_offset_bound_ns=seconds_to_ns(p["frame_offset_bound"], "frame_offset_bound"),
            trigger_channel=p["trigger_channel"],
            trigger_edge=1 if p["trigger_edge"] == "rising" else 0,
            trigger_pairing=p["trigger_pairing"],
        )


class EventDrafter(StageNode[DrafterConfig]):
    stage: DrafterStage

    def __init__(
        self,
        *,
        context: Context | None = None,
        model: StageModel | None = None,
        parameter_overrides: list[Parameter] | None = None,
        namespace: str | None = None,
        ros_args: Sequence[str] = (),
    ) -> None:
        super().__init__(
            NODE_OF_STAGE["drafter"],
            PARAMS,
            DrafterConfig.from_params,
            "drafter",
            context=context,
            model=model,
            parameter_overrides=parameter_overrides,
            namespace=namespace,
            ros_args=ros_args,
        )

    def build(self) -> None:
        warm_up_event_decoders(self)  # configure's warm-up: before the events subscription
        self._packets: TimeBuffer[tuple[np.ndarray, np.ndarray]] = TimeBuffer(self.cfg.buffer_packets)
        self._stream = EventStream()
        self._jump = ClockJumpDetector(self.cfg.jump_tolerance_ns)
        self._stale = StaleRoundFilter(self.cfg.jump_tolerance_ns)
        # a round opens once the events pass T, if [T - event_window, T] starts after the stream did
        self._rounds = RoundOpener(self.cfg.schedule, lead_ns=self.cfg.window_ns)
        # and, if asked, when the event rate bursts (bounded: one per activity_min_gap)
        self._activity = (
            ActivityTrigger(factor=self.cfg.activity_factor, min_gap_ns=self.cfg.activity_min_gap_ns)
            if self.cfg.activity_rounds
            else None
        )
        self._max_span_ns = 0
        self._renderer: EventFrameRenderer | None = None
        self.events_in = InputStats(self, "events")
        self.commits_in = InputStats(self, "commits")
        # the verifier's commits as ids, or through their text when its vocabulary is another (draft_ids)
        self.commits_port = TextPort(
            self.model, "commits", "drafter", self.cfg.draft_ids, self.get_logger().error, self.get_logger().info
        )
        self.commits_foreign = self.commits_port.guard
        # the clock offset: measured here, where the events are decoded anyway, and published
        self.clock = ClockOffsetSource(
            initial_ns=self.cfg.frame_offset_ns,
            pinned=not self.cfg.estimate_offset,
            bound_ns=self.cfg.frame_offset_bound_ns,
            trigger_channel=self.cfg.trigger_channel,
            trigger_edge=self.cfg.trigger_edge,
            trigger_pairing=self.cfg.trigger_pairing,
        )

        from event_camera_msgs.msg import EventPacket
        from sensor_msgs.msg import Image
        from std_msgs.msg import String

        from cascade_sd_ros.msg import ClockOffset, Commit, DraftTokens, EventFeatures

        inputs = MutuallyExclusiveCallbackGroup()
        self.pub_drafts = self.create_lifecycle_publisher(DraftTokens, TOPIC_DRAFTS_DRAFTER, ROUND_QOS)
        self.pub_clock_offset = self.create_lifecycle_publisher(ClockOffset, TOPIC_CLOCK_OFFSET, LATCHED_QOS)
        # fed on its own thread, measuring whenever the data make an estimate due (an estimate
        # costs up to a few hundred ms of CPU: off the executor, never on a packet's path)
        self.offset_meter = ClockOffsetMeter(
            self, self.clock, self.pub_clock_offset.publish, self.cfg.frame_id, self.cfg.jump_tolerance_ns
        )
        self.images_in = self.offset_meter.images
        self._features = self._features_tap() if self.cfg.publish_features else None
        self.features_published = 0
        self.features_missing = 0  # rounds prefilled without an image forward to take tokens from
        if self._features is not None:
            self.pub_features = self.create_lifecycle_publisher(EventFeatures, TOPIC_FEATURES, FEATURES_QOS)
        self.create_subscription(EventPacket, TOPIC_EVENTS, self._on_events, self.sensor_qos, callback_group=inputs)
        if self.cfg.estimate_offset:
            image_qos = copy.copy(self.sensor_qos)
            image_qos.depth = min(self.sensor_qos.depth, IMAGE_QOS_DEPTH)
            self.create_subscription(Image, TOPIC_IMAGE, self.offset_meter.on_image, image_qos, callback_group=inputs)
        self.create_subscription(Commit, TOPIC_COMMIT, self._on_commit, ROUND_QOS, callback_group=inputs)
        self.create_subscription(String, TOPIC_PROMPT, self._on_prompt, PROMPT_QOS, callback_group=inputs)
        self.stage = DrafterStage(
            self.model,
            self._resolve,
            self.worker_output(self._publish),
            gamma=self.cfg.gamma,
            gamma_max=self.cfg.gamma_max,
            lookahead=self.cfg.lookahead,
            max_new_tokens=self.cfg.max_new_tokens,
            question=self.cfg.prompt,
            round_loaded=None if self._features is None else self.worker_output(self._publish_features),
            early_tree_nodes=self.cfg.early_tree_nodes,
            early_tree_depth=self.cfg.early_tree_depth,
        )
        control_acceptance(self, self.stage, self.model.adapter.vocab_size)

    def _features_tap(self) -> tuple[ProjectorTap, str] | None:
        """The tap on the drafter's own image forward and its encoder's fingerprint; None (said once)
        for a drafter that makes no event tokens (not a LLaVA with a projector)."""
        model = getattr(self.model.adapter, "model", None)
        try:
            fingerprint = event_encoder_fingerprint(model)
            return ProjectorTap(model), fingerprint
        except ValueError as exc:
            self.get_logger().info(f"event features not published: {exc}")
            return None

    def _release(self) -> None:
        features = vars(self).get("_features")
        if features is not None:
            features[0].close()  # a model handed in outlives this configuration: unhook it
        super()._release()

    def apply_live(self, name: str, value: Any) -> str | None:
        if name in ("gamma", "gamma_max"):
            return apply_draft_length(self, self.stage, name, value)
        return super().apply_live(name, value)

    # ------------------------------------------------------------------ callbacks (convert + buffer)
    def _on_events(self, msg: Any) -> None:
        self.events_in.tick()
        try:
            pkt = packet_input(msg)
        except (PacketError, StampError) as exc:
            self.events_in.bad(str(exc))
            return
        with self.lock:
            if self._jump.observe(pkt.stamp_ns):
                self.get_logger().warning("event time jumped backwards: buffers and rounds reset")
                self._reset_locked()
            try:
                decoded = self._stream.decode(pkt)
            except (EventDecodeError, PacketError) as exc:
                self.events_in.bad(f"undecodable {pkt.encoding} payload: {exc}")
                return
            self.offset_meter.add_events(decoded, pkt.width, pkt.height, pkt.seq)
            if len(decoded.t_ns) == 0:
                return
            if self._renderer is None or (self._renderer.width, self._renderer.height) != (pkt.width, pkt.height):
                self._renderer = EventFrameRenderer(pkt.width, pkt.height, 1)
            t0, t1 = int(decoded.t_ns.min()), int(decoded.t_ns.max())
            self._packets.insert(t0, (decoded.t_ns, decoded.cd))
            self.events_in.buffer(self._packets.dropped, self._packets.expired)
            self._max_span_ns = max(self._max_span_ns, t1 - t0)
            for T in self._rounds.advance(t0, t1):
                self.stage.open_round(T)
            if self._activity is not None:
                first = self._rounds.first_ns
                for T in self._activity.observe(decoded.t_ns):
                    if first is None or T - self.cfg.window_ns >= first:  # its window inside the stream
                        self.stage.open_round(T)

    def _on_commit(self, msg: Any) -> None:
        self.commits_in.tick()
        try:
            ids = self.commits_port.commit_ids(msg)
            if ids is None:
                return  # a prefix in another vocabulary without text: never drafted on
            t_ns = stamp_to_ns(msg.header.stamp)
            if not self._stale.admit("verifier", t_ns, self._jump.newest):
                return  # a round of the timeline before a jump
            self.stage.hear_commit(
                int(msg.round_id), t_ns, int(msg.commit_seq), ids, bool(msg.final), commit_verdict(msg)
            )
        except (StampError, ValueError) as exc:
            self.commits_in.bad(str(exc))

    def prompted(self) -> None:
        with self.lock:
            newest = self._packets.newest_stamp()
        if newest is not None:
            self.stage.open_round(self.cfg.schedule.prompt_time(newest))  # a prompt asks about now

    def reset_inputs(self) -> None:
        with self.lock:
            self._reset_locked()

    def _reset_locked(self) -> None:
        """Time jumped backwards (or the node was inactive): buffers, rounds and the offset's
        measurements start over (the applied offset stays until the data move it)."""
        self.offset_meter.reset()
        self._packets.clear()
        self._stream.reset()
        self._rounds.reset()
        if self._activity is not None:
            self._activity.reset()
        self._max_span_ns = 0
        self._stale.reset()
        self.stage.reset()

    # ------------------------------------------------------------------ worker side
    def _resolve(self, rec: RoundRecord, given_up: bool) -> StageInput | None:
        """The event image of [T - window, T] (all packets up to T arrived before the round opened)."""
        t1 = rec.t_ns
        t0 = t1 - self.cfg.window_ns
        with self.lock:
            chunks = self._packets.window(t0 - self._max_span_ns, t1)
            self._packets.mark_consumed(t0 - self._max_span_ns)  # later rounds start later
            renderer = self._renderer
        if renderer is None:
            # no packet yet, so no sensor geometry: an event image without events is a white canvas
            # of any size, and the model's own size is as good as any (nothing moved, as far as known)
            size = self.model.image_size
            return StageInput(np.full((size, size, 3), 255, np.uint8))
        parts = [cd[(t >= t0) & (t <= t1)] for _, (t, cd) in chunks]
        events = np.concatenate(parts) if parts else np.zeros(0, CD_DTYPE)
        # an empty window is an observation (nothing moved), not a missing input
        return StageInput(renderer.render(events)[0].copy())

    def _publish(self, round_id: int, t_ns: int, draft: Draft) -> None:
        rec = self.stage.record(round_id)
        out = self.commits_port.outgoing(round_id, rec.spec if rec is not None else [], draft)
        if out is not None:  # None: no text for a target of another vocabulary (counted)
            self.pub_drafts.publish(draft_msg(round_id, t_ns, self.cfg.frame_id, draft, self.model.vocab, *out))

    def _publish_features(self, round_id: int, t_ns: int) -> None:
        """The round's event tokens, as its prefill just computed them (worker thread, before the
        round's first draft: the verifier's head wants them while it prefills the clip)."""
        assert self._features is not None
        tap, fingerprint = self._features
        tokens = tap.take()
        if tokens is None:
            self.features_missing += 1  # a backend whose forward bypassed the projector module
            return
        rows, dim, data = features_payload(tokens)
        self.pub_features.publish(event_features_msg(round_id, t_ns, self.cfg.frame_id, rows, dim, data, fingerprint))
        self.features_published += 1

    def publish_diagnostics(self) -> None:
        """One DiagnosticStatus now (the 1 s timer's work): inputs, the Stage's counters, a level."""
        stage = self.stage.snapshot()
        values: dict[str, object] = {
            "backend": self.model.backend.name,
            "backend_reason": self.model.backend.reason,
            **self.events_in.values(),
            **self.commits_in.values(),
            **{k: stage[k] for k in ("rounds_opened", "rounds_open", "rounds_evicted", "resets")},
            "time_jumps": self._jump.jumps,
            "activity_rounds": 0 if self._activity is None else self._activity.triggered,
            "activity_suppressed": 0 if self._activity is None else self._activity.suppressed,
            "commits_stale": self._stale.stale,
            "event_clock_reanchors": self._stream.reanchors,
            "event_time_resyncs": self._stream.time_resyncs,
            "events_dropped_span": self._stream.events_dropped_span,
            **{k: stage[k] for k in ("drafts_published", "worker_errors")},
            "features_published": "off" if self._features is None else self.features_published,
            "features_missing": self.features_missing,
            **self.commits_port.values(),
            **self.offset_meter.values(self.cfg.frame_offset_ns),
        }
        level, message = 0, "drafting"
        if self.events_in.received == 0:
            level, message = 1, "degraded: no event packets received"
        elif self._stream.time_resyncs or self._stream.events_dropped_span:
            level, message = (
                1,
                (
                    f"event time words jumped {self._stream.time_resyncs} times with no wrap to explain "
                    f"it, {self._stream.events_dropped_span} events outside the span bound dropped "
                    "(corrupt packets)"
                ),
            )
        if stage["worker_errors"]:
            level, message = 2, f"worker errors: {self.stage.last_error}"
        foreign = self.commits_foreign.status()
        if foreign is not None:
            level, message = 2, foreign
        self.publish_status(level, message, values)


def main(args: list[str] | None = None) -> int:
    return spin_node(lambda argv: EventDrafter(ros_args=argv), args)


if __name__ == "__main__":
    raise SystemExit(main())
