"""Report math (cascade_sd_ros.core.report): pure functions of per-round records."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cascade_sd_ros.core import report, speed
from cascade_sd_ros.core.report import Reference, RoundRecord, SceneInterval


def make_round(
    round_id: int,
    *,
    text: str = "a red circle moves left",
    tokens: tuple[int, ...] = (5, 6, 7),
    drafted: tuple[int, ...] = (4, 3),
    accepted: tuple[int, ...] = (2, 3),
    forwards: int = 2,
    total: float = 100.0,
    caption: float = 80.0,
    prefill: float = 20.0,
    verify: float = 30.0,
    draft_wait: float = 6.0,
    skew_frame: float = -4.0,
    degraded: bool = False,
    reason: str = "",
    truth: str | None = None,
    alone: Reference | None = None,
    bare: Reference | None = None,
) -> RoundRecord:
    return RoundRecord(
        round_id=round_id,
        stamp_ns=round_id * 500_000_000,
        text=text,
        token_ids=tokens,
        mode_name="lossless-greedy",
        lossless=True,
        drafted_per_stage=drafted,
        accepted_per_stage=accepted,
        target_forwards=forwards,
        latency_ms={
            "caption": caption,
            "prefill": prefill,
            "verify": verify,
            "draft_wait": draft_wait,
            "total": total,
            "wait": 10.0,
            "draft": 5.0,
        },
        skew_ms={"skew_frame": skew_frame, "skew_clip": 1.0, "clip_span": 400.0},
        degraded=degraded,
        degraded_reason=reason,
        ground_truth=truth,
        alone=alone,
        bare=bare,
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


def _ref(tokens: tuple[int, ...], caption_ms: float, forwards: int = 3) -> Reference:
    return Reference(token_ids=tokens, text="t", caption_ms=caption_ms, target_forwards=forwards)


def test_speed_is_caption_latency_against_the_verifier_alone() -> None:
    same, other = (5, 6, 7), (5, 9)
    rounds = [
        make_round(1, caption=80.0, alone=_ref(same, 200.0), bare=_ref(same, 100.0)),
        make_round(2, caption=60.0, forwards=3, alone=_ref(other, 120.0, 2), bare=_ref(other, 110.0, 2)),
        make_round(3, caption=50.0, alone=_ref(same, 150.0), bare=_ref(same, 140.0)),
        make_round(4, caption=70.0),
    ]  # no reference: left out
    s = report.speed(rounds)
    assert s["reference"] == "verifier-alone" and s["rounds"] == 3 and s["rounds_with_reference"] == 3
    assert s["caption_latency_cascade"]["p50_ms"] == pytest.approx(60.0)
    assert s["caption_latency_alone"]["p50_ms"] == pytest.approx(150.0)
    assert s["target_bare"]["p50_ms"] == pytest.approx(110.0)
    assert s["speedup_p50"] == pytest.approx(150.0 / 60.0, abs=1e-3)
    assert s["speedup_p95"] == pytest.approx(
        np.percentile([200, 120, 150], 95) / np.percentile([80, 60, 50], 95), abs=1e-3
    )
    assert s["alone_over_bare"] == pytest.approx(150.0 / 110.0, abs=1e-3)
    # The one definition: the report's figures are core.speed.compare's, key for key.
    expected = speed.compare(
        {1: 80.0, 2: 60.0, 3: 50.0}, {1: 200.0, 2: 120.0, 3: 150.0}, {1: 100.0, 2: 110.0, 3: 140.0}
    )
    assert {k: s[k] for k in expected.to_dict()} == expected.to_dict()
    assert s["reference_honest"] is False and s["honest_margin"] == 0.15  # 1.36x bare: not honest
    assert s["cascade_forwards"] == 2 + 3 + 2 and s["reference_forwards"] == 3 + 2 + 3
    assert s["tokens_per_forward"] == pytest.approx(9 / 7)
    assert s["lossless_match"] == pytest.approx(2 / 3)  # rounds 1 and 3 equal the alone tokens; 2 differs
    # all three rounds with a reference commit 3 tokens: one length, the whole comparison
    assert s["by_caption_length"] == {3: expected.to_dict()}


def test_speed_by_caption_length_splits_the_rounds_by_tokens_committed() -> None:
    tokens = {1: 6, 2: 6, 3: 12, 4: 24, 5: 6}
    cascade = {1: 60.0, 2: 80.0, 3: 100.0, 4: 150.0}  # round 5: no cascade caption
    alone = {1: 90.0, 2: 100.0, 3: 180.0, 4: 330.0, 5: 95.0}
    by_len = speed.by_caption_length(tokens, cascade, alone)
    assert list(by_len) == [6, 12, 24]
    assert by_len[6] == speed.compare({1: 60.0, 2: 80.0}, {1: 90.0, 2: 100.0})
    assert by_len[12].speedup_p50 == pytest.approx(1.8) and by_len[24].speedup_p50 == pytest.approx(2.2)
    assert speed.by_caption_length({}, cascade, alone) == {}


def test_throughput_is_final_captions_per_second_of_playback() -> None:
    cascade = speed.Throughput(rounds_seen=120, finals=80, playback_s=10.0)
    alone = speed.Throughput(rounds_seen=50, finals=50, playback_s=10.0)
    assert cascade.per_s == pytest.approx(8.0) and alone.per_s == pytest.approx(5.0)
    assert speed.throughput_ratio(cascade, alone) == pytest.approx(1.6)
    assert cascade.to_dict() == {"rounds_seen": 120, "finals": 80, "playback_s": 10.0, "captions_per_s": 8.0}
    nothing = speed.Throughput(0, 0, 0.0)  # a run that never played: no rate, no ratio
    assert nothing.per_s is None and speed.throughput_ratio(cascade, nothing) is None


def test_speed_reference_within_margin_is_honest_and_offline_uses_bare() -> None:
    tokens = (5, 6, 7)
    honest = [make_round(i, alone=_ref(tokens, 114.0), bare=_ref(tokens, 100.0)) for i in range(3)]
    assert report.speed(honest)["reference_honest"] is True
    unmeasured = [make_round(1, alone=_ref(tokens, 114.0))]
    assert report.speed(unmeasured)["reference_honest"] is None and report.speed(unmeasured)["alone_over_bare"] is None
    # a floor slower than the verifier alone is no floor: whether the reference is honest cannot be told
    assert speed.honest_reference(1 / 1.2) is None and speed.floor_disturbed(1 / 1.2)
    assert speed.honest_reference(0.9) is True and not speed.floor_disturbed(0.9)
    offline = [make_round(1, caption=50.0, bare=_ref(tokens, 100.0))]
    s = report.speed(offline)
    assert s["reference"] == "target-bare" and s["speedup_p50"] == pytest.approx(2.0) and s["alone_over_bare"] == 1.0
    none = report.speed([make_round(1)])
    assert none["reference"] is None and none["rounds"] == 0 and none["speedup_p50"] is None


def test_caption_parts_add_up_to_caption_latency() -> None:
    r = make_round(1, caption=80.0, prefill=20.0, verify=30.0, draft_wait=6.0)
    assert r.caption_parts_ms == {"prefill": 20.0, "verify": 30.0, "draft_wait": 6.0, "other": 24.0}
    assert sum(r.caption_parts_ms.values()) == pytest.approx(80.0)
    nan = make_round(2, caption=float("nan"))
    assert math.isnan(nan.caption_parts_ms["other"])
    b = report.caption_breakdown([r, make_round(3, caption=100.0, verify=40.0), nan])
    assert b["caption"]["count"] == 2 and b["other"]["mean"] == pytest.approx((24.0 + 34.0) / 2)
    assert sum(b[k]["mean"] for k in speed.CAPTION_PARTS) == pytest.approx(b["caption"]["mean"])


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
    assert summary["caption_parts_ms"]["caption"]["p50"] == pytest.approx(80.0)
    assert "baseline" not in summary and "verifier_ms" not in summary  # one speed figure: summary["speed"]
    d = report.round_to_dict(rounds[1])
    assert d["skew_ms"]["skew_frame"] is None and not math.isnan(d["skew_ms"]["clip_span"])


def test_record_validation_names_the_problem() -> None:
    with pytest.raises(ValueError, match="accepted_per_stage"):
        make_round(1, drafted=(1, 2), accepted=(1,))


def test_clause_order_does_not_matter_for_any_order_match() -> None:
    rounds = [
        make_round(
            1,
            text="a yellow triangle moves left and a purple circle is still",
            truth="a purple circle is still and a yellow triangle moves left",
        )
    ]
    acc = report.accuracy(rounds)
    assert acc["exact_match"] == 0.0 and acc["any_order_match"] == 1.0
    assert report.clauses("A red circle moves left.") == frozenset({"a red circle moves left"})
