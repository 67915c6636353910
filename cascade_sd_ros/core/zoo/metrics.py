"""Caption accuracy: exact match and per-attribute accuracy (shape, colour, motion) per object.

Objects are compared position by position (the zoo's captions list objects in palette order, see
`data.canonical_spec`). A prediction that does not parse, or lacks an object, counts wrong on every
attribute of the objects it misses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from cascade_sd_ros.core.synth.scene import ObjectDescription, parse_caption

__all__ = ["ATTRIBUTES", "CaptionScore", "score_captions"]

ATTRIBUTES: tuple[str, ...] = ("shape", "colour", "motion")


@dataclass
class CaptionScore:
    """Fractions in [0, 1]; ``n`` captions over ``objects`` true objects."""

    n: int = 0
    objects: int = 0
    exact_match: float = 0.0
    parse_rate: float = 0.0
    attributes: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, float | int]:
        return {
            "n": self.n,
            "exact_match": round(self.exact_match, 4),
            "parse_rate": round(self.parse_rate, 4),
            **{k: round(v, 4) for k, v in self.attributes.items()},
        }


def _parse(text: str) -> list[ObjectDescription] | None:
    try:
        return parse_caption(text)
    except ValueError:
        return None


def score_captions(predicted: Sequence[str], truth: Sequence[str]) -> CaptionScore:
    """Score ``predicted`` captions against ``truth`` (same length, scene grammar)."""
    if len(predicted) != len(truth):
        raise ValueError(f"{len(predicted)} predictions for {len(truth)} true captions")
    if not truth:
        raise ValueError("no captions to score")
    hits = {a: 0 for a in ATTRIBUTES}
    objects = exact = parsed = 0
    for pred, true in zip(predicted, truth):
        exact += pred.strip() == true.strip()
        want = parse_caption(true)
        got = _parse(pred)
        parsed += got is not None
        objects += len(want)
        for i, obj in enumerate(want):
            if got is None or i >= len(got):
                continue
            for a in ATTRIBUTES:
                hits[a] += getattr(got[i], a) == getattr(obj, a)
    n = len(truth)
    return CaptionScore(n, objects, exact / n, parsed / n, {a: hits[a] / objects for a in ATTRIBUTES})
