"""Start the deep target as a grown copy of the trained refiner (function-preserving depth growth).

The refiner already reads colour and shape from a frame and writes the caption grammar. The target
(Video-LLaVA, same vision tower and width, more layers) copies its vision tower, projector,
embeddings, final norm and LM head, and its layers as the target's bottom layers; every extra layer
keeps its fresh weights but has its residual outputs (attention o_proj, MLP down_proj) zeroed, so it
starts as the identity and the grown model computes the refiner's function. Training on clips then
only has to add what one frame cannot show (motion), which a 2-core CPU can afford; a deep target
trained from scratch could not be, in the same time.
"""
from __future__ import annotations

import torch
from transformers import PreTrainedModel

__all__ = ["grow_from"]


def _text(model: PreTrainedModel) -> torch.nn.Module:
    return model.model.language_model


@torch.no_grad()
def grow_from(source: PreTrainedModel, target: PreTrainedModel) -> int:
    """Copy ``source`` (Llava) into ``target`` (VideoLlava) in place; returns the layers copied.

    Raises:
        ValueError: when the vision towers or language-model widths differ.
    """
    sv, tv = source.config.vision_config, target.config.vision_config
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "patch_size", "image_size"):
        if getattr(sv, key) != getattr(tv, key):
            raise ValueError(f"cannot grow: vision {key} {getattr(sv, key)} != {getattr(tv, key)}")
    st, tt = source.config.get_text_config(), target.config.get_text_config()
    for key in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "vocab_size"):
        if getattr(st, key) != getattr(tt, key):
            raise ValueError(f"cannot grow: text {key} {getattr(st, key)} != {getattr(tt, key)}")
    if st.num_hidden_layers > tt.num_hidden_layers:
        raise ValueError(f"cannot grow {st.num_hidden_layers} layers into {tt.num_hidden_layers}")
    target.model.video_tower.load_state_dict(source.model.vision_tower.state_dict())
    target.model.image_tower.load_state_dict(source.model.vision_tower.state_dict())
    target.model.multi_modal_projector.load_state_dict(source.model.multi_modal_projector.state_dict())
    src, dst = _text(source), _text(target)
    dst.embed_tokens.load_state_dict(src.embed_tokens.state_dict())
    dst.norm.load_state_dict(src.norm.state_dict())
    target.lm_head.load_state_dict(source.lm_head.state_dict())
    n = len(src.layers)
    for i, layer in enumerate(dst.layers):
        if i < n:
            layer.load_state_dict(src.layers[i].state_dict())
        else:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    return n
