"""Prophesee EVT 2.0 (Metavision ``.raw`` files of older sensors): 32-bit little-endian words,
type in bits 31..28:

====  ==============  ===========================================================
type  name            payload
====  ==============  ===========================================================
0x0   CD_OFF          t low (27..22, 6 bits), x (21..11), y (10..0)
0x1   CD_ON           as CD_OFF
0x8   EVT_TIME_HIGH   bits 33..6 of the µs time stamp (27..0)
0xA   EXT_TRIGGER     t low (27..22), channel id (12..8), value (0)
0xE   OTHERS          ignored (as are 0xF CONTINUED words)
====  ==============  ===========================================================

The 34-bit time wraps every 2**34 µs (4.8 h); the wrap count carries across calls. A TIME_HIGH is
followed (see :mod:`.clock`) when a step forward of at most 4.19 s from the current time explains
it (a wrap when it lands below the current value: only from the top of the range to its bottom).
Any other TIME_HIGH (a step back, a jump forward) is unexplained: counted in ``time_resyncs``,
placed in the 4.8 h period nearest the last explained time, and the next TIME_HIGH a step from
that time explains resynchronises the stream. EVT 2.0 has no jitter allowance; within one
TIME_HIGH the 6 low bits of successive events may go back by up to 63 µs. Events before the first
TIME_HIGH are skipped. The events of one call span at most ``max_span_us``.
"""

from __future__ import annotations

import numba
import numpy as np

from .clock import follow_time_high
from .payload import (
    DEFAULT_MAX_SPAN_US,
    MAX_T_US,
    MAX_TIME_JUMP_US,
    Payload,
    as_words,
    check_max_span,
    check_time_base,
    check_until,
    clip_span,
)
from .records import CD_SIZE, TRIGGER_SIZE, as_cd, as_triggers, put_cd, put_trigger
from .types import CD_DTYPE, TRIGGER_DTYPE, DecodedEvents

ENCODING = "evt2"
_WRAP_US = np.int64(1) << 34
_HIGH_HORIZON = MAX_T_US - (1 << 34)  # the largest TIME_HIGH time followed (t stays <= MAX_T_US)
_S_HIGH, _S_VALID, _S_TRUSTED = 0, 1, 2


@numba.njit(cache=True, nogil=True)
def _kernel(words, state, width, height, until, out_cd, out_trig):  # noqa: ANN001, ANN202
    high = state[_S_HIGH]
    valid = state[_S_VALID]
    trusted = state[_S_TRUSTED]
    n = 0
    m = 0
    skipped = 0
    resyncs = 0
    t_min = np.int64(MAX_T_US)
    t_max = np.int64(-1)
    nw = words.shape[0]
    stop = nw
    for i in range(nw):
        w = np.int64(words[i])
        kind = w >> 28
        if kind == 0x8:
            new_high = (w & 0xFFFFFFF) << 6
            if valid == 1:
                high, trusted, r = follow_time_high(
                    new_high, high, trusted, _WRAP_US, 0, MAX_TIME_JUMP_US, _HIGH_HORIZON
                )
                resyncs += r
            else:
                high = new_high
                trusted = high
            valid = 1
            continue
        if kind == 0xE or kind == 0xF:
            continue
        if valid == 0 or not (kind == 0x0 or kind == 0x1 or kind == 0xA):
            skipped += 1
            continue
        t = high | ((w >> 22) & 0x3F)
        if t >= until:
            stop = i
            break
        if kind == 0xA:
            put_trigger(out_trig, m, (w >> 8) & 0x1F, w & 1, t)
            m += 1
        else:
            x = (w >> 11) & 0x7FF
            y = w & 0x7FF
            if x < width and y < height:
                put_cd(out_cd, n, x, y, kind, t)
                n += 1
            else:
                skipped += 1
                continue
        t_min = min(t_min, t)
        t_max = max(t_max, t)
    state[_S_HIGH] = high
    state[_S_VALID] = valid
    state[_S_TRUSTED] = trusted
    return n, m, stop, skipped, resyncs, t_min, t_max


@numba.njit(cache=True, nogil=True)
def _decode(words, state, width, height, until):  # noqa: ANN001, ANN202
    n_cd = 0
    n_trig = 0
    for i in range(words.shape[0]):
        kind = words[i] >> 28
        n_cd += kind <= 1
        n_trig += kind == 0xA
    out_cd = np.empty((n_cd, CD_SIZE), np.uint8)
    out_trig = np.empty((n_trig, TRIGGER_SIZE), np.uint8)
    n, m, stop, skipped, resyncs, t_min, t_max = _kernel(words, state, width, height, until, out_cd, out_trig)
    return out_cd[:n], out_trig[:m], stop, skipped, resyncs, t_min, t_max


class Evt2Decoder:
    """Stateful EVT 2.0 decoder (time high and its wrap count carry across calls).

    After garbage, later packets decode to their exact x, y, p and time within the 4.8 h period;
    the period (wrap count) is stream state garbage can change (counted in ``time_resyncs``);
    ``reset()`` returns to a fresh stream."""

    encoding = ENCODING
    word_bytes = 4

    def __init__(self, width: int, height: int, max_span_us: int | None = DEFAULT_MAX_SPAN_US) -> None:
        self.width = int(width)
        self.height = int(height)
        self.max_span_us = check_max_span(max_span_us)
        self._state = np.zeros(3, np.int64)

    def reset(self) -> None:
        self._state[:] = 0

    def decode(self, payload: Payload, time_base: int = 0, until_t_us: int | None = None) -> DecodedEvents:
        words = as_words(payload, "<u4", ENCODING)
        check_time_base(time_base)
        until = check_until(until_t_us)
        cd_raw, trig_raw, stop, skipped, resyncs, t_min, t_max = _decode(
            words, self._state, self.width, self.height, until
        )
        next_t = None
        if stop < words.size:
            next_t = int(self._state[_S_HIGH] | ((int(words[stop]) >> 22) & 0x3F))
        cd, trig, dropped = clip_span(as_cd(cd_raw), as_triggers(trig_raw), t_min, t_max, self.max_span_us)
        return DecodedEvents(cd, trig, stop * 4, next_t, int(skipped), int(resyncs), dropped)


def encode_evt2(events: np.ndarray, triggers: np.ndarray | None = None) -> bytes:
    """(For tests and fixtures.) EVT 2.0 words for CD events (and triggers), t non-decreasing µs; one TIME_HIGH per
    change of t >> 6, and intermediate ones so that no two are more than 4.19 s apart (the decoder
    follows only such steps, wraps included: a stream from time 0 to t holds about t / 4.19 s of them)."""
    trig = np.zeros(0, TRIGGER_DTYPE) if triggers is None else triggers
    if events.dtype != CD_DTYPE or trig.dtype != TRIGGER_DTYPE:
        raise ValueError("events must be CD_DTYPE and triggers TRIGGER_DTYPE")
    t = np.concatenate([events["t"], trig["t"]]).astype(np.int64)
    order = np.argsort(t, kind="stable")
    t = t[order]
    if t.size and (t[0] < 0 or np.any(np.diff(events["t"]) < 0) or np.any(np.diff(trig["t"]) < 0)):
        raise ValueError("evt2: time must be >= 0 and non-decreasing")
    if events.size and (events["x"].max() > 2047 or events["y"].max() > 2047 or not np.isin(events["p"], (0, 1)).all()):
        raise ValueError("evt2: x, y <= 2047 and polarity 0/1")
    if trig.size and (trig["id"].max() > 31 or not np.isin(trig["p"], (0, 1)).all()):
        raise ValueError("evt2: trigger id <= 31 and edge 0/1")
    is_cd = order < events.size
    body = np.empty(t.size, np.uint32)
    cd_idx = order[is_cd]
    body[is_cd] = (
        (events["p"][cd_idx].astype(np.uint32) << 28)
        | (events["x"][cd_idx].astype(np.uint32) << 11)
        | events["y"][cd_idx].astype(np.uint32)
    )
    tr_idx = order[~is_cd] - events.size
    body[~is_cd] = (
        (np.uint32(0xA) << 28) | (trig["id"][tr_idx].astype(np.uint32) << 8) | trig["p"][tr_idx].astype(np.uint32)
    )
    body |= (t & 0x3F).astype(np.uint32) << 22
    high = t >> 6
    # a TIME_HIGH word before the first event and wherever t >> 6 changes; longer gaps (and the
    # climb from time 0 to a first event past the first wrap) get intermediate TIME_HIGH words.
    step = MAX_TIME_JUMP_US >> 6  # [TIME_HIGH units]
    new_high = np.ones(t.size, bool)
    new_high[1:] = high[1:] != high[:-1]
    out = []
    prev = None
    for start, stop_ in zip(np.flatnonzero(new_high), [*np.flatnonzero(new_high)[1:], t.size]):
        h = int(high[start])
        if prev is None and h >= 1 << 28:
            prev = 0  # start the wrap count from time 0
            out.append(np.array([0x8 << 28], np.uint32))
        if prev is not None and h - prev > step:
            mids = np.arange(prev + step, h, step, dtype=np.int64)
            out.append(((np.int64(0x8) << 28) | (mids & 0xFFFFFFF)).astype(np.uint32))
        out.append(np.array([(0x8 << 28) | (h & 0xFFFFFFF)], np.uint32))
        out.append(body[start:stop_])
        prev = h
    return np.concatenate(out).astype("<u4").tobytes() if out else b""
