"""Following a sensor's wrapping time-high counter (EVT 3.0, EVT 2.0) without trusting it blindly.

A stream's TIME_HIGH words normally step forward a little at a time and wrap from the top of the
counter's range to its bottom. One flipped bit makes a word jump anywhere; counting every step
back as a wrap (what a naive decoder does) then shifts all later time by a whole period for good.

The decoder keeps the time in use (``high``) and a *trusted* time: the highest time reached by
plausible steps. A new value is placed, in order of preference:

1. a plausible step from the trusted time: forward by at most ``max_jump`` µs (a wrap only when
   that step crosses the top of the range), or back by at most ``jitter`` µs (sensor jitter, as
   event_camera_codecs tolerates for EVT 3.0); the trusted time becomes the larger of the two;
2. after a resync (time in use far from the trusted one): a forward step of at most ``max_jump``
   from the time in use, which confirms the new timeline (a real jump: restart, long gap) and
   makes it the trusted one;
3. otherwise in the period nearest the trusted time (never below period 0, never past
   ``horizon``), trusted time unchanged.

A TIME_HIGH that moves the time in use by more than a plausible step (back more than ``jitter``,
forward more than ``max_jump``) is counted as a resync. So one flipped bit costs the events up to
the next good TIME_HIGH (4 ms of EVT 3.0) and counts twice (the jump and the return); a real jump
counts once and is then followed; unflagged time never goes back more than ``jitter`` below the
trusted time, and no shift is ever carried forward.

Note: the EVT 3.0 and EVT 2.0 kernels inline this function, and numba's on-disk cache of a kernel
does not notice edits made here; after changing this file, delete
``core/events/__pycache__/evt[23].*.nb[ci]`` (or touch evt2.py and evt3.py).
"""

from __future__ import annotations

import numba


@numba.njit(cache=True, inline="always")
def _from_trusted(v, ref, period, jitter, max_jump):  # noqa: ANN001, ANN202
    """Full time for in-period value ``v`` a plausible step from ``ref`` explains, or -1."""
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
def _forward(v, ref, period, max_jump):  # noqa: ANN001, ANN202
    cur = ref & (period - 1)
    base = ref - cur
    if v >= cur:
        return base + v if v - cur <= max_jump else -1
    return base + period + v if v + period - cur <= max_jump else -1


@numba.njit(cache=True, inline="always")
def follow_time_high(v, high, trusted, period, jitter, max_jump, horizon):  # noqa: ANN001, ANN201
    """New (high, trusted, resync) after a time-high word with in-period value ``v`` [µs].

    ``high`` is the time in use, ``trusted`` the trusted one (both full µs, 0..horizon);
    ``resync`` is 1 when the time in use moved by more than a plausible step.
    """
    new = _from_trusted(v, trusted, period, jitter, max_jump)
    if new >= 0 and new <= horizon:
        new_trusted = max(new, trusted)
    else:
        new = -1
        new_trusted = trusted
        if high != trusted:
            new = _forward(v, high, period, max_jump)
            if new > horizon:
                new = -1
            new_trusted = new
        if new < 0:
            base = trusted - (trusted & (period - 1))
            new = base + v
            half = period >> 1
            if new - trusted > half and base >= period:
                new -= period
            elif trusted - new > half and new + period <= horizon:
                new += period
            new_trusted = trusted
    step = new - high
    return new, new_trusted, 1 if (step < -jitter or step > max_jump) else 0
