"""The event drafter's round-start tree through the core stages (no ROS): it reaches the verifier
before its prefill, rides in that forward, and the caption is the verifier alone's token for token,
in fewer verifier forwards than the same drafter's plain chain needs."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from cascade_sd_ros.core.modes import mode_rules
from cascade_sd_ros.core.rounds import Draft
from cascade_sd_ros.core.spec.engine import target_only_greedy
from cascade_sd_ros.core.stage_model import StageModel, load_stage_model
from cascade_sd_ros.core.stages import CaptionUpdate, DrafterStage, StageInput, VerifierStage
from cascade_sd_ros.core.zoo import DEFAULT_QUESTION, default_zoo_path, load_zoo
from cascade_sd_ros.core.zoo.data import EVAL_STREAM, build_sample

MAX_NEW = 32
T_NS = 100_000_000


@pytest.fixture(scope="module")
def models() -> tuple[StageModel, StageModel]:
    zoo = default_zoo_path()
    return load_stage_model(str(zoo / "target"), "target"), load_stage_model(str(zoo / "drafter"), "drafter")


@pytest.fixture(scope="module")
def scenes() -> list[tuple[np.ndarray, np.ndarray]]:
    geometry = load_zoo().geometry
    out = []
    for i in range(4):
        clip, events, _ = build_sample(0, EVAL_STREAM, i, geometry, max_objects=2)
        assert events is not None
        out.append((clip, events))
    return out


def _round(
    models: tuple[StageModel, StageModel], clip: np.ndarray, events: np.ndarray, tree_nodes: int
) -> tuple[CaptionUpdate, dict, list[Draft]]:
    target, drafter = models
    finals: list[CaptionUpdate] = []
    drafts: list[Draft] = []
    done, drafted = threading.Event(), threading.Event()

    def emit(u: CaptionUpdate) -> None:
        drafter_stage.hear_commit(u.round_id, u.t_ns, u.commit_seq, u.token_ids, u.final)
        if u.final:
            finals.append(u)
            done.set()

    def publish(round_id: int, t_ns: int, d: Draft) -> None:
        drafts.append(d)
        verifier.hear_draft(round_id, t_ns, d)
        drafted.set()

    verifier = VerifierStage(
        target,
        lambda r, g: StageInput(clip, skew_ns=0, span_ns=0),
        emit,
        rules=mode_rules("lossless-greedy"),
        max_new_tokens=MAX_NEW,
        draft_wait_s=0.5,
        max_wait_s=0.5,
        use_stages=(0,),
        question=DEFAULT_QUESTION,
    )
    drafter_stage = DrafterStage(
        drafter,
        lambda r, g: StageInput(events),
        publish,
        gamma=6,
        lookahead=1,
        max_new_tokens=MAX_NEW,
        question=DEFAULT_QUESTION,
        early_tree_nodes=tree_nodes,
    )
    for s in (verifier, drafter_stage):
        s.start()
    try:
        drafter_stage.open_round(T_NS)
        assert drafted.wait(60), "the drafter sent nothing"
        verifier.open_round(T_NS)  # its prefill comes after the round's first draft, as a busy verifier's does
        verifier.inputs_ready(T_NS)
        assert done.wait(60), "no final caption"
    finally:
        for s in (verifier, drafter_stage):
            s.stop()
    assert all(s.snapshot()["worker_errors"] == 0 for s in (verifier, drafter_stage))
    return finals[0], verifier.snapshot(), drafts


def test_the_round_start_tree_rides_in_the_prefill_and_the_caption_is_the_verifier_alone(models, scenes) -> None:  # type: ignore[no-untyped-def]
    target, drafter = models
    forwards = {0: 0, 24: 0}
    for clip, events in scenes:
        alone = target_only_greedy(target.adapter, target.context(clip, DEFAULT_QUESTION), MAX_NEW)
        for nodes in (0, 24):
            final, snap, drafts = _round(models, clip, events, nodes)
            assert list(final.token_ids) == alone, f"tree nodes {nodes}"
            first = drafts[0]
            assert first.start_position == 0
            assert bool(first.branches) == (nodes > 0), "only the tree drafter sends branches"
            assert len(first.token_ids) + len(first.branches) <= max(nodes, len(first.token_ids))
            assert snap["prefills_with_tree"] == (1 if nodes else 0)
            forwards[nodes] += final.target_forwards
    assert forwards[24] < forwards[0], forwards


def test_the_prefill_tree_joins_the_stages_and_is_greedy_only(models, scenes) -> None:  # type: ignore[no-untyped-def]
    """The refiner's round-start chain joins the drafter's tree (one prefill checks both); under
    lossless-sample no tree rides (trees are verified greedily)."""
    target, _ = models
    clip, _ = scenes[0]

    def verifier(mode: str) -> VerifierStage:
        return VerifierStage(
            target,
            lambda r, g: StageInput(clip, skew_ns=0, span_ns=0),
            lambda u: None,
            rules=mode_rules(mode),
            max_new_tokens=MAX_NEW,
            draft_wait_s=0.1,
            max_wait_s=0.1,
            use_stages=(1, 0),
            question=DEFAULT_QUESTION,
        )

    tree_draft = Draft(0, 0, 0, (21, 26), (0.5, 0.5), branches=((27, 0),))  # a red | a green
    chain = Draft(1, 0, 0, (21, 27, 31), (0.9, 0.9, 0.9))  # the refiner: a green circle
    greedy, sampling = verifier("lossless-greedy"), verifier("lossless-sample")
    for v in (greedy, sampling):
        v.open_round(T_NS)
        v.hear_draft(T_NS, T_NS, tree_draft)
        v.hear_draft(T_NS, T_NS, chain)
    assert sampling._tree_in_hand(T_NS, (1, 0)) is None
    joined = greedy._tree_in_hand(T_NS, (1, 0))
    assert joined is not None
    tree, whole = joined
    assert tree.tokens == (21, 26, 27, 31) and tree.parents == (-1, 0, 0, 2)
    assert {d.stage for d, _ in whole} == {0, 1}
    assert greedy._tree_in_hand(T_NS, (1,)) is None  # the refiner's chain alone is no tree
