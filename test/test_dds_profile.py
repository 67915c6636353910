"""The stage nodes' DDS profile (issue 19, restart recovery): a node killed outright is dropped by
its peers within its short lease, and the profile never overrides one the user chose."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from cascade_sd_ros.ros.dds_profile import PROFILE, use_node_profile

ROOT = Path(__file__).resolve().parents[1]
NS = {"d": "http://www.eprosima.com"}
FASTDDS_DEFAULT_LEASE_S = 20  # what peers believe of a participant with no profile


def _lease() -> tuple[int, int]:
    disc = (
        ET.parse(PROFILE)
        .getroot()
        .find("d:profiles/d:participant[@is_default_profile='true']/d:rtps/d:builtin/d:discovery_config", NS)
    )
    assert disc is not None, f"{PROFILE}: no default participant profile with a discovery_config"
    return int(disc.findtext("d:leaseDuration/d:sec", namespaces=NS)), int(
        disc.findtext("d:leaseAnnouncement/d:sec", namespaces=NS)
    )


def test_the_profile_is_a_short_lease_announced_often_enough() -> None:
    lease, announce = _lease()
    assert 0 < lease < FASTDDS_DEFAULT_LEASE_S
    assert announce * 3 <= lease, "a live node must announce itself several times per lease"


def test_the_profile_is_used_only_where_the_user_chose_none(tmp_path: Path) -> None:
    env: dict[str, str] = {}
    assert use_node_profile(env, cwd=tmp_path) == PROFILE
    assert env == {"FASTDDS_DEFAULT_PROFILES_FILE": str(PROFILE)}
    for chosen in ({"FASTDDS_DEFAULT_PROFILES_FILE": "/mine.xml"}, {"FASTRTPS_DEFAULT_PROFILES_FILE": "/old.xml"}):
        env = dict(chosen)
        assert use_node_profile(env, cwd=tmp_path) is None and env == chosen
    env = {"RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp"}
    assert use_node_profile(env, cwd=tmp_path) is None and "FASTDDS_DEFAULT_PROFILES_FILE" not in env
    env = {"RMW_IMPLEMENTATION": "rmw_fastrtps_dynamic_cpp"}
    assert use_node_profile(env, cwd=tmp_path) == PROFILE
    (tmp_path / "DEFAULT_FASTDDS_PROFILES.xml").write_text("<dds/>")  # Fast DDS loads it from the cwd
    env = {}
    assert use_node_profile(env, cwd=tmp_path) is None and env == {}


@pytest.mark.ros
def test_a_node_killed_outright_is_dropped_by_its_peers_within_its_lease(rclpy_context: Any, tmp_path: Path) -> None:
    """Without the profile a peer keeps a kill -9'd node matched for 20 s, and a restarted stage
    that took its ports went unserved meanwhile (test_nodes_under_abuse's restart cases)."""
    pytest.importorskip("rclpy")
    from helpers import processes as child_processes

    from cascade_sd_ros.tools.pipeline import SensorPlayer

    ns = "/dds_profile_lease"
    log = tmp_path / "refiner.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for var in ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE"):
        env.pop(var, None)  # the node picks its own
    args = [sys.executable, "-m", "cascade_sd_ros.nodes.frame_refiner", "--ros-args", "-r", f"__ns:={ns}"]
    args += ["-p", "model:=tiny:0"]
    player = SensorPlayer(context=rclpy_context, namespace=ns)
    with log.open("w") as out:
        proc = child_processes.start(args, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and player.pub_image.get_subscription_count() < 1:
            assert proc.poll() is None, f"the refiner exited early:\n{log.read_text()}"
            time.sleep(0.05)
        assert player.pub_image.get_subscription_count() == 1, "the refiner never subscribed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        lease, _ = _lease()
        # the peer's lease check runs on its own timer: allow it one more lease, still well under
        # the default's 20 s
        deadline = time.monotonic() + 2 * lease + 2
        while time.monotonic() < deadline and player.pub_image.get_subscription_count() > 0:
            time.sleep(0.05)
        assert player.pub_image.get_subscription_count() == 0, (
            f"the killed refiner's subscription still matched {2 * lease + 2} s after kill -9 "
            f"(the lease profile not in force?)\n{log.read_text()}"
        )
        assert "XMLPARSER" not in log.read_text(), f"Fast DDS refused the profile:\n{log.read_text()}"
    finally:
        child_processes.kill(proc)
        player.destroy_node()
