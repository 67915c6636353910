"""The exponential moving average every adaptive figure of the stages keeps (ROS-free)."""

from __future__ import annotations


def ema(old: float | None, new: float, alpha: float) -> float:
    """``old`` moved ``alpha`` of the way to ``new``; the first figure (``old`` None) is taken as is."""
    return new if old is None else old + alpha * (new - old)
