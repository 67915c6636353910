"""Shared fixtures. DDS stays on localhost, in a domain no other run on this machine uses."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import processes
from helpers.dds_domain import NoFreeDomain, claim_domain

# Before rclpy is imported anywhere: never multicast onto this machine's network, and never hear
# another run. The domain is claimed with a lock file held for the whole session (helpers/
# dds_domain.py), so two test runs at once never share one; a ROS_DOMAIN_ID set in the shell is
# not trusted to be free. CASCADE_SD_TEST_DOMAIN_ID pins the id (claimed all the same).
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
_pinned = os.environ.get("CASCADE_SD_TEST_DOMAIN_ID")
try:
    DOMAIN = claim_domain(only=int(_pinned) if _pinned else None)
except NoFreeDomain as _exc:
    raise pytest.UsageError(f"no DDS domain for this test run: {_exc}") from None
os.environ["ROS_DOMAIN_ID"] = str(DOMAIN.domain_id)
# Every process a test starts inherits this; the guard below finds any still running after a test.
SESSION = str(os.getpid())
os.environ[processes.SESSION_MARKER] = SESSION

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
EVT3_BAG = SHARED_DATA / "evt3_test_events_1"


def pytest_report_header() -> str:
    return (
        f"ROS_DOMAIN_ID={DOMAIN.domain_id} (claimed for this run), ROS_AUTOMATIC_DISCOVERY_RANGE="
        f"{os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE']}"
    )


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@pytest.fixture(autouse=True)
def _no_process_outlives_its_test():
    """Every process a test starts is gone when it ends: leftovers are killed and fail the test."""
    before = processes.session_pids(SESSION)
    yield
    left = processes.reap_leftovers(before, SESSION)
    if left:
        pytest.fail(
            "processes still running after the test (killed now): "
            + "; ".join(f"{pid}: {cmd[:160]}" for pid, cmd in sorted(left.items())),
            pytrace=False,
        )


@pytest.fixture(scope="session")
def evt3_bag() -> Path:
    """The real EVT 3.0 recording from ../shared/data.

    Skips where the clone has no ../shared beside it, except in CI (CI=1/true), which has it:
    there a missing recording fails, so the golden tests cannot go quietly missing.
    """
    if not (EVT3_BAG / "metadata.yaml").is_file():
        message = f"real recording not present at {EVT3_BAG} (../shared is beside the project root only in the team's checkouts)"
        if in_ci():
            pytest.fail(f"CI: {message}", pytrace=False)
        pytest.skip(message)
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
