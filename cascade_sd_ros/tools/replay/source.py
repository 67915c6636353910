"""The replay's input side: what a rosbag2 holds, and its records in order, checked and remapped.

:func:`scan_bag` reads the bag once before playback: topics and types, which of the cascade's
input streams are present, unknown message types and corrupt records (both skipped, both
reported), the ground-truth scenes, and event statistics decoded with the package's own event
decoders. :func:`iter_records` then yields the records to publish, as raw CDR bytes (published
as-is, so the bytes on the wire are exactly the recorded ones), under their remapped topic names.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from cascade_sd_ros.core import bagio
from cascade_sd_ros.core.events import EventDecodeError
from cascade_sd_ros.core.events.sources import Packet
from cascade_sd_ros.core.events.stats import compute_stats
from cascade_sd_ros.core.names import stamp_ns
from cascade_sd_ros.core.report import SceneInterval

EVENTS_TYPE = "event_camera_msgs/msg/EventPacket"
IMAGE_TYPE = "sensor_msgs/msg/Image"
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
GROUND_TRUTH_TYPE = "cascade_sd_ros/msg/SceneGroundTruth"
CLOCK_TYPE = "rosgraph_msgs/msg/Clock"

#: The cascade's input streams, by message type (names may be remapped; types say what a topic is).
STREAMS: dict[str, str] = {"events": EVENTS_TYPE, "rgb": IMAGE_TYPE}
#: What each stream feeds, for the "what is missing" message.
STREAM_ROLE: dict[str, str] = {
    "events": "event_drafter has no events (rounds open without event drafts, if at all)",
    "rgb": "frame_refiner and video_verifier have no frames (refiner passes drafts through, verifier degraded)",
}


class ReplayInputError(ValueError):
    """The bag cannot be replayed at all (missing, unreadable, no messages)."""


def parse_remaps(specs: list[str] | None) -> dict[str, str]:
    """``["/a:=/b", ...]`` -> ``{"/a": "/b"}``; raises ReplayInputError naming a malformed entry."""
    remaps: dict[str, str] = {}
    for spec in specs or []:
        src, sep, dst = spec.partition(":=")
        if not sep or not src.strip() or not dst.strip():
            raise ReplayInputError(f"--remap {spec!r}: expected FROM:=TO, e.g. /cam/events:=/event_camera/events")
        src, dst = src.strip(), dst.strip()
        for name in (src, dst):
            if not name.startswith("/") or " " in name:
                raise ReplayInputError(f"--remap {spec!r}: topic {name!r} must be an absolute name without spaces")
        if src in remaps:
            raise ReplayInputError(f"--remap {spec!r}: {src} is remapped twice")
        remaps[src] = dst
    return remaps


@dataclass
class TopicInfo:
    name: str  # as recorded
    published_as: str  # after --remap
    msgtype: str
    count: int = 0  # records in the bag
    corrupt: int = 0  # records that failed to deserialise (skipped)
    publishable: bool = True  # known type the middleware can publish
    skip_reason: str = ""  # why a publishable topic is not played (empty: it is)

    @property
    def played(self) -> bool:
        return self.publishable and not self.skip_reason


@dataclass
class BagScan:
    """Everything the replay needs to know about its input before playing it."""

    path: Path
    start_ns: int
    end_ns: int
    topics: dict[str, TopicInfo]
    scenes: list[SceneInterval] = field(default_factory=list)
    events: dict[str, dict[str, Any]] = field(default_factory=dict)  # topic -> EventStats.as_dict() or {"error": ...}
    storage_error: str | None = None  # reading stopped early on this error
    corrupt_at: set[tuple[str, int]] = field(default_factory=set)  # (recorded topic, index in topic) skipped

    @property
    def duration_ns(self) -> int:
        return max(0, self.end_ns - self.start_ns)

    def streams_present(self) -> dict[str, list[str]]:
        """Stream name -> published topic names carrying it."""
        return {
            s: [t.published_as for t in self.topics.values() if t.msgtype == ty and t.played and t.count > t.corrupt]
            for s, ty in STREAMS.items()
        }

    def missing_streams(self) -> list[str]:
        return [s for s, topics in self.streams_present().items() if not topics]

    def unknown_types(self) -> dict[str, str]:
        """Recorded topic -> type, for types this replay cannot publish (skipped)."""
        return {t.name: t.msgtype for t in self.topics.values() if not t.publishable}

    def skipped_topics(self) -> dict[str, str]:
        """Recorded topic -> why it is not played although its type is known."""
        return {t.name: t.skip_reason for t in self.topics.values() if t.publishable and t.skip_reason}

    def corrupt_records(self) -> dict[str, int]:
        return {t.name: t.corrupt for t in self.topics.values() if t.corrupt}

    def to_dict(self) -> dict[str, Any]:
        return {
            "bag": str(self.path),
            "start_ns": self.start_ns,
            "end_ns": self.end_ns,
            "duration_s": self.duration_ns / 1e9,
            "topics": {
                t.name: {
                    "type": t.msgtype,
                    "published_as": t.published_as,
                    "count": t.count,
                    "corrupt": t.corrupt,
                    "publishable": t.publishable,
                    "played": t.played,
                }
                for t in self.topics.values()
            },
            "streams": self.streams_present(),
            "missing_streams": {s: STREAM_ROLE[s] for s in self.missing_streams()},
            "unknown_types": self.unknown_types(),
            "skipped_topics": self.skipped_topics(),
            "corrupt_records": self.corrupt_records(),
            "storage_error": self.storage_error,
            "scenes": [
                {
                    "index": s.index,
                    "start_ns": s.start_ns,
                    "end_ns": s.end_ns,
                    "caption": s.caption,
                    "event_offset_ns": s.event_offset_ns,
                }
                for s in self.scenes
            ],
            "events": self.events,
        }


def _publishable(conn: bagio.Connection) -> bool:
    """Its bytes can be checked (a usable definition) and the type is importable for rclpy."""
    msgtype = conn.msgtype
    if conn.store is None:
        return False
    from cascade_sd_ros.tools.replay.msgtypes import rclpy_type  # rclpy-side import, kept lazy

    try:
        rclpy_type(msgtype)
    except (ImportError, AttributeError, ValueError):
        return False
    return True


def _stamp_ns(t: Any) -> int:
    return stamp_ns(t.sec, t.nanosec)


@contextmanager
def _open(path: Path, quiet: bool = True) -> Iterator[bagio.Bag]:
    """An opened bagio reader; any failure to open is a ReplayInputError naming the bag. Its notes
    (definitions assumed, files found by content) are said by the scan, not again by each read."""
    if not path.exists():
        raise ReplayInputError(f"bag {path} does not exist")
    try:
        reader = bagio.open_bag(path, quiet=quiet)
        reader.open()
    except (bagio.BagError, OSError) as exc:
        raise ReplayInputError(f"cannot open {path} as a rosbag2 (sqlite3 or MCAP): {exc}") from exc
    try:
        yield reader
    finally:
        reader.close()


def scan_bag(path: Path, remaps: Mapping[str, str] | None = None) -> BagScan:
    """Read the whole bag once: topics, checks, ground truth and event statistics."""
    remaps = dict(remaps or {})
    topics: dict[str, TopicInfo] = {}
    scenes: list[SceneInterval] = []
    storage_error: str | None = None
    corrupt_at: set[tuple[str, int]] = set()
    start = end = None
    with _open(path, quiet=False) as reader:
        for conn in reader.connections:
            if conn.topic not in topics:
                topics[conn.topic] = TopicInfo(
                    conn.topic, remaps.get(conn.topic, conn.topic), conn.msgtype, publishable=_publishable(conn)
                )
                if conn.msgtype == CLOCK_TYPE:
                    topics[conn.topic].skip_reason = "a recorded clock: the player publishes /clock itself"
        publishable = [c for c in reader.connections if topics[c.topic].publishable]
        for c in reader.connections:
            if not topics[c.topic].publishable:
                topics[c.topic].count += int(getattr(c, "msgcount", 0) or 0)
        # a damaged storage file: bagio stops at the damage, keeps what was read and says where
        for conn, t_ns, raw in reader.messages(publishable):
            info = topics[conn.topic]
            index = info.count
            info.count += 1
            start = t_ns if start is None else min(start, t_ns)
            end = t_ns if end is None else max(end, t_ns)
            try:
                msg = reader.deserialize(raw, conn)
            except bagio.CorruptRecord:
                info.corrupt += 1
                corrupt_at.add((conn.topic, index))
                continue
            if conn.msgtype == GROUND_TRUTH_TYPE:
                scenes.append(
                    SceneInterval(
                        int(msg.scene_index),
                        _stamp_ns(msg.start),
                        _stamp_ns(msg.end),
                        str(msg.caption),
                        int(msg.event_offset_ns),
                    )
                )
        if reader.damage:
            storage_error = "; ".join(str(d) for d in reader.damage)
    if start is None or end is None:
        raise ReplayInputError(
            f"bag {path} has no messages of a type the replay can publish "
            f"(topics: {', '.join(f'{t.name} [{t.msgtype}]' for t in topics.values()) or 'none'})"
        )
    scenes.sort(key=lambda s: (s.start_ns, s.index))
    scan = BagScan(Path(path), start, end, topics, scenes, {}, storage_error, corrupt_at)
    for topic in sorted(t.name for t in topics.values() if t.msgtype == EVENTS_TYPE and t.publishable):
        scan.events[topic] = event_statistics(scan, topic)
    return scan


def _event_packets(scan: BagScan, topic: str) -> Iterator[Packet]:
    """The intact EventPacket records of one topic as the events module's packets."""
    with _open(scan.path) as reader:
        conns = [c for c in reader.connections if c.topic == topic]
        for index, (conn, _t, raw) in enumerate(reader.messages(conns)):
            if (topic, index) in scan.corrupt_at:
                continue
            msg = reader.deserialize(raw, conn)
            yield Packet(
                str(msg.encoding),
                int(msg.width),
                int(msg.height),
                int(msg.time_base),
                np.asarray(msg.events, np.uint8),
                _stamp_ns(msg.header.stamp),
            )


def event_statistics(scan: BagScan, topic: str) -> dict[str, Any]:
    """Whole-recording event figures of one topic (cascade_sd_ros.core.events.stats), or the error."""
    try:
        return compute_stats(_event_packets(scan, topic)).as_dict()
    except EventDecodeError as exc:
        return {"error": str(exc)}


@dataclass(frozen=True)
class Record:
    topic: str  # published name (after remaps)
    msgtype: str
    t_ns: int  # [ns] recorded (bag) time
    raw: bytes  # CDR as recorded


def iter_records(scan: BagScan) -> Iterator[Record]:
    """The bag's played, intact records in recorded order (those scan_bag found corrupt skipped)."""
    seen: dict[str, int] = {}
    with _open(scan.path) as reader:
        conns = [c for c in reader.connections if scan.topics[c.topic].played]
        for conn, t_ns, raw in reader.messages(conns):  # stops at damage (scan_bag reported it)
            index = seen.get(conn.topic, 0)
            seen[conn.topic] = index + 1
            if (conn.topic, index) in scan.corrupt_at:
                continue
            yield Record(scan.topics[conn.topic].published_as, conn.msgtype, int(t_ns), bytes(raw))
