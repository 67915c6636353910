"""Turn a decoder's input (bytes-like or a uint8 array) into a word view, validated."""
from __future__ import annotations

import numpy as np

from .types import EventDecodeError

Payload = bytes | bytearray | memoryview | np.ndarray
NO_LIMIT = int(np.iinfo(np.int64).max)


def as_words(payload: Payload, word_dtype: str, what: str) -> np.ndarray:
    """View ``payload`` as little-endian words of ``word_dtype`` without copying.

    Raises EventDecodeError for anything that is not whole words of bytes.
    """
    word = np.dtype(word_dtype)
    if isinstance(payload, np.ndarray):
        if payload.dtype != np.uint8 or payload.ndim != 1:
            raise EventDecodeError(
                f"{what}: payload array must be 1-D uint8, got {payload.dtype} with shape {payload.shape}")
        raw = np.ascontiguousarray(payload)
    elif isinstance(payload, (bytes, bytearray, memoryview)):
        raw = np.frombuffer(payload, np.uint8)
    else:
        raise EventDecodeError(f"{what}: payload must be bytes or a uint8 array, got {type(payload).__name__}")
    if raw.size % word.itemsize:
        raise EventDecodeError(
            f"{what}: payload of {raw.size} bytes is not a whole number of {word.itemsize}-byte words")
    return raw.view(word)


def check_time_base(time_base: int) -> int:
    if isinstance(time_base, bool) or not isinstance(time_base, (int, np.integer)) or time_base < 0:
        raise EventDecodeError(f"time_base must be a non-negative integer (ns), got {time_base!r}")
    return int(time_base)


def check_until(until_t_us: int | None) -> int:
    """The time limit as an int64 the kernels compare against (no limit: int64 max)."""
    if until_t_us is None:
        return NO_LIMIT
    if isinstance(until_t_us, bool) or not isinstance(until_t_us, (int, np.integer)):
        raise EventDecodeError(f"until_t_us must be an integer (µs) or None, got {until_t_us!r}")
    return int(until_t_us)
