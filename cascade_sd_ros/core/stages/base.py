"""What every stage is: its rounds, its question, its one worker thread, its counters (ROS-free).

:class:`Stage` is the one owner of a stage's round state. The lock invariant: every round record
and every counter of a stage is written under **one lock**, the stage's (its :class:`RoundBook`'s:
the book's methods take it, and the stage takes the same lock for its counters and question).
Model work runs on the worker thread without the lock; callers on other threads (a node's
callbacks, a test) use the public methods only, and read copies (:meth:`Stage.record`,
:meth:`Stage.snapshot`), never live records.
"""

from __future__ import annotations

import abc
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from cascade_sd_ros.core.rounds import Draft, RoundBook, RoundRecord, round_id_for
from cascade_sd_ros.core.stage_model import StageModel

POLL_S = 0.05  # how often an idle worker re-checks its stop flag
MAX_ROUND_FAILURES = 3  # a round failing this often is given up

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageInput:
    """Pixels a stage conditions on for one round, as resolved from the node's buffers."""

    pixels: np.ndarray | None  # uint8 [H, W, 3] (image stages) or [F, H, W, 3] (target); None: none
    degraded_reason: str = ""
    skew_ns: int | None = None  # input stamp minus T after offsets (newest clip frame for the target)
    span_ns: int | None = None  # clip span (target only)
    frame_skew_ns: int | None = None  # the refiner's frame rule applied by the verifier (reporting)


# (round, given_up) -> StageInput, or None while the input may still arrive (only when not given_up).
# The round is the worker's own record: a resolver reads its ``t_ns`` and ``question`` only.
Resolver = Callable[[RoundRecord, bool], "StageInput | None"]


class Stage(abc.ABC):
    """A stage's rounds and worker thread (see the module docstring for the lock invariant).

    Feed it rounds (:meth:`open_round`), commits (:meth:`hear_commit`), drafts (:meth:`hear_draft`),
    the moment a round's inputs are whole (:meth:`inputs_ready`), a new question (:meth:`ask`) and
    time going backwards (:meth:`reset`); what it makes goes to the sink given at construction.
    """

    def __init__(self, name: str, model: StageModel, resolve: Resolver, *, question: str = "") -> None:
        self.name = name
        self.model = model
        self._resolve = resolve
        self._book = RoundBook()
        self._lock = self._book.lock  # the one lock (see the module docstring)
        self._question = question
        self._counts: dict[str, int] = {"worker_errors": 0, "rounds_opened": 0}
        self._last_error = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the worker thread; again after :meth:`stop` (a lifecycle node's activate after a
        deactivate). RuntimeError while the last worker is still finishing its step."""
        if self._thread is not None and self._thread.is_alive():
            if not self._stop.is_set():
                return  # running already
            raise RuntimeError(f"{self.name}: the previous worker is still finishing its step")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the worker (bounded: a step longer than ``timeout`` finishes on its own)."""
        self._stop.set()
        self.wake()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        """Whether the worker thread runs (started and not stopped)."""
        return self._thread is not None and self._thread.is_alive() and not self._stop.is_set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def wake(self) -> None:
        """Something the worker may be waiting for changed outside the book (a frame arrived)."""
        with self._book.changed:
            self._book.changed.notify_all()

    # ------------------------------------------------------------------ inputs
    @property
    def question(self) -> str:
        with self._lock:
            return self._question

    def ask(self, question: str) -> None:
        """Rounds opened from now on answer ``question`` (already validated by the caller)."""
        with self._lock:
            self._question = question

    def open_round(self, t_ns: int) -> int:
        """Open (or find) the round at ``t_ns``; a new one asks the current question. Its id."""
        rid = round_id_for(t_ns)
        with self._lock:
            self._book.open(rid, t_ns, self._question)
            self._counts["rounds_opened"] += 1
        return rid

    def inputs_ready(self, t_ns: int) -> None:
        """The round at ``t_ns`` has all its inputs now: caption latency counts from here."""
        self._book.mark_inputs_ready(round_id_for(t_ns))

    def hear_commit(self, round_id: int, t_ns: int, commit_seq: int, token_ids: Sequence[int], final: bool) -> bool:
        """A Commit from the verifier; True when it was news."""
        with self._lock:
            news = self._book.apply_commit(round_id, t_ns, commit_seq, token_ids, final)
            self._book.open(round_id, t_ns, self._question)  # a round first heard of by its commit
            return news

    def hear_draft(self, round_id: int, t_ns: int, draft: Draft) -> None:
        """A draft from an upstream stage (opening its round on first sight)."""
        with self._lock:
            self._book.open(round_id, t_ns, self._question)
            self._book.add_draft(round_id, t_ns, draft)

    def reset(self) -> None:
        """Time went backwards: every open round is void."""
        self._book.reset()

    # ------------------------------------------------------------------ reading (copies)
    def record(self, round_id: int) -> RoundRecord | None:
        """A copy of one round's record (None: not open)."""
        return self._book.snapshot(round_id)

    def opened_since(self, wall_s: float) -> bool:
        """Whether any round now open was opened at or after ``wall_s`` (monotonic)."""
        with self._lock:
            return any(r.opened_wall_s >= wall_s for r in self._book.records())

    def silent_stages(self, stages: Sequence[int], within_s: float) -> set[int]:
        """Upstream stages that sent no draft in the last ``within_s`` seconds."""
        return self._book.silent_stages(stages, within_s)

    def snapshot(self) -> dict[str, object]:
        """The stage's counters (named as in diagnostics), taken under the lock."""
        with self._lock:
            return {**self._book.counts(), **self._counts}

    @property
    def last_error(self) -> str:
        with self._lock:
            return self._last_error

    # ------------------------------------------------------------------ the worker thread
    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] = self._counts.get(name, 0) + n

    def _run(self) -> None:
        with torch.inference_mode():
            while not self._stop.is_set():
                try:
                    self._step()
                except Exception as exc:  # a bad round must not kill the stage: count, log, go on
                    with self._lock:
                        self._counts["worker_errors"] += 1
                        self._last_error = f"{type(exc).__name__}: {exc}"
                        errors = self._counts["worker_errors"]
                    if errors == 1 or errors % 100 == 0:  # throttled: a stuck input repeats
                        log.exception("%s: round step failed (%d so far)", self.name, errors)
                    self._failed()
                    time.sleep(POLL_S)

    @abc.abstractmethod
    def _step(self) -> None:
        """One unit of the worker's work (one proposal, one round); idles when there is none."""

    @abc.abstractmethod
    def _failed(self) -> None:
        """Called after ``_step`` raised (the stage's own bookkeeping of failures)."""

    def _idle(self, timeout: float = POLL_S) -> None:
        with self._book.changed:
            self._book.changed.wait(timeout)
