"""The replay's stages as separate processes, as a robot runs them (the default for a paced replay).

:class:`ProcessPipeline` is a :class:`~cascade_sd_ros.tools.replay.passes.PipelineHandle` over
:class:`~cascade_sd_ros.tools.stage_processes.StageProcesses`: each stage node in an interpreter of its
own on ``use_sim_time``, the replay's player and recorder in this process on an executor of their own.
What the replay needs to know of the nodes (their topics, what each input received) it learns as any
tool on a robot would: from the ROS graph and from their ``/diagnostics``.

:class:`BagClips` hands the bare-target reference the verifier's clips: the verifier's own rule
(:func:`~cascade_sd_ros.core.align.clip.select_clip` at ``T`` minus the frame offset) applied to the
frames this process published, since the verifier's memory is in another process.

Fast mode stays in one process: its back-pressure (never more records in flight than half a node's
queue) needs the nodes' queues on the replay's own executor.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from cascade_sd_ros.core.align.buffer import TimeBuffer
from cascade_sd_ros.core.align.clip import select_clip
from cascade_sd_ros.tools.diagnostics import DiagnosticsListener
from cascade_sd_ros.tools.pipeline import NODE_OF_STAGE, ROLE_OF_STAGE, PipelineConfig

READY_TIMEOUT_S = 180.0  # [s] model loading and warm-up of every stage process
IMAGE_TYPE = "sensor_msgs/msg/Image"
KEPT_FRAMES = 256  # [frames] BagClips keeps the newest ones (a clip is 8 frames of the last second)
KEPT_CLIPS = 64  # [rounds] clips kept for rounds whose bare decode has not run yet


@dataclass(frozen=True)
class Endpoint:
    """One publisher or subscription of a node in another process, as the graph reports it (QoS
    depth is not in the graph: remote profiles say KEEP_LAST/UNKNOWN)."""

    topic_name: str
    msg_type: type
    qos_profile: Any
    observer: Any  # this process's node that sees the graph

    def get_subscription_count(self) -> int:
        """Subscribers of this (publisher's) topic: the replay's recorder among them once it joined."""
        return int(self.observer.count_subscribers(self.topic_name))

    def get_publisher_count(self) -> int:
        """Publishers of this (subscription's) topic: the replay's player among them once it joined."""
        return int(self.observer.count_publishers(self.topic_name))


class RemoteNode:
    """A stage node in another process, seen through the graph and its diagnostics: the surface the
    replay reads from a local node (``get_name``, ``subscriptions``, ``publishers``) plus
    :meth:`input_counts` in place of the node's own counters."""

    def __init__(
        self,
        name: str,
        namespace: str,
        subscriptions: list[Endpoint],
        publishers: list[Endpoint],
        diagnostics: DiagnosticsListener,
    ) -> None:
        self._name = name
        self.namespace = namespace
        self.subscriptions = subscriptions
        self.publishers = publishers
        self.diagnostics = diagnostics

    def get_name(self) -> str:
        return self._name

    @property
    def fqn(self) -> str:
        return f"{self.namespace.rstrip('/')}/{self._name}"

    def input_counts(self) -> dict[str, dict[str, int]]:
        """Per input (``events``, ``images``, ...): received / malformed / dropped, as last reported."""
        out: dict[str, dict[str, int]] = {}
        for key, value in self.diagnostics.values(self.fqn).items():
            name, _, field = key.rpartition(".")
            if field in ("received", "malformed", "dropped") and name:
                try:
                    out.setdefault(name, {})[field] = int(float(value))
                except ValueError:
                    continue
        return {k: v for k, v in out.items() if len(v) == 3}


def _endpoints(observer: Any, name: str, namespace: str, kind: str) -> list[Endpoint]:
    from cascade_sd_ros.tools.replay.player import rclpy_type

    if kind == "sub":
        pairs = observer.get_subscriber_names_and_types_by_node(name, namespace)
        infos = observer.get_subscriptions_info_by_topic
    else:
        pairs = observer.get_publisher_names_and_types_by_node(name, namespace)
        infos = observer.get_publishers_info_by_topic
    out = []
    for topic, types in pairs:
        qos = next((i.qos_profile for i in infos(topic) if i.node_name == name and i.node_namespace == namespace), None)
        out.append(Endpoint(topic, rclpy_type(types[0]), qos, observer))
    return out


class ProcessPipeline:
    """The stage nodes of ``config`` as processes in the root namespace, on ``use_sim_time``."""

    def __init__(self, config: PipelineConfig, context: Any, *, ready_timeout_s: float = READY_TIMEOUT_S) -> None:
        import rclpy
        from rclpy.executors import MultiThreadedExecutor

        from cascade_sd_ros.tools.stage_processes import StageProcesses, cpu_plan, pin_this_process

        self.config = config
        self.procs = StageProcesses()
        self.observer = rclpy.create_node("replay_observer", context=context)
        self.diagnostics = DiagnosticsListener(self.observer)
        self.executor = MultiThreadedExecutor(num_threads=2, context=context)
        self.executor.add_node(self.observer)
        self.nodes: list[RemoteNode] = []
        self.match_settle_s = 0.5  # [s] after graph discovery, before the first record (replay_pass)
        verifier = "verifier" in config.stages
        vparams = config.params.get("video_verifier", {})
        self.lookahead_ns = (
            int(1e9 * max(float(vparams.get("max_wait", 0.5)), float(vparams.get("draft_wait", 0.1))))
            if verifier
            else 0
        )
        self.info: dict[str, Any] = {
            "stages": list(config.stages),
            "models": {ROLE_OF_STAGE[s]: config.source(ROLE_OF_STAGE[s]) for s in config.stages},
            "device": config.device,
            "dtype": config.dtype,
            "mode": vparams.get("mode") if verifier else None,
            "processes": "separate stage processes",
        }
        # the stages pin themselves (the verifier a CPU of its own); this process, the player,
        # goes with the upstream stages, as the demo's does
        self._unpin = pin_this_process(cpu_plan("player", self.procs.available_cpus))
        try:
            self.procs.start(config, "/", tag="replay")
            self._wait_ready(ready_timeout_s)
        except BaseException:
            self.close(keep_logs=True)  # the error names the work folder: its logs stay
            raise

    def _wait_ready(self, timeout_s: float) -> None:
        """Until every stage node is in the graph with its inputs (nodes subscribe after warm-up)."""
        want = [NODE_OF_STAGE[s] for s in self.config.stages]
        deadline = time.monotonic() + timeout_s
        while True:
            self.procs.check_alive()
            present = {n for n, ns in self.observer.get_node_names_and_namespaces() if ns == "/"}
            if all(n in present for n in want):
                subs = {n: _endpoints(self.observer, n, "/", "sub") for n in want}
                if all(any(e.topic_name.endswith(("/image", "/events")) for e in subs[n]) for n in want):
                    self.nodes = [
                        RemoteNode(n, "/", subs[n], _endpoints(self.observer, n, "/", "pub"), self.diagnostics)
                        for n in want
                    ]
                    return
            if time.monotonic() > deadline:
                missing = [n for n in want if n not in present]
                # a node in the graph subscribes to its sensor only after its warm-up
                warming = [
                    n
                    for n in want
                    if n in present
                    and not any(
                        e.topic_name.endswith(("/image", "/events")) for e in _endpoints(self.observer, n, "/", "sub")
                    )
                ]
                raise RuntimeError(
                    f"stage processes not ready after {timeout_s:.0f} s (not in the graph: {missing or 'none'}; "
                    f"in it but not yet subscribed to their sensor: {warming or 'none'}; logs in {self.procs.workdir})"
                )
            time.sleep(0.1)

    @property
    def verifier(self) -> RemoteNode | None:
        return next((n for n in self.nodes if n.get_name() == NODE_OF_STAGE["verifier"]), None)

    def close(self, keep_logs: bool = False) -> None:
        """Stop the stage processes (SIGINT, then harder) and this process's observer (idempotent);
        their work folder goes unless ``keep_logs``."""
        self.procs.stop()
        if not keep_logs:
            self.procs.remove_workdir()
        self._unpin()
        try:
            self.executor.remove_node(self.observer)
        except Exception:  # noqa: BLE001 - the replay may have shut the executor down already
            pass
        self.observer.destroy_node()


def verifier_params(params: dict[str, Any]) -> dict[str, Any]:
    """What the verifier process runs with: its declared defaults, then ``params``' common and
    ``video_verifier`` overrides (the replay cannot read them back from another process)."""
    from cascade_sd_ros.nodes.video_verifier import PARAMS

    return {**{p.name: p.default for p in PARAMS}, **params.get("common", {}), **params.get("video_verifier", {})}


class BagClips:
    """The verifier's clip of each round, rebuilt from the frames the replay published.

    The verifier's own rule: frames of ``[T - offset - clip, T - offset]`` (± slop), ``frames`` of them,
    :func:`select_clip`. ``feed`` sees every image record the player publishes; ``clip`` is asked when a
    round's final caption arrives (its frames were all published by then).
    """

    def __init__(self, *, frame_offset_ns: int, clip_ns: int, frames: int, slop_ns: int, question: str) -> None:
        from cascade_sd_ros.core import bagio

        self._store = bagio.typestore()
        self._buffer: TimeBuffer[np.ndarray] = TimeBuffer(KEPT_FRAMES)
        self._lock = threading.Lock()
        self.frame_offset_ns, self.clip_ns, self.frames, self.slop_ns = frame_offset_ns, clip_ns, frames, slop_ns
        self.question = question
        self._clips: OrderedDict[int, Any] = OrderedDict()

    @classmethod
    def for_verifier(cls, params: dict[str, Any]) -> "BagClips":
        """With the verifier's parameters: its declared defaults, then ``params`` (node and common)."""
        values = verifier_params(params)
        return cls(
            frame_offset_ns=int(round(float(values["frame_offset"]) * 1e9)),
            clip_ns=int(round(float(values["clip_duration"]) * 1e9)),
            frames=int(values["frames"]),
            slop_ns=int(round(float(values["slop"]) * 1e9)),
            question=str(values["prompt"]),
        )

    def feed(self, msgtype: str, raw: bytes) -> None:
        if msgtype != IMAGE_TYPE:
            return
        from cascade_sd_ros.ros.image import stamped_rgb8

        try:
            msg = self._store.deserialize_cdr(raw, msgtype)
        except Exception:  # noqa: BLE001 - a record the verifier could not take either: skipped here too
            return
        frame = stamped_rgb8(msg)  # the verifier's own decode: the frames it skips as malformed, skipped
        if isinstance(frame, str):
            return
        t_ns, rgb = frame
        with self._lock:
            self._buffer.insert(t_ns, rgb)

    def on_record(self, msgtype: str, raw: bytes) -> None:
        self.feed(msgtype, raw)

    def keep(self, round_id: int, t_ns: int) -> bool:
        """Cut and keep round ``round_id``'s clip (``T = t_ns``); False when no frame lies in it."""
        end = t_ns - self.frame_offset_ns
        with self._lock:
            clip = select_clip(self._buffer, end, self.clip_ns, self.frames, self.slop_ns)
        if clip is None:
            return False
        self._clips[round_id] = np.stack(clip.items)
        while len(self._clips) > KEPT_CLIPS:
            self._clips.popitem(last=False)
        return True

    def __call__(self, round_id: int, t_ns: int) -> tuple[np.ndarray, str] | None:
        """The clip and question of a round whose final caption just arrived (a ``ClipSource``)."""
        if round_id not in self._clips and not self.keep(round_id, t_ns):
            return None
        return self._clips[round_id], self.question
