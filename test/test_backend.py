"""Which backend runs a stage's model, and why: `auto` falls back to transformers off CUDA (saying
so), an explicit `cuda-graphs` that cannot run is refused with a one-line reason, and the static
adapter gives the transformers adapter's greedy captions on the shipped zoo's three stages.

CPU tests run the static step eagerly (`use_graphs=False`); the CUDA tests skip without a GPU.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from transformers import LlavaConfig, LlavaForConditionalGeneration, MistralConfig

from cascade_sd_ros.core.gpu.verifier import StaticAdapter, static_support
from cascade_sd_ros.core.spec.engine import CascadeDecoder, target_only_greedy
from cascade_sd_ros.core.spec.testing import tiny_causal_lm, tiny_models
from cascade_sd_ros.core.stage_model import (
    BACKENDS,
    BackendChoice,
    choose_backend,
    load_stage_model,
    parse_dtype,
)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # a device name: choose_backend never touches CUDA


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------------ the choice
def test_auto_on_cpu_falls_back_to_transformers_and_says_why() -> None:
    model = load_stage_model("tiny:0", "target")
    assert model.backend == BackendChoice("transformers", "device cpu: the static path needs CUDA")
    assert type(model.adapter).__name__ == "HFAdapter"
    explicit = load_stage_model("tiny:0", "drafter", backend="transformers")
    assert explicit.backend.name == "transformers" and "requested" in explicit.backend.reason


def test_cuda_graphs_on_cpu_is_refused_in_one_line() -> None:
    with pytest.raises(ValueError, match="the static path needs CUDA") as info:
        load_stage_model("tiny:0", "target", backend="cuda-graphs")
    assert "\n" not in str(info.value) and "cuda-graphs" in str(info.value)


@pytest.mark.parametrize("bad", ["fast", "", "CUDA-GRAPHS", "static"])
def test_bad_backend_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match=r"backend must be one of \['auto', 'cuda-graphs', 'transformers'\]"):
        load_stage_model("tiny:0", "target", backend=bad)


def test_dtype_auto_is_bf16_on_cuda_and_f32_elsewhere() -> None:
    assert parse_dtype("auto", CUDA) == torch.bfloat16
    assert parse_dtype("auto", CPU) == torch.float32
    assert parse_dtype("float16", CUDA) == torch.float16  # explicit values still win
    assert load_stage_model("tiny:0", "refiner").adapter.model.dtype == torch.float32
    with pytest.raises(ValueError, match="dtype must be one of.*'auto'"):
        parse_dtype("fp8", CPU)


def _mistral_llava() -> LlavaForConditionalGeneration:
    vision = tiny_models(0).refiner.model.config.vision_config
    text = MistralConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    return LlavaForConditionalGeneration(
        LlavaConfig(
            vision_config=vision.to_dict(), text_config=text.to_dict(), image_token_index=62, image_seq_length=4
        )
    )


def test_auto_on_cuda_takes_the_static_path_only_for_llava_family_llama_models() -> None:
    tm = tiny_models(0)
    for role, adapter in (("target", tm.target), ("refiner", tm.refiner), ("drafter", tm.drafter)):
        choice = choose_backend("auto", CUDA, role, adapter.model)
        assert choice.name == "cuda-graphs" and "Llama language model" in choice.reason, role
        assert choose_backend("cuda-graphs", CUDA, role, adapter.model).name == "cuda-graphs"
        assert choose_backend("transformers", CUDA, role, adapter.model).name == "transformers"
    mistral = _mistral_llava()
    choice = choose_backend("auto", CUDA, "refiner", mistral)
    assert choice == BackendChoice(
        "transformers",
        "refiner model is LlavaForConditionalGeneration: its language model is 'mistral', not Llama-shaped",
    )
    with pytest.raises(ValueError, match="backend cuda-graphs: refiner model is .*not Llama-shaped"):
        choose_backend("cuda-graphs", CUDA, "refiner", mistral)
    text_only = tiny_causal_lm(0).model
    assert "not a LLaVA-family" in choose_backend("auto", CUDA, "drafter", text_only).reason
    assert static_support(tm.target.model) is None


def test_backends_are_the_documented_three() -> None:
    assert BACKENDS == ("auto", "cuda-graphs", "transformers")


# ---------------------------------------------------------------- one static adapter, three roles
def test_static_adapter_serves_llava_and_video_llava_images() -> None:
    """Llava (image) and VideoLlava given one image: same greedy tokens and scores as transformers."""
    tm = tiny_models(21, 64, target_layers=2, refiner_layers=2)
    contexts = tm.make_contexts(22)
    from cascade_sd_ros.core.spec.adapter import HFAdapter

    cases = [
        (tm.refiner, contexts.refiner, "image"),
        (HFAdapter(tm.target.model, name="target", modality="image"), contexts.refiner, "image"),
        (tm.target, contexts.target, "video"),
    ]
    for ref, ctx, modality in cases:
        ours = StaticAdapter(
            ref.model,
            max_context=len(ctx.input_ids),
            max_caption_tokens=32,
            max_step=4,
            modality=modality,
            name=ref.name,
        )
        assert ours.modality == modality and ours.expected_media_tokens(1) == ref.expected_media_tokens(1)
        ref.prefill(ctx)
        ours.prefill(ctx)
        a, b = ref.propose([], 10), ours.propose([], 10)
        assert a.token_ids == b.token_ids, (ref.name, modality)
        assert b.probs == pytest.approx(a.probs, abs=1e-5)
        assert torch.allclose(ours.score([5], [6, 7, 8, 9, 10]), ref.score([5], [6, 7, 8, 9, 10]), atol=1e-5, rtol=1e-4)
        # a draft in hand given to the prefill: the same rows as transformers' fused prefill
        ref.prefill(ctx, caption=a.token_ids[:4])
        ours.prefill(ctx, caption=a.token_ids[:4])
        assert torch.allclose(ours.score([], a.token_ids[:4]), ref.score([], a.token_ids[:4]), atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="supports modalities"):
        StaticAdapter(tm.refiner.model, max_context=64, modality="video")


@pytest.fixture(scope="module")
def zoo() -> Any:
    from cascade_sd_ros.core.zoo import load_zoo

    return load_zoo()


def _zoo_inputs(zoo: Any, index: int) -> dict[str, Any]:
    from cascade_sd_ros.core.zoo.data import EVAL_STREAM, build_sample

    clip, events, _ = build_sample(0, EVAL_STREAM, index, zoo.geometry, with_events=True)
    return {
        "target": zoo.context("target", clip),
        "refiner": zoo.context("refiner", clip[-1]),
        "drafter": zoo.context("drafter", events),
    }


def _static(zoo: Any, stage: str, ctx: Any) -> StaticAdapter:
    ref = zoo.adapter(stage)
    return StaticAdapter(
        ref.model,
        max_context=len(ctx.input_ids) + 8,
        max_caption_tokens=40,
        max_step=17,
        use_graphs=False,
        compile_blocks=False,
        modality=ref.modality,
        name=stage,
    )


@pytest.mark.parametrize("stage", ["target", "refiner", "drafter"])
def test_static_adapter_gives_the_zoo_greedy_captions_of_transformers(zoo: Any, stage: str) -> None:
    ref = zoo.adapter(stage)
    ours = None
    for index in (0, 1, 2, 5):
        ctx = _zoo_inputs(zoo, index)[stage]
        ours = ours or _static(zoo, stage, ctx)
        want = target_only_greedy(ref, ctx, 24)
        got = target_only_greedy(ours, ctx, 24)
        assert got == want, f"{stage}, scene {index}: {zoo.decode(got)!r} vs {zoo.decode(want)!r}"
        if stage == "target":
            assert want[-1] == zoo.target.eos_token_id  # a whole caption, not a cut-off


def test_static_cascade_over_the_zoo_equals_the_transformers_verifier_alone(zoo: Any) -> None:
    for index in (3, 4):
        ctx = _zoo_inputs(zoo, index)
        stages = [_static(zoo, s, ctx[s]) for s in ("drafter", "refiner", "target")]
        alone = target_only_greedy(zoo.target, ctx["target"], 24)
        result = CascadeDecoder(stages, mode="lossless-greedy", gamma=4).generate(
            [ctx["drafter"], ctx["refiner"], ctx["target"]], 24
        )
        assert result.token_ids == alone, f"scene {index}"


def _static_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the loader take the static path on a CPU (its step then runs eagerly): the wiring a CUDA
    machine runs, checked here."""
    import cascade_sd_ros.core.stage_model as stage_model

    monkeypatch.setattr(
        stage_model,
        "choose_backend",
        lambda requested, device, role, model: BackendChoice("cuda-graphs", "test: forced on cpu"),
    )


def test_loader_static_path_wiring_gives_transformers_captions(zoo: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from cascade_sd_ros.core.stage_model import default_stage_source

    _static_on_cpu(monkeypatch)
    for role in ("target", "refiner"):
        static = load_stage_model(default_stage_source(role), role, max_new_tokens=24)
        assert type(static.adapter).__name__ == "StaticAdapter" and static.backend.name == "cuda-graphs"
        assert static.adapter.max_caption_tokens == 24 + 16
        assert static.warm_up("describe the scene") is not None and static.warm_up("again") is None
        for index in (0, 6):
            ctx = _zoo_inputs(zoo, index)[role]
            assert target_only_greedy(static.adapter, ctx, 24) == target_only_greedy(zoo.adapter(role), ctx, 24)


# ---------------------------------------------------------------------------------------- nodes
@pytest.fixture
def node_factory(rclpy_context: Any):  # noqa: ANN201
    pytest.importorskip("rclpy")
    from rclpy.parameter import Parameter

    from cascade_sd_ros.nodes.video_verifier import VideoVerifier

    nodes: list[Any] = []

    def make(**params: Any) -> Any:
        overrides = [Parameter(k, value=v) for k, v in {"model": "tiny:0", **params}.items()]
        node = VideoVerifier(context=rclpy_context, parameter_overrides=overrides)
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.close()
        node.destroy_node()


@pytest.mark.ros
def test_verifier_node_on_cpu_reports_the_fallback_and_warms_up(
    node_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = node_factory()
    desc = node.describe_parameter("backend")
    assert desc.read_only and "cuda-graphs" in desc.description
    assert node.get_parameter("dtype").value == "auto" and node.cfg.backend == "auto"
    assert node.model.warm_up_s is not None  # warmed at construction, before any subscription
    seen: list[dict[str, object]] = []
    monkeypatch.setattr(node, "publish_status", lambda level, message, values: seen.append(values))
    node.publish_diagnostics()
    assert seen[0]["backend"] == "transformers"
    assert seen[0]["backend_reason"] == "device cpu: the static path needs CUDA"


@pytest.mark.ros
def test_verifier_node_reports_the_static_backend_it_was_given(
    node_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _static_on_cpu(monkeypatch)
    node = node_factory()
    assert type(node.model.adapter).__name__ == "StaticAdapter" and node.model.warm_up_s is not None
    seen: list[dict[str, object]] = []
    monkeypatch.setattr(node, "publish_status", lambda level, message, values: seen.append(values))
    node.publish_diagnostics()
    assert (seen[0]["backend"], seen[0]["backend_reason"]) == ("cuda-graphs", "test: forced on cpu")


@pytest.mark.ros
def test_verifier_node_refuses_cuda_graphs_on_cpu_and_bad_backends(node_factory: Any) -> None:
    if torch.cuda.is_available():
        pytest.skip("checks the refusal on a machine without CUDA")
    with pytest.raises(ValueError, match="backend cuda-graphs for the target: device cpu: the static path needs CUDA"):
        node_factory(backend="cuda-graphs")
    with pytest.raises(ValueError, match=r"parameter backend='graphs': must be one of"):
        node_factory(backend="graphs")


# ----------------------------------------------------------------------------------------- CUDA
@pytest.mark.cuda
@needs_cuda
def test_cuda_auto_takes_the_static_path_and_matches_transformers() -> None:
    static = load_stage_model("tiny:0", "target", device="cuda")
    assert static.backend.name == "cuda-graphs" and type(static.adapter).__name__ == "StaticAdapter"
    assert static.adapter.model.dtype == torch.bfloat16
    assert static.warm_up("describe the scene") is not None
    hf = load_stage_model("tiny:0", "target", device="cuda", backend="transformers")
    frames = np.random.default_rng(0).integers(0, 255, (8, 16, 16, 3), dtype=np.uint8)
    static.adapter.prefill(static.context(frames, "describe the scene"))
    hf.adapter.prefill(hf.context(frames, "describe the scene"))
    draft = [5, 6, 7, 8]
    got, want = static.adapter.score([], draft).float(), hf.adapter.score([], draft).float()
    # bf16 on both sides: the same function up to rounding (greedy near-ties may split; rows do not)
    assert ((got - want).norm() / want.norm()).item() < 2e-2


@pytest.mark.cuda
@needs_cuda
def test_cuda_drafter_and_refiner_take_the_static_path_too() -> None:
    for role in ("refiner", "drafter"):
        model = load_stage_model("tiny:0", role, device="cuda")
        assert model.backend.name == "cuda-graphs", role
        assert model.warm_up("q") is not None


# ---------------------------------------------------------------------------------------- the bench
@pytest.mark.ros
def test_gpu_nodes_bench_dry_run(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """bench/gpu_nodes.py's CPU-safe parts: the node's choice (fallback with its reason), and the
    target through the transformers and static stage paths with equal float32 tokens."""
    import importlib.util
    import json
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "gpu_nodes.py"
    spec = importlib.util.spec_from_file_location("gpu_nodes_bench", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    out = tmp_path / "gpu_nodes.json"
    assert module.main(["--dry-run", "--zoo-scenes", "1", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["checks"]["all_ok"] and data["checks"]["target_tokens_equal"]
    assert data["choice"]["target"]["backend"] == "transformers"
    assert "needs CUDA" in data["choice"]["target"]["backend_reason"]
    assert data["target"]["static"]["adapter"] == "StaticAdapter"
    assert data["target"]["transformers"]["adapter"] == "HFAdapter"
