"""The replay player's scheduling (ROS-free): pacing by bag time, fast mode held by rounds in flight."""

from __future__ import annotations

import pytest

from cascade_sd_ros.tools.replay.schedule import Publish, RoundTracker, Scheduler, Wait

S = 1_000_000_000


def test_paced_publishes_at_recorded_time_scaled_by_rate() -> None:
    sched = Scheduler(start_bag_ns=10 * S, rate=2.0, clock_period_s=1.0)
    sched.start(now_wall=100.0)
    assert sched.plan(10 * S, now_wall=100.0) == Publish(10 * S)
    # A message 1 s of bag time later is due 0.5 s of wall time later at rate 2.
    action = sched.plan(11 * S, now_wall=100.2)
    assert isinstance(action, Wait) and action.seconds == pytest.approx(0.3)
    assert action.clock_ns == 10 * S + int(0.4 * S)  # /clock follows bag time meanwhile
    assert sched.plan(11 * S, now_wall=100.5) == Publish(11 * S)


def test_paced_wait_is_capped_by_clock_period() -> None:
    sched = Scheduler(start_bag_ns=0, rate=1.0, clock_period_s=0.01)
    sched.start(0.0)
    action = sched.plan(5 * S, now_wall=0.0)
    assert isinstance(action, Wait) and action.seconds == pytest.approx(0.01) and not action.gated


def test_fast_runs_free_until_a_round_opens_then_holds_past_lookahead() -> None:
    sched = Scheduler(start_bag_ns=0, rate=None, lookahead_ns=S // 2)
    sched.start(0.0)
    assert sched.plan(3 * S, now_wall=0.0) == Publish(3 * S)
    sched.tracker.observe(round_id=7, final=False, bag_ns=3 * S, wall=0.0)
    assert sched.plan(3 * S + S // 4, now_wall=0.1) == Publish(3 * S + S // 4)  # within lookahead
    held = sched.plan(4 * S, now_wall=0.2)
    assert isinstance(held, Wait) and held.gated
    assert held.clock_ns == 3 * S + S // 2  # sim time runs to the limit so sim-time waits expire
    sched.tracker.observe(round_id=7, final=True, bag_ns=3 * S + S // 2, wall=0.3)
    assert sched.plan(4 * S, now_wall=0.3) == Publish(4 * S)


def test_fast_stalled_round_releases_the_player() -> None:
    sched = Scheduler(start_bag_ns=0, rate=None, lookahead_ns=0, stall_s=5.0)
    sched.start(0.0)
    sched.tracker.observe(1, final=False, bag_ns=0, wall=0.0)
    assert isinstance(sched.plan(S, now_wall=4.0), Wait)
    assert sched.plan(S, now_wall=5.5) == Publish(S)
    assert sched.tracker.stalled == {1}


def test_drain_until_rounds_final() -> None:
    sched = Scheduler(start_bag_ns=0, rate=1.0, lookahead_ns=S)
    sched.start(0.0)
    assert sched.drain(end_bag_ns=2 * S, now_wall=2.0) is None  # nothing in flight
    sched.tracker.observe(3, final=False, bag_ns=2 * S, wall=2.0)
    w = sched.drain(end_bag_ns=2 * S, now_wall=10.0)
    assert isinstance(w, Wait) and w.clock_ns == 3 * S  # capped a lookahead past the end
    sched.tracker.observe(3, final=True, bag_ns=3 * S, wall=10.1)
    assert sched.drain(end_bag_ns=2 * S, now_wall=10.2) is None


def test_clock_never_goes_backwards() -> None:
    sched = Scheduler(start_bag_ns=5 * S, rate=None)
    sched.start(0.0)
    assert sched.plan(6 * S, 0.0) == Publish(6 * S)
    # An out-of-order record in the bag is still published, but /clock stays monotonic.
    assert sched.plan(5 * S, 0.0) == Publish(6 * S)


def test_tracker_orders_in_flight_by_opening() -> None:
    t = RoundTracker()
    t.observe(5, False, bag_ns=20, wall=0.0)
    t.observe(4, False, bag_ns=10, wall=0.0)
    t.observe(5, False, bag_ns=30, wall=1.0)  # later messages do not move the opening time
    assert t.in_flight() == [4, 5] and t.opened == 2
    t.observe(4, True, bag_ns=40, wall=2.0)
    assert t.in_flight() == [5]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rate": 0.0}, "rate"),
        ({"rate": None, "lookahead_ns": -1}, "lookahead"),
        ({"rate": 1.0, "stall_s": 0.0}, "stall"),
    ],
)
def test_bad_settings_are_named(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Scheduler(start_bag_ns=0, **kwargs)


def test_plan_before_start_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="start"):
        Scheduler(start_bag_ns=0, rate=1.0).plan(0, 0.0)


def test_final_round_supersedes_older_open_ones() -> None:
    t = RoundTracker()
    t.observe(100, False, bag_ns=1, wall=0.0)
    t.observe(200, False, bag_ns=2, wall=0.0)
    t.observe(300, False, bag_ns=3, wall=0.0)
    t.observe(200, True, bag_ns=4, wall=0.0)  # the verifier dropped round 100 (overload)
    assert t.in_flight() == [300] and t.superseded == {100}
