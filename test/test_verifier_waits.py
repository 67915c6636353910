"""How long the verifier waits for drafts: never while one is in hand, and adapted to how fast
drafts actually arrive (never past ``draft_wait``)."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest

from cascade_sd_ros.core.modes import mode_rules
from cascade_sd_ros.core.rounds import Draft
from cascade_sd_ros.core.spec.engine import target_only_greedy
from cascade_sd_ros.core.stage_model import load_stage_model
from cascade_sd_ros.core.stages import DraftWait, StageInput, VerifierStage

STAGE_DRAFTER, STAGE_REFINER = 0, 1
FRAMES = np.random.default_rng(9).integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)


def test_draft_wait_budget_follows_measured_arrival_within_its_bounds() -> None:
    w = DraftWait(0.03, floor_s=0.002, factor=3.0, alpha=0.5)
    assert w.budget_s() == 0.03  # nothing measured: the parameter
    w.arrived(0.002)
    assert w.budget_s() == pytest.approx(0.006)
    for _ in range(10):
        w.arrived(0.0001)
    assert w.budget_s() == 0.002  # never below the floor
    w.missed()
    w.missed()
    assert w.budget_s() > 0.002 and w.misses == 2  # a miss widens it again
    for _ in range(10):
        w.arrived(1.0)
    assert w.budget_s() == 0.03  # never above draft_wait


def test_draft_wait_never_exceeds_what_drafts_have_saved() -> None:
    from cascade_sd_ros.core.stages.draft_value import DraftValue

    w = DraftWait(0.1, floor_s=0.002, factor=3.0, alpha=0.5)
    v = DraftValue(alpha=0.5)
    stages = (STAGE_DRAFTER, STAGE_REFINER)
    v.verified(None, 0, 0, 0.010)  # the verifier decoding alone: a step's cost, no draft evidence
    assert v.saved_s(stages) is None and w.budget_s(v.saved_s(stages)) == 0.1
    v.verified(STAGE_DRAFTER, 3, 4, 0.012)  # a draft saved 3 steps alone of 10 ms each: worth 30 ms of waiting
    assert v.saved_s(stages) == pytest.approx(0.03) and w.budget_s(v.saved_s(stages)) == pytest.approx(0.03)
    assert v.saved_s((STAGE_REFINER,)) is None  # each stage's own worth
    for _ in range(12):
        v.verified(STAGE_DRAFTER, 0, 4, 0.012)  # drafts that keep failing (a scene the drafters never saw)
    assert w.budget_s(v.saved_s(stages)) < 0.001  # no longer worth waiting for: below the arrival floor
    v.verified(STAGE_REFINER, 8, 8, 0.013)
    assert v.saved_s(stages) == pytest.approx(8 * 0.010)  # the better stage bounds the wait
    assert w.budget_s(v.saved_s(stages)) == pytest.approx(0.08)


@pytest.fixture(scope="module")
def target() -> Any:
    return load_stage_model("tiny:2", "target")


def test_a_drafter_draft_in_hand_is_used_at_once_not_held_for_the_refiner(target: Any) -> None:
    """The refiner never delivers; the drafter's draft (the verifier's own caption) is in the book
    before the round starts. With a 2 s draft wait, holding it for the refiner would cost seconds."""
    alone = target_only_greedy(target.adapter, target.context(FRAMES, "q"), 8)
    finals: list[Any] = []
    done = threading.Event()

    def emit(u: Any) -> None:
        if u.final:
            finals.append(u)
            done.set()

    worker = VerifierStage(
        target,
        lambda r, g: StageInput(FRAMES, skew_ns=0, span_ns=1),
        emit,
        rules=mode_rules("lossless-greedy"),
        max_new_tokens=8,
        draft_wait_s=2.0,
        max_wait_s=0.5,
        use_stages=(STAGE_REFINER, STAGE_DRAFTER),
        question="q",
    )
    worker.open_round(10)
    worker.hear_draft(
        10,
        10,
        Draft(
            stage=STAGE_DRAFTER,
            commit_seq=0,
            start_position=0,
            token_ids=tuple(alone),
            confidence=tuple([0.9] * len(alone)),
        ),
    )
    worker.start()
    try:
        assert done.wait(60), "no final caption"
    finally:
        worker.stop()
    u = finals[0]
    assert list(u.token_ids) == alone
    assert u.accepted_per_stage[STAGE_DRAFTER] >= len(alone) - 1  # the drafter's draft carried the caption
    # it waited for no draft: the one in hand was checked at once, and no wait ran out
    assert worker.snapshot()["draft_wait_misses"] == 0 and STAGE_REFINER not in worker.record(10).stalled
    assert worker.snapshot()["prefills_with_draft"] == 1  # and it rode in the prefill forward: no verify of its own


def test_a_draft_too_late_for_its_round_still_says_its_stage_is_alive(target: Any) -> None:
    """A refiner slower than the verifier's rounds (a restarted process on a loaded CPU): its draft
    reaches a round already final, or one already forgotten. Neither is verified, but the stage is
    not silent any more, so the next round's caption does not call it missing."""
    finals: dict[int, Any] = {}
    done = threading.Condition()

    def emit(u: Any) -> None:
        if u.final:
            with done:
                finals[u.round_id] = u
                done.notify_all()

    worker = VerifierStage(
        target,
        lambda r, g: StageInput(FRAMES, skew_ns=0, span_ns=1),
        emit,
        rules=mode_rules("lossless-greedy"),
        max_new_tokens=4,
        draft_wait_s=0.0,
        max_wait_s=0.5,
        use_stages=(STAGE_REFINER,),
        question="q",
    )

    def final(round_id: int) -> Any:
        worker.open_round(round_id)
        with done:
            assert done.wait_for(lambda: round_id in finals, 60), f"no final caption for round {round_id}"
        return finals[round_id]

    def late(round_id: int) -> Draft:
        d = Draft(stage=STAGE_REFINER, commit_seq=0, start_position=0, token_ids=(5, 6), confidence=(0.9, 0.9))
        worker.hear_draft(round_id, round_id, d)
        return d

    worker.start()
    try:
        assert "no drafts from refiner" in final(10).degraded_reason  # never heard: silent
        late(10)  # the round is final and still in the book
        assert worker.record(10).drafts == [] and STAGE_REFINER not in worker.silent_stages([STAGE_REFINER], 5.0)
        assert final(20).degraded_reason == ""  # heard 0 s ago: slow, not missing
        deadline = time.monotonic() + 10
        while STAGE_REFINER not in worker.silent_stages([STAGE_REFINER], 0.2) and time.monotonic() < deadline:
            time.sleep(0.01)  # until it has been quiet for 0.2 s
        assert STAGE_REFINER in worker.silent_stages([STAGE_REFINER], 0.2)
        late(15)  # a round before the last final, never opened here (or forgotten)
        assert worker.record(15) is None and STAGE_REFINER not in worker.silent_stages([STAGE_REFINER], 0.2)
    finally:
        worker.stop()
