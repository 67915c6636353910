"""Messages built from core results: drafts both ways, captions, RViz marker and overlay, diagnostics."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("visualization_msgs.msg")

from cascade_sd_ros.core.modes import mode_rules  # noqa: E402
from cascade_sd_ros.core.rounds import Draft  # noqa: E402
from cascade_sd_ros.core.stage_model import Vocabulary  # noqa: E402
from cascade_sd_ros.core.stages.verifier import CaptionUpdate  # noqa: E402
from cascade_sd_ros.ros.image import image_to_rgb8  # noqa: E402
from cascade_sd_ros.ros.outputs import (  # noqa: E402
    DraftMessageError,
    caption_msg,
    commit_msg,
    diagnostics_msg,
    display_text,
    draft_from_msg,
    draft_msg,
    marker_msg,
    overlay_image,
    overlay_msg,
)
from cascade_sd_ros.ros.stamps import stamp_to_ns  # noqa: E402

VOCAB = Vocabulary("0123456789abcdef", "test tokenizer, 12 ids, eos 2")


def _update(**kw: object) -> CaptionUpdate:
    base = dict(
        round_id=7,
        t_ns=5_000_000_000,
        token_ids=(4, 5),
        final=True,
        commit_seq=2,
        accepted=1,
        drafted=3,
        accepted_stage=1,
        drafted_per_stage=(0, 3),
        accepted_per_stage=(0, 1),
        upstream_drafted=3,
        upstream_accepted=2,
        target_forwards=2,
        latency_total_ms=12.0,
        latency_wait_ms=3.0,
        latency_prefill_ms=4.0,
        latency_verify_ms=5.0,
        latency_draft_ms=1.0,
        skew_frame_ms=math.nan,
        skew_clip_ms=-6.0,
        clip_span_ms=980.0,
        degraded=False,
        degraded_reason="",
        question="q",
    )
    base.update(kw)
    return CaptionUpdate(**base)  # type: ignore[arg-type]


def test_draft_round_trip_and_validation() -> None:
    d = Draft(
        stage=1,
        commit_seq=2,
        start_position=3,
        token_ids=(7, 8),
        confidence=(0.5, 0.25),
        upstream_drafted=4,
        upstream_accepted=1,
        compute_ms=2.5,
        degraded=True,
        degraded_reason="no frame",
    )
    msg = draft_msg(99, 5_000_000_001, "cam", d, VOCAB)
    assert msg.round_id == 99 and stamp_to_ns(msg.header.stamp) == 5_000_000_001 and msg.header.frame_id == "cam"
    back = draft_from_msg(msg)
    assert back.token_ids == d.token_ids and back.start_position == 3 and back.degraded_reason == "no frame"
    assert back.confidence == d.confidence and back.upstream_accepted == 1
    assert (msg.vocab_fingerprint, msg.vocab_summary) == (VOCAB.fingerprint, VOCAB.summary)
    for field, value, match in (
        ("confidence", [0.5], "confidences"),
        ("token_ids", [], "no tokens"),
        ("token_ids", [-1, 2], "negative"),
        ("confidence", [0.5, float("nan")], r"\[0, 1\]"),
        ("stage", 3, "stage"),
    ):
        bad = draft_msg(99, 5_000_000_001, "cam", d, VOCAB)
        setattr(bad, field, value)
        with pytest.raises(DraftMessageError, match=match):
            draft_from_msg(bad)
    with pytest.raises(DraftMessageError, match="want 0"):
        draft_from_msg(msg, expected_stage=0)
    with pytest.raises(DraftMessageError, match="outside the vocabulary of 8"):
        draft_from_msg(msg, vocab_size=8)


def test_caption_and_commit_carry_the_update() -> None:
    u = _update()
    rules = mode_rules("lossless-greedy")
    c = caption_msg(u, "a red circle", rules, "cam")
    assert (c.text, list(c.token_ids), c.final, c.mode, c.mode_name, c.lossless) == (
        "a red circle",
        [4, 5],
        True,
        0,
        "lossless-greedy",
        True,
    )
    assert list(c.drafted_per_stage) == [0, 3] and list(c.accepted_per_stage) == [0, 1]
    assert c.latency_prefill_ms == 4.0 and math.isnan(c.skew_frame_ms) and c.clip_span_ms == 980.0
    m = commit_msg(u, "cam", VOCAB)
    assert (m.round_id, m.commit_seq, list(m.token_ids), m.accepted, m.drafted, m.accepted_stage, m.final) == (
        7,
        2,
        [4, 5],
        1,
        3,
        1,
        True,
    )
    assert (m.vocab_fingerprint, m.vocab_summary) == (VOCAB.fingerprint, VOCAB.summary)
    lossy = caption_msg(u, "x", mode_rules("pyramid"), "cam")
    assert lossy.mode == 2 and not lossy.lossless


def test_display_text_says_growing_lossy_and_degraded() -> None:
    rules = mode_rules("lossless-greedy")
    assert display_text("a cat", _update(), rules) == "a cat"
    assert display_text("a", _update(final=False), rules).endswith("…")
    text = display_text("", _update(degraded=True, degraded_reason="no RGB frames received"), mode_rules("cascade"))
    assert "(no caption)" in text and "lossy: cascade" in text and "degraded: no RGB frames received" in text


def test_marker_is_text_view_facing() -> None:
    from visualization_msgs.msg import Marker

    m = marker_msg("hello", 2_000_000_000, "cam")
    assert m.type == Marker.TEXT_VIEW_FACING and m.action == Marker.ADD and m.text == "hello"
    assert m.header.frame_id == "cam" and m.scale.z > 0 and m.color.a == 1.0


def test_overlay_draws_the_caption_on_the_frame() -> None:
    frame = np.full((64, 64, 3), 200, np.uint8)
    out = overlay_image(frame, "a red circle moves left and a blue square is still")
    assert out.dtype == np.uint8 and out.shape[2] == 3 and out.shape[0] >= 64
    lower = out[out.shape[0] // 2 :]
    assert (lower == 0).all(axis=2).any() and (lower > 230).all(axis=2).any()  # dark band, light text
    assert (out[: out.shape[0] // 2] == 200).all()  # the frame itself is untouched above the band
    msg = overlay_msg(frame, "hi", 3_000_000_000, "cam")
    assert msg.encoding == "rgb8" and np.array_equal(image_to_rgb8(msg), overlay_image(frame, "hi"))


def test_diagnostics_message() -> None:
    from builtin_interfaces.msg import Time

    arr = diagnostics_msg(
        Time(sec=1),
        "cascade_sd: x",
        "hw",
        1,
        "degraded: no frames",
        {"rate_hz": 2.5, "skew_ms": math.nan, "stages": [1, 2], "n": 3},
    )
    st = arr.status[0]
    assert st.level == b"\x01" and st.name == "cascade_sd: x" and st.message == "degraded: no frames"
    assert {kv.key: kv.value for kv in st.values} == {"rate_hz": "2.500", "skew_ms": "nan", "stages": "1,2", "n": "3"}


def test_a_draft_tree_travels_in_its_branches_and_a_malformed_one_is_refused() -> None:
    d = Draft(0, 0, 0, (21, 26, 31), (0.9, 0.4, 0.8), branches=((27, 0), (31, 3), (28, 0)))
    msg = draft_msg(5, 1_000, "cam", d, VOCAB)
    assert list(msg.branch_token_ids) == [27, 31, 28] and list(msg.branch_parents) == [0, 3, 0]
    assert draft_from_msg(msg, vocab_size=40).branches == d.branches
    assert draft_from_msg(draft_msg(5, 1_000, "cam", Draft(0, 0, 0, (21,)), VOCAB)).branches == ()
    for tokens, parents, match in (
        ([27, 31], [0], "2 branch tokens but 1 branch parents"),
        ([27], [3], "follows node 3"),  # node 3 is the branch itself: not an earlier node
        ([27], [-2], "follows node -2"),
        ([99], [0], "outside the vocabulary"),
        ([27] * 513, [0] * 513, "more than 512"),
    ):
        bad = draft_msg(5, 1_000, "cam", d, VOCAB)
        bad.branch_token_ids, bad.branch_parents = tokens, parents
        with pytest.raises(DraftMessageError, match=match):
            draft_from_msg(bad, vocab_size=40)
