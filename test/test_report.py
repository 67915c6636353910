"""Report math (cascade_sd_ros.core.report): pure functions of per-round records."""
from __future__ import annotations

import math

import numpy as np
import pytest

from cascade_sd_ros.core import report
from cascade_sd_ros.core.report import Baseline, RoundRecord, SceneInterval


def make_round(round_id: int, *, text: str = "a red circle moves left", tokens: tuple[int, ...] = (5, 6, 7),
               drafted: tuple[int, ...] = (4, 3), accepted: tuple[int, ...] = (2, 3), forwards: int = 2,
               total: float = 100.0, prefill: float = 20.0, verify: float = 30.0, skew_frame: float = -4.0,
               degraded: bool = False, reason: str = "", truth: str | None = None,
               baseline: Baseline | None = None) -> RoundRecord:
    return RoundRecord(
        round_id=round_id, stamp_ns=round_id * 500_000_000, text=text, token_ids=tokens,
        mode_name="lossless-greedy", lossless=True, drafted_per_stage=drafted, accepted_per_stage=accepted,
        target_forwards=forwards,
        latency_ms={"total": total, "wait": 10.0, "prefill": prefill, "verify": verify, "draft": 5.0},
        skew_ms={"skew_frame": skew_frame, "skew_clip": 1.0, "clip_span": 400.0},
        degraded=degraded, degraded_reason=reason, ground_truth=truth, baseline=baseline,
    )


def test_distribution_matches_numpy_and_ignores_nan() -> None:
    values = [3.0, 1.0, float("nan"), 10.0, 7.0]
    d = report.distribution(values)
    finite = np.array([3.0, 1.0, 10.0, 7.0])
    assert d.count == 4
    assert d.percentiles["p50"] == pytest.approx(np.percentile(finite, 50))
    assert d.percentiles["p99"] == pytest.approx(np.percentile(finite, 99))
    assert d.max == 10.0 and d.mean == pytest.approx(5.25)


def test_distribution_of_nothing_is_none() -> None:
    d = report.distribution([float("nan")])
    assert d.count == 0 and d.mean is None and d.percentiles["p95"] is None


def test_acceptance_sums_per_stage() -> None:
    rounds = [make_round(1, drafted=(4, 3), accepted=(2, 3)), make_round(2, drafted=(6, 0), accepted=(1, 0))]
    acc = report.acceptance(rounds)
    assert acc["drafter"] == {"drafted": 10, "accepted": 3, "rate": 0.3}
    assert acc["refiner"] == {"drafted": 3, "accepted": 3, "rate": 1.0}
    assert report.round_acceptance(rounds[1]) == [1 / 6, None]


def test_speedup_and_lossless_match() -> None:
    same = Baseline(token_ids=(5, 6, 7), text="a red circle moves left", decode_ms=150.0, target_forwards=3)
    other = Baseline(token_ids=(5, 9), text="a red square", decode_ms=90.0, target_forwards=2)
    rounds = [make_round(1, baseline=same), make_round(2, baseline=other), make_round(3)]
    s = report.speedup(rounds)
    assert s["rounds"] == 2
    assert s["baseline_ms"] == pytest.approx(240.0)
    assert s["cascade_ms"] == pytest.approx(100.0)  # 2 x (20 + 30)
    assert s["speedup_verifier"] == pytest.approx(2.4)
    assert s["speedup_with_waits"] == pytest.approx(240.0 / (100.0 + 2 * 10.0))
    assert s["forward_reduction"] == pytest.approx(5 / 4)
    assert s["tokens_per_forward"] == pytest.approx(6 / 4)
    assert s["lossless_match"] == pytest.approx(0.5)


def test_accuracy_against_ground_truth() -> None:
    rounds = [
        make_round(1, text="A red circle moves left.", truth="a red circle moves left"),
        make_round(2, text="a blue circle moves left", truth="a red circle moves left"),
        make_round(3, text="anything"),
    ]
    acc = report.accuracy(rounds)
    assert acc["rounds"] == 2
    assert acc["exact_match"] == pytest.approx(0.5) and acc["any_order_match"] == pytest.approx(0.5)
    assert acc["word_accuracy"] == pytest.approx((1.0 + 0.8) / 2)


def test_word_accuracy_edges() -> None:
    assert report.word_accuracy("", "") == 1.0
    assert report.word_accuracy("x y z w v u", "a") == 0.0
    assert report.word_accuracy("a b", "a b c d") == pytest.approx(0.5)


def test_ground_truth_uses_event_offset() -> None:
    scenes = [SceneInterval(0, 0, 999, "first", event_offset_ns=100), SceneInterval(1, 1000, 1999, "second", 100)]
    assert report.match_ground_truth(1050, scenes).caption == "first"  # RGB time 950
    assert report.match_ground_truth(1150, scenes).caption == "second"
    assert report.match_ground_truth(5000, scenes) is None


def test_summary_degraded_and_json_round() -> None:
    rounds = [make_round(1), make_round(2, degraded=True, reason="no frame within slop", skew_frame=float("nan"))]
    summary = report.summarise(rounds)
    assert summary["degraded"] == {"count": 1, "round_ids": [2], "reasons": {"no frame within slop": 1}}
    assert summary["abs_skew_ms"]["skew_frame"]["count"] == 1
    assert summary["latency_ms"]["total"]["p50"] == pytest.approx(100.0)
    d = report.round_to_dict(rounds[1])
    assert d["skew_ms"]["skew_frame"] is None and not math.isnan(d["skew_ms"]["clip_span"])


def test_record_validation_names_the_problem() -> None:
    with pytest.raises(ValueError, match="accepted_per_stage"):
        make_round(1, drafted=(1, 2), accepted=(1,))


def test_clause_order_does_not_matter_for_any_order_match() -> None:
    rounds = [make_round(1, text="a yellow triangle moves left and a purple circle is still",
                         truth="a purple circle is still and a yellow triangle moves left")]
    acc = report.accuracy(rounds)
    assert acc["exact_match"] == 0.0 and acc["any_order_match"] == 1.0
    assert report.clauses("A red circle moves left.") == frozenset({"a red circle moves left"})
