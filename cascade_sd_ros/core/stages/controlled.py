"""Controlled-acceptance drafts, for benchmarks only (issue 15's GPU table, the nodes' speed against
acceptance on any machine).

A model with random weights (a 7B-shaped target, a 1.1B-shaped drafter on a GPU) agrees with nothing,
and the zoo's stages agree as much as the zoo's scenes let them: neither says how the nodes pay at a
chosen acceptance. :class:`ControlledAcceptance` knows the target's greedy caption of each round (a
reference file the bench writes from the bare target) and rewrites a stage's draft so each token is
the target's with probability ``alpha``, another token otherwise. The stage still runs its own model
first, so a draft costs what that model costs; only the tokens are replaced.

Each (round, position, stage) draws once: a stage that drafts the same position again (after a
commit, a roll-back, or on a prefix of its own that is already wrong) gets the same verdict, as a
model that is wrong about a token stays wrong, so alpha 0 never yields an accepted token. The
verifier is untouched, so outputs stay exactly the target's: in greedy modes the rewritten drafts
are checked like any other. (In sampling modes the reference is not what the target samples, and
the figure would not mean ``alpha``.)
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = ["ControlledAcceptance", "REFERENCE_SCHEMA", "write_reference"]

REFERENCE_SCHEMA = "cascade_sd_ros/reference-captions/1"


def write_reference(path: Path, captions: Mapping[int, Sequence[int]]) -> None:
    """The reference file: the target's greedy caption (token ids) of each round, by its time T (ns)."""
    body = {"schema": REFERENCE_SCHEMA, "captions": {str(int(t)): [int(x) for x in ids] for t, ids in captions.items()}}
    path.write_text(json.dumps(body))


class ControlledAcceptance:
    """Rewrites one stage's drafts toward the reference captions: each token right with probability
    ``alpha`` (see the module's docstring)."""

    def __init__(
        self, alpha: float, captions: Mapping[int, Sequence[int]], vocab_size: int, *, stage: int, seed: int = 0
    ) -> None:
        if not (math.isfinite(alpha) and 0.0 <= alpha <= 1.0):
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
        self.alpha = alpha
        self.captions = {int(t): [int(x) for x in ids] for t, ids in captions.items()}
        self.vocab_size = vocab_size
        self.stage = stage
        self.seed = seed
        self.rewritten = 0  # drafts rewritten
        self.right = 0  # their tokens set to the reference's
        self.unknown_rounds = 0  # drafts of rounds the reference does not hold (left as the model made them)

    @staticmethod
    def load(path: str | Path, alpha: float, vocab_size: int, *, stage: int, seed: int = 0) -> ControlledAcceptance:
        """From a reference file; ValueError naming the file and what is wrong with it."""
        where = Path(path)
        try:
            body = json.loads(where.read_text())
        except OSError as exc:
            raise ValueError(f"reference captions {where}: cannot read ({exc.strerror or exc})") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"reference captions {where}: not JSON ({exc})") from None
        if not isinstance(body, dict) or body.get("schema") != REFERENCE_SCHEMA:
            raise ValueError(f"reference captions {where}: not a {REFERENCE_SCHEMA} file")
        raw = body.get("captions")
        if not isinstance(raw, dict):
            raise ValueError(f"reference captions {where}: 'captions' must map round times to token ids")
        captions: dict[int, list[int]] = {}
        for key, ids in raw.items():
            ok = isinstance(ids, list) and all(isinstance(x, int) and 0 <= x < vocab_size for x in ids)
            if not key.lstrip("-").isdigit() or not ok:
                raise ValueError(
                    f"reference captions {where}: round {key!r} must be an integer time with token ids in [0, {vocab_size})"
                )
            captions[int(key)] = ids
        return ControlledAcceptance(alpha, captions, vocab_size, stage=stage, seed=seed)

    def _draw(self, t_ns: int, position: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, t_ns % 2**63, position, self.stage])

    def __call__(self, t_ns: int, prefix: Sequence[int], tokens: Sequence[int]) -> list[int]:
        """The draft of ``tokens`` after ``prefix`` for the round at ``t_ns``, rewritten."""
        truth = self.captions.get(t_ns)
        if truth is None:
            self.unknown_rounds += 1
            return list(tokens)
        start = len(prefix)
        out: list[int] = []
        for i in range(min(len(tokens), len(truth) - start)):  # nothing to draft beyond the caption's end
            want = truth[start + i]
            rng = self._draw(t_ns, start + i)
            if rng.random() < self.alpha:
                out.append(want)
                self.right += 1
            else:
                out.append(int((want + 1 + rng.integers(self.vocab_size - 1)) % self.vocab_size))
        self.rewritten += 1
        return out
