"""The verifier as a `ModelAdapter` over a static KV cache and CUDA graphs (contract 3).

Same semantics as `spec.adapter.HFAdapter` (state keyed on token sequences; `score` is one forward;
`propose` has one host sync), but the hot path is built for a GPU at batch 1:

* bf16 weights read by our own Llama step (`llama_step.py`), K/V in preallocated buffers
  (`static_kv.py`), so a step's shapes and addresses never change;
* one CUDA graph per step size (1 token for decoding, up to `max_step` tokens for verifying drafts),
  captured at configure time (`runner.py`);
* token ids go in through a pinned host buffer, logits stay on the device: `score` does not sync,
  `propose` syncs once at the end, so a round (score + the engine's accept decision) has one sync;
* the next round's video is encoded on a side stream (`prepare`) while the current round finishes.

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
from transformers import VideoLlavaForConditionalGeneration

from cascade_sd_ros.core.gpu.llama_step import LlamaDecodeWeights, LlamaStaticForward
from cascade_sd_ros.core.gpu.runner import StepRunner
from cascade_sd_ros.core.gpu.static_kv import StaticKVCache
from cascade_sd_ros.core.gpu.video import EncodedVideo, VideoEncoder
from cascade_sd_ros.core.spec.adapter import Proposal, StageContext, check_token_ids, require_context
from cascade_sd_ros.core.spec.prompt import media_token_count, media_token_id

__all__ = ["StaticVerifierAdapter", "load_static_verifier"]

_ALIGN = 64  # KV length multiple: keeps the attention mask's rows aligned for the fused SDPA kernels


class StaticVerifierAdapter:
    """ModelAdapter for a VideoLlava verifier with a static KV cache (CUDA graphs on a GPU).

    Args:
        model: a `VideoLlavaForConditionalGeneration` with a Llama text model, already on its device
            and in its dtype (bf16 on a GPU). Its q/k/v and gate/up weights are re-pointed at fused
            matrices (same values, same memory; HF's forward is unchanged).
        max_context: the longest prompt (placeholders expanded) a prefill may bring.
        max_caption_tokens: the longest caption (prefix + draft) the cache must hold.
        max_step: the most tokens one forward may feed (draft length + 1 for verification); larger
            catch-ups are fed in chunks.
        use_graphs: capture CUDA graphs for step sizes 1..max_step (default: when on CUDA).
        compile_blocks: fuse the per-layer element-wise work through `torch.compile` (default: when
            on CUDA; ~0.5 ms/token on an H200 for ~10 s of compiling at construction).
        attention: "auto", "sdpa" or "matmul" (see `LlamaStaticForward`).
        name, eos_token_id: as for `HFAdapter`.
    """

    modality = "video"

    def __init__(
        self,
        model: VideoLlavaForConditionalGeneration,
        *,
        max_context: int,
        max_caption_tokens: int = 128,
        max_step: int = 17,
        use_graphs: bool | None = None,
        compile_blocks: bool | None = None,
        attention: str = "auto",
        name: str = "target",
        eos_token_id: int | None = None,
    ) -> None:
        if not isinstance(model, VideoLlavaForConditionalGeneration):
            raise TypeError(f"StaticVerifierAdapter needs a VideoLlavaForConditionalGeneration, got {type(model).__name__}")
        for what, value in (("max_context", max_context), ("max_caption_tokens", max_caption_tokens), ("max_step", max_step)):
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
        if eos_token_id is None:
            eos = model.generation_config.eos_token_id
            if eos is None:
                eos = model.config.get_text_config().eos_token_id
            eos_token_id = eos[0] if isinstance(eos, (list, tuple)) else eos
        if eos_token_id is not None and not 0 <= int(eos_token_id) < self._vocab_size:
            raise ValueError(f"eos_token_id {eos_token_id} outside vocabulary of size {self._vocab_size}")
        self._eos_token_id = None if eos_token_id is None else int(eos_token_id)
        self.max_context = max_context
        self.max_caption_tokens = max_caption_tokens
        self.max_step = max_step
        max_len = -(-(max_context + max_caption_tokens + max_step) // _ALIGN) * _ALIGN
        self.cache = StaticKVCache(self.weights.kv_layout(max_len), self.weights.dtype, self._device)
        compiled = self._device.type == "cuda" if compile_blocks is None else compile_blocks
        self.forward = LlamaStaticForward(self.weights, self.cache, compile_blocks=compiled, attention=attention)
        with torch.inference_mode():
            self.runner = StepRunner(self.forward, range(1, max_step + 1) if graphs else ())
        self.encoder = VideoEncoder(model)
        pinned = self._device.type == "cuda"
        self._host_ids = torch.zeros(max_step, dtype=torch.long, pin_memory=pinned)  # staging for H2D
        self._dev_ids = torch.zeros(max_step, dtype=torch.long, device=self._device)
        self._host_free: torch.cuda.Event | None = None  # fires when the last copy out of _host_ids is done
        # Row i: next-token logits after context + tokens[:i] (float32, like HFAdapter's).
        self._rows = torch.zeros(max_caption_tokens + 1, self._vocab_size, dtype=torch.float32, device=self._device)
        self._context: StageContext | None = None
        self._prepared: tuple[StageContext, EncodedVideo] | None = None
        self.forwards = 0  # model forward calls since construction (statistics)

    # ----------------------------------------------------------------- properties
    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def eos_token_id(self) -> int | None:
        return self._eos_token_id

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def context(self) -> StageContext | None:
        return self._context

    def expected_media_tokens(self, num_frames: int = 1) -> int:
        return media_token_count(self.model.config, "video", num_frames)

    # ----------------------------------------------------------------- internals
    def _require_context(self) -> None:
        require_context(self.name, self._context)

    def _check_ids(self, ids: Sequence[int], what: str) -> None:
        check_token_ids(self.name, ids, self._vocab_size, what)

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
        """Run ids `[n]` after the cache; store their logits at rows `row+1 .. row+n`."""
        logits = self.runner.run(ids, self.cache.length)  # [n, V]
        self._rows[row + 1 : row + 1 + ids.shape[0]].copy_(logits)
        self.forwards += 1

    def _sync(self, tokens: Sequence[int]) -> None:
        """Make the cache hold exactly context + `tokens` (keep the common prefix, feed the rest)."""
        self._check_caption(len(tokens))
        keep, missing = self.cache.plan_sync(tokens)
        self.cache.truncate(keep)
        for i in range(0, len(missing), self.max_step):
            chunk = missing[i : i + self.max_step]
            self._feed(self._stage(chunk), keep + i)
            self.cache.extend(chunk)

    # ----------------------------------------------------------------- public API
    def prepare(self, context: StageContext) -> None:
        """Start encoding `context`'s video now (side stream on CUDA); `prefill(context)` picks it up."""
        self._validate_context(context)
        assert context.pixel_values is not None  # validated
        self._prepared = (context, self.encoder.submit(context.pixel_values))

    def _validate_context(self, context: StageContext) -> None:
        if context.modality != "video":
            raise ValueError(f"adapter {self.name!r} takes video contexts, got {context.modality}")
        self._check_ids(context.input_ids, "prompt")
        assert context.pixel_values is not None  # StageContext checks video pixels exist
        placeholder = media_token_id(self.model.config, "video")
        want = self.expected_media_tokens(context.pixel_values.shape[1])
        have = sum(1 for t in context.input_ids if t == placeholder)
        if have != want:
            raise ValueError(
                f"adapter {self.name!r}: prompt has {have} <video> tokens (id {placeholder}) but the pixels "
                f"need exactly {want}; build it with prompt.build_prompt_ids"
            )
        if len(context.input_ids) > self.max_context:
            raise ValueError(
                f"adapter {self.name!r}: prompt of {len(context.input_ids)} positions exceeds max_context={self.max_context}"
            )

    @torch.inference_mode()
    def prefill(self, context: StageContext) -> None:
        """Reset the cache and run the context (prompt + video) once; eager, not graphed."""
        if self._prepared is not None and self._prepared[0] is context:
            encoded = self._prepared[1]
        else:
            self._validate_context(context)
            assert context.pixel_values is not None
            encoded = self.encoder.submit(context.pixel_values)
        self._prepared = None
        self._context = None  # until this prefill completes, no earlier context is valid either
        self.cache.reset(0)
        features = encoded.wait()  # [n_video, H]
        ids = torch.tensor(context.input_ids, dtype=torch.long).to(self._device, non_blocking=True)  # [L]
        embeds = torch.nn.functional.embedding(ids, self.weights.embed)  # [L, H]
        video_mask = (ids == media_token_id(self.model.config, "video"))[:, None]  # [L, 1]
        embeds = embeds.masked_scatter(video_mask, features.to(embeds.dtype))
        start = torch.zeros(1, dtype=torch.long, device=self._device)
        logits = self.forward(start, inputs_embeds=embeds, logits_rows=1)  # [1, V]
        self.forwards += 1
        self.cache.reset(len(context.input_ids))
        self._rows[0].copy_(logits[0])
        self._context = context

    @torch.inference_mode()
    def next_logits(self, prefix: Sequence[int]) -> torch.Tensor:
        """Logits `[V]` of the token after `prefix` (syncs the cache; at most one forward)."""
        self._require_context()
        self._check_ids(prefix, "prefix")
        self._sync(prefix)
        return self._rows[len(prefix)].clone()

    @torch.inference_mode()
    def score(self, prefix: Sequence[int], draft: Sequence[int]) -> torch.Tensor:
        """Logits `[len(draft)+1, V]` (float32, on the device) for each draft position plus the bonus.

        One forward of the tokens the cache lacks (normally just the draft); no host sync.
        """
        self._require_context()
        seq = [*prefix, *draft]
        self._check_ids(seq, "prefix/draft")
        self._sync(seq)
        return self._rows[len(prefix) : len(seq) + 1].clone()

    @torch.inference_mode()
    def propose(
        self,
        prefix: Sequence[int],
        k: int,
        *,
        temperature: float = 0.0,
        generator: torch.Generator | None = None,
        return_q: bool = False,
    ) -> Proposal:
        """k tokens continuing `prefix`, greedy or sampled; the steps chain on the device, one sync.

        The first token comes from the cached row; each next one is a one-token graph replay whose
        input is the previous pick, copied device to device.
        """
        self._require_context()
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        self._check_ids(prefix, "prefix")
        self._sync(prefix)
        if k == 0:
            return Proposal([], [], None, temperature > 0)
        base = len(prefix)
        self._check_caption(base + k - 1)
        self.cache.check_room(self.cache.length, k - 1)
        picks = torch.empty(k, dtype=torch.long, device=self._device)  # [k]
        for i in range(k):
            row = self._rows[base + i]  # [V]
            if temperature > 0:
                dist = torch.softmax(row / temperature, dim=-1)
                picks[i] = torch.multinomial(dist, 1, generator=generator)[0]
            else:
                picks[i] = torch.argmax(row)
            if i < k - 1:
                logits = self.runner.run(picks[i : i + 1], self.cache.length + i)  # [1, V]
                self._rows[base + i + 1].copy_(logits[0])
                self.forwards += 1
        rows = self._rows[base : base + k]  # [k, V]
        dist_all = torch.softmax(rows / (temperature if temperature > 0 else 1.0), dim=-1)  # [k, V]
        probs_t = dist_all.gather(1, picks.view(-1, 1)).view(-1)  # [k]
        # Ids and probabilities come back in ONE transfer (ids are exact in float64): one host sync.
        packed = torch.cat((picks.to(torch.float64), probs_t.to(torch.float64))).tolist()
        token_ids = [int(t) for t in packed[:k]]
        probs = packed[k:]
        self.cache.extend(token_ids[: k - 1])
        n = k
        if self._eos_token_id is not None and self._eos_token_id in token_ids:
            n = token_ids.index(self._eos_token_id) + 1
        q = dist_all[:n].clone() if (return_q or temperature > 0) else None
        return Proposal(token_ids[:n], probs[:n], q, temperature > 0)


def load_static_verifier(
    path: str | Path,
    *,
    max_context: int,
    device: str | torch.device = "cuda",
    dtype: torch.dtype | None = None,
    **kwargs: object,
) -> StaticVerifierAdapter:
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
    return StaticVerifierAdapter(model.to(device), max_context=max_context, **kwargs)  # type: ignore[arg-type]
