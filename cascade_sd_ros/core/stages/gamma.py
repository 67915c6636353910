"""A stage's draft length, adapted to how much of its drafts the verifier accepts (ROS-free).

The schedule is the one transformers' assistant model uses ("heuristic" ``num_assistant_tokens``):
after a draft the verifier accepted whole, draft two tokens more next time; after one it cut short,
one fewer. Verifying a longer draft costs the target little (one forward either way), so a stage
whose drafts keep landing should draft further; one whose drafts keep failing wastes its own model's
passes and holds newer drafts back. Bounded to ``[1, ceiling]``; ``ceiling == start`` keeps it fixed.
"""

from __future__ import annotations

GROW_ON_FULL = 2  # tokens added after a draft accepted whole
SHRINK_ON_MISS = 1  # tokens taken off after a draft cut short


class AdaptiveGamma:
    """Not thread-safe: its stage holds it under the stage's lock."""

    def __init__(self, start: int, ceiling: int) -> None:
        self.start, self.ceiling = self._check(start, ceiling)
        self.value = self.start
        self.grown = 0  # times the length went up / down (diagnostics)
        self.shrunk = 0

    @staticmethod
    def _check(start: int, ceiling: int) -> tuple[int, int]:
        if start < 1 or ceiling < start:
            raise ValueError(f"need 1 <= gamma <= gamma_max, got gamma {start}, gamma_max {ceiling}")
        return int(start), int(ceiling)

    def reset(self, start: int, ceiling: int) -> None:
        """New bounds (a live parameter change): the length starts over from ``start``."""
        self.start, self.ceiling = self._check(start, ceiling)
        self.value = self.start

    def observe(self, accepted: int, drafted: int) -> None:
        """The verifier checked ``drafted`` of this stage's tokens and accepted ``accepted``."""
        if drafted <= 0:
            return
        if accepted >= drafted:
            new = min(self.ceiling, self.value + GROW_ON_FULL)
            self.grown += new > self.value
        else:
            new = max(1, self.value - SHRINK_ON_MISS)
            self.shrunk += new < self.value
        self.value = new
