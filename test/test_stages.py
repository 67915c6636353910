"""A round through the three core Stages without ROS or DDS: plain callbacks carry drafts and
commits, the one round schedule opens the round in every stage, and the caption is the verifier
alone's, token for token. Also: no module but core/rounds.py writes a round's record."""

from __future__ import annotations

import dataclasses
import re
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cascade_sd_ros.core.modes import mode_rules
from cascade_sd_ros.core.rounds import Draft, RoundRecord
from cascade_sd_ros.core.spec import StageContext
from cascade_sd_ros.core.spec.engine import target_only_greedy
from cascade_sd_ros.core.spec.testing import TableLM
from cascade_sd_ros.core.stage_model import StageModel, tiny_vocabulary
from cascade_sd_ros.core.stages import (
    CaptionUpdate,
    DrafterStage,
    RefinerStage,
    RoundOpener,
    RoundSchedule,
    StageInput,
    VerifierStage,
)

VOCAB, SEED, MAX_NEW = 32, 1, 12  # seed 1's greedy caption runs the whole budget (no EOS)
CTX = StageContext((1, 5, 6, 3), None, "text")
MS = 1_000_000


def _model(role: str, lm: TableLM) -> StageModel:
    frames = 1
    return StageModel(
        role, lm, frames, 8, lambda px, q: CTX, lambda ids: " ".join(map(str, ids)), tiny_vocabulary(VOCAB)
    )


class Cascade:
    """Drafter -> refiner -> verifier, and the verifier's commits back upstream, by plain calls."""

    def __init__(self, drafter_lm: TableLM, refiner_lm: TableLM, use_stages: tuple[int, ...] = (1, 0)) -> None:
        self.finals: list[CaptionUpdate] = []
        self.done = threading.Event()
        rules = mode_rules("lossless-greedy")
        image = StageInput(np.zeros((8, 8, 3), np.uint8))
        clip = StageInput(np.zeros((1, 8, 8, 3), np.uint8), skew_ns=0, span_ns=0)
        self.verifier = VerifierStage(
            _model("target", TableLM(SEED, VOCAB)),
            lambda r, g: clip,
            self._emit,
            rules=rules,
            max_new_tokens=MAX_NEW,
            draft_wait_s=2.0,
            max_wait_s=0.5,
            use_stages=use_stages,
            question="q",
        )
        self.refiner = RefinerStage(
            _model("refiner", refiner_lm),
            lambda r, g: image,
            self._refined,
            rules=rules,
            gamma=4,
            lookahead=2,
            max_new_tokens=MAX_NEW,
            max_wait_s=0.5,
            upstream_wait_s=0.5,
            question="q",
        )
        self.drafter = DrafterStage(
            _model("drafter", drafter_lm),
            lambda r, g: image,
            self._drafted,
            gamma=3,
            lookahead=2,
            max_new_tokens=MAX_NEW,
            question="q",
        )
        self.stages = (self.verifier, self.refiner, self.drafter)

    def _emit(self, u: CaptionUpdate) -> None:
        for s in (self.refiner, self.drafter):
            s.hear_commit(u.round_id, u.t_ns, u.commit_seq, u.token_ids, u.final)
        if u.final:
            self.finals.append(u)
            self.done.set()

    def _drafted(self, round_id: int, t_ns: int, d: Draft) -> None:
        self.refiner.hear_draft(round_id, t_ns, d)
        self.verifier.hear_draft(round_id, t_ns, d)

    def _refined(self, round_id: int, t_ns: int, d: Draft) -> None:
        self.verifier.hear_draft(round_id, t_ns, d)

    def run(self) -> CaptionUpdate:
        # the one rule opens the round at T = 100 ms in each stage, as its own inputs pass it: events
        # at once (window 50 ms), frames once past T + slop (20 ms; the clip reaches back 80 ms)
        schedule = RoundSchedule(100 * MS)
        events = RoundOpener(schedule, lead_ns=50 * MS)
        frames = RoundOpener(schedule, settle_ns=20 * MS, lead_ns=80 * MS, margin_ns=20 * MS)
        for s in self.stages:
            s.start()
        try:
            assert events.advance(0, 90 * MS) == [] and frames.advance(0, 110 * MS) == []
            due_events = events.advance(0, 101 * MS)
            due_frames = frames.advance(0, 125 * MS)
            assert due_events == due_frames == [100 * MS]
            for T in due_events:
                self.drafter.open_round(T)
            for T in due_frames:
                self.refiner.open_round(T)
                self.verifier.open_round(T)
                self.verifier.inputs_ready(T)
            assert self.done.wait(60), "no final caption"
        finally:
            for s in self.stages:
                s.stop()
        assert all(s.snapshot()["worker_errors"] == 0 for s in self.stages), [s.last_error for s in self.stages]
        assert len(self.finals) == 1
        return self.finals[0]


@pytest.fixture(scope="module")
def alone() -> list[int]:
    caption = target_only_greedy(TableLM(SEED, VOCAB), CTX, MAX_NEW)
    assert len(caption) == MAX_NEW
    return caption


def test_a_round_through_the_three_stages_accepts_drafts_and_equals_the_verifier_alone(alone: list[int]) -> None:
    # upstream models that agree with the target: every draft continues its caption
    final = Cascade(TableLM(SEED, VOCAB), TableLM(SEED, VOCAB)).run()
    assert list(final.token_ids) == alone and final.round_id == 100 * MS and final.final
    # how many drafts arrive inside the adapted wait is the machine's to say (a loaded one stalls a
    # stage for the round); the first wait has no arrival figure to cut it short, so drafts count
    assert sum(final.accepted_per_stage) > 0
    assert final.target_forwards < len(alone)  # fewer verifier passes than tokens


def test_drafts_that_disagree_change_nothing(alone: list[int]) -> None:
    noisy = Cascade(TableLM(7, VOCAB, base=TableLM(SEED, VOCAB), scale=3.0), TableLM(8, VOCAB)).run()
    assert list(noisy.token_ids) == alone
    assert sum(noisy.drafted_per_stage) > 0  # drafts were checked, not skipped


def test_the_verifier_alone_through_its_stage(alone: list[int]) -> None:
    final = Cascade(TableLM(SEED, VOCAB), TableLM(SEED, VOCAB), use_stages=()).run()
    assert list(final.token_ids) == alone and final.target_forwards == len(alone)


def test_scene_rounds_fall_on_one_schedule() -> None:
    s = RoundSchedule.through([1_960 * MS, 3_960 * MS, 5_960 * MS], 2_000 * MS)
    assert (s.period_ns, s.phase_ns) == (2_000 * MS, 1_960 * MS)
    assert s.times_between(1_960 * MS, 6_000 * MS) == [3_960 * MS, 5_960 * MS]
    assert RoundSchedule(0).times_between(None, 10**12) == []  # period 0: prompts only
    assert RoundSchedule.prompt_time(1234) == 1234
    with pytest.raises(ValueError, match="not on the period"):
        RoundSchedule.through([1_960 * MS, 3_000 * MS], 2_000 * MS)
    with pytest.raises(ValueError, match=">= 0"):
        RoundSchedule(-1)


# ------------------------------------------------------------------ who writes a round's record
FIELDS = "|".join(f.name for f in dataclasses.fields(RoundRecord))
# receivers that are not round records: ROS messages built in ros/outputs.py, a class's own fields,
# the engine's statistics
NOT_RECORDS = {"msg", "self", "stats"}
WRITES = [
    re.compile(rf"(?<![\w.])(\w+)\.(?:{FIELDS})\s*(?:\+=|-=|\|=|&=|=(?!=))"),
    re.compile(
        rf"(?<![\w.])(\w+)\.(?:{FIELDS})(?:\[[^\]]*\])?\.(?:add|update|append|extend|discard|clear|pop|remove|insert)\("
    ),
    re.compile(rf"(?<![\w.])(\w+)\.(?:{FIELDS})\[[^\]]*\]\s*(?:\+=|=(?!=))"),
]


def test_only_the_round_book_writes_a_round_record() -> None:
    package = Path(__file__).resolve().parents[1] / "cascade_sd_ros"
    found: list[str] = []
    for path in sorted(package.rglob("*.py")):
        if path.name == "rounds.py" and path.parent.name == "core":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            for pattern in WRITES:
                for m in pattern.finditer(line):
                    if m.group(1) not in NOT_RECORDS:
                        found.append(f"{path.relative_to(package)}:{n}: {line.strip()}")
    assert not found, "round records written outside core/rounds.py:\n" + "\n".join(found)


def test_the_write_check_can_fail(tmp_path: Any) -> None:
    line = "        rec.stalled.add(0); rec.wait_ms += 3.0; rec.drafted[0] += 1"
    hits = [m.group(1) for p in WRITES for m in p.finditer(line)]
    assert hits == ["rec", "rec", "rec"]
