"""The package installs as colcon installs it on a robot, plain and ``--symlink-install``: the node
executables (``ros2 run`` looks in lib/cascade_sd_ros) and ``cascade-sd`` carry the run bit.

colcon's two modes are cmake's install step with and without ``AMENT_CMAKE_SYMLINK_INSTALL`` (what
``colcon build --symlink-install`` passes), so the test runs cmake itself: cmake is on every machine
that builds the package, colcon is not (these machines have no ROS install).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # two full rosidl builds, ~35 s each on 2 cores

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)
EXECUTABLES = [
    "lib/cascade_sd_ros/event_drafter",
    "lib/cascade_sd_ros/frame_refiner",
    "lib/cascade_sd_ros/video_verifier",
    "bin/cascade-sd",
]


def _run(args: list[str], env: dict[str, str], log: Path) -> None:
    # cwd: ament's symlink install writes symlink_install_manifest.txt into the working directory
    with log.open("a") as out:
        done = subprocess.run(
            args, env=env, cwd=log.parent, stdout=out, stderr=subprocess.STDOUT, timeout=600, check=False
        )
    assert done.returncode == 0, f"{' '.join(args[:3])}... failed:\n" + log.read_text()[-3000:]


@pytest.fixture(scope="module")
def installs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """prefix per mode: a build tree of its own each (as colcon keeps one per workspace)."""
    if shutil.which("cmake") is None:
        pytest.skip("cmake not found (scripts/setup.sh needs it too)")
    if not (VENV / "share" / "ament_cmake" / "cmake").is_dir():
        pytest.skip(f"ament_cmake is not installed in {VENV} (run scripts/setup.sh)")
    base = tmp_path_factory.mktemp("colcon_like")
    # A workspace's src/ copy, as colcon sees it (and this venv, inside the clone, must not be
    # inside the source dir: cmake refuses exported include dirs under the source dir).
    src = base / "src" / "cascade_sd_ros"
    src.mkdir(parents=True)
    for name in ("CMakeLists.txt", "package.xml"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("msg", "cascade_sd_ros", "launch", "config", "rviz"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    log = base / "build.log"
    env = {**os.environ, "CMAKE_PREFIX_PATH": str(VENV), "AMENT_PREFIX_PATH": str(VENV)}
    prefixes = {}
    for mode, symlink in (("plain", "OFF"), ("symlink", "ON")):
        prefix, build = base / f"install-{mode}", base / f"build-{mode}"
        _run(
            [
                "cmake",
                "-S",
                str(src),
                "-B",
                str(build),
                f"-DCMAKE_INSTALL_PREFIX={prefix}",
                "-DBUILD_TESTING=OFF",
                f"-DPython3_EXECUTABLE={sys.executable}",
                f"-DAMENT_CMAKE_SYMLINK_INSTALL={symlink}",
                "-DCASCADE_SD_ROS_INSTALL_PYTHON=ON",
            ],
            env,
            log,
        )
        _run(["cmake", "--build", str(build), "-j", "2"], env, log)
        _run(["cmake", "--install", str(build)], env, log)
        prefixes[mode] = prefix
    return prefixes


@pytest.mark.parametrize("mode", ["plain", "symlink"])
def test_installed_executables_have_the_run_bit(installs: dict[str, Path], mode: str) -> None:
    prefix = installs[mode]
    for rel in EXECUTABLES:
        path = prefix / rel
        assert path.exists(), f"{mode}: {rel} not installed"
        assert path.is_symlink() == (mode == "symlink"), f"{mode}: {rel} symlink={path.is_symlink()}"
        mode_bits = path.stat().st_mode  # follows the link: what exec() sees
        assert mode_bits & stat.S_IXUSR and mode_bits & stat.S_IXOTH, f"{mode}: {rel} is {stat.filemode(mode_bits)}"
        assert os.access(path, os.X_OK)
        assert path.read_text().startswith("#!/usr/bin/env python3\n")
    assert not (ROOT / "symlink_install_manifest.txt").exists()  # nothing written into the clone


@pytest.mark.parametrize("mode", ["plain", "symlink"])
def test_installed_command_runs(installs: dict[str, Path], mode: str) -> None:
    """`cascade-sd --help` from the install tree, as a sourced workspace would run it."""
    prefix = installs[mode]
    site = prefix / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    assert (site / "cascade_sd_ros" / "tools" / "cli.py").exists()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(site),
    }
    done = subprocess.run(
        [str(prefix / "bin" / "cascade-sd"), "--help"],
        env=env,
        cwd=prefix,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "usage: cascade-sd" in done.stdout
