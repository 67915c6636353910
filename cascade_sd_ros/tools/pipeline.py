"""The three stage nodes composed in one process: the one way through the data that the demo, the
replay and the node tests share.

``build_pipeline(config, context)`` loads each stage's model once, makes the nodes (with parameters
as overrides, exactly what a launch file would set) and a caption collector, and adds them to one
executor (a MultiThreadedExecutor, or rclpy's EventsExecutor: :attr:`PipelineConfig.executor`).
``start()`` spins it on a background thread; a caller that spins itself (the replay) just uses
``executor``. A :class:`SensorPlayer` publishes synthetic scenes' EventPackets and Images with their
own stamps, over the same DDS topics a camera driver would use.
"""

from __future__ import annotations

import io
import math
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import rclpy
from rclpy.context import Context
from rclpy.duration import Duration
from rclpy.executors import Executor, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from cascade_sd_ros.core.cooperation import CooperationPlan
from cascade_sd_ros.core.names import (
    NODE_OF_STAGE,
    ROLE_OF_STAGE,
    STAGES,
    TOPIC_CAPTION,
    TOPIC_CLOCK_OFFSET,
    TOPIC_EVENTS,
    TOPIC_IMAGE,
)
from cascade_sd_ros.core.stage_model import StageModel, default_stage_source, load_stage_model
from cascade_sd_ros.core.stages import RoundSchedule
from cascade_sd_ros.nodes.common import CAPTION_QOS, GIL_SWITCH_S
from cascade_sd_ros.nodes.overrides import check_pipeline_params, declared_by_node

# The player publishes like a bag player: reliable and deep, so the stages (subscribed with
# sensor_reliability=reliable, see SENSOR_PARAMS) get every message of a burst.
PLAYER_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=2000,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)
SENSOR_PARAMS: dict[str, Any] = {"sensor_reliability": "reliable", "sensor_qos_depth": 2000}

EXECUTORS: tuple[str, ...] = ("multi-threaded", "events")


@dataclass(frozen=True)
class PipelineConfig:
    """What to run. ``params`` hold parameter overrides: key "common" for every stage node, or a
    node name (event_drafter, frame_refiner, video_verifier) for one."""

    models: Mapping[str, str] = field(default_factory=dict)  # role (target/refiner/drafter) -> source
    stages: Sequence[str] = STAGES
    device: str = "cpu"
    dtype: str = "auto"  # bfloat16 on CUDA, float32 elsewhere
    params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    namespace: str = ""
    use_sim_time: bool = False
    torch_threads: int | None = 1  # the stages share this process's cores
    # "events": rclpy's experimental EventsExecutor, which waits and dispatches in C++. The Python
    # MultiThreadedExecutor rebuilds its wait set on every spin; at ~250 sensor messages/s that Python
    # holds the GIL the stages' forward passes need (demo round latency 1.8-2.6 s vs 0.4 s with events).
    # Not the default: under pytest's output capture the test process segfaulted 2 runs in 4 with it.
    executor: str = "multi-threaded"
    executor_threads: int = 6
    # torch releases the GIL inside every op and must win it back after; with the executor's Python
    # busy on sensor traffic each win-back can wait a whole switch interval (5 ms by default), which
    # turned the 32-layer target's 21 ms prefill into 2.4 s in the one-process demo (0.4 s at 0.5 ms)
    gil_switch_s: float | None = GIL_SWITCH_S
    collect_captions: bool = True

    def __post_init__(self) -> None:
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown or not self.stages:
            raise ValueError(f"stages must be a non-empty subset of {STAGES}, got {list(self.stages)}")
        bad = [k for k in self.params if k != "common" and k not in NODE_OF_STAGE.values()]
        if bad:
            raise ValueError(f"params keys must be 'common' or node names {list(NODE_OF_STAGE.values())}, got {bad}")
        check_pipeline_params(self.params)  # a parameter no node would take: said now, not ignored
        if self.executor not in EXECUTORS:
            raise ValueError(f"executor must be one of {EXECUTORS}, got {self.executor!r}")
        if self.executor == "events" and self.use_sim_time:
            # its timers run on their own clock, not /clock: a replay's round timers never fired
            raise ValueError("use_sim_time needs executor='multi-threaded' (the EventsExecutor's timers ignore /clock)")
        bad_roles = [r for r in self.models if r not in ROLE_OF_STAGE.values()]
        if bad_roles:
            raise ValueError(f"models keys must be roles {list(ROLE_OF_STAGE.values())}, got {bad_roles}")

    def source(self, role: str) -> str:
        return self.models.get(role) or default_stage_source(role)

    def image_subscribers(self) -> int:
        """How many of the stages subscribe to the image topic: refiner, verifier, and the drafter
        unless its clock offset is pinned (``estimate_offset:=false``; measured by default)."""
        merged = {**self.params.get("common", {}), **self.params.get(NODE_OF_STAGE["drafter"], {})}
        estimates = "drafter" in self.stages and bool(merged.get("estimate_offset", True))
        return sum(s in self.stages for s in ("refiner", "verifier")) + int(estimates)

    def event_subscribers(self) -> int:
        """How many subscribe to the raw events: the drafter alone (it measures the clock offset too)."""
        return int("drafter" in self.stages)

    def overrides(self, stage: str) -> list[Parameter]:
        """The stage node's overrides: the common ones it declares (the others are other stages'),
        then its own."""
        node = NODE_OF_STAGE[stage]
        declared = declared_by_node()[node]
        common = {k: v for k, v in self.params.get("common", {}).items() if k in declared}
        merged = {**common, **self.params.get(node, {})}
        merged["model"] = self.source(ROLE_OF_STAGE[stage])
        merged.setdefault("device", self.device)
        merged.setdefault("dtype", self.dtype)
        out = [Parameter(k, value=v) for k, v in merged.items()]
        out.append(Parameter("use_sim_time", value=self.use_sim_time))
        return out


class CaptionCollector(Node):
    """Keeps every VerifiedCaption heard, final ones by round id."""

    def __init__(self, *, context: Context | None = None, namespace: str | None = None) -> None:
        super().__init__("caption_collector", context=context, namespace=namespace)
        from cascade_sd_ros.msg import VerifiedCaption

        self._cond = threading.Condition()
        self.finals: dict[int, Any] = {}
        self.growing = 0
        # per round: verifications that rejected part of the draft they checked (from the per-stage
        # counts' growth between successive updates, one per commit), for the consecutive-accept rate
        self.rejections: dict[int, int] = {}
        self._counted: dict[int, tuple[int, int]] = {}  # round -> (drafted, accepted) so far
        self.create_subscription(VerifiedCaption, TOPIC_CAPTION, self._on_caption, CAPTION_QOS)

    def _on_caption(self, msg: Any) -> None:
        with self._cond:
            rid = int(msg.round_id)
            drafted, accepted = sum(msg.drafted_per_stage), sum(msg.accepted_per_stage)
            before = self._counted.get(rid, (0, 0))
            if drafted - before[0] > accepted - before[1]:
                self.rejections[rid] = self.rejections.get(rid, 0) + 1
            self._counted[rid] = (drafted, accepted)
            if msg.final:
                self.finals[int(msg.round_id)] = msg
            else:
                self.growing += 1
            self._cond.notify_all()

    def wait_final(self, round_id: int | None = None, count: int | None = None, timeout_s: float = 60.0) -> bool:
        """Wait for one round's final caption, or for ``count`` finals in all."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                done = (round_id is not None and round_id in self.finals) or (
                    count is not None and len(self.finals) >= count
                )
                left = deadline - time.monotonic()
                if done or left <= 0:
                    return done
                self._cond.wait(min(left, 0.1))


class SensorPlayer(Node):
    """Publishes a scene's EventPackets and Images in capture order, with their own stamps."""

    def __init__(self, *, context: Context | None = None, namespace: str | None = None, qos: Any = PLAYER_QOS) -> None:
        super().__init__("sensor_player", context=context, namespace=namespace)
        from event_camera_msgs.msg import EventPacket
        from sensor_msgs.msg import Image

        self.pub_events = self.create_publisher(EventPacket, TOPIC_EVENTS, qos)
        self.pub_image = self.create_publisher(Image, TOPIC_IMAGE, qos)
        self.published = 0

    def wait_matched(self, image_subscribers: int, event_subscribers: int, timeout_s: float = 10.0) -> bool:
        """Wait until the stages' subscriptions have matched (discovery is asynchronous)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.matched(image_subscribers, event_subscribers):
                return True
            time.sleep(0.02)
        return False

    def matched(self, image_subscribers: int, event_subscribers: int) -> bool:
        """Whether that many subscriptions have matched the image and event publishers now."""
        return (
            self.pub_image.get_subscription_count() >= image_subscribers
            and self.pub_events.get_subscription_count() >= event_subscribers
        )

    def play(
        self,
        scene: Any,
        *,
        event_offset_ns: int,
        skip_frames: bool = False,
        skip_events: bool = False,
        rate: float | None = None,
        pause_every: int = 50,
        pause_s: float = 0.002,
    ) -> None:
        """Publish ``scene`` (a :class:`~cascade_sd_ros.core.synth.stream.SceneData`).

        Messages go out in world-time order (event stamps minus the event clock offset). ``rate``
        paces them like the sensors would (1.0: real time, from the scene's first message); None
        sends them as fast as the subscribers' queues allow (a short pause every ``pause_every``).
        """
        if rate is not None and not rate > 0:
            raise ValueError(f"rate must be > 0 (or None for as fast as possible), got {rate}")
        from cascade_sd_ros.ros.image import numpy_to_image

        items: list[tuple[int, int, Any]] = []
        if not skip_events:
            items += [(p.stamp_ns - event_offset_ns, 0, p) for p in scene.packets]
        if not skip_frames:
            items += [(f.stamp_ns, 1, f) for f in scene.frames]
        items.sort(key=lambda x: (x[0], x[1]))
        start_wall = time.monotonic()
        for i, (t_world, kind, item) in enumerate(items):
            if rate is not None:
                due = start_wall + (t_world - items[0][0]) / 1e9 / rate
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            if kind == 0:
                self.pub_events.publish(packet_msg(item))
            else:
                img = numpy_to_image(item.image, "rgb8")
                ns_to_stamp_into(item.stamp_ns, img.header.stamp)
                img.header.frame_id = "camera"
                self.pub_image.publish(img)
            self.published += 1
            if rate is None and pause_every and i % pause_every == pause_every - 1:
                time.sleep(pause_s)


class OffsetRelay(Node):
    """Tells a verifier with no drafter of its own (the demo's verifier alone) the clock offset the
    cascade's round used, on its ``clock_offset`` topic, as the cascade's drafter told the cascade's:
    a reference pass then picks each round's frames with the same offset (what "equal captions"
    compares needs)."""

    def __init__(self, *, context: Context | None = None, namespace: str | None = None) -> None:
        super().__init__("offset_relay", context=context, namespace=namespace)
        from cascade_sd_ros.msg import ClockOffset
        from cascade_sd_ros.nodes.common import LATCHED_QOS

        self.pub = self.create_publisher(ClockOffset, TOPIC_CLOCK_OFFSET, LATCHED_QOS)

    def matched(self) -> bool:
        return self.pub.get_subscription_count() >= 1

    def relay(self, offset_ms: float, source: str, stamp_ns: int, timeout_s: float = 5.0) -> bool:
        """Publish the offset a round used (``offset_ms`` at ``stamp_ns``, from ``source``) and wait until
        the subscribers have it (acknowledged), so a frame published next cannot overtake it. An
        ``initial`` offset (nothing measured yet) is not relayed: the follower keeps its own, the same."""
        if source == "initial" or not math.isfinite(offset_ms):
            return True
        from cascade_sd_ros.core.align import AppliedOffset
        from cascade_sd_ros.ros.outputs import clock_offset_msg

        applied = AppliedOffset(int(round(offset_ms * 1e6)), 0.0, int(stamp_ns), 0.0, True, source)
        self.pub.publish(clock_offset_msg(applied, stamp_ns, "camera"))
        return bool(self.pub.wait_for_all_acked(Duration(seconds=timeout_s)))


def ns_to_stamp_into(t_ns: int, stamp: Any) -> None:
    from cascade_sd_ros.ros.stamps import ns_to_stamp

    ns_to_stamp(t_ns, stamp)


def packet_msg(p: Any) -> Any:
    """An EventPacket message from :class:`~cascade_sd_ros.core.synth.packets.EventPacketData`."""
    from event_camera_msgs.msg import EventPacket

    msg = EventPacket()
    ns_to_stamp_into(p.stamp_ns, msg.header.stamp)
    msg.header.frame_id = "camera"
    msg.height, msg.width = int(p.height), int(p.width)
    msg.seq = int(p.seq)
    msg.time_base = int(p.time_base)
    msg.encoding = p.encoding
    msg.is_bigendian = False
    msg.events = bytes(p.payload)
    return msg


class Pipeline:
    """The running composition: stage nodes, caption collector, executor (see module docstring)."""

    def __init__(
        self,
        config: PipelineConfig,
        context: Context,
        models: Mapping[str, StageModel],
        nodes: dict[str, Node],
        collector: CaptionCollector | None,
        executor: Executor,
    ) -> None:
        self.config = config
        self.context = context
        self.models = dict(models)
        self.stage_nodes = nodes
        self.collector = collector
        self.executor = executor
        self.nodes: list[Node] = list(nodes.values())
        self._spin: threading.Thread | None = None
        self._switch_before: float | None = None
        self._closing = threading.Event()
        verifier = nodes.get("verifier")
        self.lookahead_ns = (
            int(
                1e9
                * max(
                    float(config.params.get("video_verifier", {}).get("max_wait", 0.5)),
                    float(config.params.get("video_verifier", {}).get("draft_wait", 0.1)),
                )
            )
            if verifier is not None
            else 0
        )
        self.info: dict[str, Any] = {
            "stages": list(config.stages),
            "models": {ROLE_OF_STAGE[s]: config.source(ROLE_OF_STAGE[s]) for s in config.stages},
            "device": config.device,
            "dtype": config.dtype,
            "mode": verifier.cfg.rules.name if verifier is not None else None,
        }

    @property
    def verifier(self) -> Any:
        return self.stage_nodes.get("verifier")

    def start(self) -> None:
        if self._spin is not None:
            raise RuntimeError("pipeline already started")
        if self.config.gil_switch_s is not None:
            self._switch_before = sys.getswitchinterval()
            sys.setswitchinterval(min(self._switch_before, self.config.gil_switch_s))
        self._spin = threading.Thread(target=self._run, name="pipeline-executor", daemon=True)
        self._spin.start()

    def _run(self) -> None:
        # One cycle at a time: a node destroyed mid-run (stop_stage) can still sit in the wait set
        # being built, and rclpy then raises InvalidHandle once; the executor must outlive that.
        from rclpy.exceptions import InvalidHandle

        while self.context.ok() and not self._closing.is_set():
            try:
                self.executor.spin_once(timeout_sec=0.1)
            except InvalidHandle:
                continue
            except Exception:  # noqa: BLE001 -- shutdown races end the spin; nothing to recover
                if self.context.ok() and not self._closing.is_set():
                    raise
                return

    def close(self) -> None:
        """Stop the workers, the executor and destroy the nodes (idempotent)."""
        everyone = [*self.nodes, *([self.collector] if self.collector is not None else [])]
        for node in self.nodes:
            close = getattr(node, "close", None)
            if close is not None:
                close()
        self._closing.set()
        for node in everyone:  # first: no new callbacks get scheduled for nodes about to go
            self.executor.remove_node(node)
        # rclpy's MultiThreadedExecutor.shutdown destroys its guard condition before its pool drains,
        # and a callback still in flight then fails on it; let those finish first
        time.sleep(0.2)
        self.executor.shutdown(timeout_sec=5.0)
        if self._spin is not None:
            self._spin.join(timeout=5.0)
            self._spin = None
        if self._switch_before is not None:
            sys.setswitchinterval(self._switch_before)
            self._switch_before = None
        for node in everyone:
            node.destroy_node()
        self.nodes = []
        self.collector = None

    def stop(self) -> None:
        self.close()

    def stop_stage(self, stage: str) -> None:
        """Kill one stage mid-run (its worker, subscriptions and publishers): a failure drill."""
        node = self.stage_nodes.pop(stage, None)
        if node is None:
            raise ValueError(f"stage {stage!r} is not running; running: {sorted(self.stage_nodes)}")
        node.close()
        self.executor.remove_node(node)
        # let the spin thread build one wait set without the node before its handles go
        time.sleep(0.2)
        node.destroy_node()
        self.nodes = [n for n in self.nodes if n is not node]


def zoo_meta(target_source: str) -> dict[str, Any]:
    """A zoo target folder's zoo.json: data geometry and question ({} for tiny models, sources that
    are no folder, and checkpoints without one). ValueError names a zoo.json that is not valid."""
    if target_source.startswith("tiny:"):
        return {}
    from pathlib import Path

    from cascade_sd_ros.core.zoo.load import read_zoo_meta

    folder = Path(target_source)
    return read_zoo_meta(folder) if folder.is_dir() else {}


def trained_params(meta: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Node parameters from a zoo.json, so the models see what they learnt from: the verifier's clip
    length and frames, the drafter's event window and the question ({} when it names none)."""
    geometry = dict(meta.get("geometry") or {})
    out: dict[str, dict[str, Any]] = {}
    verifier = {
        name: geometry[key]
        for name, key in (("clip_duration", "clip_duration_s"), ("frames", "num_frames"))
        if geometry.get(key) is not None
    }
    if verifier:
        out["video_verifier"] = verifier
    if geometry.get("event_window_s") is not None:
        out["event_drafter"] = {"event_window": float(geometry["event_window_s"])}
    if meta.get("question"):
        out["common"] = {"prompt": str(meta["question"])}
    return out


def draft_ids_of(config: PipelineConfig) -> dict[str, str]:
    """Each upstream role's ``draft_ids`` (its node's parameter, else the common one, else auto); a
    verifier told same-vocab makes every stage same-vocab (it would set text drafts aside)."""

    def param(stage: str) -> str:
        merged = {**config.params.get("common", {}), **config.params.get(NODE_OF_STAGE[stage], {})}
        return str(merged.get("draft_ids", "auto"))

    verifier = param("verifier")
    return {
        ROLE_OF_STAGE[s]: ("same-vocab" if verifier == "same-vocab" else param(s))
        for s in config.stages
        if s != "verifier"
    }


def check_source_vocabularies(config: PipelineConfig) -> CooperationPlan:
    """Before any weights load: can the stages cooperate (:func:`~cascade_sd_ros.core.cooperation.plan_cooperation`)?
    A :class:`~cascade_sd_ros.core.stage_model.VocabularyMismatch` in one line naming the stages, their
    vocabularies and what to set when not; else how each upstream stage's drafts reach the target."""
    from cascade_sd_ros.core.cooperation import plan_cooperation

    sources = {ROLE_OF_STAGE[s]: config.source(ROLE_OF_STAGE[s]) for s in config.stages}
    return plan_cooperation(sources, draft_ids_of(config))


def load_models(config: PipelineConfig) -> dict[str, StageModel]:
    """One model per running stage (role -> StageModel), once :func:`check_source_vocabularies` says the
    stages can cooperate: stages whose drafts cross as ids must share the target's vocabulary (checked
    again on the loaded tokenizers and vocabulary sizes); the others draft as text."""
    from cascade_sd_ros.core.spec.adapter import check_same_vocab
    from cascade_sd_ros.core.stage_model import check_vocabularies

    plan = check_source_vocabularies(config)  # a stage that cannot cooperate fails here, before loading weights
    models = {
        ROLE_OF_STAGE[s]: load_stage_model(
            config.source(ROLE_OF_STAGE[s]), ROLE_OF_STAGE[s], device=config.device, dtype=config.dtype
        )
        for s in config.stages
    }
    by_ids = [s for s in config.stages if plan.draft_ids.get(ROLE_OF_STAGE[s], "same-vocab") == "same-vocab"]
    check_vocabularies({s: models[ROLE_OF_STAGE[s]].vocab for s in by_ids}, reference="verifier")
    check_same_vocab([models[ROLE_OF_STAGE[s]].adapter for s in by_ids])
    return models


def build_pipeline(
    config: PipelineConfig, context: Context, models: Mapping[str, StageModel] | None = None
) -> Pipeline:
    """Nodes for ``config.stages`` in ``context`` on one executor (not spinning yet)."""
    from cascade_sd_ros.nodes.event_drafter import EventDrafter
    from cascade_sd_ros.nodes.frame_refiner import FrameRefiner
    from cascade_sd_ros.nodes.video_verifier import VideoVerifier

    if config.torch_threads is not None:
        import torch

        torch.set_num_threads(config.torch_threads)
    models = dict(models) if models is not None else load_models(config)
    classes = {"drafter": EventDrafter, "refiner": FrameRefiner, "verifier": VideoVerifier}
    ns = config.namespace or None
    nodes: dict[str, Node] = {}
    try:
        for stage in config.stages:
            nodes[stage] = classes[stage](
                context=context,
                model=models[ROLE_OF_STAGE[stage]],
                parameter_overrides=config.overrides(stage),
                namespace=ns,
            )
    except Exception:
        for node in nodes.values():
            node.close()
            node.destroy_node()
        raise
    collector = CaptionCollector(context=context, namespace=ns) if config.collect_captions else None
    executor = make_executor(config, context)
    for node in [*nodes.values(), *([collector] if collector is not None else [])]:
        executor.add_node(node)
    return Pipeline(config, context, models, nodes, collector, executor)


def make_executor(config: PipelineConfig, context: Context) -> Executor:
    """The executor ``config`` names. The stages' callbacks only convert and queue (model work runs on
    their workers), so one C++-driven thread serves them as well as a pool of Python ones."""
    if config.executor == "events":
        return _events_executor(context)
    return MultiThreadedExecutor(num_threads=config.executor_threads, context=context)


def _events_executor(context: Context) -> Executor:
    from rclpy.experimental import EventsExecutor

    try:
        return EventsExecutor(context=context)
    except io.UnsupportedOperation:
        # it enables faulthandler on sys.stderr, which needs a file descriptor that a captured stderr
        # (pytest, an embedding application) lacks: point the crash dump at the process's own stderr
        captured, sys.stderr = sys.stderr, sys.__stderr__
        try:
            return EventsExecutor(context=context)
        finally:
            sys.stderr = captured


def new_context(args: Iterable[str] | None = None) -> Context:
    """A fresh initialised rclpy context (the caller shuts it down)."""
    context = Context()
    rclpy.init(args=list(args) if args is not None else None, context=context)
    return context


# ---------------------------------------------------------------------------------------------------
# Synthetic scenes through a pipeline: shared by the demo and the node tests.

# A scene's round is this long before its end, so its clip holds only that scene's frames even
# before the clock offset is known: the demo's stages start from 0 against a true 30 ms, and a frame
# up to ``slop`` (20 ms) past T still counts. At 40 ms the first rounds' clips took the next scene's
# first frame, and their captions described a cut that no camera sees.
ROUND_MARGIN_NS = 100_000_000


@dataclass(frozen=True)
class SceneRounds:
    """Round timing that puts one round at the end of every synthetic scene (see :func:`scene_rounds`)."""

    schedule: RoundSchedule  # what the stages are told: round_period and round_phase
    event_offset_ns: int
    round_ids: tuple[int, ...]  # per scene, = T on the event clock

    @property
    def period_s(self) -> float:
        return self.schedule.period_ns / 1e9

    @property
    def phase_s(self) -> float:
        return self.schedule.phase_ns / 1e9

    def params(self, oracle: bool = True, frame_offset_ns: int | None = None) -> dict[str, dict[str, Any]]:
        """Pipeline parameter overrides: periodic rounds, reliable deep sensor queues, clock offsets.

        ``oracle``: the stages are told the true offset, pinned (no measuring). Otherwise they start
        from ``frame_offset_ns`` (default 0: nobody knows it), the drafter measures the offset and
        the refiner and verifier follow what it publishes (``clock_offset``)."""
        common = {"round_period": self.period_s, "round_phase": self.phase_s, **SENSOR_PARAMS}
        if oracle:
            off = (self.event_offset_ns if frame_offset_ns is None else frame_offset_ns) / 1e9
            return {
                "common": common,
                "event_drafter": {"frame_offset": off, "estimate_offset": False},
                "frame_refiner": {"frame_offset": off, "follow_clock_offset": False},
                "video_verifier": {"frame_offset": off, "follow_clock_offset": False},
            }
        start = (frame_offset_ns or 0) / 1e9
        return {
            "common": common,
            "event_drafter": {"frame_offset": start, "estimate_offset": True},
            "frame_refiner": {"frame_offset": start, "follow_clock_offset": True},
            "video_verifier": {"frame_offset": start, "follow_clock_offset": True},
        }


def scene_rounds(stream: Any, margin_ns: int = ROUND_MARGIN_NS) -> SceneRounds:
    """Scene ``i`` covers RGB time ``[start + i D, start + (i+1) D)``; its round is at
    ``start + (i+1) D - margin`` on the RGB clock, i.e. that plus the event offset on the event clock:
    the round schedule of period ``D`` through those times."""
    d_ns = int(stream.scene_duration_ns)
    off = int(stream.clocks.event_offset_ns)
    ids = tuple(int(stream.start_ns) + (i + 1) * d_ns - margin_ns + off for i in range(stream.n_scenes))
    return SceneRounds(schedule=RoundSchedule.through(ids, d_ns), event_offset_ns=off, round_ids=ids)


def play_scenes(
    pipeline: Pipeline,
    player: SensorPlayer,
    scenes: Sequence[Any],
    rounds: SceneRounds,
    *,
    timeout_s: float = 60.0,
    skip_frames: bool = False,
    skip_events: bool = False,
    first: int = 0,
    rate: float | None = None,
    before_scene: Callable[[int], None] | None = None,
) -> dict[int, Any]:
    """Play ``scenes`` (scene indices ``first``, ``first + 1``, ...) scene by scene, keeping one round
    in flight: playing scene ``i`` completes round ``i - 1``'s inputs, so the last scene played is a
    lead-out. ``before_scene(i)`` runs before scene ``i`` plays. Returns scene index -> final
    VerifiedCaption (None when none came within ``timeout_s``)."""
    if pipeline.collector is None:
        raise ValueError("play_scenes needs the pipeline's caption collector")
    out: dict[int, Any] = {}
    for i, scene in enumerate(scenes, start=first):
        if before_scene is not None:
            before_scene(i)
        player.play(
            scene, event_offset_ns=rounds.event_offset_ns, skip_frames=skip_frames, skip_events=skip_events, rate=rate
        )
        if i == 0:
            continue
        rid = rounds.round_ids[i - 1]
        pipeline.collector.wait_final(round_id=rid, timeout_s=timeout_s)
        out[i - 1] = pipeline.collector.finals.get(rid)
    return out
