"""Activity-triggered rounds: a round opens when the event stream says the scene changed, besides the
period's (the research note's Gap 3, streaming speculative decoding for event cameras), so the caption
follows the scene rather than the clock.

The drafter counts its events in bins of ``bin_ns`` (event clock). A closed bin whose count exceeds
``factor`` times the slow baseline (an exponential average over ``baseline_ns``) plus ``min_events`` is
a burst, and its end is a round time. Bounded so a noisy sensor cannot flood the verifier: at most one
activity round per ``min_gap_ns``, none before the baseline has seen ``warmup_bins`` bins, and O(1) state
(the open bin, the baseline, the last trigger). The other stages join such a round when the drafter's
draft names it, as they join any round.
"""

from __future__ import annotations

import math

import numpy as np


class ActivityTrigger:
    """Event-rate bursts -> round times (ns, event clock). Not thread-safe: the drafter calls it under
    its input lock, packets in arrival order."""

    def __init__(
        self,
        bin_ns: int = 100_000_000,
        baseline_ns: int = 2_000_000_000,
        factor: float = 3.0,
        min_events: int = 50,
        min_gap_ns: int = 1_000_000_000,
        warmup_bins: int = 10,
    ) -> None:
        if min(bin_ns, baseline_ns, min_gap_ns) <= 0 or baseline_ns < bin_ns:
            raise ValueError("ActivityTrigger: bin, baseline and gap must be > 0 ns, baseline >= bin")
        if not (math.isfinite(factor) and factor >= 1.0) or min_events < 0 or warmup_bins < 1:
            raise ValueError("ActivityTrigger: factor >= 1, min_events >= 0, warmup_bins >= 1")
        self.bin_ns = int(bin_ns)
        self.alpha = self.bin_ns / float(baseline_ns)  # the baseline's weight per bin
        self.factor = float(factor)
        self.min_events = int(min_events)
        self.min_gap_ns = int(min_gap_ns)
        self.warmup_bins = int(warmup_bins)
        self.triggered = 0  # [count] activity rounds asked for
        self.suppressed = 0  # [count] bursts inside min_gap of the last one (the flood bound)
        self.reset()

    def reset(self) -> None:
        self._bin: int | None = None  # index of the open bin
        self._count = 0
        self._baseline = 0.0
        self._bins_seen = 0
        self._last_ns: int | None = None

    def observe(self, t_ns: np.ndarray) -> list[int]:
        """One packet's event times; the round times its closed bins call for, oldest first."""
        t = np.asarray(t_ns, np.int64)
        if t.size == 0:
            return []
        bins = t // self.bin_ns
        out: list[int] = []
        if self._bin is None:
            self._bin = int(bins.min())
        # events of bins already closed (late, out of order) count in the open one: no bin reopens
        idx, counts = np.unique(np.maximum(bins, self._bin), return_counts=True)
        for b, c in zip(idx.tolist(), counts.tolist()):
            if b > self._bin:
                out += self._close(b)
            self._count += int(c)
        return out

    def _close(self, next_bin: int) -> list[int]:
        """Close the open bin (and the empty ones up to ``next_bin``): a burst is a round time."""
        assert self._bin is not None
        out: list[int] = []
        count, end = self._count, (self._bin + 1) * self.bin_ns
        if self._bins_seen >= self.warmup_bins and count > self.factor * self._baseline + self.min_events:
            if self._last_ns is None or end - self._last_ns >= self.min_gap_ns:
                self._last_ns = end
                self.triggered += 1
                out.append(end)
            else:
                self.suppressed += 1
        self._baseline += self.alpha * (count - self._baseline)
        empty = next_bin - self._bin - 1  # bins with no event at all decay the baseline in one step
        if empty > 0:
            self._baseline *= (1.0 - self.alpha) ** min(empty, 10_000)
        self._bins_seen += 1 + max(empty, 0)
        self._bin, self._count = next_bin, 0
        return out
