"""Miniature checkpoints in the real families' layouts, built into a folder in seconds (no download).

Each folder has what the real release has -- ``config.json`` with that family's structure and key
names, ``model.safetensors`` with its tensor names, the tokenizer files and ``preprocessor_config.json``
-- at tiny widths with random weights:

* :func:`video_llava_hf` -- ``LanguageBind/Video-LLaVA-7B-hf``: ``video_llava``, CLIP tower, Llama LM,
  ``<image>``/``<video>`` placeholders, ``VideoLlavaImageProcessor``;
* :func:`llava_15_hf` -- ``llava-hf/llava-1.5-7b-hf``: ``llava``, CLIP tower, Llama LM, the same
  Vicuna tokenizer plus its ``<pad>`` (so, as in the real pair, another token -> id map);
* :func:`llava_qwen` -- ``llava-hf/llava-interleave-qwen-0.5b-hf``: ``llava``, SigLIP tower (no CLS,
  ``full`` features), Qwen2 LM, a byte-level Qwen tokenizer, ``SiglipImageProcessor``: the
  foreign-vocabulary family;
* :func:`eventgpt` -- an EventGPT release folder: ``EventChat_llama`` (Llama fields at top level,
  ``mm_visual_tower`` naming a CLIP ViT-L/14), the CLIP tower, 2-layer GELU projector and feature
  adaptor stored under ``model.visual_tower.visual_tower.*``, ``model.visual_projector.{0,2}.*`` and
  ``model.feature_adaptor.*``, Llama weights under ``model.*`` / ``lm_head``, a CLIP processor.

The Vicuna-style tokenizer is trained once per process (:func:`vicuna_tokenizer`); two stages built
on it share its vocabulary, the Qwen one does not.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    PreTrainedTokenizerFast,
    Qwen2Config,
    SiglipVisionConfig,
    VideoLlavaConfig,
    VideoLlavaForConditionalGeneration,
    VideoLlavaImageProcessor,
)

from helpers.mini_tokenizers import llama_style, qwen_style

IMAGE_SIZE = 28  # [px] two patches of 14 a side: 4 patches per image
PATCH = 14
FRAMES = 8
HIDDEN = 32


@functools.lru_cache(maxsize=1)
def vicuna_tokenizer() -> PreTrainedTokenizerFast:
    return llama_style()


@functools.lru_cache(maxsize=1)
def qwen_tokenizer() -> PreTrainedTokenizerFast:
    return qwen_style()


def _llama(tok: PreTrainedTokenizerFast, layers: int = 2) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tok),
        hidden_size=HIDDEN,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )


def _clip(hidden: int = HIDDEN, heads: int = 2) -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=heads,
        image_size=IMAGE_SIZE,
        patch_size=PATCH,
        projection_dim=hidden,
    )


def _clip_processor(folder: Path) -> None:
    VideoLlavaImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    ).save_pretrained(folder)


def _save(model: torch.nn.Module, tok: PreTrainedTokenizerFast, folder: Path) -> Path:
    torch.manual_seed(0)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


def video_llava_hf(folder: Path, seed: int = 0) -> Path:
    """Video-LLaVA-7B-hf's layout: 8 frames x (4 patches + CLS) = 40 ``<video>`` positions."""
    tok = vicuna_tokenizer()
    torch.manual_seed(seed)
    config = VideoLlavaConfig(
        text_config=_llama(tok).to_dict(),
        vision_config=_clip().to_dict(),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        video_token_index=tok.convert_tokens_to_ids("<video>"),
        projector_hidden_act="gelu",
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        image_seq_length=(IMAGE_SIZE // PATCH) ** 2,
        video_seq_length=FRAMES * ((IMAGE_SIZE // PATCH) ** 2 + 1),
    )
    _save(VideoLlavaForConditionalGeneration(config).eval(), tok, folder)
    _clip_processor(folder)
    return folder


def llava_15_hf(folder: Path, seed: int = 1, layers: int = 1) -> Path:
    """llava-1.5-7b-hf's layout; its tokenizer adds ``<pad>`` to Vicuna's, as the real one does."""
    tok = vicuna_tokenizer()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tok.backend_tokenizer.__class__.from_str(tok.backend_tokenizer.to_str()),
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        extra_special_tokens=["<image>", "<video>"],
        model_max_length=4096,
    )
    tok.add_special_tokens({"pad_token": "<pad>"})
    torch.manual_seed(seed)
    config = LlavaConfig(
        text_config=_llama(tok, layers).to_dict(),
        vision_config=_clip().to_dict(),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        projector_hidden_act="gelu",
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        image_seq_length=(IMAGE_SIZE // PATCH) ** 2,
        pad_token_id=tok.pad_token_id,
    )
    _save(LlavaForConditionalGeneration(config).eval(), tok, folder)
    _clip_processor(folder)
    return folder


def llava_qwen(folder: Path, seed: int = 2) -> Path:
    """llava-interleave-qwen's layout: SigLIP tower (``full`` features, no CLS), Qwen2 LM, Qwen tokenizer."""
    tok = qwen_tokenizer()
    torch.manual_seed(seed)
    text = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=HIDDEN,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        eos_token_id=tok.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    vision = SiglipVisionConfig(
        hidden_size=HIDDEN,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=PATCH,
    )
    config = LlavaConfig(
        text_config=text.to_dict(),
        vision_config=vision.to_dict(),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        projector_hidden_act="gelu",
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_seq_length=(IMAGE_SIZE // PATCH) ** 2,
    )
    _save(LlavaForConditionalGeneration(config).eval(), tok, folder)
    (folder / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "SiglipImageProcessor",
                "do_resize": True,
                "size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                "resample": 3,
                "do_rescale": True,
                "rescale_factor": 1 / 255,
                "do_normalize": True,
                "image_mean": [0.5, 0.5, 0.5],
                "image_std": [0.5, 0.5, 0.5],
                "do_convert_rgb": True,
            },
            indent=2,
        )
    )
    return folder


def eventgpt(folder: Path, seed: int = 3, adaptor: bool = True, vision_hidden: int = 64) -> Path:
    """An EventGPT release folder (its own key names; our loader, not transformers, reads it)."""
    tok = vicuna_tokenizer()
    torch.manual_seed(seed)
    from transformers import CLIPVisionModel, LlamaForCausalLM

    llama = _llama(tok)
    lm = LlamaForCausalLM(llama).eval()
    tower = CLIPVisionModel(_clip(vision_hidden, heads=max(1, vision_hidden // 64))).eval()  # CLIP: 64-wide heads
    state = {k: v.contiguous() for k, v in lm.state_dict().items()}
    # the release was saved by transformers 4: the tower's tensors under "vision_model."
    state.update(
        {f"model.visual_tower.visual_tower.vision_model.{k}": v.contiguous() for k, v in tower.state_dict().items()}
    )
    state["model.visual_projector.0.weight"] = torch.randn(HIDDEN, vision_hidden) * 0.05
    state["model.visual_projector.0.bias"] = torch.zeros(HIDDEN)
    state["model.visual_projector.2.weight"] = torch.randn(HIDDEN, HIDDEN) * 0.05
    state["model.visual_projector.2.bias"] = torch.zeros(HIDDEN)
    if adaptor:
        state["model.feature_adaptor.weight"] = torch.eye(HIDDEN) + torch.randn(HIDDEN, HIDDEN) * 0.01
        state["model.feature_adaptor.bias"] = torch.zeros(HIDDEN)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = {
        **llama.to_dict(),
        "architectures": ["EventChatModel"],
        "model_type": "EventChat_llama",
        "mm_visual_tower": "openai/clip-vit-large-patch14-336",
        "mm_hidden_size": vision_hidden,
        "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False,
        "tune_mm_mlp_adapter": False,
    }
    if adaptor:
        config["event_feature_adaptor"] = True
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    tok.save_pretrained(folder)
    _clip_processor(folder)
    return folder
