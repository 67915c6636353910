"""Pick a stateful decoder by the ``encoding`` string of an EventPacket."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from .evt2 import Evt2Decoder
from .evt3 import Evt3Decoder
from .legacy import MonoDecoder, TriggerDecoder
from .libcaer import LibcaerCmpDecoder, LibcaerDecoder
from .payload import DEFAULT_MAX_SPAN_US, Payload
from .types import DecodedEvents, EventDecodeError

MAX_GEOMETRY = 65535  # the widest coordinate any supported encoding carries (16 bits)


class EventDecoder(Protocol):
    """One stream's decoder: feed its packets in order."""

    encoding: str
    width: int
    height: int
    word_bytes: int  # payload lengths must be a multiple of this
    max_span_us: int  # [µs] the most sensor time one call's events span (int64 max: unbounded)

    def decode(self, payload: Payload, time_base: int = 0, until_t_us: int | None = None) -> DecodedEvents: ...

    def reset(self) -> None: ...


_DECODERS: dict[str, type] = {
    "evt3": Evt3Decoder,
    "evt2": Evt2Decoder,
    "libcaer_cmp": LibcaerCmpDecoder,
    "libcaer": LibcaerDecoder,
    "mono": MonoDecoder,
    "trigger": TriggerDecoder,
}


#: How far decoded time may step back [µs] without a ``time_resyncs`` count, per encoding: EVT 3.0
#: TIME_HIGH jitter (10 steps of 4096 µs) plus a TIME_LOW step back (< 4096 µs); EVT 2.0 the 6
#: time bits of an event word; libcaer_cmp a TIME_LOW step back; none for libcaer, mono, trigger.
#: Anything further back is counted: in the call that returns the earlier event, or in a call
#: since the last event was returned (a corrupt time word can end a call, e.g. at ``until_t_us``);
#: the fuzz tests and ``bench/fuzz_decoders.py`` check exactly this.
UNFLAGGED_BACKWARD_US: dict[str, int] = {
    "evt3": 10 * 4096 + 4095,
    "evt2": 63,
    "libcaer_cmp": 4095,
    "libcaer": 0,
    "mono": 0,
    "trigger": 0,
}


def supported_encodings() -> tuple[str, ...]:
    return tuple(_DECODERS)


def make_decoder(encoding: str, width: int, height: int, max_span_us: int | None = DEFAULT_MAX_SPAN_US) -> EventDecoder:
    """A fresh decoder for ``encoding`` and a sensor of ``width`` x ``height`` pixels.

    ``max_span_us`` bounds the sensor time the events of one decode call span (default 1 s, for
    driver packets of ~1 ms; None: unbounded, for arbitrary chunks of a recorded stream). Events
    outside the densest such window are dropped and counted in
    ``DecodedEvents.events_dropped_span``. Raises EventDecodeError for an unknown encoding, a
    geometry outside 1..65535 or a bad ``max_span_us``.
    """
    if not isinstance(encoding, str) or encoding not in _DECODERS:
        raise EventDecodeError(f"unknown event encoding {encoding!r}; supported: {', '.join(supported_encodings())}")
    for name, value in (("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= MAX_GEOMETRY:
            raise EventDecodeError(f"sensor {name} must be an integer in 1..{MAX_GEOMETRY}, got {value!r}")
    return _DECODERS[encoding](int(width), int(height), max_span_us)


def warm_up_decoders() -> float:
    """Run every decoder once on a few zero words, so that the first real packet does not pay numba's
    start-up (its CPU target, then each kernel from the on-disk cache: 1-1.5 s in a fresh process,
    seconds more where the cache must be rebuilt). A node calls it before it subscribes: a stall that
    long at the first packet of a 1 kHz stream overflows any sensor queue. Returns seconds taken."""
    import time

    t0 = time.perf_counter()
    for cls in _DECODERS.values():
        decoder = cls(64, 48, DEFAULT_MAX_SPAN_US)
        try:
            decoder.decode(np.zeros(4 * decoder.word_bytes, np.uint8))
        except EventDecodeError:
            pass  # zero words may mean nothing in an encoding: the kernel ran, which is the point
    return time.perf_counter() - t0
