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
