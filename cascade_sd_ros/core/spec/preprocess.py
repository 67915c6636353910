"""Pixel preprocessing through `VideoLlavaImageProcessor` (the Video-LLaVA image pipeline, no torchvision).

Video frames go through the same per-image pipeline and are stacked, which is what Video-LLaVA's own
video processor does frame by frame.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import BatchFeature, VideoLlavaImageProcessor

__all__ = ["make_image_processor", "preprocess_image", "preprocess_video"]


def make_image_processor(size: int) -> VideoLlavaImageProcessor:
    """A processor resizing (shortest edge) and centre-cropping to `size` x `size`, CLIP-normalised."""
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    return VideoLlavaImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def _pixels(out: BatchFeature) -> torch.Tensor:
    pixels = out["pixel_values_images"]
    if not isinstance(pixels, torch.Tensor):
        raise TypeError(f"the image processor gave {type(pixels).__name__} pixels, not a tensor")
    return pixels


def _check_rgb(images: np.ndarray, what: str, rank: int) -> None:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        raise ValueError(f"{what} must be a uint8 numpy array")
    if images.ndim != rank or images.shape[-1] != 3 or min(images.shape) == 0:
        raise ValueError(f"{what} must have shape {'[F, ' if rank == 4 else '['}H, W, 3], got {images.shape}")


def preprocess_image(processor: VideoLlavaImageProcessor, image: np.ndarray) -> torch.Tensor:
    """uint8 `[H, W, 3]` RGB -> float `[1, 3, S, S]`."""
    _check_rgb(image, "image", 3)
    return _pixels(processor(images=[image], return_tensors="pt"))  # [1, 3, S, S]


def preprocess_video(processor: VideoLlavaImageProcessor, frames: np.ndarray) -> torch.Tensor:
    """uint8 `[F, H, W, 3]` RGB frames -> float `[1, F, 3, S, S]`."""
    _check_rgb(frames, "frames", 4)
    return _pixels(processor(images=list(frames), return_tensors="pt")).unsqueeze(0)  # [1, F, 3, S, S]
