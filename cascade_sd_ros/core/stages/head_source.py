"""The verifier's own draft head as one more draft source (issue 17; ROS-free).

:class:`HeadSource` runs the fused draft head (:class:`~cascade_sd_ros.core.head.HeadAdapter`) on the
verifier's worker thread: a round starts on the target's states from the clip's prefill plus the
round's event tokens, when the drafter's EventFeatures for it are in hand (fused). When they are not
(late or never sent) it starts on the target's states alone and switches to fused as soon as they
come; either way only speed is at stake, since its drafts are verified like any other. With
``prefill_draft`` (prefill hiding) a round whose event tokens are in hand before the clip's prefill
gets a first draft from them (the target's states for the clip do not exist yet), which rides in
that prefill, so checking it costs no forward of its own.

:func:`pick_draft` is how the verifier chooses between the head's draft and an upstream draft in
hand: the one with more expected accepted tokens, each stage's expectation (from its own
confidences) scaled by how its drafts have really fared (:class:`SourceWorth`). Separate from the
verifier's wait policy (:class:`~cascade_sd_ros.core.stages.verifier.DraftWait`): with the head on,
a draft is always in hand, so the verifier does not wait for upstream drafts at all.

:func:`open_draft_head` loads a head folder for a target and says in one line why it refuses one
(a head trained on another target, a target without hidden states, a broken folder).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from cascade_sd_ros.core.head.adapter import HeadAdapter
from cascade_sd_ros.core.head.io import load_head, tensor_fingerprint
from cascade_sd_ros.core.names import NUM_DRAFT_SOURCES, STAGE_HEAD
from cascade_sd_ros.core.rounds import Draft
from cascade_sd_ros.core.spec.adapter import HFAdapter
from cascade_sd_ros.core.spec.tree import deviation_tree
from cascade_sd_ros.core.stages.ema import ema
from cascade_sd_ros.core.stages.gamma import AdaptiveGamma

__all__ = [
    "HEAD_BRANCHES",
    "HeadSource",
    "HeadSpec",
    "SourceWorth",
    "expected_accepted",
    "open_draft_head",
    "pick_draft",
]

KEEP_FEATURE_ROUNDS = 8  # event tokens kept for rounds the verifier has not reached yet
HEAD_BRANCHES = 4  # default: unsure positions of a head draft that branch (bench/RESULTS.md, "Tenth session")


def expected_accepted(confidence: Sequence[float]) -> float:
    """Expected accepted length of a greedy draft whose tokens are right with these probabilities
    (in order, each given the ones before): sum over i of c_0 * ... * c_i."""
    total, run = 0.0, 1.0
    for c in confidence:
        run *= float(c)
        total += run
    return total


class SourceWorth:
    """Per draft source, how its confidences translate into accepted tokens, measured: an EMA of
    accepted / expected over its verified drafts (1 until measured). Not thread-safe (the verifier
    stage uses it on its worker thread)."""

    def __init__(self, alpha: float = 0.2) -> None:
        self.alpha = alpha
        self.ratio = [1.0] * NUM_DRAFT_SOURCES
        self.chosen = [0] * NUM_DRAFT_SOURCES  # verifications that checked this source's draft

    def value(self, stage: int, confidence: Sequence[float]) -> float:
        return expected_accepted(confidence) * self.ratio[stage]

    def verified(self, stage: int, confidence: Sequence[float], accepted: int) -> None:
        """One of ``stage``'s drafts was checked: ``accepted`` of its tokens kept."""
        self.chosen[stage] += 1
        expected = expected_accepted(confidence)
        if expected > 0:
            self.ratio[stage] = ema(self.ratio[stage], accepted / expected, self.alpha)


def pick_draft(
    in_hand: tuple[Draft, list[int]] | None, head: tuple[Draft, list[int]] | None, worth: SourceWorth
) -> tuple[Draft, list[int]] | None:
    """The draft worth most (each as (draft, the tail continuing the commit)); the head's on a tie,
    since it is already made and nobody else is waiting on it."""
    if in_hand is None or not in_hand[1]:
        return head
    if head is None or not head[1]:
        return in_hand

    def conf(choice: tuple[Draft, list[int]]) -> Sequence[float]:
        d, tail = choice
        return d.confidence[len(d.token_ids) - len(tail) :] if d.confidence else [1.0] * len(tail)

    up = worth.value(in_hand[0].stage, conf(in_hand))
    own = worth.value(STAGE_HEAD, conf(head))
    return in_hand if up > own else head


@dataclass(frozen=True)
class HeadSpec:
    """A loaded head for one target: the adapter, its folder and the event encoder its MLP reads."""

    adapter: HeadAdapter
    folder: Path
    event_encoder: str  # fingerprint EventFeatures must carry ("" : head.json names none: none accepted)
    event_rows: int
    event_dim: int


def open_draft_head(folder: str | Path, target: object) -> tuple[HeadSpec | None, str]:
    """(the head on ``target``, "") or (None, why it is refused, one line)."""
    folder = Path(folder)
    if not isinstance(target, HFAdapter):
        return None, f"the target adapter {type(target).__name__} keeps no hidden states for a draft head"
    try:
        net, align, meta = load_head(folder, device=target.device)
    except (OSError, ValueError) as exc:
        return None, str(exc).splitlines()[0]
    trained = str(meta.get("trained_on", {}).get("target", ""))
    have = tensor_fingerprint([target.model])
    if trained != have:
        return None, f"draft head {folder} was trained on target {trained or '(unnamed)'}, this target is {have}"
    try:
        adapter = HeadAdapter(net, align, target, mode="fused")
    except ValueError as exc:
        return None, str(exc)
    cfg = net.cfg
    return HeadSpec(adapter, folder, str(meta.get("event_encoder", "")), cfg.event_rows, cfg.event_dim), ""


class HeadSource:
    """The head's drafts for the verifier's rounds (see the module docstring).

    ``offer_features`` may be called from any thread (a node's callback); everything else runs on
    the verifier's worker thread. Counters (``snapshot``) are read under the same small lock.
    """

    def __init__(
        self, head: HeadAdapter, *, gamma: int, gamma_max: int, prefill_draft: bool = False, branches: int = 0
    ) -> None:
        if branches < 0:
            raise ValueError(f"branches must be >= 0, got {branches}")
        self.head = head
        self.prefill_draft = prefill_draft
        # > 0: each draft is a deviation tree, the head's runner-up at its first `branches` unsure
        # positions followed by a copy of the chain's rest (tree.deviation_tree): no head forward of its own
        self.branches = branches
        self._early: tuple[int, Draft] | None = None  # (round, its draft that rode in its prefill), until checked
        self._gamma = AdaptiveGamma(gamma, gamma_max)
        self._lock = threading.Lock()
        self._features: OrderedDict[int, torch.Tensor] = OrderedDict()  # round id -> [1, R, E]
        self._round: int | None = None
        self._prompt_last = 0
        self._fused = False  # the current round's head reads its event tokens
        self._counts = dict(
            rounds=0,  # rounds the head drafted for
            rounds_fused=0,  # ... with the round's event tokens from its start
            rounds_late=0,  # ... whose event tokens came after it started (fused from then on)
            rounds_target_only=0,  # ... that ended without them (target states alone: slower only)
            features_received=0,
            features_unused=0,  # for rounds the verifier had already finished, or pushed out unused
            drafts=0,
            forwards=0,
            prefill_drafts=0,  # first drafts made from event tokens alone, carried in the clip's prefill
            branch_nodes=0,  # tree nodes off the drafts' main chains (branches > 0)
        )
        self._head_s = 0.0

    # ------------------------------------------------------------------ any thread
    def offer_features(self, round_id: int, tokens: torch.Tensor) -> None:
        """The drafter's event tokens `[1, R, E]` of round ``round_id`` (already checked by the node)."""
        with self._lock:
            self._counts["features_received"] += 1
            if self._round is not None and round_id < self._round:
                self._counts["features_unused"] += 1  # the verifier is past that round
                return
            self._features[round_id] = tokens
            while len(self._features) > KEEP_FEATURE_ROUNDS:
                self._features.popitem(last=False)
                self._counts["features_unused"] += 1

    def snapshot(self) -> dict[str, object]:
        with self._lock:
            drafts = self._counts["drafts"]
            return {
                **{f"head.{k}": v for k, v in self._counts.items()},
                "head.gamma": self._gamma.value,
                "head.ms_per_draft": self._head_s * 1e3 / drafts if drafts else float("nan"),
            }

    # ------------------------------------------------------------------ worker thread
    def early_draft(self, round_id: int, prompt_last: int, budget: int) -> list[int]:
        """Before the clip's prefill: a first draft from the round's event tokens alone, for the
        prefill to carry (empty: prefill hiding off, no tokens in hand, or no budget)."""
        self._early = None
        with self._lock:
            tokens = self._features.get(round_id) if self.prefill_draft else None
            k = min(self._gamma.value, budget)
        if tokens is None or k <= 0:
            return []
        t0 = time.perf_counter()
        self.head.prefill_events(tokens, prompt_last, target_current=False)  # the target holds the last clip
        proposal = self.head.propose([], k)
        spent = time.perf_counter() - t0
        if not proposal.token_ids:
            return []
        tail = tuple(int(t) for t in proposal.token_ids)
        draft = Draft(
            stage=STAGE_HEAD,
            commit_seq=0,
            start_position=0,
            token_ids=tail,
            confidence=tuple(float(p) for p in proposal.probs),
            compute_ms=spent * 1e3,
        )
        self._early = (round_id, draft)
        with self._lock:
            self._counts["prefill_drafts"] += 1
            self._head_s += spent
        return list(tail)

    def begin(self, round_id: int, prompt_last: int) -> None:
        """A round starts: the target was just prefilled with its clip (``prompt_last``: the
        prompt's last token id). Ends the round before it (counting what it ran on)."""
        self._end_round()
        with self._lock:
            tokens = self._features.pop(round_id, None)
            for old in [r for r in self._features if r < round_id]:
                del self._features[old]
                self._counts["features_unused"] += 1
            self._round, self._prompt_last, self._fused = round_id, int(prompt_last), tokens is not None
            self._counts["rounds"] += 1
            if tokens is not None:
                self._counts["rounds_fused"] += 1
        self.head.prefill_events(tokens, prompt_last, target_current=True)

    def _end_round(self) -> None:
        with self._lock:
            if self._round is not None and not self._fused:
                self._counts["rounds_target_only"] += 1
            self._round = None

    def _late_features(self) -> None:
        """Event tokens that came after the round started: the head reads them from now on."""
        with self._lock:
            if self._fused or self._round is None:
                return
            tokens = self._features.pop(self._round, None)
            if tokens is None:
                return
            self._fused = True
            self._counts["rounds_late"] += 1
        # a new memory: the head's positions are recomputed on the next propose (a few head forwards)
        self.head.prefill_events(tokens, self._prompt_last, target_current=True)

    def draft(self, committed: Sequence[int], budget: int) -> tuple[Draft, list[int]] | None:
        """The head's draft continuing ``committed`` (at most ``budget`` tokens), as a draft and its
        tail; None when the budget is spent."""
        if self._round is None or budget <= 0:
            return None
        early, self._early = self._early, None
        if early is not None and early[0] == self._round and not committed:  # it rode in the prefill: free
            return early[1], list(early[1].token_ids[:budget])
        self._late_features()
        with self._lock:
            # a head that stops on its own confidence drafts as far as it is sure, up to the ceiling
            k = min(self._gamma.ceiling if self.head.stop_below > 0 else self._gamma.value, budget)
        f0, t0 = self.head.forwards, time.perf_counter()
        branches: tuple[tuple[int, int], ...] = ()
        if self.branches and k > 0:
            tail, top, probs = self.head.propose_alternatives(list(committed), k, 2)
            confidence = [p[0] for p in probs]
            eos = self.head.eos_token_id
            branches = deviation_tree(tail, top, probs, self.branches, eos=eos).branches
        else:
            proposal = self.head.propose(list(committed), k)
            tail, confidence = [int(t) for t in proposal.token_ids], list(proposal.probs)
        spent = time.perf_counter() - t0
        with self._lock:
            self._counts["drafts"] += 1
            self._counts["forwards"] += self.head.forwards - f0
            self._counts["branch_nodes"] += len(branches)
            self._head_s += spent
        if not tail:
            return None
        draft = Draft(
            stage=STAGE_HEAD,
            commit_seq=0,
            start_position=len(committed),
            token_ids=tuple(tail),
            confidence=tuple(float(p) for p in confidence),
            compute_ms=spent * 1e3,
            branches=branches,
        )
        return draft, tail

    def verified(self, accepted: int, drafted: int) -> None:
        """The head's last draft was checked: its length adapts as the upstream stages' do."""
        with self._lock:
            self._gamma.observe(accepted, drafted)

    def finish(self) -> None:
        """The verifier is done with the current round (counted by what the head ran on)."""
        self._end_round()
