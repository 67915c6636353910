"""Following a sensor's wrapping time-high counter (EVT 3.0, EVT 2.0) without trusting it blindly.

A stream's TIME_HIGH words normally step forward a little at a time and wrap from the top of the
counter's range to its bottom. One flipped bit makes a word jump anywhere; counting every step
back as a wrap (what a naive decoder does) then shifts all later time by a whole period for good.
:func:`follow_time_high` accepts a new value when a step from the current time explains it:

* forward by at most ``max_jump`` µs (a wrap when the value is below the current one),
* back by at most ``jitter`` µs (sensor jitter, as event_camera_codecs tolerates for EVT 3.0).

Anything else is an *unexplained* jump. The decoder then keeps the last explained ("trusted")
time and places the new value in the period nearest to it (never below period 0, never past
``horizon``); the next word that a step from the trusted time explains brings the stream back to
it. So a single corrupt word costs the events up to the next good TIME_HIGH (4 ms of EVT 3.0) and
is counted, while a real jump (camera restart, long gap) is counted once and then followed.
"""
from __future__ import annotations

import numba


@numba.njit(cache=True, inline="always")
def _explained(v, ref, period, jitter, max_jump):  # noqa: ANN001, ANN202
    """Full time for in-period value ``v`` a step from ``ref`` explains, or -1."""
    cur = ref & (period - 1)
    base = ref - cur
    if v >= cur:
        if v - cur <= max_jump:
            return base + v
        return -1
    if cur - v <= jitter:
        return base + v
    if v + period - cur <= max_jump:
        return base + period + v
    return -1


@numba.njit(cache=True, inline="always")
def follow_time_high(v, high, trusted, period, jitter, max_jump, horizon):  # noqa: ANN001, ANN201
    """New (high, trusted, resync) after a time-high word with in-period value ``v`` [µs].

    ``high`` is the time in use, ``trusted`` the last explained one (both full µs, >= 0);
    ``resync`` is 1 for an unexplained jump.
    """
    new = _explained(v, high, period, jitter, max_jump)
    if new < 0 and trusted != high:
        new = _explained(v, trusted, period, jitter, max_jump)
    if new >= 0 and new <= horizon:
        return new, new, 0
    base = trusted - (trusted & (period - 1))
    new = base + v
    half = period >> 1
    if new - trusted > half and base >= period:
        new -= period
    elif trusted - new > half and new + period <= horizon:
        new += period
    return new, trusted, 1
