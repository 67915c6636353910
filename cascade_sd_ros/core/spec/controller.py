"""Adaptive draft length (gamma) from the running acceptance rate.

The per-token acceptance alpha is estimated from decayed counts of accepted tokens and rejections
(each round that stops early is one rejection after `accepted` successes), with a Laplace prior.
gamma is then the length maximising Leviathan et al.'s expected speed-up

    E[tokens per round] / cost per round = (1 - alpha^(gamma+1)) / ((1 - alpha) * (gamma * c + 1)),

where c is the cost of one proposed token relative to one verification forward (set from measured
times with `observe_cost`). With gamma_min = 0 the controller stops drafting when drafting does not
pay (gamma 0 has speed 1), and probes with one token every `probe_every` rounds to notice when the
drafts get better again.
"""

from __future__ import annotations

__all__ = ["DraftLengthController"]


class DraftLengthController:
    """gamma in [gamma_min, gamma_max] from the running acceptance (fixed when adaptive=False)."""

    def __init__(
        self,
        gamma: int = 4,
        *,
        gamma_min: int = 1,
        gamma_max: int = 16,
        cost_ratio: float = 0.1,
        decay: float = 0.8,
        adaptive: bool = True,
        probe_every: int = 8,
    ) -> None:
        if not 0 <= gamma_min <= gamma <= gamma_max:
            raise ValueError(f"need 0 <= gamma_min <= gamma <= gamma_max, got {gamma_min}, {gamma}, {gamma_max}")
        if cost_ratio < 0:
            raise ValueError(f"cost_ratio must be >= 0, got {cost_ratio}")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        if probe_every < 1:
            raise ValueError(f"probe_every must be >= 1, got {probe_every}")
        self.gamma_min, self.gamma_max = gamma_min, gamma_max
        self.cost_ratio = cost_ratio
        self.decay = decay
        self.adaptive = adaptive
        self.probe_every = probe_every
        self._gamma = gamma
        self._idle_rounds = 0  # rounds since the last draft while gamma is 0
        self.cost_smoothing = 0.2
        self._draft_s: float | None = None  # running mean seconds per proposed token
        self._verify_s: float | None = None  # running mean seconds per verification
        self._accepted = 0.0  # decayed count of accepted draft tokens
        self._rejected = 0.0  # decayed count of rejections
        self.total_drafted = 0
        self.total_accepted = 0

    @property
    def gamma(self) -> int:
        """Draft length for the next round (1 on a probe round while drafting is off)."""
        if self._gamma == 0 and self._idle_rounds >= self.probe_every:
            return 1
        return self._gamma

    @property
    def alpha(self) -> float:
        """Estimated per-token acceptance probability (Laplace-smoothed)."""
        return (self._accepted + 1.0) / (self._accepted + self._rejected + 2.0)

    @property
    def acceptance(self) -> float:
        """Fraction of all drafted tokens accepted so far (0 before any draft)."""
        return self.total_accepted / self.total_drafted if self.total_drafted else 0.0

    def observe_cost(self, draft_s_per_token: float, verify_s: float) -> None:
        """Update c from measured times (seconds per proposed token, seconds per verification).

        c is the ratio of two running means (not a mean of ratios), and a single time above 3x its
        running mean counts as 3x: one preempted round on a shared CPU must not switch drafting off.
        """
        if draft_s_per_token < 0 or verify_s <= 0:
            return
        if self._draft_s is None or self._verify_s is None:
            self._draft_s, self._verify_s = draft_s_per_token, verify_s
        else:
            w = self.cost_smoothing
            self._draft_s = (1 - w) * self._draft_s + w * min(draft_s_per_token, 3.0 * self._draft_s)
            self._verify_s = (1 - w) * self._verify_s + w * min(verify_s, 3.0 * self._verify_s)
        self.cost_ratio = self._draft_s / self._verify_s

    def update(self, drafted: int, accepted: int) -> int:
        """Record one round (draft of `drafted` tokens, `accepted` kept) and return the next gamma."""
        if not 0 <= accepted <= drafted:
            raise ValueError(f"need 0 <= accepted <= drafted, got accepted={accepted}, drafted={drafted}")
        self.total_drafted += drafted
        self.total_accepted += accepted
        if drafted == 0:
            self._idle_rounds += 1
            return self.gamma
        self._idle_rounds = 0
        self._accepted = self.decay * self._accepted + accepted
        self._rejected = self.decay * self._rejected + (1.0 if accepted < drafted else 0.0)
        if self.adaptive:
            self._gamma = self._best_gamma(self.alpha)
        return self.gamma

    def _best_gamma(self, alpha: float) -> int:
        best, best_speed = self.gamma_min, -1.0
        for g in range(self.gamma_min, self.gamma_max + 1):
            tokens = (1.0 - alpha ** (g + 1)) / (1.0 - alpha) if alpha < 1.0 else float(g + 1)
            speed = tokens / (g * self.cost_ratio + 1.0)
            if speed > best_speed + 1e-12:
                best, best_speed = g, speed
        return best
