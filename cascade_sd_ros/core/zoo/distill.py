"""SpecVLM-style online distillation of a draft stage toward the target's own outputs.

SpecVLM (Sec. 3.5) trains the draft on the fly: at each step the target (teacher) produces token
logits z_p and top-layer features f_p, the draft its own z_q and f_q, and the loss is

    L_online = lambda_logit * CE(softmax(z_p), z_q) + lambda_feat * SmoothL1(f_q, f_p).

Here the sequence both models read is the target's own greedy caption of the scene (computed once
per sample, then every step re-runs the teacher forward on it), each model sees its own modality
(clip for the target, one frame or the event image for the draft), and the feature term applies
only where the two language models have the same width ("where shapes allow"). Raising agreement
with the target's argmax is exactly what raises acceptance in lossless-greedy speculative decoding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from cascade_sd_ros.core.zoo.batches import StageBatcher
from cascade_sd_ros.core.zoo.configs import TrainSchedule
from cascade_sd_ros.core.zoo.training import TrainResult, greedy_captions, train_stage

__all__ = ["DistillWeights", "teacher_captions", "Distiller", "argmax_agreement"]


@dataclass(frozen=True)
class DistillWeights:
    """Loss coefficients. SpecVLM uses lambda_logit 0.1, lambda_feat 1.0 for EAGLE-style drafts that
    decode with the target's own LM head; these drafts have their own heads, so the token term leads
    and the feature term only regularises (with 0.1 / 1.0 the zoo drafter's agreement fell)."""

    logit: float = 1.0
    feat: float = 0.1


def teacher_captions(
    teacher: PreTrainedModel, batcher: StageBatcher, eos_id: int, max_new_tokens: int = 24, batch_size: int = 64
) -> list[list[int]]:
    """The target's greedy caption ids (EOS appended) for every sample of ``batcher``'s dataset."""
    rows = np.arange(len(batcher.data))
    return [ids + [eos_id] for ids in greedy_captions(teacher, batcher, rows, max_new_tokens, batch_size)]


def _pad(seqs: list[list[int]], pad_id: int) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out


class Distiller:
    """Builds the online distillation loss of one student against the teacher.

    Args:
        teacher / teacher_batcher: the target and its (clip) inputs; frozen.
        student_batcher: the student's inputs for the SAME dataset rows (its own modality).
        captions: teacher caption ids per row (from `teacher_captions`).
    """

    def __init__(
        self,
        teacher: PreTrainedModel,
        teacher_batcher: StageBatcher,
        student: PreTrainedModel,
        student_batcher: StageBatcher,
        captions: list[list[int]],
        pad_id: int,
        weights: DistillWeights = DistillWeights(),
    ) -> None:
        if len(captions) != len(teacher_batcher.data) or len(student_batcher.data) != len(teacher_batcher.data):
            raise ValueError("teacher captions, teacher data and student data must have one entry per sample")
        self.teacher = teacher.eval().requires_grad_(False)
        self.tb, self.sb = teacher_batcher, student_batcher
        self.captions = captions
        self.pad_id = pad_id
        self.weights = weights
        t_width = teacher.config.get_text_config().hidden_size
        s_width = student.config.get_text_config().hidden_size
        self.use_features = t_width == s_width and weights.feat > 0

    def _forward(
        self, model: PreTrainedModel, batcher: StageBatcher, rows: np.ndarray, caps: torch.Tensor, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits `[B, L, V]` and top-layer features `[B, L, D]` at the positions predicting caption
        tokens 0..L-1 (the last prompt position and the caption positions before the last)."""
        prompt_ids, pixels = batcher.prompt_batch(rows)
        ids = torch.cat([prompt_ids, caps], dim=1).to(device)  # [B, P + L]
        out = model(input_ids=ids, **{k: v.to(device) for k, v in pixels.items()}, output_hidden_states=True)
        p = prompt_ids.shape[1]
        span = slice(p - 1, p - 1 + caps.shape[1])
        return out.logits[:, span], out.hidden_states[-1][:, span]

    def loss(self, student: PreTrainedModel, rows: np.ndarray) -> torch.Tensor:
        device = next(student.parameters()).device
        caps = _pad([self.captions[int(r)] for r in rows], self.pad_id)  # [B, L]
        mask = (caps != self.pad_id).to(device)  # [B, L]
        with torch.no_grad():
            z_p, f_p = self._forward(self.teacher, self.tb, rows, caps, device)
        z_q, f_q = self._forward(student, self.sb, rows, caps, device)
        # Soft cross-entropy CE(softmax(z_p), z_q) per caption position, averaged over real tokens.
        ce = -(F.softmax(z_p.float(), -1) * F.log_softmax(z_q.float(), -1)).sum(-1)  # [B, L]
        loss = self.weights.logit * (ce * mask).sum() / mask.sum()
        if self.use_features:
            feat = F.smooth_l1_loss(f_q.float(), f_p.float(), reduction="none").mean(-1)  # [B, L]
            loss = loss + self.weights.feat * (feat * mask).sum() / mask.sum()
        return loss

    def train(
        self,
        student: PreTrainedModel,
        schedule: TrainSchedule,
        seed: int,
        max_seconds: float | None = None,
        on_step: Callable[[int, float], None] | None = None,
    ) -> TrainResult:
        return train_stage(student, self.sb, schedule, seed, max_seconds, on_step, loss_fn=self.loss)


@torch.no_grad()
def argmax_agreement(distiller: Distiller, student: PreTrainedModel, rows: np.ndarray, batch_size: int = 64) -> float:
    """Fraction of the teacher's caption positions where the student's argmax equals the teacher's:
    the per-token acceptance probability of greedy speculative decoding along the target's path."""
    student.eval()
    device = next(student.parameters()).device
    hits = total = 0
    for i in range(0, len(rows), batch_size):
        part = rows[i : i + batch_size]
        caps = _pad([distiller.captions[int(r)] for r in part], distiller.pad_id)
        mask = (caps != distiller.pad_id).to(device)
        z_p, _ = distiller._forward(distiller.teacher, distiller.tb, part, caps, device)
        z_q, _ = distiller._forward(student, distiller.sb, part, caps, device)
        hits += int(((z_p.argmax(-1) == z_q.argmax(-1)) & mask).sum())
        total += int(mask.sum())
    return hits / max(total, 1)
