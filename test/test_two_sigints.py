"""Stopped as on a robot: under ``ros2 launch`` a Ctrl-C reaches a node twice (the terminal's
SIGINT and the one launch forwards). The node must exit 0, quietly, within 2 s of the first."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("rclpy")

from helpers import processes as child_processes  # noqa: E402

pytestmark = pytest.mark.ros

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("gap_s", [0.0, 0.005, 0.15])
def test_two_sigints_exit_0_quietly_within_2_s(rclpy_context: Any, tmp_path: Path, gap_s: float) -> None:
    from cascade_sd_ros.tools.pipeline import SensorPlayer

    ns = f"/two_sigints_{int(gap_s * 1000)}"
    log = tmp_path / "refiner.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    args = [
        sys.executable,
        "-m",
        "cascade_sd_ros.nodes.frame_refiner",
        "--ros-args",
        "-r",
        f"__ns:={ns}",
        "-p",
        "model:=tiny:0",
    ]
    player = SensorPlayer(context=rclpy_context, namespace=ns)
    with log.open("w") as out:
        proc = child_processes.start(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and player.pub_image.get_subscription_count() < 1:
            assert proc.poll() is None, f"the refiner exited early:\n{log.read_text()}"
            time.sleep(0.05)
        assert player.pub_image.get_subscription_count() == 1, "the refiner never subscribed"
        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGINT)
        time.sleep(gap_s)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGINT)
        try:
            code = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            code = None
        took = time.monotonic() - t0
        text = log.read_text()
        assert code == 0, f"exit status {code}:\n{text}"
        assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
        assert took < 2.0, f"exited {took:.2f} s after the first SIGINT"
    finally:
        child_processes.kill(proc)
        player.destroy_node()
