"""Vision feature encoding for the static adapters, optionally on a side CUDA stream.

Encoding the next round's pixels (vision tower + projector) does not depend on the current round's
caption, so on a GPU it is queued on its own stream and overlaps the previous round's last steps; the
prefill then only waits on an event. On a CPU it simply runs inline.

The features are exactly what the transformers forward scatters into the placeholder positions:

* VideoLlava, video: `get_video_features` (every frame keeps its CLS vector);
* VideoLlava, image: `get_image_features(pixel_values_images=...)`;
* Llava, image: `get_image_features(pixel_values=...)`;

with the config's vision feature layer and selection strategy, as the model's own forward uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from transformers import LlavaForConditionalGeneration, VideoLlavaForConditionalGeneration

__all__ = ["EncodedMedia", "MediaEncoder", "media_modalities"]

_RANK = {"video": 5, "image": 4}  # [1, F, 3, S, S] and [1, 3, S, S]


def media_modalities(model: object) -> tuple[Literal["video", "image"], ...]:
    """The pixel modalities a model's vision tower serves (empty for anything else)."""
    if isinstance(model, VideoLlavaForConditionalGeneration):
        return ("video", "image")
    if isinstance(model, LlavaForConditionalGeneration):
        return ("image",)
    return ()


@dataclass(frozen=True, eq=False)
class EncodedMedia:
    """Projected features `[n_placeholders, H]`, ready once `ready` has fired (None: ready now)."""

    features: torch.Tensor
    ready: torch.cuda.Event | None

    def wait(self) -> torch.Tensor:
        """Make the current stream wait for the features (no host sync) and return them."""
        if self.ready is not None:
            torch.cuda.current_stream(self.features.device).wait_event(self.ready)
        return self.features


class MediaEncoder:
    """Runs the vision tower + projector of a VideoLlava (video or image) or Llava (image) model, on a
    side stream when on CUDA."""

    def __init__(
        self,
        model: VideoLlavaForConditionalGeneration | LlavaForConditionalGeneration,
        modality: str,
        *,
        side_stream: bool = True,
    ) -> None:
        supported = media_modalities(model)
        if not supported:
            raise TypeError(
                f"MediaEncoder needs a VideoLlavaForConditionalGeneration or LlavaForConditionalGeneration, "
                f"got {type(model).__name__}"
            )
        if modality not in supported:
            raise ValueError(f"{type(model).__name__} encodes {supported}, not {modality!r}")
        self.model = model
        self.modality = modality
        self.device = model.device
        self._stream = torch.cuda.Stream(self.device) if (side_stream and self.device.type == "cuda") else None

    def _encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pixels = pixel_values.to(self.device, self.model.dtype, non_blocking=True)
        config = self.model.config
        inner = self.model.model
        if self.modality == "video":
            out = inner.get_video_features(
                pixel_values_videos=pixels, vision_feature_layer=config.vision_feature_layer, return_dict=True
            )
            return out.pooler_output.flatten(0, 1)  # [F * (patches + 1), H]
        key = "pixel_values_images" if isinstance(self.model, VideoLlavaForConditionalGeneration) else "pixel_values"
        out = inner.get_image_features(
            **{key: pixels},
            vision_feature_layer=config.vision_feature_layer,
            vision_feature_select_strategy=config.vision_feature_select_strategy,
            return_dict=True,
        )
        features = out.pooler_output  # Llava: a list of [patches, H] per image; VideoLlava: [1, patches, H]
        if isinstance(features, (list, tuple)):
            return torch.cat(list(features), dim=0)
        return features.flatten(0, 1)  # [patches, H]

    @torch.inference_mode()
    def submit(self, pixel_values: torch.Tensor) -> EncodedMedia:
        """Queue the encoding of pixels (video `[1, F, 3, S, S]`, image `[1, 3, S, S]`); returns at once on CUDA."""
        rank = _RANK[self.modality]
        if pixel_values.dim() != rank or pixel_values.shape[0] != 1:
            want = "[1, F, 3, S, S]" if self.modality == "video" else "[1, 3, S, S]"
            raise ValueError(f"{self.modality} pixel_values must be {want}, got {tuple(pixel_values.shape)}")
        if self._stream is None:
            return EncodedMedia(self._encode(pixel_values), None)
        main = torch.cuda.current_stream(self.device)
        self._stream.wait_stream(main)  # the pixels may have been produced on the main stream
        with torch.cuda.stream(self._stream):
            features = self._encode(pixel_values)
            ready = torch.cuda.Event()
            ready.record(self._stream)
        features.record_stream(main)  # allocated on the side stream, consumed on the main one
        return EncodedMedia(features, ready)
