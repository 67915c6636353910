"""Whole-recording figures: event counts, time span and sum, rate, and decode speed."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np

from .factory import EventDecoder, make_decoder
from .payload import DEFAULT_MAX_SPAN_US
from .sources import Packet
from .types import EMPTY_CD, EMPTY_TRIGGERS, DecodedEvents


@dataclass(frozen=True)
class EventStats:
    on: int  # [count] CD events with p = 1
    off: int  # [count] CD events with p = 0
    trigger_rise: int  # [count] trigger events with p = 1 (EVT 2.0 / 3.0: value 1 = rising edge)
    trigger_fall: int  # [count] trigger events with p = 0
    sum_t_us: int  # [µs] sum of t over all CD and trigger events (a golden checksum)
    first_t_us: int | None  # [µs] earliest event time
    last_t_us: int | None  # [µs] latest event time
    mean_rate_ev_s: float  # [events/s] CD events over the recording's sensor-time span
    decode_mev_s: float  # [million events/s] this run's decoding speed (decode calls only)
    packets: int  # [count]
    skipped_words: int  # [count] words the decoders ignored
    encoding: str
    time_resyncs: int = 0  # [count] sensor-time jumps no wrap explains (DecodedEvents.time_resyncs)
    events_dropped_span: int = 0  # [count] events outside a packet's max_span_us window

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class StreamDecoder:
    """Decoders for one stream's packets, made on first use per encoding and geometry."""

    def __init__(self) -> None:
        self._decoders: dict[tuple[str, int, int], EventDecoder] = {}

    def decoder_for(self, packet: Packet) -> EventDecoder:
        key = (packet.encoding, packet.width, packet.height)
        decoder = self._decoders.get(key)
        if decoder is None:
            # Raw-file chunks (no stamp) are arbitrary cuts of one continuous stream, not driver
            # packets: no span bound. Bag packets keep the decoders' default (1 s).
            span = DEFAULT_MAX_SPAN_US if packet.stamp_ns is not None else None
            decoder = self._decoders[key] = make_decoder(*key, max_span_us=span)
            # Load the compiled kernels now (an empty payload of the same array kind leaves the
            # state alone), so a timed decode measures decoding, not numba's cache.
            decoder.decode(packet.payload[:0], packet.time_base)
        return decoder

    def decode(self, packet: Packet, until_t_us: int | None = None) -> DecodedEvents:
        return self.decoder_for(packet).decode(packet.payload, packet.time_base, until_t_us)


def compute_stats(packets: Iterable[Packet]) -> EventStats:
    stream = StreamDecoder()
    on = off = rise = fall = sum_t = n_packets = skipped = resyncs = dropped = 0
    first: int | None = None
    last: int | None = None
    decode_s = 0.0
    encodings: set[str] = set()
    for packet in packets:
        decoder = stream.decoder_for(packet)
        start = time.perf_counter()
        res = decoder.decode(packet.payload, packet.time_base)
        decode_s += time.perf_counter() - start
        n_packets += 1
        skipped += res.skipped_words
        resyncs += res.time_resyncs
        dropped += res.events_dropped_span
        encodings.add(packet.encoding)
        on_now = int(np.count_nonzero(res.cd["p"] == 1))
        on, off = on + on_now, off + res.cd.size - on_now
        rise_now = int(np.count_nonzero(res.triggers["p"] == 1))
        rise, fall = rise + rise_now, fall + res.triggers.size - rise_now
        for arr in (res.cd, res.triggers):
            if arr.size:
                t = arr["t"]
                sum_t += int(t.sum())
                lo, hi = int(t.min()), int(t.max())
                first = lo if first is None else min(first, lo)
                last = hi if last is None else max(last, hi)
    span_s = (last - first) / 1e6 if first is not None and last is not None and last > first else 0.0
    total = on + off + rise + fall
    return EventStats(
        on=on,
        off=off,
        trigger_rise=rise,
        trigger_fall=fall,
        sum_t_us=sum_t,
        first_t_us=first,
        last_t_us=last,
        mean_rate_ev_s=(on + off) / span_s if span_s else 0.0,
        decode_mev_s=total / decode_s / 1e6 if decode_s > 0 else 0.0,
        packets=n_packets,
        skipped_words=skipped,
        encoding=",".join(sorted(encodings)),
        time_resyncs=resyncs,
        events_dropped_span=dropped,
    )


def decode_all(packets: Iterable[Packet]) -> tuple[np.ndarray, np.ndarray]:
    """All CD and trigger events of a recording, concatenated in stream order."""
    stream = StreamDecoder()
    results = [stream.decode(p) for p in packets]
    cd = np.concatenate([r.cd for r in results]) if results else EMPTY_CD.copy()
    trig = np.concatenate([r.triggers for r in results]) if results else EMPTY_TRIGGERS.copy()
    return cd, trig
