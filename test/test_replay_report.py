"""Replay report from an output bag (no ROS): read back, figures recomputed, files written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cascade_sd_ros.core import bagio
from cascade_sd_ros.core import report as rpt
from cascade_sd_ros.tools.replay import report as replay_report

S = 1_000_000_000
STORE = bagio.typestore()


def _time(t_ns: int) -> Any:
    return STORE.types["builtin_interfaces/msg/Time"](sec=t_ns // S, nanosec=t_ns % S)


def _header(t_ns: int) -> Any:
    return STORE.types["std_msgs/msg/Header"](stamp=_time(t_ns), frame_id="camera")


def caption(
    round_id: int,
    t_ns: int,
    text: str,
    tokens: list[int],
    *,
    final: bool = True,
    drafted=(4, 2),
    accepted=(3, 2),
    forwards: int = 2,
    total: float = 80.0,
    caption_ms: float | None = None,
    prefill: float = 10.0,
    verify: float = 20.0,
    draft_wait: float = 3.0,
    skew_frame: float = 3.0,
    degraded: bool = False,
    mode: str = "lossless-greedy",
) -> Any:
    return STORE.types["cascade_sd_ros/msg/VerifiedCaption"](
        header=_header(t_ns),
        round_id=round_id,
        text=text,
        token_ids=np.array(tokens, np.int32),
        final=final,
        mode=0,
        mode_name=mode,
        lossless=True,
        drafted_per_stage=np.array(drafted, np.uint32),
        accepted_per_stage=np.array(accepted, np.uint32),
        target_forwards=forwards,
        latency_total_ms=total,
        latency_caption_ms=total - 4.0 if caption_ms is None else caption_ms,
        latency_wait_ms=5.0,
        latency_draft_wait_ms=draft_wait,
        latency_prefill_ms=prefill,
        latency_verify_ms=verify,
        latency_draft_ms=7.0,
        skew_frame_ms=skew_frame,
        skew_clip_ms=-2.0,
        clip_span_ms=350.0,
        degraded=degraded,
        degraded_reason="no frame within slop" if degraded else "",
        frame_offset_ms=30.0,
        frame_offset_source="pinned",
    )


def ground_truth(index: int, start_ns: int, end_ns: int, text: str, offset_ns: int = 0) -> Any:
    return STORE.types["cascade_sd_ros/msg/SceneGroundTruth"](
        header=_header(start_ns),
        scene_index=index,
        start=_time(start_ns),
        end=_time(end_ns),
        caption=text,
        event_offset_ns=offset_ns,
        jitter_ms=0.0,
        frames_dropped=0,
        seed=index,
    )


def draft(round_id: int, t_ns: int, stage: int) -> Any:
    return STORE.types["cascade_sd_ros/msg/DraftTokens"](
        header=_header(t_ns),
        round_id=round_id,
        stage=stage,
        commit_seq=0,
        start_position=0,
        token_ids=np.array([1, 2], np.int32),
        confidence=np.array([0.9, 0.8], np.float32),
        branch_token_ids=np.array([], np.int32),
        branch_parents=np.array([], np.int32),
        upstream_drafted=0,
        upstream_accepted=0,
        compute_ms=1.0,
        degraded=False,
        degraded_reason="",
        vocab_fingerprint="0123456789abcdef",
        vocab_summary="tiny",
        draft_text="",
    )


@pytest.fixture
def output_bag(tmp_path: Path) -> Path:
    vc, gt, dt = (
        "cascade_sd_ros/msg/VerifiedCaption",
        "cascade_sd_ros/msg/SceneGroundTruth",
        "cascade_sd_ros/msg/DraftTokens",
    )
    msgs = [
        ("/ground_truth", gt, 0, ground_truth(0, 0, S - 1, "a red circle moves left")),
        ("/ground_truth", gt, S, ground_truth(1, S, 2 * S - 1, "a blue square is still")),
        ("/cascade/draft", dt, S // 2, draft(500, S // 2, 0)),
        ("/cascade/caption", vc, S // 2, caption(500, S // 2, "a red", [4], final=False)),
        ("/cascade/caption", vc, S // 2, caption(500, S // 2, "a red circle moves left", [4, 5, 6, 7])),
        (
            "/replay/verifier_alone",
            vc,
            S // 2,
            caption(
                500,
                S // 2,
                "a red circle moves left",
                [4, 5, 6, 7],
                caption_ms=150.0,
                prefill=12.0,
                verify=48.0,
                forwards=4,
                mode="lossless-greedy",
            ),
        ),
        (
            "/cascade/caption",
            vc,
            3 * S // 2,
            caption(
                1500,
                3 * S // 2,
                "a blue circle is still",
                [8, 9, 6, 10],
                total=120.0,
                skew_frame=float("nan"),
                degraded=True,
            ),
        ),
        (
            "/replay/verifier_alone",
            vc,
            3 * S // 2,
            caption(
                1500,
                3 * S // 2,
                "a blue circle is still",
                [8, 9, 6, 10],
                caption_ms=250.0,
                prefill=12.0,
                verify=30.0,
                forwards=4,
            ),
        ),
        (
            "/replay/target_bare",
            vc,
            S // 2,
            caption(
                500,
                S // 2,
                "a red circle moves left",
                [4, 5, 6, 7],
                caption_ms=50.0,
                prefill=10.0,
                verify=40.0,
                forwards=3,
                mode="target-bare",
            ),
        ),
        (
            "/replay/target_bare",
            vc,
            3 * S // 2,
            caption(
                1500,
                3 * S // 2,
                "a blue circle is still",
                [8, 9, 6, 10],
                caption_ms=70.0,
                prefill=10.0,
                verify=60.0,
                forwards=3,
                mode="target-bare",
            ),
        ),
    ]
    path = tmp_path / "out"
    bagio.write_bag(path, msgs, storage="mcap")
    return path


def test_load_output_builds_rounds_with_truth_and_baseline(output_bag: Path) -> None:
    out = replay_report.load_output(output_bag)
    assert [r.round_id for r in out.rounds] == [500, 1500]
    first, second = out.rounds
    assert first.ground_truth == "a red circle moves left" and second.ground_truth == "a blue square is still"
    assert first.alone is not None and first.alone.caption_ms == pytest.approx(150.0)
    assert first.bare is not None and first.bare.caption_ms == pytest.approx(50.0) and first.bare.verify_ms == 40.0
    assert first.latency_ms["caption"] == pytest.approx(76.0) and first.latency_ms["draft_wait"] == 3.0
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
    # Caption latency: cascade 76 and 116 ms, verifier alone 150 and 250, target bare 50 and 70.
    sp = summ["speed"]
    assert sp["reference"] == "verifier-alone" and sp["rounds"] == 2
    assert sp["caption_latency_cascade"]["p50_ms"] == pytest.approx(96.0)
    assert sp["caption_latency_alone"]["p50_ms"] == pytest.approx(200.0)
    assert sp["target_bare"]["p50_ms"] == pytest.approx(60.0)
    assert sp["speedup_p50"] == pytest.approx(200.0 / 96.0, abs=1e-3)
    assert sp["alone_over_bare"] == pytest.approx(200.0 / 60.0, abs=1e-3) and sp["reference_honest"] is False
    assert sp["lossless_match"] == 1.0 and sp["bare_match"] == 1.0
    assert "speedup_verifier" not in json.dumps(doc) and "speedup_with_waits" not in json.dumps(doc)
    # The parts of each round's caption latency add up: 76 = 10 + 20 + 3 + 43.
    assert doc["rounds"][0]["caption_parts_ms"] == {"prefill": 10.0, "verify": 20.0, "draft_wait": 3.0, "other": 43.0}
    assert summ["accuracy"] == {
        "rounds": 2,
        "exact_match": 0.5,
        "any_order_match": 0.5,
        "word_accuracy": pytest.approx(0.9),
        "reference_exact_match": 0.5,
    }
    assert summ["degraded"]["round_ids"] == [1500]
    assert doc["rounds"][1]["skew_ms"]["skew_frame"] is None
    assert doc["scenes"][0]["last_caption"] == "a red circle moves left"
    assert set(written["figures"]) == {"latency.png", "acceptance.png", "skew.png", "speedup.png"}
    for name in written["figures"]:
        assert (report_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (report_dir / "report.md").read_text()
    assert "a blue circle is still" in md and "no frame within slop" in md and "![skew.png](skew.png)" in md
    assert "Records lost on the way to the nodes: event_drafter/events 3." in md
    # the offset each round picked its frames with, its source and its error against the ground truth (0)
    r0 = doc["rounds"][0]
    assert (r0["frame_offset_ms"], r0["frame_offset_source"], r0["frame_offset_error_ms"]) == (30.0, "pinned", 30.0)
    assert "| 30.0 (pinned, +30.0) |" in md
    assert "Speed-up over the verifier alone (p50 caption latency): **2.08x**" in md
    assert "**Not an honest reference:** the verifier alone took 3.33x the target's bare cost" in md
    assert "| target bare (no ROS, same clips) | 60.0 |" in md and "| other | 63.0 |" in md
    # The written summary is exactly what the core computes from the records read back.
    assert summ == json.loads(json.dumps(replay_report._json_safe(rpt.summarise(out.rounds))))


def test_offline_reference_is_the_bare_target(output_bag: Path, tmp_path: Path) -> None:
    """Without a verifier-alone pass (``--baseline offline``) the bare target is the reference."""
    bare_only = tmp_path / "bare_only"
    bagio.write_bag(
        bare_only, (m for m in bagio.iter_messages(output_bag) if m[0] != "/replay/verifier_alone"), storage="mcap"
    )
    out = replay_report.load_output(bare_only)
    assert all(r.alone is None and r.bare is not None for r in out.rounds)
    report_dir = tmp_path / "report"
    report_dir.mkdir()
    doc = replay_report.write_report(out, {"baseline": {"kind": "offline"}}, {"bag": "in"}, report_dir)
    sp = doc["summary"]["speed"]
    assert sp["reference"] == "target-bare" and sp["speedup_p50"] == pytest.approx(60.0 / 96.0, abs=1e-3)
    md = (report_dir / "report.md").read_text()
    assert "Speed-up over the target bare (p50 caption latency): **0.62x**" in md and "Not an honest" not in md


def test_reference_within_margin_reads_honest(tmp_path: Path) -> None:
    vc = "cascade_sd_ros/msg/VerifiedCaption"
    msgs = [
        ("/cascade/caption", vc, S, caption(1, S, "x", [1], caption_ms=50.0)),
        ("/replay/verifier_alone", vc, S, caption(1, S, "x", [1], caption_ms=110.0)),
        ("/replay/target_bare", vc, S, caption(1, S, "x", [1], caption_ms=100.0)),
    ]
    bagio.write_bag(tmp_path / "bag", msgs, storage="mcap")
    report_dir = tmp_path / "report"
    report_dir.mkdir()
    doc = replay_report.write_report(replay_report.load_output(tmp_path / "bag"), {}, {"bag": "in"}, report_dir)
    assert doc["summary"]["speed"]["reference_honest"] is True
    assert (
        "1.10x the target's bare cost on the same clips (within 15 %): an honest reference"
        in (report_dir / "report.md").read_text()
    )
