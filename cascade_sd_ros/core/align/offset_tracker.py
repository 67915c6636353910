"""Which event-to-RGB offset the stages apply: pinned, from strobe triggers, or estimated, with hysteresis.

Precedence: a pinned value (the user knows) > a trigger fit (exact) > a confident estimate (events
against frames) > the initial value (the parameter's, applied but not confident). An estimate becomes
confident once ``agree`` successive identifiable estimates lie within ``tolerance_ns`` of each other
(their median is applied); after that the applied value moves only when a new confident median lies
more than ``hysteresis_ns`` from it, so estimate noise does not shake the rounds' frames. Estimates
outside ``initial_ns ± bound_ns`` are refused and counted (a parameter bounds what the data may claim).

What a round uses is decided once, when the round opens (the caller keeps it with the round): a new
value changes later rounds, never a round's clip mid-round.

Strobe aliases: a trigger fit is exact modulo the frame period, so what picked its alias matters
(``trigger_alias``). Once a trigger offset is applied, later fits keep its alias (:meth:`alias_prior`).
An alias picked by counting from the streams' starts (or the only one a short window fitted) is
checked against the estimate once that is confident: if they differ by a whole number of periods
(within a quarter period) the estimate's alias is taken, because the count's only failure modes (a
first frame or edge lost) are exactly whole periods, while a confident estimate (three agreeing,
within a few ms) has no reason to be off by one; a difference that is not a whole period is the
estimate's own error, and the trigger is kept. ``alias_note`` says which.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass

from cascade_sd_ros.core.align.region_offsets import RegionEstimate
from cascade_sd_ros.core.align.trigger_sync import TriggerFit

SOURCES = ("pinned", "trigger", "estimate", "initial")


@dataclass(frozen=True)
class AppliedOffset:
    """The offset in use: event clock minus RGB clock at RGB time ``ref_ns``, with drift."""

    offset_ns: int
    drift_ppm: float
    ref_ns: int
    uncertainty_ns: float  # one standard deviation; inf while nothing measured it
    confident: bool
    source: str  # one of SOURCES

    def at(self, t_ns: int) -> int:
        """The offset at time ``t_ns`` (drift included; either clock: drift makes them differ by ppm)."""
        if self.drift_ppm == 0.0:
            return self.offset_ns
        return int(round(self.offset_ns + self.drift_ppm * 1e-6 * (int(t_ns) - self.ref_ns)))


class OffsetTracker:
    """Decides the applied offset from a pin, trigger fits and estimates (see module doc). Thread-safe."""

    def __init__(
        self,
        initial_ns: int = 0,
        pinned: bool = False,
        bound_ns: int | None = None,
        agree: int = 3,
        tolerance_ns: int = 3_000_000,
        hysteresis_ns: int = 2_000_000,
        min_correlation: float = 0.5,
        min_margin: float = 0.01,
    ) -> None:
        if agree < 1 or min(tolerance_ns, hysteresis_ns) < 0 or (bound_ns is not None and bound_ns < 0):
            raise ValueError("OffsetTracker: agree >= 1, tolerance, hysteresis and bound >= 0")
        self.initial_ns = int(initial_ns)
        self.pinned = bool(pinned)
        self.bound_ns = bound_ns
        self.tolerance_ns = int(tolerance_ns)
        self.hysteresis_ns = int(hysteresis_ns)
        self.min_correlation = float(min_correlation)
        self.min_margin = float(min_margin)
        self._recent: deque[int] = deque(maxlen=agree)
        self._lock = threading.Lock()
        source = "pinned" if pinned else "initial"
        self._applied = AppliedOffset(self.initial_ns, 0.0, 0, 0.0 if pinned else math.inf, pinned, source)
        self.last_estimate: RegionEstimate | None = None
        self.last_trigger: TriggerFit | None = None
        self.refused = 0  # [count] estimates outside the bound
        self.changes = 0  # [count] times the applied value moved
        self.agreed_ns: int | None = None  # the newest median of `agree` agreeing estimates (any source applied)
        self.trigger_alias = ""  # what picked the applied trigger offset's alias (TriggerFit.alias_by, or the prior's)
        self.alias_note = ""  # the estimate against a counted alias: agrees, overrode it, or kept

    def current(self) -> AppliedOffset:
        with self._lock:
            return self._applied

    def prior_ns(self) -> int | None:
        """An offset good to a few ms, to pick among strobe aliases: the confident applied one."""
        with self._lock:
            return self._applied.offset_ns if self._applied.confident else None

    def observe_estimate(self, est: RegionEstimate | None) -> AppliedOffset:
        with self._lock:
            self.last_estimate = est
            if est is None or not est.identifiable(self.min_correlation, self.min_margin):
                return self._applied
            if self.bound_ns is not None and abs(est.offset_ns - self.initial_ns) > self.bound_ns:
                self.refused += 1
                return self._applied
            self._recent.append(int(est.offset_ns))
            if self.pinned or len(self._recent) < (self._recent.maxlen or 1):
                return self._applied
            values = sorted(self._recent)
            spread = values[-1] - values[0]
            if spread > self.tolerance_ns:
                return self._applied
            median = values[len(values) // 2]
            self.agreed_ns = median  # kept under a trigger offset too: it checks a counted alias
            if self._applied.source == "trigger":
                return self._applied
            moved = abs(median - self._applied.offset_ns) > self.hysteresis_ns
            if not self._applied.confident or moved:  # first confidence, or a real move past the hysteresis
                # spread / 2 for the agreement, the fine scan's half step at least
                sigma = max(spread / 2.0, 250_000.0)
                self._set(AppliedOffset(median, 0.0, 0, sigma, True, "estimate"))
            return self._applied

    def settled(self) -> bool:
        """Confident, and nothing left to check: an alias counted from the starts (or a short window's
        only one) waits for the estimate's word, so the estimate keeps its quick cadence until then."""
        with self._lock:
            if not self._applied.confident:
                return False
            unchecked = self._applied.source == "trigger" and self.trigger_alias in ("stream start", "unique")
            return not (unchecked and not self.alias_note.startswith("the estimate agrees"))

    def alias_prior(self, period_ns: int | None) -> tuple[int | None, str]:
        """(prior, what it rests on) to pick among strobe aliases: the applied trigger offset's own
        alias (kept), unless the confident estimate says a counted alias is whole periods off; the
        confident estimate before any trigger offset; nothing while neither is known (module doc)."""
        with self._lock:
            applied, agreed = self._applied, self.agreed_ns
            if applied.source == "estimate" and applied.confident:
                return applied.offset_ns, "estimate"
            if applied.source != "trigger":
                return None, ""
            # a count, or a short window's only fitting alias, is checked; the bound and the estimate are not
            if self.trigger_alias not in ("stream start", "unique") or agreed is None or not period_ns:
                return applied.offset_ns, self.trigger_alias
            diff = agreed - applied.offset_ns
            periods = round(diff / period_ns)
            if abs(diff) <= period_ns / 4:
                self.alias_note = f"the estimate agrees with the {self.trigger_alias} alias ({diff / 1e6:+.1f} ms)"
                return applied.offset_ns, self.trigger_alias
            if periods != 0 and abs(diff - periods * period_ns) <= period_ns / 4:
                self.alias_note = (
                    f"the {self.trigger_alias} alias was {periods:+d} period(s) off the confident "
                    f"estimate ({diff / 1e6:+.1f} ms): the estimate's alias applied"
                )
                return agreed, "estimate"
            self.alias_note = f"the estimate is {diff / 1e6:+.1f} ms off (not a whole period): the trigger kept"
            return applied.offset_ns, self.trigger_alias

    def observe_trigger(self, fit: TriggerFit | None, prior_label: str = "") -> AppliedOffset:
        """A strobe fit (None: none this time); ``prior_label``: what the prior it was given rests on."""
        with self._lock:
            self.last_trigger = fit
            if fit is None or self.pinned:
                return self._applied
            if self.bound_ns is not None and abs(fit.offset_ns - self.initial_ns) > self.bound_ns:
                self.refused += 1
                return self._applied
            self.trigger_alias = (prior_label or "prior") if fit.alias_by == "prior" else fit.alias_by
            # the strobe is exact: every fit applies (no hysteresis beyond the stamps' own jitter);
            # a change is counted when it moves the offset by over 1 ms
            before = self._applied
            moved = before.source != "trigger" or abs(fit.offset_ns - before.at(fit.ref_ns)) > 1_000_000
            self._set(
                AppliedOffset(fit.offset_ns, fit.drift_ppm, fit.ref_ns, max(fit.residual_ns, 1000.0), True, "trigger"),
                count=moved,
            )
            return self._applied

    def reset(self) -> None:
        """Time jumped: estimates start over (a pin stays; the applied value stays until data move it)."""
        with self._lock:
            self._recent.clear()
            self.agreed_ns = None
            self.alias_note = ""

    def _set(self, applied: AppliedOffset, count: bool = True) -> None:
        self.changes += int(count)
        self._applied = applied


class RoundOffsets:
    """The offset each round uses, fixed when the round first asks: a later change of the applied
    offset moves later rounds, never a round's clip mid-round. Bounded: the last ``capacity`` rounds."""

    def __init__(self, capacity: int = 64) -> None:
        if capacity < 1:
            raise ValueError(f"RoundOffsets capacity must be >= 1, got {capacity}")
        self._capacity = capacity
        self._rounds: OrderedDict[int, AppliedOffset] = OrderedDict()
        self._lock = threading.Lock()

    def fix(self, round_id: int, current: AppliedOffset) -> AppliedOffset:
        """``round_id``'s offset: ``current`` if it has none yet, else the one it was given."""
        with self._lock:
            got = self._rounds.get(round_id)
            if got is None:
                got = self._rounds[round_id] = current
                while len(self._rounds) > self._capacity:
                    self._rounds.popitem(last=False)
            return got

    def clear(self) -> None:
        with self._lock:
            self._rounds.clear()


class OffsetFollower:
    """A stage that applies another's measured offset (the drafter's ``clock_offset``): its configured
    value (``initial_ns``; ``pinned``: for good) until a confident offset is heard, then the newest
    confident one. A round keeps the offset it first asked with (:class:`RoundOffsets`), so a value
    heard mid-round moves later rounds only."""

    def __init__(self, initial_ns: int = 0, pinned: bool = False, capacity: int = 64) -> None:
        source = "pinned" if pinned else "initial"
        self.pinned = bool(pinned)
        self._applied = AppliedOffset(int(initial_ns), 0.0, 0, 0.0 if pinned else math.inf, self.pinned, source)
        self._rounds = RoundOffsets(capacity)
        self._lock = threading.Lock()
        self.followed = 0  # [count] offsets heard and applied

    def hear(self, applied: AppliedOffset) -> bool:
        """Apply ``applied`` if it is confident (its source applies it too) and nothing pins this stage."""
        if self.pinned or not applied.confident:
            return False
        with self._lock:
            self._applied = applied
            self.followed += 1
        return True

    def current(self) -> AppliedOffset:
        with self._lock:
            return self._applied

    def round_offset(self, round_id: int) -> AppliedOffset:
        """The offset round ``round_id`` uses: the applied one when it first asks, the same ever after."""
        return self._rounds.fix(round_id, self.current())

    def reset_rounds(self) -> None:
        """Time jumped or the rounds restarted: round ids of before mean nothing now (the value stays)."""
        self._rounds.clear()
