"""A bounded buffer of items indexed by time stamp (ns)."""

from __future__ import annotations

import bisect
import threading
from typing import Generic, TypeVar

T = TypeVar("T")


class TimeBuffer(Generic[T]):
    """Items sorted by stamp; out-of-order inserts land in place; full -> the oldest item goes.

    Thread-safe: subscription callbacks insert while a worker queries. Each item has its own stamp;
    a second item with a stamp already present replaces the first (a re-sent message).
    Items pushed out by the bound are ``expired`` when older than the consumer's horizon (see
    :meth:`mark_consumed`: history no round needs any more) and ``dropped`` otherwise (lost before
    any round could use them, including a new item older than everything in a full buffer). Neither
    counter is reset by :meth:`clear`, so diagnostics see every loss.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"TimeBuffer capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._stamps: list[int] = []
        self._items: list[T] = []
        self._lock = threading.Lock()
        self.dropped = 0
        self.expired = 0
        self.inserted = 0
        self._horizon: int | None = None

    def __len__(self) -> int:
        with self._lock:
            return len(self._stamps)

    def insert(self, t_ns: int, item: T) -> bool:
        """Insert ``item`` at ``t_ns``; returns False when it was dropped as the oldest of a full buffer."""
        t_ns = int(t_ns)
        with self._lock:
            i = bisect.bisect_left(self._stamps, t_ns)
            if i < len(self._stamps) and self._stamps[i] == t_ns:
                self._items[i] = item
                self.inserted += 1
                return True
            if len(self._stamps) >= self.capacity:
                if i == 0:
                    self._count_loss(t_ns)
                    return False
                self._count_loss(self._stamps[0])
                del self._stamps[0]
                del self._items[0]
                i -= 1
            self._stamps.insert(i, t_ns)
            self._items.insert(i, item)
            self.inserted += 1
            return True

    def _count_loss(self, t_ns: int) -> None:
        if self._horizon is not None and t_ns < self._horizon:
            self.expired += 1
        else:
            self.dropped += 1

    def mark_consumed(self, t_ns: int) -> None:
        """Items before ``t_ns`` are no longer needed: evicting them later is expiry, not loss."""
        with self._lock:
            if self._horizon is None or t_ns > self._horizon:
                self._horizon = int(t_ns)

    def window(self, t0_ns: int, t1_ns: int) -> list[tuple[int, T]]:
        """Items with ``t0_ns <= stamp <= t1_ns``, oldest first."""
        with self._lock:
            lo = bisect.bisect_left(self._stamps, t0_ns)
            hi = bisect.bisect_right(self._stamps, t1_ns)
            return list(zip(self._stamps[lo:hi], self._items[lo:hi]))

    def nearest(self, t_ns: int, slop_ns: int | None = None) -> tuple[int, T] | None:
        """The item closest to ``t_ns`` (the earlier one on a tie), or None if none within ``slop_ns``."""
        with self._lock:
            if not self._stamps:
                return None
            i = bisect.bisect_left(self._stamps, t_ns)
            best: int | None = None
            for j in (i - 1, i):
                if 0 <= j < len(self._stamps):
                    if best is None or abs(self._stamps[j] - t_ns) < abs(self._stamps[best] - t_ns):
                        best = j
            assert best is not None
            if slop_ns is not None and abs(self._stamps[best] - t_ns) > slop_ns:
                return None
            return self._stamps[best], self._items[best]

    def newest_stamp(self) -> int | None:
        with self._lock:
            return self._stamps[-1] if self._stamps else None

    def oldest_stamp(self) -> int | None:
        with self._lock:
            return self._stamps[0] if self._stamps else None

    def prune_before(self, t_ns: int) -> int:
        """Forget items older than ``t_ns`` (consumed history, not a drop); returns how many."""
        with self._lock:
            i = bisect.bisect_left(self._stamps, t_ns)
            del self._stamps[:i]
            del self._items[:i]
            return i

    def clear(self) -> None:
        with self._lock:
            self._stamps.clear()
            self._items.clear()
            self._horizon = None
