"""A DDS domain of this process's own: ``ROS_DOMAIN_ID``s claimed with lock files, machine-wide.

Each id has a lock file in one directory under the system's temp dir; a claim takes an exclusive
``flock`` on the first file of the range that nobody holds and keeps it open. The lock is the
kernel's: it goes when the holder exits, however it exits (kill -9 included), so no stale claims
are left to clean up. Standard library only: ``test/conftest.py`` claims before rclpy is imported.

As a command it runs another one in a claimed domain (the Makefile's demo and bench)::

    python test/helpers/dds_domain.py run -- python -m cascade_sd_ros.tools.cli demo

The command inherits the lock: it is held until that command (and whatever keeps the descriptor
open) exits. A ``ROS_DOMAIN_ID`` already set is the user's choice there (to watch the demo from
rviz, say) and is kept as it is; the tests never keep one (test/conftest.py).
"""

from __future__ import annotations

import fcntl
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

# 0 is every unconfigured ROS process's domain; above 101, Linux's ephemeral ports overlap DDS's.
FIRST_ID, LAST_ID = 10, 101
LOCK_DIR = Path(tempfile.gettempdir()) / "cascade_sd_ros-dds-domains"


class NoFreeDomain(RuntimeError):
    """Every id of the range is held by another process."""


@dataclass
class DomainClaim:
    """A held domain id; ``release()`` (or the process's exit) gives it back."""

    domain_id: int
    fd: int | None

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the last descriptor drops the flock
            self.fd = None


def _try_lock(path: Path) -> int | None:
    try:
        fd, writable = os.open(path, os.O_RDWR | os.O_CREAT, 0o666), True
    except PermissionError:  # another user's file: a read-only descriptor locks as well
        fd, writable = os.open(path, os.O_RDONLY), False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    if writable:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())  # who holds it, for a person looking
    return fd


def claim_domain(
    lock_dir: Path = LOCK_DIR, first: int = FIRST_ID, last: int = LAST_ID, only: int | None = None
) -> DomainClaim:
    """Claim the lowest free id in ``[first, last]`` (or exactly ``only``); NoFreeDomain if none is."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    try:
        lock_dir.chmod(0o1777)  # every user of the machine claims in the same place (sticky, as /tmp)
    except PermissionError:
        pass  # made by another user, who opened it up
    ids = [only] if only is not None else range(first, last + 1)
    for domain_id in ids:
        fd = _try_lock(lock_dir / f"domain-{domain_id}.lock")
        if fd is not None:
            return DomainClaim(domain_id, fd)
    what = f"domain {only}" if only is not None else f"every domain {first}..{last}"
    raise NoFreeDomain(f"{what} is held by another process (lock files in {lock_dir})")


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[0] != "run" or argv[1] != "--":
        print("usage: dds_domain.py run -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    if os.environ.get("ROS_DOMAIN_ID", "").strip():
        return _exec(argv[2:], dict(os.environ))
    try:
        claim = claim_domain()
    except NoFreeDomain as exc:
        print(f"dds_domain: {exc}", file=sys.stderr)
        return 1
    assert claim.fd is not None
    os.set_inheritable(claim.fd, True)  # the command keeps the lock over exec
    env = {**os.environ, "ROS_DOMAIN_ID": str(claim.domain_id)}
    return _exec(argv[2:], env)


def _exec(command: list[str], env: dict[str, str]) -> int:
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    try:
        os.execvpe(command[0], command, env)
    except OSError as exc:
        print(f"dds_domain: cannot run {command[0]!r}: {exc}", file=sys.stderr)
        return 127
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
