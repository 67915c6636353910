"""The 64-bit ``mono`` (CD) and ``trigger`` encodings of event_camera_msgs (deprecated upstream,
still in recorded bags). One little-endian uint64 per event:

* ``mono``:    bit 63 polarity (1 = ON), bits 62..48 y (15 bits), bits 47..32 x (16 bits),
  bits 31..0 dt [ns] after the packet's ``time_base`` [ns].
* ``trigger``: bit 63 edge (1 = rising, as EVT 3.0), bits 62..48 channel id (stored as uint8),
  bits 31..0 dt [ns] after ``time_base``.

Sensor time is ``time_base + dt`` in ns; decoded ``t`` is that in whole µs (floor). These
encodings carry no state between packets, so nothing garbage does can reach the next packet.
``time_base`` is at most 2**62 ns (see :mod:`.payload`), so ``time_base + dt`` fits int64 ns.
An event earlier than the one before it is counted in ``time_resyncs`` (every event's time is its
own, so nothing is carried); the events of one call span at most ``max_span_us``.
"""

from __future__ import annotations

import numpy as np

from .payload import DEFAULT_MAX_SPAN_US, Payload, as_words, check_max_span, check_time_base, check_until, clip_span
from .types import CD_DTYPE, EMPTY_CD, EMPTY_TRIGGERS, TRIGGER_DTYPE, DecodedEvents

_DT_MASK = np.uint64(0xFFFFFFFF)
_MAX_DT_NS = (1 << 32) - 1


def _times_us(words: np.ndarray, time_base: int) -> np.ndarray:
    # time_base <= 2**62 and dt < 2**32 (checked): the sum cannot overflow int64
    return (np.int64(time_base) + (words & _DT_MASK).astype(np.int64)) // 1000


def _bounded(
    cd: np.ndarray, trig: np.ndarray, t: np.ndarray, max_span_us: int
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(cd, triggers, backward steps, dropped) for one call's events with times ``t`` in stream order."""
    back = int(np.count_nonzero(t[1:] < t[:-1])) if t.size > 1 else 0
    t_min, t_max = (int(t.min()), int(t.max())) if t.size else (0, 0)
    cd, trig, dropped = clip_span(cd, trig, t_min, t_max, max_span_us)
    return cd, trig, back, dropped


def _split(t: np.ndarray, until: int) -> int:
    """Index of the first event at or after ``until`` (upstream stops there, sorted or not)."""
    late = np.flatnonzero(t >= until)
    return int(late[0]) if late.size else t.size


class _Legacy64Decoder:
    word_bytes = 8

    def __init__(self, width: int, height: int, max_span_us: int | None = DEFAULT_MAX_SPAN_US) -> None:
        self.width = int(width)
        self.height = int(height)
        self.max_span_us = check_max_span(max_span_us)

    def reset(self) -> None:
        """Nothing to forget: every packet stands alone."""


class MonoDecoder(_Legacy64Decoder):
    encoding = "mono"

    def decode(self, payload: Payload, time_base: int = 0, until_t_us: int | None = None) -> DecodedEvents:
        words = as_words(payload, "<u8", self.encoding)
        t = _times_us(words, check_time_base(time_base))
        stop = _split(t, check_until(until_t_us))
        words, t_kept = words[:stop], t[:stop]
        x = ((words >> np.uint64(32)) & np.uint64(0xFFFF)).astype(np.int64)
        y = ((words >> np.uint64(48)) & np.uint64(0x7FFF)).astype(np.int64)
        inside = (x < self.width) & (y < self.height)
        cd = np.empty(int(inside.sum()), CD_DTYPE)
        cd["x"], cd["y"], cd["t"] = x[inside], y[inside], t_kept[inside]
        cd["p"] = (words[inside] >> np.uint64(63)).astype(np.int8)
        next_t = int(t[stop]) if stop < t.size else None
        skipped = int(stop - cd.size)
        cd, _, back, dropped = _bounded(cd, EMPTY_TRIGGERS, cd["t"], self.max_span_us)
        return DecodedEvents(cd, EMPTY_TRIGGERS.copy(), stop * 8, next_t, skipped, back, dropped)


class TriggerDecoder(_Legacy64Decoder):
    encoding = "trigger"

    def decode(self, payload: Payload, time_base: int = 0, until_t_us: int | None = None) -> DecodedEvents:
        words = as_words(payload, "<u8", self.encoding)
        t = _times_us(words, check_time_base(time_base))
        stop = _split(t, check_until(until_t_us))
        trig = np.empty(stop, TRIGGER_DTYPE)
        trig["t"] = t[:stop]
        trig["p"] = (words[:stop] >> np.uint64(63)).astype(np.int8)
        trig["id"] = ((words[:stop] >> np.uint64(48)) & np.uint64(0xFF)).astype(np.uint8)
        next_t = int(t[stop]) if stop < t.size else None
        _, trig, back, dropped = _bounded(EMPTY_CD, trig, t[:stop], self.max_span_us)
        return DecodedEvents(EMPTY_CD.copy(), trig, stop * 8, next_t, 0, back, dropped)


def _time_fields(t_us: np.ndarray, what: str) -> tuple[int, np.ndarray]:
    if t_us.size and (t_us.min() < 0 or np.any(np.diff(t_us) < 0)):
        raise ValueError(f"{what}: time must be >= 0 and non-decreasing")
    time_base = int(t_us[0]) * 1000 if t_us.size else 0
    dt = t_us.astype(np.int64) * 1000 - time_base
    if dt.size and int(dt[-1]) > _MAX_DT_NS:
        raise ValueError(f"{what}: a packet spans at most {_MAX_DT_NS} ns (32-bit dt); split it")
    return time_base, dt.astype(np.uint64)


def encode_mono(events: np.ndarray) -> tuple[bytes, int]:
    """``mono`` payload and the packet's ``time_base`` [ns] for CD events (t in µs)."""
    if events.dtype != CD_DTYPE:
        raise ValueError(f"events must have dtype {CD_DTYPE}")
    if events.size and (events["y"].max() > 0x7FFF or not np.isin(events["p"], (0, 1)).all()):
        raise ValueError("mono carries y <= 32767 and polarity 0/1")
    time_base, dt = _time_fields(events["t"], "mono")
    words = (
        dt
        | (events["x"].astype(np.uint64) << np.uint64(32))
        | (events["y"].astype(np.uint64) << np.uint64(48))
        | (events["p"].astype(np.uint64) << np.uint64(63))
    )
    return words.astype("<u8").tobytes(), time_base


def encode_trigger(triggers: np.ndarray) -> tuple[bytes, int]:
    """``trigger`` payload and the packet's ``time_base`` [ns] for trigger events (t in µs)."""
    if triggers.dtype != TRIGGER_DTYPE:
        raise ValueError(f"triggers must have dtype {TRIGGER_DTYPE}")
    if triggers.size and not np.isin(triggers["p"], (0, 1)).all():
        raise ValueError("trigger edge must be 0 or 1")
    time_base, dt = _time_fields(triggers["t"], "trigger")
    words = (
        dt | (triggers["id"].astype(np.uint64) << np.uint64(48)) | (triggers["p"].astype(np.uint64) << np.uint64(63))
    )
    return words.astype("<u8").tobytes(), time_base
