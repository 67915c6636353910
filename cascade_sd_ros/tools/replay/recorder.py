"""Records the cascade's outputs, byte for byte, into an MCAP rosbag2 (rosbags Writer).

Subscriptions are raw (serialised CDR straight from the middleware, written as received), one per
topic the pipeline's nodes publish, with the publisher's own reliability and durability so nothing
a reliable publisher sends is lost. Each record is stamped with the bag time the player's
``/clock`` stood at when it arrived, so the output bag lines up with the input bag.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rosbags.rosbag2 import StoragePlugin, Writer

from cascade_sd_ros.core import bagio
from cascade_sd_ros.tools.replay.msgtypes import rclpy_type

# Topics every node has; they carry no cascade output.
INFRASTRUCTURE_TOPICS = frozenset({"/rosout", "/parameter_events", "/clock"})
RECORD_DEPTH = 1000  # [messages] per topic; deep enough that a slow writer never drops a caption


@dataclass(frozen=True)
class OutputTopic:
    name: str
    msgtype: str  # rosbag2 name, pkg/msg/Name
    reliable: bool
    transient_local: bool


def rosbag_type_name(cls: type) -> str:
    """``sensor_msgs.msg._image.Image`` -> ``sensor_msgs/msg/Image``."""
    pkg = cls.__module__.split(".")[0]
    return f"{pkg}/msg/{cls.__name__}"


def pipeline_outputs(nodes: Iterable[Node]) -> list[OutputTopic]:
    """Every topic the given nodes publish (infrastructure topics left out), with its QoS."""
    found: dict[str, OutputTopic] = {}
    for node in nodes:
        for pub in node.publishers:
            name = pub.topic_name
            if name in INFRASTRUCTURE_TOPICS or name in found:
                continue
            qos = pub.qos_profile
            found[name] = OutputTopic(
                name=name,
                msgtype=rosbag_type_name(pub.msg_type),
                reliable=qos.reliability == ReliabilityPolicy.RELIABLE,
                transient_local=qos.durability == DurabilityPolicy.TRANSIENT_LOCAL,
            )
    return sorted(found.values(), key=lambda t: t.name)


class BagRecorder:
    """An MCAP rosbag2 being written; thread-safe, one connection per topic."""

    def __init__(self, path: Path) -> None:
        if path.exists():
            raise FileExistsError(f"output bag {path} already exists; choose an empty --out directory")
        self._store = bagio.typestore()
        self._writer = Writer(path, version=9, storage_plugin=StoragePlugin.MCAP)
        self._writer.open()
        self._conns: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()
        self.counts: dict[str, int] = {}
        self.path = path
        self._closed = False

    def knows(self, msgtype: str) -> bool:
        """Whether the bag's typestore can record messages of ``msgtype``."""
        return msgtype in self._store.types

    def write(self, topic: str, msgtype: str, t_ns: int, raw: bytes | memoryview) -> None:
        with self._lock:
            if self._closed:
                return  # late callbacks after close: the run is over
            key = (topic, msgtype)
            conn = self._conns.get(key)
            if conn is None:
                conn = self._writer.add_connection(topic, msgtype, typestore=self._store)
                self._conns[key] = conn
            self._writer.write(conn, int(t_ns), bytes(raw))
            self.counts[topic] = self.counts.get(topic, 0) + 1

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._writer.close()


class RecorderNode(Node):
    """Subscribes raw to the pipeline's outputs and writes them into a :class:`BagRecorder`.

    ``on_message(topic, msgtype, raw)`` is called after each write (the player's round tracking).
    """

    def __init__(
        self,
        bag: BagRecorder,
        outputs: list[OutputTopic],
        clock_ns: Callable[[], int],
        on_message: Callable[[str, str, bytes], None] | None = None,
        **node_kwargs: Any,
    ) -> None:
        super().__init__("replay_recorder", **node_kwargs)
        self._bag = bag
        self._clock_ns = clock_ns
        self._on_message = on_message
        self.outputs = outputs
        self.errors = 0  # outputs that could not be recorded or tracked
        self._subs = []
        for out in outputs:
            if not bag.knows(out.msgtype):
                self.get_logger().warning(f"not recording {out.name}: type {out.msgtype} unknown to the bag typestore")
                continue
            qos = QoSProfile(
                history=HistoryPolicy.KEEP_LAST,
                depth=RECORD_DEPTH,
                reliability=ReliabilityPolicy.RELIABLE if out.reliable else ReliabilityPolicy.BEST_EFFORT,
                durability=DurabilityPolicy.TRANSIENT_LOCAL if out.transient_local else DurabilityPolicy.VOLATILE,
            )
            self._subs.append(
                self.create_subscription(
                    rclpy_type(out.msgtype), out.name, self._callback(out.name, out.msgtype), qos, raw=True
                )
            )

    def _callback(self, topic: str, msgtype: str) -> Callable[[bytes], None]:
        def record(raw: bytes) -> None:
            # An exception escaping a callback would end the executor's spin and stall the replay:
            # count it, log it (throttled), and keep recording.
            try:
                self._bag.write(topic, msgtype, self._clock_ns(), raw)
                if self._on_message is not None:
                    self._on_message(topic, msgtype, raw)
            except Exception as exc:  # noqa: BLE001 -- see above
                self.errors += 1
                self.get_logger().error(f"recording {topic} failed: {exc}", throttle_duration_sec=5.0)

        return record
