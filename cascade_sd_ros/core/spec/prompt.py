"""Prompts in the Video-LLaVA format with the exact `<video>` / `<image>` placeholder expansion.

Video-LLaVA-7B-hf expects `USER: <video>\\n{question} ASSISTANT:`. The model scatters vision features
into the placeholder positions one for one, so the prompt must carry exactly as many placeholder ids
as there are feature vectors:

* video (VideoLlava): every frame keeps its CLS vector -> num_frames x (patches + 1) ids;
* image: the "default" feature strategy drops CLS -> patches ids ("full" keeps it -> patches + 1),

with patches = (image_size // patch_size) ** 2 of the vision tower. This matches
`VideoLlavaProcessor`, which we cannot use here (it pulls in torchvision).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from transformers import PretrainedConfig

__all__ = [
    "PROMPT_TEMPLATES",
    "TokenizerLike",
    "format_prompt",
    "media_token_id",
    "media_token_count",
    "expand_placeholder",
    "build_prompt_ids",
]

PROMPT_TEMPLATES: dict[str, str] = {
    "video": "USER: <video>\n{question} ASSISTANT:",
    "image": "USER: <image>\n{question} ASSISTANT:",
    "text": "USER: {question} ASSISTANT:",
}


class TokenizerLike(Protocol):
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...


def format_prompt(question: str, modality: str) -> str:
    """The chat text for `question` with one (unexpanded) placeholder for the modality."""
    if modality not in PROMPT_TEMPLATES:
        raise ValueError(f"modality must be one of {sorted(PROMPT_TEMPLATES)}, got {modality!r}")
    if "<video>" in question or "<image>" in question:
        raise ValueError("the question must not contain <video>/<image> placeholders itself")
    return PROMPT_TEMPLATES[modality].format(question=question)


def media_token_id(config: PretrainedConfig, modality: str) -> int:
    """Placeholder id for `modality` in `config` (a VideoLlava or Llava config)."""
    attr = {"video": "video_token_index", "image": "image_token_index"}.get(modality)
    if attr is None or getattr(config, attr, None) is None:
        raise ValueError(f"model type {config.model_type!r} has no placeholder for {modality!r}")
    return int(getattr(config, attr))


def media_token_count(config: PretrainedConfig, modality: str, num_frames: int = 1) -> int:
    """Number of placeholder ids the vision features fill (0 for text)."""
    if modality == "text":
        return 0
    vision = getattr(config, "vision_config", None)
    if vision is None:
        raise ValueError(f"model type {config.model_type!r} has no vision tower for {modality!r}")
    patches = (int(vision.image_size) // int(vision.patch_size)) ** 2
    # CLIP towers prepend a CLS vector; SigLIP's (llava-interleave-qwen, LLaVA-OneVision) has none,
    # so its "full" features are the patches alone
    cls = 0 if getattr(vision, "model_type", "") == "siglip_vision_model" else 1
    if modality == "video":
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        return num_frames * (patches + 1)  # VideoLlava keeps CLS for every frame
    if modality == "image":
        strategy = getattr(config, "vision_feature_select_strategy", "default")
        return patches if strategy == "default" else patches + cls
    raise ValueError(f"unknown modality {modality!r}")


def expand_placeholder(ids: Sequence[int], placeholder_id: int, count: int) -> tuple[int, ...]:
    """Replace the single `placeholder_id` in `ids` by `count` copies of it.

    Raises:
        ValueError: unless `placeholder_id` occurs exactly once.
    """
    hits = [i for i, t in enumerate(ids) if t == placeholder_id]
    if len(hits) != 1:
        raise ValueError(f"expected exactly one placeholder id {placeholder_id} in the prompt, found {len(hits)}")
    i = hits[0]
    return (*ids[:i], *([placeholder_id] * count), *ids[i + 1 :])


# LLaVA models on a Qwen2 language model (llava-interleave-qwen, LLaVA-OneVision) were trained on
# ChatML turns, not Vicuna's "USER:/ASSISTANT:".
CHATML_TEMPLATES: dict[str, str] = {
    "video": "<|im_start|>user <video>\n{question}<|im_end|>\n<|im_start|>assistant\n",
    "image": "<|im_start|>user <image>\n{question}<|im_end|>\n<|im_start|>assistant\n",
    "text": "<|im_start|>user {question}<|im_end|>\n<|im_start|>assistant\n",
}
CHATML_LANGUAGE_MODELS = frozenset({"qwen2"})


def chat_turns(config: PretrainedConfig | None) -> str:
    """Which turn format the model was trained on: "chatml" for a Qwen2 language model, else "vicuna"."""
    text = getattr(config, "text_config", None) if config is not None else None
    return "chatml" if getattr(text, "model_type", None) in CHATML_LANGUAGE_MODELS else "vicuna"


def build_prompt_ids(
    tokenizer: TokenizerLike,
    question: str,
    modality: str,
    config: PretrainedConfig | None = None,
    num_frames: int = 1,
) -> tuple[int, ...]:
    """Token ids of the Video-LLaVA prompt for `question`, placeholders expanded for `config`.

    The tokenizer must map "<video>"/"<image>" to the config's placeholder id as one token.
    """
    text = format_prompt(question, modality)
    if chat_turns(config) == "chatml":
        text = CHATML_TEMPLATES[modality].format(question=question)
    ids = list(tokenizer.encode(text, add_special_tokens=True))
    if modality == "text":
        return tuple(ids)
    if config is None:
        raise ValueError(f"a {modality} prompt needs the model config to size its placeholders")
    return expand_placeholder(ids, media_token_id(config, modality), media_token_count(config, modality, num_frames))
