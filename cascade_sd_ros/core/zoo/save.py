"""Write one stage as a self-contained Hugging Face folder (what `load_zoo` and `load_adapter` read)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, VideoLlavaImageProcessor

from cascade_sd_ros.core.zoo.configs import DataGeometry, Stage
from cascade_sd_ros.core.zoo.load import META_FILE

__all__ = ["save_stage"]


def save_stage(
    folder: Path,
    stage: Stage,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    processor: VideoLlavaImageProcessor,
    geometry: DataGeometry,
    question: str,
    extra: dict[str, Any] | None = None,
    dtype: torch.dtype = torch.float16,
) -> None:
    """Save model (safetensors, ``dtype``), tokenizer, processor and zoo.json into ``folder``.

    Written to a sibling temp folder first and swapped in, so a crash never leaves a half zoo.
    """
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model.to(dtype)  # type: ignore[arg-type]  # transformers' @wraps(Module.to) reads as unbound: self expected first
    model.save_pretrained(tmp, safe_serialization=True)
    model.to(torch.float32)  # type: ignore[arg-type]  # transformers' @wraps(Module.to) reads as unbound: self expected first
    tokenizer.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    meta = {"stage": stage, "geometry": geometry.to_dict(), "question": question, **(extra or {})}
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
