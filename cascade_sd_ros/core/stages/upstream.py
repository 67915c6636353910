"""The drafter and refiner stages: propose tokens continuing the verifier's commit (ROS-free).

* :class:`DrafterStage` drafts ``gamma`` tokens continuing the commit, runs ahead up to
  ``max_ahead`` tokens, rolls back when a commit disagrees. A round's first draft can be a tree
  (``early_tree_nodes`` > 0): where the drafter is unsure (colour, which events do not carry) it
  keeps every likely token with its own continuation, and the verifier checks the whole tree in the
  forward that prefills its clip. Both stages adapt ``gamma`` to what the
  verifier accepts of their drafts, up to ``gamma_max`` (:class:`~.gamma.AdaptiveGamma`).
* :class:`RefinerStage` checks the drafter's tokens with its own model (``refine_step``), keeps the
  agreeing prefix, adds its own tokens; drafts alone when no stage-0 draft comes within
  ``upstream_wait``; without a frame it passes stage-0 drafts through flagged degraded.

Both work on the book's focus round (the oldest the verifier has not moved past) and hand each
draft to ``publish(round_id, t_ns, draft)``.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Sequence

from cascade_sd_ros.core.modes import ModeRules, two_point_q
from cascade_sd_ros.core.names import NODE_OF_STAGE, STAGE_DRAFTER, STAGE_REFINER
from cascade_sd_ros.core.rounds import Draft, RoundRecord
from cascade_sd_ros.core.spec.steps import draft_step, refine_step
from cascade_sd_ros.core.spec.tree import grow_tree
from cascade_sd_ros.core.stage_model import StageModel
from cascade_sd_ros.core.stages.base import MAX_ROUND_FAILURES, POLL_S, Resolver, Stage, StageInput
from cascade_sd_ros.core.stages.controlled import ControlledAcceptance
from cascade_sd_ros.core.stages.gamma import AdaptiveGamma

Publish = Callable[[int, int, Draft], None]  # (round_id, t_ns, draft)


class UpstreamStage(Stage):
    """Shared by drafter and refiner: pick the focus round, keep its context loaded, bound look-ahead."""

    def __init__(
        self,
        name: str,
        model: StageModel,
        resolve: Resolver,
        publish: Publish,
        *,
        gamma: int,
        lookahead: int,
        max_new_tokens: int,
        max_wait_s: float,
        question: str = "",
        gamma_max: int | None = None,
    ) -> None:
        super().__init__(name, model, resolve, question=question)
        if max_new_tokens < 1 or max_wait_s < 0:
            raise ValueError("need max_new_tokens >= 1, max_wait_s >= 0")
        if lookahead < 1:
            raise ValueError(f"need lookahead >= 1, got {lookahead}")
        self._publish = publish
        self._gamma = AdaptiveGamma(gamma, gamma if gamma_max is None else gamma_max)
        self._lookahead = lookahead
        self.max_new_tokens = max_new_tokens
        self.max_wait_s = max_wait_s
        # worker thread only: which round's context the adapter holds, with its input
        self._loaded: tuple[int, int] | None = None
        self._input: StageInput | None = None
        self._current: RoundRecord | None = None  # the round of the step in progress
        self._counts.update(drafts_published=0, rounds_seen=0, inputs_missing=0)
        self._last_skew_ms = math.nan
        self._controlled: ControlledAcceptance | None = None  # benchmarks only

    def control_acceptance(self, controlled: ControlledAcceptance) -> None:
        """Benchmarks only: from now on this stage's drafts are rewritten to a chosen acceptance (see
        :mod:`.controlled`); its model still runs, so drafts cost what they cost."""
        with self._lock:
            self._controlled = controlled

    stage_id: int  # DraftTokens.STAGE_* of this stage's drafts

    @property
    def gamma(self) -> int:
        """The draft length of the next proposal (adapted, see :class:`AdaptiveGamma`)."""
        with self._lock:
            return self._gamma.value

    @property
    def gamma_max(self) -> int:
        with self._lock:
            return self._gamma.ceiling

    @property
    def max_ahead(self) -> int:
        """Tokens the stage may speculate beyond the commit (``gamma * lookahead``)."""
        with self._lock:
            return self._gamma.value * self._lookahead

    def set_gamma(self, gamma: int, gamma_max: int | None = None) -> None:
        """A new draft length (and ceiling; None keeps it, raised to ``gamma`` if below), from the next
        proposal on (a live parameter change)."""
        with self._lock:
            ceiling = max(gamma, self._gamma.ceiling) if gamma_max is None else gamma_max
            self._gamma.reset(gamma, ceiling)

    def hear_commit(
        self,
        round_id: int,
        t_ns: int,
        commit_seq: int,
        token_ids: Sequence[int],
        final: bool,
        verdict: tuple[int, int, int] | None = None,
    ) -> bool:
        """A Commit; ``verdict`` is its (accepted_stage, accepted, drafted): when it checked this
        stage's draft, the draft length adapts to it."""
        news = super().hear_commit(round_id, t_ns, commit_seq, token_ids, final)
        if news and verdict is not None and verdict[0] == self.stage_id:
            with self._lock:
                self._gamma.observe(verdict[1], verdict[2])
        return news

    def snapshot(self) -> dict[str, object]:
        with self._lock:
            g = self._gamma
            c = self._controlled
            controlled = (
                {} if c is None else {"controlled_alpha": c.alpha, "controlled_unknown_rounds": c.unknown_rounds}
            )
            return {
                **super().snapshot(),
                "frame_skew_ms": self._last_skew_ms,
                "gamma": g.value,
                "gamma_grown": g.grown,
                "gamma_shrunk": g.shrunk,
                **controlled,
            }

    def _work_item(self) -> tuple[RoundRecord, list[int], int] | None:
        with self._lock:
            max_ahead = self._gamma.value * self._lookahead
            item = self._book.work_item(self.max_new_tokens, max_ahead, self.model.adapter.eos_token_id)
            self._current = None if item is None else item[0]
            return item

    def _failed(self) -> None:
        rec, self._current = self._current, None
        if rec is not None:  # stop drafting for a round this stage cannot serve
            self._book.failed(rec, MAX_ROUND_FAILURES)

    def _ensure_context(self, rec: RoundRecord) -> StageInput | None:
        """Load the round's context into the adapter (once per round); None while input is pending."""
        key = (rec.round_id, rec.t_ns)
        if self._loaded == key:
            return self._input
        given_up = time.monotonic() - rec.opened_wall_s >= self.max_wait_s
        inp = self._resolve(rec, given_up)
        if inp is None:
            return None
        if inp.pixels is not None:
            self.model.adapter.prefill(self.model.context(inp.pixels, rec.question))
            self._context_loaded(rec)
        self._loaded, self._input = key, inp
        with self._lock:
            self._counts["rounds_seen"] += 1
            if inp.pixels is None:
                self._counts["inputs_missing"] += 1
            if inp.skew_ns is not None:
                self._last_skew_ms = inp.skew_ns / 1e6
        return inp

    def _context_loaded(self, rec: RoundRecord) -> None:
        """Hook (worker thread): the round's input was just prefilled, before its first draft."""

    def _next_work(self) -> tuple[RoundRecord, list[int], int, StageInput] | None:
        """The round to extend now with its loaded input, or None (nothing to do, or input pending)."""
        item = self._work_item()
        if item is None:
            return None
        inp = self._ensure_context(item[0])
        return None if inp is None else (*item, inp)

    def _record(
        self,
        rec: RoundRecord,
        prefix: list[int],
        seq: int,
        inp: StageInput,
        tokens: Sequence[int],
        confidence: Sequence[float],
        compute_ms: float,
        upstream: tuple[int, int] = (0, 0),
        branches: tuple[tuple[int, int], ...] = (),
    ) -> None:
        """This stage's draft of ``tokens`` after ``prefix`` (commit ``seq``), speculated on and published;
        ``upstream`` is (drafted, kept) of the stage-0 draft it refined; ``branches`` the other nodes
        of a draft tree whose greedy path ``tokens`` is. A round whose input was degraded (no frame,
        a stale clip) makes a degraded draft."""
        with self._lock:
            controlled = self._controlled
        if controlled is not None:
            tokens = controlled(rec.t_ns, prefix, tokens)
            confidence = list(confidence)[: len(tokens)]
            branches = ()  # controlled acceptance decides token by token on the chain alone
            if not tokens:
                return
        draft = Draft(
            stage=self.stage_id,
            commit_seq=seq,
            start_position=len(prefix),
            token_ids=tuple(tokens),
            confidence=tuple(confidence),
            upstream_drafted=upstream[0],
            upstream_accepted=upstream[1],
            compute_ms=compute_ms,
            degraded=bool(inp.degraded_reason) or inp.pixels is None,
            degraded_reason=inp.degraded_reason,
            branches=branches,
        )
        if not self._book.speculate(rec, prefix, draft.token_ids):
            return  # reset or evicted meanwhile
        self._publish(rec.round_id, rec.t_ns, draft)
        self._count("drafts_published")


class DrafterStage(UpstreamStage):
    stage_id = STAGE_DRAFTER

    def __init__(
        self,
        model: StageModel,
        resolve: Resolver,
        publish: Publish,
        *,
        gamma: int,
        lookahead: int,
        max_new_tokens: int,
        max_wait_s: float = 0.0,
        question: str = "",
        gamma_max: int | None = None,
        round_loaded: Callable[[int, int], None] | None = None,
        early_tree_nodes: int = 0,
        early_tree_depth: int = 6,
    ) -> None:
        """``round_loaded(round_id, t_ns)``: called on the worker once a round's event image is
        prefilled, before its first draft (the node publishes the round's event features there).
        ``early_tree_nodes`` > 0: a round's first draft is a tree of at most that many nodes and
        ``early_tree_depth`` levels, where the model can score one (else a chain, as with 0)."""
        if early_tree_nodes < 0 or early_tree_depth < 1:
            raise ValueError(
                f"need early_tree_nodes >= 0 and early_tree_depth >= 1, got {early_tree_nodes}, {early_tree_depth}"
            )
        super().__init__(
            NODE_OF_STAGE["drafter"],
            model,
            resolve,
            publish,
            gamma=gamma,
            lookahead=lookahead,
            max_new_tokens=max_new_tokens,
            max_wait_s=max_wait_s,
            question=question,
            gamma_max=gamma_max,
        )
        self._round_loaded = round_loaded
        self.early_tree_nodes = early_tree_nodes if getattr(model.adapter, "supports_tree", False) else 0
        self.early_tree_depth = early_tree_depth

    def _context_loaded(self, rec: RoundRecord) -> None:
        if self._round_loaded is not None:
            self._round_loaded(rec.round_id, rec.t_ns)

    def _step(self) -> None:
        work = self._next_work()
        if work is None:
            self._idle()
            return
        rec, prefix, seq, inp = work
        if inp.pixels is None:  # no events for this round: nothing to draft from
            self._book.abandon(rec)
            return
        t0 = time.perf_counter()
        if not prefix and self.early_tree_nodes:  # the round's first draft: ready before the verifier's prefill
            depth = min(self.early_tree_depth, self.max_new_tokens)
            tree = grow_tree(self.model.adapter, prefix, depth, max_nodes=self.early_tree_nodes)  # type: ignore[arg-type]
            if tree.chain:
                ms = (time.perf_counter() - t0) * 1e3
                chain = tree.tokens[: tree.chain]
                self._record(rec, prefix, seq, inp, chain, tree.probs[: tree.chain], ms, branches=tree.branches)
                return
        proposal = draft_step(self.model.adapter, prefix, self.gamma, max_new_tokens=self.max_new_tokens)
        if not proposal.token_ids:
            self._idle()
            return
        self._record(rec, prefix, seq, inp, proposal.token_ids, proposal.probs, (time.perf_counter() - t0) * 1e3)


class RefinerStage(UpstreamStage):
    stage_id = STAGE_REFINER

    def __init__(
        self,
        model: StageModel,
        resolve: Resolver,
        publish: Publish,
        *,
        rules: ModeRules,
        gamma: int,
        lookahead: int,
        max_new_tokens: int,
        max_wait_s: float,
        upstream_wait_s: float,
        liveness_s: float = 5.0,
        question: str = "",
        gamma_max: int | None = None,
    ) -> None:
        super().__init__(
            NODE_OF_STAGE["refiner"],
            model,
            resolve,
            publish,
            gamma=gamma,
            lookahead=lookahead,
            max_new_tokens=max_new_tokens,
            max_wait_s=max_wait_s,
            question=question,
            gamma_max=gamma_max,
        )
        if upstream_wait_s < 0:
            raise ValueError(f"upstream_wait_s must be >= 0, got {upstream_wait_s}")
        self.rules = rules
        self.upstream_wait_s = upstream_wait_s
        self.liveness_s = liveness_s

    def _upstream(self, rec: RoundRecord, prefix: list[int], wait: bool) -> tuple[Draft, list[int]] | None:
        """A stage-0 draft continuing ``prefix``, waiting up to ``upstream_wait`` unless the drafter
        already missed a wait this round (then it is not waited for until it delivers again)."""
        book = self._book
        with book.changed:
            if self._counts["rounds_seen"] > 1 and book.silent_stages([STAGE_DRAFTER], self.liveness_s):
                book.stall(rec, [STAGE_DRAFTER])  # silent for a while: do not hold every round for it
            wait = wait and STAGE_DRAFTER not in rec.stalled
            deadline = time.monotonic() + (self.upstream_wait_s if wait else 0.0)
            while True:
                found = book.best_draft(rec.round_id, [STAGE_DRAFTER], base=prefix)
                left = deadline - time.monotonic()
                if found is not None or left <= 0 or self.stopping or rec.spec != prefix:
                    if found is None and wait and left <= 0:
                        book.stall(rec, [STAGE_DRAFTER])
                    return found
                book.changed.wait(min(left, POLL_S))

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
            conf0 = d0.confidence[len(d0.token_ids) - len(tail) :]
            self._record(rec, prefix, seq, inp, tail, conf0, 0.0, upstream=(len(tail), len(tail)))
            return
        found = self._upstream(rec, prefix, wait=True)
        adapter = self.model.adapter
        t0 = time.perf_counter()
        if found is None:
            proposal = draft_step(adapter, prefix, self.gamma, max_new_tokens=self.max_new_tokens)
            tokens, conf, drafted, kept = proposal.token_ids, proposal.probs, 0, 0
        else:
            d0, tail = found
            conf0 = d0.confidence[len(d0.token_ids) - len(tail) :]
            q = two_point_q(tail, conf0, adapter.vocab_size) if self.rules.refiner.needs_q else None
            res = refine_step(
                adapter, prefix, tail, self.gamma, max_new_tokens=self.max_new_tokens, level=self.rules.refiner, q=q
            )
            tokens, conf, drafted, kept = res.token_ids, res.confidences, res.drafted, res.kept
        if not tokens:
            self._idle()
            return
        compute_ms = (time.perf_counter() - t0) * 1e3 + (0.0 if found is None else found[0].compute_ms)
        self._record(rec, prefix, seq, inp, tokens, conf, compute_ms, upstream=(drafted, kept))
