"""Whether checking a stage's draft pays (ROS-free): the verifier's choice per step.

A verification with a draft of ``k`` tokens costs more than a step alone (a wider forward, and on a
shared CPU the stage's own model competing for it); it pays when the tokens it commits per second
beat decoding alone's: ``(accepted + 1) / cost_with_draft >= 1 / cost_alone``. :class:`DraftValue`
keeps, per stage, EMAs of the tokens accepted per checked draft and of a checked step's cost, and
one EMA of a step alone's. A stage whose drafts do not pay is skipped, but one decision in
``probe_every`` still checks its draft, so a stage that starts to agree (a new scene, a better
model) is taken up again. Skipping never changes an output: the verifier decodes alone instead.

It is the verifier's one record of what verifications yielded: the draft wait
(:class:`~.verifier.DraftWait`) asks it what a stage's draft has saved (:meth:`DraftValue.saved_s`).

Not thread-safe: the verifier stage uses it under its lock.
"""

from __future__ import annotations

from collections.abc import Iterable

from cascade_sd_ros.core.stages.ema import ema

__all__ = ["DraftValue"]


class DraftValue:
    """Per-stage worth of a draft, measured (see the module's docstring)."""

    def __init__(self, alpha: float = 0.2, probe_every: int = 8) -> None:
        if not 0.0 < alpha <= 1.0 or probe_every < 1:
            raise ValueError(f"need 0 < alpha <= 1 and probe_every >= 1, got {alpha}, {probe_every}")
        self.alpha = alpha
        self.probe_every = probe_every
        self.accepted: dict[int, float] = {}  # stage -> draft tokens accepted per checked draft
        self.cost_s: dict[int, float] = {}  # stage -> one verification with its draft
        self.alone_s: float | None = None  # one step without a draft
        self.skipped: dict[int, int] = {}  # stage -> decisions not to check its draft
        self.probes: dict[int, int] = {}  # stage -> drafts checked although they did not pay
        self._not_paying: dict[int, int] = {}  # stage -> decisions taken while its drafts did not pay

    def verified(self, stage: int | None, accepted: int, drafted: int, step_s: float) -> None:
        """A verification's outcome: ``stage``'s draft of ``drafted`` tokens, ``accepted`` kept, in
        ``step_s`` (``stage`` None or ``drafted`` 0: a step alone)."""
        if stage is None or drafted <= 0:
            self.alone_s = ema(self.alone_s, step_s, self.alpha)
            return
        self.accepted[stage] = ema(self.accepted.get(stage), float(accepted), self.alpha)
        self.cost_s[stage] = ema(self.cost_s.get(stage), step_s, self.alpha)

    def saved_s(self, stages: Iterable[int]) -> float | None:
        """What a draft from the best of ``stages`` has saved on average: its accepted tokens times a
        step alone (decoding alone would have needed one step each; a checked step's cost where no
        step alone was measured yet). None while none of them was checked."""
        saved = [
            self.accepted[s] * (self.alone_s if self.alone_s is not None else self.cost_s[s])
            for s in stages
            if s in self.accepted
        ]
        return max(saved) if saved else None

    def pays(self, stage: int) -> bool:
        """Whether checking ``stage``'s drafts has committed tokens faster than a step alone (True
        until both are measured)."""
        accepted, cost = self.accepted.get(stage), self.cost_s.get(stage)
        if accepted is None or cost is None or self.alone_s is None:
            return True
        return (accepted + 1.0) * self.alone_s >= cost

    def use(self, stage: int) -> bool:
        """Whether to check ``stage``'s draft at this step: when it pays, and now and then when it
        does not (a probe, so its worth is measured again)."""
        if self.pays(stage):
            return True
        n = self._not_paying.get(stage, 0) + 1
        self._not_paying[stage] = n
        if n % self.probe_every == 0:
            self.probes[stage] = self.probes.get(stage, 0) + 1
            return True
        self.skipped[stage] = self.skipped.get(stage, 0) + 1
        return False
