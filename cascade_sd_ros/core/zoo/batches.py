"""Turn dataset rows into model inputs for one stage: prompt + caption ids, labels, pixels.

Each stage sees only its modality: the target the 8-frame clip, the refiner the one frame at T (the
clip's last frame), the drafter the event image of [T - window, T]. Pixels are CLIP-normalised with
the saved processor's own mean/std (identical to `VideoLlavaImageProcessor` at the native size, as a
test checks) but vectorised over the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, VideoLlavaImageProcessor

from cascade_sd_ros.core.spec.prompt import build_prompt_ids
from cascade_sd_ros.core.zoo.configs import Stage
from cascade_sd_ros.core.zoo.data import ZooData
from cascade_sd_ros.core.zoo.tokenizer import DEFAULT_QUESTION

__all__ = ["IGNORE", "Batch", "StageBatcher", "normalise"]

IGNORE = -100  # label of positions that carry no loss (prompt, padding)


def normalise(images: np.ndarray | torch.Tensor, processor: VideoLlavaImageProcessor) -> torch.Tensor:
    """uint8 `[..., H, W, 3]` -> float32 `[..., 3, H, W]`, rescaled and CLIP-normalised (on the
    tensor's device)."""
    x = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(images))
    x = x.float() * float(processor.rescale_factor)
    mean = torch.tensor(processor.image_mean, dtype=torch.float32, device=x.device).view(3, 1, 1)
    std = torch.tensor(processor.image_std, dtype=torch.float32, device=x.device).view(3, 1, 1)
    return (x.movedim(-1, -3) - mean) / std


@dataclass
class Batch:
    """Teacher-forced inputs: `input_ids`/`labels` `[B, P + L]`, pixels under the model's kwarg name."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    pixels: dict[str, torch.Tensor]
    prompt_len: int

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(
            self.input_ids.to(device),
            self.labels.to(device),
            {k: v.to(device) for k, v in self.pixels.items()},
            self.prompt_len,
        )


class StageBatcher:
    """Builds batches of one stage from a `ZooData`; the prompt is the runtime `build_prompt_ids` one."""

    def __init__(
        self,
        stage: Stage,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        processor: VideoLlavaImageProcessor,
        data: ZooData,
        question: str = DEFAULT_QUESTION,
        device: torch.device | str = "cpu",
    ) -> None:
        """``device``: where the uint8 pixels are kept and batches are normalised (the whole stage's
        pixels move there once; on CPU they are shared with ``data``, not copied)."""
        self.stage = stage
        self.data = data
        self.processor = processor
        if stage == "drafter" and data.events is None:
            raise ValueError("the drafter trains on event images, but this dataset has none")
        source = data.video if stage == "target" else data.video[:, -1] if stage == "refiner" else data.events
        self._pixels = torch.from_numpy(np.ascontiguousarray(source)).to(device)  # uint8 [N, (F,) H, W, 3]
        self.modality = "video" if stage == "target" else "image"
        frames = data.video.shape[1]
        self.prompt_ids = build_prompt_ids(tokenizer, question, self.modality, model.config, num_frames=frames)
        self.pad_id = int(tokenizer.pad_token_id)
        eos = int(tokenizer.eos_token_id)
        # Caption ids + EOS, right-padded: [N, Lmax]; right padding never changes earlier positions
        # under causal attention, so no attention mask is needed.
        encoded = [tokenizer.encode(c, add_special_tokens=False) + [eos] for c in data.captions]
        width = max(len(e) for e in encoded)
        self.caption_ids = torch.full((len(encoded), width), self.pad_id, dtype=torch.long)
        for i, e in enumerate(encoded):
            self.caption_ids[i, : len(e)] = torch.tensor(e)

    def pixels(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        """The stage's pixel kwargs for dataset rows `rows`: the clip (target), the frame at T
        (refiner) or the event image (drafter)."""
        index = torch.as_tensor(np.asarray(rows), dtype=torch.long, device=self._pixels.device)
        values = normalise(self._pixels[index], self.processor)  # [B, (F,) 3, H, W]
        return {("pixel_values_videos" if self.stage == "target" else "pixel_values"): values}

    def prompt_batch(self, rows: np.ndarray) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Prompt ids `[B, P]` and pixels, for generation."""
        ids = torch.tensor(self.prompt_ids, dtype=torch.long).expand(len(rows), -1).contiguous()
        return ids, self.pixels(rows)

    def batch(self, rows: np.ndarray) -> Batch:
        caps = self.caption_ids[torch.from_numpy(np.asarray(rows))]  # [B, Lmax]
        caps = caps[:, : int((caps != self.pad_id).sum(1).max())]  # trim shared padding
        prompt = torch.tensor(self.prompt_ids, dtype=torch.long).expand(len(rows), -1)
        input_ids = torch.cat([prompt, caps], dim=1)  # [B, P + L]
        labels = input_ids.clone()
        labels[:, : prompt.shape[1]] = IGNORE
        labels[:, prompt.shape[1] :][caps == self.pad_id] = IGNORE
        return Batch(input_ids, labels, self.pixels(rows), prompt.shape[1])
