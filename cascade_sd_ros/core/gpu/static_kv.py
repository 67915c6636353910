"""A preallocated (static) KV cache: fixed buffers, a length, and the token ids it holds.

Every buffer is allocated once, at configure time, so the decode step has fixed tensor addresses and
shapes and can be captured in a CUDA graph. Rolling back to a prefix is free: only `length` moves;
positions past it hold stale values that the attention mask never reads and the next write replaces.

Layout per layer: keys/values `[1, H_kv, max_len, D]` (the layout `scaled_dot_product_attention`
reads directly, and the one transformers' `StaticCache` uses).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["KVLayout", "StaticKVCache", "common_prefix_len"]


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token sequences."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass(frozen=True)
class KVLayout:
    """Shape of a static KV cache.

    Attributes:
        num_layers: decoder layers.
        num_kv_heads: key/value heads per layer (fewer than query heads under GQA).
        head_dim: width of one head.
        max_len: positions per layer (context + caption + the largest step's tokens).
    """

    num_layers: int
    num_kv_heads: int
    head_dim: int
    max_len: int

    def __post_init__(self) -> None:
        for name in ("num_layers", "num_kv_heads", "head_dim", "max_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"KVLayout.{name} must be a positive int, got {value!r}")

    def nbytes(self, dtype: torch.dtype) -> int:
        """Bytes of all K and V buffers in `dtype`."""
        itemsize = torch.empty((), dtype=dtype).element_size()
        return 2 * self.num_layers * self.num_kv_heads * self.max_len * self.head_dim * itemsize


class StaticKVCache:
    """Fixed K/V buffers for `layout.max_len` positions; `length` positions are valid.

    The positions hold a context of `context_len` positions (prompt + vision features) followed by
    caption tokens `tokens`, so `length == context_len + len(tokens)` whenever a caller has finished
    a step. The context tokens themselves are not kept here: the adapter owns them.
    """

    def __init__(self, layout: KVLayout, dtype: torch.dtype, device: torch.device | str) -> None:
        self.layout = layout
        self.dtype = dtype
        self.device = torch.device(device)
        shape = (1, layout.num_kv_heads, layout.max_len, layout.head_dim)
        # Zero-filled so that a never-written position holds finite values: masked positions still go
        # through the attention matmul, and 0 * NaN would poison a row.
        self.keys: list[torch.Tensor] = [
            torch.zeros(shape, dtype=dtype, device=self.device) for _ in range(layout.num_layers)
        ]
        self.values: list[torch.Tensor] = [
            torch.zeros(shape, dtype=dtype, device=self.device) for _ in range(layout.num_layers)
        ]
        self.context_len = 0
        self.tokens: list[int] = []

    @property
    def max_len(self) -> int:
        return self.layout.max_len

    @property
    def length(self) -> int:
        """Valid positions: context plus caption tokens."""
        return self.context_len + len(self.tokens)

    def reset(self, context_len: int) -> None:
        """Declare `context_len` context positions valid (written by a prefill) and no caption."""
        if not 0 <= context_len <= self.max_len:
            raise ValueError(f"context of {context_len} positions does not fit a cache of {self.max_len}")
        self.context_len = context_len
        self.tokens = []

    def check_room(self, start: int, count: int) -> None:
        """Refuse a write of `count` positions from `start` that would run past the buffers.

        Raises:
            ValueError: naming the positions asked for and the capacity.
        """
        if start < 0 or count < 0 or start + count > self.max_len:
            raise ValueError(
                f"KV write of {count} positions at {start} exceeds the static cache of {self.max_len} "
                "positions; raise max_len (context + max caption tokens + largest step)"
            )

    def plan_sync(self, tokens: Sequence[int]) -> tuple[int, list[int]]:
        """How to make the cache hold context + `tokens`: (caption tokens to keep, tokens to feed).

        Keeps the longest common prefix with what is held; the caller crops with `truncate` and feeds
        the returned tokens at positions `context_len + keep` onwards.
        """
        keep = common_prefix_len(self.tokens, tokens)
        return keep, list(tokens[keep:])

    def truncate(self, keep: int) -> None:
        """Roll back to the first `keep` caption tokens (no device work: stale positions are masked)."""
        if not 0 <= keep <= len(self.tokens):
            raise ValueError(f"cannot keep {keep} of {len(self.tokens)} cached caption tokens")
        del self.tokens[keep:]

    def extend(self, tokens: Sequence[int]) -> None:
        """Record caption tokens whose K/V a step has just written after the current length."""
        self.check_room(self.length, len(tokens))
        self.tokens.extend(int(t) for t in tokens)
