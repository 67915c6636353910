"""lossless-greedy output equals the target's own greedy output, token for token, whatever the drafts.

Tiny random models in float64 (so batched scoring and one-token decoding cannot flip an argmax
through rounding). The reference is the target alone (`target_only_greedy`), itself checked against
transformers' `generate(do_sample=False)` on a subset.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import pytest
import torch

from cascade_sd_ros.core.spec import (
    CascadeDecoder,
    align_draft,
    target_only_greedy,
    verify_greedy,
)
from cascade_sd_ros.core.spec.adapter import StageContext
from cascade_sd_ros.core.spec.testing import EOS_ID, ScriptedDrafter, TinyModels, tiny_causal_lm, tiny_models

MAX_NEW = 12
PROMPTS_PER_SET = 50  # x 2 model sets = 100 prompts

Policy = Callable[[Sequence[int], int], Sequence[int]]


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model_sets() -> list[TinyModels]:
    return [
        tiny_models(0, vocab_size=64, aligned=True, dtype=torch.float64),
        tiny_models(1, vocab_size=40, aligned=False, dtype=torch.float64, target_layers=1, num_frames=8),
    ]


def _perfect(ref: list[int]) -> Policy:
    return lambda prefix, k: ref[len(prefix) : len(prefix) + k]


def _random(vocab: int, seed: int) -> Policy:
    rng = random.Random(seed)
    return lambda prefix, k: [rng.randrange(vocab) for _ in range(k)]


def _adversarial(ref: list[int], vocab: int, seed: int) -> Policy:
    """Right tokens with one wrong (off by one, or an early EOS) at a random place, or too many."""
    rng = random.Random(seed)

    def policy(prefix: Sequence[int], k: int) -> list[int]:
        good = list(ref[len(prefix) : len(prefix) + k + 3])  # may run past the budget
        if not good:
            return [EOS_ID] * k
        i = rng.randrange(len(good))
        good[i] = EOS_ID if rng.random() < 0.3 and good[i] != EOS_ID else (good[i] + 1) % vocab
        return good

    return policy


def _stages_and_contexts(tm: TinyModels, seed: int) -> tuple[tuple[StageContext, ...], list[int]]:
    ctx = tm.make_contexts(seed)
    tm.drafter.prefill(ctx.drafter)
    tm.refiner.prefill(ctx.refiner)
    ref = target_only_greedy(tm.target, ctx.target, MAX_NEW)
    return (ctx.drafter, ctx.refiner, ctx.target), ref


def test_lossless_greedy_equals_target_for_real_perfect_random_and_adversarial_drafts(
    model_sets: list[TinyModels],
) -> None:
    n_prompts = 0
    ended_by_eos = 0
    partial_acceptance = 0
    for set_idx, tm in enumerate(model_sets):
        for seed in range(PROMPTS_PER_SET):
            _, ref = _stages_and_contexts(tm, 1000 * set_idx + seed)
            n_prompts += 1
            ended_by_eos += ref[-1] == EOS_ID
            # Stages stay prefilled: adapters are keyed on token sequences, so decoders can share them.
            cases: dict[str, CascadeDecoder] = {
                "2-stage": CascadeDecoder([tm.drafter, tm.target], gamma=3),
                "3-stage": CascadeDecoder([tm.drafter, tm.refiner, tm.target], gamma=(3, 4)),
            }
            policies = {
                "perfect": _perfect(ref),
                "random": _random(tm.vocab_size, seed),
                "adversarial": _adversarial(ref, tm.vocab_size, seed),
            }
            for name, policy in policies.items():
                cases[f"{name}-2"] = CascadeDecoder([ScriptedDrafter(policy, tm.vocab_size, name=name), tm.target])
            # under a real refiner, one scripted policy per prompt in turn (keeps the file fast)
            name = list(policies)[seed % 3]
            scripted = ScriptedDrafter(policies[name], tm.vocab_size, name=name)
            cases[f"{name}-3"] = CascadeDecoder([scripted, tm.refiner, tm.target], gamma=(4, 5), adaptive=False)
            for name, decoder in cases.items():
                result = decoder.generate(None, MAX_NEW)
                assert result.token_ids == ref, f"set {set_idx} prompt {seed} {name}"
                assert result.mode == "lossless-greedy" and result.lossless
                assert result.stats.lossy_tokens == 0
                if name == "perfect-2":
                    # a perfect draft is accepted whole: far fewer target forwards than tokens
                    assert result.stats.stages[0].acceptance == 1.0
                    assert result.stats.target_forwards < len(ref) or len(ref) <= 2
                acc = result.stats.stages[0].acceptance
                partial_acceptance += acc is not None and 0.0 < acc < 1.0
    assert n_prompts >= 100
    # the test must exercise both ends and mixed rounds, or it proves little
    assert ended_by_eos > 0 and partial_acceptance > 50


def test_reference_equals_transformers_generate(model_sets: list[TinyModels]) -> None:
    for set_idx, tm in enumerate(model_sets):
        for seed in range(6):
            ctx = tm.make_contexts(1000 * set_idx + seed).target
            ref = target_only_greedy(tm.target, ctx, MAX_NEW)
            out = tm.target.model.generate(
                input_ids=torch.tensor([ctx.input_ids]),
                pixel_values_videos=ctx.pixel_values,
                max_new_tokens=MAX_NEW,
                do_sample=False,
            )
            assert out[0, len(ctx.input_ids) :].tolist() == ref
            spec = CascadeDecoder([tm.drafter, tm.refiner, tm.target]).generate(
                [tm.make_contexts(1000 * set_idx + seed).drafter, tm.make_contexts(1000 * set_idx + seed).refiner, ctx],
                MAX_NEW,
            )
            assert spec.token_ids == ref


def test_plain_causal_lms_equal_transformers_generate() -> None:
    target = tiny_causal_lm(5, vocab_size=50, layers=2, dtype=torch.float64, name="target")
    drafter = tiny_causal_lm(6, vocab_size=50, layers=1, dtype=torch.float64, name="drafter")
    for seed in range(5):
        ids = tuple(torch.randint(3, 50, (5,), generator=torch.Generator().manual_seed(seed)).tolist())
        ctx = StageContext(ids, None, "text")
        out = target.model.generate(input_ids=torch.tensor([ids]), max_new_tokens=MAX_NEW, do_sample=False)
        result = CascadeDecoder([drafter, target], gamma=3).generate([ctx, ctx], MAX_NEW)
        assert result.token_ids == out[0, len(ids) :].tolist()


def test_step_level_verifier_with_stale_long_and_eos_drafts_equals_target(model_sets: list[TinyModels]) -> None:
    """The protocol the nodes drive: drafts as token ids only, made for old prefixes, any length."""
    tm = model_sets[0]
    rng = random.Random(7)
    for seed in range(10):
        _, ref = _stages_and_contexts(tm, 5000 + seed)
        committed: list[int] = []
        history: list[list[int]] = [[]]  # prefixes drafts may have been made for (stale ones too)
        rounds = 0
        while True:
            base = rng.choice(history[-3:])
            true_next = ref[len(base) :] if ref[: len(base)] == base else []
            kind = rng.randrange(4)
            if kind == 0:
                draft = true_next[: rng.randrange(0, 12)] + [rng.randrange(tm.vocab_size)]
            elif kind == 1:
                draft = [rng.randrange(tm.vocab_size) for _ in range(rng.randrange(0, 5))]
            elif kind == 2:
                draft = list(true_next) + [EOS_ID] * 5  # runs past the budget
            else:
                draft = true_next[:2] + [EOS_ID] + true_next[3:6]
            usable = align_draft(committed, base, draft)
            res = verify_greedy(tm.target, committed, usable, max_new_tokens=MAX_NEW)
            assert 0 <= res.accepted <= len(usable)
            assert len(res.token_ids) >= 1
            committed.extend(res.token_ids)
            history.append(list(committed))
            rounds += 1
            if res.finished:
                break
            assert rounds <= MAX_NEW
        assert committed == ref
        # a finished caption takes no more tokens
        again = verify_greedy(tm.target, committed, [3, 4], max_new_tokens=MAX_NEW)
        assert again.token_ids == [] and again.finished
