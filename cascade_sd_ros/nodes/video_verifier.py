"""``video_verifier``: the authority. Verifies drafts against Video-LLaVA on the clip before ``T`` and
publishes what it commits.

Subscribes ``image``, ``drafter/drafts``, ``refiner/drafts``, ``prompt`` and ``clock_offset`` (the
drafter's measured event-to-RGB offset, latched); publishes ``commit`` (Commit), ``caption``
(VerifiedCaption, growing and final), ``caption_marker`` (Marker TEXT_VIEW_FACING), ``caption_image``
(the frame at ``T`` with the caption drawn) and ``/diagnostics``. It never subscribes to the raw
events: the drafter decodes them anyway and measures the offset there, off this node's core, which
is what the caption latency is made of.

The offset: ``frame_offset`` until the drafter's ``clock_offset`` is confident, then that, from the
next round on (a round keeps the offset it opened with; each final caption says which it used).
``follow_clock_offset:=false`` pins ``frame_offset`` instead.

With a draft head (``draft_head``, issue 17) it also drafts for itself: the head reads the target's
own states and, from ``drafter/features`` (EventFeatures), the round's event tokens; a round whose
features are late or missing drafts from the target's states alone (speed only).

Rounds open at the period boundaries once frames pass them (so the verifier needs no drafter), or
when a draft names a round. The verifier waits at most ``max_wait`` for the clip and ``draft_wait``
for a draft; a dead upstream stage costs speed, never output.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.context import Context
from rclpy.parameter import Parameter

from cascade_sd_ros.core.align import (
    FrameIngest,
    OffsetFollower,
    StaleRoundFilter,
    StreamOffsets,
    nearest_frame,
    select_clip,
)
from cascade_sd_ros.core.head.adapter import STOP_BELOW, check_stop_below
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
from cascade_sd_ros.core.stages.head_source import HEAD_BRANCHES, HeadSource, HeadSpec, open_draft_head
from cascade_sd_ros.core.zoo import default_zoo_path
from cascade_sd_ros.nodes.clock_offset import ClockOffsetInput
from cascade_sd_ros.nodes.common import (
    CAPTION_QOS,
    COMMON_PARAMS,
    FEATURES_QOS,
    FOLLOW_CLOCK_OFFSET_PARAM,
    FRAME_OFFSET_PARAM,
    LATCHED_QOS,
    MAX_WAIT_PARAM,
    OUTPUT_QOS,
    PROMPT_QOS,
    ROUND_QOS,
    SLOP_PARAM,
    STAGE_LIVENESS_PARAM,
    ImageInput,
    InputStats,
    Param,
    StageConfig,
    StageNode,
    choice,
    spin_node,
    stage_config_fields,
)
from cascade_sd_ros.nodes.frame_refiner import MODE_PARAMS, rules_from_params
from cascade_sd_ros.ros.outputs import (
    DraftMessageError,
    caption_msg,
    commit_msg,
    display_text,
    marker_msg,
    overlay_msg,
)
from cascade_sd_ros.ros.stamps import StampError, seconds_to_ns, stamp_to_ns
from cascade_sd_ros.ros.text_port import TextPort

PROMPT_POLL_S = 0.05  # while a prompt waits for its round to open

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
    SLOP_PARAM,
    MAX_WAIT_PARAM,
    Param(
        "draft_wait", 0.03, "[s] wait at most this long for a draft before decoding alone (live)", 0.0, 10.0, live=True
    ),
    STAGE_LIVENESS_PARAM,
    FRAME_OFFSET_PARAM,
    Param("frame_buffer", 120, "[frames] bound of the frame buffer (oldest dropped, counted)", 2, 100_000),
    Param("use_drafts", "both", "which drafts to verify: both (refiner preferred), refiner, drafter, none"),
    Param("max_pending_rounds", 4, "[rounds] rounds queued beyond this are dropped (oldest first, counted)", 1, 1000),
    FOLLOW_CLOCK_OFFSET_PARAM,
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
        16,
        "[tokens] the draft head's longest draft (16: busy scenes' long captions accept long drafts; "
        "with head_stop_below its drafts run this far while it is sure)",
        1,
        64,
        read_only=True,
    ),
    Param(
        "head_stop_below",
        STOP_BELOW,
        "the draft head's draft ends after its first token less likely than this, so its length is its "
        "confidence's (up to head_gamma_max); 0 (default) = drafts of the adapted length",
        0.0,
        0.99,
        read_only=True,
    ),
    Param(
        "head_prefill_draft",
        False,
        "prefill hiding: with the round's event tokens in hand before the clip's prefill, the head's first "
        "draft (from them alone) rides in that prefill",
        read_only=True,
    ),
    Param(
        "head_branches",
        HEAD_BRANCHES,
        "greedy rules: at the draft head's first N unsure tokens (probability < 0.99) its second choice "
        "also rides in the verify forward, followed by a copy of the draft's rest (a draft tree; exact "
        "as ever); 0 = plain chains",
        0,
        16,
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
    frame_buffer: int
    use_drafts: tuple[int, ...]
    max_pending: int
    follow_clock_offset: bool
    publish_overlay: bool
    seed: int
    draft_head: str
    head_gamma: int
    head_gamma_max: int
    head_stop_below: float
    head_prefill_draft: bool
    head_branches: int

    @staticmethod
    def from_params(p: dict[str, Any]) -> "VerifierConfig":
        choice(p["use_drafts"], list(USE_DRAFTS), "use_drafts")
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
            use_drafts=USE_DRAFTS[p["use_drafts"]],
            max_pending=p["max_pending_rounds"],
            follow_clock_offset=bool(p["follow_clock_offset"]),
            publish_overlay=bool(p["publish_overlay"]),
            seed=p["seed"],
            draft_head=str(p["draft_head"]).strip(),
            head_gamma=p["head_gamma"],
            head_gamma_max=max(p["head_gamma"], p["head_gamma_max"]),
            head_stop_below=check_stop_below(float(p["head_stop_below"]), "head_stop_below"),
            head_prefill_draft=bool(p["head_prefill_draft"]),
            head_branches=p["head_branches"],
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
        ros_args: Sequence[str] = (),
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
            ros_args=ros_args,
        )

    def build(self) -> None:
        self.offsets = StreamOffsets({"image": self.cfg.frame_offset_ns})
        # the drafter measures the offset; this stage applies its confident value from the next round on
        self.follower = OffsetFollower(self.cfg.frame_offset_ns, pinned=not self.cfg.follow_clock_offset)
        self._offset_input = ClockOffsetInput(self, self.follower, self.offsets)
        self.offsets_in = self._offset_input.stats
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
            reset_what="frames and rounds",
            on_jump=self._reset_locked,
        )
        self.images_in = self._image.stats
        self._frames = self._image.ingest.frames
        self._pending_prompt: float | None = None
        self.inputs: OrderedDict[int, RoundInputs] = OrderedDict()  # the last rounds' clips (under self.lock)
        self.drafts_in = InputStats(self, "drafts")
        # drafts as ids, or through their text from a stage of another vocabulary (draft_ids)
        self.drafts_port = TextPort(
            self.model, "drafts", "target", self.cfg.draft_ids, self.get_logger().error, self.get_logger().info
        )
        self.drafts_foreign = self.drafts_port.guard
        # whether the rounds the drafts name agree with this verifier's round parameters (under self.lock)
        self.schedule_check = ScheduleCheck(self.cfg.schedule)
        self._schedule_logged: dict[str, float] = {}

        from sensor_msgs.msg import Image
        from std_msgs.msg import String
        from visualization_msgs.msg import Marker

        from cascade_sd_ros.msg import ClockOffset, Commit, DraftTokens, VerifiedCaption

        inputs = MutuallyExclusiveCallbackGroup()
        self.pub_commit = self.create_lifecycle_publisher(Commit, TOPIC_COMMIT, ROUND_QOS)
        self.pub_caption = self.create_lifecycle_publisher(VerifiedCaption, TOPIC_CAPTION, CAPTION_QOS)
        self.pub_marker = self.create_lifecycle_publisher(Marker, TOPIC_MARKER, OUTPUT_QOS)
        self.pub_overlay = self.create_lifecycle_publisher(Image, TOPIC_OVERLAY, OUTPUT_QOS)
        if self.cfg.follow_clock_offset:
            # first: a clock offset heard with a frame in one wait set is applied before the frame opens
            # a round (rclpy takes ready subscriptions in the order they were made)
            self.create_subscription(
                ClockOffset, TOPIC_CLOCK_OFFSET, self._offset_input, LATCHED_QOS, callback_group=inputs
            )
        self.create_subscription(Image, TOPIC_IMAGE, self._image, self.sensor_qos, callback_group=inputs)
        self.create_subscription(DraftTokens, TOPIC_DRAFTS_DRAFTER, self._on_draft, ROUND_QOS, callback_group=inputs)
        self.create_subscription(DraftTokens, TOPIC_DRAFTS_REFINER, self._on_draft, ROUND_QOS, callback_group=inputs)
        self.create_subscription(String, TOPIC_PROMPT, self._on_prompt, PROMPT_QOS, callback_group=inputs)
        # armed by a prompt only (see prompted): an idle timer still wakes the executor, whose every
        # spin rebuilds its wait set in Python on the core and GIL the target's passes need
        self._prompt_timer = self.create_timer(
            PROMPT_POLL_S, self._check_prompt, callback_group=MutuallyExclusiveCallbackGroup()
        )
        self._prompt_timer.cancel()
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
        spec.adapter.stop_below = self.cfg.head_stop_below
        self.head_status = f"on ({spec.folder})"
        self.get_logger().info(
            f"draft head {spec.folder} on: target states + event features of encoder {spec.event_encoder or '(none)'}"
        )
        return HeadSource(
            spec.adapter,
            gamma=self.cfg.head_gamma,
            gamma_max=self.cfg.head_gamma_max,
            prefill_draft=self.cfg.head_prefill_draft,
            # trees are verified greedily: under sampling rules the head drafts chains
            branches=self.cfg.head_branches if self.cfg.rules.verifier.kind == "greedy" else 0,
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
        """After an inactive spell: frames and rounds start again; the clock offset stays (the clocks did
        not change while the node was inactive)."""
        with self.lock:
            self._image.ingest.reset()
            self.follower.reset_rounds()
            self._stale.reset()
            self.schedule_check.reset()
            self.stage.reset()
            self._pending_prompt = None
            self._prompt_timer.cancel()

    def _reset_locked(self) -> None:
        """After a backward time jump (the frames and round times are already reset): unlike the
        refiner, the verifier also adopts the next frame's size."""
        self._image.ingest.shape.reset()
        self.follower.reset_rounds()
        self._stale.reset()
        self.schedule_check.reset()
        self.stage.reset()

    # ------------------------------------------------------------------ worker side
    def _round_end(self, round_id: int, t_ns: int) -> int:
        """The round's clip end on the RGB clock, through the offset the round opened with."""
        return t_ns - self.follower.round_offset(round_id).at(t_ns)

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
            caption_msg(u, text, self.cfg.rules, self.cfg.frame_id, self.follower.round_offset(u.round_id))
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
        applied = self.follower.current()
        stage = self.stage.snapshot()
        with self.lock:
            check = self.schedule_check
            schedule = (check.off_schedule, check.id_mismatches, [f.text for f in check.found.values()])
        values: dict[str, object] = {
            "backend": self.model.backend.name,
            "backend_reason": self.model.backend.reason,
            **self.images_in.values(),
            **self.offsets_in.values(),
            **self.drafts_in.values(),
            **{
                k: stage[k]
                for k in (
                    "rounds_done",
                    "rounds_degraded",
                    "rounds_dropped",
                    "rounds_pending",
                    "prefills_with_draft",
                    "prefills_with_tree",
                    "verifies_with_tree",
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
    return spin_node(lambda argv: VideoVerifier(ros_args=argv), args)


if __name__ == "__main__":
    raise SystemExit(main())
