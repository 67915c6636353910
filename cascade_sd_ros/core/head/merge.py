"""Modality-aware draft merging (the research note's Gap 2), lossless like any draft.

The stages see different things: the event drafter motion and shape (colour at chance), the draft
head whatever the target's own states hold. `MergedProposer` drafts one token at a time from every
source for the same prefix and keeps, per position, the token of the source whose *measured*
acceptance for that token's class (colour / shape / motion / other word) is highest; every source
then continues from the chosen token. The choice only changes which draft the target verifies, never
the output. Each proposal's sources are logged, so a run can say which stage supplied each accepted
token (`accepted_sources`), and `class_acceptance` measures the per-class table from such logs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import torch

from cascade_sd_ros.core.spec.adapter import ModelAdapter, Proposal, StageContext
from cascade_sd_ros.core.synth.scene import COLOURS, MOTIONS, SHAPES

__all__ = ["TOKEN_CLASSES", "token_classes", "MergedProposer", "class_acceptance", "accepted_sources"]

TOKEN_CLASSES: tuple[str, ...] = ("colour", "shape", "motion", "other")


def token_classes(vocab: Mapping[str, int]) -> dict[int, str]:
    """Token id -> class, from the tokenizer's token -> id map (words of the scene grammar)."""
    words = {**{c: "colour" for c in COLOURS}, **{s: "shape" for s in SHAPES}, **{m: "motion" for m in MOTIONS}}
    return {int(i): words.get(tok.lstrip("Ġ▁").lower(), "other") for tok, i in vocab.items()}


class MergedProposer:
    """A proposing stage over `sources` (each a ModelAdapter taking the same context).

    table[source name][class]: that source's measured acceptance for tokens of the class (a missing
    entry counts 0); the first source wins ties. With one source it is that source, logged.
    """

    def __init__(
        self,
        sources: Sequence[ModelAdapter],
        classes: Mapping[int, str],
        table: Mapping[str, Mapping[str, float]] | None = None,
        *,
        name: str = "merged",
    ) -> None:
        if not sources:
            raise ValueError("MergedProposer needs at least one source")
        first = sources[0]
        for s in sources[1:]:
            if s.vocab_size != first.vocab_size or s.eos_token_id != first.eos_token_id:
                raise ValueError(f"merged sources {first.name!r} and {s.name!r} do not share one vocabulary")
        self.sources = list(sources)
        self.classes = dict(classes)
        self.table = {k: dict(v) for k, v in (table or {}).items()}
        self.name = name
        self.modality = first.modality
        self.log: list[tuple[list[int], list[str]]] = []  # per proposal: tokens and their sources

    @property
    def vocab_size(self) -> int:
        return self.sources[0].vocab_size

    @property
    def eos_token_id(self) -> int | None:
        return self.sources[0].eos_token_id

    @property
    def device(self) -> torch.device:
        return self.sources[0].device

    @property
    def forwards(self) -> int:
        return sum(int(getattr(s, "forwards", 0)) for s in self.sources)

    def prefill(self, context: StageContext) -> None:
        for s in self.sources:
            s.prefill(context)

    def _score(self, source: ModelAdapter, token: int) -> float:
        return self.table.get(source.name, {}).get(self.classes.get(token, "other"), 0.0)

    def propose(
        self,
        prefix: Sequence[int],
        k: int,
        *,
        temperature: float = 0.0,
        generator: torch.Generator | None = None,
        return_q: bool = False,
    ) -> Proposal:
        if temperature > 0 or return_q:
            raise ValueError("merged drafts are greedy token ids (verify with a lossless one-hot rule)")
        if len(self.sources) == 1:
            prop = self.sources[0].propose(prefix, k)
            self.log.append((list(prop.token_ids), [self.sources[0].name] * len(prop.token_ids)))
            return prop
        draft: list[int] = []
        probs: list[float] = []
        names: list[str] = []
        eos = self.eos_token_id
        for _ in range(k):
            picks = [s.propose([*prefix, *draft], 1) for s in self.sources]
            best = max(range(len(picks)), key=lambda i: (self._score(self.sources[i], picks[i].token_ids[0]), -i))
            draft.append(picks[best].token_ids[0])
            probs.append(picks[best].probs[0])
            names.append(self.sources[best].name)
            if draft[-1] == eos:
                break
        self.log.append((draft, names))
        return Proposal(draft, probs, None, False)

    def score(self, prefix: Sequence[int], draft: Sequence[int]) -> torch.Tensor:
        return self.sources[0].score(prefix, draft)


def accepted_sources(log: Sequence[tuple[list[int], list[str]]], accepted: Sequence[int]) -> Counter[str]:
    """Which source supplied each accepted token: proposal r's first accepted[r] tokens."""
    out: Counter[str] = Counter()
    for (_, names), a in zip(log, accepted):
        out.update(names[:a])
    return out


def class_acceptance(
    log: Sequence[tuple[list[int], list[str]]], accepted: Sequence[int], classes: Mapping[int, str]
) -> dict[str, dict[str, float]]:
    """Per source and token class: accepted / scored (tokens after a rejection were never judged)."""
    hit: Counter[tuple[str, str]] = Counter()
    seen: Counter[tuple[str, str]] = Counter()
    for (tokens, names), a in zip(log, accepted):
        for i, (t, n) in enumerate(zip(tokens, names)):
            if i > a:
                break
            key = (n, classes.get(t, "other"))
            seen[key] += 1
            hit[key] += int(i < a)
    table: dict[str, dict[str, float]] = {}
    for (n, c), count in seen.items():
        table.setdefault(n, {})[c] = hit[(n, c)] / count
    return table
