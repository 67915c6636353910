"""Shared fixtures. DDS stays on localhost in a domain of this test session's own."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# Before rclpy is imported anywhere: never multicast onto this machine's network, and never hear
# a parallel run. An explicit domain (Makefile, CI) wins.
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(os.getpid() % 90 + 10))

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
EVT3_BAG = SHARED_DATA / "evt3_test_events_1"


@pytest.fixture(scope="session")
def evt3_bag() -> Path:
    """The real EVT 3.0 recording from ../shared/data; skips where the clone has no ../shared."""
    if not (EVT3_BAG / "metadata.yaml").is_file():
        pytest.skip(f"real recording not present at {EVT3_BAG} (../shared is beside the project root only in the team's checkouts)")
    return EVT3_BAG


@pytest.fixture
def rclpy_context():
    """An initialised rclpy context of the test's own, shut down afterwards."""
    import rclpy

    context = rclpy.context.Context()
    rclpy.init(context=context)
    try:
        yield context
    finally:
        if context.ok():
            rclpy.shutdown(context=context)
