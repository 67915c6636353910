"""A `ModelAdapter` over a static KV cache and CUDA graphs, for any stage whose model fits (contract 3).

Same semantics as `spec.adapter.HFAdapter`: both are `CachedRowsAdapter`s (state keyed on token
sequences; `next_logits`, `score` and `propose` are the base's, written once), but the hot path is built
for a GPU at batch 1:

* weights read by our own Llama step (`llama_step.py`), K/V in preallocated buffers (`static_kv.py`),
  so a step's shapes and addresses never change;
* one CUDA graph per step size (1 token for decoding, up to `max_step` tokens for verifying drafts),
  captured at configure time (`runner.py`);
* token ids go in through a pinned host buffer, logits stay on the device: `score` does not sync,
  `propose` syncs once at the end, so a round (score + the engine's accept decision) has one sync;
* the next round's pixels are encoded on a side stream (`prepare`) while the current round finishes.

It wraps a `VideoLlavaForConditionalGeneration` (the verifier: video, or one image) or a
`LlavaForConditionalGeneration` (drafter and refiner: one image) whose language model is a Llama;
`static_support(model)` says why another model does not fit.

On a CPU (or with `use_graphs=False`) the same step runs eagerly, which is what the CPU tests check
against transformers' own forward. Measured on one H200 (bench/RESULTS.md, "CUDA verifier"): with the
defaults on CUDA (graphs, compiled element-wise blocks, "auto" attention) a Video-LLaVA-7B decode step
takes 4.9 ms against a 3.4 ms memory-bandwidth floor, and verifying 8 drafts 1.13x that.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import LlavaForConditionalGeneration, VideoLlavaForConditionalGeneration
from transformers.activations import ACT2FN

from cascade_sd_ros.core.gpu.llama_step import STATIC_ROPE_TYPES, LlamaDecodeWeights, LlamaStaticForward
from cascade_sd_ros.core.gpu.media import EncodedMedia, MediaEncoder, media_modalities
from cascade_sd_ros.core.gpu.runner import StepRunner
from cascade_sd_ros.core.gpu.static_kv import StaticKVCache
from cascade_sd_ros.core.spec.adapter import (
    CachedRowsAdapter,
    Modality,
    StageContext,
    check_media_placeholders,
    resolve_eos_token_id,
)
from cascade_sd_ros.core.spec.prompt import media_token_id

__all__ = ["StaticAdapter", "StaticVerifierAdapter", "load_static_verifier", "static_support"]

_ALIGN = 64  # KV length multiple: keeps the attention mask's rows aligned for the fused SDPA kernels


def static_support(model: object) -> str | None:
    """Why `model` cannot run on the static path, or None when it can.

    The static step implements a LLaVA-family model (VideoLlava or Llava) whose language model is a
    Llama: RoPE that does not depend on the sequence length, a known activation.
    """
    if not isinstance(
        model, (VideoLlavaForConditionalGeneration, LlavaForConditionalGeneration)
    ):  # media_modalities' models
        return f"{type(model).__name__} is not a LLaVA-family (VideoLlava/Llava) model"
    text = model.config.get_text_config()
    kind = getattr(text, "model_type", None)
    if kind != "llama":
        return f"its language model is {kind!r}, not Llama-shaped"
    rotary = getattr(model.model.language_model, "rotary_emb", None)
    rope_type = getattr(rotary, "rope_type", "default")
    if rope_type not in STATIC_ROPE_TYPES:
        return f"its RoPE type {rope_type!r} depends on the sequence length (static: {STATIC_ROPE_TYPES})"
    if getattr(text, "hidden_act", None) not in ACT2FN:
        return f"its activation {getattr(text, 'hidden_act', None)!r} is unknown"
    return None


class StaticAdapter(CachedRowsAdapter):
    """ModelAdapter for a LLaVA-family stage with a static KV cache (CUDA graphs on a GPU).

    Args:
        model: a `VideoLlavaForConditionalGeneration` or `LlavaForConditionalGeneration` with a Llama
            text model, already on its device and in its dtype (bf16 on a GPU). Its q/k/v and gate/up
            weights are re-pointed at fused matrices (same values, same memory; HF's forward is
            unchanged).
        max_context: the longest prompt (placeholders expanded) a prefill may bring.
        max_caption_tokens: the longest caption (prefix + draft) the cache must hold.
        max_step: the most tokens one forward may feed (draft length + 1 for verification); larger
            catch-ups are fed in chunks.
        use_graphs: capture CUDA graphs for step sizes 1..max_step (default: when on CUDA).
        compile_blocks: fuse the per-layer element-wise work through `torch.compile` (default: when
            on CUDA; ~0.5 ms/token on an H200 for ~10 s of compiling at construction).
        attention: "auto", "sdpa" or "matmul" (see `LlamaStaticForward`).
        modality: "video" or "image" (default: video for a VideoLlava, image for a Llava).
        name, eos_token_id: as for `HFAdapter`.
    """

    def __init__(
        self,
        model: VideoLlavaForConditionalGeneration | LlavaForConditionalGeneration,
        *,
        max_context: int,
        max_caption_tokens: int = 128,
        max_step: int = 17,
        use_graphs: bool | None = None,
        compile_blocks: bool | None = None,
        attention: str = "auto",
        modality: Modality | None = None,
        name: str = "target",
        eos_token_id: int | None = None,
    ) -> None:
        supported = media_modalities(model)
        if not supported:
            raise TypeError(
                "StaticAdapter needs a VideoLlavaForConditionalGeneration or LlavaForConditionalGeneration, "
                f"got {type(model).__name__}"
            )
        self.modality: Modality = modality if modality is not None else supported[0]
        if self.modality not in supported:
            raise ValueError(f"{type(model).__name__} supports modalities {supported}, not {self.modality!r}")
        for what, value in (
            ("max_context", max_context),
            ("max_caption_tokens", max_caption_tokens),
            ("max_step", max_step),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{what} must be a positive int, got {value!r}")
        self.name = name
        self.model = model.eval()
        self._device = model.device
        graphs = self._device.type == "cuda" if use_graphs is None else use_graphs
        if graphs and self._device.type != "cuda":
            raise ValueError(f"use_graphs needs a CUDA model; this one is on {self._device}")
        self.weights = LlamaDecodeWeights(model.model.language_model, model.lm_head)
        self._vocab_size = self.weights.dims.vocab
        self._eos_token_id = resolve_eos_token_id(model, eos_token_id, self._vocab_size)
        self.max_context = max_context
        self.max_caption_tokens = max_caption_tokens
        self.max_step = max_step
        max_len = -(-(max_context + max_caption_tokens + max_step) // _ALIGN) * _ALIGN
        self.cache = StaticKVCache(self.weights.kv_layout(max_len), self.weights.dtype, self._device)
        compiled = self._device.type == "cuda" if compile_blocks is None else compile_blocks
        self.forward = LlamaStaticForward(self.weights, self.cache, compile_blocks=compiled, attention=attention)
        with torch.inference_mode():
            self.runner = StepRunner(self.forward, range(1, max_step + 1) if graphs else ())
        self.encoder = MediaEncoder(model, self.modality)
        self._placeholder = media_token_id(model.config, self.modality)
        pinned = self._device.type == "cuda"
        self._host_ids = torch.zeros(max_step, dtype=torch.long, pin_memory=pinned)  # staging for H2D
        self._dev_ids = torch.zeros(max_step, dtype=torch.long, device=self._device)
        self._host_free: torch.cuda.Event | None = None  # fires when the last copy out of _host_ids is done
        # Row i: next-token logits after context + tokens[:i] (float32, like HFAdapter's).
        self._rows = torch.zeros(max_caption_tokens + 1, self._vocab_size, dtype=torch.float32, device=self._device)
        self._context: StageContext | None = None
        self._prepared: tuple[StageContext, EncodedMedia] | None = None
        self.forwards = 0  # model forward calls since construction (statistics)

    @property
    def device(self) -> torch.device:
        return self._device

    # ----------------------------------------------------------------- internals
    def _check_caption(self, n: int) -> None:
        if n > self.max_caption_tokens:
            raise ValueError(
                f"adapter {self.name!r}: a caption of {n} tokens exceeds max_caption_tokens={self.max_caption_tokens}"
            )

    def _stage(self, ids: Sequence[int]) -> torch.Tensor:
        """Host ids -> device ids `[n]` without a host sync (through a pinned buffer on CUDA)."""
        n = len(ids)
        if self._device.type != "cuda":
            return torch.as_tensor(list(ids), dtype=torch.long)
        if self._host_free is not None:
            self._host_free.synchronize()  # the previous copy out of the pinned buffer must be done
        self._host_ids[:n] = torch.as_tensor(list(ids), dtype=torch.long)
        staged = self._dev_ids[:n]
        staged.copy_(self._host_ids[:n], non_blocking=True)
        self._host_free = torch.cuda.Event()
        self._host_free.record()  # right after the copy, so waiting on it never waits for a step
        return staged

    def _feed(self, ids: torch.Tensor, row: int) -> None:
        """Run ids `[n]` at caption positions `row ..`; store their logits at rows `row+1 .. row+n`."""
        logits = self.runner.run(ids, self.cache.context_len + row)  # [n, V]
        self._rows[row + 1 : row + 1 + ids.shape[0]].copy_(logits)
        self.forwards += 1

    def _record(self, tokens: Sequence[int]) -> None:
        self.cache.extend(tokens)

    def _reserve(self, base: int, k: int) -> None:
        self._check_caption(base + k - 1)
        self.cache.check_room(self.cache.length, k - 1)

    def _sync(self, tokens: Sequence[int]) -> None:
        """Make the cache hold exactly context + `tokens` (keep the common prefix, feed the rest)."""
        self._check_caption(len(tokens))
        keep, missing = self.cache.plan_sync(tokens)
        self.cache.truncate(keep)
        for i in range(0, len(missing), self.max_step):
            chunk = missing[i : i + self.max_step]
            self._feed(self._stage(chunk), keep + i)
            self.cache.extend(chunk)

    def _validate_context(self, context: StageContext) -> None:
        if context.modality != self.modality:
            raise ValueError(f"adapter {self.name!r} takes {self.modality} contexts, got {context.modality}")
        self._check_ids(context.input_ids, "prompt")
        check_media_placeholders(self.name, context, self.model.config, self.expected_media_tokens)
        if len(context.input_ids) > self.max_context:
            raise ValueError(
                f"adapter {self.name!r}: prompt of {len(context.input_ids)} positions exceeds max_context={self.max_context}"
            )

    # ----------------------------------------------------------------- public API
    def prepare(self, context: StageContext) -> None:
        """Start encoding `context`'s pixels now (side stream on CUDA); `prefill(context)` picks them up."""
        self._validate_context(context)
        assert context.pixel_values is not None  # validated
        self._prepared = (context, self.encoder.submit(context.pixel_values))

    @torch.inference_mode()
    def prefill(self, context: StageContext, caption: Sequence[int] = ()) -> None:
        """Reset the cache and run the context (prompt + pixels) once; eager, not graphed.

        ``caption`` tokens (a draft in hand) follow in one graphed step after it: on a GPU a step is
        cheap next to the prefill, so they are not folded into the eager forward.
        """
        if self._prepared is not None and self._prepared[0] is context:
            encoded = self._prepared[1]
        else:
            self._validate_context(context)
            assert context.pixel_values is not None
            encoded = self.encoder.submit(context.pixel_values)
        self._prepared = None
        self._context = None  # until this prefill completes, no earlier context is valid either
        self.cache.reset(0)
        features = encoded.wait()  # [n_media, H]
        ids = torch.tensor(context.input_ids, dtype=torch.long).to(self._device, non_blocking=True)  # [L]
        embeds = torch.nn.functional.embedding(ids, self.weights.embed)  # [L, H]
        media_mask = (ids == self._placeholder)[:, None]  # [L, 1]
        embeds = embeds.masked_scatter(media_mask, features.to(embeds.dtype))
        start = torch.zeros(1, dtype=torch.long, device=self._device)
        logits = self.forward(start, inputs_embeds=embeds, logits_rows=1)  # [1, V]
        self.forwards += 1
        self.cache.reset(len(context.input_ids))
        self._rows[0].copy_(logits[0])
        self._context = context
        if caption:
            self._check_ids(caption, "caption")
            self._sync(caption)


StaticVerifierAdapter = StaticAdapter  # the name it had while it served the verifier only


def load_static_verifier(
    path: str | Path,
    *,
    max_context: int,
    device: str | torch.device = "cuda",
    dtype: torch.dtype | None = None,
    **kwargs: object,
) -> StaticAdapter:
    """Load a local Video-LLaVA folder (never downloads) onto `device` and wrap it.

    `dtype` defaults to bf16 on CUDA and float32 elsewhere; other keywords go to the adapter.

    Raises:
        FileNotFoundError: if the folder or its config.json is missing.
        ValueError: if the folder holds another model type.
    """
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"model folder {folder} has no config.json")
    model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    if model_type != "video_llava":
        raise ValueError(f"model folder {folder} holds a {model_type!r} model; the verifier must be 'video_llava'")
    device = torch.device(device)
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = VideoLlavaForConditionalGeneration.from_pretrained(folder, local_files_only=True, dtype=dtype)
    return StaticAdapter(model.to(device), max_context=max_context, **kwargs)  # type: ignore[arg-type]
