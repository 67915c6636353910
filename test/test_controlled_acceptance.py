"""Controlled-acceptance drafts (benchmarks only): each token right with probability alpha, the same
verdict for a position drafted twice, nothing drafted past the caption, the reference file checked
on the way in, and through the three Stages the caption stays the verifier alone's."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from cascade_sd_ros.core.names import STAGE_DRAFTER, STAGE_REFINER
from cascade_sd_ros.core.spec.testing import TableLM
from cascade_sd_ros.core.stages.controlled import REFERENCE_SCHEMA, ControlledAcceptance, write_reference

VOCAB = 32
TRUTH = [5, 9, 2, 30, 7, 7, 1, 18, 4, 11, 3, 25]
T = 2_000_000_000


def _controlled(alpha: float, stage: int = STAGE_DRAFTER, seed: int = 0) -> ControlledAcceptance:
    return ControlledAcceptance(alpha, {T: TRUTH}, VOCAB, stage=stage, seed=seed)


def test_alpha_one_drafts_the_reference_and_alpha_zero_never_does() -> None:
    assert _controlled(1.0)(T, TRUTH[:3], [0, 0, 0, 0]) == TRUTH[3:7]
    wrong = _controlled(0.0)(T, TRUTH[:3], [0] * 9)
    assert len(wrong) == 9 and all(w != t and 0 <= w < VOCAB for w, t in zip(wrong, TRUTH[3:12]))


def test_each_token_is_right_with_probability_alpha() -> None:
    """4,800 positions (400 rounds x 12): the share right lies within 4 standard deviations of alpha."""
    for alpha in (0.5, 0.7, 0.9):
        captions = {t: TRUTH for t in range(400)}
        c = ControlledAcceptance(alpha, captions, VOCAB, stage=STAGE_REFINER, seed=3)
        right = sum(x == y for t in captions for x, y in zip(c(t, [], [0] * 12), TRUTH))
        n = 400 * len(TRUTH)
        assert abs(right / n - alpha) < 4 * math.sqrt(alpha * (1 - alpha) / n), (alpha, right / n)
        assert c.right == right and c.rewritten == 400


def test_a_position_drafted_again_gets_the_same_verdict_and_stages_draw_apart() -> None:
    c = _controlled(0.5)
    first = c(T, TRUTH[:2], [0] * 6)
    assert c(T, TRUTH[:2], [1] * 6) == first  # a re-draft of the same positions after a roll-back
    assert c(T, TRUTH[:4], [0] * 4) == first[2:]  # later positions keep theirs too
    other = _controlled(0.5, stage=STAGE_REFINER)(T, TRUTH[:2], [0] * 6)
    assert other != first  # independent stages (this seed's draws differ)


def test_nothing_past_the_caption_positions_rule_off_script_and_unknown_rounds_are_left_alone() -> None:
    c = _controlled(1.0)
    assert c(T, TRUTH[:10], [0] * 6) == TRUTH[10:]  # two left of the caption: two drafted
    assert c(T, TRUTH, [0] * 3) == []  # the caption is complete: nothing to draft
    off = [TRUTH[0], 31]  # speculated past a wrong token of its own: each position still draws
    assert c(T, off, [6, 6]) == TRUTH[2:4]
    wrong = _controlled(0.0)
    # alpha 0 never lets a model's own token through, whatever prefix it speculated on (a verifier
    # may check a draft by position: the accepted count must stay 0)
    assert all(w != t for w, t in zip(wrong(T, off, TRUTH[2:4]), TRUTH[2:4]))
    assert c(T + 1, [], [6, 6]) == [6, 6] and c.unknown_rounds == 1


def test_the_reference_file_round_trips_and_bad_files_are_named(tmp_path: Path) -> None:
    good = tmp_path / "captions.json"
    write_reference(good, {T: TRUTH, -5: [1]})
    loaded = ControlledAcceptance.load(good, 0.7, VOCAB, stage=STAGE_DRAFTER)
    assert loaded.captions == {T: TRUTH, -5: [1]} and loaded.alpha == 0.7
    cases = {
        "missing.json": (None, "cannot read"),
        "garbage.json": ("{not json", "not JSON"),
        "schema.json": (json.dumps({"schema": "other", "captions": {}}), "not a cascade_sd_ros/reference"),
        "shape.json": (json.dumps({"schema": REFERENCE_SCHEMA, "captions": [1, 2]}), "must map round times"),
        "key.json": (json.dumps({"schema": REFERENCE_SCHEMA, "captions": {"abc": [1]}}), "round 'abc'"),
        "ids.json": (json.dumps({"schema": REFERENCE_SCHEMA, "captions": {"1": [VOCAB]}}), r"token ids in \[0, 32\)"),
        "float.json": (json.dumps({"schema": REFERENCE_SCHEMA, "captions": {"1": [1.5]}}), "token ids"),
    }
    for name, (body, why) in cases.items():
        path = tmp_path / name
        if body is not None:
            path.write_text(body)
        with pytest.raises(ValueError, match=why) as err:
            ControlledAcceptance.load(path, 0.7, VOCAB, stage=STAGE_DRAFTER)
        assert str(path) in str(err.value)
    with pytest.raises(ValueError, match="alpha"):
        ControlledAcceptance(1.5, {}, VOCAB, stage=STAGE_DRAFTER)


def test_through_the_three_stages_the_caption_is_the_verifier_alones_at_any_alpha() -> None:
    """Upstream models that disagree with the target, rewritten: the more alpha, the more accepted and
    the fewer target forwards; the caption is the target's every time."""
    from test_stages import CTX as STAGE_CTX
    from test_stages import MAX_NEW, SEED, Cascade, target_only_greedy

    alone = target_only_greedy(TableLM(SEED, VOCAB), STAGE_CTX, MAX_NEW)
    forwards = {}
    for alpha in (0.0, 1.0):
        cascade = Cascade(TableLM(7, VOCAB), TableLM(8, VOCAB))
        # every draft checked: whether one pays is measured in microseconds here, which noise decides
        cascade.verifier._value.probe_every = 1
        reference = {100_000_000: alone}
        cascade.drafter.control_acceptance(ControlledAcceptance(alpha, reference, VOCAB, stage=STAGE_DRAFTER))
        cascade.refiner.control_acceptance(ControlledAcceptance(alpha, reference, VOCAB, stage=STAGE_REFINER))
        final = cascade.run()
        assert list(final.token_ids) == alone, alpha
        assert cascade.drafter.snapshot()["controlled_alpha"] == alpha
        forwards[alpha] = final.target_forwards
        if alpha == 0.0:
            assert sum(final.accepted_per_stage) == 0 and sum(final.drafted_per_stage) > 0
        else:  # the first wait has no arrival figure to cut it short: at least that draft is checked
            assert sum(final.accepted_per_stage) > 0
    assert forwards[1.0] < forwards[0.0] == len(alone)


# ------------------------------------------------------------------ drafts that do not pay are not checked
def test_draft_value_skips_a_stage_whose_drafts_cost_more_than_they_commit_and_probes_it() -> None:
    from cascade_sd_ros.core.stages.draft_value import DraftValue

    v = DraftValue(alpha=1.0, probe_every=4)  # alpha 1: each EMA is the last figure, to read the rule
    assert v.use(STAGE_DRAFTER) and v.pays(STAGE_REFINER)  # nothing measured: every draft is checked
    v.verified(None, 0, 0, 0.010)  # a step alone: 10 ms
    v.verified(STAGE_DRAFTER, 0, 4, 0.013)  # 4 drafted, none kept, 13 ms: 1 token in 13 ms < 1 in 10
    v.verified(STAGE_REFINER, 1, 6, 0.016)  # 2 tokens in 16 ms > 1 in 10: pays
    assert not v.pays(STAGE_DRAFTER) and v.pays(STAGE_REFINER)
    decisions = [v.use(STAGE_DRAFTER) for _ in range(8)]
    assert decisions == [False, False, False, True] * 2  # a probe every fourth decision
    assert v.skipped[STAGE_DRAFTER] == 6 and v.probes[STAGE_DRAFTER] == 2
    assert all(v.use(STAGE_REFINER) for _ in range(8)) and STAGE_REFINER not in v.skipped
    v.verified(STAGE_DRAFTER, 3, 4, 0.013)  # a probe that agrees: 4 tokens in 13 ms, taken up again
    assert v.pays(STAGE_DRAFTER) and v.use(STAGE_DRAFTER)
    with pytest.raises(ValueError):
        DraftValue(alpha=0.0)


def test_the_verifier_decodes_alone_past_drafts_that_do_not_pay_and_the_caption_is_unchanged() -> None:
    """Drafts measured as not paying (slow to check, nothing kept) are skipped but for probes: the
    verifier takes about one target forward per token, and its caption is the target's."""
    from test_stages import CTX as STAGE_CTX
    from test_stages import MAX_NEW, SEED, Cascade, target_only_greedy

    alone = target_only_greedy(TableLM(SEED, VOCAB), STAGE_CTX, MAX_NEW)
    cascade = Cascade(TableLM(SEED, VOCAB), TableLM(SEED, VOCAB))  # drafts that would all be accepted
    value = cascade.verifier._value
    value.alone_s, value.accepted, value.cost_s = 1e-6, {0: 0.0, 1: 0.0}, {0: 1.0, 1: 1.0}
    final = cascade.run()
    assert list(final.token_ids) == alone
    snap = cascade.verifier.snapshot()
    # seven steps alone (no draft checked, none waited for), then the eighth decision probes both
    # stages: once a probe's draft is checked and accepted whole, the drafts pay again and carry the
    # rest (a probe that finds no draft in hand yet is a step alone: another seven may pass)
    assert snap["drafts_skipped_drafter"] >= 7 and snap["drafts_skipped_refiner"] >= 7
    assert snap["draft_probes_drafter"] >= 1 and snap["draft_probes_refiner"] >= 1
    assert 8 <= final.target_forwards < len(alone)
