"""``builtin_interfaces/Time`` <-> integer nanoseconds, with the checks a sensor stamp must pass."""

from __future__ import annotations

from typing import Any

from cascade_sd_ros.core.names import NS_PER_S, split_ns, stamp_ns


class StampError(ValueError):
    """A header stamp that cannot be a sensor time (unset, negative, nanoseconds out of range)."""


def stamp_to_ns(stamp: Any) -> int:
    """``Time`` (``sec``, ``nanosec``) -> ns since the clock's epoch; raises :class:`StampError`."""
    sec, nanosec = int(stamp.sec), int(stamp.nanosec)
    if not 0 <= nanosec < NS_PER_S:
        raise StampError(f"stamp nanosec {nanosec} is outside [0, 1e9)")
    if sec < 0:
        raise StampError(f"stamp sec {sec} is negative")
    if sec == 0 and nanosec == 0:
        raise StampError("stamp is unset (0 s, 0 ns)")
    return stamp_ns(sec, nanosec)


def ns_to_stamp(t_ns: int, stamp: Any | None = None) -> Any:
    """ns -> ``builtin_interfaces/Time`` (fills ``stamp`` in place when given)."""
    if t_ns < 0:
        raise StampError(f"cannot express a negative time ({t_ns} ns) as a stamp")
    if stamp is None:
        from builtin_interfaces.msg import Time

        stamp = Time()
    stamp.sec, stamp.nanosec = split_ns(t_ns)
    return stamp


def seconds_to_ns(seconds: float, what: str) -> int:
    """A float duration parameter in seconds -> ns, rejecting NaN/inf with the parameter's name."""
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        raise ValueError(f"{what} must be a finite number of seconds, got {seconds}")
    return int(round(seconds * NS_PER_S))
