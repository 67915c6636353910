"""Replay report from an output bag (no ROS): read back, figures recomputed, files written."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cascade_sd_ros.core import bagio
from cascade_sd_ros.core import report as rpt
from cascade_sd_ros.tools import replay_report

S = 1_000_000_000
STORE = bagio.typestore()


def _time(t_ns: int) -> Any:
    return STORE.types["builtin_interfaces/msg/Time"](sec=t_ns // S, nanosec=t_ns % S)


def _header(t_ns: int) -> Any:
    return STORE.types["std_msgs/msg/Header"](stamp=_time(t_ns), frame_id="camera")


def caption(round_id: int, t_ns: int, text: str, tokens: list[int], *, final: bool = True, drafted=(4, 2),
            accepted=(3, 2), forwards: int = 2, total: float = 80.0, prefill: float = 10.0, verify: float = 20.0,
            skew_frame: float = 3.0, degraded: bool = False, mode: str = "lossless-greedy") -> Any:
    return STORE.types["cascade_sd_ros/msg/VerifiedCaption"](
        header=_header(t_ns), round_id=round_id, text=text, token_ids=np.array(tokens, np.int32), final=final,
        mode=0, mode_name=mode, lossless=True, drafted_per_stage=np.array(drafted, np.uint32),
        accepted_per_stage=np.array(accepted, np.uint32), target_forwards=forwards, latency_total_ms=total,
        latency_caption_ms=total - 4.0, latency_wait_ms=5.0, latency_draft_wait_ms=3.0, latency_prefill_ms=prefill, latency_verify_ms=verify, latency_draft_ms=7.0,
        skew_frame_ms=skew_frame, skew_clip_ms=-2.0, clip_span_ms=350.0, degraded=degraded,
        degraded_reason="no frame within slop" if degraded else "")


def ground_truth(index: int, start_ns: int, end_ns: int, text: str, offset_ns: int = 0) -> Any:
    return STORE.types["cascade_sd_ros/msg/SceneGroundTruth"](
        header=_header(start_ns), scene_index=index, start=_time(start_ns), end=_time(end_ns), caption=text,
        event_offset_ns=offset_ns, jitter_ms=0.0, frames_dropped=0, seed=index)


def draft(round_id: int, t_ns: int, stage: int) -> Any:
    return STORE.types["cascade_sd_ros/msg/DraftTokens"](
        header=_header(t_ns), round_id=round_id, stage=stage, commit_seq=0, start_position=0,
        token_ids=np.array([1, 2], np.int32), confidence=np.array([0.9, 0.8], np.float32), upstream_drafted=0,
        upstream_accepted=0, compute_ms=1.0, degraded=False, degraded_reason="")


@pytest.fixture
def output_bag(tmp_path: Path) -> Path:
    vc, gt, dt = ("cascade_sd_ros/msg/VerifiedCaption", "cascade_sd_ros/msg/SceneGroundTruth",
                  "cascade_sd_ros/msg/DraftTokens")
    msgs = [
        ("/ground_truth", gt, 0, ground_truth(0, 0, S - 1, "a red circle moves left")),
        ("/ground_truth", gt, S, ground_truth(1, S, 2 * S - 1, "a blue square is still")),
        ("/cascade/draft", dt, S // 2, draft(500, S // 2, 0)),
        ("/cascade/caption", vc, S // 2, caption(500, S // 2, "a red", [4], final=False)),
        ("/cascade/caption", vc, S // 2, caption(500, S // 2, "a red circle moves left", [4, 5, 6, 7])),
        ("/replay/verifier_alone", vc, S // 2, caption(500, S // 2, "a red circle moves left", [4, 5, 6, 7],
                                                       prefill=12.0, verify=48.0, forwards=4, mode="verifier-alone")),
        ("/cascade/caption", vc, 3 * S // 2, caption(1500, 3 * S // 2, "a blue circle is still", [8, 9, 6, 10],
                                                     total=120.0, skew_frame=float("nan"), degraded=True)),
        ("/replay/verifier_alone", vc, 3 * S // 2, caption(1500, 3 * S // 2, "a blue circle is still", [8, 9, 6, 10],
                                                           prefill=12.0, verify=30.0, forwards=4, mode="verifier-alone")),
    ]
    path = tmp_path / "out"
    bagio.write_bag(path, msgs, storage="mcap")
    return path


def test_load_output_builds_rounds_with_truth_and_baseline(output_bag: Path) -> None:
    out = replay_report.load_output(output_bag)
    assert [r.round_id for r in out.rounds] == [500, 1500]
    first, second = out.rounds
    assert first.ground_truth == "a red circle moves left" and second.ground_truth == "a blue square is still"
    assert first.baseline is not None and first.baseline.decode_ms == pytest.approx(60.0)
    assert out.non_final_captions == 1 and out.drafts_per_stage == {0: 1}
    assert out.counts["/cascade/caption"] == 3


def test_report_figures_match_the_bag(output_bag: Path, tmp_path: Path) -> None:
    out = replay_report.load_output(output_bag)
    report_dir = tmp_path / "report"
    report_dir.mkdir()
    run = {"mode": "lossless-greedy", "input_losses": {"event_drafter": {"events": 3}, "video_verifier": {"images": 0}}}
    written = replay_report.write_report(out, run, {"bag": "in"}, report_dir)
    doc = json.loads((report_dir / "report.json").read_text())
    summ = doc["summary"]
    assert summ["rounds"] == 2
    assert summ["acceptance"]["drafter"] == {"drafted": 8, "accepted": 6, "rate": 0.75}
    assert summ["latency_ms"]["total"]["p50"] == pytest.approx(100.0)
    assert summ["baseline"]["speedup_verifier"] == pytest.approx((60.0 + 42.0) / 60.0)
    assert summ["baseline"]["lossless_match"] == 1.0
    assert summ["accuracy"] == {"rounds": 2, "exact_match": 0.5, "any_order_match": 0.5,
                                "word_accuracy": pytest.approx(0.9), "baseline_exact_match": 0.5}
    assert summ["degraded"]["round_ids"] == [1500]
    assert doc["rounds"][1]["skew_ms"]["skew_frame"] is None
    assert doc["scenes"][0]["last_caption"] == "a red circle moves left"
    assert set(written["figures"]) == {"latency.png", "acceptance.png", "skew.png", "speedup.png"}
    for name in written["figures"]:
        assert (report_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (report_dir / "report.md").read_text()
    assert "a blue circle is still" in md and "no frame within slop" in md and "![skew.png](skew.png)" in md
    assert "Records lost on the way to the nodes: event_drafter/events 3." in md
    # The written summary is exactly what the core computes from the records read back.
    assert summ == json.loads(json.dumps(replay_report._json_safe(rpt.summarise(out.rounds))))
