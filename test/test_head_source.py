"""The draft head as the verifier's own draft source (core, no ROS): which draft a step checks, the
head's rounds with event tokens on time, late or missing, and the drafter's tokens taken from its
own prefill (no second encode)."""

from __future__ import annotations

import pytest
import torch

from cascade_sd_ros.core.head.adapter import STOP_BELOW
from cascade_sd_ros.core.head.features import ProjectorTap, event_tokens
from cascade_sd_ros.core.head.io import event_encoder_fingerprint, load_head
from cascade_sd_ros.core.names import STAGE_DRAFTER, STAGE_HEAD, STAGE_REFINER
from cascade_sd_ros.core.rounds import Draft
from cascade_sd_ros.core.spec.tree import UNSURE_BELOW, DraftTree
from cascade_sd_ros.core.stages.head_source import (
    HeadSource,
    SourceWorth,
    expected_accepted,
    open_draft_head,
    pick_draft,
)
from cascade_sd_ros.core.zoo import Zoo, default_zoo_path, load_zoo
from cascade_sd_ros.core.zoo.data import EVAL_STREAM, build_sample

SHIPPED = default_zoo_path() / "head"


def _draft(stage: int, conf: list[float]) -> tuple[Draft, list[int]]:
    tokens = [5 + i for i in range(len(conf))]
    d = Draft(stage=stage, commit_seq=1, start_position=0, token_ids=tuple(tokens), confidence=tuple(conf))
    return d, tokens


def test_expected_accepted_is_the_sum_of_running_products() -> None:
    assert expected_accepted([1.0, 1.0, 1.0]) == 3.0
    assert expected_accepted([0.5, 0.5]) == pytest.approx(0.75)
    assert expected_accepted([0.0, 1.0]) == 0.0 and expected_accepted([]) == 0.0


def test_pick_draft_takes_the_draft_worth_more_as_measured() -> None:
    worth = SourceWorth(alpha=0.5)
    head, refiner = _draft(STAGE_HEAD, [0.9, 0.9, 0.9]), _draft(STAGE_REFINER, [0.95, 0.95, 0.95, 0.95])
    assert pick_draft(None, head, worth) is head and pick_draft(refiner, None, worth) is refiner
    assert pick_draft(refiner, head, worth) is refiner  # more expected tokens by its confidences
    assert pick_draft(_draft(STAGE_DRAFTER, [0.9, 0.9, 0.9]), head, worth) is head  # a tie: the head's
    for _ in range(6):  # the refiner's confidences keep promising more than it delivers
        worth.verified(STAGE_REFINER, [0.95] * 4, 0)
        worth.verified(STAGE_HEAD, [0.9] * 3, 3)
    assert pick_draft(refiner, head, worth) is head
    assert worth.chosen[STAGE_REFINER] == 6 and worth.chosen[STAGE_HEAD] == 6


@pytest.fixture(scope="module")
def zoo() -> Zoo:
    return load_zoo()


def test_drafter_tokens_come_from_its_own_prefill(zoo: Zoo) -> None:
    _, events, _ = build_sample(0, EVAL_STREAM, 0, zoo.geometry)
    ctx = zoo.context("drafter", events)
    tap = ProjectorTap(zoo.drafter.model)
    try:
        assert tap.take() is None
        zoo.drafter.prefill(ctx)
        caught = tap.take()
        assert caught is not None and tap.take() is None  # handed over once
        torch.testing.assert_close(caught, event_tokens(zoo.drafter.model, ctx.pixel_values))
    finally:
        tap.close()
    zoo.drafter.prefill(ctx)
    assert tap.take() is None  # unhooked
    meta = load_head(SHIPPED)[2]
    assert event_encoder_fingerprint(zoo.drafter.model) == meta["event_encoder"]
    with pytest.raises(ValueError, match="no vision tower"):
        event_encoder_fingerprint(zoo.target.model.model.language_model)


def test_head_rounds_fused_late_and_target_only(zoo: Zoo) -> None:
    spec, why = open_draft_head(SHIPPED, zoo.target)
    assert spec is not None, why
    source = HeadSource(spec.adapter, gamma=4, gamma_max=8)
    samples = [build_sample(0, EVAL_STREAM, i, zoo.geometry) for i in range(3)]
    tokens = [event_tokens(zoo.drafter.model, zoo.context("drafter", ev).pixel_values) for _, ev, _ in samples]

    def start(i: int) -> None:
        ctx = zoo.context("target", samples[i][0])
        zoo.target.prefill(ctx)
        source.begin(100 + i, ctx.input_ids[-1])

    start(0)  # no features yet: target states alone
    assert not spec.adapter.has_events
    spec.adapter.stop_below = 0.7
    first = source.draft([], 8)
    assert first is not None and first[0].stage == STAGE_HEAD
    # it stops on its own confidence, so its length is its own up to the ceiling (gamma_max 8)...
    conf = first[0].confidence
    assert 1 <= len(first[1]) <= 8 and all(c >= spec.adapter.stop_below for c in conf[:-1])
    spec.adapter.stop_below = 0.0  # ...and without a floor it is the adapted length (gamma 4)
    assert (fixed := source.draft([], 8)) is not None and len(fixed[1]) == 4
    spec.adapter.stop_below = STOP_BELOW
    source.offer_features(100, tokens[0])  # late: read from the next draft on
    assert source.draft([], 8) is not None and spec.adapter.has_events
    source.offer_features(102, tokens[2])  # early for a later round: kept for it
    start(1)  # round 101's features never come
    assert not spec.adapter.has_events and source.draft([], 8) is not None
    source.offer_features(100, tokens[0])  # a round the verifier is past: dropped
    start(2)
    assert spec.adapter.has_events
    source.finish()
    counts = source.snapshot()
    assert (counts["head.rounds"], counts["head.rounds_fused"], counts["head.rounds_late"]) == (3, 1, 1)
    assert counts["head.rounds_target_only"] == 1 and counts["head.features_unused"] == 1
    assert source.draft([], 0) is None  # no budget left: no draft


def test_a_target_without_kept_states_is_refused(zoo: Zoo) -> None:
    spec, why = open_draft_head(SHIPPED, object())
    assert spec is None and "keeps no hidden states" in why
    spec, why = open_draft_head(SHIPPED.parent / "nowhere", zoo.target)
    assert spec is None and "lacks head.json" in why


def test_prefill_hiding_draft_rides_in_the_prefill_once(zoo: Zoo) -> None:
    spec, why = open_draft_head(SHIPPED, zoo.target)
    assert spec is not None, why
    source = HeadSource(spec.adapter, gamma=4, gamma_max=8, prefill_draft=True)
    clip, events, _ = build_sample(0, EVAL_STREAM, 1, zoo.geometry)
    ctx = zoo.context("target", clip)
    assert source.early_draft(7, ctx.input_ids[-1], 8) == []  # no event tokens in hand: nothing early
    source.offer_features(7, event_tokens(zoo.drafter.model, zoo.context("drafter", events).pixel_values))
    early = source.early_draft(7, ctx.input_ids[-1], 8)
    assert len(early) == 4
    zoo.target.prefill(ctx, caption=early)
    f0 = zoo.target.forwards
    source.begin(7, ctx.input_ids[-1])
    first = source.draft([], 8)
    assert first is not None and first[1] == early  # the carried draft is checked first...
    zoo.target.score([], first[1])
    assert zoo.target.forwards == f0  # ...at no forward of its own
    assert source.draft([], 8) is not None and source.snapshot()["head.prefill_drafts"] == 1
    source.begin(8, ctx.input_ids[-1])  # a later round never sees an earlier round's carried draft
    later = source.draft([], 8)
    assert later is not None and source.snapshot()["head.prefill_drafts"] == 1


def test_branched_head_drafts_are_deviation_trees_of_their_chain(zoo: Zoo) -> None:
    spec, why = open_draft_head(SHIPPED, zoo.target)
    assert spec is not None, why
    with pytest.raises(ValueError, match="branches"):
        HeadSource(spec.adapter, gamma=4, gamma_max=8, branches=-1)
    plain, branched = (HeadSource(spec.adapter, gamma=8, gamma_max=8, branches=n) for n in (0, 3))
    trees = 0
    for i in range(4):
        clip, _, _ = build_sample(0, EVAL_STREAM, i, zoo.geometry, max_objects=4)
        ctx = zoo.context("target", clip)
        zoo.target.prefill(ctx)
        got = []
        for source in (plain, branched):
            source.begin(200 + i, ctx.input_ids[-1])
            drafted = source.draft([], 8)
            assert drafted is not None
            got.append(drafted[0])
        chain, tree = got
        assert tree.token_ids == chain.token_ids and not chain.branches  # the same main chain
        assert tree.confidence == pytest.approx(chain.confidence)
        if tree.branches:
            trees += 1
            full = DraftTree.from_parts(tree.token_ids, tree.branches)
            # each branch leaves the chain once, at an unsure token, and then follows the chain's rest
            for node, (tok, parent) in enumerate(tree.branches, start=len(tree.token_ids)):
                if parent < len(tree.token_ids) - 1:
                    at = parent + 1
                    assert tok != tree.token_ids[at] and tree.confidence[at] < UNSURE_BELOW
                path = [full.tokens[j] for j in full.path(node)]
                assert len(path) <= len(tree.token_ids)
    assert trees > 0, "the head was sure of every token of four busy scenes"
    assert branched.snapshot()["head.branch_nodes"] > 0 and plain.snapshot()["head.branch_nodes"] == 0
