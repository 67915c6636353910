"""In-process cascaded speculative decoding: drafter -> (refiners) -> target, one round at a time.

Modes (named in every result):

* "lossless-greedy": every level accepts the longest prefix matching its argmax; the output equals
  the target's own greedy decoding token for token.
* "lossless-sample": speculative sampling at `temperature`. Drafts are sampled in-process and each
  level uses the general rule with the proposer's q (a refiner that verifies by speculative sampling
  emits tokens distributed as its own p, which is the q it hands up); with `draft_sampling=False`
  drafts are greedy token ids and every level uses the one-hot rule (what crosses ROS topics). The
  output has the target's distribution either way.
* "pyramid": PyramidSD — fuzzy acceptance (JSD <= tau) at draft->qualifier (`taus[0]`) and
  qualifier->target (`taus[-1]`); greedy otherwise. Lossy: `lossy_tokens` counts what it traded.
* "cascade": Faster Cascades' speculative cascade with deferral rule "chow" / "diff" / "opt" and
  cost `alpha` at every level; greedy, or sampled when temperature > 0. Lossy likewise.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from cascade_sd_ros.core.spec import rules
from cascade_sd_ros.core.spec.adapter import ModelAdapter, StageContext, check_same_vocab
from cascade_sd_ros.core.spec.controller import DraftLengthController
from cascade_sd_ros.core.spec.steps import (
    LevelRule,
    VerifyResult,
    draft_step,
    refine_step,
    verify_greedy,
    verify_sample,
    verify_step,
)
from cascade_sd_ros.core.spec.tree import draft_tree_step, supports_trees, verify_tree

__all__ = [
    "MODES",
    "StageStats",
    "RoundStats",
    "DecodeStats",
    "DecodeResult",
    "CascadeDecoder",
    "target_only_greedy",
    "verify_greedy",
    "verify_sample",
]

MODES: tuple[str, ...] = ("lossless-greedy", "lossless-sample", "pyramid", "cascade")


@dataclass
class StageStats:
    """Per stage: tokens it proposed upward, how many the next stage accepted, forwards, wall time."""

    name: str
    drafted: int = 0
    accepted: int = 0
    lossy: int = 0  # of the accepted, how many the above stage's exact rule would have rejected
    forwards: int = 0
    wall_s: float = 0.0

    @property
    def acceptance(self) -> float | None:
        """accepted / drafted (None for the target, which proposes nothing)."""
        return self.accepted / self.drafted if self.drafted else None


@dataclass(frozen=True)
class RoundStats:
    drafted: tuple[int, ...]  # per proposing stage
    accepted: tuple[int, ...]  # per proposing stage, by the stage above
    committed: int
    gamma: tuple[int, ...]
    wall_s: tuple[float, ...]  # per stage
    target_forwards: int


@dataclass
class DecodeStats:
    stages: list[StageStats]
    rounds: list[RoundStats] = field(default_factory=list)
    target_forwards: int = 0
    lossy_tokens: int = 0  # committed tokens the exact rule would have rejected (lossy modes)
    wall_s: float = 0.0
    prefill_s: float = 0.0

    def acceptance(self) -> dict[str, float | None]:
        return {s.name: s.acceptance for s in self.stages[:-1]}


@dataclass(frozen=True)
class DecodeResult:
    token_ids: list[int]
    mode: str
    stats: DecodeStats
    lossless: bool
    finished_by: str  # "eos" or "budget"


def _level_rules(
    mode: str, n_levels: int, temperature: float, taus: Sequence[float], deferral: rules.DeferralRule, alpha: float
) -> list[LevelRule]:
    if mode == "lossless-greedy":
        return [LevelRule("greedy")] * n_levels
    if mode == "lossless-sample":
        return [LevelRule("sample", temperature=temperature)] * n_levels
    if mode == "pyramid":
        if not taus:
            raise ValueError("pyramid mode needs at least one tau")
        # taus[0]: draft -> qualifier levels; taus[-1]: the last level (-> target)
        return [LevelRule("fuzzy", tau=float(taus[0] if i < n_levels - 1 else taus[-1])) for i in range(n_levels)]
    if mode == "cascade":
        rule = LevelRule("cascade", temperature=temperature, deferral=deferral, alpha=alpha)
        return [rule] * n_levels
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


class CascadeDecoder:
    """Cascaded speculative decoder over `stages = [drafter, *refiners, target]`.

    One stage means target-only decoding through the same loop. Each proposing stage has its own
    `DraftLengthController` (adaptive gamma from the acceptance of its drafts by the stage above).
    `tree_branches` N > 0 (greedy, one proposer that `tree.supports_trees`): each round's draft is a
    deviation tree, the proposer's runner-up at its first N unsure tokens followed by a copy of the
    chain's rest (`tree.draft_tree_step`), checked in the same one target forward.
    """

    def __init__(
        self,
        stages: Sequence[ModelAdapter],
        mode: str = "lossless-greedy",
        gamma: int | Sequence[int] = 4,
        *,
        adaptive: bool = True,
        gamma_max: int = 16,
        temperature: float | None = None,
        draft_sampling: bool = True,
        taus: Sequence[float] = (0.3, 0.3),
        deferral: str = "chow",
        alpha: float = 0.3,
        cost_ratios: Sequence[float] | None = None,
        tree_branches: int = 0,
    ) -> None:
        if not stages:
            raise ValueError("need at least the target stage")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        check_same_vocab(list(stages))
        if deferral not in rules.DEFERRAL_RULES:
            raise ValueError(f"deferral must be one of {rules.DEFERRAL_RULES}, got {deferral!r}")
        if temperature is None:
            temperature = 1.0 if mode == "lossless-sample" else 0.0
        if mode == "lossless-greedy" and temperature != 0:
            raise ValueError("lossless-greedy takes temperature 0")
        if mode == "lossless-sample" and temperature <= 0:
            raise ValueError("lossless-sample needs temperature > 0")
        if mode == "pyramid" and temperature != 0:
            raise ValueError("pyramid mode here is greedy (temperature 0)")
        self.stages = list(stages)
        self.mode = mode
        self.temperature = float(temperature)
        self.draft_sampling = draft_sampling and self.temperature > 0
        n_prop = len(self.stages) - 1
        gammas = [int(gamma)] * n_prop if isinstance(gamma, int) else [int(g) for g in gamma]
        if len(gammas) != n_prop:
            raise ValueError(f"need {n_prop} gamma values (one per proposing stage), got {len(gammas)}")
        # cost_ratios: fixed c per proposing stage (reproducible gamma); None: measured from wall times
        if cost_ratios is not None and len(cost_ratios) != n_prop:
            raise ValueError(f"need {n_prop} cost ratios (one per proposing stage), got {len(cost_ratios)}")
        self.measure_costs = cost_ratios is None
        costs = [0.1] * n_prop if cost_ratios is None else [float(c) for c in cost_ratios]
        # gamma_min 0: a stage whose drafts do not pay stops drafting (and probes now and then)
        self.controllers = [
            DraftLengthController(g, gamma_min=0, gamma_max=max(gamma_max, g), cost_ratio=c, adaptive=adaptive)
            for g, c in zip(gammas, costs)
        ]
        self.levels = _level_rules(mode, n_prop, self.temperature, taus, deferral, alpha)
        if tree_branches < 0:
            raise ValueError(f"tree_branches must be >= 0, got {tree_branches}")
        # draft trees (core/spec/tree.py): greedy, one proposer, and stages that can draft and score them
        self.tree_branches = (
            int(tree_branches)
            if mode == "lossless-greedy" and n_prop == 1 and supports_trees(self.stages[0], self.stages[-1])
            else 0
        )

    @property
    def lossless(self) -> bool:
        return self.mode in ("lossless-greedy", "lossless-sample")

    def _solo_level(self) -> LevelRule:
        """Target-only decoding: greedy, or sampling at the mode's temperature."""
        return LevelRule("sample", temperature=self.temperature) if self.temperature > 0 else LevelRule("greedy")

    def _draft_length(self) -> int:
        """The drafter's gamma this round. A greedy drafter that stops on its own confidence
        (`stop_below`) drafts up to gamma_max while its drafts pay: its confidence sets the length
        (its errors cluster on a few hard tokens, so the i.i.d. acceptance model behind the
        controller's gamma would cut its sure runs short); gamma 0 (drafts that do not pay) stays 0."""
        controller = self.controllers[0]
        sure = getattr(self.stages[0], "stop_below", 0.0) > 0 and not self.draft_sampling
        return controller.gamma_max if sure and controller.gamma > 0 else controller.gamma

    def prefill(self, contexts: Sequence[StageContext]) -> None:
        if len(contexts) != len(self.stages):
            raise ValueError(f"need one context per stage ({len(self.stages)}), got {len(contexts)}")
        for stage, ctx in zip(self.stages, contexts):
            stage.prefill(ctx)

    def _close_round(
        self,
        stats: DecodeStats,
        drafted: list[int],
        accepted: list[int],
        walls: list[float],
        checker: list[int],
        gammas: tuple[int, ...],
        res: VerifyResult,
        target_forwards0: int,
    ) -> None:
        """Book one round: per-stage counts, the controllers' acceptance and cost, the round's record."""
        last = len(self.stages) - 1
        for i in range(last):
            stats.stages[i].drafted += drafted[i]
            stats.stages[i].accepted += accepted[i]
            self.controllers[i].update(drafted[i], accepted[i])
            if drafted[i] and self.measure_costs:
                self.controllers[i].observe_cost(walls[i] / drafted[i], walls[checker[i]])
        for i, w in enumerate(walls):
            stats.stages[i].wall_s += w
        stats.rounds.append(
            RoundStats(
                tuple(drafted),
                tuple(accepted),
                len(res.token_ids),
                gammas,
                tuple(walls),
                int(getattr(self.stages[last], "forwards", 0)) - target_forwards0,
            )
        )

    @torch.inference_mode()
    def generate(
        self,
        contexts: Sequence[StageContext] | None,
        max_new_tokens: int,
        *,
        generator: torch.Generator | None = None,
        committed: Sequence[int] = (),
    ) -> DecodeResult:
        """Decode up to `max_new_tokens` caption tokens (None contexts: stages already prefilled).

        committed: caption tokens the target has already verified (a draft that rode in its
        prefill: `tree.prefill_with_tree`); decoding continues after them.
        """
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if self.temperature > 0 and generator is None:
            raise ValueError(f"mode {self.mode!r} at temperature {self.temperature} needs an explicit torch.Generator")
        stats = DecodeStats([StageStats(getattr(s, "name", f"stage{i}")) for i, s in enumerate(self.stages)])
        forwards0 = [int(getattr(s, "forwards", 0)) for s in self.stages]
        t_start = time.perf_counter()
        if contexts is not None:
            if len(contexts) != len(self.stages):
                raise ValueError(f"need one context per stage ({len(self.stages)}), got {len(contexts)}")
            for i, (stage, ctx) in enumerate(zip(self.stages, contexts)):
                t0 = time.perf_counter()
                stage.prefill(ctx)
                stats.stages[i].wall_s += time.perf_counter() - t0
        stats.prefill_s = time.perf_counter() - t_start
        prefix: list[int] = [int(t) for t in committed]
        eos = self.stages[-1].eos_token_id
        finished = len(prefix) >= max_new_tokens or (eos is not None and eos in prefix)
        last = len(self.stages) - 1
        while not finished:
            walls = [0.0] * len(self.stages)
            drafted = [0] * last
            accepted = [0] * last
            gammas = tuple(c.gamma for c in self.controllers)
            target_forwards0 = int(getattr(self.stages[last], "forwards", 0))
            draft: list[int] = []
            q: torch.Tensor | None = None
            src = -1  # stage whose draft is current (-1: none)
            checker = [0] * last  # which stage checked stage i's draft this round
            if self.tree_branches and self.controllers[0].gamma > 0:
                t0 = time.perf_counter()
                tree = draft_tree_step(
                    self.stages[0],  # type: ignore[arg-type]  # checked by supports_trees
                    prefix,
                    self._draft_length(),
                    self.tree_branches,
                    max_new_tokens=max_new_tokens,
                )
                walls[0] = time.perf_counter() - t0
                t0 = time.perf_counter()
                res = verify_tree(self.stages[last], prefix, tree, max_new_tokens=max_new_tokens)  # type: ignore[arg-type]
                walls[last] = time.perf_counter() - t0
                drafted[0], accepted[0], checker[0] = res.drafted, res.accepted, last
                prefix.extend(res.token_ids)
                finished = res.finished or not res.token_ids
                self._close_round(stats, drafted, accepted, walls, checker, gammas, res, target_forwards0)
                continue
            if last > 0:  # (gamma 0 drafts nothing, at no cost)
                t0 = time.perf_counter()
                prop = draft_step(
                    self.stages[0],
                    prefix,
                    self._draft_length(),
                    max_new_tokens=max_new_tokens,
                    temperature=self.temperature if self.draft_sampling else 0.0,
                    generator=generator,
                    return_q=self.levels[0].needs_q or self.draft_sampling,
                )
                walls[0] = time.perf_counter() - t0
                draft, q, src = prop.token_ids, prop.q, 0
            for i in range(1, last):
                # A refiner whose own drafts do not pay (gamma 0) is bypassed: the draft below goes up
                # unchanged, and the stage is probed again now and then by its controller.
                if self.controllers[i].gamma == 0:
                    continue
                t0 = time.perf_counter()
                ref = refine_step(
                    self.stages[i],
                    prefix,
                    draft,
                    self.controllers[i].gamma,
                    max_new_tokens=max_new_tokens,
                    level=self.levels[i - 1],
                    q=q,
                    q_sampled=self.draft_sampling,
                    generator=generator,
                    return_q=self.levels[i].needs_q or self.draft_sampling,
                )
                walls[i] = time.perf_counter() - t0
                if src >= 0:
                    drafted[src], accepted[src], checker[src] = ref.drafted, ref.kept, i
                    stats.stages[src].lossy += ref.lossy
                draft, q, src = ref.token_ids, ref.q, i
            t0 = time.perf_counter()
            res = verify_step(
                self.stages[last],
                prefix,
                draft,
                max_new_tokens=max_new_tokens,
                level=self.levels[-1] if last > 0 else self._solo_level(),
                q=q,
                q_sampled=self.draft_sampling,
                generator=generator,
            )
            walls[last] = time.perf_counter() - t0
            if src >= 0:
                drafted[src], accepted[src], checker[src] = res.drafted, res.accepted, last
                stats.stages[src].lossy += res.lossy
            stats.lossy_tokens += res.lossy
            prefix.extend(res.token_ids)
            finished = res.finished or not res.token_ids
            self._close_round(stats, drafted, accepted, walls, checker, gammas, res, target_forwards0)
        stats.wall_s = time.perf_counter() - t_start
        for i, s in enumerate(self.stages):
            stats.stages[i].forwards = int(getattr(s, "forwards", 0)) - forwards0[i]
        stats.target_forwards = stats.stages[-1].forwards
        by = "eos" if (eos is not None and prefix and prefix[-1] == eos) else "budget"
        return DecodeResult(prefix, self.mode, stats, self.lossless, by)


@torch.inference_mode()
def target_only_greedy(target: ModelAdapter, context: StageContext | None, max_new_tokens: int) -> list[int]:
    """The verifier alone: plain greedy decoding, one token per forward (None context: already prefilled)."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if context is not None:
        target.prefill(context)
    eos = target.eos_token_id
    out: list[int] = []
    while len(out) < max_new_tokens:
        tok = int(target.propose(out, 1).token_ids[0])
        out.append(tok)
        if tok == eos:
            break
    return out
