"""Numba helpers that write decoded events straight into CD_DTYPE / TRIGGER_DTYPE records.

Kernels take the output arrays as plain uint8 [N, itemsize] views: one contiguous argument per
output keeps numba's per-call overhead small (packets are often only a few hundred events),
and the packed little-endian layout is written byte by byte, whatever the host's alignment.
"""

from __future__ import annotations

import numba
import numpy as np

from .types import CD_DTYPE, TRIGGER_DTYPE

CD_SIZE = CD_DTYPE.itemsize  # 13: x u2 @0, y u2 @2, p i1 @4, t i8 @5
TRIGGER_SIZE = TRIGGER_DTYPE.itemsize  # 10: id u1 @0, p i1 @1, t i8 @2
assert CD_DTYPE.fields is not None and [CD_DTYPE.fields[f][1] for f in ("x", "y", "p", "t")] == [0, 2, 4, 5]
assert TRIGGER_DTYPE.fields is not None and [TRIGGER_DTYPE.fields[f][1] for f in ("id", "p", "t")] == [0, 1, 2]


def as_cd(raw: np.ndarray) -> np.ndarray:
    """The CD_DTYPE array over a kernel's uint8 [n, 13] output (no copy)."""
    return raw.view(CD_DTYPE)[:, 0]


def as_triggers(raw: np.ndarray) -> np.ndarray:
    return raw.view(TRIGGER_DTYPE)[:, 0]


@numba.njit(cache=True, inline="always")
def put_cd(out, n, x, y, p, t):  # noqa: ANN001, ANN201
    r = out[n]
    r[0] = x & 0xFF
    r[1] = (x >> 8) & 0xFF
    r[2] = y & 0xFF
    r[3] = (y >> 8) & 0xFF
    r[4] = p & 0xFF
    for b in range(8):
        r[5 + b] = (t >> (8 * b)) & 0xFF


@numba.njit(cache=True, inline="always")
def put_trigger(out, m, ident, p, t):  # noqa: ANN001, ANN201
    r = out[m]
    r[0] = ident & 0xFF
    r[1] = p & 0xFF
    for b in range(8):
        r[2 + b] = (t >> (8 * b)) & 0xFF
