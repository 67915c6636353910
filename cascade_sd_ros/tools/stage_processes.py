"""Stage nodes as separate processes, the way a robot runs them: each its own interpreter, talking
over DDS only, started with ``python -m cascade_sd_ros.nodes.<node>`` and a parameters file.

Used by ``demo`` (and by benches). Processes start in their own session (a terminal's Ctrl-C
reaches only the parent, which stops them in order), die with their parent (``PR_SET_PDEATHSIG``
with SIGKILL: a parent killed outright cannot stop them in order, and a stage that hangs in its
own clean-up must not outlive it), and stop with SIGINT, then SIGTERM, then SIGKILL.

With ``pin_cpus`` (and two or more CPUs) the verifier gets the first CPU to itself and the upstream
stages share the others, as a robot would pin them: the verifier's passes are the critical path,
and a drafter's burst at the start of a round must not take its core.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from cascade_sd_ros.core.names import NODE_OF_STAGE
from cascade_sd_ros.tools.pipeline import PipelineConfig

_PR_SET_PDEATHSIG = 1


def child_setup(cpus: set[int] | None) -> Callable[[], None]:
    """A ``preexec_fn``: the child dies with its parent and runs on ``cpus`` (None: any)."""

    def setup() -> None:  # runs in the child between fork and exec
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except OSError:
            pass  # not Linux: the parent's stop() still ends the child
        if cpus:
            os.sched_setaffinity(0, cpus)

    return setup


def cpu_plan(stage: str, available: set[int] | None = None) -> set[int] | None:
    """The CPUs a stage process runs on: the verifier the first, the others the rest (None: any,
    on a machine with fewer than two)."""
    cpus = sorted(available if available is not None else os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    return {cpus[0]} if stage == "verifier" else set(cpus[1:])


def pin_this_process(cpus: set[int] | None) -> Callable[[], None]:
    """Move every thread of this process (DDS and executor threads included, which exist before any
    pinning of the main thread could reach them) onto ``cpus``; returns what puts them back. With
    ``cpus`` None (a machine of one CPU) it does nothing. A player publishing a 1 kHz stream must not
    take the verifier's CPU from it."""
    if not cpus:
        return lambda: None
    before = os.sched_getaffinity(0)

    def each_thread(mask: set[int]) -> None:
        for tid in os.listdir("/proc/self/task"):
            try:
                os.sched_setaffinity(int(tid), mask)
            except (ProcessLookupError, PermissionError, OSError):
                pass  # a thread that ended meanwhile

    each_thread(cpus)
    return lambda: each_thread(before)


@dataclass
class StageProcess:
    """One running stage node."""

    stage: str
    namespace: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def params_file_body(namespace: str, node: str, params: dict[str, Any]) -> dict[str, Any]:
    """A ``--params-file`` for one stage process: its parameters in a block named by the node's full
    name (as launch_ros writes a node's own parameters), not ``/**``, which every node reads."""
    return {f"{namespace.rstrip('/')}/{node}": {"ros__parameters": _plain(params)}}


_MADE_WORKDIRS: set[Path] = set()  # the work folders StageProcesses made itself (theirs to remove)


def _new_workdir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="cascade_sd_stages_"))
    _MADE_WORKDIRS.add(path)
    return path


@dataclass
class StageProcesses:
    """A group of stage processes; a context manager that always stops what it started.

    Its work folder (parameters files, one log per stage) goes when the ``with`` block ends cleanly
    and is kept when it ends in an error, whose message names it, or when the caller gave it."""

    workdir: Path = field(default_factory=_new_workdir)
    procs: list[StageProcess] = field(default_factory=list)
    torch_threads: int = 1
    pin_cpus: bool = True
    available_cpus: set[int] = field(default_factory=lambda: set(os.sched_getaffinity(0)))

    def start(self, config: PipelineConfig, namespace: str, *, tag: str = "") -> list[StageProcess]:
        """Start ``config.stages`` under ``namespace`` (an absolute ROS namespace)."""
        started = []
        for stage in config.stages:
            node = NODE_OF_STAGE[stage]
            params = {p.name: p.value for p in config.overrides(stage)}
            name = f"{tag or namespace.strip('/').replace('/', '_')}_{node}"
            params_file = self.workdir / f"{name}.yaml"
            # a block naming the node: what it does not declare is a mistake it reports (nodes/overrides.py)
            params_file.write_text(yaml.safe_dump(params_file_body(namespace, node, params)))
            log_path = self.workdir / f"{name}.log"
            env = {**os.environ, "OMP_NUM_THREADS": str(self.torch_threads), "PYTHONUNBUFFERED": "1"}
            cmd = [
                sys.executable,
                "-m",
                f"cascade_sd_ros.nodes.{node}",
                "--ros-args",
                "-r",
                f"__ns:={namespace}",
                "--params-file",
                str(params_file),
            ]
            with log_path.open("wb") as log:
                popen = subprocess.Popen(
                    cmd,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    start_new_session=True,
                    preexec_fn=child_setup(cpu_plan(stage, self.available_cpus) if self.pin_cpus else None),
                )
            proc = StageProcess(stage, namespace, popen, log_path)
            self.procs.append(proc)
            started.append(proc)
        return started

    def check_alive(self) -> None:
        """RuntimeError naming a stage process that has exited, with the end of its log."""
        for p in self.procs:
            if not p.alive():
                raise RuntimeError(
                    f"stage {p.stage} ({p.namespace}) exited with status {p.popen.returncode}:\n{p.log_tail()}"
                )

    def stop(self, timeout_s: float = 5.0) -> dict[str, int | None]:
        """SIGINT all, wait; then SIGTERM, then SIGKILL whatever is left. Returns exit codes."""
        for p in self.procs:
            if p.alive():
                _signal_group(p.popen, signal.SIGINT)
        deadline = time.monotonic() + timeout_s
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for p in self.procs:
                try:
                    p.popen.wait(timeout=max(deadline - time.monotonic(), 0.0))
                except subprocess.TimeoutExpired:
                    _signal_group(p.popen, sig)
            deadline = time.monotonic() + 2.0
        for p in self.procs:
            try:
                p.popen.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                pass
        codes = {f"{p.namespace}/{p.stage}": p.popen.returncode for p in self.procs}
        self.procs = []
        return codes

    def __enter__(self) -> "StageProcesses":
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.stop()
        if exc_type is None:
            self.remove_workdir()

    def remove_workdir(self) -> None:
        """Remove the work folder and its logs if this group made it (a given one stays)."""
        if self.workdir in _MADE_WORKDIRS:
            _MADE_WORKDIRS.discard(self.workdir)
            shutil.rmtree(self.workdir, ignore_errors=True)


def _signal_group(popen: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(popen.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _plain(values: Mapping[str, Any]) -> dict[str, Any]:
    """Parameter values as YAML scalars rcl parses back to the same types."""
    out: dict[str, Any] = {}
    for k, v in values.items():
        if isinstance(v, (bool, int, float, str)):
            out[k] = v
        elif isinstance(v, (list, tuple)):
            out[k] = list(v)
        else:
            raise ValueError(f"parameter {k}={v!r}: not a value a parameters file can carry")
    return out
