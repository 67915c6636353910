"""Prophesee EVT 3.0: stateful decoder and encoder.

EVT 3.0 is a stream of 16-bit little-endian words, the type in the top 4 bits:

====  ============  =====================================================================
code  name          payload (bits 11..0)
====  ============  =====================================================================
0x0   ADDR_Y        y (10..0), system type (11)
0x2   ADDR_X        x (10..0), polarity (11): one CD event at (x, current y, current time)
0x3   VECT_BASE_X   x base (10..0), polarity (11) for the vector words that follow
0x4   VECT_12       12-bit mask: events at base .. base+11, then base += 12
0x5   VECT_8        8-bit mask (7..0): events at base .. base+7, then base += 8
0x6   TIME_LOW      low 12 bits of the µs time stamp
0x7   CONTINUED_4   payload of a preceding OTHERS word (ignored)
0x8   TIME_HIGH     high 12 bits of the 24-bit µs time stamp
0xA   EXT_TRIGGER   value (0: 0 falling, 1 rising edge), channel id (11..8)
0xE   OTHERS        monitoring sub-types (ignored)
0xF   CONTINUED_12  payload of a preceding OTHERS word (ignored)
====  ============  =====================================================================

The 24-bit time wraps every 2**24 µs (16.78 s). The decoder counts wraps across packets, so
decoded times are one monotonic int64 axis. A TIME_HIGH is followed (see :mod:`.clock`) when a
step from the current time explains it: forward by at most 1024 steps of 4096 µs (4.19 s; a wrap
when it lands below the current value, i.e. only from the top of the range to its bottom), or
back by at most 10 steps (sensor jitter, as event_camera_codecs treats it: time then goes back by
up to 41 ms, unflagged). Any other TIME_HIGH is an unexplained jump (one flipped bit): counted in
``time_resyncs``, placed in the 16.8 s period nearest the last explained time, and the next
TIME_HIGH a step from that time explains resynchronises the stream (no shift is carried).
Words before the first TIME_HIGH followed by a TIME_LOW carry no valid time and are skipped, as
are events outside the sensor geometry and reserved codes (counted in ``skipped_words``).
``time_base`` plays no part in EVT 3.0 time (the drivers leave it undefined for this encoding),
but it is validated like every decoder's. The events of one call span at most ``max_span_us``
(see :func:`.payload.clip_span`).
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

ENCODING = "evt3"
MAX_COORD = 2047  # 11-bit x and y
ROLLOVER_US = 1 << 24
_JITTER_US = 10 << 12  # TIME_HIGH steps back (10) that count as jitter [µs]
_HIGH_HORIZON = MAX_T_US - ROLLOVER_US  # the largest TIME_HIGH time followed (t stays <= MAX_T_US)
# Encoder: consecutive TIME_HIGH words never jump more than this many 4096-µs steps forward, so
# every wrap is a clear step back and long silences still decode to the right time.
_MAX_HIGH_JUMP = 1024

# Decoder state slots (one int64 array so the kernel can update it in place). _S_TRUSTED: the
# last TIME_HIGH time a step explained (see .clock).
_S_HIGH, _S_LOW, _S_Y, _S_BASE_X, _S_POL, _S_VALID, _S_HIGH_SEEN, _S_TRUSTED = range(8)
_STATE_SIZE = 8


def _events_per_word_table() -> np.ndarray:
    """Upper bound of CD events each 16-bit word can yield (output sizing)."""
    words = np.arange(1 << 16, dtype=np.uint32)
    code, payload = words >> 12, words & 0xFFF
    bits12 = np.unpackbits(payload.astype(">u2").view(np.uint8).reshape(-1, 2), axis=1).sum(axis=1)
    bits8 = np.unpackbits((payload & 0xFF).astype(np.uint8)[:, None], axis=1).sum(axis=1)
    table = np.zeros(1 << 16, np.uint8)
    table[code == 0x2] = 1
    table[code == 0x4] = bits12[code == 0x4]
    table[code == 0x5] = bits8[code == 0x5]
    return table


_CD_PER_WORD = _events_per_word_table()


@numba.njit(cache=True, nogil=True)
def _count_upper_bound(words: np.ndarray, table: np.ndarray) -> tuple[int, int]:
    n_cd = 0
    n_trig = 0
    for i in range(words.shape[0]):
        w = words[i]
        n_cd += table[w]
        if (w >> 12) == 0xA:
            n_trig += 1
    return n_cd, n_trig


@numba.njit(cache=True, nogil=True)
def _decode_kernel(words, state, width, height, until, out_cd, out_trig):  # noqa: ANN001, ANN202
    high = state[_S_HIGH]
    trusted = state[_S_TRUSTED]
    low = state[_S_LOW]
    y = state[_S_Y]
    base_x = state[_S_BASE_X]
    pol = state[_S_POL]
    valid = state[_S_VALID]
    high_seen = state[_S_HIGH_SEEN]
    n = 0
    m = 0
    skipped = 0
    resyncs = 0
    t_min = np.int64(MAX_T_US)
    t_max = np.int64(-1)
    nw = words.shape[0]
    stop = nw
    i = 0
    # No valid time yet: only time words count; everything else is dropped.
    while valid == 0 and i < nw:
        w = np.int64(words[i])
        code = w >> 12
        if code == 0x8:
            if high_seen:
                high, trusted, r = follow_time_high(
                    (w & 0xFFF) << 12, high, trusted, ROLLOVER_US, _JITTER_US, MAX_TIME_JUMP_US, _HIGH_HORIZON
                )
                resyncs += r
            else:
                high = (w & 0xFFF) << 12
                trusted = high
            high_seen = 1
        elif code == 0x6:
            low = w & 0xFFF
            if high_seen:
                valid = 1
        else:
            skipped += 1
        i += 1
    # Time and row updates are branch-free (selects): their order in the stream is irregular.
    # Only event words branch, so nothing is stored for the two thirds of words that are not.
    while i < nw:
        w = np.int64(words[i])
        code = w >> 12
        v = w & 0xFFF
        y = (v & 0x7FF) if code == 0x0 else y
        low = v if code == 0x6 else low
        # A TIME_HIGH repeating the current one or one step on (wrap included), on the trusted
        # timeline, is all a sensor writes: a select, like the row and TIME_LOW. Any other goes
        # through follow_time_high (a branch the real stream never takes).
        step = (v - ((high >> 12) & 0xFFF)) & 0xFFF
        fast = (code == 0x8) & (step <= 1) & (high == trusted) & (high < _HIGH_HORIZON)
        high = high + (step << 12) if fast else high
        trusted = high if fast else trusted
        if (code == 0x8) & (not fast):
            high, trusted, r = follow_time_high(
                v << 12, high, trusted, ROLLOVER_US, _JITTER_US, MAX_TIME_JUMP_US, _HIGH_HORIZON
            )
            resyncs += r
            i += 1
            continue
        if code == 0x2:
            t = high | low
            if t >= until:
                stop = i
                break
            x = v & 0x7FF
            if (x < width) & (y < height):
                put_cd(out_cd, n, x, y, v >> 11, t)
                n += 1
                t_min = min(t_min, t)
                t_max = max(t_max, t)
            else:
                skipped += 1
            i += 1
            continue
        if code == 0x0 or code == 0x6 or code == 0x8:
            i += 1
            continue
        t = high | low
        if t >= until and (code == 0xA or ((code == 0x4 or code == 0x5) and (v & 0xFF if code == 0x5 else v) != 0)):
            stop = i
            break
        if code == 0x3:
            base_x = v & 0x7FF
            pol = v >> 11
        elif code == 0x4 or code == 0x5:
            nbits = 12 if code == 0x4 else 8
            mask = v if code == 0x4 else v & 0xFF
            if mask != 0:
                if y < height:
                    n0 = n
                    for k in range(nbits):
                        if (mask >> k) & 1:
                            ex = base_x + k
                            if ex < width:
                                put_cd(out_cd, n, ex, y, pol, t)
                                n += 1
                    if n > n0:
                        t_min = min(t_min, t)
                        t_max = max(t_max, t)
                else:
                    skipped += 1
            base_x += nbits
        elif code == 0xA:
            put_trigger(out_trig, m, (v >> 8) & 0xF, v & 1, t)
            m += 1
            t_min = min(t_min, t)
            t_max = max(t_max, t)
        elif code == 0x7 or code == 0xE or code == 0xF:
            pass  # monitoring words and their continuations carry no events
        else:
            skipped += 1
        i += 1
    state[_S_HIGH] = high
    state[_S_LOW] = low
    state[_S_Y] = y
    state[_S_BASE_X] = base_x
    state[_S_POL] = pol
    state[_S_VALID] = valid
    state[_S_HIGH_SEEN] = high_seen
    state[_S_TRUSTED] = trusted
    return n, m, stop, skipped, resyncs, t_min, t_max


@numba.njit(cache=True, nogil=True)
def _decode(words, state, width, height, until, table):  # noqa: ANN001, ANN202
    """Size the outputs (by word count), decode, and return them trimmed: one compiled call per packet."""
    n_cd, n_trig = _count_upper_bound(words, table)
    out_cd = np.empty((n_cd, CD_SIZE), np.uint8)
    out_trig = np.empty((n_trig, TRIGGER_SIZE), np.uint8)
    n, m, stop, skipped, resyncs, t_min, t_max = _decode_kernel(words, state, width, height, until, out_cd, out_trig)
    return out_cd[:n], out_trig[:m], stop, skipped, resyncs, t_min, t_max


class Evt3Decoder:
    """Stateful EVT 3.0 decoder: feed the packets of one stream in order.

    Time state (TIME_HIGH with its wrap count, TIME_LOW), the current row and the vector base
    carry from one packet to the next, as the camera's word stream does. ``max_span_us`` bounds
    the sensor time one call's events span (None: unbounded, e.g. for arbitrary file chunks).

    After garbage the stream's next packets decode to their exact x, y, p and time within the
    16.8 s period; which period (the wrap count) is the stream's own state, which garbage time
    words change like any others (a jump no wrap explains is counted in ``time_resyncs``).
    ``reset()`` returns to period 0, where a fresh stream starts.
    """

    encoding = ENCODING
    word_bytes = 2

    def __init__(self, width: int, height: int, max_span_us: int | None = DEFAULT_MAX_SPAN_US) -> None:
        self.width = int(width)
        self.height = int(height)
        self.max_span_us = check_max_span(max_span_us)
        self._state = np.zeros(_STATE_SIZE, np.int64)

    def reset(self) -> None:
        """Forget all stream state (e.g. the recording looped or the camera restarted)."""
        self._state[:] = 0

    @property
    def has_valid_time(self) -> bool:
        return bool(self._state[_S_VALID])

    def decode(self, payload: Payload, time_base: int = 0, until_t_us: int | None = None) -> DecodedEvents:
        """Decode the events of one packet with ``t < until_t_us`` (all when None)."""
        words = as_words(payload, "<u2", ENCODING)
        check_time_base(time_base)
        until = check_until(until_t_us)
        cd_raw, trig_raw, stop, skipped, resyncs, t_min, t_max = _decode(
            words, self._state, self.width, self.height, until, _CD_PER_WORD
        )
        next_t = None
        if stop < words.shape[0]:
            next_t = int((self._state[_S_HIGH]) | self._state[_S_LOW])
        cd, trig, dropped = as_cd(cd_raw), as_triggers(trig_raw), 0
        if t_max - t_min > self.max_span_us:
            cd, trig, dropped = clip_span(cd, trig, t_min, t_max, self.max_span_us)
        return DecodedEvents(cd, trig, stop * 2, next_t, skipped, resyncs, dropped)


# --------------------------------------------------------------------------------- encoder

# Encoder state: the decoder's view of the stream so far (time high/low, row, vector base and
# polarity; -1 where nothing was written yet) and the newest time encoded.
_E_HIGH, _E_LOW, _E_Y, _E_STARTED, _E_LAST_T, _E_VEC_BASE, _E_VEC_POL = range(7)
_ENC_STATE_SIZE = 7


@numba.njit(cache=True, inline="always")
def _emit_time(out, k, t, st):  # noqa: ANN001, ANN202
    """Words that bring the decoder's time to ``t``; returns the new write index."""
    target_high = t >> 12
    if st[_E_STARTED] == 0 or target_high != st[_E_HIGH]:
        cur = st[_E_HIGH] if st[_E_STARTED] == 1 else (target_high if target_high < 4096 else 0)
        if st[_E_STARTED] == 0:
            out[k] = 0x8000 | (cur & 0xFFF)
            k += 1
        while cur < target_high:
            cur = min(target_high, cur + _MAX_HIGH_JUMP)
            out[k] = 0x8000 | (cur & 0xFFF)
            k += 1
        st[_E_HIGH] = target_high
        st[_E_VEC_BASE] = -1
    low = t & 0xFFF
    if st[_E_STARTED] == 0 or low != st[_E_LOW]:
        out[k] = 0x6000 | low
        k += 1
        st[_E_LOW] = low
        st[_E_VEC_BASE] = -1
    st[_E_STARTED] = 1
    return k


@numba.njit(cache=True, nogil=True)
def _encode_kernel(x, y, p, t, gid, gp, gt, st, out):  # noqa: ANN001, ANN202
    n = x.shape[0]
    m = gid.shape[0]
    cap = out.shape[0]
    i = 0
    j = 0
    k = 0
    while i < n or j < m:
        use_trigger = j < m and (i >= n or gt[j] < t[i])
        tt = gt[j] if use_trigger else t[i]
        if st[_E_STARTED] == 1:
            steps = (tt >> 12) - st[_E_HIGH]
        else:
            steps = tt >> 12
        if steps // _MAX_HIGH_JUMP + 6 > cap - k:  # time words + row + vector base + event word
            return -1
        k = _emit_time(out, k, tt, st)
        if use_trigger:
            out[k] = 0xA000 | (np.int64(gid[j]) << 8) | np.int64(gp[j])
            k += 1
            j += 1
            continue
        yy = np.int64(y[i])
        pp = np.int64(p[i])
        # A run of same-time, same-row, same-polarity events with rising x inside 12 columns
        # becomes one vector word, as the sensor writes them.
        e = i + 1
        while e < n and t[e] == tt and y[e] == y[i] and p[e] == p[i] and x[e] > x[e - 1] and x[e] < x[i] + 12:
            e += 1
        if yy != st[_E_Y]:
            out[k] = yy
            k += 1
            st[_E_Y] = yy
            st[_E_VEC_BASE] = -1
        if e - i >= 3:
            base = st[_E_VEC_BASE]
            # Continue the previous vector (the decoder's base advanced by 12) when the run
            # starts inside the next 12 columns with the same polarity.
            if not (base >= 0 and st[_E_VEC_POL] == pp and x[i] >= base and x[e - 1] < base + 12):
                base = np.int64(x[i])
                out[k] = 0x3000 | (pp << 11) | base
                k += 1
            mask = np.int64(0)
            for q in range(i, e):
                mask |= np.int64(1) << (np.int64(x[q]) - base)
            if mask < 256:
                out[k] = 0x5000 | mask
                st[_E_VEC_BASE] = base + 8
            else:
                out[k] = 0x4000 | mask
                st[_E_VEC_BASE] = base + 12
            st[_E_VEC_POL] = pp
            k += 1
            i = e
        else:
            out[k] = 0x2000 | (pp << 11) | np.int64(x[i])
            k += 1
            i += 1
    return k


class Evt3Encoder:
    """Stateful EVT 3.0 encoder: successive ``encode`` calls write one continuous word stream,
    so packets cut anywhere decode (with one Evt3Decoder) to the events that went in."""

    encoding = ENCODING

    def __init__(self) -> None:
        self._state = np.zeros(_ENC_STATE_SIZE, np.int64)
        self._state[_E_Y] = -1
        self._state[_E_LAST_T] = -1
        self._state[_E_VEC_BASE] = -1

    @property
    def last_t_us(self) -> int | None:
        """Time of the newest event encoded so far (None before the first)."""
        last = int(self._state[_E_LAST_T])
        return None if last < 0 else last

    def encode(self, events: np.ndarray, triggers: np.ndarray | None = None) -> bytes:
        """Encode CD events (CD_DTYPE, t non-decreasing) and optional triggers (TRIGGER_DTYPE).

        Raises ValueError for events EVT 3.0 cannot carry (coordinates above 2047, polarity or
        edge not 0/1, trigger id above 15, negative or decreasing time).
        """
        cd = _checked(events, CD_DTYPE, "events")
        trig = _checked(np.zeros(0, TRIGGER_DTYPE) if triggers is None else triggers, TRIGGER_DTYPE, "triggers")
        if cd.size and (cd["x"].max() > MAX_COORD or cd["y"].max() > MAX_COORD):
            raise ValueError(f"EVT 3.0 addresses 11 bits: x and y must be <= {MAX_COORD}")
        if cd.size and not np.isin(cd["p"], (0, 1)).all():
            raise ValueError("CD polarity must be 0 or 1")
        if trig.size and (not np.isin(trig["p"], (0, 1)).all() or trig["id"].max() > 15):
            raise ValueError("trigger edge must be 0 or 1 and trigger id <= 15")
        first = min(int(a["t"][0]) for a in (cd, trig) if a.size) if (cd.size or trig.size) else None
        if first is None:
            return b""
        if first < max(0, int(self._state[_E_LAST_T])):
            raise ValueError(f"event time {first} µs is before the last encoded time {int(self._state[_E_LAST_T])} µs")
        steps = sum(int(a["t"][-1]) >> 12 for a in (cd, trig) if a.size) // _MAX_HIGH_JUMP
        cap = 4 * (cd.size + trig.size) + 2 * steps + 64
        while True:
            saved = self._state.copy()
            out = np.empty(cap, np.uint16)
            k = _encode_kernel(cd["x"], cd["y"], cd["p"], cd["t"], trig["id"], trig["p"], trig["t"], self._state, out)
            if k >= 0:
                break
            self._state[:] = saved
            cap *= 2
        self._state[_E_LAST_T] = max(int(a["t"][-1]) for a in (cd, trig) if a.size)
        return out[:k].astype("<u2").tobytes()


def _checked(arr: np.ndarray, dtype: np.dtype, what: str) -> np.ndarray:
    if not isinstance(arr, np.ndarray) or arr.ndim != 1 or arr.dtype.names is None:
        raise ValueError(f"{what} must be a 1-D structured array with dtype {dtype}")
    names = dtype.names
    if names is None:
        raise TypeError(f"{dtype} is not a structured dtype")
    missing = [name for name in names if name not in arr.dtype.names]
    if missing:
        raise ValueError(f"{what} lack fields {missing} (dtype must be {dtype})")
    out = np.empty(arr.shape[0], dtype)
    for name in names:
        out[name] = arr[name]
    if out.size and out["t"][0] < 0:
        raise ValueError(f"{what}: time must be >= 0 µs")
    if out.size > 1 and (np.diff(out["t"]) < 0).any():
        raise ValueError(f"{what}: time must be non-decreasing")
    return out


def encode_evt3(events: np.ndarray, triggers: np.ndarray | None = None, state: Evt3Encoder | None = None) -> bytes:
    """EVT 3.0 bytes for ``events`` (and ``triggers``); pass ``state`` to continue a stream."""
    return (state if state is not None else Evt3Encoder()).encode(events, triggers)
