"""The training loop, depth growth and online distillation on micro models (a few steps, no real training)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from cascade_sd_ros.core.spec.preprocess import make_image_processor
from cascade_sd_ros.core.zoo.batches import StageBatcher
from cascade_sd_ros.core.zoo.configs import DataGeometry, StageArch, TrainSchedule, build_model
from cascade_sd_ros.core.zoo.data import ZooData
from cascade_sd_ros.core.zoo.distill import Distiller, DistillWeights, argmax_agreement
from cascade_sd_ros.core.zoo.grow import deepen, expansion_plan, grow_from
from cascade_sd_ros.core.zoo.tokenizer import build_tokenizer
from cascade_sd_ros.core.zoo.training import greedy_captions, lr_at, train_stage

GEO = DataGeometry(image_size=16, num_frames=2)
MICRO = {
    "target": StageArch(
        video=True, patch_size=8, vision_hidden=16, vision_layers=1, text_hidden=16, text_layers=3, text_heads=1
    ),
    "refiner": StageArch(
        video=False, patch_size=8, vision_hidden=16, vision_layers=1, text_hidden=16, text_layers=1, text_heads=1
    ),
    "drafter": StageArch(
        video=False, patch_size=8, vision_hidden=16, vision_layers=1, text_hidden=8, text_layers=1, text_heads=1
    ),
}
CAPTIONS = ["a red circle moves left", "a blue square is still and a green triangle moves up"]


@pytest.fixture(scope="module")
def setup() -> tuple:
    rng = np.random.default_rng(0)
    data = ZooData(
        rng.integers(0, 256, (8, 2, 16, 16, 3), dtype=np.uint8),
        rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8),
        CAPTIONS * 4,
        GEO,
    )
    return build_tokenizer(), make_image_processor(16), data


def _model(stage: str, tok, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(stage, tok, GEO, MICRO[stage])  # type: ignore[arg-type]


def test_lr_schedule_warms_up_then_decays() -> None:
    s = TrainSchedule(steps=100, batch_size=1, lr=1.0, warmup_steps=10)
    assert lr_at(0, s) == pytest.approx(0.1) and lr_at(9, s) == pytest.approx(1.0)
    assert lr_at(99, s) == pytest.approx(0.1, abs=1e-3) and lr_at(50, s) < lr_at(20, s)


def test_three_steps_lower_the_loss_and_replay_from_the_seed(setup) -> None:
    tok, proc, data = setup
    schedule = TrainSchedule(steps=3, batch_size=4, lr=1e-2, warmup_steps=1)
    runs = []
    for _ in range(2):
        model = _model("refiner", tok)
        runs.append(train_stage(model, StageBatcher("refiner", model, tok, proc, data), schedule, seed=7))
    assert runs[0].steps == 3 and runs[0].losses == runs[1].losses  # reproducible from the seed
    assert runs[0].losses[-1] < runs[0].losses[0]


def test_greedy_captions_are_token_lists(setup) -> None:
    tok, proc, data = setup
    model = _model("drafter", tok)
    caps = greedy_captions(model, StageBatcher("drafter", model, tok, proc, data), np.arange(3), max_new_tokens=4)
    assert len(caps) == 3 and all(len(c) <= 4 and tok.eos_token_id not in c for c in caps)


def test_growth_preserves_the_refiner_function(setup) -> None:
    tok, proc, data = setup
    refiner, target = _model("refiner", tok, 1), _model("target", tok, 2)
    assert grow_from(refiner, target) == [(0, True), (0, False), (0, False)]
    b = StageBatcher("refiner", refiner, tok, proc, data).batch(np.arange(2))
    with torch.no_grad():
        want = refiner(input_ids=b.input_ids, **b.pixels).logits
        got = target(input_ids=b.input_ids, pixel_values_images=b.pixels["pixel_values"]).logits
    torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="cannot grow"):
        grow_from(_model("drafter", tok), target)


def test_expansion_plan_spreads_identity_copies_after_their_originals() -> None:
    assert expansion_plan(3, 8) == [
        (0, True),
        (0, False),
        (0, False),
        (1, True),
        (1, False),
        (1, False),
        (2, True),
        (2, False),
    ]
    assert expansion_plan(8, 32)[:4] == [(0, True), (0, False), (0, False), (0, False)]
    assert expansion_plan(2, 2) == [(0, True), (1, True)]
    for bad in ((3, 2), (0, 4)):
        with pytest.raises(ValueError, match="cannot expand"):
            expansion_plan(*bad)


@pytest.mark.parametrize("stage", ["refiner", "target"])
def test_deepening_preserves_the_function_and_then_trains(setup, stage: str) -> None:
    tok, proc, data = setup
    shallow = _model(stage, tok, 5)
    deep = build_model(stage, tok, GEO, dataclasses.replace(MICRO[stage], text_layers=MICRO[stage].text_layers + 3))
    plan = deepen(shallow, deep)
    assert sum(original for _, original in plan) == MICRO[stage].text_layers and len(plan) == len(
        deep.model.language_model.layers
    )
    b = StageBatcher(stage, shallow, tok, proc, data).batch(np.arange(2))
    with torch.no_grad():
        want = shallow(input_ids=b.input_ids, **b.pixels).logits
        got = deep(input_ids=b.input_ids, **b.pixels).logits
    torch.testing.assert_close(got, want)
    # the new layers are not dead: training moves their residual outputs off zero
    copy = deep.model.language_model.layers[next(j for j, (_, orig) in enumerate(plan) if not orig)]
    assert torch.count_nonzero(copy.mlp.down_proj.weight) == 0
    train_stage(
        deep,
        StageBatcher(stage, deep, tok, proc, data),
        TrainSchedule(steps=2, batch_size=4, lr=1e-2, warmup_steps=1),
        seed=0,
    )
    assert torch.count_nonzero(copy.self_attn.o_proj.weight) > 0
    with pytest.raises(ValueError, match="cannot deepen"):
        deepen(shallow, _model("drafter" if stage == "refiner" else "refiner", tok))


def test_distillation_uses_features_only_when_widths_match(setup) -> None:
    tok, proc, data = setup
    teacher = _model("target", tok, 3)
    tb = StageBatcher("target", teacher, tok, proc, data)
    caps = [tok.encode(c, add_special_tokens=False) + [tok.eos_token_id] for c in data.captions]
    for stage, features in (("refiner", True), ("drafter", False)):
        student = _model(stage, tok, 4)
        d = Distiller(
            teacher,
            tb,
            student,
            StageBatcher(stage, student, tok, proc, data),
            caps,
            tok.pad_token_id,
            DistillWeights(),
        )
        assert d.use_features is features
        before = [p.detach().clone() for p in student.parameters()]
        result = d.train(student, TrainSchedule(steps=2, batch_size=4, lr=1e-2, warmup_steps=1), seed=0)
        assert result.steps == 2 and all(np.isfinite(result.losses))
        assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))
        assert all(p.grad is None for p in teacher.parameters())  # the teacher stays frozen
        assert 0.0 <= argmax_agreement(d, student, np.arange(4)) <= 1.0


def test_a_progressive_stage_trains_shallow_then_deepens_to_its_depth(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    from cascade_sd_ros.core.zoo.configs import ARCHS, SCHEDULES
    from cascade_sd_ros.core.zoo.load import read_zoo_meta
    from cascade_sd_ros.core.zoo.pipeline import TrainSettings, train_zoo

    for stage in ("target", "refiner"):
        monkeypatch.setitem(ARCHS, stage, MICRO[stage])
    monkeypatch.setitem(SCHEDULES, "refiner", TrainSchedule(steps=2, batch_size=4, lr=1e-3, warmup_steps=1))
    monkeypatch.setitem(
        SCHEDULES,
        "target",
        TrainSchedule(steps=3, batch_size=4, lr=1e-3, warmup_steps=1, shallow_layers=1, deepen_steps=2),
    )
    settings = TrainSettings(samples=12, event_samples=4, eval_samples=4, data_dir=tmp_path / "data", progress=False)
    summary = train_zoo(("refiner", "target"), settings, out=tmp_path / "zoo")
    info = summary["stages"]["target"]
    # grown from the 1-layer refiner, trained at 1 layer, then deepened to the stage's 3 and fine-tuned
    assert info["phases"] == [
        {"layers": 1, "steps": 3, "train_s": info["phases"][0]["train_s"]},
        {"layers": 3, "steps": 2, "train_s": info["phases"][1]["train_s"]},
    ]
    assert info["steps"] == info["planned_steps"] == 5
    assert info["grown_from"] == "refiner, trained at 1 layers, deepened 1 -> 3"
    saved = read_zoo_meta(tmp_path / "zoo" / "target")
    assert saved["train"]["phases"][1]["layers"] == 3
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(tmp_path / "zoo" / "target").text_config.num_hidden_layers == 3
    assert "phases" not in summary["stages"]["refiner"]  # a one-phase schedule stays one phase
