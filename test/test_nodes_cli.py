"""Each node starts with ``python -m cascade_sd_ros.nodes.<name>``; bad parameters or model folders
end it with exit 2 and one clear line, not a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ros, pytest.mark.slow]  # each case starts a Python with torch
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("node", "params", "message"),
    [
        ("event_drafter", ["model:=tiny:0", "gamma:=0"], "gamma out of range"),
        ("frame_refiner", ["model:=/nonexistent/refiner"], "refiner model folder /nonexistent/refiner does not exist"),
        ("video_verifier", ["model:=tiny:0", "mode:=bogus"], "mode='bogus'"),
    ],
)
def test_bad_parameters_exit_2_with_a_clear_message(node: str, params: list[str], message: str) -> None:
    args = [sys.executable, "-m", f"cascade_sd_ros.nodes.{node}", "--ros-args"]
    for p in params:
        args += ["-p", p]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr
