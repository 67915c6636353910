"""The engine on a CUDA device: exactness and sampling with a device generator (skips without CUDA)."""

from __future__ import annotations

import pytest
import torch

from cascade_sd_ros.core.spec import CascadeDecoder, target_only_greedy, verify_sample
from cascade_sd_ros.core.spec.testing import tiny_models

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

MAX_NEW = 12


@pytest.fixture(scope="module")
def tm():
    # float64: batched scoring and one-token decoding use different kernels; no argmax may flip
    return tiny_models(0, vocab_size=64, aligned=True, dtype=torch.float64, device="cuda")


def test_lossless_greedy_equals_target_on_cuda(tm) -> None:
    for seed in range(8):
        ctx = tm.make_contexts(seed)
        ref = target_only_greedy(tm.target, ctx.target, MAX_NEW)
        two = CascadeDecoder([tm.drafter, tm.target], gamma=3).generate([ctx.drafter, ctx.target], MAX_NEW)
        three = CascadeDecoder([tm.drafter, tm.refiner, tm.target], gamma=(3, 4)).generate(
            [ctx.drafter, ctx.refiner, ctx.target], MAX_NEW
        )
        assert two.token_ids == ref and three.token_ids == ref
        assert all(r.target_forwards == 1 for r in three.stats.rounds)


def test_sampling_takes_a_generator_on_the_device(tm) -> None:
    ctx = tm.make_contexts(1)
    runs = []
    for _ in range(2):  # fresh decoders: the same seed gives the same caption
        decoder = CascadeDecoder([tm.drafter, tm.target], "lossless-sample", gamma=3, adaptive=False)
        g = torch.Generator(device="cuda").manual_seed(0)
        runs.append(decoder.generate([ctx.drafter, ctx.target], MAX_NEW, generator=g).token_ids)
    first, again = runs
    assert first == again and all(0 <= t < tm.vocab_size for t in first)
    with pytest.raises(ValueError, match="generator"):
        verify_sample(tm.target, [], [3], max_new_tokens=4, generator=torch.Generator())
