"""The encodings libcaer_driver publishes (iniVation DVS/DAVIS cameras).

``libcaer``: 8 bytes per event, as libcaer's polarity packets hold them: a little-endian uint32
``data`` (bit 0 valid mark, bit 1 polarity, bits 16..2 y, bits 31..17 x, 15 bits each) and an
int32 ``timestamp`` [µs] holding the low 31 bits of sensor time. ``time_base`` [ns] carries the
rest: sensor time = time_base + (timestamp + 2**31 * wraps) * 1000, where a timestamp smaller
than its predecessor in the same packet is one wrap when it is a step forward of at most 4.19 s
across the wrap (only wraps inside a packet are counted; the driver folds earlier ones into
time_base). Any other step back, and any step forward of more than 4.19 s, is an unexplained
jump: counted in ``time_resyncs``, no wrap added (so the stamps after it keep their own value).
Records with a negative stamp are skipped, as are events a packet would put past the time
horizon (counted in ``events_dropped_span``).

``libcaer_cmp``: 16-bit words, code in bits 15..12, time restarting at 0 in every packet:

====  ===========  ============================================================
code  name         payload (bits 11..0)
====  ===========  ============================================================
0     TIME_HIGH    bits 23..12 of the µs offset from time_base
1     TIME_LOW     bits 11..0 of the µs offset
2     ADDR_X       x (10..0) for the events that follow
3     ADDR_Y       y (10..0), polarity (11): one CD event at (current x, y)
4     VECT_BASE_Y  y base (10..0), polarity (11) for vector words
5     VECT_8       8-bit mask: events at (x, base .. base+7), then base += 8
6     VECT_12      12-bit mask: events at (x, base .. base+11), then base += 12
====  ===========  ============================================================

Decoded ``t`` = floor(sensor time in ns / 1000), i.e. µs. A TIME_HIGH below the packet's previous
one (there are no wraps inside a packet) or more than 4.19 s above it is an unexplained jump,
counted in ``time_resyncs`` and taken as written (time restarts with the next packet anyway).
Both decoders bound the sensor time one call's events span by ``max_span_us``.
"""

from __future__ import annotations

import numba
import numpy as np

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
from .records import CD_SIZE, as_cd, put_cd
from .types import CD_DTYPE, EMPTY_TRIGGERS, DecodedEvents

_WRAP_US = 1 << 31
_LIBCAER_RECORD = np.dtype([("data", "<u4"), ("ts", "<i4")])


class _Remainder:
    """Recognises the call that continues a packet a time-sliced decode stopped in.

    Time in these encodings restarts with every packet, so the decoder must know whether a
    payload is a new packet or ``payload[consumed:]`` of the stopped one: it is the latter when
    it has the stopped packet's ``time_base`` and exactly the bytes left over. ``reset()`` drops
    a remainder nobody will decode.
    """

    def __init__(self) -> None:
        self.pending: tuple[int, int] | None = None  # (time_base [ns], bytes left)

    def continues(self, time_base: int, nbytes: int) -> bool:
        return self.pending == (time_base, nbytes)

    def stopped(self, time_base: int, nbytes_left: int) -> None:
        self.pending = (time_base, nbytes_left) if nbytes_left else None


class LibcaerDecoder:
    """``libcaer`` packets; state carries only within a packet (across time-sliced calls)."""

    encoding = "libcaer"
    word_bytes = 8

    def __init__(self, width: int, height: int, max_span_us: int | None = DEFAULT_MAX_SPAN_US) -> None:
        self.width = int(width)
        self.height = int(height)
        self.max_span_us = check_max_span(max_span_us)
        self.reset()

    def reset(self) -> None:
        self._remainder = _Remainder()
        self._wraps = 0
        self._ts_last = 0

    def decode(self, payload: Payload, time_base: int = 0, until_t_us: int | None = None) -> DecodedEvents:
        raw = as_words(payload, "<u8", self.encoding)
        time_base = check_time_base(time_base)
        until = check_until(until_t_us)
        rec = raw.view(_LIBCAER_RECORD)
        fresh = not self._remainder.continues(time_base, raw.nbytes)
        if fresh:
            self._wraps, self._ts_last = 0, 0
        ts = rec["ts"].astype(np.int64)
        valid = ts >= 0  # a negative 31-bit stamp cannot come from the camera
        index = np.flatnonzero(valid)
        tsv = ts[index]
        prev = np.concatenate(([self._ts_last], tsv[:-1]))
        back = tsv < prev
        wrap = back & (tsv + _WRAP_US - prev <= MAX_TIME_JUMP_US)  # from the top of the range to its bottom
        jump = (back & ~wrap) | (tsv - prev > MAX_TIME_JUMP_US)
        if fresh and jump.size:
            jump[0] = False  # a packet's first stamp has no predecessor
        wraps = self._wraps + np.cumsum(wrap)  # at most one per record: t stays far inside int64
        t = time_base // 1000 + tsv + wraps * _WRAP_US
        beyond = t > MAX_T_US  # only from wraps garbage piled up: dropped, counted
        n_beyond = int(np.count_nonzero(beyond))
        beyond_at = index[beyond]  # [records] raw positions of the dropped ones
        if n_beyond:
            keep = ~beyond
            index, tsv, wraps, t, jump = index[keep], tsv[keep], wraps[keep], t[keep], jump[keep]
        late = np.flatnonzero(t >= until)
        stop = int(late[0]) if late.size else t.size
        consumed = int(index[stop]) if stop < t.size else raw.size
        if stop:
            self._wraps, self._ts_last = int(wraps[stop - 1]), int(tsv[stop - 1])
        data = rec["data"][index[:stop]].astype(np.int64)
        x, y = (data >> 17) & 0x7FFF, (data >> 2) & 0x7FFF
        inside = (x < self.width) & (y < self.height)
        cd = np.empty(int(inside.sum()), CD_DTYPE)
        cd["x"], cd["y"], cd["t"] = x[inside], y[inside], t[:stop][inside]
        cd["p"] = (data[inside] >> 1) & 1
        self._remainder.stopped(time_base, (raw.size - consumed) * 8 if stop < t.size else 0)
        n_beyond_kept = int(np.count_nonzero(beyond_at < consumed)) if n_beyond else 0
        skipped = int(consumed - cd.size - n_beyond_kept)
        next_t = int(t[stop]) if stop < t.size else None
        resyncs = int(np.count_nonzero(jump[:stop]))
        t_in = cd["t"]
        t_min, t_max = (int(t_in.min()), int(t_in.max())) if t_in.size else (0, 0)
        cd, _, dropped = clip_span(cd, EMPTY_TRIGGERS, t_min, t_max, self.max_span_us)
        return DecodedEvents(cd, EMPTY_TRIGGERS.copy(), consumed * 8, next_t, skipped, resyncs, dropped + n_beyond_kept)


def encode_libcaer(events: np.ndarray) -> tuple[bytes, int]:
    """One ``libcaer`` packet and its ``time_base`` [ns] for CD events (t in µs, sorted)."""
    if events.dtype != CD_DTYPE:
        raise ValueError(f"events must have dtype {CD_DTYPE}")
    t = events["t"].astype(np.int64)
    if not t.size:
        return b"", 0
    if t[0] < 0 or np.any(np.diff(t) < 0):
        raise ValueError("libcaer: time must be >= 0 and non-decreasing")
    if np.any(np.diff(t) > MAX_TIME_JUMP_US) or events["x"].max() > 0x7FFF or events["y"].max() > 0x7FFF:
        raise ValueError("libcaer: gaps must stay within 2**22 µs (the decoder's jump bound) and x, y below 32768")
    if not np.isin(events["p"], (0, 1)).all():
        raise ValueError("libcaer: polarity must be 0 or 1")
    high = (int(t[0]) // _WRAP_US) * _WRAP_US
    rec = np.empty(t.size, _LIBCAER_RECORD)
    rec["ts"] = (t - high) % _WRAP_US
    rec["data"] = (
        1
        | (events["p"].astype(np.uint32) << 1)
        | (events["y"].astype(np.uint32) << 2)
        | (events["x"].astype(np.uint32) << 17)
    )
    return rec.tobytes(), high * 1000


# ------------------------------------------------------------------------------ libcaer_cmp

_C_X, _C_BASE_Y, _C_POL, _C_HIGH, _C_LOW = range(5)


@numba.njit(cache=True, nogil=True)
def _cmp_kernel(words, state, width, height, base_us, until, out):  # noqa: ANN001, ANN202
    ex = state[_C_X]
    base_y = state[_C_BASE_Y]
    pol = state[_C_POL]
    high = state[_C_HIGH]
    low = state[_C_LOW]
    n = 0
    skipped = 0
    resyncs = 0
    t_min = np.int64(MAX_T_US)
    t_max = np.int64(-1)
    nw = words.shape[0]
    stop = nw
    for i in range(nw):
        w = np.int64(words[i])
        code = w >> 12
        v = w & 0xFFF
        t = base_us + (high | low)
        if code == 3:
            if t >= until:
                stop = i
                break
            ey = v & 0x7FF
            if ex < width and ey < height:
                put_cd(out, n, ex, ey, v >> 11, t)
                n += 1
                t_min = min(t_min, t)
                t_max = max(t_max, t)
            else:
                skipped += 1
        elif code == 2:
            ex = v & 0x7FF
        elif code == 1:
            low = v
        elif code == 0:
            # no wraps inside a packet: a step back, or a jump past MAX_TIME_JUMP_US, is unexplained
            resyncs += (v << 12) < high or (v << 12) - high > MAX_TIME_JUMP_US
            high = v << 12
        elif code == 4:
            base_y = v & 0x7FF
            pol = v >> 11
        elif code == 5 or code == 6:
            nbits = 8 if code == 5 else 12
            mask = v & 0xFF if code == 5 else v
            if mask != 0 and t >= until:
                stop = i
                break
            n0 = n
            for k in range(nbits):
                if (mask >> k) & 1:
                    ey = base_y + k
                    if ex < width and ey < height:
                        put_cd(out, n, ex, ey, pol, t)
                        n += 1
                    else:
                        skipped += 1
            if n > n0:
                t_min = min(t_min, t)
                t_max = max(t_max, t)
            base_y += nbits
        else:
            skipped += 1
    state[_C_X] = ex
    state[_C_BASE_Y] = base_y
    state[_C_POL] = pol
    state[_C_HIGH] = high
    state[_C_LOW] = low
    return n, stop, skipped, resyncs, t_min, t_max


def _cmp_events_per_word() -> np.ndarray:
    words = np.arange(1 << 16, dtype=np.int64)
    code, payload = words >> 12, words & 0xFFF
    bits = np.array([bin(v).count("1") for v in range(1 << 12)], np.uint8)
    table = np.zeros(1 << 16, np.uint8)
    table[code == 3] = 1
    table[code == 5] = bits[payload[code == 5] & 0xFF]
    table[code == 6] = bits[payload[code == 6]]
    return table


_CMP_PER_WORD = _cmp_events_per_word()


@numba.njit(cache=True, nogil=True)
def _cmp_decode(words, state, width, height, base_us, until, table):  # noqa: ANN001, ANN202
    capacity = 0
    for i in range(words.shape[0]):
        capacity += table[words[i]]
    out = np.empty((capacity, CD_SIZE), np.uint8)
    n, stop, skipped, resyncs, t_min, t_max = _cmp_kernel(words, state, width, height, base_us, until, out)
    return out[:n], stop, skipped, resyncs, t_min, t_max


class LibcaerCmpDecoder:
    """``libcaer_cmp`` packets. Time restarts with every packet (a time-sliced call's remainder
    continues it); the current x, vector base and polarity carry across packets as upstream."""

    encoding = "libcaer_cmp"
    word_bytes = 2

    def __init__(self, width: int, height: int, max_span_us: int | None = DEFAULT_MAX_SPAN_US) -> None:
        self.width = int(width)
        self.height = int(height)
        self.max_span_us = check_max_span(max_span_us)
        self._state = np.zeros(5, np.int64)
        self._remainder = _Remainder()

    def reset(self) -> None:
        self._state[:] = 0
        self._remainder = _Remainder()

    def decode(self, payload: Payload, time_base: int = 0, until_t_us: int | None = None) -> DecodedEvents:
        words = as_words(payload, "<u2", self.encoding)
        time_base = check_time_base(time_base)
        base_us = time_base // 1000
        until = check_until(until_t_us)
        if not self._remainder.continues(time_base, words.nbytes):
            self._state[_C_HIGH] = self._state[_C_LOW] = 0
        cd_raw, stop, skipped, resyncs, t_min, t_max = _cmp_decode(
            words, self._state, self.width, self.height, base_us, until, _CMP_PER_WORD
        )
        self._remainder.stopped(time_base, (words.size - stop) * 2)
        next_t = int(base_us + (self._state[_C_HIGH] | self._state[_C_LOW])) if stop < words.size else None
        cd, _, dropped = clip_span(as_cd(cd_raw), EMPTY_TRIGGERS, t_min, t_max, self.max_span_us)
        return DecodedEvents(cd, EMPTY_TRIGGERS.copy(), stop * 2, next_t, int(skipped), int(resyncs), dropped)


@numba.njit(cache=True, nogil=True)
def _cmp_encode_kernel(x, y, p, r, out):  # noqa: ANN001, ANN202
    n = x.shape[0]
    k = 0
    high = 0
    low = 0
    cur_x = -1
    i = 0
    while i < n:
        h = r[i] >> 12
        lo = r[i] & 0xFFF
        if h != high:
            out[k] = h
            k += 1
            high = h
        if lo != low:
            out[k] = 0x1000 | lo
            k += 1
            low = lo
        if x[i] != cur_x:
            out[k] = 0x2000 | x[i]
            k += 1
            cur_x = x[i]
        # Same time, column and polarity with rising y inside 8 rows: one VECT_8.
        e = i + 1
        while e < n and r[e] == r[i] and x[e] == x[i] and p[e] == p[i] and y[e] > y[e - 1] and y[e] < y[i] + 8:
            e += 1
        if e - i >= 3:
            out[k] = 0x4000 | (np.int64(p[i]) << 11) | y[i]
            mask = np.int64(0)  # the shifts below are int64 (numba types it so either way)
            for q in range(i, e):
                mask |= 1 << (np.int64(y[q]) - np.int64(y[i]))
            out[k + 1] = 0x5000 | mask
            k += 2
            i = e
        else:
            out[k] = 0x3000 | (np.int64(p[i]) << 11) | y[i]
            k += 1
            i += 1
    return k


def encode_libcaer_cmp(events: np.ndarray) -> tuple[bytes, int]:
    """One ``libcaer_cmp`` packet and its ``time_base`` [ns] for CD events (t in µs, sorted,
    spanning less than 2**24 µs; x, y <= 2047)."""
    if events.dtype != CD_DTYPE:
        raise ValueError(f"events must have dtype {CD_DTYPE}")
    t = events["t"].astype(np.int64)
    if not t.size:
        return b"", 0
    if t[0] < 0 or np.any(np.diff(t) < 0):
        raise ValueError("libcaer_cmp: time must be >= 0 and non-decreasing")
    if int(t[-1] - t[0]) >= 1 << 24:
        raise ValueError("libcaer_cmp: a packet spans less than 2**24 µs; split it")
    if events["x"].max() > 0x7FF or events["y"].max() > 0x7FF or not np.isin(events["p"], (0, 1)).all():
        raise ValueError("libcaer_cmp: x and y must be <= 2047 and polarity 0 or 1")
    out = np.empty(4 * t.size, np.int64)
    k = _cmp_encode_kernel(
        events["x"].astype(np.int64), events["y"].astype(np.int64), events["p"].astype(np.int64), t - t[0], out
    )
    return out[:k].astype("<u2").tobytes(), int(t[0]) * 1000
