"""``event_camera_msgs/EventPacket`` -> decoder input, and decoded events onto the event clock.

A packet's ``header.stamp`` is the ROS time of its first event (event_camera_msgs convention; for
EVT 3.0 ``time_base`` is undefined and sensor time comes from decoding). The first decoded packet
anchors sensor time to that stamp; later events keep the sensor clock's own spacing, so host
jitter on packet stamps does not leak into event times. A backward jump re-anchors (see
:meth:`EventStream.reset`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cascade_sd_ros.ros.stamps import stamp_to_ns


class PacketError(ValueError):
    """An EventPacket that cannot be decoded as given (empty, no geometry, bad stamp)."""


@dataclass(frozen=True)
class PacketInput:
    """What a decoder needs from one EventPacket."""

    encoding: str
    width: int
    height: int
    payload: np.ndarray  # [bytes] uint8
    time_base: int
    stamp_ns: int  # header.stamp: ROS time of the packet's first event
    seq: int


def packet_input(msg: Any) -> PacketInput:
    """Validate an EventPacket and expose its payload without copying."""
    stamp_ns = stamp_to_ns(msg.header.stamp)
    if not msg.encoding:
        raise PacketError("EventPacket has no encoding")
    if int(msg.width) <= 0 or int(msg.height) <= 0:
        raise PacketError(f"EventPacket geometry {msg.width}x{msg.height} is not positive")
    raw = msg.events
    payload = np.asarray(raw, dtype=np.uint8) if isinstance(raw, list) else np.frombuffer(raw, dtype=np.uint8)
    if payload.size == 0:
        raise PacketError("EventPacket carries no event bytes")
    return PacketInput(
        encoding=str(msg.encoding),
        width=int(msg.width),
        height=int(msg.height),
        payload=payload,
        time_base=int(msg.time_base),
        stamp_ns=stamp_ns,
        seq=int(msg.seq),
    )


@dataclass(frozen=True)
class StreamEvents:
    """Decoded CD events of one packet with their times on the event clock."""

    cd: np.ndarray  # [N] CD_DTYPE (t: sensor µs)
    t_ns: np.ndarray  # [N] int64, event clock


class EventStream:
    """One camera's packets, decoded in arrival order with one stateful decoder.

    The decoder is (re)made when the encoding or geometry changes; EVT 3.0 is stateful (time high
    bits), so a stream must be decoded in order and reset when time jumps.
    """

    def __init__(self) -> None:
        self._decoder: Any = None
        self._key: tuple[str, int, int] | None = None
        self._anchor_ns: int | None = None  # event clock minus sensor time (ns)

    @property
    def geometry(self) -> tuple[int, int] | None:
        return None if self._key is None else (self._key[1], self._key[2])

    def reset(self) -> None:
        self._decoder = None
        self._key = None
        self._anchor_ns = None

    def decode(self, pkt: PacketInput) -> StreamEvents:
        """Decode one packet; raises the decoder's ``EventDecodeError`` for bad payloads."""
        from cascade_sd_ros.core.events import make_decoder

        key = (pkt.encoding, pkt.width, pkt.height)
        if key != self._key:
            self._decoder = make_decoder(pkt.encoding, pkt.width, pkt.height)
            self._key = key
        decoded = self._decoder.decode(pkt.payload, time_base=pkt.time_base)
        cd = decoded.cd
        if len(cd) == 0:
            return StreamEvents(cd=cd, t_ns=np.zeros(0, dtype=np.int64))
        t_sensor_ns = cd["t"].astype(np.int64) * 1000
        if self._anchor_ns is None:
            self._anchor_ns = pkt.stamp_ns - int(t_sensor_ns[0])
        return StreamEvents(cd=cd, t_ns=t_sensor_ns + self._anchor_ns)

    def map_sensor_us(self, t_us: int) -> int | None:
        """A sensor time on the event clock, once anchored."""
        return None if self._anchor_ns is None else int(t_us) * 1000 + self._anchor_ns
