"""Model folders are data, never code: weights load from safetensors only (a pickled
``pytorch_model.bin`` is refused without being unpickled), and an ``auto_map`` in config.json or
tokenizer_config.json never imports the folder's Python (``trust_remote_code`` is never true).

Each case's payload would create a marker file if it ran; the tests check the marker is absent.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from cascade_sd_ros.core.spec.adapter import load_adapter, load_hf_model
from cascade_sd_ros.core.stage_model import load_stage_model
from cascade_sd_ros.core.zoo.load import default_zoo_path, load_zoo
from cascade_sd_ros.core.zoo.tokenizer import load_tokenizer

SHIPPED = default_zoo_path()


class _Payload:
    """Unpickling this object calls ``open(marker, "w")``: a file appears if anyone unpickles it."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # noqa: ANN204
        return (open, (self.marker, "w"))


def _malicious_bin(folder: Path, marker: Path) -> None:
    torch.save({"model.lm_head.weight": _Payload(marker)}, folder / "pytorch_model.bin")


def _copy_stage(tmp_path: Path, stage: str = "drafter") -> Path:
    folder = tmp_path / stage
    shutil.copytree(SHIPPED / stage, folder)
    return folder


def _loaders(folder: Path):  # noqa: ANN202
    return {
        "load_hf_model": lambda: load_hf_model(folder),
        "load_adapter": lambda: load_adapter(folder),
        "load_stage_model": lambda: load_stage_model(str(folder), "drafter"),
    }


@pytest.mark.parametrize("loader", ["load_hf_model", "load_adapter", "load_stage_model"])
def test_a_pickled_checkpoint_is_refused_without_running(tmp_path: Path, loader: str) -> None:
    folder = _copy_stage(tmp_path)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    _malicious_bin(folder, marker)
    assert (folder / "pytorch_model.bin").stat().st_size > 0 and not marker.exists()
    with pytest.raises((OSError, ValueError)) as info:
        _loaders(folder)[loader]()
    assert "safetensors" in str(info.value) or "model.safetensors" in str(info.value)
    assert not marker.exists(), "the pickle in pytorch_model.bin was unpickled"


def test_the_zoo_refuses_a_folder_with_only_a_pickle(tmp_path: Path) -> None:
    for stage in ("target", "refiner", "drafter"):
        _copy_stage(tmp_path, stage)
    (tmp_path / "refiner" / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    _malicious_bin(tmp_path / "refiner", marker)
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_zoo(tmp_path)
    assert not marker.exists()


def test_a_pickle_beside_the_safetensors_is_never_read(tmp_path: Path) -> None:
    folder = _copy_stage(tmp_path)
    marker = tmp_path / "pwned"
    _malicious_bin(folder, marker)
    model = load_hf_model(folder)
    assert model.config.model_type == "llava" and not marker.exists()
    load_stage_model(str(folder), "drafter")
    assert not marker.exists()


_REMOTE_CODE = """
from pathlib import Path
Path({marker!r}).write_text("remote code ran")
from transformers import LlavaConfig, LlavaForConditionalGeneration, PreTrainedTokenizerFast
class EvilConfig(LlavaConfig):
    model_type = "evil_llava"
class EvilModel(LlavaForConditionalGeneration):
    config_class = EvilConfig
class EvilTokenizer(PreTrainedTokenizerFast):
    pass
"""


def _with_auto_map(tmp_path: Path, *, foreign_type: bool) -> tuple[Path, Path]:
    folder = _copy_stage(tmp_path)
    marker = tmp_path / "remote_code_ran"
    (folder / "evil.py").write_text(_REMOTE_CODE.format(marker=str(marker)))
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {
        "AutoConfig": "evil.EvilConfig",
        "AutoModelForCausalLM": "evil.EvilModel",
        "AutoModelForImageTextToText": "evil.EvilModel",
    }
    if foreign_type:
        config["model_type"] = "evil_llava"  # transformers has no code of its own for it
    (folder / "config.json").write_text(json.dumps(config))
    tok = json.loads((folder / "tokenizer_config.json").read_text())
    tok["auto_map"] = {"AutoTokenizer": [None, "evil.EvilTokenizer"]}
    (folder / "tokenizer_config.json").write_text(json.dumps(tok))
    return folder, marker


def test_auto_map_beside_a_known_architecture_runs_no_code(tmp_path: Path) -> None:
    folder, marker = _with_auto_map(tmp_path, foreign_type=False)
    model = load_hf_model(folder)
    assert type(model).__module__.startswith("transformers.") and not marker.exists()
    load_stage_model(str(folder), "drafter")
    load_tokenizer(folder)
    assert not marker.exists(), "the folder's evil.py was imported"


def test_auto_map_of_an_unknown_architecture_is_refused_without_running(tmp_path: Path) -> None:
    folder, marker = _with_auto_map(tmp_path, foreign_type=True)
    for load in _loaders(folder).values():
        with pytest.raises((OSError, ValueError, KeyError)):
            load()
        assert not marker.exists(), "the folder's evil.py was imported"
