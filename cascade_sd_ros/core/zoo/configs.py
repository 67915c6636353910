"""Architectures of the three zoo stages and the data geometry they are trained on.

The stages use the classes real checkpoints use (Video-LLaVA target, LLaVA refiner and drafter), so
one code path serves the zoo and a 7B checkpoint. Sizes are chosen for a real per-token cost
hierarchy at toy scale: at this size a decode step costs roughly a fixed overhead plus a per-layer
overhead, so depth (not width) sets the cost. The target is deep and narrow (like the 32 layers of a
7B model), the refiner a few layers, the drafter one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    VideoLlavaConfig,
    VideoLlavaForConditionalGeneration,
    VideoLlavaImageProcessor,
)

from cascade_sd_ros.core.zoo.tokenizer import IMAGE, VIDEO

__all__ = [
    "STAGES",
    "Stage",
    "DataGeometry",
    "DATA",
    "StageArch",
    "ARCHS",
    "TrainSchedule",
    "SCHEDULES",
    "build_model",
    "build_image_processor",
]

Stage = Literal["target", "refiner", "drafter"]
STAGES: tuple[Stage, ...] = ("target", "refiner", "drafter")


@dataclass(frozen=True)
class DataGeometry:
    """What a training sample is; the nodes' defaults must match these for the zoo to be in-distribution.

    Attributes:
        image_size: frames and event images are square, this many pixels a side.
        num_frames: target clip length (Video-LLaVA takes 8).
        clip_duration_s: the clip's frames span [T - clip_duration_s, T] evenly (last one at T).
        event_window_s: the drafter's events come from [T - event_window_s, T].
        event_chunks: EventFrameRenderer chunks (one image, so one LLaVA `<image>`).
        scene_duration_s: length of each sampled scene; T is drawn in [clip_duration_s, this].
        esim_rate_hz: intensity sampling rate of the event simulator inside the window.
    """

    image_size: int = 48
    num_frames: int = 8
    clip_duration_s: float = 1.0
    event_window_s: float = 0.25
    event_chunks: int = 1
    scene_duration_s: float = 2.0
    esim_rate_hz: float = 1000.0

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


DATA = DataGeometry()


@dataclass(frozen=True)
class StageArch:
    """Vision tower (CLIP) + language model (Llama) sizes of one stage."""

    video: bool  # VideoLlava (8 frames) or Llava (one image)
    patch_size: int
    vision_hidden: int
    vision_layers: int
    text_hidden: int
    text_layers: int
    text_heads: int


# Target and refiner share the vision tower and width, so the target can start as a grown copy of
# the trained refiner (see `grow.py`) and distillation can align their features.
ARCHS: dict[Stage, StageArch] = {
    "target": StageArch(
        video=True, patch_size=16, vision_hidden=128, vision_layers=2, text_hidden=64, text_layers=32, text_heads=2
    ),
    "refiner": StageArch(
        video=False, patch_size=16, vision_hidden=128, vision_layers=2, text_hidden=64, text_layers=8, text_heads=2
    ),
    "drafter": StageArch(
        video=False, patch_size=16, vision_hidden=128, vision_layers=1, text_hidden=64, text_layers=1, text_heads=2
    ),
}


@dataclass(frozen=True)
class TrainSchedule:
    """Optimiser schedule of one stage; a fixed step count keeps training reproducible from the seed."""

    steps: int
    batch_size: int
    lr: float
    warmup_steps: int = 50
    weight_decay: float = 0.01
    # Progressive depth: train at ``shallow_layers`` language-model layers for ``steps``, then deepen
    # to the stage's depth (grow.py: the function is kept) and fine-tune ``deepen_steps`` at
    # ``deepen_lr_scale`` x lr. A step of a 32-layer model costs ~4x an 8-layer one on a small CPU,
    # and the deep model starts from a trained function, so both phases fit the hour the whole zoo has.
    shallow_layers: int | None = None
    deepen_steps: int = 0
    deepen_lr_scale: float = 0.3


# Sized for the shared 2-core CPU; a --max-minutes budget shrinks them to fit.
# A 128-wide vision tower at lr 1e-3 learns shape within ~2000 steps; 64 wide at 3e-3 stayed near
# chance (colour alone is easy: it is a patch's mean).
SCHEDULES: dict[Stage, TrainSchedule] = {
    "target": TrainSchedule(
        steps=3000, batch_size=32, lr=1e-3, warmup_steps=50, shallow_layers=8, deepen_steps=900, deepen_lr_scale=0.3
    ),
    "refiner": TrainSchedule(steps=3000, batch_size=32, lr=1e-3),
    "drafter": TrainSchedule(steps=3000, batch_size=32, lr=1e-3),
}


def _vision_config(arch: StageArch, image_size: int) -> CLIPVisionConfig:
    if image_size % arch.patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of patch_size {arch.patch_size}")
    return CLIPVisionConfig(
        hidden_size=arch.vision_hidden,
        intermediate_size=2 * arch.vision_hidden,
        num_hidden_layers=arch.vision_layers,
        num_attention_heads=max(1, arch.vision_hidden // 32),
        image_size=image_size,
        patch_size=arch.patch_size,
        projection_dim=arch.vision_hidden,
    )


def _text_config(arch: StageArch, tokenizer: PreTrainedTokenizerBase) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=arch.text_hidden,
        intermediate_size=2 * arch.text_hidden,
        num_hidden_layers=arch.text_layers,
        num_attention_heads=arch.text_heads,
        num_key_value_heads=arch.text_heads,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )


def _token_id(tokenizer: PreTrainedTokenizerBase, token: str) -> int:
    found = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(found, int):
        raise ValueError(f"token {token!r} maps to {found!r}, not one id")
    return found


def build_model(
    stage: Stage, tokenizer: PreTrainedTokenizerBase, geometry: DataGeometry = DATA, arch: StageArch | None = None
) -> PreTrainedModel:
    """A freshly initialised model of `stage` (weights from the current torch RNG state)."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
    arch = arch or ARCHS[stage]
    vision = _vision_config(arch, geometry.image_size).to_dict()
    text = _text_config(arch, tokenizer).to_dict()
    common: dict[str, Any] = dict(  # keyword arguments of both config classes
        vision_config=vision,
        text_config=text,
        image_token_index=_token_id(tokenizer, IMAGE),
        # Use the last CLIP layer: the real default (-2) would leave a 1-2 layer tower half unused.
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )
    patches = (geometry.image_size // arch.patch_size) ** 2
    if arch.video:
        config = VideoLlavaConfig(
            **common,
            video_token_index=_token_id(tokenizer, VIDEO),
            image_seq_length=patches,
            video_seq_length=geometry.num_frames * (patches + 1),
        )
        model: PreTrainedModel = VideoLlavaForConditionalGeneration(config)
    else:
        model = LlavaForConditionalGeneration(LlavaConfig(**common, image_seq_length=patches))
    for cfg in (model.config, model.generation_config):
        cfg.bos_token_id = tokenizer.bos_token_id
        cfg.eos_token_id = tokenizer.eos_token_id
        cfg.pad_token_id = tokenizer.pad_token_id
    return model


# Per-stage pixel statistics (saved in each folder's preprocessor_config.json, as any checkpoint
# ships its own): CLIP's patch embedding has no bias, so a large common value (the white canvas of
# event images, the dark scene background) would dominate every patch vector and drown the sparse
# object pixels. Centring on the background makes empty patches ~0 and objects stand out.
_PIXEL_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "rgb": ((0.21, 0.21, 0.21), (0.3, 0.3, 0.3)),  # dark textured background -> ~0
    "events": ((1.0, 1.0, 1.0), (0.5, 0.5, 0.5)),  # white canvas -> 0, red/blue events -> -2
}


def build_image_processor(stage: Stage, geometry: DataGeometry = DATA) -> VideoLlavaImageProcessor:
    """Processor of ``stage`` at the zoo's resolution, normalised with the stage's pixel statistics."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
    mean, std = _PIXEL_STATS["events" if stage == "drafter" else "rgb"]
    side = geometry.image_size
    return VideoLlavaImageProcessor(
        size={"shortest_edge": side},
        crop_size={"height": side, "width": side},
        image_mean=list(mean),
        image_std=list(std),
    )
