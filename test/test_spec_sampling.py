"""lossless-sample keeps the target's distribution: seeded chi-square tests on a vocabulary of 8.

The exact target distribution (first token, and two-token sequences) is computed from the target's
logits; speculative sampling is run many times with an explicit torch.Generator. Each test also
injects a deliberately broken rule (resampling from p instead of the residual norm(max(0, p - q)),
the classic bug) and checks that the same statistic rejects it, so the test can fail.

Most runs use `TableLM` (seeded logits tables, no network) so thousands of rounds take seconds; one
test runs the real transformers adapters.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
import torch

from cascade_sd_ros.core.spec import CascadeDecoder, HFAdapter, StageContext, draft_step, rules, verify_sample
from cascade_sd_ros.core.spec.testing import EOS_ID, TableLM, tiny_causal_lm

VOCAB = 8
CTX = StageContext((1, 5, 6, 3), None, "text")
Z_1E6 = 4.753  # one-sided normal quantile for p = 1e-6


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _sharp_lm(seed: int, name: str, scale: float) -> HFAdapter:
    """A 1-layer LM whose next-token distributions are peaked (random models are near uniform)."""
    lm = tiny_causal_lm(seed, vocab_size=VOCAB, hidden_size=16, layers=1, dtype=torch.float64, name=name)
    with torch.no_grad():
        lm.model.lm_head.weight.mul_(scale)
    lm.prefill(CTX)
    return lm


@pytest.fixture(scope="module")
def tables() -> tuple[TableLM, TableLM, TableLM]:
    """Target with a refiner close to it and a drafter further away (TV ~0.35 at the first token: power)."""
    target = TableLM(31, VOCAB, scale=1.5, name="target")
    refiner = TableLM(32, VOCAB, scale=0.8, base=target, name="refiner")
    drafter = TableLM(36, VOCAB, scale=1.5, base=target, name="drafter")
    for m in (target, refiner, drafter):
        m.prefill(CTX)
    return drafter, refiner, target


def _chi2_rejects(counts: Counter, probs: dict[tuple[int, ...], float], n: int) -> tuple[bool, float, float]:
    """Pearson chi-square against `probs` (bins with expected < 5 pooled); True if p < 1e-6."""
    stat, pooled_obs, pooled_exp, bins = 0.0, 0, 0.0, 0
    for key, pr in probs.items():
        exp = pr * n
        if exp < 5:
            pooled_obs += counts.get(key, 0)
            pooled_exp += exp
            continue
        stat += (counts.get(key, 0) - exp) ** 2 / exp
        bins += 1
    if pooled_exp > 0:
        stat += (pooled_obs - pooled_exp) ** 2 / max(pooled_exp, 1e-9)
        bins += 1
    assert sum(counts.values()) == n and set(counts) <= set(probs), "samples outside the support"
    k = bins - 1
    # Wilson-Hilferty approximation of the chi-square quantile at p = 1e-6
    limit = k * (1 - 2 / (9 * k) + Z_1E6 * math.sqrt(2 / (9 * k))) ** 3
    return stat > limit, stat, limit


def _first_token_probs(target: HFAdapter | TableLM, temperature: float) -> dict[tuple[int, ...], float]:
    p = torch.softmax(target.next_logits([]) / temperature, dim=-1)
    return {(v,): float(p[v]) for v in range(VOCAB)}


def _two_token_probs(target: HFAdapter | TableLM, temperature: float) -> dict[tuple[int, ...], float]:
    p0 = torch.softmax(target.next_logits([]) / temperature, dim=-1)
    out: dict[tuple[int, ...], float] = {}
    for a in range(VOCAB):
        if a == EOS_ID:
            out[(a,)] = float(p0[a])
            continue
        p1 = torch.softmax(target.next_logits([a]) / temperature, dim=-1)
        for b in range(VOCAB):
            out[(a, b)] = float(p0[a] * p1[b])
    return out


def _broken_residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return p  # BUG on purpose: resample from p, ignoring what q already covered


def _check(
    sampler: Callable[[], Iterator[tuple[int, ...]]], probs: dict, n: int, monkeypatch, with_broken: bool = True
) -> None:
    counts = Counter(sampler())
    rejected, stat, limit = _chi2_rejects(counts, probs, n)
    assert not rejected, f"correct rule rejected: chi2 {stat:.1f} > {limit:.1f}"
    if not with_broken:
        return
    with monkeypatch.context() as m:
        m.setattr(rules, "residual_distribution", _broken_residual)
        counts = Counter(sampler())
    rejected, stat, limit = _chi2_rejects(counts, probs, n)
    assert rejected, f"broken rule not detected: chi2 {stat:.1f} <= {limit:.1f}"


@pytest.mark.parametrize("one_hot", [False, True], ids=["general-q", "one-hot"])
def test_first_token_has_target_distribution(tables, one_hot: bool, monkeypatch) -> None:
    drafter, _, target = tables
    temperature, n = 1.0, 2500
    probs = _first_token_probs(target, temperature)
    # the drafter must disagree with the target for the test to have power
    q0 = torch.softmax(drafter.next_logits([]), dim=-1)
    assert 0.5 * float((q0 - torch.tensor([probs[(v,)] for v in range(VOCAB)])).abs().sum()) > 0.2

    def sampler() -> Iterator[tuple[int, ...]]:
        g = torch.Generator().manual_seed(1234)
        for _ in range(n):
            prop = draft_step(
                drafter, [], 2, temperature=0.0 if one_hot else temperature, generator=g, return_q=not one_hot
            )
            res = verify_sample(
                target,
                [],
                prop.token_ids,
                max_new_tokens=8,
                generator=g,
                temperature=temperature,
                q=None if one_hot else prop.q,
            )
            yield (res.token_ids[0],)

    _check(sampler, probs, n, monkeypatch)


@pytest.mark.parametrize(
    "stages,draft_sampling,temperature,with_broken",
    [(2, True, 1.0, False), (2, False, 0.7, False), (3, True, 0.8, True), (3, False, 1.0, True)],
    ids=["2-stage-general-q", "2-stage-one-hot-T0.7", "3-stage-general-q-T0.8", "3-stage-one-hot"],
)
def test_two_token_sequences_have_target_distribution(
    tables, stages: int, draft_sampling: bool, temperature: float, with_broken: bool, monkeypatch
) -> None:
    """Two-stage rules are also covered by the first-token tests' broken-rule checks."""
    drafter, refiner, target = tables
    n = 2500
    probs = _two_token_probs(target, temperature)
    chain = [drafter, target] if stages == 2 else [drafter, refiner, target]
    decoder = CascadeDecoder(
        chain,
        "lossless-sample",
        gamma=2 if stages == 2 else (2, 2),
        adaptive=False,
        temperature=temperature,
        draft_sampling=draft_sampling,
    )

    def sampler() -> Iterator[tuple[int, ...]]:
        g = torch.Generator().manual_seed(99)
        for _ in range(n):
            result = decoder.generate(None, 2, generator=g)
            assert result.mode == "lossless-sample" and result.lossless
            yield tuple(result.token_ids)

    _check(sampler, probs, n, monkeypatch, with_broken)


def test_real_transformers_adapters_sample_the_target_distribution() -> None:
    """The HF adapter path (sampling with a generator, scoring through the KV cache) end to end."""
    target = _sharp_lm(21, "target", 6.0)
    drafter = _sharp_lm(22, "drafter", 6.0)
    n = 500
    probs = _first_token_probs(target, 1.0)
    decoder = CascadeDecoder([drafter, target], "lossless-sample", gamma=2, adaptive=False)
    g = torch.Generator().manual_seed(5)
    counts = Counter(tuple(decoder.generate(None, 1, generator=g).token_ids) for _ in range(n))
    rejected, stat, limit = _chi2_rejects(counts, probs, n)
    assert not rejected, f"chi2 {stat:.1f} > {limit:.1f}"
