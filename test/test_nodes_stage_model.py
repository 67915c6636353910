"""Loading one stage's model for a node: sources, roles, devices, and the errors that name them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cascade_sd_ros.core.stage_model import default_stage_source, load_stage_model

FRAMES = np.zeros((8, 64, 64, 3), np.uint8)


@pytest.mark.parametrize(
    ("source", "role", "kw", "error", "match"),
    [
        ("tiny:x", "target", {}, ValueError, "tiny:SEED"),
        ("tiny:0", "critic", {}, ValueError, "role must be one of"),
        ("tiny:0", "target", {"dtype": "float8"}, ValueError, "dtype must be one of"),
        ("tiny:0", "target", {"device": "not-a-device"}, ValueError, "not a torch device"),
        ("tiny:0", "target", {"backend": "onnx"}, ValueError, "backend must be one of"),
        ("tiny:0", "target", {"max_new_tokens": 0}, ValueError, "max_new_tokens must be"),
        ("/nonexistent/zoo/target", "target", {}, FileNotFoundError, "target model folder /nonexistent/zoo/target"),
    ],
)
def test_bad_sources_name_the_problem(source: str, role: str, kw: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        load_stage_model(source, role, **kw)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_cuda_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="CUDA is not available"):
        load_stage_model("tiny:0", "target", device="cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_static_backend_without_cuda_is_refused_before_loading() -> None:
    with pytest.raises(ValueError, match="backend cuda-graphs for the refiner: device cpu: the static path needs CUDA"):
        load_stage_model("/nonexistent/zoo/refiner", "refiner", backend="cuda-graphs")  # no folder read


def test_zoo_stages_load_with_auto_dtype_and_backend() -> None:
    for role in ("target", "refiner", "drafter"):
        model = load_stage_model(default_stage_source(role), role)
        assert model.adapter.model.dtype == torch.float32  # auto on a CPU
        assert model.backend.name == "transformers"  # device cpu (the default)
        assert model.warm_up_s is None


def test_folder_without_preprocessor_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
        load_stage_model(str(tmp_path), "refiner")


def test_tiny_stages_build_contexts_of_their_modality() -> None:
    target = load_stage_model("tiny:0", "target")
    drafter = load_stage_model("tiny:0", "drafter")
    assert target.num_frames == 8 and drafter.num_frames == 1
    ctx = target.context(FRAMES, "describe the scene")
    assert ctx.modality == "video" and tuple(ctx.pixel_values.shape[:2]) == (1, 8)
    assert drafter.context(FRAMES[0], "describe the scene").modality == "image"
    with pytest.raises(ValueError, match="takes 8 frames"):
        target.context(FRAMES[:3], "q")
    with pytest.raises(ValueError, match="one image"):
        drafter.context(FRAMES, "q")
    # the same seed gives the same model in any process: what lets tiny:SEED nodes run apart
    again = load_stage_model("tiny:0", "target")
    a = target.adapter.model.state_dict()
    b = again.adapter.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_default_source_is_the_shipped_zoo() -> None:
    from cascade_sd_ros.core.zoo import default_zoo_path

    assert default_stage_source("refiner") == str(Path(default_zoo_path()) / "refiner")
    with pytest.raises(ValueError, match="role"):
        default_stage_source("critic")
