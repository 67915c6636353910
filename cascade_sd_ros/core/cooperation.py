"""Can these stages cooperate? The start-up check a launch, ``demo`` or ``replay`` makes from the model
sources alone, before any weights load (issue 16).

Two reasons they cannot, each said in one line:

* an upstream stage left on the shipped zoo while the target is a real checkpoint (what
  ``ros2 launch ... target_model:=/models/Video-LLaVA-7B-hf`` alone amounts to): the zoo's models know
  synthetic scenes and a 40-word vocabulary, so their drafts would never be accepted;
* an upstream stage whose vocabulary differs from the target's under ``draft_ids=same-vocab``: its ids
  mean something else to the target (``auto``/``text`` let the drafts cross as text instead), or where
  one of the two has no tokenizer to turn ids into text (the ``tiny:SEED`` test models).

Otherwise :func:`plan_cooperation` says how each upstream stage's drafts reach the target: ``ids`` or
``text``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cascade_sd_ros.core.spec.text_drafts import DraftIds, resolve_draft_ids
from cascade_sd_ros.core.stage_model import (
    TINY_PREFIX,
    Vocabulary,
    VocabularyMismatch,
    default_stage_source,
    source_vocabulary,
)

__all__ = ["CooperationPlan", "plan_cooperation"]

UPSTREAM = ("drafter", "refiner")


@dataclass(frozen=True)
class CooperationPlan:
    """How each upstream stage's drafts reach the target (``ids`` or ``text``), and why, for the log."""

    draft_ids: dict[str, DraftIds]
    lines: tuple[str, ...]


def _resolve(source: str, role: str) -> str:
    return source or default_stage_source(role)


def _is_zoo(source: str, role: str) -> bool:
    try:
        return Path(source).resolve() == Path(default_stage_source(role)).resolve()
    except OSError:
        return False


def plan_cooperation(
    sources: Mapping[str, str],
    draft_ids: str | Mapping[str, str] = "auto",
    vocabulary_of: Callable[[str], Vocabulary | None] = source_vocabulary,
) -> CooperationPlan:
    """Check the stages in ``sources`` (role -> model source; "" is the shipped zoo's; only the roles
    that run) and plan how their drafts reach the target.

    ``draft_ids`` is ``same-vocab`` | ``text`` | ``auto``, for all upstream stages or per role.
    Raises :class:`VocabularyMismatch` with one line naming the stages and what to do.
    """
    if "target" not in sources:
        return CooperationPlan({}, ())
    target_src = _resolve(sources["target"], "target")
    target_vocab = vocabulary_of(target_src)
    real_target = not _is_zoo(target_src, "target")
    plan: dict[str, DraftIds] = {}
    lines = []
    for role in UPSTREAM:
        if role not in sources:
            continue
        src = _resolve(sources[role], role)
        if real_target and _is_zoo(src, role):
            raise VocabularyMismatch(
                f"the stages cannot cooperate: the target is {target_src} but the {role} is the shipped zoo's, trained on "
                f"synthetic scenes with a 40-word vocabulary, so none of its drafts would be accepted; set {role}_model "
                f"to a model for this target (README, 'Run it with real models') or run_{role}:=false"
            )
        mode = draft_ids if isinstance(draft_ids, str) else draft_ids.get(role, "auto")
        theirs = vocabulary_of(src)
        if theirs is None or target_vocab is None:
            plan[role] = resolve_draft_ids(mode, "", "")  # unknown: the handshake decides at run time
            continue
        plan[role] = resolve_draft_ids(mode, target_vocab.fingerprint, theirs.fingerprint)
        if theirs.fingerprint == target_vocab.fingerprint:
            lines.append(f"{role}: same vocabulary as the target ({target_vocab}): drafts cross as token ids")
        elif plan[role] == "same-vocab":
            raise VocabularyMismatch(
                f"the stages cannot cooperate: the verifier's target uses {target_vocab} but the {role} uses {theirs} "
                f"and draft_ids is same-vocab; set draft_ids to auto or text (drafts cross as text) or give the {role} "
                "a model with the target's tokenizer"
            )
        elif src.startswith(TINY_PREFIX) or target_src.startswith(TINY_PREFIX):
            which = src if src.startswith(TINY_PREFIX) else target_src
            raise VocabularyMismatch(
                f"the stages cannot cooperate: the verifier's target uses {target_vocab} but the {role} uses {theirs}, "
                f"and {which} has no tokenizer to turn its ids into text; give the {role} a model with the target's "
                "tokenizer, or one with a tokenizer of its own"
            )
        else:
            lines.append(
                f"{role}: vocabulary {theirs}, the target's is {target_vocab}: drafts cross as text "
                "and are re-tokenised into the target's ids"
            )
    return CooperationPlan(plan, tuple(lines))
