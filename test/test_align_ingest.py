"""The RGB ingest state machine the refiner and verifier share: size check, jump reset, due rounds."""

from __future__ import annotations

import numpy as np
import pytest

from cascade_sd_ros.core.align import FrameIngest, StreamOffsets
from cascade_sd_ros.core.stages.schedule import RoundSchedule

MS = 1_000_000


def _frame(h: int = 4, w: int = 6) -> np.ndarray:
    return np.zeros((h, w, 3), np.uint8)


def _ingest(**kw: int) -> FrameIngest:
    args = dict(buffer_size=50, jump_tolerance_ns=500 * MS, period_ns=1000 * MS, phase_ns=0, slop_ns=20 * MS)
    args.update(kw)
    offset = args.pop("offset_ns", 0)
    schedule = RoundSchedule(args.pop("period_ns"), args.pop("phase_ns"))
    return FrameIngest(offsets=StreamOffsets({"image": offset}), schedule=schedule, **args)


def test_rounds_open_once_a_frame_passes_them_by_slop() -> None:
    ing = _ingest()
    assert ing.add(900 * MS, _frame()).rounds_ns == ()
    assert ing.add(1010 * MS, _frame()).rounds_ns == ()  # 1 s is not yet passed by slop
    assert ing.add(1030 * MS, _frame()).rounds_ns == (1000 * MS,)
    assert ing.add(3100 * MS, _frame()).rounds_ns == (2000 * MS, 3000 * MS)
    assert ing.add(3200 * MS, _frame()).rounds_ns == ()


def test_a_round_whose_window_starts_before_the_first_frame_is_skipped() -> None:
    ing = _ingest(lead_ns=500 * MS)
    assert ing.add(800 * MS, _frame()).rounds_ns == ()
    # 1 s needs frames from 0.5 s on (less slop): skipped; 2 s is covered
    assert ing.add(2100 * MS, _frame()).rounds_ns == (2000 * MS,)


def test_rounds_are_on_the_reference_clock() -> None:
    ing = _ingest(offset_ns=300 * MS)  # a frame stamped t happened at t + 0.3 s
    assert ing.add(600 * MS, _frame()).rounds_ns == ()
    assert ing.add(750 * MS, _frame()).rounds_ns == (1000 * MS,)


def test_prompt_only_rounds_open_nothing() -> None:
    ing = _ingest(period_ns=0)
    assert ing.add(5000 * MS, _frame()).rounds_ns == ()


def test_another_size_is_malformed_until_adopted() -> None:
    ing = _ingest()
    assert ing.add(100 * MS, _frame()).malformed == ""
    got = ing.add(110 * MS, _frame(8, 10))
    assert "10x8" in got.malformed and "6x4" in got.malformed
    assert len(ing.frames) == 1
    results = [ing.add((120 + i) * MS, _frame(8, 10)) for i in range(ing.shape.adopt_after - 1)]
    assert all(r.malformed for r in results[:-1])
    assert results[-1].size_changed and not results[-1].malformed
    assert [rgb.shape for _, rgb in ing.frames.window(0, 10**12)] == [(8, 10, 3)]


def test_a_backward_jump_resets_frames_and_round_times() -> None:
    ing = _ingest()
    ing.add(1000 * MS, _frame())
    assert ing.add(2100 * MS, _frame()).rounds_ns == (2000 * MS,)
    got = ing.add(200 * MS, _frame())
    assert got.time_jumped and ing.jump.jumps == 1
    assert [t for t, _ in ing.frames.window(0, 10**12)] == [200 * MS]
    # round times start over: the looped stream's 1 s round opens again
    assert ing.add(1100 * MS, _frame()).rounds_ns == (1000 * MS,)


def test_small_reorderings_are_not_jumps() -> None:
    ing = _ingest()
    ing.add(1000 * MS, _frame())
    assert not ing.add(700 * MS, _frame()).time_jumped
    assert len(ing.frames) == 2


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="lead_ns"):
        _ingest(lead_ns=-1)
    with pytest.raises(KeyError, match="events"):
        FrameIngest(
            offsets=StreamOffsets({"image": 0}),
            buffer_size=4,
            jump_tolerance_ns=0,
            schedule=RoundSchedule(0),
            slop_ns=0,
            stream="events",
        )
