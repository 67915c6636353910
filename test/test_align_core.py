"""Alignment core: time buffers, clock jumps, clip selection, offsets and their online estimate."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cascade_sd_ros.core.align import (
    ClockJumpDetector,
    OffsetEstimator,
    StaleRoundFilter,
    StreamOffsets,
    TimeBuffer,
    nearest_frame,
    select_clip,
)
from cascade_sd_ros.core.align.clip import clip_targets


@given(st.lists(st.integers(0, 10_000), max_size=60), st.integers(1, 20))
@settings(max_examples=60, deadline=None)
def test_buffer_keeps_newest_sorted_and_counts_drops(stamps: list[int], capacity: int) -> None:
    buf: TimeBuffer[int] = TimeBuffer(capacity)
    for t in stamps:
        buf.insert(t, t * 10)
    distinct = sorted(set(stamps))
    kept = [s for s, _ in buf.window(-1, 10**9)]
    assert kept == sorted(kept)
    assert len(kept) == min(len(distinct), capacity)
    # whatever was kept is among the newest stamps seen, and each item matches its stamp
    assert all(item == s * 10 for s, item in buf.window(-1, 10**9))
    assert buf.dropped >= len(distinct) - capacity


def test_buffer_out_of_order_window_and_nearest() -> None:
    buf: TimeBuffer[str] = TimeBuffer(10)
    for t in (30, 10, 20, 50, 40):
        buf.insert(t, f"f{t}")
    assert [s for s, _ in buf.window(15, 45)] == [20, 30, 40]
    assert buf.nearest(26) == (30, "f30")
    assert buf.nearest(25) == (20, "f20")  # tie goes to the earlier frame
    assert buf.nearest(100, slop_ns=10) is None
    assert buf.nearest(58, slop_ns=10) == (50, "f50")
    buf.insert(30, "again")  # a re-sent message replaces, it is not a second item
    assert buf.window(30, 30) == [(30, "again")] and len(buf) == 5


def test_buffer_full_drops_oldest_and_rejects_older_than_all() -> None:
    buf: TimeBuffer[int] = TimeBuffer(3)
    for t in (1, 2, 3, 4):
        buf.insert(t, t)
    assert [s for s, _ in buf.window(0, 9)] == [2, 3, 4] and buf.dropped == 1
    assert buf.insert(0, 0) is False and buf.dropped == 2
    buf.mark_consumed(3)  # rounds are done with everything before 3
    buf.insert(5, 5)
    assert buf.expired == 1 and buf.dropped == 2  # evicting 2 was expiry, not loss
    buf.insert(6, 6)
    assert buf.dropped == 3  # 3 was still needed
    with pytest.raises(ValueError):
        TimeBuffer(0)


def test_clock_jump_detector_tolerates_jitter_and_flags_loops() -> None:
    d = ClockJumpDetector(tolerance_ns=100)
    assert not any(d.observe(t) for t in (1000, 1050, 990, 1100))  # 60 back: reordering, not a jump
    assert d.observe(900) is True and d.jumps == 1  # bag loop
    assert d.observe(950) is False  # restarted at 900


def test_stale_round_filter_drops_old_timeline_until_each_source_realigns() -> None:
    f = StaleRoundFilter(tolerance_ns=100)
    assert f.admit("drafter", 10_000, newest_input_ns=None)  # no jump yet: everything counts
    f.reset()  # the bag looped: this stage's newest input is now at 500
    assert not f.admit("drafter", 9_000, newest_input_ns=500)  # in flight from before the loop
    assert not f.admit("verifier", 9_100, newest_input_ns=500)
    assert f.admit("drafter", 590, newest_input_ns=500)  # within tolerance: the new timeline
    assert f.admit("drafter", 9_000, newest_input_ns=500)  # from now on this source is trusted
    assert not f.admit("verifier", 9_200, newest_input_ns=500)  # the other source still is not
    assert not f.admit("verifier", 700, newest_input_ns=None)  # nothing to judge by: not admitted
    assert f.stale == 4
    f.reset()
    assert not f.admit("drafter", 9_000, newest_input_ns=500)  # a second jump makes it suspect again
    with pytest.raises(ValueError):
        StaleRoundFilter(-1)


def test_select_clip_spans_window_uniformly_and_reuses_neighbours_for_drops() -> None:
    buf: TimeBuffer[int] = TimeBuffer(100)
    period = 33_333_333
    stamps = [i * period for i in range(60) if i not in (50, 51, 52)]  # three dropped frames
    for s in stamps:
        buf.insert(s, s)
    end = 59 * period
    clip = select_clip(buf, end, 1_000_000_000, 8, 20_000_000)
    assert clip is not None and len(clip.stamps_ns) == 8
    assert clip.stamps_ns == tuple(sorted(clip.stamps_ns))
    assert clip.stamps_ns[-1] == end and clip.newest_skew_ns == 0
    assert all(end - 1_000_000_000 - 20_000_000 <= s <= end for s in clip.stamps_ns)
    targets = clip_targets(end, 1_000_000_000, 8)
    for s, t in zip(clip.stamps_ns, targets):
        assert abs(s - t) <= 3 * period  # nearest, even across the dropped frames
    assert select_clip(buf, 10 * 10**9, 1_000_000_000, 8, 0) is None


def test_nearest_frame_respects_slop() -> None:
    buf: TimeBuffer[int] = TimeBuffer(10)
    buf.insert(100, 1)
    assert nearest_frame(buf, 110, 10) == (100, 1)
    assert nearest_frame(buf, 111, 10) is None


def test_stream_offsets_convert_both_ways_and_name_unknown_streams() -> None:
    off = StreamOffsets({"image": 30})
    assert off.to_reference("image", 100) == 130 and off.from_reference("image", 130) == 100
    with pytest.raises(KeyError, match="events"):
        off.offset("events")


def _moving_world(offset_ns: int, seconds: float = 4.0) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """Bursts of motion: events (event clock) and frames (frame clock) from the same world."""
    rng = np.random.default_rng(0)
    fps_ns = 33_333_333
    frames = []
    ev_times = []
    x = 0
    for k in range(int(seconds * 1e9 / fps_ns)):
        t = k * fps_ns
        moving = (k // 10) % 3 == 0 or (k // 7) % 4 == 1  # irregular bursts of motion
        if moving:  # the box moves during (t - frame period, t]: events then, and a frame difference
            x = (x + 3) % 24
        img = np.zeros((32, 32), np.uint8)
        img[10:20, x : x + 8] = 200
        frames.append((t, img))
        if moving:
            ev_times.append(t - fps_ns + rng.integers(0, fps_ns, 400) + offset_ns)
    return np.concatenate(ev_times), frames


@pytest.mark.parametrize("offset_ns", [0, 60_000_000, -40_000_000])
def test_offset_estimator_recovers_the_true_offset(offset_ns: int) -> None:
    events, frames = _moving_world(offset_ns)
    est = OffsetEstimator(max_offset_ns=150_000_000, step_ns=2_000_000)
    assert est.estimate() is None  # nothing yet: no claim
    est.add_events(events)
    for t, img in frames:
        est.add_frame(t, img)
    got = est.estimate()
    assert got is not None and got.correlation > 0.5 and got.identifiable()
    assert abs(got.offset_ns - offset_ns) <= 10_000_000
    est.reset()
    assert est.estimate() is None


def test_offset_estimator_says_when_steady_motion_leaves_the_offset_open() -> None:
    """Constant motion: events at a steady rate, frame differences all alike -> no sharp peak."""
    rng = np.random.default_rng(1)
    fps_ns = 33_333_333
    est = OffsetEstimator(max_offset_ns=150_000_000, step_ns=2_000_000)
    x = 0
    for k in range(120):
        x = (x + 1) % 24
        img = np.zeros((32, 32), np.uint8)
        img[10:20, x : x + 8] = 200
        est.add_frame(k * fps_ns, img)
        est.add_events(k * fps_ns - rng.integers(0, fps_ns, 300))
    got = est.estimate()
    assert got is None or not got.identifiable()
