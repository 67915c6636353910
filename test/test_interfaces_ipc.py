"""Every project message and an EventPacket (1 MB payload) cross a process boundary intact."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import rclpy
from helpers import processes
from helpers.msg_samples import ONE_MB, build_samples, field_differences
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

pytestmark = pytest.mark.ros
CHILD = Path(__file__).parent / "helpers" / "publish_samples.py"
QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


def test_every_message_survives_another_process(rclpy_context) -> None:
    expected = build_samples()
    assert len(expected["event_packet"].events) == ONE_MB
    received: dict[str, object] = {}
    # Without the type-description service: destroying it (rclpy 9.1.2) right after a 1 MB
    # exchange with a killed peer crashed inside rcl in about one run in four.
    node = rclpy.create_node(
        "sample_receiver",
        context=rclpy_context,
        parameter_overrides=[Parameter("start_type_description_service", value=False)],
    )
    for topic, msg in expected.items():
        node.create_subscription(type(msg), f"/ipc_test/{topic}", lambda m, t=topic: received.setdefault(t, m), QOS)
    child = processes.start(
        [sys.executable, str(CHILD), "60"], env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    executor = rclpy.executors.SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(node)
    try:
        deadline = time.monotonic() + 45.0
        while len(received) < len(expected) and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.1)
            assert child.poll() is None, child.communicate()[0].decode(errors="replace")
    finally:
        processes.kill(child)  # its whole process group
        child.stdout.close()
        # The node leaves the executor before either is torn down: destroying a node an
        # executor still waits on can crash inside rcl.
        executor.remove_node(node)
        node.destroy_node()
        executor.shutdown()
    assert set(received) == set(expected), f"never received: {set(expected) - set(received)}"
    for topic, msg in expected.items():
        assert field_differences(msg, received[topic], topic) == []


def test_field_comparison_notices_a_difference() -> None:
    a, b = build_samples(), build_samples()
    b["verified_caption"].accepted_per_stage = [6, 4]
    b["event_packet"].events = bytes(b["event_packet"].events[:-1]) + b"\x00"
    assert field_differences(a["verified_caption"], b["verified_caption"]) == [".accepted_per_stage: values differ"]
    assert field_differences(a["event_packet"], b["event_packet"]) in (
        [".events: bytes differ"],
        [".events: values differ"],
    )


def test_draft_source_constants_are_the_cores() -> None:
    """The messages' STAGE_* name the same sources as core.names (per-stage arrays are indexed by them)."""
    from cascade_sd_ros.core.names import NUM_DRAFT_SOURCES, STAGE_DRAFTER, STAGE_HEAD, STAGE_REFINER
    from cascade_sd_ros.msg import DraftTokens

    assert (DraftTokens.STAGE_DRAFTER, DraftTokens.STAGE_REFINER, DraftTokens.STAGE_HEAD) == (
        STAGE_DRAFTER,
        STAGE_REFINER,
        STAGE_HEAD,
    )
    assert NUM_DRAFT_SOURCES == 3
