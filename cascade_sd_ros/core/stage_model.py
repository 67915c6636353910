"""One stage's model as a node needs it: an adapter plus how to turn pixels and a question into its
:class:`~cascade_sd_ros.core.spec.StageContext`.

``load_stage_model(source, role)`` takes either a local Hugging Face folder (the shipped zoo, or a real
Video-LLaVA / LLaVA checkpoint: config.json, weights, tokenizer files, preprocessor_config.json) or
``tiny:SEED`` — the seeded tiny random models of :func:`cascade_sd_ros.core.spec.testing.tiny_models`,
which have no tokenizer, so their question ids are derived from the question's bytes. Tiny models
exist for tests and for trying the pipeline before the zoo is trained.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch

from cascade_sd_ros.core.spec.adapter import ModelAdapter, StageContext

Role = Literal["target", "refiner", "drafter"]
ROLES: tuple[Role, ...] = ("target", "refiner", "drafter")
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
TINY_PREFIX = "tiny:"


@dataclass(frozen=True)
class StageModel:
    """An adapter and its context builder; ``num_frames`` is 1 for image stages."""

    role: Role
    adapter: ModelAdapter
    num_frames: int
    image_size: int
    build_context: Callable[[np.ndarray, str], StageContext]  # (uint8 [F,H,W,3] or [H,W,3], question)
    decode: Callable[[list[int]], str]  # caption token ids -> text

    def context(self, pixels: np.ndarray, question: str) -> StageContext:
        if self.role == "target":
            if pixels.ndim != 4 or pixels.shape[0] != self.num_frames:
                raise ValueError(f"the target takes {self.num_frames} frames [F, H, W, 3], got {pixels.shape}")
        elif pixels.ndim != 3:
            raise ValueError(f"the {self.role} takes one image [H, W, 3], got {pixels.shape}")
        return self.build_context(pixels, question)


def parse_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {name!r}") from None


def parse_device(name: str) -> torch.device:
    """'cpu', 'cuda', 'cuda:N'; a CUDA device on a machine without one is a clear error."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device {name!r} is not a torch device name ({exc})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available on this machine")
    return device


def _check_role(role: str) -> Role:
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    return role  # type: ignore[return-value]


def load_stage_model(source: str, role: str, *, device: str = "cpu", dtype: str = "float32") -> StageModel:
    """Load one stage from a folder or ``tiny:SEED``; every problem is a ValueError/FileNotFoundError
    naming the source."""
    role = _check_role(role)
    torch_device, torch_dtype = parse_device(device), parse_dtype(dtype)
    if source.startswith(TINY_PREFIX):
        try:
            seed = int(source[len(TINY_PREFIX) :])
        except ValueError:
            raise ValueError(f"model source {source!r}: expected tiny:SEED with an integer seed") from None
        return _tiny_stage(seed, role, torch_device, torch_dtype)
    return _folder_stage(Path(source), role, torch_device, torch_dtype)


def _tiny_stage(seed: int, role: Role, device: torch.device, dtype: torch.dtype) -> StageModel:
    from cascade_sd_ros.core.spec.preprocess import make_image_processor, preprocess_image, preprocess_video
    from cascade_sd_ros.core.spec.prompt import expand_placeholder
    from cascade_sd_ros.core.spec.testing import BOS_ID, tiny_models

    tm = tiny_models(seed, aligned=True, dtype=dtype, device=device)
    adapter = {"target": tm.target, "refiner": tm.refiner, "drafter": tm.drafter}[role]
    processor = make_image_processor(tm.image_size)
    vocab = tm.vocab_size
    image_id, video_id = vocab - 2, vocab - 1
    modality = "video" if role == "target" else "image"
    placeholder = video_id if role == "target" else image_id
    count = adapter.expected_media_tokens(tm.num_frames if role == "target" else 1)

    def build(pixels: np.ndarray, question: str) -> StageContext:
        # no tokenizer: the question's bytes pick ordinary text ids [3, V-2), deterministically
        words = [3 + b % (vocab - 5) for b in question.encode("utf-8")[:16]] or [3]
        ids = expand_placeholder([BOS_ID, placeholder, *words], placeholder, count)
        if modality == "video":
            pv = preprocess_video(processor, pixels)
        else:
            pv = preprocess_image(processor, pixels)
        return StageContext(ids, pv.to(dtype), modality)

    def decode(token_ids: list[int]) -> str:
        return " ".join(f"<{t}>" for t in token_ids)

    return StageModel(role, adapter, tm.num_frames if role == "target" else 1, tm.image_size, build, decode)


def _folder_stage(folder: Path, role: Role, device: torch.device, dtype: torch.dtype) -> StageModel:
    from transformers import AutoTokenizer, VideoLlavaImageProcessor

    from cascade_sd_ros.core.spec.adapter import load_adapter
    from cascade_sd_ros.core.spec.preprocess import preprocess_image, preprocess_video
    from cascade_sd_ros.core.spec.prompt import build_prompt_ids

    if not folder.is_dir():
        raise FileNotFoundError(f"{role} model folder {folder} does not exist")
    if not (folder / "preprocessor_config.json").is_file():
        raise FileNotFoundError(f"{role} model folder {folder} has no preprocessor_config.json")
    adapter = load_adapter(folder, name=role, device=device, dtype=dtype)
    want = "video" if role == "target" else "image"
    if want == "video" and adapter.modality != "video":
        raise ValueError(f"target model in {folder} is a {adapter.modality} model; the target needs a video model")
    if adapter.modality == "text":
        raise ValueError(f"{role} model in {folder} is text-only; the {role} needs an image model")
    adapter.modality = want  # a video model also serves single images
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(f"{role} model folder {folder}: no usable tokenizer ({exc})") from None
    processor = VideoLlavaImageProcessor.from_pretrained(folder, local_files_only=True)
    crop = processor.crop_size
    image_size = int(crop["height"]) if isinstance(crop, dict) else int(getattr(crop, "height"))
    config = adapter.model.config
    num_frames = 1
    if want == "video":
        vision = config.vision_config
        per_frame = (int(vision.image_size) // int(vision.patch_size)) ** 2 + 1
        seq = getattr(config, "video_seq_length", None)
        num_frames = int(seq) // per_frame if seq else 8

    def build(pixels: np.ndarray, question: str) -> StageContext:
        ids = build_prompt_ids(tokenizer, question, want, config, num_frames)
        pv = preprocess_video(processor, pixels) if want == "video" else preprocess_image(processor, pixels)
        return StageContext(tuple(int(i) for i in ids), pv.to(dtype), want)

    def decode(token_ids: list[int]) -> str:
        return str(tokenizer.decode(token_ids, skip_special_tokens=True))

    return StageModel(role, adapter, num_frames, image_size, build, decode)


def default_stage_source(role: str) -> str:
    """The shipped zoo's folder for ``role`` (what an empty ``model`` parameter means)."""
    from cascade_sd_ros.core.zoo import default_zoo_path

    return str(Path(default_zoo_path()) / _check_role(role))
