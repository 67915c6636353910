"""When rounds open: one rule for the three stages and the tools (DESIGN.md "Rounds").

A :class:`RoundSchedule` names the round times ``T = k * period + phase`` on the event clock. Every
stage opens them by one rule (:class:`RoundOpener`): a round at ``T`` opens once the stage's newest
input has passed ``T + settle`` (0 for events; ``slop`` for frames, which must be past the window
before the round's input is whole), unless its input window ``[T - lead, T]`` would start before the
stream's first input (less ``margin``). A prompt asks about now: its round is at the newest input's
time (:meth:`RoundSchedule.prompt_time`). Period 0: only prompts open rounds.

The tools pick a schedule through given round times (:meth:`RoundSchedule.through`: one round at the
end of every synthetic scene) and hand it to the nodes as ``round_period`` / ``round_phase``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from cascade_sd_ros.core.rounds import round_times_between


@dataclass(frozen=True)
class RoundSchedule:
    """Round times ``k * period_ns + phase_ns`` (ns, event clock); ``period_ns`` 0: prompts only."""

    period_ns: int
    phase_ns: int = 0

    def __post_init__(self) -> None:
        if self.period_ns < 0 or self.phase_ns < 0:
            raise ValueError(f"round period and phase must be >= 0 ns, got {self.period_ns}, {self.phase_ns}")

    @property
    def periodic(self) -> bool:
        return self.period_ns > 0

    def times_between(self, after_ns: int | None, upto_ns: int) -> list[int]:
        """Round times in ``(after_ns, upto_ns]`` (only the newest when ``after_ns`` is None), at most
        :data:`~cascade_sd_ros.core.rounds.MAX_ROUNDS_PER_STEP` of them, the newest."""
        if not self.periodic:
            return []
        shifted = upto_ns - self.phase_ns
        if shifted <= 0:
            return []
        after = None if after_ns is None else after_ns - self.phase_ns
        return [t + self.phase_ns for t in round_times_between(after, shifted, self.period_ns)]

    @staticmethod
    def prompt_time(newest_ns: int) -> int:
        """A prompt's round: the newest input's time (it asks about now)."""
        return int(newest_ns)

    @staticmethod
    def through(times_ns: Sequence[int], period_ns: int) -> "RoundSchedule":
        """The schedule of period ``period_ns`` on which all of ``times_ns`` fall (ValueError if none)."""
        if not times_ns or period_ns <= 0:
            raise ValueError("need at least one round time and a period > 0")
        phase = int(times_ns[0]) % period_ns
        off = [t for t in times_ns if (int(t) - phase) % period_ns]
        if off:
            raise ValueError(f"round times {off} are not on the period {period_ns} ns through {times_ns[0]}")
        return RoundSchedule(period_ns, phase)


class RoundOpener:
    """One stream's cursor over a :class:`RoundSchedule`: which rounds its newest input lets open.

    Not thread-safe: the stage calls it under the lock that guards its input stream.
    """

    def __init__(self, schedule: RoundSchedule, *, settle_ns: int = 0, lead_ns: int = 0, margin_ns: int = 0) -> None:
        if settle_ns < 0 or lead_ns < 0 or margin_ns < 0:
            raise ValueError(f"settle, lead and margin must be >= 0 ns, got {settle_ns}, {lead_ns}, {margin_ns}")
        self.schedule = schedule
        self.settle_ns = settle_ns
        self.lead_ns = lead_ns
        self.margin_ns = margin_ns
        self.first_ns: int | None = None  # the stream's first input time (reference clock)
        self.last_round_ns: int | None = None  # the newest round time passed (opened or skipped)

    def advance(self, first_ns: int, newest_ns: int) -> list[int]:
        """The stream's first input was at ``first_ns`` (kept from the first call after a reset) and
        its newest is at ``newest_ns``: the round times due now, oldest first."""
        if self.first_ns is None:
            self.first_ns = first_ns
        due: list[int] = []
        for T in self.schedule.times_between(self.last_round_ns, newest_ns - self.settle_ns):
            self.last_round_ns = T
            if T - self.lead_ns < self.first_ns - self.margin_ns:
                continue  # the round's input window would start before the stream did
            due.append(T)
        return due

    def reset(self) -> None:
        """Time went backwards: the stream starts again."""
        self.first_ns = None
        self.last_round_ns = None


MIN_PERIOD_NS = 10_000_000  # the shortest round_period a stage accepts


@dataclass(frozen=True)
class ScheduleDisagreement:
    """What an upstream stage's rounds say about its parameters, against ours."""

    stage: str
    text: str  # one line, with the numbers
    period_ns: int = 0  # the schedule its rounds fall on (0: not a period finding)
    phase_ns: int = 0


def _s(ns: int) -> str:
    return f"{ns / 1e9:.3f} s"


class ScheduleCheck:
    """Whether the rounds an upstream stage names agree with this stage's :class:`RoundSchedule`.

    Every stage opens rounds by the same schedule (the round parameters, set once for all stages);
    a stage started with another ``round_period`` or ``round_phase`` still works, since rounds open
    on a draft's first sight, but every off-schedule round costs the verifier a round it did not
    plan. One round off the schedule proves nothing (a prompt asks about now; the drafter's activity
    rounds fall where the scene changed): a disagreement is the stage's newest ``window`` distinct
    round times equally spaced, some of them off our schedule, i.e. the stage runs another period or
    phase. Equally spaced means on one grid (the gaps' greatest common divisor, at least 10 ms)
    with at least every other grid point in their span heard: a stage that skips rounds still shows
    its period, while bursts on a fine grid (activity rounds fall on 100 ms bin ends) do not pass
    for one. A round id that is not its stamp (ids are ``T`` in ns) contradicts the rule outright.
    Not thread-safe: the caller serialises :meth:`hear`.
    """

    def __init__(self, ours: RoundSchedule, *, window: int = 4, keep: int = 16) -> None:
        if window < 3 or keep < window:
            raise ValueError(f"need window >= 3 and keep >= window, got {window}, {keep}")
        self.ours = ours
        self.window = window
        self.keep = keep
        self.off_schedule = 0  # distinct round times heard off our schedule (any cause)
        self.id_mismatches = 0  # round ids that are not their stamps
        self.found: dict[str, ScheduleDisagreement] = {}  # the newest disagreement per stage
        self._times: dict[str, list[int]] = {}  # per stage: its newest distinct round times, sorted

    def on_schedule(self, t_ns: int) -> bool:
        ours = self.ours
        return ours.periodic and (t_ns - ours.phase_ns) % ours.period_ns == 0

    def _ours_text(self) -> str:
        if not self.ours.periodic:
            return "this stage's round_period is 0 (prompt rounds only)"
        return f"this stage's round_period is {_s(self.ours.period_ns)} (round_phase {_s(self.ours.phase_ns)})"

    def hear(self, stage: str, round_id: int, t_ns: int) -> ScheduleDisagreement | None:
        """One round named by ``stage``; a disagreement when this round shows a new one, else None."""
        if round_id != t_ns:
            self.id_mismatches += 1
            return self._found(
                ScheduleDisagreement(stage, f"{stage} named round id {round_id} for stamp {t_ns} ns (ids are T in ns)")
            )
        times = self._times.setdefault(stage, [])
        if t_ns in times:
            return None
        if not self.on_schedule(t_ns):
            self.off_schedule += 1
        times.append(t_ns)
        times.sort()
        del times[: -self.keep]
        newest = times[-self.window :]
        if len(newest) < self.window or not any(not self.on_schedule(t) for t in newest):
            return None
        # the grid they lie on: a stage skips rounds (a slow drafter drafts not every one), so the
        # gaps are multiples of its period; dense enough to be a period, not bursts on a fine grid
        period = math.gcd(*(b - a for a, b in zip(newest, newest[1:])))
        if period < MIN_PERIOD_NS or (newest[-1] - newest[0]) // period > 2 * (self.window - 1):
            return None
        phase = newest[0] % period
        return self._found(
            ScheduleDisagreement(
                stage,
                f"{stage} rounds fall every {_s(period)} (phase {_s(phase)}) but {self._ours_text()}: "
                "set the same round parameters on every stage",
                period,
                phase,
            )
        )

    def _found(self, finding: ScheduleDisagreement) -> ScheduleDisagreement | None:
        known = self.found.get(finding.stage)
        self.found[finding.stage] = finding
        return None if known == finding else finding

    def reset(self) -> None:
        """Time went backwards: round times start again (the counts and findings stay)."""
        self._times.clear()
