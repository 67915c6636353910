"""``event_camera_msgs/EventPacket`` -> decoder input, and decoded events onto the event clock.

A packet's ``header.stamp`` is the ROS time of its first event (event_camera_msgs convention; for
EVT 3.0 ``time_base`` is undefined and sensor time comes from decoding). The first decoded packet
anchors sensor time to that stamp; later events keep the sensor clock's own spacing, so host
jitter on packet stamps does not leak into event times. A backward jump re-anchors (see
:meth:`EventStream.reset`), and so does a packet whose first event lands further than
``reanchor_tolerance_ns`` from its own stamp (a corrupted time word, a sensor clock reset): the bad
packet does not carry its shift into every later one. Times that would leave int64 or go negative
on the event clock are refused (:class:`PacketError`) before they can anchor anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
    """Decoded CD and trigger events of one packet with their times on the event clock."""

    cd: np.ndarray  # [N] CD_DTYPE (t: sensor µs)
    t_ns: np.ndarray  # [N] int64, event clock
    triggers: np.ndarray = field(default_factory=lambda: _NO_TRIGGERS)  # [M] TRIGGER_DTYPE (t: sensor µs)
    trigger_t_ns: np.ndarray = field(default_factory=lambda: _NO_TIMES)  # [M] int64, event clock


_INT64_MAX = (1 << 63) - 1
_NO_TIMES = np.zeros(0, dtype=np.int64)
_NO_TRIGGERS = np.zeros(0, dtype=[("id", "u1"), ("p", "i1"), ("t", "<i8")])  # core.events.TRIGGER_DTYPE


class EventStream:
    """One camera's packets, decoded in arrival order with one stateful decoder.

    The decoder is (re)made when the encoding or geometry changes; EVT 3.0 is stateful (time high
    bits), so a stream must be decoded in order and reset when time jumps.
    """

    def __init__(self, reanchor_tolerance_ns: int = 10_000_000_000) -> None:
        self._decoder: Any = None
        self._key: tuple[str, int, int] | None = None
        self._anchor_ns: int | None = None  # event clock minus sensor time (ns)
        self.reanchor_tolerance_ns = int(reanchor_tolerance_ns)
        self.reanchors = 0  # packets whose events disagreed with their stamp by more than the tolerance
        self.time_resyncs = 0  # time-word jumps no counter wrap explains (the decoder resynchronised)
        self.events_dropped_span = 0  # events beyond the decoder's span bound (a corrupt packet's)

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
        # the decoder bounds what a packet can claim: time_base and times inside int64 (EventDecodeError
        # otherwise), one call's events within its span bound (the rest dropped and counted)
        decoded = self._decoder.decode(pkt.payload, time_base=pkt.time_base)
        self.time_resyncs += int(decoded.time_resyncs)
        self.events_dropped_span += int(decoded.events_dropped_span)
        cd, trig = decoded.cd, decoded.triggers
        if len(cd) == 0 and len(trig) == 0:
            return StreamEvents(cd=cd, t_ns=_NO_TIMES.copy())
        t_us = cd["t"]
        present = [a["t"] for a in (cd, trig) if len(a)]
        # Python ints: the checks below cannot overflow
        lo_us, hi_us = min(int(a.min()) for a in present), max(int(a.max()) for a in present)
        anchor = self._anchor_ns
        # the stamp is the packet's first event's time, a trigger (a strobe edge) as much as a CD event
        first_ns = min(int(a[0]) for a in present) * 1000
        if anchor is None or abs(first_ns + anchor - pkt.stamp_ns) > self.reanchor_tolerance_ns:
            if anchor is not None:
                self.reanchors += 1
            anchor = pkt.stamp_ns - first_ns
        if lo_us * 1000 + anchor < 0 or hi_us * 1000 + anchor > _INT64_MAX:
            raise PacketError(
                f"{pkt.encoding} packet's events [{lo_us}, {hi_us}] µs do not fit the event clock "
                f"anchored at {anchor} ns"
            )
        self._anchor_ns = anchor
        return StreamEvents(
            cd=cd,
            t_ns=t_us.astype(np.int64) * 1000 + anchor,
            triggers=trig,
            trigger_t_ns=trig["t"].astype(np.int64) * 1000 + anchor,
        )

    def map_sensor_us(self, t_us: int) -> int | None:
        """A sensor time on the event clock, once anchored."""
        return None if self._anchor_ns is None else int(t_us) * 1000 + self._anchor_ns
