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

from cascade_sd_ros.core.events import CD_DTYPE, TRIGGER_DTYPE, Evt3Encoder

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
    triggers: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, TRIGGER_DTYPE))  # likewise
    encoding: str = "evt3"
    time_base: int = 0


class Packetizer:
    """Stateful: one encoder and sequence counter for a whole stream."""

    def __init__(self, width: int, height: int, config: PacketConfig = PacketConfig()) -> None:
        self.width, self.height, self.config = int(width), int(height), config
        self._encoder = Evt3Encoder()
        self._seq = 0

    def packets(
        self, events: np.ndarray, sensor_to_stamp_ns: int, triggers: np.ndarray | None = None
    ) -> list[EventPacketData]:
        """Packets for ``events`` (CD_DTYPE, sorted; later than anything packed before) and ``triggers``
        (TRIGGER_DTYPE, sorted; e.g. a frame camera's exposure strobe), each trigger in the packet of
        its time window (a window with triggers only gets a packet of its own).

        ``sensor_to_stamp_ns``: add to sensor time (µs * 1000) to get the event clock stamp.
        """
        if events.dtype != CD_DTYPE:
            raise ValueError(f"events must have dtype {CD_DTYPE}, got {events.dtype}")
        trig = np.zeros(0, TRIGGER_DTYPE) if triggers is None else triggers
        if trig.dtype != TRIGGER_DTYPE:
            raise ValueError(f"triggers must have dtype {TRIGGER_DTYPE}, got {trig.dtype}")
        if events.size == 0 and trig.size == 0:
            return []
        thr = self.config.time_threshold_us
        win_cd, win_tr = events["t"] // thr, trig["t"] // thr
        windows = np.unique(np.concatenate([win_cd, win_tr]))
        cd_at = np.searchsorted(win_cd, windows, side="left")
        cd_end = np.searchsorted(win_cd, windows, side="right")
        tr_at = np.searchsorted(win_tr, windows, side="left")
        tr_end = np.searchsorted(win_tr, windows, side="right")
        cap = max(1, self.config.size_threshold_bytes // _MAX_BYTES_PER_EVENT)
        out: list[EventPacketData] = []
        for a, b, ta, tb in zip(cd_at.tolist(), cd_end.tolist(), tr_at.tolist(), tr_end.tolist()):
            starts = list(range(a, b, cap)) or [a]
            for k, s in enumerate(starts):
                chunk = events[s : min(b, s + cap)]
                # the triggers before the next chunk's first event: each call stays in time order
                upto = (
                    tb
                    if k + 1 == len(starts)
                    else ta + int(np.searchsorted(trig["t"][ta:tb], events["t"][starts[k + 1]], side="left"))
                )
                tchunk, ta = trig[ta:upto], upto
                first = min(int(x["t"][0]) for x in (chunk, tchunk) if x.size)
                out.append(
                    EventPacketData(
                        seq=self._seq,
                        stamp_ns=first * 1000 + int(sensor_to_stamp_ns),
                        width=self.width,
                        height=self.height,
                        payload=self._encoder.encode(chunk, tchunk),
                        events=chunk,
                        triggers=tchunk.copy(),
                    )
                )
                self._seq += 1
        return out
