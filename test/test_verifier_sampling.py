"""lossless-sample through the verifier's round machinery (VerifierStage: the node's core stage, drafts
taken from its round book as the node's callbacks hand them over, per-round seeded generators): the
first caption token keeps the target's distribution whatever the drafts say. Seeded chi-square at
p = 1e-6, as test_spec_sampling does for the engine; a draft that the verifier wrongly trusted
(accepted without the p/q test) is rejected by the same statistic, so the test can fail."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import numpy as np
import pytest
import torch
from test_spec_sampling import VOCAB, _chi2_rejects, _first_token_probs

from cascade_sd_ros.core.modes import mode_rules
from cascade_sd_ros.core.rounds import Draft
from cascade_sd_ros.core.spec import StageContext
from cascade_sd_ros.core.spec.testing import TableLM
from cascade_sd_ros.core.stage_model import StageModel, tiny_vocabulary
from cascade_sd_ros.core.stages import StageInput, VerifierStage

CTX = StageContext((1, 5, 6, 3), None, "text")
PIXELS = np.zeros((1, 1, 1, 3), np.uint8)
N = 1500
STAGE_DRAFTER = 0


def _run_rounds(target: TableLM, draft_token: int, confidence: float, n: int) -> Counter:
    model = StageModel(
        "target", target, 1, 1, lambda px, q: CTX, lambda ids: " ".join(map(str, ids)), tiny_vocabulary(VOCAB)
    )
    firsts: Counter = Counter()
    finished = threading.Semaphore(0)

    def emit(u: Any) -> None:
        if u.final:
            firsts[(u.token_ids[0],)] += 1
            finished.release()

    worker = VerifierStage(
        model,
        lambda r, g: StageInput(PIXELS, skew_ns=0, span_ns=1),
        emit,
        rules=mode_rules("lossless-sample"),
        max_new_tokens=1,
        draft_wait_s=0.0,
        max_wait_s=0.0,
        use_stages=(STAGE_DRAFTER,),
        seed=7,
        max_pending=n + 1,
        question="q",
    )
    worker.start()
    try:
        for r in range(1, n + 1):  # one round at a time: the book is bounded; the draft opens it
            worker.hear_draft(
                r,
                r,
                Draft(
                    stage=STAGE_DRAFTER,
                    commit_seq=0,
                    start_position=0,
                    token_ids=(draft_token,),
                    confidence=(confidence,),
                ),
            )
            worker.inputs_ready(r)
            assert finished.acquire(timeout=30), f"round {r} never finished"
    finally:
        worker.stop()
    return firsts


@pytest.fixture(scope="module")
def target() -> TableLM:
    torch.set_num_threads(1)
    t = TableLM(31, VOCAB, scale=1.5, name="target")
    t.prefill(CTX)
    return t


def test_first_token_keeps_the_target_distribution_through_the_worker(target: TableLM) -> None:
    probs = _first_token_probs(target, 1.0)
    # the draft proposes the target's least likely token with high confidence: acceptance is rare,
    # so most samples come from the residual, where a wrong q would show
    unlikely = min(range(VOCAB), key=lambda v: probs[(v,)])
    counts = _run_rounds(target, unlikely, 0.9, N)
    rejected, stat, limit = _chi2_rejects(counts, probs, N)
    assert not rejected, f"chi-square {stat:.1f} > {limit:.1f}: {dict(counts)} vs {probs}"


def test_the_same_statistic_rejects_a_verifier_that_trusts_drafts(target: TableLM, monkeypatch) -> None:  # noqa: ANN001
    """Sanity of the test itself: always accepting the draft is caught."""
    import cascade_sd_ros.core.stages.verifier as stages

    real = stages.verify_step

    def trusting(adapter: Any, committed: list[int], tail: list[int], **kw: Any) -> Any:
        if tail:
            kw["level"] = mode_rules("lossless-greedy").verifier  # greedy accept/reject: ignores p/q
            kw["q"] = None
        return real(adapter, committed, tail, **kw)

    monkeypatch.setattr(stages, "verify_step", trusting)
    probs = _first_token_probs(target, 1.0)
    top = max(range(VOCAB), key=lambda v: probs[(v,)])
    counts = _run_rounds(target, top, 0.9, 400)
    rejected, stat, limit = _chi2_rejects(counts, probs, 400)
    assert rejected, f"a greedy verifier passed as lossless-sample: chi-square {stat:.1f} <= {limit:.1f}"
