"""Child processes of a test: started in a process group of their own, gone when the test ends.

``start`` puts the child in a new session, so stopping it takes its whole group (a node's own
children included) and a Ctrl-C in the terminal reaches pytest, not the child first. ``stop`` asks
with SIGINT (as a robot's launch does), then kills the group. ``leftovers`` finds, by an environment
marker every descendant inherits, processes of this test session still running; the conftest's
guard uses it after every test.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

# Set in os.environ by the conftest to the pytest process's pid; children inherit it.
SESSION_MARKER = "CASCADE_SD_TEST_SESSION"
# Library helpers that live as long as the process that started them, by design.
LONG_LIVED = ("multiprocessing.resource_tracker", "multiprocessing.forkserver", "compile_worker")


# Started with outlives_test=True (by a module- or session-scoped fixture that stops them itself,
# or a test that restarts a process such a fixture owns): the guard leaves their groups alone.
_FIXTURE_GROUPS: set[int] = set()


def start(args: Sequence[str], *, outlives_test: bool = False, **kwargs: Any) -> subprocess.Popen:
    """``subprocess.Popen`` in a new session (process group id == the child's pid)."""
    proc = subprocess.Popen(list(args), start_new_session=True, **kwargs)
    if outlives_test:
        _FIXTURE_GROUPS.add(proc.pid)
    return proc


def signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def stop(proc: subprocess.Popen, *, sigint_timeout_s: float = 15.0) -> int:
    """SIGINT to the child's group, wait; SIGKILL to the group on timeout; returns the exit status.

    The group is killed after the leader exits as well, so nothing it started outlives it.
    """
    if proc.poll() is None:
        signal_group(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=sigint_timeout_s)
        except subprocess.TimeoutExpired:
            signal_group(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    signal_group(proc.pid, signal.SIGKILL)
    return proc.returncode


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL to the child's whole group, and reap it."""
    signal_group(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    proc.wait(timeout=30)


def _marked_processes(marker_value: str) -> Iterator[tuple[int, str]]:
    needle = f"{SESSION_MARKER}={marker_value}".encode()
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            env = (entry / "environ").read_bytes()
            if needle not in env.split(b"\0"):
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:  # gone, or another user's
            continue
        yield int(entry.name), cmdline


def leftovers(before: set[int], marker_value: str) -> dict[int, str]:
    """pid -> command line of this session's running processes not in ``before`` (library helpers aside)."""
    return {
        pid: cmd
        for pid, cmd in _marked_processes(marker_value)
        if pid not in before and not any(name in cmd for name in LONG_LIVED) and not _in_fixture_group(pid)
    }


def _in_fixture_group(pid: int) -> bool:
    if not _FIXTURE_GROUPS:
        return False
    try:
        return os.getpgid(pid) in _FIXTURE_GROUPS
    except ProcessLookupError:
        return False


def session_pids(marker_value: str) -> set[int]:
    return {pid for pid, _ in _marked_processes(marker_value)}


def reap_leftovers(before: set[int], marker_value: str, grace_s: float = 5.0) -> dict[int, str]:
    """Wait up to ``grace_s`` for leftovers to end, then SIGKILL them; returns what had to be killed."""
    deadline = time.monotonic() + grace_s
    left = leftovers(before, marker_value)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = leftovers(before, marker_value)
    for pid in left:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return left
