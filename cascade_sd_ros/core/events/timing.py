"""Sensor time -> ROS time.

Convention of the ROS 2 event camera drivers (metavision_driver, libcaer_driver, read by
event_camera_codecs): a packet's ``header.stamp`` is the ROS (host) time of the packet's first
event. So per packet ``offset = stamp - t_first`` and ``ros_ns = t_us * 1000 + offset``. A
stamp is taken after the events happened, never before, so the transfer latency only ever adds
to it: over a window of packets the *smallest* offset is the least delayed estimate, and a
bounded window follows slow clock drift. ``window=1`` is the drivers' per-packet mapping.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from .types import DecodedEvents


def first_time_us(decoded: DecodedEvents) -> int | None:
    """Sensor time of the earliest event a decode returned (None for an empty one)."""
    firsts = [int(a["t"][0]) for a in (decoded.cd, decoded.triggers) if a.size]
    return min(firsts) if firsts else None


class SensorToRosClock:
    """Maps sensor µs to ROS ns from (header.stamp, first event time) pairs, one per packet."""

    def __init__(self, window: int = 1) -> None:
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be a positive integer (packets), got {window!r}")
        self._offsets: deque[int] = deque(maxlen=window)

    @property
    def ready(self) -> bool:
        return bool(self._offsets)

    @property
    def offset_ns(self) -> int:
        """ROS ns minus sensor ns, the smallest over the window."""
        if not self._offsets:
            raise RuntimeError("no packet with events and a stamp seen yet")
        return min(self._offsets)

    def update(self, stamp_ns: int, first_t_us: int | None) -> None:
        """Add one packet's pair; packets without events carry no information."""
        if first_t_us is not None:
            self._offsets.append(int(stamp_ns) - int(first_t_us) * 1000)

    def reset(self) -> None:
        """Forget the estimate (the sensor clock restarted or a bag looped)."""
        self._offsets.clear()

    def to_ros_ns(self, t_us: np.ndarray | int) -> np.ndarray | int:
        if isinstance(t_us, np.ndarray):
            return t_us.astype(np.int64) * 1000 + self.offset_ns
        return int(t_us) * 1000 + self.offset_ns

    def to_sensor_us(self, ros_ns: int) -> int:
        """The sensor time [µs] at ROS time ``ros_ns`` (floor), e.g. for ``until_t_us``."""
        return (int(ros_ns) - self.offset_ns) // 1000
