"""Visual tokens from the frozen encoders: the event stage's and the target's (no gradients, no training).

* `event_tokens`: the event drafter's vision tower + projector on its event image -> `[B, R, E]`
  (R patches, CLS dropped as LLaVA's "default" strategy does): what the drafter node publishes as
  EventFeatures;
* `target_video_tokens`: the target's video tower + projector on the clip, every frame's patch
  tokens (CLS dropped) -> `[B, F * R, D]`: what the target's language model reads, and the draft
  head's video memory (the last frame's rows: what the alignment MLP learns to predict from the
  events, the same patches at the same moment); `video_memory` cuts the same rows from a projector
  output caught in a prefill;
* `projector_of` / `ProjectorTap`: a LLaVA-style model's projector, and the drafter's event tokens as
  its own prefill computes them (a forward hook on it), so a drafter node publishes them without
  encoding its event image twice;
* `features_payload` / `features_from_payload`: event tokens to and from an EventFeatures body
  (rows, dim, row-major data, encoder fingerprint), checked field by field on the way in.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from transformers import PreTrainedModel

__all__ = [
    "ProjectorTap",
    "event_tokens",
    "target_video_tokens",
    "video_memory",
    "projector_of",
    "cosine_per_token",
    "features_payload",
    "features_from_payload",
]


@torch.no_grad()
def event_tokens(drafter: PreTrainedModel, pixel_values: torch.Tensor) -> torch.Tensor:
    """`[B, 3, H, W]` event images -> `[B, R, E]` projected patch tokens of the (Llava) event drafter."""
    cfg = drafter.config
    out = drafter.model.get_image_features(
        pixel_values=pixel_values.to(drafter.device, drafter.dtype),
        vision_feature_layer=cfg.vision_feature_layer,
        vision_feature_select_strategy=cfg.vision_feature_select_strategy,
    ).pooler_output
    feats = torch.stack(list(out)) if isinstance(out, (list, tuple)) else out
    return feats.float()


class ProjectorTap:
    """The event tokens `[1, R, E]` of the (LLaVA) event drafter's last image forward, caught on the way.

    A forward hook on the projector keeps its output, which is what `event_tokens` computes (LLaVA's
    "default" strategy drops CLS before the projector), so a stage that prefills its event image
    anyway has the tokens for free. `take` hands the last capture over once (None: no image forward
    since the last take). Used from the one thread that runs the model.
    """

    def __init__(self, drafter: PreTrainedModel) -> None:
        projector = projector_of(drafter)
        if projector is None:
            raise ValueError(f"{type(drafter).__name__} has no multi-modal projector: it makes no event tokens")
        self._last: torch.Tensor | None = None
        self._handle = projector.register_forward_hook(self._caught)

    def _caught(self, module: torch.nn.Module, args: object, output: torch.Tensor) -> None:
        del module, args
        self._last = output.detach()

    def take(self) -> torch.Tensor | None:
        """The tokens of the last image forward (float32 on the CPU, `[1, R, E]`), once."""
        last, self._last = self._last, None
        if last is None:
            return None
        return last.reshape(-1, last.shape[-2], last.shape[-1])[:1].to("cpu", torch.float32)

    def close(self) -> None:
        self._handle.remove()
        self._last = None


def projector_of(model: PreTrainedModel) -> torch.nn.Module | None:
    """The multi-modal projector of a (Video)LLaVA model (None: it has none)."""
    projector = getattr(getattr(model, "model", None), "multi_modal_projector", None)
    return projector if isinstance(projector, torch.nn.Module) else None


def _patch_rows(projected: torch.Tensor) -> torch.Tensor:
    """Projected video tokens `[B, F, 1 + R, D]` (each frame's CLS first) -> `[B, F * R, D]` float."""
    return projected[:, :, 1:].reshape(projected.shape[0], -1, projected.shape[-1]).float()


@torch.no_grad()
def target_video_tokens(target: PreTrainedModel, pixel_values_videos: torch.Tensor) -> torch.Tensor:
    """`[B, F, 3, H, W]` clips -> `[B, F * R, D]` the target's projected patch tokens, frame by frame."""
    b, frames = pixel_values_videos.shape[:2]
    out = target.model.get_video_features(
        pixel_values_videos=pixel_values_videos.to(target.device, target.dtype),
        vision_feature_layer=target.config.vision_feature_layer,
    ).pooler_output  # [B * F, 1 + R, D]: video tokens keep CLS
    return _patch_rows(out.view(b, frames, *out.shape[1:]))


def video_memory(projected: torch.Tensor, rows: int) -> torch.Tensor | None:
    """One clip's projector output `[F, 1 + R, D]` (as a prefill computes it) -> `[1, F * R, D]`, the
    rows `target_video_tokens` gives; None when its shape does not make ``rows`` rows (another
    model, an image instead of a clip)."""
    if projected.dim() != 3 or projected.shape[0] * (projected.shape[1] - 1) != rows:
        return None
    return _patch_rows(projected.unsqueeze(0))


def cosine_per_token(pred: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each visual token `[..., R, D]` x2 -> `[..., R]` (the note's feature metric)."""
    return torch.nn.functional.cosine_similarity(pred.float(), ref.float(), dim=-1)


def features_payload(tokens: torch.Tensor) -> tuple[int, int, list[float]]:
    """Event tokens `[1, R, E]` or `[R, E]` -> (rows, dim, row-major floats): an EventFeatures body."""
    flat = tokens.detach().reshape(-1, tokens.shape[-1]).to("cpu", torch.float32)  # [R, E]
    return int(flat.shape[0]), int(flat.shape[1]), flat.reshape(-1).tolist()


def features_from_payload(
    rows: int,
    dim: int,
    data: Sequence[float],
    fingerprint: str,
    *,
    expected_rows: int,
    expected_dim: int,
    expected_fingerprint: str,
) -> torch.Tensor:
    """An EventFeatures body -> event tokens `[1, R, E]` for `HeadAdapter.prefill_events`.

    Every field can be wrong (another encoder, a truncated array, NaN): ValueError in one line naming
    what, so the verifier drops that message and drafts from its own states (a late or missing
    feature message only costs speed).
    """
    if fingerprint != expected_fingerprint:
        raise ValueError(
            f"event features from encoder {fingerprint!r}, the head was trained on {expected_fingerprint!r}"
        )
    if (rows, dim) != (expected_rows, expected_dim):
        raise ValueError(f"event features of {rows} x {dim}, the head takes {expected_rows} x {expected_dim}")
    if len(data) != rows * dim:
        raise ValueError(f"event features: {len(data)} values for {rows} x {dim}")
    tokens = torch.as_tensor(np.asarray(data, dtype=np.float32)).view(1, rows, dim)
    if not torch.isfinite(tokens).all():
        raise ValueError("event features hold NaN or inf")
    return tokens
