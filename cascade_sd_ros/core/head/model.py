"""The feature-level draft head (EAGLE-style) and the alignment MLP that feeds it event features.

EAGLE (Li et al., 2024) drafts at the feature level: a one-layer decoder reads the target's last
hidden state f_i together with the embedding of the token c_i that state produced, predicts the next
hidden state f_{i+1}, and the target's own LM head turns that into a token; chaining the prediction
back in drafts gamma tokens deep. Here the head also attends to *event features*: the event stage's
visual tokens mapped into the target's visual-token space by `AlignmentMLP` (the research note's
Gap 4: frozen encoders, a learned MLP), plus one learned null slot so that attention is defined when
no event features came (the head on target states alone). A head with `video_rows` also attends to
the target's own projected video tokens (every frame's patches, each row with a learned position,
which tells frames apart: motion), once the target has prefilled the clip: what the target itself
reads shape and motion from, where the aligned event tokens are a blurred copy (cosine ~0.76).

Head positions: position 0 reads (f_{-1}, last prompt token) and predicts f_0 (the state after the
whole context); position p >= 1 reads (f_{p-1}, caption token p-1) and predicts f_p. A zero feature
means "no target state" (the head on event features alone, e.g. while the target still prefills).
Shapes: D = the target's hidden width, M = memory slots (1 + event rows + video rows), L = head
positions, V = video rows.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["HeadConfig", "AlignmentMLP", "FusedDraftHead", "HeadCache"]


@dataclass(frozen=True)
class HeadConfig:
    """Sizes of the head and the alignment MLP (saved next to the weights in head.json).

    hidden: the target's hidden width D (the head predicts vectors of this width).
    heads: attention heads of the head's one decoder layer.
    ffn: the layer's MLP width.
    max_positions: head positions (context tail + caption tokens) it has position embeddings for.
    event_dim / event_rows: width and count of the event stage's visual tokens.
    align_hidden: the alignment MLP's inner width.
    video_rows: the target's video tokens (frames x patches, CLS dropped) the head attends to once
    the target has prefilled (0: none; heads saved before they existed load as 0).
    """

    hidden: int
    heads: int = 2
    ffn: int = 128
    max_positions: int = 128
    event_dim: int = 64
    event_rows: int = 9
    align_hidden: int = 128
    video_rows: int = 0

    def __post_init__(self) -> None:
        for name in ("hidden", "heads", "ffn", "max_positions", "event_dim", "event_rows", "align_hidden"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"HeadConfig.{name} must be >= 1, got {getattr(self, name)}")
        if int(self.video_rows) < 0:
            raise ValueError(f"HeadConfig.video_rows must be >= 0, got {self.video_rows}")
        if self.hidden % self.heads:
            raise ValueError(f"HeadConfig.hidden {self.hidden} is not a multiple of heads {self.heads}")

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class AlignmentMLP(nn.Module):
    """Event tokens `[B, R, E]` -> the target's visual-token space `[B, R, D]`, token by token.

    A learned per-row offset tells it which patch it maps (the frozen encoders already carry patch
    positions, but the MLP sees one token at a time).
    """

    def __init__(self, cfg: HeadConfig) -> None:
        super().__init__()
        self.row = nn.Parameter(torch.zeros(cfg.event_rows, cfg.event_dim))
        self.fc1 = nn.Linear(cfg.event_dim, cfg.align_hidden)
        self.fc2 = nn.Linear(cfg.align_hidden, cfg.hidden)

    def forward(self, events: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(events + self.row)))


class _RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


@dataclass
class HeadCache:
    """K/V of the head's positions fed so far (`[H, P, dh]`) and of its memory (`[H, M, dh]`)."""

    mem_k: torch.Tensor
    mem_v: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor

    @property
    def length(self) -> int:
        return int(self.k.shape[1])

    def crop(self, length: int) -> None:
        self.k, self.v = self.k[:, :length], self.v[:, :length]


class FusedDraftHead(nn.Module):
    """One pre-norm decoder layer over fused (feature, token embedding) inputs, attending to memory.

    `embed` is the target's input-embedding table, read and never trained (the head is a function of
    the target's own token space); the LM head likewise stays the target's and lives outside.
    """

    def __init__(self, cfg: HeadConfig) -> None:
        super().__init__()
        d = cfg.hidden
        self.cfg = cfg
        self.n_heads = cfg.heads
        self.fuse = nn.Linear(2 * d, d)
        self.pos = nn.Embedding(cfg.max_positions, d)
        self.null = nn.Parameter(torch.zeros(1, d))  # the memory slot that is always there
        # which frame and patch each video row is (the vision tower encodes frames one by one)
        self.video_pos = nn.Parameter(torch.zeros(cfg.video_rows, d)) if cfg.video_rows else None
        self.norm_in = _RMSNorm(d)
        self.norm_mem = _RMSNorm(d)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.mem_kv = nn.Linear(d, 2 * d, bias=False)
        self.o = nn.Linear(d, d, bias=False)
        self.norm_mlp = _RMSNorm(d)
        self.up = nn.Linear(d, 2 * cfg.ffn, bias=False)
        self.down = nn.Linear(cfg.ffn, d, bias=False)
        self.norm_out = _RMSNorm(d)  # the target's states are post-norm: predict that form

    # ------------------------------------------------------------------ pieces shared by both paths
    def _inputs(self, feats: torch.Tensor, tok_emb: torch.Tensor, start: int) -> torch.Tensor:
        """x `[B, L, D]` of positions start.. from features and token embeddings `[B, L, D]`."""
        n = feats.shape[1]
        if start + n > self.cfg.max_positions:
            raise ValueError(f"draft head: position {start + n - 1} beyond its {self.cfg.max_positions} positions")
        pos = self.pos.weight[start : start + n]  # [L, D]
        return self.fuse(torch.cat([feats, tok_emb], dim=-1)) + pos

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, L, D]` -> `[B, H, L, dh]`."""
        b, n, d = x.shape
        return x.view(b, n, self.n_heads, d // self.n_heads).transpose(1, 2)

    def memory_kv(
        self, memory: torch.Tensor | None, video: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """K, V `[B, H, M, dh]` of the null slot, then `memory` `[B, R, D]` and `video` `[B, V, D]`
        where given (None: left out)."""
        rows = [r for r in (memory, self._video_rows(video)) if r is not None]
        b = rows[0].shape[0] if rows else 1
        mem = torch.cat([self.null.unsqueeze(0).expand(b, -1, -1), *rows], dim=1)  # [B, M, D]
        k, v = self.mem_kv(self.norm_mem(mem)).chunk(2, dim=-1)
        return self._split(k), self._split(v)

    def _video_rows(self, video: torch.Tensor | None) -> torch.Tensor | None:
        """Video tokens `[B, V, D]` with their row positions (None stays None)."""
        if video is None:
            return None
        if self.video_pos is None or video.shape[1] != self.video_pos.shape[0]:
            raise ValueError(f"draft head: {video.shape[1]} video rows, it was made for {self.cfg.video_rows}")
        return video + self.video_pos

    def _block(
        self, x: torch.Tensor, k_all: torch.Tensor, v_all: torch.Tensor, q: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        att = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask)  # [B, H, L, dh]
        b, _, n, _ = att.shape
        h = x + self.o(att.transpose(1, 2).reshape(b, n, -1))
        gate, up = self.up(self.norm_mlp(h)).chunk(2, dim=-1)
        h = h + self.down(F.silu(gate) * up)
        return self.norm_out(h)

    # ------------------------------------------------------------------ training: whole sequences
    def forward(
        self,
        feats: torch.Tensor,
        tok_emb: torch.Tensor,
        memory: torch.Tensor | None,
        memory_mask: torch.Tensor | None = None,
        video: torch.Tensor | None = None,
        video_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predicted states `[B, L, D]` for positions 0..L-1 (causal), attending to memory.

        memory_mask `[B, R]` / video_mask `[B]` bool: which samples have their event rows / video
        rows (False rows are hidden).
        """
        x = self._inputs(feats, tok_emb, 0)  # [B, L, D]
        b, n, _ = x.shape
        q, k, v = (self._split(t) for t in self.qkv(self.norm_in(x)).chunk(3, dim=-1))
        mk, mv = self.memory_kv(memory, video)
        if mk.shape[0] != b:
            mk, mv = mk.expand(b, -1, -1, -1), mv.expand(b, -1, -1, -1)
        m = mk.shape[2]
        r = 0 if memory is None else memory.shape[1]
        causal = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()  # [L, L]
        mem_ok = torch.ones(b, m, dtype=torch.bool, device=x.device)
        if memory_mask is not None:
            mem_ok[:, 1 : 1 + r] = memory_mask
        if video_mask is not None:
            mem_ok[:, 1 + r :] = video_mask.view(b, 1)
        mask = torch.cat([mem_ok[:, None, :].expand(b, n, m), causal.expand(b, n, n)], dim=-1)  # [B, L, M+L]
        return self._block(x, torch.cat([mk, k], dim=2), torch.cat([mv, v], dim=2), q, mask[:, None])

    # ------------------------------------------------------------------ drafting: one sequence, cached
    def new_cache(self, memory: torch.Tensor | None, video: torch.Tensor | None = None) -> HeadCache:
        """A cache for one sequence attending to memory `[1, R, D]` and video `[1, V, D]` (None: left
        out; both None: the null slot alone)."""
        mk, mv = self.memory_kv(memory, video)
        empty = mk[0, :, :0]  # [H, 0, dh]
        return HeadCache(mk[0], mv[0], empty, empty)

    def step(self, cache: HeadCache, feats: torch.Tensor, tok_emb: torch.Tensor) -> torch.Tensor:
        """Feed positions cache.length.. (`[n, D]` each) and return their predicted states `[n, D]`."""
        start = cache.length
        x = self._inputs(feats.unsqueeze(0), tok_emb.unsqueeze(0), start)  # [1, n, D]
        n = x.shape[1]
        q, k, v = (self._split(t) for t in self.qkv(self.norm_in(x)).chunk(3, dim=-1))
        cache.k = torch.cat([cache.k, k[0]], dim=1)
        cache.v = torch.cat([cache.v, v[0]], dim=1)
        m = cache.mem_k.shape[1]
        mask = None
        if n > 1:  # positions fed together see each other causally; one position sees everything
            total = m + cache.length
            mask = torch.ones(n, total, dtype=torch.bool, device=x.device)
            mask[:, m + start :] = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
        k_all = torch.cat([cache.mem_k, cache.k], dim=1).unsqueeze(0)
        v_all = torch.cat([cache.mem_v, cache.v], dim=1).unsqueeze(0)
        return self._block(x, k_all, v_all, q, mask)[0]


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def init_from_target(head: FusedDraftHead, final_norm_weight: torch.Tensor) -> None:
    """Start the output norm at the target's final norm (the head predicts states of that form)."""
    with torch.no_grad():
        head.norm_out.weight.copy_(final_norm_weight.float())
        nn.init.normal_(head.pos.weight, std=1.0 / math.sqrt(head.cfg.hidden))
