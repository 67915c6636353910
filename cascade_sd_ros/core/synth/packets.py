"""Cut a simulated event stream into EVT 3.0 packets the way the ROS 2 drivers do.

metavision_driver / libcaer_driver publish an ``event_camera_msgs/EventPacket`` when the time since
the last published packet exceeds ``event_message_time_threshold`` (1 ms in their launch files) or
the buffer exceeds ``event_message_size_threshold``. Their conventions, kept here:

* ``header.stamp``: host time when the packet's first data arrived — here the time of the packet's
  first event on the event camera's clock;
* ``time_base``: 0 (its content is undefined for ``evt3``; sensor time lives in the payload);
* ``seq``: running packet count from 0; ``encoding``: ``"evt3"``; payload: one continuous EVT 3.0
  word stream across packets (a stateful encoder), so a decoder must see packets in order.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cascade_sd_ros.core.events import CD_DTYPE, Evt3Encoder

_MAX_BYTES_PER_EVENT = 8  # EVT 3.0 worst case: TIME_HIGH + TIME_LOW + ADDR_Y + ADDR_X words


@dataclass(frozen=True)
class PacketConfig:
    time_threshold_us: int = 1000  # driver's event_message_time_threshold (1 ms)
    size_threshold_bytes: int = 1_000_000  # driver's event_message_size_threshold

    def __post_init__(self) -> None:
        if self.time_threshold_us < 1:
            raise ValueError(f"PacketConfig.time_threshold_us must be >= 1, got {self.time_threshold_us}")
        if self.size_threshold_bytes < 64:
            raise ValueError(f"PacketConfig.size_threshold_bytes must be >= 64, got {self.size_threshold_bytes}")


@dataclass(frozen=True)
class EventPacketData:
    """One packet as the driver would publish it (message fields), plus the events it carries."""

    seq: int
    stamp_ns: int  # header.stamp on the event camera clock
    width: int
    height: int
    payload: bytes  # EVT 3.0
    events: np.ndarray = field(repr=False)  # CD_DTYPE, exactly what ``payload`` decodes to
    encoding: str = "evt3"
    time_base: int = 0


class Packetizer:
    """Stateful: one encoder and sequence counter for a whole stream."""

    def __init__(self, width: int, height: int, config: PacketConfig = PacketConfig()) -> None:
        self.width, self.height, self.config = int(width), int(height), config
        self._encoder = Evt3Encoder()
        self._seq = 0

    def packets(self, events: np.ndarray, sensor_to_stamp_ns: int) -> list[EventPacketData]:
        """Packets for ``events`` (CD_DTYPE, sorted; later than anything packed before).

        ``sensor_to_stamp_ns``: add to sensor time (µs * 1000) to get the event clock stamp.
        """
        if events.dtype != CD_DTYPE:
            raise ValueError(f"events must have dtype {CD_DTYPE}, got {events.dtype}")
        if events.size == 0:
            return []
        t = events["t"]
        window = t // self.config.time_threshold_us
        # Start of every time window, then every size cap inside a window.
        starts = np.flatnonzero(np.r_[True, window[1:] != window[:-1]])
        bounds = np.r_[starts, events.size]
        cap = max(1, self.config.size_threshold_bytes // _MAX_BYTES_PER_EVENT)
        out: list[EventPacketData] = []
        for a, b in zip(bounds[:-1], bounds[1:]):
            for s in range(int(a), int(b), cap):
                chunk = events[s:min(int(b), s + cap)]
                out.append(EventPacketData(
                    seq=self._seq,
                    stamp_ns=int(chunk["t"][0]) * 1000 + int(sensor_to_stamp_ns),
                    width=self.width,
                    height=self.height,
                    payload=self._encoder.encode(chunk),
                    events=chunk,
                ))
                self._seq += 1
        return out
