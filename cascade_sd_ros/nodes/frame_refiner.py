"""``frame_refiner``: checks the drafter's tokens against the RGB frame nearest ``T`` and extends them.

Subscribes ``image`` (sensor_msgs/Image), ``drafter/drafts`` (DraftTokens stage 0), ``commit``,
``prompt``, ``clock_offset`` (the drafter's measured event-to-RGB offset, latched: followed from the
next round on unless ``follow_clock_offset:=false``); publishes ``refiner/drafts`` (DraftTokens
stage 1) and ``/diagnostics``. Joins rounds by
id and stamp as they are heard of (a stage-0 draft or a commit). No frame within ``slop`` of ``T``
(after ``frame_offset``) by ``max_wait``: stage-0 drafts pass through flagged degraded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.context import Context
from rclpy.parameter import Parameter

from cascade_sd_ros.core.align import (
    FrameIngest,
    OffsetFollower,
    StaleRoundFilter,
    StreamOffsets,
    nearest_frame,
)
from cascade_sd_ros.core.modes import MODES, ModeRules, mode_rules
from cascade_sd_ros.core.names import (
    NODE_OF_STAGE,
    TOPIC_CLOCK_OFFSET,
    TOPIC_COMMIT,
    TOPIC_DRAFTS_DRAFTER,
    TOPIC_DRAFTS_REFINER,
    TOPIC_IMAGE,
    TOPIC_PROMPT,
)
from cascade_sd_ros.core.rounds import Draft, RoundRecord
from cascade_sd_ros.core.stage_model import StageModel
from cascade_sd_ros.core.stages import RefinerStage, StageInput
from cascade_sd_ros.nodes.clock_offset import ClockOffsetInput
from cascade_sd_ros.nodes.common import (
    COMMON_PARAMS,
    CONTROLLED_PARAMS,
    FOLLOW_CLOCK_OFFSET_PARAM,
    FRAME_OFFSET_PARAM,
    GAMMA_MAX_PARAM,
    LATCHED_QOS,
    MAX_WAIT_PARAM,
    PROMPT_QOS,
    ROUND_QOS,
    SLOP_PARAM,
    STAGE_LIVENESS_PARAM,
    ImageInput,
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
)
from cascade_sd_ros.ros.outputs import DraftMessageError, draft_msg
from cascade_sd_ros.ros.stamps import StampError, seconds_to_ns, stamp_to_ns
from cascade_sd_ros.ros.text_port import TextPort

MODE_PARAMS: tuple[Param, ...] = (
    Param("mode", "lossless-greedy", f"decoding mode: {', '.join(MODES)}"),
    Param("temperature", 1.0, "lossless-sample: sampling temperature of the verifier", 0.01, 10.0),
    Param("tau", 0.1, "pyramid: fuzzy acceptance threshold (JSD, bits)", 0.0, 1.0),
    Param("alpha", 0.5, "cascade: deferral threshold", 0.0, 1.0),
    Param("deferral", "chow", "cascade: deferral rule (chow, diff, opt)"),
)

PARAMS: tuple[Param, ...] = (
    Param(
        "model", "", "refiner model: a local HF folder, or tiny:SEED; empty = the shipped zoo's refiner", read_only=True
    ),
    *COMMON_PARAMS,
    *MODE_PARAMS,
    Param("gamma", 6, "[tokens] refiner draft length (kept drafter tokens + its own) (live)", 1, 64, live=True),
    GAMMA_MAX_PARAM,
    *CONTROLLED_PARAMS,
    Param("lookahead", 2, "[drafts] proposals the refiner may run ahead of the last commit", 1, 16),
    SLOP_PARAM,
    MAX_WAIT_PARAM,
    Param("upstream_wait", 0.02, "[s] wait at most this long for a drafter draft before drafting alone", 0.0, 10.0),
    STAGE_LIVENESS_PARAM,
    FRAME_OFFSET_PARAM,
    Param("frame_buffer", 120, "[frames] bound of the frame buffer (oldest dropped, counted)", 2, 100_000),
    FOLLOW_CLOCK_OFFSET_PARAM,
)


def rules_from_params(p: dict[str, Any]) -> ModeRules:
    choice(p["mode"], list(MODES), "mode")
    choice(p["deferral"], ["chow", "diff", "opt"], "deferral")
    return mode_rules(p["mode"], temperature=p["temperature"], tau=p["tau"], alpha=p["alpha"], deferral=p["deferral"])


@dataclass(frozen=True)
class RefinerConfig(StageConfig):
    rules: ModeRules
    gamma: int
    gamma_max: int
    lookahead: int
    slop_ns: int
    max_wait_s: float
    upstream_wait_s: float
    liveness_s: float
    frame_offset_ns: int
    frame_buffer: int
    follow_clock_offset: bool

    @staticmethod
    def from_params(p: dict[str, Any]) -> "RefinerConfig":
        return RefinerConfig(
            **stage_config_fields(p, "refiner"),
            rules=rules_from_params(p),
            gamma=p["gamma"],
            gamma_max=p["gamma_max"],
            lookahead=p["lookahead"],
            slop_ns=seconds_to_ns(p["slop"], "slop"),
            max_wait_s=float(p["max_wait"]),
            upstream_wait_s=float(p["upstream_wait"]),
            liveness_s=float(p["stage_liveness"]),
            frame_offset_ns=seconds_to_ns(p["frame_offset"], "frame_offset"),
            frame_buffer=p["frame_buffer"],
            follow_clock_offset=bool(p["follow_clock_offset"]),
        )


class FrameRefiner(StageNode[RefinerConfig]):
    stage: RefinerStage

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
            NODE_OF_STAGE["refiner"],
            PARAMS,
            RefinerConfig.from_params,
            "refiner",
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
        # join each period round as soon as its frame is in: no need to hear of it from the drafter
        # (the same rule as the verifier's, so both name the round alike)
        self._image = ImageInput(
            self,
            FrameIngest(
                offsets=self.offsets,
                buffer_size=self.cfg.frame_buffer,
                jump_tolerance_ns=self.cfg.jump_tolerance_ns,
                schedule=self.cfg.schedule,
                slop_ns=self.cfg.slop_ns,
            ),
            reset_what="frames and rounds",
            on_jump=self._reset_locked,
        )
        self._stale = StaleRoundFilter(self.cfg.jump_tolerance_ns)
        self.images_in = self._image.stats
        self._frames = self._image.ingest.frames
        self.drafts_in = InputStats(self, "drafts")
        self.commits_in = InputStats(self, "commits")
        log = self.get_logger()
        self.drafts_port = TextPort(self.model, "drafts", "refiner", self.cfg.draft_ids, log.error, log.info)
        self.commits_port = TextPort(self.model, "commits", "refiner", self.cfg.draft_ids, log.error, log.info)
        self.drafts_foreign, self.commits_foreign = self.drafts_port.guard, self.commits_port.guard
        self.drafts_unplaced = 0  # drafter drafts for a round whose commits came here as text (see _on_draft)

        from sensor_msgs.msg import Image
        from std_msgs.msg import String

        from cascade_sd_ros.msg import ClockOffset, Commit, DraftTokens

        inputs = MutuallyExclusiveCallbackGroup()
        self.pub_drafts = self.create_lifecycle_publisher(DraftTokens, TOPIC_DRAFTS_REFINER, ROUND_QOS)
        if self.cfg.follow_clock_offset:  # first, as in the verifier: applied before a frame in the same wait set
            self.create_subscription(
                ClockOffset, TOPIC_CLOCK_OFFSET, self._offset_input, LATCHED_QOS, callback_group=inputs
            )
        self.create_subscription(Image, TOPIC_IMAGE, self._image, self.sensor_qos, callback_group=inputs)
        self.create_subscription(DraftTokens, TOPIC_DRAFTS_DRAFTER, self._on_draft, ROUND_QOS, callback_group=inputs)
        self.create_subscription(Commit, TOPIC_COMMIT, self._on_commit, ROUND_QOS, callback_group=inputs)
        self.create_subscription(String, TOPIC_PROMPT, self._on_prompt, PROMPT_QOS, callback_group=inputs)
        self.stage = RefinerStage(
            self.model,
            self._resolve,
            self.worker_output(self._publish),
            rules=self.cfg.rules,
            gamma=self.cfg.gamma,
            gamma_max=self.cfg.gamma_max,
            lookahead=self.cfg.lookahead,
            max_new_tokens=self.cfg.max_new_tokens,
            max_wait_s=self.cfg.max_wait_s,
            upstream_wait_s=self.cfg.upstream_wait_s,
            liveness_s=self.cfg.liveness_s,
            question=self.cfg.prompt,
        )
        control_acceptance(self, self.stage, self.model.adapter.vocab_size)

    def apply_live(self, name: str, value: Any) -> str | None:
        if name in ("gamma", "gamma_max"):
            return apply_draft_length(self, self.stage, name, value)
        return super().apply_live(name, value)

    # ------------------------------------------------------------------ callbacks
    def _on_draft(self, msg: Any) -> None:
        self.drafts_in.tick()
        try:
            round_id = int(msg.round_id)
            if self.commits_port.reads_text(round_id):
                # this refiner's vocabulary is not the target's: a draft placed in the target's tokens has
                # no place in its own ids, so it drafts alone
                self.drafts_unplaced += 1
                return
            rec = self.stage.record(round_id)
            draft = self.drafts_port.incoming_draft(
                msg, "drafter", lambda: rec.committed if rec is not None else [], expected_stage=0
            )
            if draft is None:
                return  # ids of another vocabulary without text, or a text draft gone stale: never checked
            t_ns = stamp_to_ns(msg.header.stamp)
            if not self._stale.admit("drafter", t_ns, self._image.newest_ref_ns()):
                return  # a round of the timeline before a jump
            self.stage.hear_draft(int(msg.round_id), t_ns, draft)
        except (StampError, DraftMessageError, ValueError) as exc:
            self.drafts_in.bad(str(exc))

    def _on_commit(self, msg: Any) -> None:
        self.commits_in.tick()
        try:
            ids = self.commits_port.commit_ids(msg)
            if ids is None:
                return  # a prefix in another vocabulary without text: never drafted on
            t_ns = stamp_to_ns(msg.header.stamp)
            if not self._stale.admit("verifier", t_ns, self._image.newest_ref_ns()):
                return
            self.stage.hear_commit(
                int(msg.round_id), t_ns, int(msg.commit_seq), ids, bool(msg.final), commit_verdict(msg)
            )
        except (StampError, ValueError) as exc:
            self.commits_in.bad(str(exc))

    def reset_inputs(self) -> None:
        with self.lock:
            self._image.ingest.reset()
            self._reset_locked()

    def _reset_locked(self) -> None:
        self.follower.reset_rounds()
        self._stale.reset()
        self.stage.reset()

    # ------------------------------------------------------------------ worker side
    def _resolve(self, rec: RoundRecord, given_up: bool) -> StageInput | None:
        # the offset the round opened with: a new one moves later rounds, never this round's frame
        target = rec.t_ns - self.follower.round_offset(rec.round_id).at(rec.t_ns)
        with self.lock:
            found = nearest_frame(self._frames, target, self.cfg.slop_ns)
            newest = self._frames.newest_stamp()
            if found is not None:
                self._frames.mark_consumed(target - self.cfg.slop_ns)
        if found is not None:
            t, rgb = found
            return StageInput(rgb, "", skew_ns=t - target)
        # a frame past the window means the one we need will not come (dropped, or a gap)
        if given_up or (newest is not None and newest > target + self.cfg.slop_ns):
            why = "no RGB frames received" if newest is None else "no RGB frame within slop of T"
            return StageInput(None, why)
        return None

    def _publish(self, round_id: int, t_ns: int, draft: Draft) -> None:
        rec = self.stage.record(round_id)
        out = self.commits_port.outgoing(round_id, rec.spec if rec is not None else [], draft)
        if out is not None:  # None: no text for a target of another vocabulary (counted)
            self.pub_drafts.publish(draft_msg(round_id, t_ns, self.cfg.frame_id, draft, self.model.vocab, *out))

    def publish_diagnostics(self) -> None:
        """One DiagnosticStatus now (the 1 s timer's work): inputs, the Stage's counters, a level."""
        stage = self.stage.snapshot()
        degraded = stage["inputs_missing"]  # rounds whose frame never came within slop
        applied = self.follower.current()
        values: dict[str, object] = {
            "backend": self.model.backend.name,
            "backend_reason": self.model.backend.reason,
            **self.images_in.values(),
            **self.drafts_in.values(),
            **self.commits_in.values(),
            **self.offsets_in.values(),
            "frame_offset_applied_ms": applied.offset_ns / 1e6,
            "frame_offset_source": applied.source,
            "rounds_open": stage["rounds_open"],
            "rounds_degraded": degraded,
            "frame_skew_ms": stage["frame_skew_ms"],
            "resets": stage["resets"],
            "time_jumps": self._image.ingest.jump.jumps,
            "messages_stale": self._stale.stale,
            "drafts_published": stage["drafts_published"],
            "worker_errors": stage["worker_errors"],
            **self.drafts_port.values(),
            **self.commits_port.values(),
            "drafts_unplaced": self.drafts_unplaced,
            "mode": self.cfg.rules.name,
        }
        level, message = 0, "refining"
        if self.images_in.received == 0:
            level, message = 1, "degraded: no RGB frames received; passing drafter drafts through"
        elif degraded:
            level, message = 1, f"degraded: {degraded} round(s) without a frame within slop"
        if stage["worker_errors"]:
            level, message = 2, f"worker errors: {self.stage.last_error}"
        foreign = self.commits_foreign.status() or self.drafts_foreign.status()
        if foreign is not None:
            level, message = 2, foreign
        self.publish_status(level, message, values)


def main(args: list[str] | None = None) -> int:
    return spin_node(lambda argv: FrameRefiner(ros_args=argv), args)


if __name__ == "__main__":
    raise SystemExit(main())
