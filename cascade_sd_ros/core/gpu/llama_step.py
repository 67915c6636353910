"""Our own Llama forward over a static KV cache, reusing a transformers model's weights.

The function is transformers' `LlamaModel` + LM head computed op for op in the same dtype (RMSNorm in
float32 then rounded, RoPE from the module's `inv_freq`, SiLU-gated MLP, softmax attention), so it
equals HF's forward up to floating-point rounding. What differs is only where K/V live: each step writes
its `T` new keys/values into the preallocated buffers of a `StaticKVCache` at positions
`start .. start+T-1` and attends over all `max_len` positions with a mask `key_pos <= query_pos`.
Shapes never depend on the cache length, so a step for a given `T` can be captured once in a CUDA
graph and replayed at any position (`start` is a device scalar the graph reads).

Kernel count matters more than FLOPs at batch 1 (every weight is read once per step; launches and
tiny element-wise kernels are the overhead), so q/k/v and gate/up are fused into one matrix product
each, the RoPE tables and the additive mask are built once per step, and RMSNorm is one fused op. Fusing does not copy the weights: the HF module parameters are re-pointed at row slices of the
fused matrix, so memory stays the same and HF's own forward keeps computing the same function.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN

from cascade_sd_ros.core.gpu.static_kv import KVLayout, StaticKVCache

__all__ = [
    "ATTENTION_KINDS",
    "MATMUL_MAX_QUERIES",
    "STATIC_ROPE_TYPES",
    "LlamaDims",
    "LayerWeights",
    "LlamaDecodeWeights",
    "LlamaStaticForward",
]

ATTENTION_KINDS = ("auto", "sdpa", "matmul")
MATMUL_MAX_QUERIES = 64  # "auto" attention: two matmuls for 2..64 queries, SDPA otherwise

# RoPE variants whose frequencies do not depend on the sequence length (a "dynamic" rope rescales
# with the length, which a position-agnostic captured step cannot follow).
STATIC_ROPE_TYPES = ("default", "linear", "llama3", "yarn")


@dataclass(frozen=True)
class LlamaDims:
    """The sizes the step needs (from the HF text config)."""

    hidden: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    rms_eps: float

    @property
    def scaling(self) -> float:
        return float(self.head_dim) ** -0.5


@dataclass(frozen=True)
class LayerWeights:
    """One decoder layer's tensors (views of the HF parameters, never copies)."""

    input_norm: torch.Tensor  # [H]
    qkv_w: torch.Tensor  # [(Hq + 2 Hkv) D, H]
    qkv_b: torch.Tensor | None
    o_w: torch.Tensor  # [H, Hq D]
    o_b: torch.Tensor | None
    post_norm: torch.Tensor  # [H]
    gate_up_w: torch.Tensor  # [2 I, H]
    gate_up_b: torch.Tensor | None
    down_w: torch.Tensor  # [H, I]
    down_b: torch.Tensor | None


def _fused_rows(linears: Sequence[nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One `[sum rows, in]` matrix whose row blocks ARE the given layers' weights (and biases).

    If the weights already sit back to back in one storage (a second adapter over the same model),
    that storage is viewed as is; otherwise they are concatenated once and each module's parameter is
    re-pointed at its block, so no second copy stays alive.
    """
    weights = [lin.weight for lin in linears]
    has_bias = [lin.bias is not None for lin in linears]
    if any(has_bias) and not all(has_bias):
        raise ValueError("cannot fuse projections where only some have a bias")
    return _fused_params(weights), (_fused_params([lin.bias for lin in linears]) if all(has_bias) else None)


def _adjacent(params: Sequence[torch.Tensor]) -> bool:
    first = params[0]
    offset = first.storage_offset()
    for p in params:
        if not p.is_contiguous() or p.untyped_storage().data_ptr() != first.untyped_storage().data_ptr():
            return False
        if p.storage_offset() != offset:
            return False
        offset += p.numel()
    return True


def _fused_params(params: Sequence[torch.Tensor]) -> torch.Tensor:
    rows = sum(p.shape[0] for p in params)
    tail = tuple(params[0].shape[1:])
    if any(tuple(p.shape[1:]) != tail for p in params):
        raise ValueError(f"cannot fuse parameters of shapes {[tuple(p.shape) for p in params]}")
    if _adjacent(params):
        stride = params[0].stride()
        return params[0].detach().as_strided((rows, *tail), stride)
    # A normal (not inference-mode) tensor, so the parameters can be re-pointed at it even when the
    # caller builds us inside `torch.inference_mode()`.
    with torch.inference_mode(False), torch.no_grad():
        fused = torch.cat([p.detach() for p in params], dim=0)
    start = 0
    for p in params:
        n = p.shape[0]
        p.data = fused[start : start + n]  # the HF module now reads its block of the fused matrix
        start += n
    return fused


# nn.Module's attribute access is typed Tensor | Module; these name what a Llama layer must hold and
# say which part is not that (a one-line error instead of an AttributeError deep in the step)
def _linear(module: nn.Module, path: str) -> nn.Linear:
    found = module.get_submodule(path)
    if not isinstance(found, nn.Linear):
        raise TypeError(f"{path} is a {type(found).__name__}, not a Linear")
    return found


def _module_list(module: nn.Module, path: str) -> nn.ModuleList:
    found = module.get_submodule(path)
    if not isinstance(found, nn.ModuleList):
        raise TypeError(f"{path} is a {type(found).__name__}, not a ModuleList")
    return found


def _number(module: nn.Module, name: str) -> float:
    value = getattr(module, name)
    if not isinstance(value, (int, float)):
        raise TypeError(f"{type(module).__name__}.{name} is a {type(value).__name__}, not a number")
    return float(value)


class LlamaDecodeWeights:
    """The tensors of a transformers Llama text model and its LM head, laid out for the static step."""

    def __init__(self, language_model: nn.Module, lm_head: nn.Linear) -> None:
        config = getattr(language_model, "config", None)
        if config is None or getattr(config, "model_type", None) != "llama":
            kind = getattr(config, "model_type", type(language_model).__name__)
            raise ValueError(f"the static-cache step implements Llama text models only, got {kind!r}")
        rotary = language_model.get_submodule("rotary_emb")
        rope_type = getattr(rotary, "rope_type", "default")
        if rope_type not in STATIC_ROPE_TYPES:
            raise ValueError(f"RoPE type {rope_type!r} depends on the sequence length; supported: {STATIC_ROPE_TYPES}")
        if getattr(config, "hidden_act", None) not in ACT2FN:
            raise ValueError(f"unknown hidden_act {getattr(config, 'hidden_act', None)!r}")
        head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)
        self.dims = LlamaDims(
            hidden=int(config.hidden_size),
            num_heads=int(config.num_attention_heads),
            num_kv_heads=int(config.num_key_value_heads),
            head_dim=head_dim,
            intermediate=int(config.intermediate_size),
            vocab=int(lm_head.weight.shape[0]),
            rms_eps=float(config.rms_norm_eps),
        )
        self.act: Callable[[torch.Tensor], torch.Tensor] = ACT2FN[config.hidden_act]
        self.embed = language_model.get_parameter("embed_tokens.weight").detach()  # [V_in, H]
        self.norm = language_model.get_parameter("norm.weight").detach()  # [H]
        self.lm_head = lm_head.weight.detach()  # [V, H]
        self.inv_freq = rotary.get_buffer("inv_freq").detach().float()  # [D / 2]
        self.attention_scaling = _number(rotary, "attention_scaling")
        self.layers: list[LayerWeights] = []
        for layer in _module_list(language_model, "layers")[: config.num_hidden_layers]:
            qkv_w, qkv_b = _fused_rows([_linear(layer, f"self_attn.{p}") for p in ("q_proj", "k_proj", "v_proj")])
            gate_up_w, gate_up_b = _fused_rows([_linear(layer, f"mlp.{p}") for p in ("gate_proj", "up_proj")])
            o_proj, down_proj = _linear(layer, "self_attn.o_proj"), _linear(layer, "mlp.down_proj")
            self.layers.append(
                LayerWeights(
                    input_norm=layer.get_parameter("input_layernorm.weight").detach(),
                    qkv_w=qkv_w,
                    qkv_b=qkv_b,
                    o_w=o_proj.weight.detach(),
                    o_b=None if o_proj.bias is None else o_proj.bias.detach(),
                    post_norm=layer.get_parameter("post_attention_layernorm.weight").detach(),
                    gate_up_w=gate_up_w,
                    gate_up_b=gate_up_b,
                    down_w=down_proj.weight.detach(),
                    down_b=None if down_proj.bias is None else down_proj.bias.detach(),
                )
            )

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.dtype

    @property
    def device(self) -> torch.device:
        return self.lm_head.device

    def kv_layout(self, max_len: int) -> KVLayout:
        return KVLayout(len(self.layers), self.dims.num_kv_heads, self.dims.head_dim, max_len)


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # HF's order: normalise in float32, round to the input dtype, THEN scale by the weight.
    # `F.rms_norm` without a weight does exactly the first two (it upcasts bf16 internally), in one
    # fused kernel on CUDA instead of HF's five.
    return weight * F.rms_norm(x, (x.shape[-1],), eps=eps)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _attention_in(
    h: torch.Tensor, w: LayerWeights, cos: torch.Tensor, sin: torch.Tensor, dims: LlamaDims
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Norm, fused q/k/v projection and RoPE: h `[T, H]` -> q `[1, Hq, T, D]`, k, v `[1, Hkv, T, D]`."""
    t = h.shape[0]
    nq, nkv = dims.num_heads, dims.num_kv_heads
    x = _rms_norm(h, w.input_norm, dims.rms_eps)
    qkv = F.linear(x, w.qkv_w, w.qkv_b).view(t, nq + 2 * nkv, dims.head_dim)  # [T, Hq+2Hkv, D]
    qk = qkv[:, : nq + nkv]
    qk = qk * cos[:, None, :] + _rotate_half(qk) * sin[:, None, :]  # RoPE on q and k at once
    q = qk[:, :nq].transpose(0, 1).unsqueeze(0)
    k = qk[:, nq:].transpose(0, 1).unsqueeze(0)
    v = qkv[:, nq + nkv :].transpose(0, 1).unsqueeze(0)
    return q, k, v


def _attention_out_mlp(
    h: torch.Tensor,
    attn: torch.Tensor,
    w: LayerWeights,
    act: Callable[[torch.Tensor], torch.Tensor],
    dims: LlamaDims,
) -> torch.Tensor:
    """Output projection + residual, then norm, gated MLP + residual: attn `[1, Hq, T, D]` -> `[T, H]`."""
    t = h.shape[0]
    o = attn[0].transpose(0, 1).reshape(t, dims.num_heads * dims.head_dim)
    h = h + F.linear(o, w.o_w, w.o_b)
    x = _rms_norm(h, w.post_norm, dims.rms_eps)
    gate, up = F.linear(x, w.gate_up_w, w.gate_up_b).split(dims.intermediate, dim=-1)
    return h + F.linear(act(gate) * up, w.down_w, w.down_b)


def _matmul_attention(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, dims: LlamaDims
) -> torch.Tensor:
    """HF's eager attention (q k^T * scale + mask, float32 softmax, @ v) without copying K/V for GQA.

    q `[1, Hq, T, D]`, keys/values `[1, Hkv, L, D]`, mask `[T, L]` -> `[1, Hq, T, D]`. Query heads
    that share a K/V head are stacked as extra rows (HF's `repeat_kv` order: head h reads h // g).
    Two batched matrix products that tile over all L keys. Measured on an H200 (Llama-7B, 2.2k
    positions, CUDA graphs): for 2..17 queries this step is ~0.5 ms faster than SDPA's fused kernel,
    for 1 query ~0.5 ms slower, and for a 2k-token prefill twice as slow (it materialises the scores).
    """
    t, g = q.shape[2], dims.num_heads // dims.num_kv_heads
    qg = q[0].reshape(dims.num_kv_heads, g * t, dims.head_dim)  # [Hkv, g*T, D]
    scores = torch.matmul(qg, keys[0].transpose(1, 2)) * dims.scaling  # [Hkv, g*T, L]
    scores = scores.view(dims.num_kv_heads, g, t, -1) + mask  # [Hkv, g, T, L]
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    out = torch.matmul(probs.view(dims.num_kv_heads, g * t, -1), values[0])  # [Hkv, g*T, D]
    return out.view(1, dims.num_heads, t, dims.head_dim)


class LlamaStaticForward:
    """`forward(ids_or_embeds [T], start [1]) -> logits [rows, V]` writing K/V into a static cache.

    Args:
        weights: the model's tensors.
        cache: the static cache whose buffers this step writes (sized by the caller).
        compile_blocks: run the per-layer element-wise blocks through `torch.compile` (fuses norms,
            RoPE, gating and residual adds into a few kernels; the matrix products stay cuBLAS).
            The compiled blocks are pure functions: the cache write and attention stay eager ops, so
            nothing compiled mutates its inputs.
        attention: "sdpa" (`scaled_dot_product_attention`, HF's default), "matmul" (HF's eager
            attention as two batched products), or "auto": SDPA for one query or more than
            `MATMUL_MAX_QUERIES`, matmul in between (verification steps), per the H200 timings above.
    """

    def __init__(
        self,
        weights: LlamaDecodeWeights,
        cache: StaticKVCache,
        *,
        compile_blocks: bool = False,
        attention: str = "auto",
    ) -> None:
        if attention not in ATTENTION_KINDS:
            raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {attention!r}")
        self.attention = attention
        if cache.layout != weights.kv_layout(cache.max_len):
            raise ValueError(
                f"cache layout {cache.layout} does not match the model's {weights.kv_layout(cache.max_len)}"
            )
        if cache.dtype != weights.dtype or cache.device != weights.device:
            raise ValueError(
                f"cache is {cache.dtype} on {cache.device} but the weights are {weights.dtype} on {weights.device}"
            )
        self.weights = weights
        self.cache = cache
        self.key_pos = torch.arange(cache.max_len, device=weights.device)  # [L]
        self._zero = torch.zeros((), device=weights.device)
        self._neg_inf = torch.full((), float("-inf"), device=weights.device)
        self._attention_in = _attention_in
        self._attention_out_mlp = _attention_out_mlp
        if compile_blocks:
            self._attention_in = torch.compile(_attention_in, fullgraph=True)
            self._attention_out_mlp = torch.compile(_attention_out_mlp, fullgraph=True)

    def uses_sdpa(self, num_queries: int) -> bool:
        """Whether a step of `num_queries` tokens runs SDPA (else the two-matmul attention)."""
        if self.attention == "auto":
            return num_queries == 1 or num_queries > MATMUL_MAX_QUERIES
        return self.attention == "sdpa"

    def _rope(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin `[T, D]` exactly as HF's rotary module computes them (float32, then rounded)."""
        freqs = positions.float()[:, None] * self.weights.inv_freq[None, :]  # [T, D/2]
        emb = torch.cat((freqs, freqs), dim=-1)
        scale = self.weights.attention_scaling
        return (emb.cos() * scale).to(dtype), (emb.sin() * scale).to(dtype)

    def __call__(
        self,
        start: torch.Tensor,
        *,
        input_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        logits_rows: int | None = None,
    ) -> torch.Tensor:
        """Run `T` tokens at positions `start .. start+T-1`.

        Args:
            start: `[1]` int64 device tensor, the position of the first new token (a tensor so that a
                captured graph reads it at replay; the caller checks it leaves room in the cache).
            input_ids: `[T]` int64, or
            inputs_embeds: `[T, H]` (prefill with vision features scattered in).
            logits_rows: compute logits for the last this many tokens only (default all `T`).

        Returns:
            logits `[rows, V]` in the model dtype.
        """
        w = self.weights
        dims = w.dims
        if input_ids is not None and inputs_embeds is None:
            h = F.embedding(input_ids, w.embed)  # [T, H]
        elif inputs_embeds is not None and input_ids is None:
            h = inputs_embeds
        else:
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        t = h.shape[0]
        positions = start + self.key_pos[:t]  # [T]
        cos, sin = self._rope(positions, h.dtype)  # [T, D]
        # Causal over absolute positions; stale entries past the valid length have larger positions
        # than every query, so they are never read. Additive (0 / -inf) once per step, so attention
        # does not convert a boolean mask in every layer. Every query sees itself: no all -inf row.
        allowed = self.key_pos[None, :] <= positions[:, None]  # [T, L]
        mask = torch.where(allowed, self._zero, self._neg_inf).to(h.dtype)  # [T, L]
        gqa = dims.num_heads != dims.num_kv_heads
        use_sdpa = self.uses_sdpa(t)
        for i, lw in enumerate(w.layers):
            q, k, v = self._attention_in(h, lw, cos, sin, dims)
            keys, values = self.cache.keys[i], self.cache.values[i]
            keys.index_copy_(2, positions, k)
            values.index_copy_(2, positions, v)
            if use_sdpa:
                attn = F.scaled_dot_product_attention(
                    q, keys, values, attn_mask=mask, scale=dims.scaling, enable_gqa=gqa
                )  # [1, Hq, T, D]
            else:
                attn = _matmul_attention(q, keys, values, mask, dims)
            h = self._attention_out_mlp(h, attn, lw, w.act, dims)
        rows = t if logits_rows is None else logits_rows
        h = _rms_norm(h[t - rows :], w.norm, dims.rms_eps)
        return F.linear(h, w.lm_head)  # [rows, V]
