"""The upstream stages' draft length adapts to what the verifier accepts of their drafts
(``core.stages.gamma``, transformers' assistant schedule): +2 after a draft accepted whole, -1 after
one cut short, within [1, gamma_max]; a Commit that checked another stage's draft changes nothing."""

from __future__ import annotations

import pytest

from cascade_sd_ros.core.names import STAGE_DRAFTER, STAGE_NONE, STAGE_REFINER
from cascade_sd_ros.core.stage_model import load_stage_model
from cascade_sd_ros.core.stages import DrafterStage
from cascade_sd_ros.core.stages.gamma import AdaptiveGamma


def test_the_schedule_grows_on_full_acceptance_and_shrinks_on_a_miss_within_bounds() -> None:
    g = AdaptiveGamma(4, 9)
    g.observe(4, 4)
    assert g.value == 6
    g.observe(6, 6)
    g.observe(8, 8)
    assert g.value == 9  # the ceiling
    for _ in range(20):
        g.observe(0, 3)
    assert g.value == 1  # never below one token
    g.observe(0, 0)  # nothing checked: no evidence
    assert g.value == 1 and (g.grown, g.shrunk) == (3, 8)
    g.reset(3, 3)
    g.observe(3, 3)
    assert g.value == 3  # gamma_max == gamma: fixed


@pytest.mark.parametrize(("start", "ceiling"), [(0, 4), (5, 4)])
def test_bounds_that_make_no_sense_are_refused(start: int, ceiling: int) -> None:
    with pytest.raises(ValueError, match="gamma_max"):
        AdaptiveGamma(start, ceiling)


def test_a_stage_adapts_only_to_commits_that_checked_its_own_drafts() -> None:
    stage = DrafterStage(
        load_stage_model("tiny:0", "drafter"),
        lambda rec, given_up: None,
        lambda *a: None,
        gamma=4,
        lookahead=2,
        max_new_tokens=32,
        gamma_max=12,
    )
    rid, t = 1, 1_000
    assert stage.hear_commit(rid, t, 1, [5, 6, 7, 8, 9], False, (STAGE_DRAFTER, 4, 4))
    assert stage.gamma == 6 and stage.max_ahead == 12
    assert stage.hear_commit(rid, t, 2, [5, 6, 7, 8, 9, 1], False, (STAGE_REFINER, 0, 6))
    assert stage.hear_commit(rid, t, 3, [5, 6, 7, 8, 9, 1, 2], False, (STAGE_NONE, 0, 0))
    assert stage.gamma == 6  # the refiner's miss and the verifier's own token say nothing of the drafter
    assert stage.hear_commit(rid, t, 4, [5, 6, 7, 8, 9, 1, 2, 3], False, (STAGE_DRAFTER, 1, 6))
    assert stage.gamma == 5
    assert not stage.hear_commit(rid, t, 4, [5, 6, 7, 8, 9, 1, 2, 3], False, (STAGE_DRAFTER, 0, 6))
    assert stage.gamma == 5  # a repeated commit is no news: counted once
    snap = stage.snapshot()
    assert (snap["gamma"], snap["gamma_grown"], snap["gamma_shrunk"]) == (5, 1, 1)
