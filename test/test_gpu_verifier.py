"""Static-cache verifier (cascade_sd_ros.core.gpu): same function as transformers, keyed on tokens.

CPU tests run the static step eagerly against transformers' own forward and `HFAdapter` on tiny
random models; `cuda` tests check the CUDA-graph path against the eager one and skip without a GPU.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from cascade_sd_ros.core.gpu.llama_step import LlamaDecodeWeights, LlamaStaticForward
from cascade_sd_ros.core.gpu.static_kv import KVLayout, StaticKVCache, common_prefix_len
from cascade_sd_ros.core.gpu.verifier import StaticVerifierAdapter, load_static_verifier
from cascade_sd_ros.core.spec.adapter import ModelAdapter, StageContext
from cascade_sd_ros.core.spec.engine import CascadeDecoder, target_only_greedy
from cascade_sd_ros.core.spec.testing import tiny_causal_lm, tiny_models

ROOT = Path(__file__).resolve().parents[1]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _pair(seed: int = 0, **kwargs):
    """(HFAdapter target, our adapter over the same model, the video context)."""
    tm = tiny_models(seed, 64, target_layers=2, **kwargs)
    ctx = tm.make_contexts(seed + 1).target
    ours = StaticVerifierAdapter(tm.target.model, max_context=len(ctx.input_ids), max_caption_tokens=40, max_step=5)
    return tm.target, ours, ctx


# ------------------------------------------------------------------------------------- static cache
def test_common_prefix_len() -> None:
    assert common_prefix_len([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix_len([], [1]) == 0
    assert common_prefix_len([5, 6], [5, 6, 7]) == 2


def test_static_cache_bookkeeping_keyed_on_tokens() -> None:
    cache = StaticKVCache(KVLayout(2, 2, 4, 16), torch.float32, "cpu")
    assert cache.keys[0].shape == (1, 2, 16, 4)
    cache.reset(5)
    cache.extend([7, 8, 9])
    assert cache.length == 8
    keep, missing = cache.plan_sync([7, 8, 3, 4])
    assert (keep, missing) == (2, [3, 4])
    cache.truncate(keep)
    assert cache.length == 7
    with pytest.raises(ValueError, match="exceeds the static cache"):
        cache.extend(list(range(10)))
    with pytest.raises(ValueError, match="cannot keep"):
        cache.truncate(5)
    with pytest.raises(ValueError, match="does not fit"):
        cache.reset(17)


def test_kv_layout_validates_and_sizes() -> None:
    with pytest.raises(ValueError, match="max_len"):
        KVLayout(1, 1, 8, 0)
    assert KVLayout(2, 4, 8, 16).nbytes(torch.bfloat16) == 2 * 2 * 4 * 16 * 8 * 2


# --------------------------------------------------------------------------------- the Llama step
def test_static_step_equals_hf_forward_in_chunks_at_any_position() -> None:
    tm = tiny_models(3, 64)
    model = tm.target.model
    ids = torch.randint(3, 60, (23,), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = model(input_ids=ids[None]).logits[0]  # [23, V]
        weights = LlamaDecodeWeights(model.model.language_model, model.lm_head)
        cache = StaticKVCache(weights.kv_layout(64), weights.dtype, weights.device)
        step = LlamaStaticForward(weights, cache)
        # Garbage past the valid length must never be read: fill the buffers first.
        for buf in (*cache.keys, *cache.values):
            buf.normal_()
        parts, start = [], 0
        for n in (10, 1, 5, 7):
            parts.append(step(torch.tensor([start]), input_ids=ids[start : start + n]))
            start += n
        got = torch.cat(parts)
        assert torch.allclose(got, ref, atol=1e-5, rtol=1e-4)
        # Rewind: recompute the last 7 positions over the stale ones, same answer.
        again = step(torch.tensor([16]), input_ids=ids[16:])
        assert torch.allclose(again, ref[16:], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("attention", ["sdpa", "matmul", "auto"])
@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_static_step_gqa_and_attention_variants_equal_hf(attention: str, kv_heads: int) -> None:
    torch.manual_seed(kv_heads)
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        max_position_embeddings=256,
    )
    model = LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 64, (19,))
    with torch.inference_mode():
        ref = model(input_ids=ids[None]).logits[0]
        weights = LlamaDecodeWeights(model.model, model.lm_head)
        step = LlamaStaticForward(
            weights, StaticKVCache(weights.kv_layout(64), weights.dtype, weights.device), attention=attention
        )
        got = torch.cat(
            [
                step(torch.tensor([0]), input_ids=ids[:11]),
                step(torch.tensor([11]), input_ids=ids[11:12]),
                step(torch.tensor([12]), input_ids=ids[12:]),
            ]
        )
    assert torch.allclose(got, ref, atol=1e-5, rtol=1e-4)


def test_fusing_keeps_hf_forward_and_memory() -> None:
    tm = tiny_models(4, 64)
    model = tm.target.model
    ids = torch.randint(3, 60, (1, 9), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        before = model(input_ids=ids).logits
        first = LlamaDecodeWeights(model.model.language_model, model.lm_head)
        after = model(input_ids=ids).logits
        second = LlamaDecodeWeights(model.model.language_model, model.lm_head)
    assert torch.equal(before, after)
    attn = model.model.language_model.layers[0].self_attn
    assert attn.q_proj.weight.data_ptr() == first.layers[0].qkv_w.data_ptr()  # a view, not a copy
    assert second.layers[0].qkv_w.data_ptr() == first.layers[0].qkv_w.data_ptr()  # reused, not re-fused


def test_weights_can_be_built_inside_inference_mode() -> None:
    tm = tiny_models(6, 64)
    model = tm.target.model
    with torch.inference_mode():
        weights = LlamaDecodeWeights(model.model.language_model, model.lm_head)
        out = model(input_ids=torch.tensor([[3, 4, 5]])).logits
    assert not weights.layers[0].qkv_w.is_inference()
    assert torch.isfinite(out).all()


def test_step_refuses_non_llama_and_mismatched_cache() -> None:
    tm = tiny_models(5, 64)
    lm = tm.target.model.model.language_model
    weights = LlamaDecodeWeights(lm, tm.target.model.lm_head)
    wrong = StaticKVCache(KVLayout(1, 2, 16, 32), torch.float32, "cpu")
    with pytest.raises(ValueError, match="does not match"):
        LlamaStaticForward(weights, wrong)
    step = LlamaStaticForward(weights, StaticKVCache(weights.kv_layout(128), torch.float32, "cpu"))
    assert (step.uses_sdpa(1), step.uses_sdpa(2), step.uses_sdpa(64), step.uses_sdpa(65)) == (True, False, False, True)
    with pytest.raises(ValueError, match="attention must be"):
        LlamaStaticForward(weights, StaticKVCache(weights.kv_layout(32), torch.float32, "cpu"), attention="flash")
    lm.config.model_type = "mistral"
    try:
        with pytest.raises(ValueError, match="Llama text models only"):
            LlamaDecodeWeights(lm, tm.target.model.lm_head)
    finally:
        lm.config.model_type = "llama"


# ---------------------------------------------------------------------------------------- adapter
def test_adapter_is_a_model_adapter_and_matches_hf_greedy() -> None:
    ref, ours, ctx = _pair(0)
    assert isinstance(ours, ModelAdapter)
    assert (ours.vocab_size, ours.eos_token_id) == (ref.vocab_size, ref.eos_token_id)
    ref.prefill(ctx)
    ours.prefill(ctx)
    a, b = ref.propose([], 12), ours.propose([], 12)
    assert a.token_ids == b.token_ids
    assert b.probs == pytest.approx(a.probs, abs=1e-5)
    assert ours.forwards == 1 + 11  # prefill, then one forward per token after the first (as HFAdapter)


def test_adapter_score_matches_hf_and_survives_out_of_order_calls() -> None:
    ref, ours, ctx = _pair(1)
    ref.prefill(ctx)
    ours.prefill(ctx)
    calls = [([], [5, 6, 7]), ([5, 6], [9, 10, 11, 12]), ([], [8]), ([5, 6, 9], []), ([5, 6, 9, 10, 11, 12, 13], [3])]
    for prefix, draft in calls:
        want = ref.score(prefix, draft)
        got = ours.score(prefix, draft)
        assert got.shape == (len(draft) + 1, ref.vocab_size)
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-4), (prefix, draft)


def test_adapter_long_catch_up_is_chunked() -> None:
    ref, ours, ctx = _pair(2)
    ref.prefill(ctx)
    ours.prefill(ctx)
    prefix = list(range(3, 3 + 13))  # more than max_step=5 missing tokens
    assert torch.allclose(ours.score(prefix, [4, 5]), ref.score(prefix, [4, 5]), atol=1e-5, rtol=1e-4)
    assert torch.allclose(ours.next_logits(prefix[:4]), ref.next_logits(prefix[:4]), atol=1e-5, rtol=1e-4)


def test_adapter_sampling_matches_hf_with_same_generator() -> None:
    ref, ours, ctx = _pair(3)
    ref.prefill(ctx)
    ours.prefill(ctx)
    a = ref.propose([7], 6, temperature=0.8, generator=torch.Generator().manual_seed(11), return_q=True)
    b = ours.propose([7], 6, temperature=0.8, generator=torch.Generator().manual_seed(11), return_q=True)
    assert a.token_ids == b.token_ids and b.sampled
    assert a.q is not None and b.q is not None and torch.allclose(a.q, b.q, atol=1e-6)


def test_adapter_prepare_then_prefill_equals_plain_prefill() -> None:
    ref, ours, ctx = _pair(4)
    ours.prefill(ctx)
    plain = ours.next_logits([])
    ours.prepare(ctx)
    ours.prefill(ctx)
    assert torch.equal(ours.next_logits([]), plain)


def test_cascade_with_static_verifier_equals_verifier_alone() -> None:
    """Drop-in for the engine: lossless-greedy cascade over our target = HF target decoding alone."""
    tm = tiny_models(11, 64, aligned=True, target_layers=2)
    contexts = tm.make_contexts(12)
    ours = StaticVerifierAdapter(
        tm.target.model, max_context=len(contexts.target.input_ids), max_caption_tokens=40, max_step=17
    )
    alone = target_only_greedy(tm.target, contexts.target, 24)
    result = CascadeDecoder([tm.drafter, tm.refiner, ours], mode="lossless-greedy", gamma=4).generate(
        [contexts.drafter, contexts.refiner, contexts.target], 24
    )
    assert result.token_ids == alone
    assert target_only_greedy(ours, contexts.target, 24) == alone


def test_adapter_validates_inputs() -> None:
    ref, ours, ctx = _pair(5)
    with pytest.raises(RuntimeError, match="prefill"):
        ours.score([], [3])
    ours.prefill(ctx)
    with pytest.raises(ValueError, match="max_caption_tokens"):
        ours.score(list(range(3, 40)), [3, 4, 5, 6])
    with pytest.raises(ValueError, match="outside vocabulary"):
        ours.score([], [64])
    with pytest.raises(ValueError, match="k must be"):
        ours.propose([], -1)
    video_id = ref.model.config.video_token_id
    short = StageContext(tuple(t for t in ctx.input_ids if t != video_id) + (video_id,), ctx.pixel_values, "video")
    with pytest.raises(ValueError, match="<video> tokens"):
        ours.prefill(short)
    long = StageContext((3,) * 5 + ctx.input_ids, ctx.pixel_values, "video")
    with pytest.raises(ValueError, match="max_context"):
        ours.prefill(long)
    with pytest.raises(ValueError, match="needs a CUDA model"):
        StaticVerifierAdapter(ref.model, max_context=8, use_graphs=True)
    with pytest.raises(ValueError, match="max_step"):
        StaticVerifierAdapter(ref.model, max_context=8, max_step=0)
    with pytest.raises(TypeError, match="VideoLlava"):
        StaticVerifierAdapter(tiny_causal_lm(0).model, max_context=8)  # type: ignore[arg-type]


def test_load_static_verifier_from_folder(tmp_path: Path) -> None:
    tm = tiny_models(9, 64)
    tm.target.model.save_pretrained(tmp_path / "target")
    adapter = load_static_verifier(tmp_path / "target", max_context=128, device="cpu", max_step=3)
    ctx = tm.make_contexts(10).target
    adapter.prefill(ctx)
    tm.target.prefill(ctx)
    assert adapter.propose([], 5).token_ids == tm.target.propose([], 5).token_ids
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_static_verifier(tmp_path / "missing", max_context=8, device="cpu")
    tiny_causal_lm(0).model.save_pretrained(tmp_path / "lm")
    with pytest.raises(ValueError, match="'llama'"):
        load_static_verifier(tmp_path / "lm", max_context=8, device="cpu")


# --------------------------------------------------------------------------------------- the bench
@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch):
    """bench/gpu_verifier.py as a module (bench/ is not a package), registered only for this test."""
    spec = importlib.util.spec_from_file_location("gpu_verifier_bench", ROOT / "bench" / "gpu_verifier.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_bench_dry_run_checks_token_equality(bench, tmp_path: Path) -> None:
    out = tmp_path / "dry.json"
    assert (
        bench.main(["--dry-run", "--tokens", "8", "--max-k", "3", "--reps", "1", "--step-reps", "1", "--out", str(out)])
        == 0
    )
    data = json.loads(out.read_text())
    for name in ("c_ours_eager", "c_ours_eager_matmul"):
        check = data["checks"][name]
        assert check["tokens_equal"] and check["teacher_forced_agree"], name
    assert data["checks"]["dry_run_logits_rel_err"] < 1e-4
    assert set(data["paths"]["c_ours_eager"]["verify_ms"]) == {"1", "2", "3"}


def test_projected_speedup_formula(bench) -> None:
    # alpha 0: one token per round at the cost of a verify step.
    assert bench.projected_speedup(0.0, 4, 5.0, 5.0, 0.0) == pytest.approx(1.0)
    # alpha 1 with free drafts and free verification width: gamma + 1 tokens per step.
    assert bench.projected_speedup(1.0, 4, 5.0, 5.0, 0.0) == pytest.approx(5.0)
    assert bench.projected_speedup(0.5, 2, 4.0, 5.0, 1.0) == pytest.approx(1.75 * 4.0 / 6.0)


# ------------------------------------------------------------------------------------------- CUDA
def _cuda_pair(compile_blocks: bool = False, attention: str = "auto"):
    tm = tiny_models(7, 64, target_layers=2, dtype=torch.bfloat16, device="cuda")
    ctx = tm.make_contexts(8).target
    kw = {"max_context": len(ctx.input_ids), "max_caption_tokens": 40, "max_step": 5}
    graphed = StaticVerifierAdapter(
        tm.target.model, use_graphs=True, compile_blocks=compile_blocks, attention=attention, **kw
    )
    eager = StaticVerifierAdapter(tm.target.model, use_graphs=False, compile_blocks=False, **kw)
    return graphed, eager, ctx


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want.float()).norm() / want.float().norm()).item()


def _same_until_near_tie(a: list[int], b: list[int], rows: torch.Tensor, tie: float = 0.05) -> bool:
    """Greedy tokens agree, except possibly after a position where the reference was nearly tied."""
    top = rows.float().topk(2, dim=-1).values  # [n, 2]
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return bool((top[i, 0] - top[i, 1]).item() < tie)
        if (top[i, 0] - top[i, 1]).item() < tie:
            return True
    return True


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("attention", ["sdpa", "matmul", "auto"])
def test_cuda_graphs_equal_eager_step(attention: str) -> None:
    graphed, eager, ctx = _cuda_pair(attention=attention)
    assert graphed.runner.graph_sizes == (1, 2, 3, 4, 5)
    graphed.prefill(ctx)
    eager.prefill(ctx)
    a, b = graphed.propose([], 16), eager.propose([], 16)
    assert _same_until_near_tie(a.token_ids, b.token_ids, eager.score([], b.token_ids[:-1]))
    for prefix, draft in (([], [5, 6, 7]), (a.token_ids[:3], [9, 10, 11, 12]), (a.token_ids[:2], [])):
        assert _rel(graphed.score(prefix, draft), eager.score(prefix, draft)) < 1e-2


@pytest.mark.cuda
@needs_cuda
def test_cuda_side_stream_prefill_and_compiled_blocks() -> None:
    graphed, eager, ctx = _cuda_pair(compile_blocks=True)
    graphed.prepare(ctx)
    graphed.prefill(ctx)
    eager.prefill(ctx)
    a, b = graphed.propose([], 10), eager.propose([], 10)
    assert _same_until_near_tie(a.token_ids, b.token_ids, eager.score([], b.token_ids[:-1]))
    assert _rel(graphed.score([], [5, 6, 7]), eager.score([], [5, 6, 7])) < 2e-2
