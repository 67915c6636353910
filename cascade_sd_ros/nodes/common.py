"""What the three nodes share: QoS per topic kind, declared parameters, input accounting, the stage
node skeleton (parameters, model, prompt, diagnostics, its core Stage), the image callback, main().

A node is glue: it converts messages, feeds its :class:`~cascade_sd_ros.core.stages.Stage` (which
owns every round and runs the model on its own thread) and publishes what the Stage hands back."""

from __future__ import annotations

import atexit
import functools
import gc
import re
import signal
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, replace
from typing import Any, Callable, Generic, Sequence, TypeVar

import numpy as np
import rclpy
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType
from rclpy.context import Context
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecyclePublisher, LifecycleState, TransitionCallbackReturn
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.publisher import Publisher
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)
from rclpy.subscription import Subscription

from cascade_sd_ros.core.align import FrameIngest
from cascade_sd_ros.core.names import TOPIC_DIAGNOSTICS
from cascade_sd_ros.core.spec.text_drafts import DRAFT_IDS_MODES
from cascade_sd_ros.core.stage_model import BACKENDS, StageModel, default_stage_source, load_stage_model
from cascade_sd_ros.core.stages import RoundSchedule, Stage, UpstreamStage
from cascade_sd_ros.core.stages.controlled import ControlledAcceptance
from cascade_sd_ros.nodes.overrides import ignored_overrides
from cascade_sd_ros.ros.dds_profile import use_node_profile
from cascade_sd_ros.ros.image import stamped_rgb8
from cascade_sd_ros.ros.outputs import diagnostics_msg
from cascade_sd_ros.ros.param_files import override_sources
from cascade_sd_ros.ros.stamps import seconds_to_ns

# Sensor streams: best effort, newest first, deep enough for a burst of event packets.
SENSOR_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=50,
    reliability=qos_profile_sensor_data.reliability,
    durability=qos_profile_sensor_data.durability,
)
# Drafts and commits: every message matters to the round, few are in flight.
ROUND_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=20,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)
# A round's event features (one message per round, a few kB): reliable, a few rounds deep.
FEATURES_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=4,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)
# Captions and RViz outputs: reliable; the newest few.
OUTPUT_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=10,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)
PROMPT_QOS = OUTPUT_QOS
# Verified captions: one update per verifier step, then the final, and the next round's updates at
# once behind it. A subscriber that fell behind by more than the depth lost the final caption under
# the next round's burst (the demo's verifier alone, 32-token rounds, one loaded process), so the
# depth holds a few rounds at the default max_new_tokens. KEEP_LAST, not KEEP_ALL: a stuck RViz must
# never block the verifier's publish.
CAPTION_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=128,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)
# The applied clock offset: latched, so a stage (re)starting later hears the current value at once.
LATCHED_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)
DIAGNOSTICS_QOS = OUTPUT_QOS


@dataclass(frozen=True)
class Param:
    """One declared parameter: default, description, optional range, read-only flag."""

    name: str
    default: Any
    description: str
    lo: float | None = None
    hi: float | None = None
    read_only: bool = False
    # applied while the node runs (StageNode.apply_live); every other parameter is read-only, so a
    # change that could not take effect is refused with a reason instead of silently ignored
    live: bool = False


def with_defaults(params: Sequence[Param], **defaults: Any) -> tuple[Param, ...]:
    """``params`` with some defaults replaced (a node whose inputs differ from the others')."""
    names = {p.name for p in params}
    unknown = sorted(set(defaults) - names)
    if unknown:
        raise KeyError(f"no such parameters: {unknown}")
    return tuple(replace(p, default=defaults[p.name]) if p.name in defaults else p for p in params)


def declare(node: Node, params: Sequence[Param]) -> dict[str, Any]:
    """Declare every parameter with its descriptor; returns name -> value (validated by rclpy)."""
    out: dict[str, Any] = {}
    for p in params:
        desc = ParameterDescriptor(description=p.description, read_only=p.read_only or not p.live)
        if p.lo is not None and p.hi is not None:
            if isinstance(p.default, bool):
                raise TypeError(f"parameter {p.name}: a range makes no sense for a bool")
            if isinstance(p.default, int):
                desc.integer_range = [IntegerRange(from_value=int(p.lo), to_value=int(p.hi), step=1)]
                desc.type = ParameterType.PARAMETER_INTEGER
            else:
                desc.floating_point_range = [FloatingPointRange(from_value=float(p.lo), to_value=float(p.hi), step=0.0)]
                desc.type = ParameterType.PARAMETER_DOUBLE
        out[p.name] = node.declare_parameter(p.name, p.default, desc).value
    return out


def choice(value: str, allowed: Sequence[str], name: str) -> str:
    if value not in allowed:
        raise ValueError(f"parameter {name}={value!r}: must be one of {list(allowed)}")
    return value


# A question may not carry C0/C1 control characters or bidirectional overrides (they rewrite what a
# log or an overlay shows); the prompt template takes at most this many tokens around the question.
_CONTROL_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
PROMPT_TEMPLATE_TOKENS = 16

# Parameters every stage has.
COMMON_PARAMS: tuple[Param, ...] = (
    Param(
        "autostart",
        True,
        "configure (load and warm up the model) and activate at start-up; false: the node waits for "
        "its lifecycle transitions (ros2 lifecycle set NODE configure, then activate)",
        read_only=True,
    ),
    Param("device", "cpu", "torch device for this stage's model: cpu, cuda, cuda:N", read_only=True),
    Param(
        "dtype",
        "auto",
        "model dtype: auto (bfloat16 on CUDA, float32 on CPU), float32, float16, bfloat16",
        read_only=True,
    ),
    Param(
        "backend",
        "auto",
        "what runs the model: auto (cuda-graphs where device and model allow it, else transformers; the log "
        "and diagnostics say which and why), cuda-graphs (static KV cache + CUDA graphs: CUDA and a "
        "LLaVA-family model with a Llama language model only), transformers",
        read_only=True,
    ),
    Param(
        "prompt",
        "describe the scene",
        "question every round answers until a prompt message changes it (live: the next round asks it)",
        live=True,
    ),
    Param(
        "max_prompt_chars",
        240,
        "[characters] longest question a prompt message or the prompt parameter may ask; a longer one "
        "(or one longer in UTF-8 bytes than the model's context leaves for text) is refused. 240 fits "
        "the static path's 256 prompt tokens with the template, a token per byte at worst",
        1,
        100_000,
        read_only=True,
    ),
    Param(
        "round_period",
        2.0,
        "[s] a round opens at every multiple of this on the event clock (+ round_phase); "
        "0: only prompt messages open rounds",
        0.0,
        3600.0,
    ),
    Param("round_phase", 0.0, "[s] where in the period the round times fall", 0.0, 3600.0),
    Param("max_new_tokens", 32, "[tokens] caption length bound", 1, 1024),
    Param(
        "time_jump_tolerance",
        1.0,
        "[s] a stamp this much older than the newest seen resets buffers and rounds",
        0.0,
        3600.0,
    ),
    Param("frame_id", "camera", "frame_id of the published caption, marker and overlay"),
    Param("sensor_qos_depth", 50, "[messages] queue depth of the event and image subscriptions", 1, 100_000),
    Param(
        "sensor_reliability",
        "best_effort",
        "event/image subscriptions: best_effort (camera drivers) or reliable (bag players, tests)",
    ),
    Param(
        "draft_ids",
        "auto",
        "how drafts and commits cross between stages: auto (token ids where both stages' vocabularies agree, "
        "else their text, re-tokenised by the receiver), text (always text), same-vocab (ids only: another "
        "vocabulary's messages are set aside)",
        read_only=True,
    ),
)


def round_period_ns(params: dict[str, Any]) -> int:
    """``round_period`` in ns: 0 (prompt-only rounds) or at least 10 ms."""
    period = float(params["round_period"])
    if 0.0 < period < 0.01:
        raise ValueError(f"parameter round_period={period}: must be 0 (prompt-only rounds) or >= 0.01 s")
    return seconds_to_ns(period, "round_period")


@dataclass(frozen=True)
class StageConfig:
    """What every stage's config holds (from ``model`` and :data:`COMMON_PARAMS`); each node's extends it."""

    model: str
    device: str
    dtype: str
    backend: str
    prompt: str
    schedule: RoundSchedule
    max_new_tokens: int
    jump_tolerance_ns: int
    frame_id: str
    draft_ids: str


def stage_config_fields(p: dict[str, Any], role: str) -> dict[str, Any]:
    """:class:`StageConfig`'s fields from the declared parameters; an empty ``model`` is the zoo's ``role``."""
    return dict(
        model=p["model"] or default_stage_source(role),
        device=p["device"],
        dtype=p["dtype"],
        backend=choice(p["backend"], BACKENDS, "backend"),
        prompt=p["prompt"],
        schedule=RoundSchedule(round_period_ns(p), seconds_to_ns(p["round_phase"], "round_phase")),
        max_new_tokens=p["max_new_tokens"],
        jump_tolerance_ns=seconds_to_ns(p["time_jump_tolerance"], "time_jump_tolerance"),
        frame_id=p["frame_id"],
        draft_ids=choice(p["draft_ids"], DRAFT_IDS_MODES, "draft_ids"),
    )


def sensor_qos(params: dict[str, Any]) -> QoSProfile:
    """The sensor subscriptions' QoS from the common parameters."""
    rel = choice(params["sensor_reliability"], ["best_effort", "reliable"], "sensor_reliability")
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=int(params["sensor_qos_depth"]),
        reliability=ReliabilityPolicy.RELIABLE if rel == "reliable" else ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.VOLATILE,
    )


DIAGNOSTICS_PERIOD_S = 1.0  # [s] each stage's /diagnostics, on the steady clock


class InputStats:
    """Counts and rates of one input, and malformed messages logged once per throttle period."""

    def __init__(self, node: Node, name: str, throttle_s: float = 5.0) -> None:
        self._node = node
        self.name = name
        self.received = 0
        self.malformed = 0
        self.dropped = 0  # buffer evictions of items no round had used yet
        self.expired = 0  # buffer evictions of history every round was done with
        self._times: deque[float] = deque(maxlen=200)
        self._throttle_s = throttle_s
        self._last_log = -1e18
        self._lock = threading.Lock()

    def buffer(self, dropped: int, expired: int) -> None:
        self.dropped, self.expired = dropped, expired

    def tick(self) -> None:
        with self._lock:
            self.received += 1
            self._times.append(time.monotonic())

    def bad(self, reason: str) -> None:
        with self._lock:
            self.malformed += 1
            now = time.monotonic()
            log = now - self._last_log >= self._throttle_s
            if log:
                self._last_log = now
            count = self.malformed
        if log:
            self._node.get_logger().warning(f"{self.name}: skipped malformed message ({reason}); {count} so far")

    def take_frame(self, msg: Any) -> tuple[int, np.ndarray] | None:
        """An image message received: (stamp ns, rgb8 pixels), or None for one that cannot be taken
        (counted malformed, its reason logged): every image input counts frames this one way."""
        self.tick()
        frame = stamped_rgb8(msg)
        if isinstance(frame, str):
            self.bad(frame)
            return None
        return frame

    def rate_hz(self) -> float:
        with self._lock:
            if len(self._times) < 2:
                return 0.0
            now = time.monotonic()
            recent = [t for t in self._times if now - t <= 5.0]
            if len(recent) < 2:
                return 0.0
            return (len(recent) - 1) / max(recent[-1] - recent[0], 1e-6)

    def values(self) -> dict[str, object]:
        return {
            f"{self.name}.received": self.received,
            f"{self.name}.rate_hz": self.rate_hz(),
            f"{self.name}.malformed": self.malformed,
            f"{self.name}.dropped": self.dropped,
            f"{self.name}.expired": self.expired,
        }


class CallbackGuard:
    """Catches whatever one message (or one timer tick) raises, so it costs that message, never the
    node: counted per callback, logged with its traceback once per exception type, then throttled."""

    def __init__(self, node: Node, throttle_s: float = 5.0) -> None:
        self._node = node
        self._throttle_s = throttle_s
        self._lock = threading.Lock()
        self.errors: dict[str, int] = {}
        self._seen: set[tuple[str, str]] = set()
        self._last_log = -1e18
        self.last_error = ""

    def wrap(self, where: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        # wraps: rclpy reads the callback's signature (message info, timer info) through __wrapped__
        @functools.wraps(fn)
        def guarded(*args: Any) -> Any:
            try:
                return fn(*args)
            except Exception as exc:  # noqa: BLE001 - the node's edge: nothing one message does may kill it
                if not self._node.context.ok():
                    # Ctrl-C shut the context down under a running callback (its publish fails):
                    # the node is stopping, not failing, so no count and no traceback
                    return None
                self._failed(where, exc)
                return None

        return guarded

    def _failed(self, where: str, exc: Exception) -> None:
        key = (where, type(exc).__name__)
        with self._lock:
            self.errors[where] = self.errors.get(where, 0) + 1
            self.last_error = f"{where}: {type(exc).__name__}: {exc}"
            first = key not in self._seen
            self._seen.add(key)
            now = time.monotonic()
            log = first or now - self._last_log >= self._throttle_s
            if log:
                self._last_log = now
            count = self.errors[where]
        if log:
            detail = "".join(traceback.format_exception(exc)) if first else f"{type(exc).__name__}: {exc}"
            self._node.get_logger().error(
                f"{where}: message skipped after an unexpected error ({count} so far): {detail}"
            )

    def values(self) -> dict[str, object]:
        with self._lock:
            return {
                "callback_errors": sum(self.errors.values()),
                **{f"callback_errors.{k}": v for k, v in sorted(self.errors.items())},
            }


C = TypeVar("C", bound=StageConfig)


GAMMA_MAX_PARAM = Param(
    "gamma_max",
    16,
    "[tokens] longest draft the adapted draft length may reach; gamma_max = gamma keeps it fixed (live)",
    1,
    64,
    live=True,
)


# Benchmarks only (core/stages/controlled.py): an upstream stage's drafts rewritten to a chosen
# acceptance, so the nodes' speed can be read against acceptance (random-weight models on a GPU).
CONTROLLED_PARAMS: tuple[Param, ...] = (
    Param(
        "bench_reference_captions",
        "",
        "BENCHMARK ONLY: JSON of the target's greedy caption per round (cascade-sd bench tools write it); "
        "set, this stage's drafts are rewritten so each token is right with probability bench_controlled_alpha. "
        "Empty (default): the stage's own drafts",
        read_only=True,
    ),
    Param(
        "bench_controlled_alpha",
        0.7,
        "BENCHMARK ONLY: per-token acceptance of the rewritten drafts (with bench_reference_captions)",
        0.0,
        1.0,
        read_only=True,
    ),
)


def control_acceptance(node: Node, stage: UpstreamStage, vocab_size: int) -> None:
    """Benchmarks only: rewrite ``stage``'s drafts as :data:`CONTROLLED_PARAMS` say (nothing when no
    reference file is given); a bad file fails configure with one line naming it."""
    path = str(node.get_parameter("bench_reference_captions").value)
    if not path:
        return
    alpha = float(node.get_parameter("bench_controlled_alpha").value)
    controlled = ControlledAcceptance.load(path, alpha, vocab_size, stage=stage.stage_id)
    stage.control_acceptance(controlled)
    node.get_logger().warning(
        f"BENCHMARK ONLY: drafts rewritten to per-token acceptance {alpha:g} from {path} "
        f"({len(controlled.captions)} rounds); captions stay the verifier's"
    )


# Parameters of the frame stages' (refiner's and verifier's) alignment, the same for both; the
# drafter declares frame_offset too: it measures the offset and starts (or pins) it there.
FRAME_OFFSET_PARAM = Param(
    "frame_offset",
    0.0,
    "[s] event clock minus RGB clock (a frame stamped t happened at t + frame_offset): where the "
    "measured offset starts (the drafter's estimate_offset:=false pins it)",
    -3600.0,
    3600.0,
)
SLOP_PARAM = Param(
    "slop",
    0.02,
    "[s] a frame this far from where a round wants it (the refiner's frame at T, the verifier's clip "
    "window, after the clock offset) still counts",
    0.0,
    10.0,
)
MAX_WAIT_PARAM = Param("max_wait", 0.5, "[s] wait at most this long (wall) for a round's frames", 0.0, 60.0)
STAGE_LIVENESS_PARAM = Param(
    "stage_liveness",
    5.0,
    "[s] an upstream stage silent this long is not waited for at a round's start",
    0.0,
    3600.0,
)
FOLLOW_CLOCK_OFFSET_PARAM = Param(
    "follow_clock_offset",
    True,
    "apply the drafter's confident clock_offset (from the next round on) instead of frame_offset; "
    "false pins frame_offset here",
    read_only=True,
)


def apply_draft_length(node: Node, stage: UpstreamStage, name: str, value: Any) -> str | None:
    """A live change of ``gamma`` or ``gamma_max`` (the other keeps its value); why not, or None."""
    gamma = int(value) if name == "gamma" else int(node.get_parameter("gamma").value)
    ceiling = int(value) if name == "gamma_max" else int(node.get_parameter("gamma_max").value)
    if gamma > ceiling:
        return f"gamma {gamma} would exceed gamma_max {ceiling}"
    stage.set_gamma(gamma, ceiling)
    return None


def commit_verdict(msg: Any) -> tuple[int, int, int]:
    """A Commit's (accepted_stage, accepted, drafted): what it says of the draft it checked."""
    return int(msg.accepted_stage), int(msg.accepted), int(msg.drafted)


def warm_up_event_decoders(node: Node) -> None:
    """Before a node subscribes to events: numba's start-up at the first packet would stall its one
    executor thread for a second or more while a 1 kHz stream overflows the queue."""
    from cascade_sd_ros.core.events import warm_up_decoders

    node.get_logger().info(f"event decoders warmed up in {warm_up_decoders() * 1e3:.0f} ms")


class BackgroundWorker:
    """A callback on a daemon thread of its own, run each time it is woken (the data it works on
    arrived), for work too slow for a node's one executor thread (an offset estimate costs up to a
    few hundred ms): it must not hold up the messages behind it. Wakes while it runs coalesce into
    one more run, so the callback takes whatever is waiting. The callback must be thread-safe against
    the node's callbacks; what it raises is the guard's."""

    def __init__(self, callback: Callable[[], Any], name: str) -> None:
        self._callback = callback
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while True:
            self._wake.wait()
            if self._stop.is_set():
                return
            self._wake.clear()  # before the run: what arrives during it wakes the next one
            self._callback()


class StageNode(LifecycleNode, Generic[C]):
    """The skeleton every stage node shares, as a ROS 2 lifecycle (managed) node.

    * construction declares the parameters and makes the diagnostics output; nothing is loaded;
    * ``configure`` reads the parameters into the config, loads the model (given, or loaded for
      ``role``) and warms it up, then :meth:`build` makes the node's buffers, inputs, outputs and its
      core Stage (``self.stage``, asking ``cfg.prompt`` first). Models load here rather than on
      activate: loading takes seconds, so a launch can configure every stage first and activate them
      together, and a deactivate/activate pair never reloads;
    * ``activate`` starts the Stage's worker (after an inactive spell, from a clean slate: what was
      buffered and the rounds left open are void), opens the inputs and enables the round and caption
      publishers; ``deactivate`` undoes that, so no round runs and every input is dropped (counted);
    * ``cleanup`` / ``shutdown`` / an error stop the worker and drop what configure made: every
      subscription, publisher, timer and background worker :meth:`build` created and every attribute
      it set (the timers idle while inactive), so the model
      (unless it was handed in at construction; its owner keeps it) is released.

    ``autostart`` (default true) runs configure and activate in the constructor, which raises a
    failing configure's error: ``python -m cascade_sd_ros.nodes.<node>``, the demo, replay and tests
    start nodes as before. With ``autostart:=false`` the node waits for ``ros2 lifecycle set``; a
    configure that fails says why in one line (log and diagnostics) and leaves it unconfigured.
    The node reports ready (state active, diagnostics at its own level) only after warm-up.

    ``self.lock`` guards the node's input buffers (what its resolver reads); round state is the Stage's.
    """

    stage: Stage
    model: StageModel

    def __init__(
        self,
        name: str,
        params: Sequence[Param],
        make_config: Callable[[dict[str, Any]], C],
        role: str,
        *,
        context: Context | None,
        model: StageModel | None,
        parameter_overrides: list[Parameter] | None,
        namespace: str | None,
        ros_args: Sequence[str] = (),
    ) -> None:
        self.guard = CallbackGuard(self)  # before Node.__init__: its time source subscribes to /clock
        super().__init__(name, context=context, namespace=namespace, parameter_overrides=parameter_overrides or [])
        self._params = tuple(params)
        self._make_config = make_config
        self._role = role
        self._given_model = model
        declare(self, self._params)
        self.ignored_parameters = self._warn_ignored_overrides(parameter_overrides or [], ros_args)
        self.lock = threading.Lock()  # guards the node's input buffers
        self.prompts_in = InputStats(self, "prompts")
        self.live_params = {p.name for p in params if p.live}
        self.add_on_set_parameters_callback(self._on_set_parameters)
        # the lifecycle bookkeeping; what configure adds on top of this is what cleanup drops
        self._state = "unconfigured"  # the primary state: unconfigured, inactive, active, finalized
        self._active = False  # inputs open (read by the executor threads' gate)
        self._activations = 0
        self._failure = ""  # why the last configure failed (one line), until one succeeds
        self._configure_error: Exception | None = None  # raised by an autostart
        self._autostarting = False
        self._gate_lock = threading.Lock()
        self.inputs_inactive = 0  # messages and timer ticks dropped while not active
        self._built_attrs: frozenset[str] = frozenset()
        self._built_entities: list[Any] = []
        self._background: list[BackgroundWorker] = []  # made in build(), like the entities

        from diagnostic_msgs.msg import DiagnosticArray

        self.pub_diag = self.create_publisher(DiagnosticArray, TOPIC_DIAGNOSTICS, DIAGNOSTICS_QOS)
        self._create_diagnostics_timer()
        if self.get_parameter("autostart").value:
            self.start_up()

    def _warn_ignored_overrides(self, given: Sequence[Parameter], ros_args: Sequence[str]) -> tuple[str, ...]:
        """One warning per override this node does not declare (see ``nodes/overrides.py``):
        ``given`` the constructor's, ``ros_args`` the process's command line (its params files and
        ``-p`` rules); returns the warnings."""
        sources = override_sources(ros_args, self.get_fully_qualified_name())
        named = {p.name for p in given} | sources.named
        undeclared = [n for n in named | sources.shared if not self.has_parameter(n)]
        lines = ignored_overrides(self.get_name(), undeclared, named)
        for line in lines:
            self.get_logger().warning(line)
        return tuple(lines)

    # ------------------------------------------------------------------ lifecycle
    def start_up(self) -> None:
        """``autostart``: configure and activate now; a failing configure raises its own error (so a
        bad parameter or model folder ends ``main()`` with one line, as before lifecycle nodes)."""
        self._autostarting = True
        try:
            if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                error, self._configure_error = self._configure_error, None
                raise error if error is not None else RuntimeError(f"{self.get_name()}: configure failed")
        finally:
            self._autostarting = False
        if self.trigger_activate() != TransitionCallbackReturn.SUCCESS:
            raise RuntimeError(f"{self.get_name()}: activate failed: {self._failure}")

    @property
    def lifecycle_state(self) -> str:
        """unconfigured, inactive, active or finalized."""
        return self._state

    @property
    def configured(self) -> bool:
        return self._state in ("inactive", "active")

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._built_attrs = frozenset(vars(self))
        entities = self._entities()
        try:
            self._configure()
        except Exception as exc:  # noqa: BLE001 - a bad parameter or model folder leaves the node unconfigured
            self._built_entities = [e for e in self._entities() if e not in entities]
            self._release()
            self._failure = f"configure failed: {type(exc).__name__}: {exc}".splitlines()[0]
            self._configure_error = exc if self._autostarting else None
            if not self._autostarting:  # an autostart raises it: main() prints that one line
                self.get_logger().error(self._failure)
            return TransitionCallbackReturn.FAILURE
        self._built_entities = [e for e in self._entities() if e not in entities]
        self._failure = ""
        self._state = "inactive"
        self.get_logger().info("configured: model loaded and warmed up; inactive until activated")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self._activations:
            self.reset_inputs()  # what was buffered before the inactive spell is void
        try:
            self.stage.start()
        except RuntimeError as exc:
            self._failure = f"activate failed: {exc}"
            self.get_logger().error(self._failure)
            return TransitionCallbackReturn.FAILURE
        self._activations += 1
        result = super().on_activate(state)  # enables the lifecycle publishers
        self._active = True
        self._state = "active"
        self.get_logger().info("active: rounds run")
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = False
        result = super().on_deactivate(state)  # the publishers first: nothing of a stopping round goes out
        self.stage.stop()
        self._state = "inactive"
        self.get_logger().info("inactive: no rounds run, inputs dropped")
        return result

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self._state = "unconfigured"
        self.get_logger().info("cleaned up: model released")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = False
        self._release()
        self._state = "finalized"
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        """A transition raised: drop everything and go back to unconfigured."""
        self._active = False
        self._release()
        self._state = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def _configure(self) -> None:
        values = {p.name: self.get_parameter(p.name).value for p in self._params}
        self.cfg: C = self._make_config(values)
        self.sensor_qos = sensor_qos(values)
        role = self._role
        self.model = (
            self._given_model
            if self._given_model is not None
            else load_stage_model(
                self.cfg.model,
                role,
                device=self.cfg.device,
                dtype=self.cfg.dtype,
                backend=self.cfg.backend,
                max_new_tokens=self.cfg.max_new_tokens,
            )
        )
        self.check_model(self.model)
        reason = self.prompt_refusal(self.cfg.prompt.strip())
        if reason:
            raise ValueError(f"parameter prompt: {reason}")
        backend = self.model.backend
        self.get_logger().info(f"{role} model runs on backend {backend.name}: {backend.reason}")
        warm_s = self.model.warm_up(self.cfg.prompt)  # before any subscription: no round pays first-call costs
        if warm_s is not None:
            self.get_logger().info(
                f"{role} model warmed up in {warm_s * 1e3:.0f} ms (prefill, decode and verify steps)"
            )
        self.build()

    def build(self) -> None:
        """Hook (configure, after warm-up): make the node's buffers, inputs, outputs and ``self.stage``
        (not started: activate starts it). Round and caption outputs are lifecycle publishers."""
        raise NotImplementedError

    def reset_inputs(self) -> None:
        """Hook (activate after an inactive spell): void what was buffered and the open rounds, as
        when the stream starts again."""
        self.stage.reset()

    def _entities(self) -> list[Any]:
        return [*self.subscriptions, *self.publishers, *self.timers]

    def _release(self) -> None:
        """Stop the worker and drop what configure made (its entities and attributes, hence the model)."""
        self._active = False
        stage = vars(self).get("stage")
        if stage is not None:
            stage.stop()
        for worker in self._background:
            worker.stop()
        self._background = []
        for entity in self._built_entities:
            if isinstance(entity, LifecyclePublisher):
                self.destroy_lifecycle_publisher(entity)
            elif entity in list(self.publishers):
                self.destroy_publisher(entity)
            elif entity in list(self.subscriptions):
                self.destroy_subscription(entity)
            else:
                self.destroy_timer(entity)
        self._built_entities = []
        self._activations = 0
        device = str(getattr(vars(self).get("cfg"), "device", "cpu"))
        for name in set(vars(self)) - self._built_attrs:
            delattr(self, name)
        gc.collect()  # the model's modules hold reference cycles
        if device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    # ------------------------------------------------------------------ entities
    def create_subscription(
        self, msg_type: Any, topic: str, callback: Callable[[Any], None], *args: Any, **kwargs: Any
    ) -> Any:
        """Every subscription of a stage goes through :class:`CallbackGuard` (one bad message is
        counted and skipped, whatever it raises) and is dropped, counted, while the node is not active."""
        return super().create_subscription(
            msg_type, topic, self.guard.wrap(topic, self._while_active(callback)), *args, **kwargs
        )

    def create_timer(self, timer_period_sec: float, callback: Callable[[], Any], *args: Any, **kwargs: Any) -> Any:
        """Timers too: a tick that fails is counted and the next one runs; none runs while inactive."""
        name = getattr(callback, "__name__", "timer").lstrip("_")
        return super().create_timer(
            timer_period_sec,
            self.guard.wrap(f"timer {name}", self._while_active(callback, count=False)),
            *args,
            **kwargs,
        )

    def create_background_worker(self, callback: Callable[[], Any]) -> BackgroundWorker:
        """A callback off the executor, run when woken (:class:`BackgroundWorker`), guarded like a
        timer's and idle while the node is not active; made in :meth:`build`, stopped on cleanup and
        by :meth:`close`."""
        name = getattr(callback, "__name__", "background").lstrip("_")
        gated = self._while_active(callback, count=False)
        worker = BackgroundWorker(self.guard.wrap(f"background {name}", gated), f"{self.get_name()}_{name}")
        self._background.append(worker)
        worker.start()
        return worker

    def _while_active(self, fn: Callable[..., Any], count: bool = True) -> Callable[..., Any]:
        """``fn`` only while the node is active; otherwise dropped (messages counted in ``inputs_inactive``)."""

        # wraps: rclpy reads the callback's signature (message info, timer info) through __wrapped__
        @functools.wraps(fn)
        def gated(*args: Any) -> Any:
            if not self._active:
                if count:
                    with self._gate_lock:
                        self.inputs_inactive += 1
                return None
            return fn(*args)

        return gated

    def _create_diagnostics_timer(self) -> Any:
        """The diagnostics tick, in every state and on the steady clock rather than the node's: a node
        on sim time whose bag paused or ended still reports, so a replay reads each node's final input
        counts."""
        from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
        from rclpy.clock import Clock, ClockType

        return super().create_timer(
            DIAGNOSTICS_PERIOD_S,
            self.guard.wrap("timer publish_diagnostics", self._diagnostics_tick),
            callback_group=MutuallyExclusiveCallbackGroup(),
            clock=Clock(clock_type=ClockType.STEADY_TIME),
        )

    def _diagnostics_tick(self) -> None:
        if self.configured:
            self.publish_diagnostics()
        elif self._failure:
            self.publish_status(2, self._failure, {})
        else:
            self.publish_status(1, f"{self._state}: no model loaded (configure loads and warms it up)", {})

    def publish_diagnostics(self) -> None:
        """Hook: one DiagnosticStatus of the configured node (inputs, the Stage's counters, a level)."""
        raise NotImplementedError

    def worker_output(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """What the worker thread calls to publish. Once the context is shut down (Ctrl-C reaches
        rclpy's handler before main() stops the worker) a publish has nowhere to go: it is dropped
        quietly instead of failing the round with a traceback on the way out."""

        @functools.wraps(fn)
        def send(*args: Any) -> Any:
            if not self.context.ok():
                return None
            try:
                return fn(*args)
            except Exception:
                if not self.context.ok():
                    return None
                raise

        return send

    def check_model(self, model: StageModel) -> None:
        """Hook: reject a model that does not fit this node's parameters (ValueError)."""

    def _on_prompt(self, msg: Any) -> None:
        """A question from the ``prompt`` topic. One the node cannot ask (empty, too long, control
        characters) is refused with its reason and counted in ``prompts.malformed``; the current
        question stays."""
        self.prompts_in.tick()
        text = str(msg.data).strip()
        reason = self.prompt_refusal(text)
        if reason:
            self.prompts_in.bad(reason)
            return
        self.stage.ask(text)
        self.prompted()

    def prompt_refusal(self, text: str) -> str | None:
        """Why ``text`` cannot be asked, or None. The bound is ``max_prompt_chars``, and never more
        UTF-8 bytes than the model's context leaves for text once media and caption are placed (a
        tokenizer spends at most a token per byte)."""
        if not text:
            return "empty prompt"
        limit = int(self.get_parameter("max_prompt_chars").value)
        if len(text) > limit:
            return f"prompt of {len(text)} characters exceeds max_prompt_chars={limit}"
        adapter = self.model.adapter
        context = getattr(adapter, "max_context", None)  # the static path: what its caches hold
        if context is None:
            config = getattr(getattr(adapter, "model", None), "config", None)
            positions = getattr(config.get_text_config(), "max_position_embeddings", None) if config else None
            context = None if positions is None else positions - self.cfg.max_new_tokens
        media = getattr(adapter, "expected_media_tokens", None)
        if context is not None and media is not None:
            budget = context - media(self.model.num_frames) - PROMPT_TEMPLATE_TOKENS
            size = len(text.encode("utf-8"))
            if size > budget:
                return f"prompt of {size} UTF-8 bytes may not fit the model's context ({budget} tokens left for text)"
        bad = _CONTROL_CHARS.search(text)
        if bad:
            return f"prompt holds control character U+{ord(bad.group()):04X} at {bad.start()}"
        return None

    def prompted(self) -> None:
        """Hook: a new question has been asked (the Stage asks it from the next round)."""

    def _on_set_parameters(self, params: list[Parameter]) -> Any:
        """Apply the live parameters (ranges were checked by rclpy, read-only ones refused by it);
        the change takes effect from the next round or proposal. An unconfigured node takes any
        value in range: configure reads it."""
        from rcl_interfaces.msg import SetParametersResult

        for param in params:
            if param.name not in self.live_params or not self.configured:
                continue  # rclpy's own (use_sim_time), refused already as read-only, or read at configure
            reason = self.apply_live(param.name, param.value)
            if reason:
                return SetParametersResult(successful=False, reason=f"{param.name}: {reason}")
            self.get_logger().info(f"parameter {param.name} set to {param.value!r} (from the next round)")
        return SetParametersResult(successful=True)

    def apply_live(self, name: str, value: Any) -> str | None:
        """Hook: apply one live parameter; returns why not, or None. Subclasses handle their own and
        defer the rest here."""
        if name == "prompt":
            text = str(value).strip()
            reason = self.prompt_refusal(text)
            if reason:
                return reason
            self.stage.ask(text)
            return None
        return f"no live handler for {name}"

    def publish_status(self, level: int, message: str, values: dict[str, object]) -> None:
        """One DiagnosticStatus named after the node, stamped now, with what the skeleton itself
        counts (lifecycle state, the prompt input, callback errors: no stage can leave them out);
        callback errors raise it to WARN, and an inactive node says so at WARN whatever its inputs."""
        values = {
            **values,
            "lifecycle_state": self._state,
            "inputs_inactive": self.inputs_inactive,
            **self.matched_values(),
            **self.prompts_in.values(),
            **self.guard.values(),
        }
        if self._state == "inactive":
            level, message = max(level, 1), "inactive: model loaded and warmed up; no rounds run until activated"
        if level == 0 and self.guard.errors:
            level, message = 1, f"{message}; skipped messages after unexpected errors: {self.guard.last_error}"
        self.pub_diag.publish(
            diagnostics_msg(
                self.get_clock().now().to_msg(),
                f"cascade_sd: {self.get_name()}",
                self.get_fully_qualified_name(),
                level,
                message,
                values,
            )
        )

    def matched_values(self) -> dict[str, int]:
        """How many peers each input and output of the configured node is matched with now
        (``matched_publishers.<topic>`` per subscription, ``matched_subscribers.<topic>`` per
        publisher; topics relative to the node's namespace). A node that is active but hears no
        publisher on an input has not been discovered yet, or its peer is gone: a restarted stage
        is ready for rounds once its inputs and outputs are matched, not when its process runs."""
        prefix = self.get_namespace().rstrip("/") + "/"
        out: dict[str, int] = {}
        for entity in self._built_entities:
            topic = str(getattr(entity, "topic_name", ""))
            topic = topic[len(prefix) :] if topic.startswith(prefix) else topic
            if isinstance(entity, Subscription):
                out[f"matched_publishers.{topic}"] = entity.get_publisher_count()
            elif isinstance(entity, Publisher):
                out[f"matched_subscribers.{topic}"] = entity.get_subscription_count()
        return out

    def close(self) -> None:
        """Stop the worker and the background workers (main()'s clean-up; bounded), whatever the state."""
        self._active = False
        for worker in self._background:
            worker.stop()
        stage = vars(self).get("stage")
        if stage is not None:
            stage.stop()


class ImageInput:
    """The ``image`` callback of the frame stages: decode, ingest under the node's lock, report, open
    the rounds the frame lets open in the node's Stage, wake it.

    ``on_jump`` resets what the node keeps beyond the frames (``reset_what`` names it all in the log);
    ``on_frame`` sees every buffered frame (under the lock).
    """

    def __init__(
        self,
        node: StageNode[Any],
        ingest: FrameIngest,
        *,
        reset_what: str,
        on_jump: Callable[[], None],
        on_frame: Callable[[int, np.ndarray], None] | None = None,
    ) -> None:
        self._node = node
        self.ingest = ingest
        self.stats = InputStats(node, "images")
        self._reset_what = reset_what
        self._on_jump = on_jump
        self._on_frame = on_frame

    def __call__(self, msg: Any) -> None:
        node = self._node
        frame = self.stats.take_frame(msg)
        if frame is None:
            return
        t_ns, rgb = frame
        with node.lock:
            got = self.ingest.add(t_ns, rgb)
            if got.malformed:
                self.stats.bad(got.malformed)
                return
            if got.size_changed:
                node.get_logger().warning(f"image size changed to {rgb.shape[1]}x{rgb.shape[0]}: older frames dropped")
            if got.time_jumped:
                node.get_logger().warning(f"image time jumped backwards: {self._reset_what} reset")
                self._on_jump()
            frames = self.ingest.frames
            self.stats.buffer(frames.dropped, frames.expired)
            if self._on_frame is not None:
                self._on_frame(t_ns, rgb)
            for T in got.rounds_ns:
                node.stage.open_round(T)
                node.stage.inputs_ready(T)  # a frame past T + slop: the inputs are all here
        node.stage.wake()  # a round may be waiting for this frame

    def newest_ref_ns(self) -> int | None:
        """The newest frame stamp seen (kept or not), on the reference clock."""
        newest = self.ingest.jump.newest
        return None if newest is None else self.ingest.offsets.to_reference(self.ingest.stream, newest)


GIL_SWITCH_S = 0.0005


def spin_node(make: Callable[[Sequence[str]], Node], args: Sequence[str] | None = None) -> int:
    """The nodes' main(): init, spin a SingleThreadedExecutor, shut down cleanly on Ctrl-C.
    ``make`` gets the command line rclpy was initialised with (``args``, else ``sys.argv``): a stage
    node tells from its ``--params-file`` blocks and ``-p`` rules which overrides were written for it.

    One executor thread: a node's callbacks only convert messages and hand them to its Stage, whose
    own thread runs the model; work slower than a message goes to a :class:`BackgroundWorker`. A
    MultiThreadedExecutor rebuilt its wait set in Python on every spin and dispatched through a
    thread pool, holding the GIL and the core the model's passes need: on two cores the verifier
    alone ran at 1.25-1.36x the target's bare cost with it, 0.97-0.99x with this (bench/RESULTS.md).

    Clean-up ignores further SIGINTs: ``ros2 launch`` forwards one on top of the terminal's, and a
    second Ctrl-C must not turn a clean exit into a traceback and a non-zero status. The worker's
    stop is bounded, so clean-up cannot hang on it, and the interpreter's exit skips its final
    garbage collection (see below).
    """
    # Exiting, the interpreter's last cyclic garbage collection walks every object still alive
    # (torch, transformers: millions): 1.5-2.2 s of a node's exit alone, 3.3-5.2 s with three
    # stopping together on two loaded cores, after clean-up was done in 50 ms. Frozen objects are
    # skipped; nothing else of the exit is (atexit handlers, module teardown, DDS destructors run).
    # Registered as an exit handler, so a process that goes on after this returns is not affected.
    atexit.register(gc.freeze)
    _first_sigint_only()  # before rclpy.init, whose SIGINT handler chains to it
    use_node_profile()  # before the participant exists: a killed peer's lease must be short
    argv = list(sys.argv if args is None else args)
    rclpy.init(args=argv)
    # the worker's torch ops release the GIL and must win it back from executor threads handling
    # sensor messages; at Python's 5 ms default each win-back can cost a whole interval
    sys.setswitchinterval(GIL_SWITCH_S)
    node: Node | None = None
    try:
        node = make(argv)
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except RuntimeError:
        # rclpy's SIGINT handler shuts the context down from its own thread; an executor between
        # its shutdown check and its next step then fails in it (a known rclpy race): RCLError
        # building the wait set, or a RuntimeError taking a message. After shutdown it is the stop.
        if rclpy.ok():
            raise
    except (ValueError, FileNotFoundError, ParameterException, OSError) as exc:
        # invalid parameters or model folders: a clear message, not a trace
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    finally:
        _ignore_sigint()
        if node is not None:
            close = getattr(node, "close", None)
            if close is not None:
                close()
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0


def _first_sigint_only() -> None:
    """SIGINT stops the node once (KeyboardInterrupt, as Python's default) and is ignored after: a
    second one arriving between the executor's exit and clean-up's ``_ignore_sigint`` raised inside
    clean-up (a traceback and exit -2 when the two came together, as a terminal's and launch's do)."""
    stopping = False

    def handler(signum: int, frame: object) -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = True
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGINT, handler)
    except ValueError:
        pass  # not the main thread (a test calling main() from a thread): nothing to protect


def _ignore_sigint() -> None:
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:
        pass  # not the main thread (a test calling main() from a thread): nothing to protect
