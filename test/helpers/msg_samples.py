"""Deterministic, fully populated instances of every message the package puts on the wire.

Shared by the publishing child process and the receiving test, so both sides build the same
values independently and every field can be compared.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from builtin_interfaces.msg import Time
from event_camera_msgs.msg import EventPacket
from std_msgs.msg import Header

from cascade_sd_ros.msg import Commit, DraftTokens, SceneGroundTruth, VerifiedCaption

ONE_MB = 1 << 20


def _header(sec: int, nanosec: int, frame: str) -> Header:
    return Header(stamp=Time(sec=sec, nanosec=nanosec), frame_id=frame)


def build_samples() -> dict[str, Any]:
    """topic name -> message; every field set to a non-default value."""
    rng = np.random.default_rng(1234)
    events = rng.integers(0, 256, size=ONE_MB, dtype=np.uint8)
    return {
        "draft_tokens": DraftTokens(
            header=_header(1675956550, 318916461, "event_camera"),
            round_id=2**40 + 7,
            stage=DraftTokens.STAGE_REFINER,
            commit_seq=3,
            start_position=5,
            token_ids=[1, -2, 2**31 - 1, 17],
            confidence=[0.5, 0.25, 1.0, 0.125],
            upstream_drafted=6,
            upstream_accepted=4,
            compute_ms=1.5,
            degraded=True,
            degraded_reason="no frame within slop",
            vocab_fingerprint="5394793936cfcc0b",
            vocab_summary="zoo tokenizer, 40 ids, eos 3",
        ),
        "commit": Commit(
            header=_header(12, 34, "event_camera"),
            round_id=99,
            commit_seq=4,
            token_ids=list(range(40)),
            accepted=3,
            drafted=5,
            accepted_stage=1,
            final=True,
            vocab_fingerprint="eca2c744e009ea7c",
            vocab_summary="tiny test vocabulary, 64 ids, eos 2",
        ),
        "verified_caption": VerifiedCaption(
            header=_header(56, 78, "camera"),
            round_id=12345,
            text="a red circle moves left",
            token_ids=[9, 8, 7, 6, 5],
            final=True,
            mode=VerifiedCaption.MODE_PYRAMID,
            mode_name="pyramid",
            lossless=False,
            drafted_per_stage=[10, 7],
            accepted_per_stage=[6, 5],
            target_forwards=4,
            latency_total_ms=12.5,
            latency_wait_ms=1.25,
            latency_prefill_ms=3.5,
            latency_verify_ms=6.0,
            latency_draft_ms=2.0,
            skew_frame_ms=-4.5,
            skew_clip_ms=math.nan,
            clip_span_ms=875.0,
            degraded=True,
            degraded_reason="refiner silent",
        ),
        "scene_ground_truth": SceneGroundTruth(
            header=_header(3, 4, "camera"),
            scene_index=2,
            start=Time(sec=3, nanosec=4),
            end=Time(sec=5, nanosec=6),
            caption="a blue square is still",
            event_offset_ns=-12_000_000,
            jitter_ms=2.5,
            frames_dropped=3,
            seed=2**63 + 1,
        ),
        "event_packet": EventPacket(
            header=_header(1675956550, 1, "event_camera"),
            height=720,
            width=1280,
            seq=2**33,
            time_base=2**50 + 3,
            encoding="evt3",
            is_bigendian=False,
            events=events.tobytes(),
        ),
    }


def field_differences(expected: Any, actual: Any, path: str = "") -> list[str]:
    """Every field where two messages differ (NaN equals NaN), recursively."""
    if hasattr(expected, "get_fields_and_field_types"):
        if type(expected) is not type(actual):
            return [f"{path}: type {type(actual).__name__} != {type(expected).__name__}"]
        diffs: list[str] = []
        for name in expected.get_fields_and_field_types():
            diffs += field_differences(getattr(expected, name), getattr(actual, name), f"{path}.{name}")
        return diffs
    if isinstance(expected, (bytes, bytearray)) or isinstance(actual, (bytes, bytearray)):
        return [] if bytes(expected) == bytes(actual) else [f"{path}: bytes differ"]
    if isinstance(expected, (list, tuple, np.ndarray)) or hasattr(expected, "tolist"):
        e, a = np.asarray(expected), np.asarray(actual)
        if e.shape != a.shape:
            return [f"{path}: shape {a.shape} != {e.shape}"]
        same = np.array_equal(e, a, equal_nan=e.dtype.kind == "f")
        return [] if same else [f"{path}: values differ"]
    if isinstance(expected, float) and math.isnan(expected):
        return [] if isinstance(actual, float) and math.isnan(actual) else [f"{path}: {actual!r} != nan"]
    return [] if expected == actual else [f"{path}: {actual!r} != {expected!r}"]
