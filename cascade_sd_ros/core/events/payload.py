"""Turn a decoder's input (bytes-like or a uint8 array) into a word view, validated; and the
bounds every decoder keeps sensor time inside.

Time bounds (all decoders):

* ``time_base`` [ns] must be an integer in ``0 ..`` :data:`MAX_TIME_BASE_NS` (2**62 ns, 146 years:
  any clock counted from camera power-up or from the Unix epoch fits, 2026 is 1.8e18 ns). The bound
  leaves room for the largest in-packet offset any encoding adds (mono/trigger: 2**32 ns;
  libcaer_cmp: 2**24 µs) in int64 nanoseconds, and in µs far below :data:`MAX_T_US`.
* Decoded ``t`` [µs] is always in ``0 ..`` :data:`MAX_T_US` (2**53 µs, 285 years): ``t * 1000`` (ns)
  fits int64 with 2.2e17 ns to spare for a clock offset, and float64 holds every such t exactly.
  Stateful decoders refuse a wrap that would pass it (counted as a time resync instead).
* ``until_t_us`` must fit int64 (None: no limit); values above MAX_T_US act as no limit.
* ``max_span_us`` (decoder setting, default :data:`DEFAULT_MAX_SPAN_US` = 1 s): the events one
  decode call returns lie within one window of that much sensor time (see :func:`clip_span`).
"""

from __future__ import annotations

import numpy as np

from .types import EventDecodeError

Payload = bytes | bytearray | memoryview | np.ndarray
INT64_MAX = int(np.iinfo(np.int64).max)
INT64_MIN = int(np.iinfo(np.int64).min)
NO_LIMIT = INT64_MAX
#: Largest accepted ``time_base`` [ns]: 2**62 ns (146 years).
MAX_TIME_BASE_NS = 1 << 62
#: Latest sensor time [µs] a decoder returns: 2**53 µs (285 years); ``t * 1000`` fits int64.
MAX_T_US = 1 << 53
#: Default bound on the sensor time one decode call's events span [µs]: 1 s. Driver packets hold
#: about 1 ms (metavision_driver and libcaer_driver send at ``event_message_time_threshold`` =
#: 1 ms); a packet spanning more than a second carries corrupt time words.
DEFAULT_MAX_SPAN_US = 1_000_000
#: A TIME_HIGH (evt3/evt2) or time (libcaer, libcaer_cmp) step forward larger than this [µs] is not
#: explained by elapsed time: 2**22 µs = 4.19 s (our EVT 3.0 encoder never steps further; a real
#: sensor steps 4096 µs at a time). A wrap counts only when it is a step forward of at most this.
MAX_TIME_JUMP_US = 1 << 22


def as_words(payload: Payload, word_dtype: str, what: str) -> np.ndarray:
    """View ``payload`` as little-endian words of ``word_dtype`` without copying.

    Raises EventDecodeError for anything that is not whole words of bytes.
    """
    word = np.dtype(word_dtype)
    if isinstance(payload, np.ndarray):
        if payload.dtype != np.uint8 or payload.ndim != 1:
            raise EventDecodeError(
                f"{what}: payload array must be 1-D uint8, got {payload.dtype} with shape {payload.shape}"
            )
        raw = np.ascontiguousarray(payload)
    elif isinstance(payload, (bytes, bytearray, memoryview)):
        try:
            raw = np.frombuffer(payload, np.uint8)
        except (ValueError, TypeError, BufferError) as exc:  # e.g. a non-contiguous memoryview
            raise EventDecodeError(f"{what}: payload buffer cannot be read as bytes: {exc}") from exc
    else:
        raise EventDecodeError(f"{what}: payload must be bytes or a uint8 array, got {type(payload).__name__}")
    if raw.size % word.itemsize:
        raise EventDecodeError(
            f"{what}: payload of {raw.size} bytes is not a whole number of {word.itemsize}-byte words"
        )
    return raw.view(word)


def _is_int(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, np.integer))


def check_time_base(time_base: int) -> int:
    """``time_base`` [ns] as a Python int in 0..MAX_TIME_BASE_NS, else EventDecodeError."""
    if not _is_int(time_base) or not 0 <= int(time_base) <= MAX_TIME_BASE_NS:
        raise EventDecodeError(
            f"time_base must be an integer in 0..2**62 ns (146 years of sensor clock), got {time_base!r}"
        )
    return int(time_base)


def check_until(until_t_us: int | None) -> int:
    """The time limit as an int64 the kernels compare against (no limit: int64 max)."""
    if until_t_us is None:
        return NO_LIMIT
    if not _is_int(until_t_us) or not INT64_MIN <= int(until_t_us) <= INT64_MAX:
        raise EventDecodeError(f"until_t_us must be an int64 (µs) or None, got {until_t_us!r}")
    return int(until_t_us)


def check_max_span(max_span_us: int | None) -> int:
    """A decoder's span bound [µs] (None: unbounded) as the int64 its kernels use."""
    if max_span_us is None:
        return NO_LIMIT
    if not _is_int(max_span_us) or not 0 <= int(max_span_us) <= MAX_T_US:
        raise EventDecodeError(f"max_span_us must be None or an integer in 0..2**53 µs, got {max_span_us!r}")
    return int(max_span_us)


def clip_span(
    cd: np.ndarray, triggers: np.ndarray, t_min: int, t_max: int, max_span_us: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Keep the events of one decode call inside one window of ``max_span_us``.

    ``t_min``/``t_max`` are the extremes of all the call's event times (the kernels track them, so
    the common case costs one comparison). When they are further apart than the bound (corrupt
    time words; a real driver packet spans ~1 ms), the window ``[lo, lo + max_span_us]`` holding
    the most events is kept (the earliest on ties) and the rest dropped; returns the kept arrays
    (stream order kept) and the number dropped. Work and memory scale with the event count, never
    with the time span.
    """
    if t_max - t_min <= max_span_us:
        return cd, triggers, 0
    ts = np.sort(np.concatenate([cd["t"], triggers["t"]]))  # [N + M]
    ends = np.searchsorted(ts, ts + max_span_us, side="right")
    best = int(np.argmax(ends - np.arange(ts.size)))
    lo, hi = int(ts[best]), int(ts[best]) + max_span_us
    keep_cd = (cd["t"] >= lo) & (cd["t"] <= hi)
    keep_trig = (triggers["t"] >= lo) & (triggers["t"] <= hi)
    kept_cd, kept_trig = cd[keep_cd], triggers[keep_trig]
    return kept_cd, kept_trig, int(cd.size + triggers.size - kept_cd.size - kept_trig.size)
