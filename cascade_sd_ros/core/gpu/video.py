"""Video feature encoding for the verifier, optionally on a side CUDA stream.

Encoding the next round's 8 frames (vision tower + projector) does not depend on the current round's
caption, so on a GPU it is queued on its own stream and overlaps the previous round's last verify
steps; the prefill then only waits on an event. On a CPU it simply runs inline.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import VideoLlavaForConditionalGeneration

__all__ = ["EncodedVideo", "VideoEncoder"]


@dataclass(frozen=True, eq=False)
class EncodedVideo:
    """Projected video features `[F * (patches + 1), H]`, ready once `ready` has fired (None: ready now)."""

    features: torch.Tensor
    ready: torch.cuda.Event | None

    def wait(self) -> torch.Tensor:
        """Make the current stream wait for the features (no host sync) and return them."""
        if self.ready is not None:
            torch.cuda.current_stream(self.features.device).wait_event(self.ready)
        return self.features


class VideoEncoder:
    """Runs `get_video_features` of a VideoLlava model, on a side stream when on CUDA."""

    def __init__(self, model: VideoLlavaForConditionalGeneration, *, side_stream: bool = True) -> None:
        if not isinstance(model, VideoLlavaForConditionalGeneration):
            raise TypeError(f"VideoEncoder needs a VideoLlavaForConditionalGeneration, got {type(model).__name__}")
        self.model = model
        self.device = model.device
        self._stream = torch.cuda.Stream(self.device) if (side_stream and self.device.type == "cuda") else None

    def _encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pixels = pixel_values.to(self.device, self.model.dtype, non_blocking=True)  # [1, F, 3, S, S]
        out = self.model.model.get_video_features(
            pixel_values_videos=pixels,
            vision_feature_layer=self.model.config.vision_feature_layer,
            return_dict=True,
        )
        return out.pooler_output.flatten(0, 1)  # [F * (patches + 1), H]

    @torch.inference_mode()
    def submit(self, pixel_values: torch.Tensor) -> EncodedVideo:
        """Queue the encoding of video pixels `[1, F, 3, S, S]`; returns at once on CUDA."""
        if pixel_values.dim() != 5 or pixel_values.shape[0] != 1:
            raise ValueError(f"video pixel_values must be [1, F, 3, S, S], got {tuple(pixel_values.shape)}")
        if self._stream is None:
            return EncodedVideo(self._encode(pixel_values), None)
        main = torch.cuda.current_stream(self.device)
        self._stream.wait_stream(main)  # the pixels may have been produced on the main stream
        with torch.cuda.stream(self._stream):
            features = self._encode(pixel_values)
            ready = torch.cuda.Event()
            ready.record(self._stream)
        features.record_stream(main)  # allocated on the side stream, consumed on the main one
        return EncodedVideo(features, ready)
