"""Function-preserving depth growth: a deeper model that starts computing what a trained one does.

* :func:`grow_from` starts the deep target as a grown copy of the trained refiner.
* :func:`deepen` expands a trained model of one class into a deeper one of the same class
  (block expansion, as in LLaMA Pro): new layers are interleaved after the trained ones with their
  residual outputs (attention o_proj, MLP down_proj) zeroed, so the deeper model starts as the same
  function and fine-tuning only has to put the new layers to use. This is how the shipped zoo got
  its cost hierarchy (depth sets a decode step's cost at this size) without retraining from scratch
  on a 2-core CPU. Unlike LLaMA Pro, a new layer keeps its own random init instead of copying its
  neighbour: with several new layers after one trained layer, copies see the same input and get
  the same gradients, and stayed within 5 % of each other after 590 fine-tuning steps.

The refiner already reads colour and shape from a frame and writes the caption grammar. The target
(Video-LLaVA, same vision tower and width, more layers) copies its vision tower, projector,
embeddings, final norm and LM head, and its layers expanded by the same plan as :func:`deepen`, so
the grown model computes the refiner's function. Training on clips then only has to add what one
frame cannot show (motion), which a 2-core CPU can afford; a deep target trained from scratch could
not be, in the same time.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

__all__ = ["grow_from", "deepen", "expansion_plan"]


def _text(model: PreTrainedModel) -> torch.nn.Module:
    return model.get_submodule("model.language_model")


def _layers(text: torch.nn.Module) -> torch.nn.ModuleList:
    layers = text.get_submodule("layers")
    if not isinstance(layers, torch.nn.ModuleList):
        raise TypeError(f"decoder layers are a {type(layers).__name__}, not a ModuleList")
    return layers


_RESIDUAL_OUTPUTS = ("self_attn.o_proj", "mlp.down_proj")


def expansion_plan(source_layers: int, target_layers: int) -> list[tuple[int, bool]]:
    """For each target layer: the source layer it is or follows, and whether it is that layer (else
    a new identity-initialised layer after it). New layers are spread evenly, earlier ones first.
    """
    if source_layers < 1 or target_layers < source_layers:
        raise ValueError(f"cannot expand {source_layers} layers into {target_layers}")
    extra, rest = divmod(target_layers - source_layers, source_layers)
    plan: list[tuple[int, bool]] = []
    for i in range(source_layers):
        plan.append((i, True))
        plan.extend((i, False) for _ in range(extra + (1 if i < rest else 0)))
    return plan


def _expand_layers(source: torch.nn.ModuleList, target: torch.nn.ModuleList) -> list[tuple[int, bool]]:
    """Fill ``target``'s decoder layers by :func:`expansion_plan`: trained layers from ``source``; a
    new layer keeps its init and starts as the identity (its residual outputs zeroed)."""
    plan = expansion_plan(len(source), len(target))
    for layer, (i, original) in zip(target, plan):
        if original:
            layer.load_state_dict(source[i].state_dict())
        else:
            for name in _RESIDUAL_OUTPUTS:
                layer.get_parameter(f"{name}.weight").zero_()
    return plan


@torch.no_grad()
def grow_from(source: PreTrainedModel, target: PreTrainedModel) -> list[tuple[int, bool]]:
    """Copy ``source`` (Llava) into ``target`` (VideoLlava) in place; returns the layer plan used.

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
    for name in ("embed_tokens", "norm"):
        dst.get_submodule(name).load_state_dict(src.get_submodule(name).state_dict())
    target.lm_head.load_state_dict(source.lm_head.state_dict())
    return _expand_layers(_layers(src), _layers(dst))


@torch.no_grad()
def deepen(source: PreTrainedModel, target: PreTrainedModel) -> list[tuple[int, bool]]:
    """Load ``source`` into the deeper ``target`` (same class and sizes but the language model's
    layer count) by block expansion; returns the layer plan used.

    Raises:
        ValueError: when the classes differ or any weight but the layer count does not fit.
    """
    if type(source) is not type(target):
        raise ValueError(f"cannot deepen a {type(source).__name__} into a {type(target).__name__}")
    prefix = "model.language_model.layers."
    outer = {k: v for k, v in source.state_dict().items() if not k.startswith(prefix)}
    expected = {k: v for k, v in target.state_dict().items() if not k.startswith(prefix)}
    wrong = sorted(k for k in expected if k not in outer or outer[k].shape != expected[k].shape)
    if wrong or len(outer) != len(expected):
        raise ValueError(
            f"cannot deepen: weights outside the layers do not fit ({', '.join(wrong[:3]) or 'extra keys'})"
        )
    target.load_state_dict({**target.state_dict(), **outer})
    return _expand_layers(_layers(_text(source)), _layers(_text(target)))
