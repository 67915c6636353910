"""Step functions, adapters, rules and corner cases of the speculative decoding engine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cascade_sd_ros.core.spec import (
    CascadeDecoder,
    DraftLengthController,
    HFAdapter,
    LevelRule,
    StageContext,
    align_draft,
    cache_ops,
    draft_step,
    load_adapter,
    refine_step,
    rules,
    target_only_greedy,
    verify_greedy,
    verify_sample,
)
from cascade_sd_ros.core.spec.preprocess import make_image_processor, preprocess_image, preprocess_video
from cascade_sd_ros.core.spec.prompt import build_prompt_ids, expand_placeholder, media_token_count
from cascade_sd_ros.core.spec.testing import EOS_ID, ScriptedDrafter, TableLM, TinyModels, tiny_causal_lm, tiny_models

MAX_NEW = 12


@pytest.fixture(scope="module")
def tm() -> TinyModels:
    torch.set_num_threads(1)
    return tiny_models(3, vocab_size=48, aligned=True, dtype=torch.float64)


@pytest.fixture
def ref(tm: TinyModels) -> list[int]:
    ctx = tm.make_contexts(0)
    tm.drafter.prefill(ctx.drafter)
    tm.refiner.prefill(ctx.refiner)
    return target_only_greedy(tm.target, ctx.target, MAX_NEW)


# ------------------------------------------------------------------ contexts, prompts, loading
def test_stage_context_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="modality"):
        StageContext((1, 2), None, "audio")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        StageContext((), None, "text")
    with pytest.raises(ValueError, match="rank 5"):
        StageContext((1, 2), torch.zeros(1, 3, 16, 16), "video")
    with pytest.raises(ValueError, match="no pixel_values"):
        StageContext((1, 2), torch.zeros(1, 3, 16, 16), "text")


def test_placeholder_expansion_matches_the_model(tm: TinyModels) -> None:
    # 16 px / 8 px patches = 4 patches; video keeps CLS per frame, image drops it
    assert media_token_count(tm.target.model.config, "video", 8) == 8 * (4 + 1)
    assert media_token_count(tm.refiner.model.config, "image") == 4
    assert tm.target.expected_media_tokens(8) == 40

    class Tok:
        def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
            table = {"USER:": 5, "<video>": 47, "<image>": 46, "ASSISTANT:": 6}
            return [1] + [table.get(w, 7) for w in text.replace("\n", " ").split()]

    ids = build_prompt_ids(Tok(), "what moves?", "video", tm.target.model.config, num_frames=8)
    assert ids.count(47) == 40 and ids[:2] == (1, 5) and ids[-1] == 6
    with pytest.raises(ValueError, match="exactly one placeholder"):
        expand_placeholder([1, 2, 3], 47, 5)


def test_placeholder_counts_of_the_real_video_llava_7b_config() -> None:
    """Video-LLaVA-7B-hf: CLIP ViT-L/14 at 224 px -> 256 patches; its config says 2056 video positions."""
    from transformers import VideoLlavaConfig  # noqa: PLC0415

    cfg = VideoLlavaConfig()  # defaults are the 7B checkpoint's
    assert media_token_count(cfg, "video", 8) == cfg.video_seq_length == 2056
    assert media_token_count(cfg, "image") == cfg.image_seq_length == 256


def test_prefill_rejects_wrong_placeholder_count_and_modality(tm: TinyModels) -> None:
    ctx = tm.make_contexts(1).target
    video_id = tm.target.model.config.video_token_index
    cut = ctx.input_ids.index(video_id)
    short = StageContext(ctx.input_ids[:cut] + ctx.input_ids[cut + 1 :], ctx.pixel_values, "video")
    with pytest.raises(ValueError, match="<video> tokens"):
        tm.target.prefill(short)
    with pytest.raises(ValueError, match="takes image contexts"):
        tm.refiner.prefill(ctx)


def test_vocabulary_mismatch_is_a_clear_error() -> None:
    a = tiny_causal_lm(0, vocab_size=40, name="target")
    b = tiny_causal_lm(0, vocab_size=41, name="drafter")
    with pytest.raises(ValueError, match="vocabulary mismatch"):
        CascadeDecoder([b, a])


def test_load_adapter_round_trip_and_missing_folder(tmp_path: Path) -> None:
    lm = tiny_causal_lm(2, vocab_size=40)
    lm.model.save_pretrained(tmp_path / "lm")
    loaded = load_adapter(tmp_path / "lm", name="lm")
    ctx = StageContext((1, 4, 5), None, "text")
    lm.prefill(ctx)
    loaded.prefill(ctx)
    assert torch.allclose(lm.next_logits([7]), loaded.next_logits([7]), atol=1e-5)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_adapter(tmp_path / "absent")


def test_preprocessing_shapes_and_errors() -> None:
    proc = make_image_processor(16)
    assert preprocess_video(proc, np.zeros((8, 20, 30, 3), np.uint8)).shape == (1, 8, 3, 16, 16)
    assert preprocess_image(proc, np.zeros((20, 30, 3), np.uint8)).shape == (1, 3, 16, 16)
    with pytest.raises(ValueError, match="uint8"):
        preprocess_image(proc, np.zeros((20, 30, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        preprocess_video(proc, np.zeros((20, 30, 3), np.uint8))


# ------------------------------------------------------------------ adapter state
def test_adapter_state_is_keyed_on_tokens_not_call_order(tm: TinyModels, ref: list[int]) -> None:
    a, b = ref[:3], [5, 6, 7, 8]
    first = tm.target.score(a, [9, 10])
    tm.target.score(b, [11])
    tm.target.propose([4], 3)
    again = tm.target.score(a, [9, 10])
    assert torch.equal(first, again)
    head = ref[:4]
    assert tm.target.score([], head).argmax(-1)[: len(head)].tolist() == head


def test_cache_crop_validates_length(tm: TinyModels, ref: list[int]) -> None:
    held = cache_ops.cached_length(tm.target._cache)
    with pytest.raises(ValueError, match="cannot crop"):
        cache_ops.crop_to(tm.target._cache, held + 1)


def test_propose_stops_after_eos_and_handles_zero_k(tm: TinyModels, ref: list[int]) -> None:
    assert tm.target.propose([], 0).token_ids == []
    # the tiny target never says EOS on this context: a proposal runs the whole k, greedy
    assert EOS_ID not in ref
    prop = tm.target.propose([], MAX_NEW)
    assert prop.token_ids == ref
    assert len(prop.probs) == len(prop.token_ids) and all(0 < p <= 1 for p in prop.probs)
    # the same model with one of its own greedy tokens as EOS: the proposal ends right after it
    eos = ref[3]
    stop = ref.index(eos) + 1
    assert stop < MAX_NEW  # the EOS check is reached before k runs out
    same = HFAdapter(tm.target.model, name="target-eos", modality="video", eos_token_id=eos)
    same.prefill(tm.make_contexts(0).target)
    f0 = same.forwards
    prop = same.propose([], MAX_NEW + 5)
    assert prop.token_ids == ref[:stop] and prop.token_ids[-1] == eos
    assert same.forwards - f0 == stop - 1  # on a CPU the chain ends at the EOS, no forward past it
    assert len(prop.probs) == stop and all(0 < p <= 1 for p in prop.probs)
    # and after a prefix, from the middle of the caption
    assert same.propose(ref[:1], MAX_NEW).token_ids == ref[1:stop]


def test_a_confidence_floor_ends_a_greedy_proposal_after_its_first_unsure_token(tm: TinyModels, ref: list[int]) -> None:
    full = tm.target.propose([], MAX_NEW)
    assert full.token_ids == ref
    # a floor just above one of the greedy tokens' own probabilities: the proposal ends with that token
    j = min(range(1, MAX_NEW - 1), key=lambda i: full.probs[i])
    floor = full.probs[j] + 1e-6
    stop = next(i for i, p in enumerate(full.probs) if p < floor) + 1  # (j, or an earlier unsure token)
    assert stop < MAX_NEW
    f0 = tm.target.forwards
    tm.target.stop_below = floor
    try:
        short = tm.target.propose([], MAX_NEW)
        assert short.token_ids == ref[:stop]  # the same picks, only fewer
        assert short.probs == pytest.approx(full.probs[:stop])
        assert tm.target.forwards - f0 == stop - 1  # no forward past the unsure token
        # sampling ignores the floor: a sampled draft's length is the verifier's business
        sampled = tm.target.propose([], MAX_NEW, temperature=1.0, generator=torch.Generator().manual_seed(0))
        assert len(sampled.token_ids) == MAX_NEW
        # and the cache stays consistent: the next proposal continues the greedy caption
        rest = tm.target.propose(ref[:stop], MAX_NEW - stop).token_ids
        assert rest and rest == ref[stop : stop + len(rest)]
    finally:
        tm.target.stop_below = 0.0


def test_an_engine_drafter_with_a_floor_drafts_to_gamma_max_and_stays_exact(tm: TinyModels, ref: list[int]) -> None:
    ctx = tm.make_contexts(0)
    tm.drafter.prefill(ctx.drafter)
    sure = min(tm.drafter.propose([], 7).probs)  # the random drafter's confidence in its first 7 tokens
    try:
        for floor, first_draft in ((sure / 2, 7), (1 - 1e-6, 1)):
            tm.drafter.stop_below = floor
            decoder = CascadeDecoder([tm.drafter, tm.target], gamma=2, gamma_max=7)
            res = decoder.generate([ctx.drafter, ctx.target], MAX_NEW)
            assert res.token_ids == ref
            # sure of all 7: gamma_max, not the controller's 2; sure of nothing: one token
            assert res.stats.rounds[0].drafted[0] == first_draft
    finally:
        tm.drafter.stop_below = 0.0
    plain = CascadeDecoder([tm.drafter, tm.target], gamma=2, gamma_max=7).generate([ctx.drafter, ctx.target], MAX_NEW)
    assert plain.stats.rounds[0].drafted[0] == 2  # without a floor: the controller's gamma


# ------------------------------------------------------------------ verifier step corner cases
def test_empty_draft_commits_one_target_token(tm: TinyModels, ref: list[int]) -> None:
    res = verify_greedy(tm.target, [], [], max_new_tokens=MAX_NEW)
    assert res.accepted == 0 and res.token_ids == ref[:1] and res.drafted == 0


def test_draft_past_budget_is_cut(tm: TinyModels, ref: list[int]) -> None:
    prefix = ref[: len(ref) - 2] if len(ref) >= 3 else []
    res = verify_greedy(tm.target, prefix, ref[len(prefix) :] + [3] * 10, max_new_tokens=len(prefix) + 2)
    assert res.drafted <= 2 and len(res.token_ids) <= 2 and res.finished
    assert prefix + res.token_ids == ref[: len(prefix) + 2]


def test_eos_inside_draft_ends_the_caption() -> None:
    """A draft equal to the target's own continuation through EOS commits up to EOS and finishes."""
    script = [7, 9, EOS_ID, 5, 5, 5, 5]
    target = ScriptedDrafter(lambda prefix, k: script[len(prefix) : len(prefix) + k], 16, name="target")
    res = verify_greedy(target, [], [7, 9, EOS_ID, 4, 8], max_new_tokens=20)
    assert res.token_ids == [7, 9, EOS_ID] and res.finished and res.drafted == 3 and res.accepted == 3
    assert verify_greedy(target, res.token_ids, [4], max_new_tokens=20).token_ids == []
    # a wrong EOS inside the draft is rejected like any other token
    res = verify_greedy(target, [], [7, EOS_ID, 9], max_new_tokens=20)
    assert res.token_ids == [7, 9] and res.accepted == 1 and not res.finished


def test_align_draft_rebases_or_drops_stale_drafts() -> None:
    assert align_draft([1, 2], [1], [2, 3, 4]) == [3, 4]
    assert align_draft([1], [1, 2], [3]) == [2, 3]  # draft made ahead of the commit
    assert align_draft([1, 9], [1], [2, 3]) == []  # diverged: stale
    assert align_draft([1, 2, 3, 4], [1], [2]) == []  # committed past the draft


def test_verify_sample_needs_positive_temperature(tm: TinyModels, ref: list[int]) -> None:
    with pytest.raises(ValueError, match="temperature > 0"):
        verify_sample(tm.target, [], [3], max_new_tokens=4, generator=torch.Generator(), temperature=0.0)
    with pytest.raises(ValueError, match="explicit torch.Generator"):
        CascadeDecoder([tm.drafter, tm.target], "lossless-sample").generate(None, 4)


# ------------------------------------------------------------------ refiner / drafter steps
def test_refine_step_keeps_matching_prefix_and_extends_to_gamma(tm: TinyModels, ref: list[int]) -> None:
    own = tm.refiner.propose([], 6).token_ids
    draft = own[:2] + [(own[2] + 1) % tm.vocab_size] if len(own) >= 3 else own
    res = refine_step(tm.refiner, [], draft, 5, max_new_tokens=MAX_NEW)
    if len(own) >= 3 and EOS_ID not in own[:3]:
        assert res.kept == 2 and res.token_ids[:3] == own[:3]
        assert len(res.token_ids) == 5 or EOS_ID in res.token_ids
    assert len(res.confidences) == len(res.token_ids)
    assert all(0 < c <= 1 for c in res.confidences)
    assert draft_step(tm.drafter, ref, 4, max_new_tokens=len(ref)).token_ids == []


# ------------------------------------------------------------------ lossy modes report their trade
def test_pyramid_and_cascade_are_exact_at_strict_settings_and_report_trades_when_loose() -> None:
    target = TableLM(7, 16, scale=2.0, name="target")
    qualifier = TableLM(8, 16, scale=0.7, base=target, name="qualifier")
    drafter = TableLM(9, 16, scale=1.5, base=target, name="drafter")
    ctx = StageContext((1, 3), None, "text")
    stages = [drafter, qualifier, target]
    ctxs = [ctx, ctx, ctx]
    exact = CascadeDecoder([target]).generate([ctx], 16).token_ids
    strict = {
        "pyramid": dict(taus=(0.0, 0.0)),
        "cascade": dict(deferral="chow", alpha=0.0),  # max q < 1 always: always defer
    }
    for mode, kw in strict.items():
        res = CascadeDecoder(stages, mode, **kw).generate(ctxs, 16)
        assert res.token_ids == exact and res.stats.lossy_tokens == 0 and res.mode == mode and not res.lossless
    loose = {
        "pyramid": dict(taus=(1.0, 1.0)),
        "cascade": dict(deferral="diff", alpha=1.0),  # never defer: drafter output
    }
    for mode, kw in loose.items():
        res = CascadeDecoder(stages, mode, **kw).generate(ctxs, 16)
        assert res.stats.lossy_tokens > 0 and res.token_ids != exact
    opt = CascadeDecoder([drafter, target], "cascade", deferral="opt", alpha=0.5).generate([ctx, ctx], 16)
    assert opt.mode == "cascade" and len(opt.token_ids) > 0


# ------------------------------------------------------------------ rules
def test_rules_on_hand_made_distributions() -> None:
    p = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]])
    q_same = p[:2]
    draft = torch.tensor([0, 1])
    a, tok, lossy = rules.accept_greedy(draft, torch.log(p))
    assert (int(a), int(tok), int(lossy.sum())) == (1, 2, 0)
    assert torch.allclose(rules.js_divergence(q_same, q_same), torch.zeros(2), atol=1e-6)
    assert float(rules.js_divergence(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]))[0]) == pytest.approx(1.0)
    q = torch.tensor([[0.2, 0.8, 0.0], [0.9, 0.05, 0.05]])
    assert rules.deferral("chow", q, p[:2], 0.15).tolist() == [True, False]
    assert rules.deferral("diff", q, p[:2], 0.05).tolist() == [False, False]
    q2 = torch.tensor([[0.4, 0.3, 0.3], [0.9, 0.05, 0.05]])
    # OPT weighs the cost by D_TV(p, q) (0.3 on row 0): defers where Diff at the same alpha does not
    assert rules.deferral("opt", q2, p[:2], 0.5).tolist() == [True, False]
    assert rules.deferral("diff", q2, p[:2], 0.5).tolist() == [False, False]
    res = rules.residual_distribution(p[:1], torch.tensor([[0.5, 0.5, 0.0]]))
    assert torch.allclose(res, torch.tensor([[0.2 / 0.3, 0.0, 0.1 / 0.3]]))
    with pytest.raises(ValueError, match="deferral rule"):
        rules.deferral("max", q, p[:2], 0.1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="temperature"):
        LevelRule("sample", temperature=0.0)


# ------------------------------------------------------------------ adaptive gamma
def test_draft_length_controller_follows_acceptance() -> None:
    up = DraftLengthController(4, gamma_max=12, cost_ratio=0.05)
    for _ in range(10):
        up.update(up.gamma, up.gamma)
    assert up.gamma == 12 and up.acceptance == 1.0
    down = DraftLengthController(8, gamma_max=12, cost_ratio=0.3)
    for _ in range(10):
        down.update(down.gamma, 0)
    assert down.gamma == 1
    off = DraftLengthController(4, gamma_min=0, cost_ratio=0.5, probe_every=3)
    for _ in range(6):
        off.update(off.gamma, 0)
    assert off._gamma == 0  # drafting does not pay: off
    for _ in range(4):  # run up to a probe round, whose draft is rejected again
        if off.gamma == 1:
            break
        off.update(0, 0)
    off.update(off.gamma, 0)
    seen = []
    for _ in range(4):
        seen.append(off.gamma)
        off.update(off.gamma, 0)
    assert seen == [0, 0, 0, 1]  # then one probe token after probe_every idle rounds
    fixed = DraftLengthController(5, adaptive=False)
    fixed.update(5, 0)
    assert fixed.gamma == 5
    with pytest.raises(ValueError):
        DraftLengthController(20, gamma_max=10)
    with pytest.raises(ValueError):
        up.update(2, 3)


def test_round_statistics_are_consistent(tm: TinyModels, ref: list[int]) -> None:
    res = CascadeDecoder([tm.drafter, tm.refiner, tm.target], gamma=(3, 4)).generate(None, MAX_NEW)
    st = res.stats
    assert res.token_ids == ref
    assert sum(r.committed for r in st.rounds) == len(ref)
    assert st.target_forwards == len(st.rounds)  # one target forward per round (prefix already prefilled)
    assert all(r.target_forwards == 1 for r in st.rounds)
    for i, s in enumerate(st.stages[:-1]):
        assert s.drafted == sum(r.drafted[i] for r in st.rounds) and 0 <= s.accepted <= s.drafted
    assert all(len(r.wall_s) == 3 for r in st.rounds) and st.wall_s > 0


def test_a_refiner_that_does_not_pay_is_bypassed(tm: TinyModels, ref: list[int]) -> None:
    """Perfect drafter, always-wrong refiner: the refiner is switched off and probed now and then."""
    perfect = ScriptedDrafter(lambda prefix, k: ref[len(prefix) : len(prefix) + k], tm.vocab_size, name="drafter")

    def wrong(prefix, k):
        return [(t + 1) % tm.vocab_size for t in ref[len(prefix) : len(prefix) + k]] or [3] * k

    refiner = ScriptedDrafter(wrong, tm.vocab_size, name="refiner")
    decoder = CascadeDecoder([perfect, refiner, tm.target], gamma=(2, 2), gamma_max=4, cost_ratios=(0.1, 0.3))
    res = decoder.generate(None, 40)
    full = target_only_greedy(tm.target, None, 40)
    assert res.token_ids == full
    rounds = len(res.stats.rounds)
    assert res.stats.stages[1].forwards < rounds  # not run every round
    assert res.stats.stages[1].acceptance == 0.0
