"""scripts/setup.sh refuses a machine it cannot build on, with a message that says why."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SETUP = Path(__file__).resolve().parents[1] / "scripts" / "setup.sh"


def fake_bin(tmp_path: Path, keep: list[str], extra: dict[str, str] | None = None) -> Path:
    """A PATH with only `keep` (linked from this machine) plus scripted fakes."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in keep:
        # The real interpreter, not a version manager's shim (shims need their own PATH).
        found = str(Path(sys.executable).resolve()) if tool == "python3.11" else shutil.which(tool)
        if found:
            (bindir / tool).symlink_to(found)
    for name, body in (extra or {}).items():
        path = bindir / name
        path.write_text("#!/bin/sh\n" + body + "\n")
        path.chmod(0o755)
    return bindir


def run_setup(tmp_path: Path, bindir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {"PATH": str(bindir), "HOME": str(tmp_path), "CASCADE_SD_VENV": str(tmp_path / "venv"), **env}
    return subprocess.run(["/bin/bash", str(SETUP)], capture_output=True, text=True, env=full_env, timeout=60)


BASICS = [
    "bash",
    "dirname",
    "cat",
    "sha256sum",
    "cut",
    "sort",
    "head",
    "grep",
    "printf",
    "nproc",
    "mkdir",
    "rm",
    "tail",
]


def test_wrong_python_version(tmp_path: Path) -> None:
    bindir = fake_bin(tmp_path, BASICS + ["cmake", "cc", "c++"], {"python3.11": "echo 3.10"})
    result = run_setup(tmp_path, bindir)
    assert result.returncode != 0
    assert "Python 3.10" in result.stderr and "3.11" in result.stderr
    assert not (tmp_path / "venv").exists()


def test_missing_python(tmp_path: Path) -> None:
    result = run_setup(tmp_path, fake_bin(tmp_path, BASICS + ["cmake", "cc", "c++"]))
    assert result.returncode != 0
    assert "python3.11" in result.stderr and "not found" in result.stderr


def test_missing_cmake(tmp_path: Path) -> None:
    result = run_setup(tmp_path, fake_bin(tmp_path, BASICS + ["python3.11", "cc", "c++"]))
    assert result.returncode != 0
    assert "cmake not found" in result.stderr


@pytest.mark.parametrize("missing", ["cc", "c++"])
def test_missing_compiler(tmp_path: Path, missing: str) -> None:
    tools = [t for t in ["python3.11", "cmake", "cc", "c++"] if t != missing]
    result = run_setup(tmp_path, fake_bin(tmp_path, BASICS + tools))
    assert result.returncode != 0
    assert "compiler" in result.stderr and f"'{missing}'" in result.stderr


def test_second_run_is_fast_and_changes_nothing() -> None:
    """The real venv is set up (make test ran setup first); a rerun only checks stamps."""
    env = dict(os.environ)
    result = subprocess.run(["/bin/bash", str(SETUP)], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "installing" not in result.stdout and "building" not in result.stdout
    assert "ready" in result.stdout
