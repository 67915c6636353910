"""Event packets from recordings: rosbag2 folders/files (EventPacket topics) and Metavision
``.raw`` files (``%`` header lines, then EVT 2.0 or 3.0 words), as one packet stream."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .factory import supported_encodings
from .types import EventDecodeError

EVENT_PACKET = "event_camera_msgs/msg/EventPacket"
RAW_SUFFIX = ".raw"
# EVT 3.0/2.0 address 11 bits: with no geometry in a header nothing is out of bounds.
DEFAULT_RAW_GEOMETRY = (2048, 2048)
RAW_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class Packet:
    """One payload of one event stream, with what decoding it needs."""

    encoding: str
    width: int
    height: int
    time_base: int  # [ns] the packet's time_base (0 where the format has none)
    payload: np.ndarray  # [bytes] uint8
    stamp_ns: int | None  # [ns] header.stamp (ROS time) of bag packets; None for raw files


@dataclass(frozen=True)
class RawHeader:
    encoding: str | None  # None: the header names no format this package decodes
    width: int
    height: int
    size: int  # [bytes] header length; the event words start here
    format_text: str  # the header's own words for the format, for messages


_RAW_ENCODINGS = {"3.0": "evt3", "2.0": "evt2", "evt3": "evt3", "evt2": "evt2"}


def read_raw_header(path: Path) -> RawHeader:
    """Parse the ``%`` lines at the start of a Metavision ``.raw`` file."""
    encoding: str | None = None
    format_text = "none"
    width, height = DEFAULT_RAW_GEOMETRY
    size = 0
    with path.open("rb") as f:
        while f.peek(1)[:1] == b"%":
            line = f.readline()
            size += len(line)
            text = line[1:].decode("ascii", "replace").strip()
            if text == "end":
                break
            key, _, value = text.partition(" ")
            value = value.strip()
            if key == "evt":
                encoding, format_text = _RAW_ENCODINGS.get(value), f"evt {value}"
            elif key == "format":
                fields = value.split(";")
                encoding, format_text = _RAW_ENCODINGS.get(fields[0].lower()), f"format {fields[0]}"
                for field in fields[1:]:
                    name, _, number = field.partition("=")
                    if name in ("width", "height") and number.isdigit():
                        width, height = (int(number), height) if name == "width" else (width, int(number))
            elif key == "geometry":
                match = re.fullmatch(r"(\d+)x(\d+)", value)
                if match:
                    width, height = int(match[1]), int(match[2])
    return RawHeader(encoding, width, height, size, format_text)


def iter_raw_packets(
    path: str | Path, encoding: str | None = None, chunk_bytes: int = RAW_CHUNK_BYTES
) -> Iterator[Packet]:
    """The body of a ``.raw`` file in chunks of whole words (the stream is continuous, so the
    cut points do not matter to a stateful decoder)."""
    path = Path(path)
    header = read_raw_header(path)
    enc = encoding or header.encoding
    if enc is None:
        raise EventDecodeError(
            f"{path}: header format '{header.format_text}' is not EVT 2.0 or 3.0 "
            "('% evt 3.0' or '% format EVT3;...'); pass --encoding to decode it anyway"
        )
    word = 4 if enc == "evt2" else 2
    with path.open("rb") as f:
        f.seek(header.size)
        while True:
            data = f.read(chunk_bytes - chunk_bytes % word)
            if not data:
                return
            yield Packet(enc, header.width, header.height, 0, np.frombuffer(data, np.uint8), None)


def event_topic(topics: dict[str, str], wanted: str | None) -> str:
    """The EventPacket topic to read: ``wanted``, or the only one in the bag."""
    candidates = sorted(t for t, msgtype in topics.items() if msgtype == EVENT_PACKET)
    if wanted is not None:
        if topics.get(wanted) != EVENT_PACKET:
            raise EventDecodeError(
                f"topic {wanted!r} is not an {EVENT_PACKET} topic of this bag; these are: {candidates}"
            )
        return wanted
    if len(candidates) != 1:
        raise EventDecodeError(
            f"the bag has {len(candidates)} {EVENT_PACKET} topics {candidates}; choose one with --topic"
        )
    return candidates[0]


def iter_bag_packets(path: str | Path, topic: str | None = None, encoding: str | None = None) -> Iterator[Packet]:
    from cascade_sd_ros.core import bagio  # rosbags only where bags are read

    chosen = event_topic(bagio.topics(path), topic)
    for _, _, _, msg in bagio.iter_messages(path, [chosen]):
        stamp = int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)
        yield Packet(
            encoding or msg.encoding,
            int(msg.width),
            int(msg.height),
            int(msg.time_base),
            np.asarray(msg.events, np.uint8),
            stamp,
        )


def iter_packets(path: str | Path, topic: str | None = None, encoding: str | None = None) -> Iterator[Packet]:
    """Packets of a recording: ``.raw`` file, or rosbag2 folder / ``.db3`` / ``.mcap`` file."""
    if encoding is not None and encoding not in supported_encodings():
        raise EventDecodeError(f"unknown event encoding {encoding!r}; supported: {', '.join(supported_encodings())}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such recording: {path}")
    if path.suffix == RAW_SUFFIX:
        if topic is not None:
            raise EventDecodeError(f"{path} is a raw file; --topic applies to bags only")
        return iter_raw_packets(path, encoding)
    return iter_bag_packets(path, topic, encoding)
