"""Every transformers KV-cache call of the engine, in one place (pinned transformers 5.17.0).

Speculative decoding rolls caches back to a committed prefix after each round; these are the only
functions that touch a `Cache` object, so a transformers upgrade changes this file and nothing else.
In 5.17 `DynamicCache.crop(n)` with a NEGATIVE n removes n tokens (a positive n is the deprecated
"absolute length" form, which we never use).
"""

from __future__ import annotations

from transformers import PretrainedConfig
from transformers.cache_utils import Cache, DynamicCache

__all__ = ["check_rollback_supported", "new_cache", "cached_length", "crop_to"]


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
