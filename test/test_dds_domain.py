"""Test runs never share a DDS domain: ids are claimed with lock files, per process, machine-wide;
and no process a test starts outlives it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import processes
from helpers.dds_domain import LOCK_DIR, NoFreeDomain, claim_domain

HELPERS = Path(__file__).parent / "helpers"
# A process that claims a domain in the lock dir argv[1], prints its id, and holds it until stdin closes.
HOLDER = (
    "import sys; sys.path.insert(0, sys.argv[2]); from pathlib import Path\n"
    "from dds_domain import claim_domain\n"
    "c = claim_domain(Path(sys.argv[1])); print(c.domain_id, flush=True); sys.stdin.read()\n"
)


def _holder(lock_dir: Path) -> tuple[subprocess.Popen, int]:
    proc = processes.start(
        [sys.executable, "-c", HOLDER, str(lock_dir), str(HELPERS)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    assert line.strip().isdigit(), f"holder printed {line!r}"
    return proc, int(line)


def _release(proc: subprocess.Popen) -> None:
    proc.stdin.close()
    assert proc.wait(timeout=30) == 0


def test_two_processes_get_different_ids_and_a_released_id_is_claimed_again(tmp_path: Path) -> None:
    first, a = _holder(tmp_path)
    second, b = _holder(tmp_path)
    try:
        assert a != b
        assert {a, b} == {10, 11}  # the lowest free ids, in order
        _release(first)
        third, c = _holder(tmp_path)  # the lock went with the process: its id is free again
        try:
            assert c == a
        finally:
            _release(third)
    finally:
        for p in (first, second):
            if p.poll() is None:
                _release(p)


def test_a_killed_holder_leaves_no_stale_claim(tmp_path: Path) -> None:
    proc, a = _holder(tmp_path)
    processes.kill(proc)  # kill -9: no clean-up code runs, the kernel drops the lock
    claim = claim_domain(tmp_path)
    try:
        assert claim.domain_id == a
    finally:
        claim.release()


def test_claims_in_one_process_conflict_too(tmp_path: Path) -> None:
    one = claim_domain(tmp_path, first=20, last=21)
    two = claim_domain(tmp_path, first=20, last=21)
    try:
        assert (one.domain_id, two.domain_id) == (20, 21)
        with pytest.raises(NoFreeDomain, match="20..21"):
            claim_domain(tmp_path, first=20, last=21)
        with pytest.raises(NoFreeDomain, match="domain 20"):
            claim_domain(tmp_path, only=20)
        one.release()
        assert claim_domain(tmp_path, only=20).domain_id == 20
    finally:
        one.release()
        two.release()


def test_this_session_holds_its_domain_and_children_inherit_it() -> None:
    mine = int(os.environ["ROS_DOMAIN_ID"])
    proc, other = _holder(LOCK_DIR)  # another run starting now, on the real lock dir
    try:
        assert other != mine
    finally:
        _release(proc)
    out = subprocess.run(
        [sys.executable, "-c", "import os; print(os.environ['ROS_DOMAIN_ID'])"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert int(out.stdout) == mine


def test_the_make_wrapper_runs_a_command_in_a_claimed_domain(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "ROS_DOMAIN_ID"}
    script = "import os; print(os.environ['ROS_DOMAIN_ID'], os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'])"
    out = subprocess.run(
        [sys.executable, str(HELPERS / "dds_domain.py"), "run", "--", sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        check=True,
    )
    domain, scope = out.stdout.split()
    assert int(domain) != int(os.environ["ROS_DOMAIN_ID"]) and scope == "LOCALHOST"
    # a domain the user chose is theirs to keep
    out = subprocess.run(
        [sys.executable, str(HELPERS / "dds_domain.py"), "run", "--", sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
        env={**env, "ROS_DOMAIN_ID": "42"},
        check=True,
    )
    assert out.stdout.split()[0] == "42"


def test_leftover_processes_are_found_and_killed() -> None:
    session = os.environ[processes.SESSION_MARKER]
    before = processes.session_pids(session)
    # a grandchild whose parent exits at once: an orphan, found by the inherited marker alone
    subprocess.run(["/bin/sh", "-c", "sleep 300 >/dev/null 2>&1 &"], check=True, timeout=30, capture_output=True)
    left = processes.leftovers(before, session)
    assert len(left) == 1 and "sleep 300" in next(iter(left.values()))
    killed = processes.reap_leftovers(before, session, grace_s=0.0)
    assert killed == left
    deadline = time.monotonic() + 10
    while processes.leftovers(before, session) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes.leftovers(before, session) == {}


def test_stop_takes_the_whole_group() -> None:
    session = os.environ[processes.SESSION_MARKER]
    before = processes.session_pids(session)
    # the child ignores SIGINT, and has a child of its own
    proc = processes.start(["/bin/sh", "-c", "trap '' INT; sleep 300 & wait"])
    deadline = time.monotonic() + 10
    while len(processes.leftovers(before, session)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(processes.leftovers(before, session)) == 2
    processes.stop(proc, sigint_timeout_s=0.5)
    assert proc.returncode is not None
    deadline = time.monotonic() + 10
    while processes.leftovers(before, session) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes.leftovers(before, session) == {}


def test_a_fixture_owned_process_may_outlive_the_test() -> None:
    session = os.environ[processes.SESSION_MARKER]
    before = processes.session_pids(session)
    owned = processes.start(["/bin/sh", "-c", "sleep 300 & wait"], outlives_test=True)
    plain = processes.start(["sleep", "300"])
    try:
        deadline = time.monotonic() + 10
        while len(processes.session_pids(session) - before) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        left = processes.leftovers(before, session)
        assert set(left) == {plain.pid}  # the owned group (shell and its sleep) is not reported
    finally:
        processes.kill(owned)
        processes.kill(plain)
