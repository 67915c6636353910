"""DESIGN.md's layering: the core never imports ROS."""

from __future__ import annotations

import subprocess
import sys

PROBE = r"""
import importlib, pkgutil, sys
import cascade_sd_ros.core as core
names = [m.name for m in pkgutil.walk_packages(core.__path__, "cascade_sd_ros.core.")]
for name in names:
    importlib.import_module(name)
ros = sorted(m for m in sys.modules if m == "rclpy" or m.startswith("rclpy.") or m.endswith("_msgs")
             or m.startswith("cascade_sd_ros.msg"))
print(len(names), ros)
"""


def test_core_imports_no_ros() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    count, ros = out.stdout.strip().split(" ", 1)
    assert ros == "[]", f"cascade_sd_ros.core pulled in ROS modules: {ros}"
