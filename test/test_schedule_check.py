"""ScheduleCheck: the rounds an upstream stage names, against this stage's round parameters. A stage
on another period or phase is found from its rounds' regular spacing; single off-schedule rounds
(prompts, activity rounds) and rounds skipped on our own grid are not a disagreement."""

from __future__ import annotations

import pytest

from cascade_sd_ros.core.stages import RoundSchedule, ScheduleCheck

S = 1_000_000_000
OURS = RoundSchedule(2 * S, S // 10)  # every 2 s, at 0.1 s past


def _hear(check: ScheduleCheck, times: list[int], stage: str = "drafter") -> list[object]:
    return [f for t in times if (f := check.hear(stage, t, t)) is not None]


def test_rounds_on_our_schedule_agree() -> None:
    check = ScheduleCheck(OURS)
    assert _hear(check, [k * 2 * S + S // 10 for k in range(1, 12)]) == []
    assert check.off_schedule == 0 and check.found == {}


def test_a_stage_on_half_our_period_is_found_once_with_its_numbers() -> None:
    check = ScheduleCheck(OURS)
    times = [k * S + S // 10 for k in range(1, 12)]  # every 1 s: every other one off our schedule
    found = _hear(check, times)
    assert len(found) == 1  # found at the 4th round, then the same finding stays quiet
    (f,) = found
    assert (f.stage, f.period_ns, f.phase_ns) == ("drafter", S, S // 10)
    assert "every 1.000 s (phase 0.100 s)" in f.text and "round_period is 2.000 s (round_phase 0.100 s)" in f.text
    assert check.off_schedule == 6 and check.found["drafter"] == f


def test_another_phase_is_a_disagreement_too() -> None:
    check = ScheduleCheck(OURS)
    (f,) = _hear(check, [k * 2 * S + S // 2 for k in range(1, 6)], stage="refiner")
    assert (f.stage, f.period_ns, f.phase_ns) == ("refiner", 2 * S, S // 2)


def test_single_off_schedule_rounds_and_skipped_rounds_are_not() -> None:
    check = ScheduleCheck(OURS)
    on = [k * 2 * S + S // 10 for k in range(1, 10)]
    # a prompt round and an activity round between periodic ones: counted, not a finding
    assert _hear(check, [*on[:3], on[2] + 123_456_789, *on[3:6], on[5] + S // 2, *on[6:]]) == []
    assert check.off_schedule == 2
    # a slow stage drafting every other round of ours: all on our grid, no contradiction
    slow = ScheduleCheck(OURS)
    assert _hear(slow, on[::2]) == [] and slow.off_schedule == 0


def test_prompt_only_rounds_here_and_a_periodic_stage_there() -> None:
    check = ScheduleCheck(RoundSchedule(0))
    (f,) = _hear(check, [k * S for k in range(1, 6)])
    assert "round_period is 0 (prompt rounds only)" in f.text


def test_a_round_id_that_is_not_its_stamp_contradicts_the_rule() -> None:
    check = ScheduleCheck(OURS)
    f = check.hear("drafter", 5, 2 * S + S // 10)
    assert f is not None and "round id 5 for stamp" in f.text and check.id_mismatches == 1


def test_repeats_are_one_round_and_a_reset_restarts_the_times() -> None:
    check = ScheduleCheck(OURS)
    times = [k * S + S // 10 for k in range(1, 4)]
    assert _hear(check, times * 3) == [] and check.off_schedule == 2  # three distinct rounds, two off
    check.reset()
    assert _hear(check, times) == []  # the times restart: still three, no finding yet


def test_bad_windows_are_refused() -> None:
    with pytest.raises(ValueError, match="window >= 3"):
        ScheduleCheck(OURS, window=2)


def test_a_stage_on_another_period_that_skips_rounds_still_shows_it() -> None:
    check = ScheduleCheck(OURS)
    heard = [t * S // 2 + S // 10 for t in (2, 3, 5, 6, 8, 9)]  # every 0.5 s, a third skipped
    (f,) = _hear(check, heard)
    assert (f.period_ns, f.phase_ns) == (S // 2, S // 10)


def test_bursts_on_a_fine_grid_are_not_a_period() -> None:
    check = ScheduleCheck(OURS)
    # activity rounds on 100 ms bin ends, a second or more apart, between our own rounds
    heard = [2 * S + S // 10, 3 * S + 4 * S // 10, 4 * S + S // 10, 5 * S + 7 * S // 10, 6 * S + S // 10]
    assert _hear(check, heard) == [] and check.off_schedule == 2
