"""Every transformers KV-cache call of the engine, in one place (pinned transformers 5.17.0).

Speculative decoding rolls caches back to a committed prefix after each round; these are the only
functions that touch a `Cache` object, so a transformers upgrade changes this file and nothing else.
In 5.17 `DynamicCache.crop(n)` with a NEGATIVE n removes n tokens (a positive n is the deprecated
"absolute length" form, which we never use).
"""

from __future__ import annotations

import torch
from transformers import PretrainedConfig
from transformers.cache_utils import Cache, DynamicCache

__all__ = ["check_rollback_supported", "new_cache", "cached_length", "crop_to", "keep_positions"]


def check_rollback_supported(config: PretrainedConfig) -> None:
    """Refuse models whose cache cannot be cropped to an arbitrary prefix (sliding-window layers).

    Raises:
        ValueError: naming the layer types that are not plain full attention.
    """
    text_config = config.get_text_config(decoder=True)
    layer_types = getattr(text_config, "layer_types", None) or []
    bad = sorted({t for t in layer_types if t != "full_attention"})
    if bad:
        raise ValueError(
            f"model type {config.model_type!r} has cache layer types {bad}; speculative decoding needs "
            "full-attention layers only (a sliding-window cache cannot be rolled back to a prefix)"
        )


def new_cache(config: PretrainedConfig) -> Cache:
    """An empty dynamic cache laid out for `config`'s decoder."""
    return DynamicCache(config=config)


def cached_length(cache: Cache) -> int:
    """Number of positions (context + caption tokens) held in `cache`."""
    return int(cache.get_seq_length())


def crop_to(cache: Cache, length: int) -> None:
    """Keep only the first `length` positions of `cache` (roll back to a prefix).

    Raises:
        ValueError: if `length` is negative or longer than what the cache holds.
    """
    held = cached_length(cache)
    if length < 0 or length > held:
        raise ValueError(f"cannot crop a cache of {held} positions to {length}")
    if length < held:
        cache.crop(-(held - length))  # negative: number of tokens to remove (5.17 semantics)


def keep_positions(cache: Cache, start: int, offsets: torch.Tensor) -> None:
    """Keep the first `start` positions of `cache`, then only the positions `start + offsets`, in
    that order (a draft tree's accepted path after a tree forward).

    Raises:
        ValueError: if the cache is not a dynamic one or an offset points past what it holds.
    """
    held = cached_length(cache)
    if not isinstance(cache, DynamicCache):
        raise ValueError(f"cannot select positions of a {type(cache).__name__}")
    if offsets.numel() and (int(offsets.min()) < 0 or start + int(offsets.max()) >= held):
        raise ValueError(f"positions {start} + {offsets.tolist()} lie outside a cache of {held}")
    index = torch.cat((torch.arange(start, device=offsets.device), start + offsets))
    for layer in cache.layers:
        keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
        if not isinstance(keys, torch.Tensor) or not isinstance(values, torch.Tensor):
            raise ValueError(f"cannot select positions of a cache layer {type(layer).__name__}")
        layer.keys = keys.index_select(-2, index.to(keys.device))  # type: ignore[union-attr]
        layer.values = values.index_select(-2, index.to(values.device))  # type: ignore[union-attr]
