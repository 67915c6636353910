"""Tiny random models for tests and benches: a VideoLlava target, Llava refiner and drafter sharing a vocab.

Special ids: pad 0, bos 1, eos 2, `<image>` = V-2, `<video>` = V-1; ordinary text ids are [3, V-2).
With `aligned=True` the refiner/drafter are truncated copies of the target (same vision tower and
projector; same embeddings, first decoder layers, final norm and LM head) and see frames of the
target's clip (refiner: the last frame, drafter: the first), so random models still agree often
enough for acceptance rates to mean something.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
    VideoLlavaConfig,
    VideoLlavaForConditionalGeneration,
)

from cascade_sd_ros.core.spec.adapter import HFAdapter, Modality, Proposal, StageContext
from cascade_sd_ros.core.spec.prompt import expand_placeholder, media_token_count

__all__ = [
    "PAD_ID",
    "BOS_ID",
    "EOS_ID",
    "TinyModels",
    "StageContexts",
    "ScriptedDrafter",
    "TableLM",
    "tiny_models",
    "tiny_causal_lm",
]

PAD_ID, BOS_ID, EOS_ID = 0, 1, 2


@dataclass(frozen=True)
class StageContexts:
    """One clip's contexts for each stage (same question, different pixels per stage)."""

    target: StageContext
    refiner: StageContext
    drafter: StageContext


@dataclass(frozen=True)
class TinyModels:
    target: HFAdapter
    refiner: HFAdapter
    drafter: HFAdapter
    vocab_size: int
    num_frames: int
    image_size: int
    make_contexts: Callable[[int], StageContexts]  # seed -> contexts


def _text_config(vocab_size: int, hidden: int, layers: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        tie_word_embeddings=False,
    )


def _vision_config(hidden: int, image_size: int, patch_size: int) -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=hidden,
    )


def _copy_language_prefix(src: torch.nn.Module, dst: torch.nn.Module) -> None:
    """Copy src's vision tower, projector, embeddings, first len(dst.layers) decoder layers, norm and
    LM head into dst (a VideoLlava's video tower becomes the Llava's vision tower)."""

    def copy(src_name: str, dst_name: str) -> None:
        dst.get_submodule(dst_name).load_state_dict(src.get_submodule(src_name).state_dict())

    copy("model.video_tower", "model.vision_tower")
    copy("model.multi_modal_projector", "model.multi_modal_projector")
    copy("model.language_model.embed_tokens", "model.language_model.embed_tokens")
    for i, _ in dst.get_submodule("model.language_model.layers").named_children():
        copy(f"model.language_model.layers.{i}", f"model.language_model.layers.{i}")
    copy("model.language_model.norm", "model.language_model.norm")
    copy("lm_head", "lm_head")


def tiny_models(
    seed: int,
    vocab_size: int = 64,
    *,
    hidden_size: int = 32,
    target_layers: int = 2,
    refiner_layers: int = 1,
    drafter_layers: int = 1,
    num_frames: int = 8,
    image_size: int = 16,
    patch_size: int = 8,
    question_len: int = 6,
    aligned: bool = False,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> TinyModels:
    """Build a seeded tiny target (VideoLlava, video), refiner and drafter (Llava, one image)."""
    if vocab_size < 8:
        raise ValueError(f"vocab_size must be >= 8, got {vocab_size}")
    if aligned and max(refiner_layers, drafter_layers) > target_layers:
        raise ValueError("aligned stages cannot have more layers than the target")
    image_id, video_id = vocab_size - 2, vocab_size - 1
    torch.manual_seed(seed)
    target_cfg = VideoLlavaConfig(
        vision_config=_vision_config(hidden_size, image_size, patch_size).to_dict(),
        text_config=_text_config(vocab_size, hidden_size, target_layers).to_dict(),
        image_token_index=image_id,
        video_token_index=video_id,
        image_seq_length=(image_size // patch_size) ** 2,
        video_seq_length=num_frames * ((image_size // patch_size) ** 2 + 1),
    )
    target_model = VideoLlavaForConditionalGeneration(target_cfg)

    def llava(layers: int) -> LlavaForConditionalGeneration:
        cfg = LlavaConfig(
            vision_config=_vision_config(hidden_size, image_size, patch_size).to_dict(),
            text_config=_text_config(vocab_size, hidden_size, layers).to_dict(),
            image_token_index=image_id,
            image_seq_length=(image_size // patch_size) ** 2,
        )
        m = LlavaForConditionalGeneration(cfg)
        if aligned:
            _copy_language_prefix(target_model, m)
        return m

    refiner_model, drafter_model = llava(refiner_layers), llava(drafter_layers)
    for m in (target_model, refiner_model, drafter_model):
        m.generation_config.eos_token_id = EOS_ID
        m.generation_config.pad_token_id = PAD_ID
        m.to(device=device, dtype=dtype)  # type: ignore[call-arg]  # transformers' @wraps(Module.to) reads as unbound: self expected first
    target = HFAdapter(target_model, name="target", modality="video")
    refiner = HFAdapter(refiner_model, name="refiner", modality="image")
    drafter = HFAdapter(drafter_model, name="drafter", modality="image")
    n_video = media_token_count(target_cfg, "video", num_frames)
    n_image = media_token_count(refiner_model.config, "image")

    def make_contexts(ctx_seed: int) -> StageContexts:
        g = torch.Generator().manual_seed(ctx_seed)
        question = torch.randint(3, vocab_size - 2, (question_len,), generator=g).tolist()

        def ids(placeholder: int, count: int) -> tuple[int, ...]:
            return expand_placeholder([BOS_ID, *question[:2], placeholder, *question[2:]], placeholder, count)

        video = torch.randn(1, num_frames, 3, image_size, image_size, generator=g, dtype=dtype)
        frame = torch.randn(1, 3, image_size, image_size, generator=g, dtype=dtype)
        events = torch.randn(1, 3, image_size, image_size, generator=g, dtype=dtype)
        if aligned:
            frame, events = video[:, -1].clone(), video[:, 0].clone()
        return StageContexts(
            target=StageContext(ids(video_id, n_video), video, "video"),
            refiner=StageContext(ids(image_id, n_image), frame, "image"),
            drafter=StageContext(ids(image_id, n_image), events, "image"),
        )

    return TinyModels(target, refiner, drafter, vocab_size, num_frames, image_size, make_contexts)


def tiny_causal_lm(
    seed: int,
    vocab_size: int = 64,
    *,
    hidden_size: int = 32,
    layers: int = 1,
    dtype: torch.dtype = torch.float32,
    name: str = "lm",
) -> HFAdapter:
    """A seeded tiny Llama causal LM (text modality) as an adapter."""
    torch.manual_seed(seed)
    model = LlamaForCausalLM(_text_config(vocab_size, hidden_size, layers))
    model.generation_config.eos_token_id = EOS_ID
    model.generation_config.pad_token_id = PAD_ID
    model.to(dtype=dtype)  # type: ignore[call-arg]  # transformers' @wraps(Module.to) reads as unbound: self expected first
    return HFAdapter(model, name=name, modality="text")


class ScriptedDrafter:
    """A ModelAdapter whose proposals come from a policy (prefix, k) -> token ids, for tests.

    Its "model" is deterministic: `score` returns logits that put all mass on what the policy would
    propose after each prefix, so it can also sit in the middle of a cascade.
    """

    def __init__(
        self,
        policy: Callable[[Sequence[int], int], Sequence[int]],
        vocab_size: int,
        *,
        eos_token_id: int | None = EOS_ID,
        name: str = "scripted",
        modality: Modality = "text",
    ) -> None:
        self.policy = policy
        self.name = name
        self.modality: Modality = modality
        self._vocab_size = vocab_size
        self._eos_token_id = eos_token_id
        self.forwards = 0

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def eos_token_id(self) -> int | None:
        return self._eos_token_id

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def prefill(self, context: StageContext, caption: Sequence[int] = ()) -> None:
        del caption  # scoring is a pure function of the prefix here: nothing to keep
        self.forwards += 1

    def _next(self, prefix: Sequence[int]) -> int:
        out = list(self.policy(list(prefix), 1))
        return int(out[0]) if out else EOS_ID

    def propose(
        self,
        prefix: Sequence[int],
        k: int,
        *,
        temperature: float = 0.0,
        generator: torch.Generator | None = None,
        return_q: bool = False,
    ) -> Proposal:
        tokens = [int(t) for t in self.policy(list(prefix), k)][: max(k, 0)]
        for t in tokens:
            if not 0 <= t < self._vocab_size:
                raise ValueError(f"scripted token {t} outside vocabulary [0, {self._vocab_size})")
        q = None
        if return_q and tokens:
            q = torch.zeros(len(tokens), self._vocab_size).scatter_(1, torch.tensor(tokens).view(-1, 1), 1.0)
        return Proposal(tokens, [1.0] * len(tokens), q, False)

    def score(self, prefix: Sequence[int], draft: Sequence[int]) -> torch.Tensor:
        self.forwards += 1
        seq = [*prefix, *draft]
        logits = torch.full((len(draft) + 1, self._vocab_size), -30.0)  # [n+1, V]
        for i in range(len(draft) + 1):
            logits[i, self._next(seq[: len(prefix) + i])] = 30.0
        return logits


class TableLM:
    """A ModelAdapter with no network: logits(prefix) are seeded Gaussians, so tests run in microseconds.

    logits = (base.logits(prefix) if base else 0) + scale * N(0, 1)[V] seeded by (seed, context,
    prefix). A `base` makes a related model (a drafter close to its target). Sampling goes through
    the explicit generator like the real adapter.
    """

    def __init__(
        self,
        seed: int,
        vocab_size: int,
        *,
        scale: float = 2.0,
        base: TableLM | None = None,
        eos_token_id: int | None = EOS_ID,
        name: str = "table",
        modality: Modality = "text",
    ) -> None:
        if base is not None and base.vocab_size != vocab_size:
            raise ValueError("base model has another vocabulary size")
        self.seed, self.scale, self.base = seed, scale, base
        self.name = name
        self.modality: Modality = modality
        self._vocab_size = vocab_size
        self._eos_token_id = eos_token_id
        self._context: tuple[int, ...] = ()
        self._memo: dict[tuple[int, ...], torch.Tensor] = {}
        self.forwards = 0

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def eos_token_id(self) -> int | None:
        return self._eos_token_id

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def prefill(self, context: StageContext, caption: Sequence[int] = ()) -> None:
        del caption  # scoring is a pure function of the prefix here: nothing to keep
        self._context = tuple(context.input_ids)
        self._memo = {}
        if self.base is not None and self.base._context != self._context:
            self.base.prefill(context)
        self.forwards += 1

    def next_logits(self, prefix: Sequence[int]) -> torch.Tensor:
        key = tuple(int(t) for t in prefix)
        row = self._memo.get(key)
        if row is None:
            g = torch.Generator().manual_seed(hash((self.seed, self._context, key)) & 0x7FFFFFFF)
            row = self.scale * torch.randn(self._vocab_size, generator=g, dtype=torch.float64)
            if self.base is not None:
                row = row + self.base.next_logits(key)
            self._memo[key] = row
        return row.clone()

    def score(self, prefix: Sequence[int], draft: Sequence[int]) -> torch.Tensor:
        self.forwards += 1
        seq = [*prefix, *draft]
        return torch.stack([self.next_logits(seq[: len(prefix) + i]) for i in range(len(draft) + 1)])

    def propose(
        self,
        prefix: Sequence[int],
        k: int,
        *,
        temperature: float = 0.0,
        generator: torch.Generator | None = None,
        return_q: bool = False,
    ) -> Proposal:
        seq, probs, rows = list(prefix), [], []
        for _ in range(max(k, 0)):
            dist = torch.softmax(self.next_logits(seq) / (temperature if temperature > 0 else 1.0), dim=-1)
            tok = int(torch.multinomial(dist, 1, generator=generator)[0]) if temperature > 0 else int(dist.argmax())
            seq.append(tok)
            probs.append(float(dist[tok]))
            rows.append(dist)
            if tok == self._eos_token_id:
                break
        self.forwards += max(len(rows) - 1, 0)
        toks = seq[len(prefix) :]
        q = torch.stack(rows).float() if (rows and (return_q or temperature > 0)) else None
        return Proposal(toks, probs, q, temperature > 0)
