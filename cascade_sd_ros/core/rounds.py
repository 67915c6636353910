"""Round bookkeeping: what each round has committed, and which drafts still continue it.

A round (DESIGN.md "Rounds") is one moment ``T`` on the event clock, identified by ``round_id``.
Everything a stage knows about a round lives in one :class:`RoundRecord` held by a
:class:`RoundBook` keyed by round id — no hidden cross-round state. Drafts are matched to the
committed prefix by token content (``start_position`` + overlap), never by arrival order, so a late,
duplicated or out-of-order draft can only be unusable, never wrong.

The lock invariant: a :class:`RoundRecord` is written only by this module — by :class:`RoundBook`'s
methods, under the book's one lock (which the owning stage, ``core/stages``, shares for its own
counters). Others read a record under that lock or take a copy (:meth:`RoundBook.snapshot`).
"""

from __future__ import annotations

import copy
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from cascade_sd_ros.core.names import NUM_DRAFT_SOURCES, STAGE_NONE, STAGE_REFINER


def round_id_for(t_ns: int) -> int:
    """Round ids are the round's time ``T`` in ns on the event clock.

    Every stage can then name a periodic round without hearing from the others, which is what lets
    the verifier open a round itself when the drafter is gone.
    """
    if t_ns < 0:
        raise ValueError(f"round time must be >= 0 ns, got {t_ns}")
    return int(t_ns)


#: A forward jump opens at most this many rounds (the newest): the gap's rounds could not be
#: captioned in time anyway, and one stamp from the far future must not open millions.
MAX_ROUNDS_PER_STEP = 8


def round_times_between(
    after_ns: int | None, upto_ns: int, period_ns: int, limit: int = MAX_ROUNDS_PER_STEP
) -> list[int]:
    """Period boundaries ``k * period`` in ``(after_ns, upto_ns]`` (all of them up to ``upto_ns``
    from the first boundary at or before it when ``after_ns`` is None: only that newest one), at
    most the newest ``limit`` of them."""
    if period_ns <= 0:
        raise ValueError(f"round period must be > 0 ns, got {period_ns}")
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    newest = (upto_ns // period_ns) * period_ns
    if after_ns is None:
        return [newest] if newest > 0 else []
    first = max((after_ns // period_ns + 1) * period_ns, newest - (limit - 1) * period_ns)
    return list(range(first, newest + 1, period_ns))


def continuation(committed: Sequence[int], start_position: int, tokens: Sequence[int]) -> list[int]:
    """The part of a draft beyond ``committed``; empty when the draft does not continue it.

    A draft made at ``start_position`` continues the commit when its tokens agree with everything
    committed since that position (the look-ahead case: it was drafted before the last commit).
    """
    n = len(committed)
    if start_position < 0 or start_position > n:
        return []
    overlap = n - start_position
    if overlap >= len(tokens):
        return []
    if list(tokens[:overlap]) != list(committed[start_position:n]):
        return []
    return list(tokens[overlap:])


@dataclass
class Draft:
    """One upstream proposal as the verifier (or refiner) keeps it."""

    stage: int
    commit_seq: int
    start_position: int
    token_ids: tuple[int, ...]
    confidence: tuple[float, ...] = ()
    upstream_drafted: int = 0
    upstream_accepted: int = 0
    compute_ms: float = 0.0
    degraded: bool = False
    degraded_reason: str = ""
    received_wall_s: float = field(default_factory=time.monotonic)
    # a draft tree's other nodes (token, parent): parents index token_ids then these (-1: before
    # token_ids[0]); token_ids stay the proposer's greedy path, so a reader of chains loses nothing
    branches: tuple[tuple[int, int], ...] = ()


def _chained(first: tuple[Draft, list[int]], drafts: Sequence[Draft], prefix: list[int]) -> tuple[Draft, list[int]]:
    """``first`` extended by whichever of one stage's ``drafts`` continue it furthest, repeatedly; the
    result is one :class:`Draft` whose tokens are exactly the tail beyond ``prefix``."""
    parts, tail = [first], list(first[1])
    while True:
        seq = prefix + tail
        more = [(d, continuation(seq, d.start_position, d.token_ids)) for d in drafts]
        more = [(d, t) for d, t in more if t]
        if not more:
            break
        nxt = max(more, key=lambda m: (len(m[1]), m[0].received_wall_s))
        parts.append(nxt)
        tail += nxt[1]
    if len(parts) == 1:
        return first
    head = first[0]
    branches: tuple[tuple[int, int], ...] = ()
    if head.branches and head.start_position == len(prefix) and tuple(first[1]) == head.token_ids:
        # the tree's branch nodes follow the longer chain now: their indices past the chain shift
        n, shift = len(head.token_ids), len(tail) - len(head.token_ids)
        branches = tuple((t, p + shift if p >= n else p) for t, p in head.branches)
    confidence: list[float] = []
    for d, t in parts:
        confidence += d.confidence[len(d.token_ids) - len(t) :] if d.confidence else [1.0] * len(t)
    merged = Draft(
        stage=head.stage,
        commit_seq=head.commit_seq,
        start_position=len(prefix),
        token_ids=tuple(tail),
        confidence=tuple(confidence),
        upstream_drafted=sum(d.upstream_drafted for d, _ in parts),
        upstream_accepted=sum(d.upstream_accepted for d, _ in parts),
        compute_ms=sum(d.compute_ms for d, _ in parts),
        degraded=any(d.degraded for d, _ in parts),
        degraded_reason=next((d.degraded_reason for d, _ in parts if d.degraded_reason), ""),
        received_wall_s=max(d.received_wall_s for d, _ in parts),
        branches=branches,
    )
    return merged, tail


@dataclass
class RoundRecord:
    """What one round has committed and what it cost. Mutated only under its book's lock."""

    round_id: int
    t_ns: int
    committed: list[int] = field(default_factory=list)
    commit_seq: int = 0
    final: bool = False
    drafted: list[int] = field(default_factory=lambda: [0] * NUM_DRAFT_SOURCES)  # index = stage (names.py)
    accepted: list[int] = field(default_factory=lambda: [0] * NUM_DRAFT_SOURCES)
    upstream_drafted: int = 0  # stage-0 tokens the refiner checked for drafts the verifier used
    upstream_accepted: int = 0
    target_forwards: int = 0
    draft_ms: float = 0.0
    opened_wall_s: float = field(default_factory=time.monotonic)
    # when the round's inputs were all there (a frame past T + slop): caption latency counts from here
    inputs_ready_wall_s: float | None = None
    drafts: list[Draft] = field(default_factory=list)
    question: str = ""  # the prompt this round answers
    # an upstream stage's speculated caption: committed tokens + what it drafted beyond them
    spec: list[int] = field(default_factory=list)
    # verifier bookkeeping
    stalled: set[int] = field(default_factory=set)  # stages that missed draft_wait this round
    stages_seen: set[int] = field(default_factory=set)  # stages that sent any draft this round
    wait_ms: float = 0.0
    input_wait_ms: float = 0.0
    prefill_ms: float = 0.0
    verify_ms: float = 0.0
    abandoned: bool = False  # skipped (overload, the verifier moved past it, or it kept failing)
    failures: int = 0  # verifier attempts that raised

    def rebase_spec(self) -> list[int]:
        """Keep the speculated caption while it still extends the commit, else roll back to it."""
        n = len(self.committed)
        if self.spec[:n] != self.committed:
            self.spec = list(self.committed)
        return self.spec

    def extend_spec(self, prefix: Sequence[int], tokens: Sequence[int]) -> bool:
        """Record ``prefix + tokens`` as the speculation if it is still consistent with it."""
        cand = [*prefix, *tokens]
        self.rebase_spec()
        if len(cand) > len(self.spec) and cand[: len(self.spec)] == self.spec:
            self.spec = cand
            return True
        return False

    def usable(self, draft: Draft) -> list[int]:
        return continuation(self.committed, draft.start_position, draft.token_ids)


class RoundBook:
    """Rounds by id, bounded (the oldest round is forgotten first), safe across threads."""

    def __init__(self, capacity: int = 16, max_drafts_per_round: int = 32) -> None:
        if capacity < 1 or max_drafts_per_round < 1:
            raise ValueError("RoundBook capacity and max_drafts_per_round must be >= 1")
        self.capacity = capacity
        self.max_drafts_per_round = max_drafts_per_round
        self._rounds: OrderedDict[int, RoundRecord] = OrderedDict()
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.evicted = 0
        self.drafts_dropped = 0
        self.resets = 0
        self.last_draft_wall_s: dict[int, float] = {}  # stage -> when its last draft came (any round)

    def __len__(self) -> int:
        with self.lock:
            return len(self._rounds)

    def __contains__(self, round_id: int) -> bool:
        with self.lock:
            return round_id in self._rounds

    def mark_inputs_ready(self, round_id: int, wall_s: float | None = None) -> None:
        """The round's inputs are complete now (the first such moment counts)."""
        with self.lock:
            rec = self._rounds.get(round_id)
            if rec is not None and rec.inputs_ready_wall_s is None:
                rec.inputs_ready_wall_s = time.monotonic() if wall_s is None else wall_s

    def get(self, round_id: int) -> RoundRecord | None:
        with self.lock:
            return self._rounds.get(round_id)

    def open(self, round_id: int, t_ns: int, question: str = "") -> RoundRecord:
        """The round's record, made on first sight; one without a question yet asks ``question``. A
        known id with another ``T`` is an error."""
        with self.lock:
            rec = self._rounds.get(round_id)
            if rec is not None:
                if rec.t_ns != t_ns:
                    raise ValueError(f"round {round_id} already open at T={rec.t_ns} ns, not {t_ns} ns")
                if not rec.question:
                    rec.question = question
                return rec
            rec = RoundRecord(round_id=round_id, t_ns=int(t_ns), question=question)
            self._rounds[round_id] = rec
            while len(self._rounds) > self.capacity:
                self._rounds.popitem(last=False)
                self.evicted += 1
            self.changed.notify_all()
            return rec

    def newest(self) -> RoundRecord | None:
        with self.lock:
            if not self._rounds:
                return None
            return max(self._rounds.values(), key=lambda r: r.t_ns)

    def records(self) -> list[RoundRecord]:
        with self.lock:
            return sorted(self._rounds.values(), key=lambda r: r.t_ns)

    def apply_commit(self, round_id: int, t_ns: int, commit_seq: int, token_ids: Sequence[int], final: bool) -> bool:
        """An upstream stage hears a Commit; True when it is news (newer than what the book had)."""
        with self.lock:
            rec = self.open(round_id, t_ns)
            if commit_seq < rec.commit_seq or (commit_seq == rec.commit_seq and (rec.final or not final)):
                return False
            rec.committed = list(token_ids)
            rec.commit_seq = int(commit_seq)
            rec.final = bool(final)
            rec.rebase_spec()
            self.changed.notify_all()
            return True

    def commit(
        self,
        round_id: int,
        new_tokens: Sequence[int],
        stage: int,
        drafted: int,
        accepted: int,
        final: bool,
        draft: Draft | None = None,
    ) -> RoundRecord:
        """The verifier extends a round's caption by ``new_tokens`` (accepted draft + its own token);
        ``draft`` (the one it checked) adds its cost and, from the refiner, its upstream counts."""
        with self.lock:
            rec = self._rounds.get(round_id)
            if rec is None:
                raise KeyError(f"round {round_id} is not open (evicted or never opened)")
            if rec.final:
                raise ValueError(f"round {round_id} is already final")
            if draft is not None:
                rec.draft_ms += draft.compute_ms
                if stage == STAGE_REFINER:  # what the refiner checked of the drafter's tokens
                    rec.upstream_drafted += draft.upstream_drafted
                    rec.upstream_accepted += draft.upstream_accepted
            rec.committed.extend(int(t) for t in new_tokens)
            rec.commit_seq += 1
            if stage != STAGE_NONE:
                rec.drafted[stage] += drafted
                rec.accepted[stage] += accepted
            rec.target_forwards += 1
            rec.final = bool(final)
            self.changed.notify_all()
            return rec

    def add_draft(self, round_id: int, t_ns: int, draft: Draft) -> RoundRecord:
        """Keep a draft for its round (opening the round on first sight); bounded per round."""
        with self.lock:
            rec = self.open(round_id, t_ns)
            rec.drafts.append(draft)
            rec.stalled.discard(draft.stage)
            rec.stages_seen.add(draft.stage)
            self.last_draft_wall_s[draft.stage] = draft.received_wall_s
            if len(rec.drafts) > self.max_drafts_per_round:
                del rec.drafts[0]
                self.drafts_dropped += 1
            self.changed.notify_all()
            return rec

    def best_draft(
        self, round_id: int, stages: Sequence[int], base: Sequence[int] | None = None
    ) -> tuple[Draft, list[int]] | None:
        """The draft to check next: among ``stages`` (in order of preference), the one continuing
        ``base`` (default: the commit) furthest; ties go to the newest. A stage's look-ahead drafts
        that continue it (drafted on its own speculation before a commit came) are chained on, so the
        verifier checks all of it in one forward: a drafter that ran 8 tokens ahead in two drafts of 4
        gives one draft of 8, not two verify steps."""
        with self.lock:
            rec = self._rounds.get(round_id)
            if rec is None:
                return None
            prefix = list(rec.committed if base is None else base)
            for stage in stages:
                best: tuple[Draft, list[int]] | None = None
                for d in rec.drafts:
                    if d.stage != stage:
                        continue
                    tail = continuation(prefix, d.start_position, d.token_ids)
                    if tail and (best is None or len(tail) >= len(best[1])):
                        best = (d, tail)
                if best is not None:
                    return _chained(best, [d for d in rec.drafts if d.stage == stage], prefix)
            return None

    def focus(self) -> RoundRecord | None:
        """The round upstream stages should work on: the oldest one still open that the verifier has
        not moved past (a round older than a final or committed-to round is abandoned)."""
        with self.lock:
            recs = sorted(self._rounds.values(), key=lambda r: r.t_ns)
            floor = max((r.t_ns for r in recs if r.final or r.commit_seq > 0), default=None)
            for r in recs:
                if r.final or r.abandoned:
                    continue
                if floor is not None and r.t_ns < floor:
                    r.abandoned = True
                    continue
                return r
            return None

    def heard(self, stage: int, wall_s: float) -> None:
        """``stage`` sent a draft at ``wall_s`` (monotonic) that no open round keeps: it is not silent."""
        with self.lock:
            self.last_draft_wall_s[stage] = max(self.last_draft_wall_s.get(stage, wall_s), wall_s)

    def silent_stages(self, stages: Sequence[int], within_s: float, now_s: float | None = None) -> set[int]:
        """Stages that sent no draft in the last ``within_s`` seconds: not worth waiting for at the
        start of a round (a stage never heard from counts as silent)."""
        now = time.monotonic() if now_s is None else now_s
        with self.lock:
            return {s for s in stages if now - self.last_draft_wall_s.get(s, -float("inf")) > within_s}

    # -- the stage's own bookkeeping of a round (all under the lock) ------------------------------
    def live(self, rec: RoundRecord) -> bool:
        """Whether ``rec`` is still this book's record of its round (not reset or evicted)."""
        with self.lock:
            return self._rounds.get(rec.round_id) is rec

    def abandon(self, rec: RoundRecord) -> None:
        """No more work on this round (this stage cannot serve it, or moved past it)."""
        with self.lock:
            rec.abandoned = True
            self.changed.notify_all()

    def failed(self, rec: RoundRecord, give_up_after: int) -> bool:
        """One more attempt at the round raised; True when that gave it up (``give_up_after`` reached)."""
        with self.lock:
            rec.failures += 1
            if rec.failures >= give_up_after and not rec.abandoned:
                rec.abandoned = True
                return True
            return False

    def stall(self, rec: RoundRecord, stages: Iterable[int]) -> None:
        """These stages missed a wait in this round: not waited for again until they deliver."""
        with self.lock:
            rec.stalled.update(stages)

    def stall_silent(self, rec: RoundRecord, stages: Sequence[int], within_s: float) -> None:
        """Stall the stages silent for ``within_s`` that sent nothing to this round yet."""
        with self.lock:
            rec.stalled |= self.silent_stages(stages, within_s) - rec.stages_seen

    def waited(self, rec: RoundRecord, wait_ms: float, *, for_input: bool = False) -> None:
        """Time the round spent waiting (for its input when ``for_input``: that part is kept apart)."""
        with self.lock:
            rec.wait_ms += wait_ms
            if for_input:
                rec.input_wait_ms = wait_ms

    def spent(self, rec: RoundRecord, *, prefill_ms: float | None = None, verify_ms: float = 0.0) -> None:
        """Model time the verifier spent on the round."""
        with self.lock:
            if prefill_ms is not None:
                rec.prefill_ms = prefill_ms
            rec.verify_ms += verify_ms

    def finish(self, rec: RoundRecord, *, empty: bool = False) -> None:
        """The round is over; ``empty``: with no caption, as one more (empty) commit that tells
        upstream stages to move on."""
        with self.lock:
            rec.final = True
            if empty:
                rec.commit_seq += 1
            self.changed.notify_all()

    def speculate(self, rec: RoundRecord, prefix: Sequence[int], tokens: Sequence[int]) -> bool:
        """An upstream stage drafted ``tokens`` after ``prefix``; False when the round is gone."""
        with self.lock:
            if self._rounds.get(rec.round_id) is not rec:
                return False  # reset or evicted meanwhile
            rec.extend_spec(prefix, tokens)
            return True

    def work_item(self, max_tokens: int, max_ahead: int, eos: int | None) -> tuple[RoundRecord, list[int], int] | None:
        """For an upstream stage: (focus round, speculated prefix, commit_seq) to extend now, or None
        (nothing open, the caption ended or reached ``max_tokens``, or ``max_ahead`` speculated)."""
        with self.lock:
            rec = self.focus()
            if rec is None:
                return None
            spec = rec.rebase_spec()
            ended = bool(spec) and eos is not None and spec[-1] == eos
            if ended or len(spec) >= max_tokens or len(spec) - len(rec.committed) >= max_ahead:
                return None
            return rec, list(spec), rec.commit_seq

    def pending(self, max_pending: int) -> tuple[RoundRecord | None, int]:
        """For the verifier: the oldest round neither final nor abandoned, and how many older ones
        were dropped for it now (more than ``max_pending`` waiting: the oldest go)."""
        with self.lock:
            todo = [r for r in self.records() if not r.final and not r.abandoned]
            dropped = 0
            while len(todo) > max_pending:
                todo.pop(0).abandoned = True
                dropped += 1
            return (todo[0] if todo else None), dropped

    def snapshot(self, round_id: int) -> RoundRecord | None:
        """A copy of the round's record as it stands (for diagnostics, tests, other threads)."""
        with self.lock:
            rec = self._rounds.get(round_id)
            return None if rec is None else copy.deepcopy(rec)

    def counts(self) -> dict[str, int]:
        """How many rounds are open and pending, and what the book has dropped."""
        with self.lock:
            return {
                "rounds_open": len(self._rounds),
                "rounds_pending": sum(1 for r in self._rounds.values() if not r.final and not r.abandoned),
                "rounds_evicted": self.evicted,
                "resets": self.resets,
                "drafts_dropped": self.drafts_dropped,
            }

    def forget(self, round_id: int) -> None:
        with self.lock:
            self._rounds.pop(round_id, None)

    def reset(self) -> None:
        """Time went backwards: every open round is void."""
        with self.lock:
            self._rounds.clear()
            self.resets += 1
            self.changed.notify_all()
