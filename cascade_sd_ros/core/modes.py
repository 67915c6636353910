"""Decoding modes by name: which acceptance rule the refiner and the verifier apply.

Names and ``VerifiedCaption.MODE_*`` numbers are fixed by the message. Lossy rules (PyramidSD fuzzy
acceptance, Faster-Cascades deferral) compare the proposer's distribution ``q`` with the checker's;
only token ids and each token's probability cross the wire, so ``q`` is rebuilt as the two-point
distribution "the proposer's probability on its token, the rest spread evenly" — an approximation
that is part of what lossy modes trade.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from cascade_sd_ros.core.names import MODES
from cascade_sd_ros.core.spec.rules import DEFERRAL_RULES
from cascade_sd_ros.core.spec.steps import LevelRule


@dataclass(frozen=True)
class ModeRules:
    name: str
    number: int  # VerifiedCaption.MODE_*
    lossless: bool
    refiner: LevelRule  # how the refiner judges stage-0 drafts
    verifier: LevelRule  # how the verifier judges the draft it checks


def mode_rules(
    name: str, *, temperature: float = 1.0, tau: float = 0.1, alpha: float = 0.5, deferral: str = "chow"
) -> ModeRules:
    """The rules of mode ``name``; unknown names and out-of-range thresholds raise ValueError."""
    if name not in MODES:
        raise ValueError(f"mode must be one of {sorted(MODES)}, got {name!r}")
    greedy = LevelRule("greedy")
    if name == "lossless-greedy":
        return ModeRules(name, MODES[name], True, greedy, greedy)
    if name == "lossless-sample":
        if temperature <= 0:
            raise ValueError(f"lossless-sample needs temperature > 0, got {temperature}")
        return ModeRules(name, MODES[name], True, greedy, LevelRule("sample", temperature=temperature))
    if name == "pyramid":
        fuzzy = LevelRule("fuzzy", tau=tau)
        return ModeRules(name, MODES[name], False, fuzzy, fuzzy)
    if deferral not in DEFERRAL_RULES:  # LevelRule's own check, made here so the name is typed
        raise ValueError(f"deferral must be one of {DEFERRAL_RULES}, got {deferral!r}")
    deferring = LevelRule("cascade", deferral=deferral, alpha=alpha)
    return ModeRules(name, MODES[name], False, greedy, deferring)


def two_point_q(token_ids: Sequence[int], confidence: Sequence[float], vocab_size: int) -> torch.Tensor:
    """``[n, V]`` rows: ``confidence[i]`` on ``token_ids[i]``, the remainder uniform elsewhere."""
    n = len(token_ids)
    c = torch.tensor([min(max(float(x), 0.0), 1.0) for x in confidence[:n]] + [1.0] * (n - len(confidence)))
    q = ((1.0 - c) / max(vocab_size - 1, 1)).view(-1, 1).repeat(1, vocab_size)  # [n, V]
    q[torch.arange(n), torch.tensor(list(token_ids), dtype=torch.long)] = c
    return q
