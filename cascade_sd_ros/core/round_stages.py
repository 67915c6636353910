"""The three stages' round logic as worker threads, ROS-free (DESIGN.md "Rounds").

A node feeds its worker (rounds opened, drafts and commits heard, inputs resolved from its buffers)
and publishes what the worker hands back; model work runs on the worker's own thread, never in a
subscription callback. All per-round state lives in the stage's :class:`RoundBook`.

* :class:`DrafterWorker` — drafts ``gamma`` tokens continuing the commit, runs ahead up to
  ``max_ahead`` tokens, rolls back when a commit disagrees.
* :class:`RefinerWorker` — checks the drafter's tokens with its own model (``refine_step``), keeps
  the agreeing prefix, adds its own tokens; drafts alone when no stage-0 draft comes within
  ``upstream_wait``; without a frame it passes stage-0 drafts through flagged degraded.
* :class:`VerifierWorker` — the authority: prefills the clip once per round, verifies the best draft
  in one forward per commit (``verify_step``), decodes alone after ``draft_wait`` without a draft.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from cascade_sd_ros.core.modes import ModeRules, two_point_q
from cascade_sd_ros.core.rounds import STAGE_NONE, Draft, RoundBook, RoundRecord
from cascade_sd_ros.core.spec.steps import draft_step, refine_step, verify_step
from cascade_sd_ros.core.stage_model import StageModel

STAGE_DRAFTER, STAGE_REFINER = 0, 1
_STAGE_NAMES = {STAGE_DRAFTER: "drafter", STAGE_REFINER: "refiner"}
_POLL_S = 0.05  # how often an idle worker re-checks its stop flag
_MAX_ROUND_FAILURES = 3  # a round failing this often is given up

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageInput:
    """Pixels a stage conditions on for one round, as resolved from the node's buffers."""

    pixels: np.ndarray | None  # uint8 [H, W, 3] (image stages) or [F, H, W, 3] (target); None: none
    degraded_reason: str = ""
    skew_ns: int | None = None  # input stamp minus T after offsets (newest clip frame for the target)
    span_ns: int | None = None  # clip span (target only)
    frame_skew_ns: int | None = None  # the refiner's frame rule applied by the verifier (reporting)


# (record, given_up) -> StageInput, or None while the input may still arrive (only when not given_up)
Resolver = Callable[[RoundRecord, bool], "StageInput | None"]


@dataclass(frozen=True)
class CaptionUpdate:
    """One verifier commit (or a round's end) with everything VerifiedCaption / Commit carry."""

    round_id: int
    t_ns: int
    token_ids: tuple[int, ...]
    final: bool
    commit_seq: int
    accepted: int
    drafted: int
    accepted_stage: int
    drafted_per_stage: tuple[int, ...]
    accepted_per_stage: tuple[int, ...]
    upstream_drafted: int
    upstream_accepted: int
    target_forwards: int
    latency_total_ms: float
    latency_wait_ms: float
    latency_prefill_ms: float
    latency_verify_ms: float
    latency_draft_ms: float
    skew_frame_ms: float
    skew_clip_ms: float
    clip_span_ms: float
    degraded: bool
    degraded_reason: str
    question: str
    input_wait_ms: float = 0.0  # part of latency_wait_ms spent waiting for the clip (not for drafts)
    # caption latency (the one speed figure): round inputs complete -> this update; NaN if they never were
    latency_caption_ms: float = math.nan


def _ms(ns: int | None) -> float:
    return math.nan if ns is None else ns / 1e6


class _Worker:
    """A stoppable thread looping over ``_step`` with torch in inference mode."""

    def __init__(self, name: str, book: RoundBook) -> None:
        self.book = book
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.errors = 0
        self.last_error = ""

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self.book.changed:
            self.book.changed.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _run(self) -> None:
        with torch.inference_mode():
            while not self._stop.is_set():
                try:
                    self._step()
                except Exception as exc:  # a bad round must not kill the stage: count, log, go on
                    self.errors += 1
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    if self.errors == 1 or self.errors % 100 == 0:  # throttled: a stuck input repeats
                        log.exception("%s: round step failed (%d so far)", self._thread.name, self.errors)
                    self._failed()
                    time.sleep(_POLL_S)

    def _step(self) -> None:
        raise NotImplementedError

    def _failed(self) -> None:
        """Called after ``_step`` raised (the stage's own bookkeeping of failures)."""

    def _idle(self, timeout: float = _POLL_S) -> None:
        with self.book.changed:
            self.book.changed.wait(timeout)


class _UpstreamWorker(_Worker):
    """Shared by drafter and refiner: pick the focus round, keep its context loaded, bound look-ahead."""

    def __init__(
        self,
        name: str,
        book: RoundBook,
        model: StageModel,
        resolve: Resolver,
        publish: Callable[[RoundRecord, Draft], None],
        gamma: int,
        max_ahead: int,
        max_new_tokens: int,
        max_wait_s: float,
    ) -> None:
        super().__init__(name, book)
        if gamma < 1 or max_ahead < gamma or max_new_tokens < 1 or max_wait_s < 0:
            raise ValueError("need gamma >= 1, max_ahead >= gamma, max_new_tokens >= 1, max_wait_s >= 0")
        self.model = model
        self.resolve = resolve
        self.publish = publish
        self.gamma = gamma
        self.max_ahead = max_ahead
        self.max_new_tokens = max_new_tokens
        self.max_wait_s = max_wait_s
        self._loaded: tuple[int, int] | None = None  # (round_id, t_ns) whose context the adapter holds
        self._input: StageInput | None = None
        self._current: RoundRecord | None = None  # the round of the step in progress
        self.drafts_published = 0
        self.rounds_seen = 0

    def set_gamma(self, gamma: int, lookahead: int) -> None:
        """A new draft length, from the next proposal on (a live parameter change)."""
        if gamma < 1 or lookahead < 1:
            raise ValueError(f"need gamma >= 1 and lookahead >= 1, got {gamma}, {lookahead}")
        self.gamma, self.max_ahead = gamma, gamma * lookahead

    def _work_item(self) -> tuple[RoundRecord, list[int], int] | None:
        """(round, speculated prefix, commit_seq) to extend now, or None (nothing to do)."""
        with self.book.lock:
            rec = self.book.focus()
            if rec is None:
                return None
            spec = rec.rebase_spec()
            eos = self.model.adapter.eos_token_id
            ended = bool(spec) and eos is not None and spec[-1] == eos
            if ended or len(spec) >= self.max_new_tokens or len(spec) - len(rec.committed) >= self.max_ahead:
                return None
            self._current = rec
            return rec, list(spec), rec.commit_seq

    def _failed(self) -> None:
        rec, self._current = self._current, None
        if rec is None:
            return
        rec.failures += 1
        if rec.failures >= _MAX_ROUND_FAILURES:  # stop drafting for a round this stage cannot serve
            with self.book.lock:
                rec.abandoned = True

    def _ensure_context(self, rec: RoundRecord) -> StageInput | None:
        """Load the round's context into the adapter (once per round); None while input is pending."""
        key = (rec.round_id, rec.t_ns)
        if self._loaded == key:
            return self._input
        given_up = time.monotonic() - rec.opened_wall_s >= self.max_wait_s
        inp = self.resolve(rec, given_up)
        if inp is None:
            return None
        if inp.pixels is not None:
            self.model.adapter.prefill(self.model.context(inp.pixels, rec.question))
        self._loaded, self._input = key, inp
        self.rounds_seen += 1
        return inp

    def _next_work(self) -> tuple[RoundRecord, list[int], int, StageInput] | None:
        """The round to extend now with its loaded input, or None (nothing to do, or input pending)."""
        item = self._work_item()
        if item is None:
            return None
        inp = self._ensure_context(item[0])
        return None if inp is None else (*item, inp)

    def _record(self, rec: RoundRecord, prefix: list[int], draft: Draft) -> None:
        with self.book.lock:
            if self.book.get(rec.round_id) is not rec:
                return  # reset or evicted meanwhile
            rec.extend_spec(prefix, draft.token_ids)
        self.publish(rec, draft)
        self.drafts_published += 1


class DrafterWorker(_UpstreamWorker):
    def __init__(self, book: RoundBook, model: StageModel, resolve: Resolver,
                 publish: Callable[[RoundRecord, Draft], None], *, gamma: int, max_ahead: int,
                 max_new_tokens: int, max_wait_s: float = 0.0) -> None:
        super().__init__("event_drafter", book, model, resolve, publish, gamma, max_ahead, max_new_tokens, max_wait_s)

    def _step(self) -> None:
        work = self._next_work()
        if work is None:
            self._idle()
            return
        rec, prefix, seq, inp = work
        if inp.pixels is None:  # no events for this round: nothing to draft from
            with self.book.lock:
                rec.abandoned = True
            return
        t0 = time.perf_counter()
        proposal = draft_step(self.model.adapter, prefix, self.gamma, max_new_tokens=self.max_new_tokens)
        if not proposal.token_ids:
            self._idle()
            return
        draft = Draft(
            stage=STAGE_DRAFTER, commit_seq=seq, start_position=len(prefix),
            token_ids=tuple(proposal.token_ids), confidence=tuple(proposal.probs),
            compute_ms=(time.perf_counter() - t0) * 1e3,
            degraded=bool(inp.degraded_reason), degraded_reason=inp.degraded_reason,
        )
        self._record(rec, prefix, draft)


class RefinerWorker(_UpstreamWorker):
    def __init__(self, book: RoundBook, model: StageModel, resolve: Resolver,
                 publish: Callable[[RoundRecord, Draft], None], *, rules: ModeRules, gamma: int,
                 max_ahead: int, max_new_tokens: int, max_wait_s: float, upstream_wait_s: float,
                 liveness_s: float = 5.0) -> None:
        super().__init__("frame_refiner", book, model, resolve, publish, gamma, max_ahead, max_new_tokens, max_wait_s)
        if upstream_wait_s < 0:
            raise ValueError(f"upstream_wait_s must be >= 0, got {upstream_wait_s}")
        self.rules = rules
        self.upstream_wait_s = upstream_wait_s
        self.liveness_s = liveness_s

    def _upstream(self, rec: RoundRecord, prefix: list[int], wait: bool) -> tuple[Draft, list[int]] | None:
        """A stage-0 draft continuing ``prefix``, waiting up to ``upstream_wait`` unless the drafter
        already missed a wait this round (then it is not waited for until it delivers again)."""
        if self.rounds_seen > 1 and self.book.silent_stages([STAGE_DRAFTER], self.liveness_s):
            rec.stalled.add(STAGE_DRAFTER)  # silent for a while: do not hold every round for it
        wait = wait and STAGE_DRAFTER not in rec.stalled
        deadline = time.monotonic() + (self.upstream_wait_s if wait else 0.0)
        with self.book.changed:
            while True:
                found = self.book.best_draft(rec.round_id, [STAGE_DRAFTER], base=prefix)
                left = deadline - time.monotonic()
                if found is not None or left <= 0 or self.stopping or rec.spec != prefix:
                    if found is None and wait and left <= 0:
                        rec.stalled.add(STAGE_DRAFTER)
                    return found
                self.book.changed.wait(min(left, _POLL_S))

    def _step(self) -> None:
        work = self._next_work()
        if work is None:
            self._idle()
            return
        rec, prefix, seq, inp = work
        if inp.pixels is None:
            # no frame: pass stage-0 drafts through, flagged, so the verifier still gets them early
            found = self._upstream(rec, prefix, wait=True)
            if found is None:
                self._idle()
                return
            d0, tail = found
            draft = Draft(
                stage=STAGE_REFINER, commit_seq=seq, start_position=len(prefix), token_ids=tuple(tail),
                confidence=tuple(d0.confidence[len(d0.token_ids) - len(tail):]),
                upstream_drafted=len(tail), upstream_accepted=len(tail), compute_ms=0.0,
                degraded=True, degraded_reason=inp.degraded_reason,
            )
            self._record(rec, prefix, draft)
            return
        found = self._upstream(rec, prefix, wait=True)
        adapter = self.model.adapter
        t0 = time.perf_counter()
        if found is None:
            proposal = draft_step(adapter, prefix, self.gamma, max_new_tokens=self.max_new_tokens)
            tokens, conf, drafted, kept = proposal.token_ids, proposal.probs, 0, 0
        else:
            d0, tail = found
            conf0 = d0.confidence[len(d0.token_ids) - len(tail):]
            q = two_point_q(tail, conf0, adapter.vocab_size) if self.rules.refiner.needs_q else None
            res = refine_step(adapter, prefix, tail, self.gamma, max_new_tokens=self.max_new_tokens,
                              level=self.rules.refiner, q=q)
            tokens, conf, drafted, kept = res.token_ids, res.confidences, res.drafted, res.kept
        if not tokens:
            self._idle()
            return
        draft = Draft(
            stage=STAGE_REFINER, commit_seq=seq, start_position=len(prefix), token_ids=tuple(tokens),
            confidence=tuple(conf), upstream_drafted=drafted, upstream_accepted=kept,
            compute_ms=(time.perf_counter() - t0) * 1e3 + (0.0 if found is None else found[0].compute_ms),
            degraded=bool(inp.degraded_reason), degraded_reason=inp.degraded_reason,
        )
        self._record(rec, prefix, draft)


class DraftWait:
    """How long the verifier waits for a draft when none is in hand: adapted to measured arrival.

    Drafts that come after a wait are timed (EMA of the delay); the budget is a few times that,
    never more than ``max_s`` (the ``draft_wait`` parameter) nor less than ``floor_s``. Waits that
    run out widen it again, so a stage that got slower is not cut off for good.
    """

    def __init__(self, max_s: float, floor_s: float = 0.002, factor: float = 3.0, alpha: float = 0.2) -> None:
        self.max_s = max_s
        self.floor_s = floor_s
        self.factor = factor
        self.alpha = alpha
        self.ema_s: float | None = None
        self.waits = 0
        self.misses = 0

    def budget_s(self) -> float:
        if self.ema_s is None:
            return self.max_s
        return min(self.max_s, max(self.floor_s, self.factor * self.ema_s))

    def arrived(self, delay_s: float) -> None:
        self.waits += 1
        self.ema_s = delay_s if self.ema_s is None else (1 - self.alpha) * self.ema_s + self.alpha * delay_s

    def missed(self) -> None:
        self.misses += 1
        if self.ema_s is not None:
            self.ema_s = min(self.max_s, 2 * max(self.ema_s, self.floor_s))


class VerifierWorker(_Worker):
    """Rounds in time order, one at a time; the verifier never waits longer than its bounds."""

    def __init__(
        self,
        book: RoundBook,
        model: StageModel,
        resolve: Resolver,
        emit: Callable[[CaptionUpdate], None],
        *,
        rules: ModeRules,
        max_new_tokens: int,
        draft_wait_s: float,
        max_wait_s: float,
        use_stages: tuple[int, ...] = (STAGE_REFINER, STAGE_DRAFTER),
        seed: int = 0,
        max_pending: int = 4,
        liveness_s: float = 5.0,
    ) -> None:
        super().__init__("video_verifier", book)
        if max_new_tokens < 1 or draft_wait_s < 0 or max_wait_s < 0 or max_pending < 1:
            raise ValueError("need max_new_tokens >= 1, draft_wait_s >= 0, max_wait_s >= 0, max_pending >= 1")
        self.model = model
        self.resolve = resolve
        self.emit = emit
        self.rules = rules
        self.max_new_tokens = max_new_tokens
        self.draft_wait_s = draft_wait_s
        self.max_wait_s = max_wait_s
        self.use_stages = use_stages
        self.seed = seed
        self.max_pending = max_pending
        self.liveness_s = liveness_s
        self.rounds_done = 0
        self.rounds_dropped = 0
        self.rounds_degraded = 0
        self.busy_round: int | None = None
        self.draft_wait = DraftWait(draft_wait_s)

    def set_draft_wait(self, draft_wait_s: float) -> None:
        """A new bound on the wait for a draft, from the next wait on (a live parameter change)."""
        if draft_wait_s < 0:
            raise ValueError(f"draft_wait_s must be >= 0, got {draft_wait_s}")
        self.draft_wait_s = draft_wait_s
        self.draft_wait.max_s = draft_wait_s

    def _pending(self) -> RoundRecord | None:
        with self.book.lock:
            todo = [r for r in self.book.records() if not r.final and not r.abandoned]
            while len(todo) > self.max_pending:  # overload: the oldest rounds go, counted
                todo[0].abandoned = True
                self.rounds_dropped += 1
                todo.pop(0)
            return todo[0] if todo else None

    def _step(self) -> None:
        rec = self._pending()
        if rec is None:
            self._idle()
            return
        self.busy_round = rec.round_id
        try:
            self._run_round(rec)
        except Exception:
            # a round that fails again and again (a broken input) must not hold up the ones after it
            rec.failures += 1
            if rec.failures >= _MAX_ROUND_FAILURES:
                with self.book.lock:
                    rec.abandoned = True
                self.rounds_dropped += 1
            raise
        finally:
            self.busy_round = None

    def _alive(self, rec: RoundRecord) -> bool:
        return not self.stopping and self.book.get(rec.round_id) is rec

    def _wait_input(self, rec: RoundRecord) -> StageInput | None:
        while self._alive(rec):
            given_up = time.monotonic() - rec.opened_wall_s >= self.max_wait_s
            inp = self.resolve(rec, given_up)
            if inp is not None:
                return inp
            self._idle(min(_POLL_S, max(self.max_wait_s / 10, 0.001)))
        return None

    def _next_draft(self, rec: RoundRecord) -> tuple[Draft, list[int]] | None:
        """The best draft continuing the commit: what is in hand now (by stage preference), else the
        first to arrive within the draft wait (:class:`DraftWait`).

        A draft in hand is never held back for a better stage's: an idle verifier costs more than a
        draft accepted a little less. A stage that misses the wait is marked stalled for the round
        and not waited for again until it delivers, so a dead stage costs one wait per round.
        """
        asked = time.monotonic()
        deadline = asked + self.draft_wait.budget_s()
        with self.book.changed:
            while True:
                best = self.book.best_draft(rec.round_id, self.use_stages)
                if best is not None:
                    if time.monotonic() > asked:
                        self.draft_wait.arrived(time.monotonic() - asked)
                    return best
                live = [s for s in self.use_stages if s not in rec.stalled]
                left = deadline - time.monotonic()
                if not live or left <= 0 or not self._alive(rec):
                    if live and left <= 0:
                        self.draft_wait.missed()
                    rec.stalled.update(live)
                    return None
                self.book.changed.wait(min(left, _POLL_S))

    def _update(self, rec: RoundRecord, inp: StageInput | None, final: bool, accepted: int, drafted: int,
                stage: int, reason: str) -> CaptionUpdate:
        return CaptionUpdate(
            round_id=rec.round_id, t_ns=rec.t_ns, token_ids=tuple(rec.committed), final=final,
            commit_seq=rec.commit_seq, accepted=accepted, drafted=drafted, accepted_stage=stage,
            drafted_per_stage=tuple(rec.drafted), accepted_per_stage=tuple(rec.accepted),
            upstream_drafted=rec.upstream_drafted, upstream_accepted=rec.upstream_accepted,
            target_forwards=rec.target_forwards,
            latency_total_ms=(time.monotonic() - rec.opened_wall_s) * 1e3,
            latency_wait_ms=rec.wait_ms, latency_prefill_ms=rec.prefill_ms,
            latency_verify_ms=rec.verify_ms, latency_draft_ms=rec.draft_ms,
            skew_frame_ms=_ms(None if inp is None else inp.frame_skew_ns),
            skew_clip_ms=_ms(None if inp is None else inp.skew_ns),
            clip_span_ms=_ms(None if inp is None else inp.span_ns),
            degraded=bool(reason), degraded_reason=reason, question=rec.question,
            input_wait_ms=rec.input_wait_ms,
            latency_caption_ms=(math.nan if rec.inputs_ready_wall_s is None
                                else (time.monotonic() - rec.inputs_ready_wall_s) * 1e3),
        )

    def _run_round(self, rec: RoundRecord) -> None:
        t_wait = time.perf_counter()
        inp = self._wait_input(rec)
        rec.input_wait_ms = (time.perf_counter() - t_wait) * 1e3
        rec.wait_ms += rec.input_wait_ms
        if inp is None:
            return  # reset or stopping
        # a round resolved without its frames passing T + slop (given up, prompt): complete now
        self.book.mark_inputs_ready(rec.round_id)
        if inp.pixels is None:
            # no frames: the verifier cannot stand behind any text; say so and move on. The empty
            # final commit tells upstream stages the round is over.
            with self.book.lock:
                rec.final = True
                rec.commit_seq += 1
            self.rounds_degraded += 1
            self.rounds_done += 1
            self.emit(self._update(rec, inp, True, 0, 0, STAGE_NONE, inp.degraded_reason or "no frames"))
            return
        adapter = self.model.adapter
        t0 = time.perf_counter()
        adapter.prefill(self.model.context(inp.pixels, rec.question))
        rec.prefill_ms = (time.perf_counter() - t0) * 1e3
        if self.rounds_done:
            # stages silent for a while cost no wait at all; a draft from them revives them
            with self.book.lock:
                rec.stalled |= self.book.silent_stages(self.use_stages, self.liveness_s) - rec.stages_seen
        generator = torch.Generator(device=adapter.device).manual_seed((self.seed * 1_000_003 + rec.round_id) % (2**63))
        reasons = [inp.degraded_reason] if inp.degraded_reason else []
        while self._alive(rec):
            t_wait = time.perf_counter()
            choice = self._next_draft(rec)
            rec.wait_ms += (time.perf_counter() - t_wait) * 1e3
            if not self._alive(rec):
                return
            stage, tail, q = STAGE_NONE, [], None
            if choice is not None:
                d, tail = choice
                stage = d.stage
                if self.rules.verifier.needs_q:
                    q = two_point_q(tail, d.confidence[len(d.token_ids) - len(tail):], adapter.vocab_size)
            t0 = time.perf_counter()
            res = verify_step(adapter, rec.committed, tail, max_new_tokens=self.max_new_tokens,
                              level=self.rules.verifier, q=q, generator=generator)
            rec.verify_ms += (time.perf_counter() - t0) * 1e3
            if not res.token_ids:  # budget already spent or EOS committed: the round is over
                with self.book.lock:
                    rec.final = True
                break
            with self.book.lock:
                if choice is not None:
                    rec.draft_ms += choice[0].compute_ms
                    if stage == STAGE_REFINER:
                        rec.upstream_drafted += choice[0].upstream_drafted
                        rec.upstream_accepted += choice[0].upstream_accepted
                self.book.commit(rec.round_id, res.token_ids, stage, res.drafted, res.accepted, res.finished)
            if res.finished:
                break
            self.emit(self._update(rec, inp, False, res.accepted, res.drafted, stage, "; ".join(reasons)))
        else:
            return
        if not self._alive(rec):
            return
        # a stage that has gone quiet (nothing for liveness_s, this round included) cost speed, not
        # output: still say it was missing. One merely slower than this round is not flagged.
        quiet = self.book.silent_stages(self.use_stages, self.liveness_s) - rec.stages_seen
        silent = [_STAGE_NAMES[s] for s in self.use_stages if s in quiet]
        if silent:
            reasons.append("no drafts from " + " and ".join(silent))
        self.rounds_done += 1
        if reasons:
            self.rounds_degraded += 1
        self.emit(self._update(rec, inp, True, res.accepted, res.drafted, stage, "; ".join(reasons)))
