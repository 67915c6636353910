"""Load the shipped (or any compatible) zoo: three local model folders -> adapters + tokenizer.

A zoo folder holds `target/`, `refiner/`, `drafter/`, each a Hugging Face folder (config.json,
model.safetensors, tokenizer files, preprocessor_config.json, zoo.json). Everything loads with
`local_files_only=True`; nothing is ever downloaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase, VideoLlavaImageProcessor

from cascade_sd_ros.core.spec.adapter import HFAdapter, StageContext, check_same_vocab, load_adapter
from cascade_sd_ros.core.spec.preprocess import preprocess_image, preprocess_video
from cascade_sd_ros.core.spec.prompt import build_prompt_ids
from cascade_sd_ros.core.zoo.configs import STAGES, DataGeometry, Stage
from cascade_sd_ros.core.zoo.tokenizer import DEFAULT_QUESTION, decode_text, load_tokenizer

__all__ = ["Zoo", "ZooFolderError", "default_zoo_path", "check_stage_folder", "read_zoo_meta", "load_zoo"]

META_FILE = "zoo.json"  # stage name, data geometry and question the stage was trained with
_MODEL_TYPES: dict[str, str] = {"target": "video_llava", "refiner": "llava", "drafter": "llava"}
_REQUIRED = ("config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json")


class ZooFolderError(FileNotFoundError):
    """A zoo or model folder is missing or incomplete; the message names the folder and the file."""


def default_zoo_path() -> Path:
    """The zoo shipped inside the package: cascade_sd_ros/zoo/."""
    return Path(__file__).resolve().parents[2] / "zoo"


def check_stage_folder(folder: Path, stage: Stage | None = None) -> None:
    """Raise ZooFolderError/ValueError naming what is wrong with a model folder."""
    if not folder.is_dir():
        raise ZooFolderError(f"model folder {folder} does not exist")
    missing = [f for f in _REQUIRED if not (folder / f).is_file()]
    if missing:
        raise ZooFolderError(f"model folder {folder} lacks {', '.join(missing)}")
    if stage is not None:
        try:
            model_type = json.loads((folder / "config.json").read_text()).get("model_type")
        except json.JSONDecodeError as exc:
            raise ValueError(f"{folder / 'config.json'} is not valid JSON: {exc}") from exc
        if model_type != _MODEL_TYPES[stage]:
            raise ValueError(f"{folder}: the {stage} must be a {_MODEL_TYPES[stage]} model, config says {model_type!r}")


def read_zoo_meta(folder: Path) -> dict:
    """zoo.json of a model folder ({} for a foreign checkpoint that has none)."""
    path = folder / META_FILE
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return meta


@dataclass
class Zoo:
    """Three stage adapters sharing one tokenizer.

    Attributes:
        prompt: the question the zoo was trained on; `context()` wraps it in the Video-LLaVA template.
        geometry: image size, clip length/duration and event window the zoo was trained with (the
            nodes' defaults should match it).
    """

    target: HFAdapter
    refiner: HFAdapter
    drafter: HFAdapter
    tokenizer: PreTrainedTokenizerBase
    prompt: str
    geometry: DataGeometry
    processors: dict[Stage, VideoLlavaImageProcessor]  # per stage: each folder's own pixel statistics

    def adapter(self, stage: Stage) -> HFAdapter:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
        return getattr(self, stage)

    def prompt_ids(self, stage: Stage, num_frames: int | None = None, question: str | None = None) -> tuple[int, ...]:
        """Expanded prompt ids of ``stage`` (the target's for ``num_frames`` frames)."""
        adapter = self.adapter(stage)
        frames = self.geometry.num_frames if num_frames is None else num_frames
        return build_prompt_ids(
            self.tokenizer,
            question or self.prompt,
            adapter.modality,
            adapter.model.config,
            num_frames=frames if adapter.modality == "video" else 1,
        )

    def context(self, stage: Stage, pixels: np.ndarray, question: str | None = None) -> StageContext:
        """StageContext from uint8 pixels: the target takes [F, H, W, 3], refiner/drafter [H, W, 3]."""
        adapter = self.adapter(stage)
        if adapter.modality == "video":
            values = preprocess_video(self.processors[stage], pixels)  # [1, F, 3, S, S]
            ids = self.prompt_ids(stage, int(values.shape[1]), question)
        else:
            values = preprocess_image(self.processors[stage], pixels)  # [1, 3, S, S]
            ids = self.prompt_ids(stage, 1, question)
        return StageContext(ids, values, adapter.modality)

    def decode(self, token_ids: list[int]) -> str:
        return decode_text(self.tokenizer, token_ids, skip_special_tokens=True)


def load_zoo(
    root: str | Path | None = None,
    device: str | torch.device = "cpu",
    *,
    target: str | Path | None = None,
    refiner: str | Path | None = None,
    drafter: str | Path | None = None,
) -> Zoo:
    """Load the zoo at ``root`` (default: the shipped one); per-stage folders may be overridden.

    Raises:
        ZooFolderError: a folder or one of its files is missing.
        ValueError: a folder holds the wrong architecture, or the stages do not share a vocabulary.
    """
    base = Path(root) if root is not None else default_zoo_path()
    chosen = {"target": target, "refiner": refiner, "drafter": drafter}
    folders: dict[Stage, Path] = {s: base / s if (c := chosen[s]) is None else Path(c) for s in STAGES}
    if any(chosen[s] is None for s in STAGES) and not base.is_dir():
        raise ZooFolderError(f"zoo folder {base} does not exist (train one with `cascade-sd train`)")
    for stage, folder in folders.items():
        check_stage_folder(folder, stage)
    adapters = {s: load_adapter(folders[s], name=s, device=device, dtype=torch.float32) for s in STAGES}
    check_same_vocab([adapters["drafter"], adapters["refiner"], adapters["target"]])
    tokenizer = load_tokenizer(folders["target"])
    meta = read_zoo_meta(folders["target"])
    geometry = DataGeometry(**meta["geometry"]) if "geometry" in meta else DataGeometry()
    processors = {s: VideoLlavaImageProcessor.from_pretrained(folders[s], local_files_only=True) for s in STAGES}
    return Zoo(
        adapters["target"],
        adapters["refiner"],
        adapters["drafter"],
        tokenizer,
        str(meta.get("question", DEFAULT_QUESTION)),
        geometry,
        processors,
    )
