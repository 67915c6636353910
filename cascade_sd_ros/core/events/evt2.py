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

The 34-bit time wraps every 2**34 µs (4.8 h); a smaller TIME_HIGH than the last one is counted
as a wrap and carried across calls. Events before the first TIME_HIGH are skipped.
"""
from __future__ import annotations

import numba
import numpy as np

from .payload import Payload, as_words, check_time_base, check_until
from .records import CD_SIZE, TRIGGER_SIZE, as_cd, as_triggers, put_cd, put_trigger
from .types import CD_DTYPE, TRIGGER_DTYPE, DecodedEvents

ENCODING = "evt2"
_WRAP_US = np.int64(1) << 34
_S_HIGH, _S_VALID = 0, 1


@numba.njit(cache=True, nogil=True)
def _kernel(words, state, width, height, until, out_cd, out_trig):  # noqa: ANN001, ANN202
    high = state[_S_HIGH]
    valid = state[_S_VALID]
    n = 0
    m = 0
    skipped = 0
    nw = words.shape[0]
    stop = nw
    for i in range(nw):
        w = np.int64(words[i])
        kind = w >> 28
        if kind == 0x8:
            new_high = (w & 0xFFFFFFF) << 6
            if valid == 1 and new_high < (high & (_WRAP_US - 1)):
                high += _WRAP_US
            high = (high & ~(_WRAP_US - 1)) | new_high
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
    state[_S_HIGH] = high
    state[_S_VALID] = valid
    return n, m, stop, skipped


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
    n, m, stop, skipped = _kernel(words, state, width, height, until, out_cd, out_trig)
    return out_cd[:n], out_trig[:m], stop, skipped


class Evt2Decoder:
    """Stateful EVT 2.0 decoder (time high and its wrap count carry across calls)."""

    encoding = ENCODING
    word_bytes = 4

    def __init__(self, width: int, height: int) -> None:
        self.width = int(width)
        self.height = int(height)
        self._state = np.zeros(2, np.int64)

    def reset(self) -> None:
        self._state[:] = 0

    def decode(self, payload: Payload, time_base: int = 0, until_t_us: int | None = None) -> DecodedEvents:
        words = as_words(payload, "<u4", ENCODING)
        check_time_base(time_base)
        until = check_until(until_t_us)
        cd_raw, trig_raw, stop, skipped = _decode(words, self._state, self.width, self.height, until)
        next_t = None
        if stop < words.size:
            next_t = int(self._state[_S_HIGH] | ((int(words[stop]) >> 22) & 0x3F))
        return DecodedEvents(as_cd(cd_raw), as_triggers(trig_raw), stop * 4, next_t, int(skipped))


def encode_evt2(events: np.ndarray, triggers: np.ndarray | None = None) -> bytes:
    """(For tests and fixtures.) EVT 2.0 words for CD events (and triggers), t non-decreasing µs; one TIME_HIGH per
    change of t >> 6 (the decoder counts a wrap when TIME_HIGH goes back)."""
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
    body[is_cd] = ((events["p"][cd_idx].astype(np.uint32) << 28) | (events["x"][cd_idx].astype(np.uint32) << 11)
                   | events["y"][cd_idx].astype(np.uint32))
    tr_idx = order[~is_cd] - events.size
    body[~is_cd] = (np.uint32(0xA) << 28) | (trig["id"][tr_idx].astype(np.uint32) << 8) | trig["p"][tr_idx].astype(np.uint32)
    body |= ((t & 0x3F).astype(np.uint32) << 22)
    high = t >> 6
    # a TIME_HIGH word before the first event and wherever t >> 6 changes; gaps of a whole
    # wrap or more get an intermediate TIME_HIGH so the wrap count stays right.
    new_high = np.ones(t.size, bool)
    new_high[1:] = high[1:] != high[:-1]
    out = []
    prev = None
    for start, stop_ in zip(np.flatnonzero(new_high), [*np.flatnonzero(new_high)[1:], t.size]):
        h = int(high[start])
        if prev is None and h >= 1 << 27:
            out.append(np.array([0x8 << 28], np.uint32))  # start the wrap count from time 0
            prev = 0
        if prev is not None:
            for mid in range(prev + (1 << 27), h, 1 << 27):
                out.append(np.array([(0x8 << 28) | (mid & 0xFFFFFFF)], np.uint32))
        out.append(np.array([(0x8 << 28) | (h & 0xFFFFFFF)], np.uint32))
        out.append(body[start:stop_])
        prev = h
    return np.concatenate(out).astype("<u4").tobytes() if out else b""
