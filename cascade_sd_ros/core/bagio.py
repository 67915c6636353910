"""rosbag2 reading and writing without ROS (rosbags), with this project's message types.

The typestore holds the ROS 2 Kilted standard messages, ``event_camera_msgs/msg/EventPacket``
and ``cascade_sd_ros/msg/*``. Message definitions are found in the source tree (``msg/``,
``interfaces/event_camera_msgs/msg/``) or, for an installed package, in the ament share
directories, so the same code works from a checkout and from an install.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

PACKAGE = "cascade_sd_ros"
EVENT_PACKET = "event_camera_msgs/msg/EventPacket"
_SOURCE_ROOT = Path(__file__).resolve().parents[2]
_SOURCE_MSG_DIRS = {
    PACKAGE: _SOURCE_ROOT / "msg",
    "event_camera_msgs": _SOURCE_ROOT / "interfaces" / "event_camera_msgs" / "msg",
}
_STORAGES = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}


class BagError(ValueError):
    """A path that is not a readable rosbag2 recording, or a topic/type it does not hold."""


def msg_dir(package: str) -> Path:
    """The folder of ``package``'s ``.msg`` files: source tree first, then the ament index."""
    source = _SOURCE_MSG_DIRS.get(package)
    if source is not None and any(source.glob("*.msg")):
        return source
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
    except ImportError as err:  # a bare numpy install without ament: only the source tree counts
        raise BagError(f"no msg/ folder for {package} in the source tree and ament_index_python is missing") from err
    try:
        installed = Path(get_package_share_directory(package)) / "msg"
    except (PackageNotFoundError, OSError) as err:  # OSError: AMENT_PREFIX_PATH unset
        raise BagError(f"message package {package} is neither in the source tree nor installed (ament index): {err}") from err
    if not any(installed.glob("*.msg")):
        raise BagError(f"installed package {package} has no .msg files in {installed}")
    return installed


def typestore() -> Typestore:
    """A fresh rosbags typestore with standard, event-camera and this package's messages."""
    store = get_typestore(Stores.ROS2_KILTED)
    types: dict[str, Any] = {}
    for package in ("event_camera_msgs", PACKAGE):
        for path in sorted(msg_dir(package).glob("*.msg")):
            types.update(get_types_from_msg(path.read_text(), f"{package}/msg/{path.stem}"))
    store.register(types)
    return store


def _bag_path(path: str | Path) -> Path:
    bag = Path(path)
    if not bag.exists():
        raise BagError(f"no such bag: {bag}")
    if bag.is_dir() and not (bag / "metadata.yaml").is_file():
        raise BagError(f"{bag} is a folder without metadata.yaml, not a rosbag2 recording")
    if bag.is_file() and bag.suffix not in (".db3", ".mcap"):
        raise BagError(f"{bag}: a rosbag2 file must end in .db3 or .mcap")
    return bag


def open_reader(path: str | Path) -> AnyReader:
    """An unopened rosbags reader for a rosbag2 folder or a single .db3/.mcap file.

    Use it as a context manager. Types the bag does not embed come from :func:`typestore`.
    """
    return AnyReader([_bag_path(path)], default_typestore=typestore())


def topics(path: str | Path) -> dict[str, str]:
    """topic -> message type of every topic in the bag."""
    with open_reader(path) as reader:
        return {c.topic: c.msgtype for c in reader.connections}


def iter_messages(
    path: str | Path, topics: Sequence[str] | None = None
) -> Iterator[tuple[str, str, int, Any]]:
    """Yield (topic, msgtype, receive time [ns], deserialized message) in time order."""
    with open_reader(path) as reader:
        connections = reader.connections
        if topics is not None:
            wanted = set(topics)
            missing = wanted - {c.topic for c in connections}
            if missing:
                raise BagError(
                    f"{path}: no topic(s) {sorted(missing)}; it has {sorted({c.topic for c in connections})}")
            connections = [c for c in connections if c.topic in wanted]
        for connection, t_ns, raw in reader.messages(connections=connections):
            yield connection.topic, connection.msgtype, t_ns, reader.deserialize(raw, connection.msgtype)


def write_bag(
    path: str | Path,
    messages: Iterable[tuple[str, str, int, Any]],
    storage: str = "sqlite3",
) -> int:
    """Write (topic, msgtype, t_ns, message) tuples to a new rosbag2 folder; returns the count.

    Messages are rosbags message objects built from :func:`typestore` types.
    """
    if storage not in _STORAGES:
        raise BagError(f"storage must be one of {sorted(_STORAGES)}, got {storage!r}")
    target = Path(path)
    if target.exists():
        raise BagError(f"{target} exists; rosbag2 writes a new folder")
    store = typestore()
    count = 0
    with Writer(target, version=8, storage_plugin=_STORAGES[storage]) as writer:
        connections: dict[str, Any] = {}
        for topic, msgtype, t_ns, msg in messages:
            conn = connections.get(topic)
            if conn is None:
                conn = connections[topic] = writer.add_connection(topic, msgtype, typestore=store)
            elif conn.msgtype != msgtype:
                raise BagError(f"topic {topic} was {conn.msgtype}, now {msgtype}")
            writer.write(conn, int(t_ns), store.serialize_cdr(msg, msgtype))
            count += 1
    return count
