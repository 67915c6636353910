"""EventGPT checkpoints as a stage's model (issue 16), read by our own code from the release layout.

What the release folder holds (facts from EventGPT's public code; the code here is ours):

* ``config.json``: ``model_type`` ``EventChat_llama``, a Llama config at top level (Vicuna-7B: hidden
  4096), ``mm_visual_tower`` naming the CLIP tower (ViT-L/14), ``event_feature_adaptor`` when the
  optional 4096 -> 4096 feature adaptor is there;
* weights: the Llama LM under ``model.*`` and ``lm_head.*``, the CLIP vision tower under
  ``model.visual_tower.visual_tower.*``, the 2-layer GELU projector (1024 -> 4096 -> 4096) under
  ``model.visual_projector.{0,2}.*``, the adaptor under ``model.feature_adaptor.*``;
* the Vicuna tokenizer and a CLIP image processor.

An event sample is several event images (the stream cut into chunks of equal event count, ON red and
OFF blue on white: :class:`~cascade_sd_ros.core.events.represent.EventFrameRenderer`). Each goes
through the tower (its last hidden state, CLS included), the projector and the adaptor; the frames'
features ``[T, S, C]`` are pooled into spatio-temporal tokens: one per frame (mean over positions),
then one per position (mean over frames), ``T + S`` in all, which fill the prompt's event positions.

Weights load from safetensors only; a folder that has only pickles is refused by name, never opened.
The tower's config is not in the folder (only its hub name), so it is read off the tensors' shapes:
width, patch, image size, depth and MLP width; the head count follows OpenAI CLIP's head width of 64.
Our ids stay inside the vocabulary: the event positions carry the tokenizer's unknown-token id (its
byte fallback never produces it from text), where EventGPT's own code puts an id outside it (-200).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from cascade_sd_ros.core.spec import cache_ops
from cascade_sd_ros.core.spec.adapter import HFAdapter, StageContext
from cascade_sd_ros.core.spec.prompt import TokenizerLike

if TYPE_CHECKING:  # transformers' classes load in load_eventgpt
    from transformers import CLIPVisionModel, PreTrainedModel

__all__ = [
    "EVENTGPT_MODEL_TYPE",
    "EventGPT",
    "EventGPTAdapter",
    "is_eventgpt_folder",
    "load_eventgpt",
    "spatio_temporal_tokens",
]

EVENTGPT_MODEL_TYPE = "EventChat_llama"
CLIP_HEAD_DIM = 64  # OpenAI CLIP towers (ViT-B/16, ViT-L/14): 64-wide attention heads
SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the human's questions."
)  # Vicuna v1, EventGPT's conversation
EVENT_TOKEN = "<event>"
_TOWER = "model.visual_tower.visual_tower."
_PROJECTOR = "model.visual_projector."
_ADAPTOR = "model.feature_adaptor."


def is_eventgpt_folder(folder: Path) -> bool:
    """Whether ``folder``'s config.json names the EventGPT model type."""
    try:
        return json.loads((folder / "config.json").read_text()).get("model_type") == EVENTGPT_MODEL_TYPE
    except (OSError, ValueError, AttributeError):
        return False


def spatio_temporal_tokens(features: torch.Tensor) -> torch.Tensor:
    """``[T, S, C]`` frame features -> ``[T + S, C]``: per-frame means, then per-position means."""
    if features.ndim != 3:
        raise ValueError(f"event features must be [frames, positions, channels], got {tuple(features.shape)}")
    return torch.cat((features.mean(dim=1), features.mean(dim=0)), dim=0)


def _pixels(value: object, what: str) -> int:
    # transformers types a vision config's sizes int | list | tuple | None; a CLIP tower's are one int
    if not isinstance(value, int):
        raise TypeError(f"the CLIP tower's {what} is {value!r}, not one side in pixels")
    return value


class EventGPT(nn.Module):
    """The EventGPT model: Llama LM, CLIP tower, projector and optional feature adaptor."""

    def __init__(
        self, lm: PreTrainedModel, tower: CLIPVisionModel, projector: nn.Sequential, adaptor: nn.Linear | None
    ) -> None:
        super().__init__()
        self.lm, self.tower, self.projector, self.adaptor = lm, tower, projector, adaptor

    @property
    def image_size(self) -> int:
        return _pixels(self.tower.config.image_size, "image_size")

    def positions(self, frames: int) -> int:
        """Event positions a prompt holds for ``frames`` event images: frames + tower positions."""
        per = (self.image_size // _pixels(self.tower.config.patch_size, "patch_size")) ** 2 + 1  # CLS kept
        return frames + per

    @torch.inference_mode()
    def event_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[T, 3, S, S]`` preprocessed event images -> ``[T + positions, hidden]`` tokens."""
        hidden = self.tower(pixel_values=pixels).last_hidden_state  # [T, P, 1024]
        feats = self.projector(hidden)  # [T, P, 4096]
        if self.adaptor is not None:
            feats = self.adaptor(feats)
        return spatio_temporal_tokens(feats)


def _refuse_pickles(folder: Path) -> None:
    if (folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file():
        return
    pickles = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt*"))
    refused = f" ({', '.join(pickles)} refused: pickled weights can run code)" if pickles else ""
    raise FileNotFoundError(f"EventGPT folder {folder} has no model.safetensors{refused}")


def _read_state(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            if Path(shard).name != shard or not shard.endswith(".safetensors"):
                raise ValueError(f"EventGPT folder {folder}: shard name {shard!r} is not a safetensors file here")
            state.update(load_file(str(folder / shard)))
        return state
    return load_file(str(folder / "model.safetensors"))


def _tower_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The CLIP tower's tensors under transformers 5's CLIPVisionModel names (the release, saved by
    transformers 4, has them under ``vision_model.``)."""
    out = {}
    for key, value in state.items():
        if key.startswith(_TOWER):
            rest = key[len(_TOWER) :]
            out[rest.removeprefix("vision_model.")] = value
    return out


def _tower_config(tower: dict[str, torch.Tensor], folder: Path):  # noqa: ANN202 - CLIPVisionConfig
    from transformers import CLIPVisionConfig

    try:
        patch = tower["embeddings.patch_embedding.weight"]  # [C, 3, p, p]
        pos = tower["embeddings.position_embedding.weight"]  # [1 + n*n, C]
        fc1 = tower["encoder.layers.0.mlp.fc1.weight"]  # [I, C]
    except KeyError as exc:
        raise ValueError(f"EventGPT folder {folder}: no CLIP tower weights ({_TOWER}{exc.args[0]} missing)") from None
    width, side = int(patch.shape[0]), int(patch.shape[-1])
    grid = math.isqrt(int(pos.shape[0]) - 1)
    layer = re.compile(r"encoder\.layers\.(\d+)\.")
    depth = 1 + max(int(m.group(1)) for k in tower if (m := layer.match(k)))
    return CLIPVisionConfig(
        hidden_size=width,
        intermediate_size=int(fc1.shape[0]),
        num_hidden_layers=depth,
        num_attention_heads=max(1, width // CLIP_HEAD_DIM),
        image_size=grid * side,
        patch_size=side,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    )


def load_eventgpt(folder: Path, device: torch.device, dtype: torch.dtype) -> EventGPT:
    """Build an :class:`EventGPT` from a release folder (safetensors only); ValueError/FileNotFoundError
    naming the folder and what is wrong."""
    from transformers import CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    spec = json.loads((folder / "config.json").read_text())
    if spec.get("model_type") != EVENTGPT_MODEL_TYPE:
        raise ValueError(f"{folder}: model_type {spec.get('model_type')!r} is not {EVENTGPT_MODEL_TYPE!r}")
    _refuse_pickles(folder)
    state = _read_state(folder)
    text = {k: v for k, v in spec.items() if k not in ("model_type", "architectures", "auto_map")}
    lm = LlamaForCausalLM(LlamaConfig(**text))
    lm_state = {
        k: v
        for k, v in state.items()
        if k.startswith("lm_head.")
        or (k.startswith("model.") and not k.startswith((_TOWER, _PROJECTOR, _ADAPTOR, "model.visual_", "model.query")))
    }
    missing, unexpected = lm.load_state_dict(lm_state, strict=False)
    missing = [k for k in missing if "rotary" not in k]
    if missing or unexpected:
        raise ValueError(
            f"EventGPT folder {folder}: language model weights do not match its config "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    tower_state = _tower_state(state)
    tower = CLIPVisionModel(_tower_config(tower_state, folder))
    tower.load_state_dict(tower_state, strict=True)
    try:
        w0, w2 = state[_PROJECTOR + "0.weight"], state[_PROJECTOR + "2.weight"]
    except KeyError:
        raise ValueError(
            f"EventGPT folder {folder}: no 2-layer visual projector (model.visual_projector.0/2)"
        ) from None
    if int(w0.shape[1]) != tower.config.hidden_size or int(w2.shape[0]) != lm.config.hidden_size:
        raise ValueError(
            f"EventGPT folder {folder}: projector {tuple(w0.shape[::-1])} -> {tuple(w2.shape[::-1])} does "
            f"not join the tower ({tower.config.hidden_size}) to the LM ({lm.config.hidden_size})"
        )
    projector = nn.Sequential(nn.Linear(w0.shape[1], w0.shape[0]), nn.GELU(), nn.Linear(w2.shape[1], w2.shape[0]))
    projector.load_state_dict({k[len(_PROJECTOR) :]: v for k, v in state.items() if k.startswith(_PROJECTOR)})
    adaptor = None
    if _ADAPTOR + "weight" in state:
        adaptor = nn.Linear(lm.config.hidden_size, lm.config.hidden_size)
        adaptor.load_state_dict({k[len(_ADAPTOR) :]: v for k, v in state.items() if k.startswith(_ADAPTOR)})
    elif spec.get("event_feature_adaptor"):
        raise ValueError(f"EventGPT folder {folder}: config names a feature adaptor, weights have none")
    return EventGPT(lm, tower, projector, adaptor).to(device=device, dtype=dtype).eval()


def eventgpt_prompt_ids(tokenizer: TokenizerLike, question: str, positions: int) -> tuple[int, ...]:
    """Vicuna v1 prompt with the event positions (``positions`` unknown-token ids) before the question."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None:
        raise ValueError("EventGPT's tokenizer has no unknown token to mark the event positions")
    if EVENT_TOKEN in question:
        raise ValueError(f"the question must not contain {EVENT_TOKEN} itself")
    head = tokenizer.encode(f"{SYSTEM} USER: ", add_special_tokens=True)
    tail = tokenizer.encode(f"\n{question} ASSISTANT:", add_special_tokens=False)
    if unk in head or unk in tail:
        raise ValueError("the prompt's text encodes to the unknown token, which marks event positions")
    return (*head, *([int(unk)] * positions), *tail)


class EventGPTAdapter(HFAdapter):
    """EventGPT behind the adapter interface: the prefill splices the event tokens into the prompt's
    embeddings; every later step is the Llama LM's (HFAdapter's cache, rows and rollback)."""

    def __init__(self, model: EventGPT, *, placeholder_id: int, name: str = "drafter") -> None:
        super().__init__(model.lm, name=name, modality="text")
        self.eventgpt = model
        self.placeholder_id = int(placeholder_id)
        self.modality = "image"  # what a context brings: event images

    def expected_media_tokens(self, num_frames: int = 1) -> int:
        return self.eventgpt.positions(num_frames)

    @torch.inference_mode()
    def prefill(self, context: StageContext, caption: Sequence[int] = ()) -> None:
        if context.modality not in ("image", "video") or context.pixel_values is None:
            raise ValueError(f"adapter {self.name!r} takes event images, got a {context.modality} context")
        self._check_ids(context.input_ids, "prompt")
        self._check_ids(caption, "caption")
        pixels = context.pixel_values.to(self.device, self.model.dtype)
        pixels = pixels.reshape(-1, *pixels.shape[-3:])  # [T, 3, S, S]
        ids = torch.tensor(context.input_ids, dtype=torch.long, device=self.device)  # [L]
        where = (ids == self.placeholder_id).nonzero().view(-1)
        want = self.expected_media_tokens(pixels.shape[0])
        if where.numel() != want:
            raise ValueError(
                f"adapter {self.name!r}: {pixels.shape[0]} event image(s) fill {want} positions, "
                f"the prompt marks {where.numel()}"
            )
        embeds = self.model.get_input_embeddings()(ids).clone()  # [L, H]
        embeds[where] = self.eventgpt.event_features(pixels).to(embeds.dtype)
        self._cache = cache_ops.new_cache(self.model.config)
        self._tokens = []
        out = self.model(inputs_embeds=embeds[None], past_key_values=self._cache, use_cache=True, logits_to_keep=1)
        self.forwards += 1
        self._context = context
        self._context_len = len(context.input_ids)
        self._store_rows(0, out.logits[0, -1:].float())  # [1, V]
        if caption:  # a draft in hand: fed after the spliced prompt (HFAdapter's path for a late draft)
            self._sync([int(t) for t in caption])

    def events_context(self, input_ids: Sequence[int], pixels: torch.Tensor) -> StageContext:
        """A context of ``pixels`` ``[T, 3, S, S]`` (T event images) and prompt ids."""
        return (
            StageContext(tuple(int(i) for i in input_ids), pixels.unsqueeze(0), "video")
            if pixels.shape[0] > 1
            else StageContext(tuple(int(i) for i in input_ids), pixels, "image")
        )
