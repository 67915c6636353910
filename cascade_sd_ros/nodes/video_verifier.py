"""``video_verifier``: the authority. Verifies drafts against Video-LLaVA on the clip before ``T`` and
publishes what it commits.

Subscribes ``image``, ``drafter/drafts``, ``refiner/drafts``, ``prompt`` and (to measure the clock
offset) ``events``; publishes ``commit`` (Commit), ``caption`` (VerifiedCaption, growing and final),
``caption_marker`` (Marker TEXT_VIEW_FACING), ``caption_image`` (the frame at ``T`` with the caption
drawn), ``clock_offset`` (ClockOffset, latched: the event-to-RGB offset it applies, which the refiner
follows) and ``/diagnostics``.

The offset: measured from the data (events against frames, exact from strobe edges when the event
stream carries them) starting from ``frame_offset`` and applied once confident, with hysteresis; a
round keeps the offset it opened with. ``estimate_offset:=false`` pins ``frame_offset`` instead.

With a draft head (``draft_head``, issue 17) it also drafts for itself: the head reads the target's
own states and, from ``drafter/features`` (EventFeatures), the round's event tokens; a round whose
features are late or missing drafts from the target's states alone (speed only).

Rounds open at the period boundaries once frames pass them (so the verifier needs no drafter), or
when a draft names a round. The verifier waits at most ``max_wait`` for the clip and ``draft_wait``
for a draft; a dead upstream stage costs speed, never output.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.context import Context
from rclpy.parameter import Parameter

from cascade_sd_ros.core.align import (
    AppliedOffset,
    ClockOffsetSource,
    FrameIngest,
    StaleRoundFilter,
    StreamOffsets,
    nearest_frame,
    select_clip,
)
from cascade_sd_ros.core.events import EventDecodeError
from cascade_sd_ros.core.head.features import features_from_payload
from cascade_sd_ros.core.modes import ModeRules
from cascade_sd_ros.core.names import (
    NODE_OF_STAGE,
    STAGE_DRAFTER,
    STAGE_REFINER,
    TOPIC_CAPTION,
    TOPIC_CLOCK_OFFSET,
    TOPIC_COMMIT,
    TOPIC_DRAFTS_DRAFTER,
    TOPIC_DRAFTS_REFINER,
    TOPIC_EVENTS,
    TOPIC_FEATURES,
    TOPIC_IMAGE,
    TOPIC_MARKER,
    TOPIC_OVERLAY,
    TOPIC_PROMPT,
    stage_name,
)
from cascade_sd_ros.core.rounds import RoundRecord, round_id_for
from cascade_sd_ros.core.stage_model import StageModel, default_stage_source
from cascade_sd_ros.core.stages import CaptionUpdate, ScheduleCheck, ScheduleDisagreement, StageInput, VerifierStage
from cascade_sd_ros.core.stages.head_source import HeadSource, HeadSpec, open_draft_head
from cascade_sd_ros.core.zoo import default_zoo_path
from cascade_sd_ros.nodes.common import (
    COMMON_PARAMS,
    FEATURES_QOS,
    LATCHED_QOS,
    OUTPUT_QOS,
    PROMPT_QOS,
    ROUND_QOS,
    ImageInput,
    InputStats,
    Param,
    StageConfig,
    StageNode,
    choice,
    spin_node,
    stage_config_fields,
    warm_up_event_decoders,
)
from cascade_sd_ros.nodes.frame_refiner import MODE_PARAMS, rules_from_params
from cascade_sd_ros.ros.events import EventStream, PacketError, packet_input
from cascade_sd_ros.ros.outputs import (
    DraftMessageError,
    caption_msg,
    clock_offset_msg,
    commit_msg,
    display_text,
    marker_msg,
    overlay_msg,
)
from cascade_sd_ros.ros.stamps import StampError, seconds_to_ns, stamp_to_ns
from cascade_sd_ros.ros.text_port import TextPort

PROMPT_POLL_S = 0.05  # while a prompt waits for its round to open
OFFSET_UPDATE_S = 0.5  # how often the offset estimate is looked at (it measures only when due)

USE_DRAFTS = {
    "both": (STAGE_REFINER, STAGE_DRAFTER),
    "refiner": (STAGE_REFINER,),
    "drafter": (STAGE_DRAFTER,),
    "none": (),
}

PARAMS: tuple[Param, ...] = (
    Param(
        "model",
        "",
        "target (Video-LLaVA) model: a local HF folder, or tiny:SEED; empty = the shipped zoo's target",
        read_only=True,
    ),
    *COMMON_PARAMS,
    *MODE_PARAMS,
    Param("frames", 8, "[frames] clip length the target takes", 1, 64),
    Param("clip_duration", 1.0, "[s] the clip spans [T - clip_duration, T]", 0.0, 60.0),
    Param("slop", 0.02, "[s] frames this far outside the clip window still count", 0.0, 10.0),
    Param("max_wait", 0.5, "[s] wait at most this long (wall) for the clip's frames", 0.0, 60.0),
    Param(
        "draft_wait", 0.03, "[s] wait at most this long for a draft before decoding alone (live)", 0.0, 10.0, live=True
    ),
    Param(
        "stage_liveness",
        5.0,
        "[s] an upstream stage silent this long is not waited for at a round's start",
        0.0,
        3600.0,
    ),
    Param(
        "frame_offset",
        0.0,
        "[s] event clock minus RGB clock (a frame stamped t happened at t + frame_offset)",
        -3600.0,
        3600.0,
    ),
    Param("frame_buffer", 120, "[frames] bound of the frame buffer (oldest dropped, counted)", 2, 100_000),
    Param("use_drafts", "both", "which drafts to verify: both (refiner preferred), refiner, drafter, none"),
    Param("max_pending_rounds", 4, "[rounds] rounds queued beyond this are dropped (oldest first, counted)", 1, 1000),
    Param(
        "estimate_offset",
        True,
        "measure the event/frame clock offset (events against frames; exact from strobe trigger edges when "
        "the event stream has them) and apply it once confident; false pins frame_offset. Subscribes this "
        "node to the raw event stream",
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
    Param("publish_overlay", True, "publish the frame at T with the caption drawn"),
    Param("seed", 0, "seed of the sampling generator (lossless-sample)", 0, 2**31 - 1),
    Param(
        "draft_head",
        "auto",
        "draft-head folder: the verifier drafts for itself from the target's states and the drafter's "
        "event features (issue 17); auto = the shipped zoo head when the target is the shipped zoo "
        "target it was trained on; empty = off",
        read_only=True,
    ),
    Param("head_gamma", 6, "[tokens] the draft head's first draft length (then adapted)", 1, 64, read_only=True),
    Param(
        "head_gamma_max",
        6,
        "[tokens] the draft head's longest draft (6: on the zoo as many tokens accepted as 16, at less than "
        "half the head's cost)",
        1,
        64,
        read_only=True,
    ),
    Param(
        "head_prefill_draft",
        False,
        "prefill hiding: with the round's event tokens in hand before the clip's prefill, the head's first "
        "draft (from them alone) rides in that prefill",
        read_only=True,
    ),
)


DISAGREEMENT_LOG_S = 30.0  # [s] a stage whose rounds disagree is logged at most this often


@dataclass(frozen=True)
class VerifierConfig(StageConfig):
    rules: ModeRules
    frames: int
    clip_ns: int
    slop_ns: int
    max_wait_s: float
    draft_wait_s: float
    liveness_s: float
    frame_offset_ns: int
    frame_offset_bound_ns: int
    trigger_channel: int
    trigger_edge: int
    frame_buffer: int
    use_drafts: tuple[int, ...]
    max_pending: int
    estimate_offset: bool
    publish_overlay: bool
    seed: int
    draft_head: str
    head_gamma: int
    head_gamma_max: int
    head_prefill_draft: bool

    @staticmethod
    def from_params(p: dict[str, Any]) -> "VerifierConfig":
        choice(p["use_drafts"], list(USE_DRAFTS), "use_drafts")
        choice(p["trigger_edge"], ["rising", "falling"], "trigger_edge")
        return VerifierConfig(
            **stage_config_fields(p, "target"),
            rules=rules_from_params(p),
            frames=p["frames"],
            clip_ns=seconds_to_ns(p["clip_duration"], "clip_duration"),
            slop_ns=seconds_to_ns(p["slop"], "slop"),
            max_wait_s=float(p["max_wait"]),
            draft_wait_s=float(p["draft_wait"]),
            liveness_s=float(p["stage_liveness"]),
            frame_offset_ns=seconds_to_ns(p["frame_offset"], "frame_offset"),
            frame_buffer=p["frame_buffer"],
            frame_offset_bound_ns=seconds_to_ns(p["frame_offset_bound"], "frame_offset_bound"),
            trigger_channel=p["trigger_channel"],
            trigger_edge=1 if p["trigger_edge"] == "rising" else 0,
            use_drafts=USE_DRAFTS[p["use_drafts"]],
            max_pending=p["max_pending_rounds"],
            estimate_offset=bool(p["estimate_offset"]),
            publish_overlay=bool(p["publish_overlay"]),
            seed=p["seed"],
            draft_head=str(p["draft_head"]).strip(),
            head_gamma=p["head_gamma"],
            head_gamma_max=max(p["head_gamma"], p["head_gamma_max"]),
            head_prefill_draft=bool(p["head_prefill_draft"]),
        )


@dataclass(frozen=True)
class RoundInputs:
    """What the verifier conditioned a round on (kept for the last few rounds: tests and baselines)."""

    frames: np.ndarray  # uint8 [F, H, W, 3]
    stamps_ns: tuple[int, ...]  # RGB clock
    question: str


class VideoVerifier(StageNode[VerifierConfig]):
    stage: VerifierStage

    def __init__(
        self,
        *,
        context: Context | None = None,
        model: StageModel | None = None,
        parameter_overrides: list[Parameter] | None = None,
        namespace: str | None = None,
    ) -> None:
        super().__init__(
            NODE_OF_STAGE["verifier"],
            PARAMS,
            VerifierConfig.from_params,
            "target",
            context=context,
            model=model,
            parameter_overrides=parameter_overrides,
            namespace=namespace,
        )

    def build(self) -> None:
        self.offsets = StreamOffsets({"image": self.cfg.frame_offset_ns})
        self.clock = ClockOffsetSource(
            initial_ns=self.cfg.frame_offset_ns,
            pinned=not self.cfg.estimate_offset,
            bound_ns=self.cfg.frame_offset_bound_ns,
            trigger_channel=self.cfg.trigger_channel,
            trigger_edge=self.cfg.trigger_edge,
        )
        self._published_offset: AppliedOffset | None = None
        self._event_stream = EventStream()
        self._stale = StaleRoundFilter(self.cfg.jump_tolerance_ns)
        # open every period boundary the frames have passed, once the clip has frames behind it
        self._image = ImageInput(
            self,
            FrameIngest(
                offsets=self.offsets,
                buffer_size=self.cfg.frame_buffer,
                jump_tolerance_ns=self.cfg.jump_tolerance_ns,
                schedule=self.cfg.schedule,
                slop_ns=self.cfg.slop_ns,
                lead_ns=self.cfg.clip_ns,
            ),
            reset_what="frames, rounds and offset estimate",
            on_jump=self._reset_locked,
            on_frame=self.clock.add_frame if self.cfg.estimate_offset else None,
        )
        self.images_in = self._image.stats
        self._frames = self._image.ingest.frames
        self._pending_prompt: float | None = None
        self.inputs: OrderedDict[int, RoundInputs] = OrderedDict()  # the last rounds' clips (under self.lock)
        self.events_in = InputStats(self, "events")
        self.drafts_in = InputStats(self, "drafts")
        # drafts as ids, or through their text from a stage of another vocabulary (draft_ids)
        self.drafts_port = TextPort(
            self.model, "drafts", "target", self.cfg.draft_ids, self.get_logger().error, self.get_logger().info
        )
        self.drafts_foreign = self.drafts_port.guard
        # whether the rounds the drafts name agree with this verifier's round parameters (under self.lock)
        self.schedule_check = ScheduleCheck(self.cfg.schedule)
        self._schedule_logged: dict[str, float] = {}

        from event_camera_msgs.msg import EventPacket
        from sensor_msgs.msg import Image
        from std_msgs.msg import String
        from visualization_msgs.msg import Marker

        from cascade_sd_ros.msg import Commit, DraftTokens, VerifiedCaption

        inputs = MutuallyExclusiveCallbackGroup()
        self.pub_commit = self.create_lifecycle_publisher(Commit, TOPIC_COMMIT, ROUND_QOS)
        self.pub_caption = self.create_lifecycle_publisher(VerifiedCaption, TOPIC_CAPTION, OUTPUT_QOS)
        self.pub_marker = self.create_lifecycle_publisher(Marker, TOPIC_MARKER, OUTPUT_QOS)
        self.pub_overlay = self.create_lifecycle_publisher(Image, TOPIC_OVERLAY, OUTPUT_QOS)
        from cascade_sd_ros.msg import ClockOffset

        self.pub_clock_offset = self.create_lifecycle_publisher(ClockOffset, TOPIC_CLOCK_OFFSET, LATCHED_QOS)
        self.create_subscription(Image, TOPIC_IMAGE, self._image, self.sensor_qos, callback_group=inputs)
        self.create_subscription(DraftTokens, TOPIC_DRAFTS_DRAFTER, self._on_draft, ROUND_QOS, callback_group=inputs)
        self.create_subscription(DraftTokens, TOPIC_DRAFTS_REFINER, self._on_draft, ROUND_QOS, callback_group=inputs)
        self.create_subscription(String, TOPIC_PROMPT, self._on_prompt, PROMPT_QOS, callback_group=inputs)
        if self.cfg.estimate_offset:
            warm_up_event_decoders(self)
            self.create_subscription(
                EventPacket,
                TOPIC_EVENTS,
                self._on_events,
                self.sensor_qos,
                callback_group=MutuallyExclusiveCallbackGroup(),
            )
        # armed by a prompt only (see prompted): an idle timer still wakes the executor, whose every
        # spin rebuilds its wait set in Python on the core and GIL the target's passes need
        self._prompt_timer = self.create_timer(
            PROMPT_POLL_S, self._check_prompt, callback_group=MutuallyExclusiveCallbackGroup()
        )
        self._prompt_timer.cancel()
        if self.cfg.estimate_offset:
            # measuring the offset costs up to a few hundred ms of CPU per estimate: off the executor,
            # never on a round's path
            self.create_background_timer(OFFSET_UPDATE_S, self._update_offset)
        head = self._open_head()
        self.features_in = InputStats(self, "features")
        self.features_refused = 0  # EventFeatures of another event encoder (the head drafts without them)
        if head is not None:
            from cascade_sd_ros.msg import EventFeatures

            self.create_subscription(
                EventFeatures, TOPIC_FEATURES, self._on_features, FEATURES_QOS, callback_group=inputs
            )
        self.stage = VerifierStage(
            self.model,
            self._resolve,
            self.worker_output(self._emit),
            rules=self.cfg.rules,
            max_new_tokens=self.cfg.max_new_tokens,
            draft_wait_s=self.cfg.draft_wait_s,
            max_wait_s=self.cfg.max_wait_s,
            use_stages=self.cfg.use_drafts,
            seed=self.cfg.seed,
            max_pending=self.cfg.max_pending,
            liveness_s=self.cfg.liveness_s,
            question=self.cfg.prompt,
            why_silent=self.drafts_foreign.why,
            head=head,
        )

    @property
    def finals(self) -> dict[int, CaptionUpdate]:
        """The last rounds' final updates by round id (each kept before it is published)."""
        return self.stage.finals()

    def apply_live(self, name: str, value: Any) -> str | None:
        if name == "draft_wait":
            self.stage.set_draft_wait(float(value))
            return None
        return super().apply_live(name, value)

    def check_model(self, model: StageModel) -> None:
        if model.num_frames != self.cfg.frames:
            raise ValueError(f"parameter frames={self.cfg.frames} but the target model takes {model.num_frames} frames")

    # ------------------------------------------------------------------ callbacks
    def _on_events(self, msg: Any) -> None:
        self.events_in.tick()
        try:
            pkt = packet_input(msg)
            decoded = self._event_stream.decode(pkt)
        except (PacketError, StampError, EventDecodeError) as exc:
            self.events_in.bad(str(exc))
            return
        cd = decoded.cd
        self.clock.add_events(decoded.t_ns, cd["x"], cd["y"], cd["p"], pkt.width, pkt.height)
        if decoded.triggers.size:
            self.clock.add_triggers(decoded.trigger_t_ns, decoded.triggers["id"], decoded.triggers["p"])

    def _update_offset(self) -> None:
        """Measure when due; a new applied offset moves the frame ingest and is published (latched)."""
        applied = self.clock.update()
        last = self._published_offset
        if last is not None and (applied.offset_ns, applied.drift_ppm, applied.confident, applied.source) == (
            last.offset_ns,
            last.drift_ppm,
            last.confident,
            last.source,
        ):
            return
        with self.lock:
            newest = self._image.newest_ref_ns()
        if newest is None:
            return  # nothing to stamp it with yet (and nothing to apply it to): the first frame will do
        stamp = newest
        self.offsets.set("image", applied.at(stamp))
        self._publish_offset(applied, stamp)
        if applied.confident and (last is None or not last.confident or last.offset_ns != applied.offset_ns):
            self.get_logger().info(
                f"clock offset {applied.at(stamp) / 1e6:.2f} ms applied ({applied.source}, "
                f"±{applied.uncertainty_ns / 1e6:.2f} ms)"
            )

    def _publish_offset(self, applied: AppliedOffset, stamp_ns: int) -> None:
        self._published_offset = applied
        self.pub_clock_offset.publish(clock_offset_msg(applied, stamp_ns, self.cfg.frame_id))

    def _on_draft(self, msg: Any) -> None:
        self.drafts_in.tick()
        try:
            rec = self.stage.record(int(msg.round_id))
            draft = self.drafts_port.incoming_draft(
                msg, stage_name(msg.stage), lambda: rec.committed if rec is not None else []
            )
            if draft is None:
                return  # ids of another vocabulary without text, or a text draft gone stale: never verified
            t_ns = stamp_to_ns(msg.header.stamp)
            with self.lock:
                finding = self.schedule_check.hear(stage_name(draft.stage), int(msg.round_id), t_ns)
                if not self._stale.admit(f"stage {draft.stage}", t_ns, self._image.newest_ref_ns()):
                    return  # a round of the timeline before a jump
            if finding is not None:
                self._report_disagreement(finding)
            # handled as any draft all the same: an off-schedule round costs speed, never output
            self.stage.hear_draft(int(msg.round_id), t_ns, draft)
        except (StampError, DraftMessageError, ValueError) as exc:
            self.drafts_in.bad(str(exc))

    # ------------------------------------------------------------------ draft head (issue 17)
    def _open_head(self) -> HeadSource | None:
        """The draft head ``draft_head`` names, or None (off, or refused: one log line says why)."""
        self._head_spec: HeadSpec | None = None
        setting = self.cfg.draft_head
        if not setting:
            self.head_status = "off"
            return None
        if not self.cfg.use_drafts:
            self.head_status = "off (use_drafts none: the verifier alone)"
            return None
        auto = setting == "auto"
        if auto and self.cfg.model != default_stage_source("target"):
            self.head_status = "off (auto: the shipped head fits the shipped target only)"
            return None
        folder = default_zoo_path() / "head" if auto else Path(setting)
        spec, why = open_draft_head(folder, self.model.adapter)
        if spec is None:
            self.head_status = f"refused: {why}"
            # asked for by name: an error; auto finding the shipped head does not fit this target: a note
            log = self.get_logger().info if auto else self.get_logger().error
            log(f"draft head refused, verifying without it: {why}")
            return None
        self._head_spec = spec
        self.head_status = f"on ({spec.folder})"
        self.get_logger().info(
            f"draft head {spec.folder} on: target states + event features of encoder {spec.event_encoder or '(none)'}"
        )
        return HeadSource(
            spec.adapter,
            gamma=self.cfg.head_gamma,
            gamma_max=self.cfg.head_gamma_max,
            prefill_draft=self.cfg.head_prefill_draft,
        )

    def _on_features(self, msg: Any) -> None:
        """A round's event tokens for the head; a wrong one is dropped (the head drafts without it)."""
        self.features_in.tick()
        spec = self._head_spec
        assert spec is not None  # subscribed only with a head
        try:
            t_ns = stamp_to_ns(msg.header.stamp)
            if round_id_for(t_ns) != int(msg.round_id):
                raise ValueError(f"round id {msg.round_id} is not its stamp {t_ns} ns")
            if msg.encoder_fingerprint != spec.event_encoder:
                self.features_refused += 1
                if self.features_refused == 1:
                    self.get_logger().error(
                        f"event features refused: made by event encoder {msg.encoder_fingerprint!r}, the draft "
                        f"head reads encoder {spec.event_encoder or '(none named in head.json)'!r}; it drafts "
                        "from the target's states alone"
                    )
                return
            tokens = features_from_payload(
                int(msg.rows),
                int(msg.dim),
                msg.data,
                msg.encoder_fingerprint,
                expected_rows=spec.event_rows,
                expected_dim=spec.event_dim,
                expected_fingerprint=spec.event_encoder,
            )
        except (StampError, ValueError) as exc:
            self.features_in.bad(str(exc))
            return
        self.stage.offer_features(int(msg.round_id), tokens)

    def _report_disagreement(self, finding: ScheduleDisagreement) -> None:
        """An ERROR when a stage is first found to disagree (or anew), at most one per stage every 30 s."""
        now = time.monotonic()
        if now - self._schedule_logged.get(finding.stage, -1e18) < DISAGREEMENT_LOG_S:
            return
        self._schedule_logged[finding.stage] = now
        with self.lock:
            off = self.schedule_check.off_schedule
        self.get_logger().error(f"round parameters disagree: {finding.text} ({off} rounds off this schedule so far)")

    def prompted(self) -> None:
        with self.lock:
            self._pending_prompt = time.monotonic()
            self._prompt_timer.reset()

    def _check_prompt(self) -> None:
        """A prompt opens a round; the drafter's (at its newest event) wins, else the newest frame's."""
        with self.lock:
            asked = self._pending_prompt
            if asked is None:
                self._prompt_timer.cancel()
                return
        if self.stage.opened_since(asked):
            self._prompt_done(asked)
            return
        if time.monotonic() - asked < self.cfg.max_wait_s:
            return
        if not self._prompt_done(asked):
            return  # another prompt came meanwhile: its own wait starts now
        with self.lock:
            newest = self._frames.newest_stamp()
            if newest is None:
                self.get_logger().warning("prompt received but no frames yet: no round opened")
                return
            self.stage.open_round(self.cfg.schedule.prompt_time(self.offsets.to_reference("image", newest)))

    def _prompt_done(self, asked: float) -> bool:
        """Disarm the prompt timer unless a newer prompt came in since ``asked``; whether it did."""
        with self.lock:
            if self._pending_prompt != asked:
                return False
            self._pending_prompt = None
            self._prompt_timer.cancel()
            return True

    def reset_inputs(self) -> None:
        """After an inactive spell: frames, rounds and the event decoder start again; the clock offset
        stays (the clocks did not change while the node was inactive)."""
        with self.lock:
            self._image.ingest.reset()
            self._event_stream.reset()
            self._stale.reset()
            self.schedule_check.reset()
            self.stage.reset()
            self._pending_prompt = None
            self._prompt_timer.cancel()

    def _reset_locked(self) -> None:
        """After a backward time jump (the frames and round times are already reset): unlike the
        refiner, the verifier also adopts the next frame's size and restarts the offset estimate."""
        self._image.ingest.shape.reset()
        self.clock.reset()
        self._event_stream.reset()
        self._stale.reset()
        self.schedule_check.reset()
        self.stage.reset()

    # ------------------------------------------------------------------ worker side
    def _round_end(self, round_id: int, t_ns: int) -> int:
        """The round's clip end on the RGB clock, through the offset the round opened with."""
        return t_ns - self.clock.round_offset(round_id).at(t_ns)

    def _resolve(self, rec: RoundRecord, given_up: bool) -> StageInput | None:
        end = self._round_end(rec.round_id, rec.t_ns)
        with self.lock:
            newest = self._frames.newest_stamp()
            if not given_up and (newest is None or newest <= end + self.cfg.slop_ns):
                return None  # frames up to the window's end may still come
            clip = select_clip(self._frames, end, self.cfg.clip_ns, self.cfg.frames, self.cfg.slop_ns)
            ref = nearest_frame(self._frames, end, self.cfg.slop_ns)
            self._frames.mark_consumed(end - self.cfg.clip_ns - self.cfg.slop_ns)
        frame_skew = None if ref is None else ref[0] - end
        if clip is None:
            why = "no RGB frames received" if newest is None else "no RGB frames in the clip window"
            return StageInput(None, why, frame_skew_ns=frame_skew)
        frames = np.stack(clip.items)
        with self.lock:
            self.inputs[rec.round_id] = RoundInputs(frames, clip.stamps_ns, rec.question)
            while len(self.inputs) > 32:
                self.inputs.popitem(last=False)
        reason = "" if clip.distinct > 1 or self.cfg.frames == 1 else "one frame for the whole clip"
        return StageInput(frames, reason, skew_ns=clip.newest_skew_ns, span_ns=clip.span_ns, frame_skew_ns=frame_skew)

    def _emit(self, u: CaptionUpdate) -> None:
        text = self.model.decode(list(u.token_ids))
        if u.commit_seq > 0:
            # the text too, for upstream stages of another vocabulary (they draft on from it)
            self.pub_commit.publish(commit_msg(u, self.cfg.frame_id, self.model.vocab, text))
        self.pub_caption.publish(
            caption_msg(u, text, self.cfg.rules, self.cfg.frame_id, self.clock.round_offset(u.round_id))
        )
        shown = display_text(text, u, self.cfg.rules)
        self.pub_marker.publish(marker_msg(shown, u.t_ns, self.cfg.frame_id))
        if not u.final:
            return
        if self.cfg.publish_overlay:
            end = self._round_end(u.round_id, u.t_ns)
            with self.lock:
                near = self._frames.nearest(end)
            if near is not None:
                self.pub_overlay.publish(overlay_msg(near[1], shown, u.t_ns, self.cfg.frame_id))
        if u.degraded:
            self.get_logger().warning(f"round {u.round_id}: degraded caption ({u.degraded_reason})")

    def publish_diagnostics(self) -> None:
        """One DiagnosticStatus now (the 1 s timer's work): inputs, the Stage's counters, a level."""
        est = self.clock.tracker.last_estimate
        fit = self.clock.tracker.last_trigger
        applied = self.clock.current()
        stage = self.stage.snapshot()
        with self.lock:
            check = self.schedule_check
            schedule = (check.off_schedule, check.id_mismatches, [f.text for f in check.found.values()])
        values: dict[str, object] = {
            "backend": self.model.backend.name,
            "backend_reason": self.model.backend.reason,
            **self.images_in.values(),
            **self.events_in.values(),
            **self.drafts_in.values(),
            **{
                k: stage[k]
                for k in (
                    "rounds_done",
                    "rounds_degraded",
                    "rounds_dropped",
                    "rounds_pending",
                    "prefills_with_draft",
                    "acceptance_drafter",
                    "acceptance_refiner",
                    "acceptance_head",
                    "latency_mean_ms",
                    "skew_clip_ms",
                )
            },
            "frame_offset_configured_ms": self.cfg.frame_offset_ns / 1e6,
            "frame_offset_applied_ms": applied.offset_ns / 1e6,
            "frame_offset_source": applied.source,
            "frame_offset_confident": applied.confident,
            "frame_offset_uncertainty_ms": applied.uncertainty_ns / 1e6,
            "frame_offset_drift_ppm": applied.drift_ppm,
            "frame_offset_estimated_ms": est.offset_ns / 1e6 if est is not None else math.nan,
            "frame_offset_estimate": (
                "off (pinned)"
                if not self.cfg.estimate_offset
                else "no data yet"
                if est is None
                else "identifiable"
                if est.identifiable(self.clock.tracker.min_correlation, self.clock.tracker.min_margin)
                else "not identifiable (no motion to align by)"
            ),
            "frame_offset_estimate_r": math.nan if est is None else est.correlation,
            "frame_offset_estimates": self.clock.estimates,
            "frame_offset_refused": self.clock.tracker.refused,
            "frame_offset_trigger_matched": 0 if fit is None else fit.matched,
            "frame_offset_trigger_edges": self.clock.sync.edges_seen,
            "frame_offset_inputs_rejected": self.clock.estimator.rejected,
            "event_clock_reanchors": self._event_stream.reanchors,
            "event_time_resyncs": self._event_stream.time_resyncs,
            "events_dropped_span": self._event_stream.events_dropped_span,
            "resets": stage["resets"],
            "time_jumps": self._image.ingest.jump.jumps,
            "worker_errors": stage["worker_errors"],
            "drafts_stale": self._stale.stale,
            "rounds_off_schedule": schedule[0],
            "round_id_mismatches": schedule[1],
            "schedule_disagreement": "; ".join(schedule[2]),
            **self.drafts_port.values(),
            "mode": self.cfg.rules.name,
            "lossless": self.cfg.rules.lossless,
            # the draft head: what it ran on per round, how often each source's draft was checked
            "draft_head": self.head_status,
            **self.features_in.values(),
            "features.refused": self.features_refused,
            **{k: v for k, v in stage.items() if k.startswith(("head.", "steps_checking_"))},
        }
        level, message = 0, "verifying"
        if self.images_in.received == 0:
            level, message = 1, "degraded: no RGB frames received; no caption can be verified"
        elif (last := self.stage.last_final()) is not None and last.degraded:
            level, message = 1, f"degraded: {last.degraded_reason}"
        if schedule[2]:
            level, message = 2, f"round parameters disagree: {'; '.join(schedule[2])}"
        if stage["worker_errors"]:
            level, message = 2, f"worker errors: {self.stage.last_error}"
        foreign = self.drafts_foreign.status()
        if foreign is not None:
            level, message = 2, foreign
        self.publish_status(level, message, values)


def main(args: list[str] | None = None) -> int:
    return spin_node(lambda: VideoVerifier(), args)


if __name__ == "__main__":
    raise SystemExit(main())
