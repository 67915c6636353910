"""The core stages without ROS: what the verifier commits is the verifier's own greedy caption
whatever the drafts (good, garbage, stale, late or absent), and it never waits past its bounds."""

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
from cascade_sd_ros.core.stages import CaptionUpdate, DrafterStage, RefinerStage, StageInput, VerifierStage

MAX_NEW = 12
RNG = np.random.default_rng(5)
FRAMES = RNG.integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
EVENTS = RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def stages() -> dict[str, Any]:
    return {r: load_stage_model("tiny:1", r) for r in ("target", "refiner", "drafter")}


@pytest.fixture(scope="module")
def alone(stages: dict[str, Any]) -> list[int]:
    t = load_stage_model("tiny:1", "target")
    return target_only_greedy(t.adapter, t.context(FRAMES, "q"), MAX_NEW)


class Harness:
    """A verifier stage (and optionally real upstream stages) wired by plain callbacks."""

    def __init__(self, stages: dict[str, Any], upstream: bool, mode: str = "lossless-greedy", **kw: Any) -> None:
        self.rules = mode_rules(mode)
        self.updates: list[CaptionUpdate] = []
        self.done = threading.Event()
        self.upstream: list[Any] = []
        clip = StageInput(FRAMES, skew_ns=0, span_ns=1)
        self.verifier = VerifierStage(
            stages["target"],
            lambda r, g: clip,
            self._emit,
            rules=self.rules,
            max_new_tokens=MAX_NEW,
            draft_wait_s=kw.get("draft_wait_s", 0.2),
            max_wait_s=0.5,
            use_stages=kw.get("use_stages", (1, 0)),
            question="q",
        )
        if upstream:
            self.upstream.append(
                DrafterStage(
                    stages["drafter"],
                    lambda r, g: StageInput(EVENTS),
                    self._from_drafter,
                    gamma=3,
                    lookahead=2,
                    max_new_tokens=MAX_NEW,
                    question="q",
                )
            )
            self.upstream.append(
                RefinerStage(
                    stages["refiner"],
                    lambda r, g: StageInput(FRAMES[-1]),
                    self._from_refiner,
                    rules=self.rules,
                    gamma=5,
                    lookahead=2,
                    max_new_tokens=MAX_NEW,
                    max_wait_s=0.2,
                    upstream_wait_s=0.05,
                    question="q",
                )
            )
        self.stages = [self.verifier, *self.upstream]

    def _emit(self, u: CaptionUpdate) -> None:
        self.updates.append(u)
        for s in self.upstream:
            s.hear_commit(u.round_id, u.t_ns, u.commit_seq, u.token_ids, u.final)
        if u.final:
            self.done.set()

    def _from_drafter(self, round_id: int, t_ns: int, d: Draft) -> None:
        self.upstream[1].hear_draft(round_id, t_ns, d)
        self.verifier.hear_draft(round_id, t_ns, d)

    def _from_refiner(self, round_id: int, t_ns: int, d: Draft) -> None:
        self.verifier.hear_draft(round_id, t_ns, d)

    def run(self, feed: Any = None, timeout: float = 30.0) -> CaptionUpdate:
        for s in self.stages:
            s.start()
        try:
            for s in self.stages:
                s.open_round(10)
            if feed is not None:
                feed(self)
            assert self.done.wait(timeout), "no final caption"
        finally:
            for s in self.stages:
                s.stop()
        assert all(s.snapshot()["worker_errors"] == 0 for s in self.stages), [s.last_error for s in self.stages]
        return [u for u in self.updates if u.final][-1]


def test_verifier_alone(stages: dict[str, Any], alone: list[int]) -> None:
    final = Harness(stages, upstream=False, use_stages=()).run()
    assert list(final.token_ids) == alone and final.target_forwards == len(alone)
    assert final.degraded_reason == ""


def test_real_upstream_workers(stages: dict[str, Any], alone: list[int]) -> None:
    final = Harness(stages, upstream=True).run()
    assert list(final.token_ids) == alone
    assert sum(final.drafted_per_stage) > 0
    assert final.target_forwards <= len(alone)  # drafts never cost extra verifier passes


def test_garbage_and_stale_drafts_change_nothing(stages: dict[str, Any], alone: list[int]) -> None:
    def feed(h: Harness) -> None:
        v = h.verifier
        v.hear_draft(10, 10, Draft(stage=1, commit_seq=0, start_position=0, token_ids=(5, 6, 7, 8)))  # garbage
        v.hear_draft(10, 10, Draft(stage=0, commit_seq=0, start_position=3, token_ids=(9, 9)))  # beyond the commit
        v.hear_draft(10, 10, Draft(stage=1, commit_seq=0, start_position=0, token_ids=tuple(alone[:3])))  # perfect
        v.hear_draft(10, 10, Draft(stage=1, commit_seq=0, start_position=0, token_ids=(alone[0], 3, 3)))  # half right

    final = Harness(stages, upstream=False, draft_wait_s=0.05).run(feed)
    assert list(final.token_ids) == alone
    assert final.accepted_per_stage[1] >= 1  # the perfect draft was taken when it fit


def test_dead_upstream_costs_one_wait_per_round_not_per_token(stages: dict[str, Any], alone: list[int]) -> None:
    h = Harness(stages, upstream=False, draft_wait_s=0.3)
    # what each draft look-up waited for: the stages still live for the round when it started
    live_at_lookup: list[tuple[int, ...]] = []
    next_draft = h.verifier._next_draft

    def recording(rec: Any) -> Any:
        live_at_lookup.append(tuple(s for s in h.verifier.use_stages if s not in rec.stalled))
        return next_draft(rec)

    h.verifier._next_draft = recording  # type: ignore[method-assign]
    final = h.run()
    assert list(final.token_ids) == alone
    # one look-up per verifier step; only the first waits for the (dead) stages, every later one
    # knows they stalled this round: one draft_wait per round, not one per token
    assert len(live_at_lookup) == final.target_forwards == len(alone)
    assert live_at_lookup[0] == (1, 0) and all(live == () for live in live_at_lookup[1:])
    assert final.latency_wait_ms >= 300.0  # that one wait ran to its deadline (a lower bound only)
    assert "no drafts from refiner and drafter" in final.degraded_reason


@pytest.mark.parametrize("mode", ["lossless-sample", "pyramid", "cascade"])
def test_other_modes_run_and_say_what_they_are(stages: dict[str, Any], alone: list[int], mode: str) -> None:
    h = Harness(stages, upstream=True, mode=mode)
    final = h.run()
    assert h.rules.lossless == (mode == "lossless-sample") and h.rules.name == mode
    vocab = stages["target"].adapter.vocab_size
    eos = stages["target"].adapter.eos_token_id
    tokens = list(final.token_ids)
    assert all(0 <= t < vocab for t in tokens)
    # the caption ran to its budget or to EOS, and never past EOS
    assert len(tokens) == MAX_NEW or tokens[-1] == eos
    assert eos not in tokens[:-1]
    # commits only grow: every update extends the one before, one verifier step each
    updates = h.updates
    assert [u.commit_seq for u in updates] == list(range(1, len(updates) + 1))
    for before, after in zip(updates, updates[1:]):
        assert list(after.token_ids[: len(before.token_ids)]) == list(before.token_ids)
        assert len(after.token_ids) > len(before.token_ids)
    assert updates[-1] is final and [u.final for u in updates].count(True) == 1
    assert final.target_forwards == len(updates)
    # drafts are accounted for: never more accepted than drafted, per stage
    assert all(a <= d for a, d in zip(final.accepted_per_stage, final.drafted_per_stage))
    assert sum(final.drafted_per_stage) > 0  # the real upstream workers did draft
    if mode != "lossless-sample":
        # greedy-based lossy rules only relax which drafts are taken: with no drafts at all the
        # verifier commits its own greedy caption
        assert list(Harness(stages, upstream=False, mode=mode, use_stages=()).run().token_ids) == alone


def test_no_frames_gives_an_empty_degraded_final(stages: dict[str, Any]) -> None:
    out: list[CaptionUpdate] = []
    none = StageInput(None, "no RGB frames received")
    w = VerifierStage(
        stages["target"],
        lambda r, g: none if g else None,
        out.append,
        rules=mode_rules("lossless-greedy"),
        max_new_tokens=MAX_NEW,
        draft_wait_s=0.1,
        max_wait_s=0.2,
    )
    w.start()
    try:
        w.open_round(1)
        deadline = time.monotonic() + 5
        while not out and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        w.stop()
    assert out and out[0].final and out[0].token_ids == () and out[0].degraded
    assert out[0].commit_seq == 1  # an (empty) final commit, so upstream stages move on
    assert w.snapshot()["rounds_degraded"] == 1


def test_a_round_that_keeps_failing_is_given_up_and_the_next_one_served(
    stages: dict[str, Any], alone: list[int]
) -> None:
    out: list[CaptionUpdate] = []
    good = StageInput(FRAMES)
    broken = StageInput(np.zeros((3, 64, 64, 3), np.uint8))  # 3 frames: the target takes 8

    w = VerifierStage(
        stages["target"],
        lambda r, g: broken if r.round_id == 1 else good,
        out.append,
        rules=mode_rules("lossless-greedy"),
        max_new_tokens=MAX_NEW,
        draft_wait_s=0.05,
        max_wait_s=0.2,
        use_stages=(),
        question="q",
    )
    w.start()
    try:
        w.open_round(1)
        w.open_round(2)
        deadline = time.monotonic() + 10
        while not any(u.final for u in out) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        w.stop()
    finals = [u for u in out if u.final]
    assert [u.round_id for u in finals] == [2] and list(finals[0].token_ids) == alone
    counts = w.snapshot()
    assert w.record(1).abandoned and counts["worker_errors"] == 3 and counts["rounds_dropped"] == 1


def test_an_upstream_stage_gives_up_a_round_it_cannot_serve(stages: dict[str, Any]) -> None:
    sent: list[Draft] = []
    broken = StageInput(np.zeros((64, 64), np.uint8))  # not an RGB image
    w = DrafterStage(
        stages["drafter"],
        lambda r, g: broken,
        lambda rid, t, d: sent.append(d),
        gamma=3,
        lookahead=2,
        max_new_tokens=MAX_NEW,
        question="q",
    )
    w.start()
    try:
        w.open_round(1)
        deadline = time.monotonic() + 5
        while not w.record(1).abandoned and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        w.stop()
    assert w.record(1).abandoned and w.snapshot()["worker_errors"] == 3 and sent == []
