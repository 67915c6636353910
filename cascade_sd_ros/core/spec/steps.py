"""Step-level functions of one speculative round, usable stage by stage (in-process or over topics).

* `draft_step`   — the drafter proposes gamma tokens continuing the committed prefix;
* `refine_step`  — a middle stage (refiner / PyramidSD qualifier) scores a lower stage's draft in one
  forward, keeps a prefix of it under its level rule, adds its own token and extends to gamma;
* `verify_step`  — the target scores a draft in one forward and commits the accepted tokens plus one
  of its own (recovered after a rejection, bonus after a full acceptance; vLLM's names);
  `verify_greedy` / `verify_sample` are the two lossless special cases.

All steps respect EOS and `max_new_tokens` (a draft past the budget or past an EOS is cut before it
is scored) and take the caption prefix explicitly, so a stale draft can be re-based with
`align_draft` and never corrupts an adapter. Each step does one host sync for its decision.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from cascade_sd_ros.core.spec import rules
from cascade_sd_ros.core.spec.adapter import ModelAdapter, Proposal

__all__ = [
    "LevelRule",
    "VerifyResult",
    "RefineResult",
    "align_draft",
    "caption_ended",
    "cut_draft",
    "draft_step",
    "refine_step",
    "verify_step",
    "verify_greedy",
    "verify_sample",
]

RuleKind = Literal["greedy", "sample", "fuzzy", "cascade"]


@dataclass(frozen=True)
class LevelRule:
    """How one verifying stage judges the draft of the stage below it.

    kind: "greedy" (exact argmax), "sample" (speculative sampling; one-hot when no q is given),
        "fuzzy" (PyramidSD, JSD <= tau), "cascade" (Faster Cascades deferral `deferral` with `alpha`).
    temperature: p = softmax(logits / temperature); 0 means greedy decisions (distributions for
        fuzzy/cascade rules are then taken at temperature 1).
    """

    kind: RuleKind = "greedy"
    temperature: float = 0.0
    tau: float = 0.0
    deferral: rules.DeferralRule = "chow"
    alpha: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("greedy", "sample", "fuzzy", "cascade"):
            raise ValueError(f"unknown rule kind {self.kind!r}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.kind == "sample" and self.temperature <= 0:
            raise ValueError("the sample rule needs temperature > 0 (use greedy for temperature 0)")
        if self.kind == "greedy" and self.temperature != 0:
            raise ValueError("the greedy rule takes temperature 0")
        if not 0.0 <= self.tau <= 1.0:
            raise ValueError(f"tau (a JSD in bits) must be in [0, 1], got {self.tau}")
        if self.deferral not in rules.DEFERRAL_RULES:
            raise ValueError(f"deferral must be one of {rules.DEFERRAL_RULES}, got {self.deferral!r}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")

    @property
    def needs_q(self) -> bool:
        """Whether the proposer's distribution rows are required (fuzzy/cascade) ."""
        return self.kind in ("fuzzy", "cascade")

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Distribution rows `[n, V]` this level uses for `logits` `[n, V]`."""
        return torch.softmax(logits.float() / (self.temperature if self.temperature > 0 else 1.0), dim=-1)


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of verifying one draft.

    accepted: draft tokens accepted; token_ids: committed new tokens = draft[:accepted] + [recovered
    or bonus] (cut at EOS / budget); bonus: the extra token followed a fully accepted draft;
    drafted: draft tokens actually scored (after cutting); lossy: accepted tokens the exact rule would
    have rejected (0 in lossless modes); finished: EOS committed or budget reached.
    """

    accepted: int
    token_ids: list[int]
    bonus: bool
    drafted: int
    lossy: int
    finished: bool


@dataclass(frozen=True)
class RefineResult:
    """A middle stage's answer: kept stage-below tokens and its own draft of (at most) gamma tokens.

    kept: lower-stage draft tokens kept; token_ids: kept tokens + this stage's own tokens;
    confidences: this stage's probability of each token in token_ids; q: `[len(token_ids), V]`
    distribution rows of this stage (None unless requested); drafted: lower-stage tokens scored;
    lossy: kept tokens this stage's exact rule would have rejected.
    """

    kept: int
    token_ids: list[int]
    confidences: list[float]
    q: torch.Tensor | None
    drafted: int
    lossy: int


def caption_ended(prefix: Sequence[int], eos: int | None) -> bool:
    """Whether the committed ``prefix`` already ends with the EOS."""
    return eos is not None and len(prefix) > 0 and prefix[-1] == eos


def cut_draft(draft: Sequence[int], budget: int, eos: int | None) -> list[int]:
    """The part of `draft` worth scoring: at most `budget` tokens, nothing after the first EOS."""
    out = [int(t) for t in draft[: max(budget, 0)]]
    if eos is not None and eos in out:
        out = out[: out.index(eos) + 1]
    return out


def _commit_cut(tokens: list[int], budget: int, eos: int | None) -> list[int]:
    return cut_draft(tokens, budget, eos)


def align_draft(committed: Sequence[int], draft_prefix: Sequence[int], draft: Sequence[int]) -> list[int]:
    """Re-base a draft made for `draft_prefix` onto the `committed` prefix.

    The draft is the continuation `draft_prefix + draft`; what remains after `committed` is usable
    when `committed` is a prefix of that continuation, otherwise the draft is stale: [] (empty).
    """
    full = [*draft_prefix, *draft]
    n = len(committed)
    if n > len(full) or list(full[:n]) != list(committed):
        return []
    return [int(t) for t in full[n:]]


def _decide(
    level: LevelRule,
    draft: list[int],
    logits: torch.Tensor,
    q: torch.Tensor | None,
    q_sampled: bool,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Apply `level` -> (accepted, token, lossy count) device tensors; no host sync."""
    n = len(draft)
    device = logits.device
    if generator is not None and generator.device.type != device.type:
        raise ValueError(f"the generator lives on {generator.device}, the scores on {device}; use one on {device}")
    x = torch.tensor(draft, dtype=torch.long, device=device)  # [n]
    if q is not None:
        if q.shape[0] < n:
            raise ValueError(f"q has {q.shape[0]} rows for a draft of {n} tokens")
        q = q[:n].to(device=device, dtype=torch.float32)
    if level.needs_q and q is None and n > 0:
        raise ValueError(f"the {level.kind} rule needs the proposer's distribution q")
    if level.kind == "greedy":
        a, tok, flags = rules.accept_greedy(x, logits)
    elif level.kind == "sample":
        a, tok, flags = rules.accept_sample(x, level.probs(logits), q if q_sampled else None, generator)
    elif level.kind == "fuzzy":
        a, tok, flags = rules.accept_fuzzy(x, logits, q if q is not None else logits[:0].float(), level.tau)
    else:
        sampled = q_sampled and level.temperature > 0
        qq = q if q is not None else logits[:0].float()
        a, tok, flags = rules.accept_cascade(
            x, level.probs(logits), qq, level.deferral, level.alpha, sampled=sampled, generator=generator
        )
    lossy = (flags & (torch.arange(n, device=device) < a)).sum()
    return a, tok, lossy


def draft_step(
    drafter: ModelAdapter,
    prefix: Sequence[int],
    gamma: int,
    *,
    max_new_tokens: int | None = None,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    return_q: bool = False,
) -> Proposal:
    """The drafter's proposal of (at most) gamma tokens continuing `prefix`, within the budget."""
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    budget = gamma if max_new_tokens is None else min(gamma, max_new_tokens - len(prefix))
    if budget <= 0 or caption_ended(prefix, drafter.eos_token_id):
        return Proposal([], [], None, temperature > 0)
    return drafter.propose(prefix, budget, temperature=temperature, generator=generator, return_q=return_q)


def refine_step(
    refiner: ModelAdapter,
    prefix: Sequence[int],
    draft: Sequence[int],
    gamma: int,
    *,
    max_new_tokens: int,
    level: LevelRule = LevelRule(),
    q: torch.Tensor | None = None,
    q_sampled: bool = False,
    generator: torch.Generator | None = None,
    return_q: bool = False,
) -> RefineResult:
    """Score the lower stage's `draft` in one forward, keep a prefix, add own tokens up to gamma.

    The output always contains the kept tokens and this stage's own next token (even beyond gamma:
    that token is verified information), then greedy/sampled extension until gamma tokens.
    q: the lower stage's distribution rows (`[len(draft), V]`), needed by fuzzy/cascade rules and by
    the general sampling rule (`q_sampled=True` when the draft was drawn from q).
    """
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    eos = refiner.eos_token_id
    budget = max_new_tokens - len(prefix)
    if budget <= 0 or caption_ended(prefix, eos):
        return RefineResult(0, [], [], None, 0, 0)
    cut = cut_draft(draft, budget, eos)
    logits = refiner.score(prefix, cut)  # [n+1, V]
    a_t, tok_t, lossy_t = _decide(level, cut, logits, q, q_sampled, generator)
    rows = level.probs(logits)  # [n+1, V]
    n = len(cut)
    x = torch.tensor(cut, dtype=torch.long, device=rows.device)  # [n]
    p_x = rows[:n].gather(1, x.view(-1, 1)).view(-1)  # [n] confidence in each draft token
    p_tok = rows.index_select(0, a_t.view(1))[0].gather(0, tok_t.view(1))  # [1] in its own token
    # one host sync for the whole decision; ids < 2**53 are exact in float64
    packed = torch.cat([torch.stack([a_t, tok_t, lossy_t]).double(), p_x.double(), p_tok.double()]).tolist()
    kept, token, lossy = int(packed[0]), int(packed[1]), int(packed[2])
    out = _commit_cut([*cut[:kept], token], budget, eos)
    confidences = [*packed[3 : 3 + kept], packed[3 + n]][: len(out)]
    out_rows = rows[: len(out)]  # [len(out), V]: row i is the stage's distribution at out[i]
    want = min(gamma, budget)
    q_out = out_rows if (return_q or level.needs_q) else None
    if len(out) < want and not (eos is not None and out[-1] == eos):
        ext = refiner.propose(
            [*prefix, *out],
            want - len(out),
            temperature=level.temperature,
            generator=generator,
            return_q=q_out is not None,
        )
        out = [*out, *ext.token_ids]
        confidences = [*confidences, *ext.probs]
        if q_out is not None and ext.q is not None:
            q_out = torch.cat([q_out, ext.q.to(q_out.device)], dim=0)
    return RefineResult(kept, out, confidences, q_out, len(cut), lossy)


def verify_step(
    target: ModelAdapter,
    prefix: Sequence[int],
    draft: Sequence[int],
    *,
    max_new_tokens: int,
    level: LevelRule = LevelRule(),
    q: torch.Tensor | None = None,
    q_sampled: bool = False,
    generator: torch.Generator | None = None,
) -> VerifyResult:
    """Verify `draft` after the committed `prefix` in one target forward; commit accepted + one token."""
    eos = target.eos_token_id
    budget = max_new_tokens - len(prefix)
    if budget <= 0 or caption_ended(prefix, eos):
        return VerifyResult(0, [], False, 0, 0, True)
    cut = cut_draft(draft, budget, eos)
    logits = target.score(prefix, cut)  # [n+1, V] in one forward
    a_t, tok_t, lossy_t = _decide(level, cut, logits, q, q_sampled, generator)
    accepted, token, lossy = torch.stack([a_t, tok_t, lossy_t]).tolist()  # the step's one host sync
    new = _commit_cut([*cut[:accepted], token], budget, eos)
    finished = len(prefix) + len(new) >= max_new_tokens or (eos is not None and new[-1] == eos)
    return VerifyResult(accepted, new, accepted == len(cut), len(cut), lossy, finished)


def verify_greedy(
    target: ModelAdapter, prefix: Sequence[int], draft: Sequence[int], *, max_new_tokens: int
) -> VerifyResult:
    """Lossless greedy verification: accept the longest prefix equal to the target's argmax."""
    return verify_step(target, prefix, draft, max_new_tokens=max_new_tokens)


def verify_sample(
    target: ModelAdapter,
    prefix: Sequence[int],
    draft: Sequence[int],
    *,
    max_new_tokens: int,
    generator: torch.Generator,
    temperature: float = 1.0,
    q: torch.Tensor | None = None,
) -> VerifyResult:
    """Lossless speculative sampling at `temperature` with an explicit generator.

    q None: the one-hot rule for token-id-only drafts (accept x with prob p(x), else sample p
    without x); q `[len(draft), V]`: the general rule for drafts sampled from q in-process.
    """
    return verify_step(
        target,
        prefix,
        draft,
        max_new_tokens=max_new_tokens,
        level=LevelRule("sample", temperature=temperature),
        q=q,
        q_sampled=q is not None,
        generator=generator,
    )
