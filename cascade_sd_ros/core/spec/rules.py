"""Acceptance rules of one verification level, on device tensors, with no host sync.

Each rule looks at a draft `x` of n tokens, the verifier's next-token logits at every draft position
plus one (`[n+1, V]`), and, where the rule needs it, the proposer's distribution `q` (`[n, V]`). It
returns `(accepted, token, flags)` as device tensors: `accepted` (0-dim long) is the length of the
accepted draft prefix; `token` (0-dim long) is the verifier's own token at position `accepted` —
the *recovered* token after a rejection, or the *bonus* token when the whole draft was accepted
(vLLM's names); `flags` (`[n]` bool) marks accepted positions the exact rule would not have accepted
(what a lossy rule traded; all False for lossless rules). Callers do the one host sync per round.

Names follow Leviathan et al. / vLLM: `p` target probabilities, `q` draft probabilities.

* greedy: accept while x_i == argmax p_i (lossless for greedy decoding).
* sample: speculative sampling. General q: accept x_i with prob min(1, p_i(x_i) / q_i(x_i)); on
  rejection sample from norm(max(0, p_i - q_i)). One-hot q (token-id-only drafts, q=None): accept
  with prob p_i(x_i); on rejection sample from p_i with x_i removed, renormalised. Both keep p exactly.
* fuzzy (PyramidSD, after Fuzzy SD): accept x_i if x_i == argmax p_i or JSD(p_i, q_i) <= tau, with
  JSD in bits (in [0, 1]); tau = 0 is exactly greedy.
* cascade (Faster Cascades, SpecCascade): target pi = (1 - delta) q + delta p with the deferral
  delta(q, p) of Chow (max q < 1 - alpha), Diff (max q < max p - alpha) or OPT
  (max q < max p - alpha * D_TV(p, q)); greedy variant: delta = 0 keeps x_i, delta = 1 needs
  x_i == argmax p_i; sampled variant: speculative sampling against pi.
"""

from __future__ import annotations

from typing import Literal

import torch

__all__ = [
    "DeferralRule",
    "DEFERRAL_RULES",
    "first_rejection",
    "accept_greedy",
    "accept_sample",
    "accept_fuzzy",
    "accept_cascade",
    "deferral",
    "js_divergence",
    "residual_distribution",
]

DeferralRule = Literal["chow", "diff", "opt"]
DEFERRAL_RULES: tuple[DeferralRule, ...] = ("chow", "diff", "opt")


def first_rejection(accept: torch.Tensor) -> torch.Tensor:
    """Length of the all-True prefix of bool `accept` `[n]` (0-dim long, stays on device)."""
    return torch.cumprod(accept.to(torch.long), dim=0).sum()


def _pick(rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return rows.index_select(0, index.view(1))[0]


def accept_greedy(draft: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """draft `[n]` long, logits `[n+1, V]` -> accepted prefix length, verifier token, lossy flags."""
    n = draft.numel()
    target_ids = logits.argmax(dim=-1)  # [n+1]
    accepted = first_rejection(draft == target_ids[:n])
    return accepted, _pick(target_ids, accepted), torch.zeros(n, dtype=torch.bool, device=draft.device)


def residual_distribution(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """norm(max(0, p - q)) row-wise `[n, V]`; rows whose residual mass is zero fall back to p."""
    res = torch.clamp(p - q, min=0.0)  # [n, V]
    mass = res.sum(dim=-1, keepdim=True)  # [n, 1]
    return torch.where(mass > 0, res / mass.clamp_min(torch.finfo(res.dtype).tiny), p)


def accept_sample(
    draft: torch.Tensor,
    p: torch.Tensor,
    q: torch.Tensor | None,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Speculative sampling: draft `[n]`, p `[n+1, V]` probabilities, q `[n, V]` or None (one-hot)."""
    n = draft.numel()
    p_x = p[:n].gather(1, draft.view(-1, 1)).view(-1)  # [n] p_i(x_i)
    if q is None:
        q = torch.zeros_like(p[:n]).scatter_(1, draft.view(-1, 1), 1.0)  # [n, V] one-hot
    q_x = q.gather(1, draft.view(-1, 1)).view(-1)  # [n] q_i(x_i)
    ratio = torch.where(q_x > 0, p_x / q_x.clamp_min(torch.finfo(p.dtype).tiny), torch.zeros_like(p_x))
    u = torch.rand(n, generator=generator, device=p.device, dtype=p.dtype)  # [n]; generator on p.device
    accepted = first_rejection(u < ratio.clamp(max=1.0))
    rows = torch.cat([residual_distribution(p[:n], q), p[n:]], dim=0)  # [n+1, V]; last row: bonus
    token = torch.multinomial(_pick(rows, accepted), 1, generator=generator)[0]
    return accepted, token, torch.zeros(n, dtype=torch.bool, device=draft.device)


def js_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence in bits between rows of p and q `[n, V]` -> `[n]` in [0, 1]."""
    m = 0.5 * (p + q)

    def kl(a: torch.Tensor) -> torch.Tensor:
        return torch.where(a > 0, a * (torch.log2(a.clamp_min(1e-30)) - torch.log2(m.clamp_min(1e-30))), 0.0).sum(-1)

    return (0.5 * kl(p) + 0.5 * kl(q)).clamp(0.0, 1.0)


def accept_fuzzy(
    draft: torch.Tensor, logits: torch.Tensor, q: torch.Tensor, tau: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PyramidSD fuzzy acceptance: draft `[n]`, logits `[n+1, V]`, proposer q `[n, V]`, threshold tau."""
    n = draft.numel()
    p = torch.softmax(logits.float(), dim=-1)  # [n+1, V]
    target_ids = p.argmax(dim=-1)  # [n+1]
    exact = draft == target_ids[:n]
    close = js_divergence(p[:n], q.float()) <= tau  # [n]
    accepted = first_rejection(exact | close)
    return accepted, _pick(target_ids, accepted), (~exact) & close


def deferral(rule: DeferralRule, q: torch.Tensor, p: torch.Tensor, alpha: float) -> torch.Tensor:
    """Faster Cascades deferral delta(q, p) per row `[n]` (True: defer to the verifier p)."""
    q_max = q.max(dim=-1).values  # [n]
    if rule == "chow":
        return q_max < 1.0 - alpha
    p_max = p.max(dim=-1).values  # [n]
    if rule == "diff":
        return q_max < p_max - alpha
    if rule == "opt":
        tv = torch.clamp(p - q, min=0.0).sum(dim=-1)  # [n] D_TV(p, q)
        return q_max < p_max - alpha * tv
    raise ValueError(f"deferral rule must be one of {DEFERRAL_RULES}, got {rule!r}")


def accept_cascade(
    draft: torch.Tensor,
    p: torch.Tensor,
    q: torch.Tensor,
    rule: DeferralRule,
    alpha: float,
    *,
    sampled: bool,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SpecCascade: draft `[n]`, verifier p `[n+1, V]` and proposer q `[n, V]` probabilities.

    `sampled`: the draft was drawn from q (speculative sampling against pi); otherwise greedy variant.
    flags mark positions kept without deferring whose token the verifier's exact rule would reject.
    """
    n = draft.numel()
    defer = deferral(rule, q, p[:n], alpha)  # [n]
    if not sampled:
        target_ids = p.argmax(dim=-1)  # [n+1]
        exact = draft == target_ids[:n]
        accepted = first_rejection(exact | ~defer)
        return accepted, _pick(target_ids, accepted), (~exact) & ~defer
    pi = torch.where(defer.view(-1, 1), p[:n], q)  # [n, V] (1 - delta) q + delta p
    accepted, token, _ = accept_sample(draft, torch.cat([pi, p[n:]], dim=0), q, generator)
    return accepted, token, ~defer
