"""A draft in hand when the verifier prefills rides in the prefill forward: the rows it leaves are the
ones a separate verify forward would give, and scoring that draft afterwards runs no forward."""

from __future__ import annotations

import pytest
import torch

from cascade_sd_ros.core.spec.prompt import media_token_id
from cascade_sd_ros.core.spec.testing import tiny_models


@pytest.fixture(scope="module")
def tiny():  # type: ignore[no-untyped-def]
    return tiny_models(seed=4, vocab_size=48, target_layers=2)


@pytest.mark.parametrize("ctx_seed", [0, 1, 2])
def test_fused_prefill_gives_the_rows_of_prefill_then_score(tiny, ctx_seed: int) -> None:  # type: ignore[no-untyped-def]
    target, ctx = tiny.target, tiny.make_contexts(ctx_seed).target
    target.prefill(ctx)
    draft = target.propose([], 5).token_ids  # the target's own greedy caption: a fully accepted draft
    target.prefill(ctx)
    separate = target.score([], draft)  # [n+1, V]
    target.prefill(ctx, caption=draft)
    before = target.forwards
    fused = target.score([], draft)
    assert target.forwards == before, "scoring the draft that rode in the prefill ran a forward"
    assert fused.shape == separate.shape == (len(draft) + 1, tiny.vocab_size)
    torch.testing.assert_close(fused, separate, rtol=1e-4, atol=1e-4)
    assert torch.equal(fused.argmax(-1), separate.argmax(-1))
    # a rejected draft rolls back like any other: a different continuation is scored correctly
    other = [draft[0], (draft[1] + 1) % (tiny.vocab_size - 2) or 3]
    target.prefill(ctx)
    want = target.score([], other)
    target.prefill(ctx, caption=draft)
    torch.testing.assert_close(target.score([], other), want, rtol=1e-4, atol=1e-4)


def test_a_media_placeholder_in_a_draft_is_fed_after_the_prefill_not_taken_for_pixels(tiny) -> None:  # type: ignore[no-untyped-def]
    target, ctx = tiny.target, tiny.make_contexts(5).target
    placeholder = media_token_id(target.model.config, "video")
    draft = [3, placeholder, 4]
    target.prefill(ctx)
    want = target.score([], draft)
    target.prefill(ctx, caption=draft)  # would be "video features and tokens do not match" if fused
    torch.testing.assert_close(target.score([], draft), want, rtol=1e-4, atol=1e-4)


def test_a_caption_id_outside_the_vocabulary_is_refused_by_name(tiny) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="caption token id 999 outside vocabulary"):
        tiny.target.prefill(tiny.make_contexts(0).target, caption=[3, 999])
