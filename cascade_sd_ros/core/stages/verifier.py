"""The verifier stage: the authority (ROS-free, DESIGN.md "Rounds").

Rounds in time order, one at a time: wait at most ``max_wait`` for the clip, prefill it once, then
per commit verify the best draft in hand in one forward (``verify_step``), or wait up to the
adaptive draft wait (:class:`DraftWait`, at most ``draft_wait``) for one, else decode alone. With
a draft head (:class:`~.head_source.HeadSource`) the verifier drafts for itself: each step checks
the head's draft or an upstream draft in hand, whichever is worth more (:func:`~.head_source.pick_draft`),
and never waits. Each commit goes to ``emit`` as a :class:`CaptionUpdate`; a dead upstream stage
costs speed, never output.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from cascade_sd_ros.core.modes import ModeRules, two_point_q
from cascade_sd_ros.core.names import (
    NODE_OF_STAGE,
    NUM_DRAFT_SOURCES,
    STAGE_DRAFTER,
    STAGE_HEAD,
    STAGE_NAMES,
    STAGE_NONE,
    STAGE_REFINER,
)
from cascade_sd_ros.core.rounds import Draft, RoundRecord
from cascade_sd_ros.core.spec.steps import VerifyResult, cut_draft, verify_step
from cascade_sd_ros.core.spec.tree import DraftTree, commit_walk, verify_tree
from cascade_sd_ros.core.stage_model import StageModel
from cascade_sd_ros.core.stages.base import MAX_ROUND_FAILURES, POLL_S, Resolver, Stage, StageInput
from cascade_sd_ros.core.stages.draft_value import DraftValue
from cascade_sd_ros.core.stages.ema import ema
from cascade_sd_ros.core.stages.head_source import HeadSource, SourceWorth, pick_draft

KEEP_FINALS = 64  # the last rounds' final updates kept for lookup (demo, replay, tests)
KEEP_LATENCIES = 50  # final latencies behind the diagnostics' mean


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


class DraftWait:
    """How long the verifier waits for a draft when none is in hand: adapted to measured arrival and
    to what drafts have been worth.

    Drafts that come after a wait are timed (EMA of the delay); the budget is a few times that,
    never more than ``max_s`` (the ``draft_wait`` parameter) nor less than ``floor_s``. Waits that
    run out widen it again, so a stage that got slower is not cut off for good. And a wait is never
    longer than what a draft saves (``worth_s``, from :meth:`DraftValue.saved_s`), since decoding
    alone in that time commits as much: drafts that keep failing (a scene the drafters were not
    trained on) thus stop costing waits. Not thread-safe: the verifier stage uses it under its lock.
    """

    def __init__(self, max_s: float, floor_s: float = 0.002, factor: float = 3.0, alpha: float = 0.2) -> None:
        self.max_s = max_s
        self.floor_s = floor_s
        self.factor = factor
        self.alpha = alpha
        self.ema_s: float | None = None
        self.waits = 0
        self.misses = 0

    def budget_s(self, worth_s: float | None = None) -> float:
        """The next wait's bound; ``worth_s``: what a draft has saved (None: not measured yet)."""
        budget = self.max_s if self.ema_s is None else min(self.max_s, max(self.floor_s, self.factor * self.ema_s))
        # no floor under the worth: drafts that save nothing are not waited for at all (one in hand
        # is still checked, which is how their worth is measured again)
        return budget if worth_s is None else min(budget, worth_s)

    def arrived(self, delay_s: float) -> None:
        self.waits += 1
        self.ema_s = ema(self.ema_s, delay_s, self.alpha)

    def missed(self) -> None:
        self.misses += 1
        if self.ema_s is not None:
            self.ema_s = min(self.max_s, 2 * max(self.ema_s, self.floor_s))


class VerifierStage(Stage):
    """Rounds in time order, one at a time; the verifier never waits longer than its bounds."""

    def __init__(
        self,
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
        question: str = "",
        why_silent: Callable[[str], str | None] | None = None,
        head: HeadSource | None = None,
    ) -> None:
        super().__init__(NODE_OF_STAGE["verifier"], model, resolve, question=question)
        self.head = head  # the verifier's own draft source (None: off); worker thread only
        self._worth = SourceWorth()
        # why a silent upstream stage is silent, when the node knows (its drafts set aside for their vocabulary)
        self._why_silent = why_silent or (lambda _name: None)
        if max_new_tokens < 1 or draft_wait_s < 0 or max_wait_s < 0 or max_pending < 1:
            raise ValueError("need max_new_tokens >= 1, draft_wait_s >= 0, max_wait_s >= 0, max_pending >= 1")
        self._emit = emit
        self.rules = rules
        self.max_new_tokens = max_new_tokens
        self.max_wait_s = max_wait_s
        self.use_stages = use_stages
        self.seed = seed
        self.max_pending = max_pending
        self.liveness_s = liveness_s
        self._draft_wait = DraftWait(draft_wait_s)
        self._value = DraftValue()  # whose drafts pay to check (the rest: decoded alone, probed now and then)
        self._counts.update(
            rounds_done=0,
            rounds_dropped=0,
            rounds_degraded=0,
            prefills_with_draft=0,
            prefills_with_tree=0,
            verifies_with_tree=0,
        )
        self._finals: OrderedDict[int, CaptionUpdate] = OrderedDict()
        self._last_final: CaptionUpdate | None = None  # of the present timeline (None after a reset)
        self._drafted = [0] * NUM_DRAFT_SOURCES  # over final captions, per draft source
        self._accepted = [0] * NUM_DRAFT_SOURCES
        self._latencies: list[float] = []
        self._skew_clip_ms = math.nan

    # ------------------------------------------------------------------ live parameters
    def set_draft_wait(self, draft_wait_s: float) -> None:
        """A new bound on the wait for a draft, from the next wait on (a live parameter change)."""
        if draft_wait_s < 0:
            raise ValueError(f"draft_wait_s must be >= 0, got {draft_wait_s}")
        with self._lock:
            self._draft_wait.max_s = draft_wait_s

    @property
    def draft_wait_s(self) -> float:
        with self._lock:
            return self._draft_wait.max_s

    def draft_wait_budget_s(self) -> float:
        """What the next wait for a draft may last (adapted, at most ``draft_wait``)."""
        with self._lock:
            return self._wait_budget_s(self.use_stages)

    def _wait_budget_s(self, stages: tuple[int, ...]) -> float:
        """The wait for a draft from ``stages``, bounded by what their drafts have saved (under the lock)."""
        return self._draft_wait.budget_s(self._value.saved_s(stages))

    # ------------------------------------------------------------------ inputs and reading
    def offer_features(self, round_id: int, tokens: torch.Tensor) -> None:
        """A round's event tokens `[1, R, E]` for the draft head (ignored without one)."""
        if self.head is not None:
            self.head.offer_features(round_id, tokens)

    def hear_draft(self, round_id: int, t_ns: int, draft: Draft) -> None:
        """A draft; one for a round already done (or dropped) is not verified, but its stage is
        heard all the same: a stage slower than the verifier's rounds (a restarted process's first
        rounds on a loaded CPU) is alive, not silent: a round with no draft in hand waits for it
        again, and no caption calls it missing."""
        with self._lock:
            rec = self._book.get(round_id)
            if rec is None:
                last = self._last_final
                if last is not None and t_ns <= last.t_ns:
                    self._book.heard(draft.stage, draft.received_wall_s)  # late for a round already done
                    return
                rec = self._book.open(round_id, t_ns, self._question)
            if rec.final:
                self._book.heard(draft.stage, draft.received_wall_s)
            else:
                self._book.add_draft(round_id, t_ns, draft)

    def reset(self) -> None:
        with self._lock:
            self._last_final = None
            super().reset()

    def final(self, round_id: int) -> CaptionUpdate | None:
        """The final update of one of the last rounds (kept before it is emitted)."""
        with self._lock:
            return self._finals.get(round_id)

    def finals(self) -> dict[int, CaptionUpdate]:
        with self._lock:
            return dict(self._finals)

    def last_final(self) -> CaptionUpdate | None:
        """The newest round's final update since the last reset."""
        with self._lock:
            return self._last_final

    def snapshot(self) -> dict[str, object]:
        with self._lock:
            d, a = self._drafted, self._accepted
            return {
                **super().snapshot(),
                "acceptance_drafter": a[0] / d[0] if d[0] else math.nan,
                "acceptance_refiner": a[1] / d[1] if d[1] else math.nan,
                "acceptance_head": a[2] / d[2] if d[2] else math.nan,
                **{f"steps_checking_{STAGE_NAMES[s]}": n for s, n in enumerate(self._worth.chosen)},
                **({} if self.head is None else self.head.snapshot()),
                "latency_mean_ms": float(np.mean(self._latencies)) if self._latencies else math.nan,
                "skew_clip_ms": self._skew_clip_ms,
                "draft_waits": self._draft_wait.waits,
                "draft_wait_misses": self._draft_wait.misses,
                "draft_wait_budget_ms": self._wait_budget_s(self.use_stages) * 1e3,
                **{f"drafts_skipped_{STAGE_NAMES[s]}": n for s, n in self._value.skipped.items()},
                **{f"draft_probes_{STAGE_NAMES[s]}": n for s, n in self._value.probes.items()},
            }

    # ------------------------------------------------------------------ the worker thread
    def _step(self) -> None:
        rec, dropped = self._book.pending(self.max_pending)
        if dropped:
            self._count("rounds_dropped", dropped)
        if rec is None:
            self._idle()
            return
        try:
            self._run_round(rec)
        except Exception:
            # a round that fails again and again (a broken input) must not hold up the ones after it
            if self._book.failed(rec, MAX_ROUND_FAILURES):
                self._count("rounds_dropped")
            raise

    def _failed(self) -> None:
        """Nothing more: ``_step`` counted the failure against its round before it re-raised."""

    def _alive(self, rec: RoundRecord) -> bool:
        return not self.stopping and self._book.live(rec)

    def _wait_input(self, rec: RoundRecord) -> StageInput | None:
        while self._alive(rec):
            given_up = time.monotonic() - rec.opened_wall_s >= self.max_wait_s
            inp = self._resolve(rec, given_up)
            if inp is not None:
                return inp
            self._idle(min(POLL_S, max(self.max_wait_s / 10, 0.001)))
        return None

    def _next_draft(self, rec: RoundRecord) -> tuple[Draft, list[int]] | None:
        """The best draft continuing the commit: what is in hand now (by stage preference), else the
        first to arrive within the draft wait (:class:`DraftWait`).

        A draft in hand is never held back for a better stage's: an idle verifier costs more than a
        draft accepted a little less. A stage that misses the wait is marked stalled for the round
        and not waited for again until it delivers, so a dead stage costs one wait per round. A
        stage whose drafts have not paid (:class:`DraftValue`) is neither checked nor waited for,
        but for a probe now and then.
        """
        book = self._book
        with book.changed:
            stages = tuple(s for s in self.use_stages if self._value.use(s))
            if not stages:
                return None
            asked = time.monotonic()
            paying = tuple(s for s in stages if self._value.pays(s))
            # a probe (no stage asked for pays) waits as for a stage not measured yet: a probe that
            # finds no draft in hand measures nothing, and a stage that caught up would stay skipped
            budget = self._wait_budget_s(paying) if paying else self._draft_wait.budget_s()
            deadline = asked + budget
            while True:
                best = book.best_draft(rec.round_id, stages)
                if best is not None:
                    if time.monotonic() > asked:
                        self._draft_wait.arrived(time.monotonic() - asked)
                    return best
                live = [s for s in stages if s not in rec.stalled]
                left = deadline - time.monotonic()
                if not live or left <= 0 or not self._alive(rec):
                    if live and left <= 0 and budget >= self._draft_wait.floor_s:
                        self._draft_wait.missed()  # a wait not worth taking (see DraftWait) is no miss
                    book.stall(rec, live)
                    return None
                book.changed.wait(min(left, POLL_S))

    def _checks_trees(self) -> bool:
        """Whether a draft tree can be verified here: greedy rules and a target that scores trees."""
        return self.rules.verifier.kind == "greedy" and bool(getattr(self.model.adapter, "supports_tree", False))

    def _tree_in_hand(
        self, round_id: int, stages: tuple[int, ...]
    ) -> tuple[DraftTree, list[tuple[Draft, list[int]]]] | None:
        """The draft tree to carry in the prefill, with the drafts it joins: an upstream round-start
        tree (a draft with branches), joined by the other stages' round-start chains, where
        verification is greedy and the target can score trees; else None (a chain rides)."""
        if not self._checks_trees():
            return None
        found = [self._book.best_draft(round_id, [s]) for s in stages]
        # whole drafts from the caption's start only (one merged with look-ahead keeps its branches)
        whole = [f for f in found if f is not None and f[0].start_position == 0 and tuple(f[1]) == f[0].token_ids]
        whole.sort(key=lambda f: -len(f[0].branches))  # the tree first, the chains join it
        if not whole or not whole[0][0].branches:
            return None
        tree = DraftTree.from_parts(whole[0][0].token_ids, whole[0][0].branches)
        for _, tail in whole[1:]:
            tree = tree.with_path(tail)
        return tree.cut(self.max_new_tokens, self.model.adapter.eos_token_id), whole

    def _tree_of(self, choice: tuple[Draft, list[int]] | None, committed: Sequence[int]) -> DraftTree | None:
        """The chosen draft as a tree, when it carries branches that start where the commit ends,
        verification is greedy and the target scores trees; else None (its chain is checked)."""
        if choice is None or not choice[0].branches:
            return None
        d, tail = choice
        if d.start_position != len(committed) or len(tail) != len(d.token_ids):
            return None  # partly committed already: the branches' parents no longer line up
        if not self._checks_trees():
            return None
        return DraftTree.from_parts(tail, d.branches)

    def _own_or_in_hand(
        self, rec: RoundRecord, carried: tuple[Draft, list[int]] | None
    ) -> tuple[Draft, list[int]] | None:
        """With a draft head: its draft or an upstream one already in hand, whichever is worth more
        (:func:`~.head_source.pick_draft`), among the sources whose drafts pay (:class:`DraftValue`).
        ``carried``: the upstream draft the prefill carried, checked first (at no forward of its
        own). No wait: the head's draft is always at hand, and waiting for an upstream stage would
        pay only if its draft beat the head's by more than the wait costs."""
        assert self.head is not None
        if carried is not None:
            return carried
        with self._lock:
            committed = list(rec.committed)
            stages = tuple(s for s in self.use_stages if self._value.use(s))
            own_pays = self._value.use(STAGE_HEAD)
        in_hand = self._book.best_draft(rec.round_id, stages) if stages else None
        own = self.head.draft(committed, self.max_new_tokens - len(committed)) if own_pays else None
        return pick_draft(in_hand, own, self._worth)

    def _update(
        self,
        rec: RoundRecord,
        inp: StageInput | None,
        final: bool,
        accepted: int,
        drafted: int,
        stage: int,
        reason: str,
    ) -> CaptionUpdate:
        with self._lock:  # one consistent reading of the record
            return CaptionUpdate(
                round_id=rec.round_id,
                t_ns=rec.t_ns,
                token_ids=tuple(rec.committed),
                final=final,
                commit_seq=rec.commit_seq,
                accepted=accepted,
                drafted=drafted,
                accepted_stage=stage,
                drafted_per_stage=tuple(rec.drafted),
                accepted_per_stage=tuple(rec.accepted),
                upstream_drafted=rec.upstream_drafted,
                upstream_accepted=rec.upstream_accepted,
                target_forwards=rec.target_forwards,
                latency_total_ms=(time.monotonic() - rec.opened_wall_s) * 1e3,
                latency_wait_ms=rec.wait_ms,
                latency_prefill_ms=rec.prefill_ms,
                latency_verify_ms=rec.verify_ms,
                latency_draft_ms=rec.draft_ms,
                skew_frame_ms=_ms(None if inp is None else inp.frame_skew_ns),
                skew_clip_ms=_ms(None if inp is None else inp.skew_ns),
                clip_span_ms=_ms(None if inp is None else inp.span_ns),
                degraded=bool(reason),
                degraded_reason=reason,
                question=rec.question,
                input_wait_ms=rec.input_wait_ms,
                latency_caption_ms=(
                    math.nan if rec.inputs_ready_wall_s is None else (time.monotonic() - rec.inputs_ready_wall_s) * 1e3
                ),
            )

    def _finish(self, u: CaptionUpdate) -> None:
        """A round's final update: counted and kept before it is announced (a listener may look it
        up as soon as it hears it), then emitted."""
        with self._lock:
            self._counts["rounds_done"] += 1
            if u.degraded:
                self._counts["rounds_degraded"] += 1
            self._finals[u.round_id] = u
            self._last_final = u
            while len(self._finals) > KEEP_FINALS:
                self._finals.popitem(last=False)
            for s in range(NUM_DRAFT_SOURCES):
                self._drafted[s] += u.drafted_per_stage[s]
                self._accepted[s] += u.accepted_per_stage[s]
            self._latencies.append(u.latency_total_ms)
            del self._latencies[:-KEEP_LATENCIES]
            self._skew_clip_ms = u.skew_clip_ms
        self._emit(u)

    def _run_round(self, rec: RoundRecord) -> None:
        book = self._book
        t_wait = time.perf_counter()
        inp = self._wait_input(rec)
        book.waited(rec, (time.perf_counter() - t_wait) * 1e3, for_input=True)
        if inp is None:
            return  # reset or stopping
        # a round resolved without its frames passing T + slop (given up, prompt): complete now
        book.mark_inputs_ready(rec.round_id)
        if inp.pixels is None:
            # no frames: the verifier cannot stand behind any text; say so and move on. The empty
            # final commit tells upstream stages the round is over.
            book.finish(rec, empty=True)
            self._finish(self._update(rec, inp, True, 0, 0, STAGE_NONE, inp.degraded_reason or "no frames"))
            return
        adapter = self.model.adapter
        # a draft already in hand rides in the prefill forward: its verification then costs nothing
        with self._lock:
            paying = tuple(s for s in self.use_stages if self._value.pays(s))
        in_hand = book.best_draft(rec.round_id, paying) if paying else None
        ahead = [] if in_hand is None else cut_draft(in_hand[1], self.max_new_tokens, adapter.eos_token_id)
        t0 = time.perf_counter()
        context = self.model.context(inp.pixels, rec.question)
        if not ahead and self.head is not None:  # prefill hiding: the head's first draft rides instead
            ahead = self.head.early_draft(rec.round_id, context.input_ids[-1], self.max_new_tokens)
        joined = self._tree_in_hand(rec.round_id, paying)
        pre: VerifyResult | None = None  # the tree's verification, done by the prefill forward
        if joined is not None:
            tree, whole = joined
            rows = adapter.prefill_tree(context, tree)  # type: ignore[attr-defined]  # checked by _tree_in_hand
            pre = commit_walk(adapter, [], tree, rows, self.max_new_tokens)  # type: ignore[arg-type]
            accepted = pre.token_ids[: pre.accepted]
            # credit the draft that held most of what was accepted
            in_hand = max(whole, key=lambda f: DraftTree.from_parts(f[1], f[0].branches).match_depth(accepted))
            self._count("prefills_with_tree")
        else:
            adapter.prefill(context, caption=ahead)
        # what rode in the prefill is checked first: it costs no forward of its own
        carried = (in_hand[0], ahead) if in_hand is not None and ahead and pre is None else None
        if self.head is not None:  # its round starts on the states this prefill computed
            self.head.begin(rec.round_id, context.input_ids[-1])
        book.spent(rec, prefill_ms=(time.perf_counter() - t0) * 1e3)
        if ahead:
            self._count("prefills_with_draft")
        with self._lock:
            started = self._counts["rounds_done"] > 0
        if started:  # stages silent for a while cost no wait at all; a draft from them revives them
            book.stall_silent(rec, self.use_stages, self.liveness_s)
        generator = torch.Generator(device=adapter.device).manual_seed((self.seed * 1_000_003 + rec.round_id) % (2**63))
        reasons = [inp.degraded_reason] if inp.degraded_reason else []
        while self._alive(rec):
            if pre is not None:
                choice = in_hand
            elif self.head is None:
                t_wait = time.perf_counter()
                choice = self._next_draft(rec)
                book.waited(rec, (time.perf_counter() - t_wait) * 1e3)
            else:  # no wait; the head's drafting time is the draft's own (latency_draft_ms)
                choice = self._own_or_in_hand(rec, carried)
                carried = None
            if not self._alive(rec):
                return
            stage, q = STAGE_NONE, None
            tail: list[int] = []
            q_conf: tuple[float, ...] = ()
            if choice is not None:
                d, tail = choice
                stage = d.stage
                q_conf = d.confidence[len(d.token_ids) - len(tail) :]
                if self.rules.verifier.needs_q:
                    q = two_point_q(tail, q_conf, adapter.vocab_size)
            with self._lock:
                committed = list(rec.committed)
            t0 = time.perf_counter()
            branched = self._tree_of(choice, committed) if pre is None else None
            if pre is not None:
                res = pre
            elif branched is not None:  # a draft with branches: every path checked in the one forward
                res = verify_tree(adapter, committed, branched, max_new_tokens=self.max_new_tokens)  # type: ignore[arg-type]
                self._count("verifies_with_tree")
            else:
                res = verify_step(
                    adapter,
                    committed,
                    tail,
                    max_new_tokens=self.max_new_tokens,
                    level=self.rules.verifier,
                    q=q,
                    generator=generator,
                )
            pre = None
            step_s = time.perf_counter() - t0
            book.spent(rec, verify_ms=step_s * 1e3)
            own = stage == STAGE_HEAD
            with self._lock:
                self._value.verified(None if choice is None else stage, res.accepted, res.drafted, step_s)
                if choice is not None:
                    self._worth.verified(stage, q_conf, res.accepted)
            if own and self.head is not None:
                self.head.verified(res.accepted, res.drafted)
            if not res.token_ids:  # budget already spent or EOS committed: the round is over
                book.finish(rec)
                break
            book.commit(
                rec.round_id,
                res.token_ids,
                stage,
                res.drafted,
                res.accepted,
                res.finished,
                draft=None if choice is None else choice[0],
            )
            if res.finished:
                break
            self._emit(self._update(rec, inp, False, res.accepted, res.drafted, stage, "; ".join(reasons)))
        else:
            return
        if self.head is not None:
            self.head.finish()
        if not self._alive(rec):
            return
        # a stage that has gone quiet (nothing for liveness_s, this round included) cost speed, not
        # output: still say it was missing. One merely slower than this round is not flagged.
        with self._lock:
            quiet = self._book.silent_stages(self.use_stages, self.liveness_s) - rec.stages_seen
        silent = [STAGE_NAMES[s] for s in self.use_stages if s in quiet]
        if silent:
            whys = {name: self._why_silent(name) for name in silent}
            reasons.append("no drafts from " + " and ".join(f"{n} ({whys[n]})" if whys[n] else n for n in silent))
        self._finish(self._update(rec, inp, True, res.accepted, res.drafted, stage, "; ".join(reasons)))
