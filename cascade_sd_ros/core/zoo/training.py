"""Teacher-forced training of one zoo stage, and batched greedy captioning for evaluation.

Cross-entropy on caption tokens (and the closing EOS) only; AdamW with linear warm-up and cosine
decay over a fixed step count, batches drawn from a seeded generator, so a run is reproducible from
its seed on a given machine. A wall-time cap stops early (and says so) rather than overrun a session.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from transformers import GenerationMixin, PreTrainedModel

from cascade_sd_ros.core.zoo.batches import StageBatcher
from cascade_sd_ros.core.zoo.configs import TrainSchedule

__all__ = ["TrainResult", "lr_at", "train_stage", "greedy_captions"]

_PROBE_START, _PROBE_STEPS = 10, 30  # steps timed (after warm-up) before a budget fixes the step count


@dataclass
class TrainResult:
    """Per-step losses, steps actually run and whether the wall-time budget shortened the schedule."""

    losses: list[float] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    stopped_early: bool = False


def lr_at(step: int, schedule: TrainSchedule) -> float:
    """Learning rate at ``step``: linear warm-up, then cosine decay to 10 % of the peak."""
    if step < schedule.warmup_steps:
        return schedule.lr * (step + 1) / schedule.warmup_steps
    span = max(1, schedule.steps - schedule.warmup_steps)
    frac = min(1.0, (step - schedule.warmup_steps) / span)
    return schedule.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * frac)))


def train_stage(
    model: PreTrainedModel,
    batcher: StageBatcher,
    schedule: TrainSchedule,
    seed: int,
    max_seconds: float | None = None,
    on_step: Callable[[int, float], None] | None = None,
    loss_fn: Callable[[PreTrainedModel, np.ndarray], torch.Tensor] | None = None,
) -> TrainResult:
    """Train ``model`` in place for ``schedule.steps`` steps.

    With ``max_seconds``, the pace of the first steps sets how many steps fit, and the learning-rate
    schedule is shrunk to that count (so a budgeted run still ends with a decayed rate).

    ``loss_fn(model, rows)`` replaces the default teacher-forced caption cross-entropy (distillation
    passes its own). ``on_step(step, loss)`` is called after every step (progress bars, logs).
    """
    if schedule.steps < 1 or schedule.batch_size < 1:
        raise ValueError(f"schedule needs steps >= 1 and batch_size >= 1, got {schedule}")
    rng = np.random.default_rng([int(seed), 0x5A3])
    device = next(model.parameters()).device
    model.train()
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": schedule.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=schedule.lr,
        betas=(0.9, 0.98),
    )
    result = TrainResult()
    start = time.monotonic()
    n = len(batcher.data)
    step = 0
    probe_t0 = start
    while step < schedule.steps:
        rows = rng.choice(n, size=min(schedule.batch_size, n), replace=False)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, schedule)
        if loss_fn is None:
            batch = batcher.batch(rows).to(device)
            loss = model(input_ids=batch.input_ids, labels=batch.labels, **batch.pixels).loss
        else:
            loss = loss_fn(model, rows)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        value = float(loss.detach())
        result.losses.append(value)
        result.steps = step + 1
        if on_step is not None:
            on_step(step + 1, value)
        step += 1
        if step == _PROBE_START:
            probe_t0 = time.monotonic()
        if max_seconds is not None and step == _PROBE_START + _PROBE_STEPS:
            # Fit the schedule to the time budget once the pace is known (timed after warm-up); the
            # steps actually run are recorded, so --steps-scale can replay the same run.
            now = time.monotonic()
            rate = _PROBE_STEPS / max(now - probe_t0, 1e-6)  # steps per second
            fitted = step + int(rate * max(0.0, max_seconds - (now - start)))
            if fitted < schedule.steps:
                schedule = dataclasses.replace(schedule, steps=max(step, fitted))
                result.stopped_early = True
        if max_seconds is not None and time.monotonic() - start > 1.15 * max_seconds:
            result.stopped_early = True
            break
    result.seconds = time.monotonic() - start
    model.eval()
    return result


@torch.inference_mode()
def greedy_captions(
    model: PreTrainedModel, batcher: StageBatcher, rows: np.ndarray, max_new_tokens: int = 24, batch_size: int = 64
) -> list[list[int]]:
    """Greedy caption token ids (EOS and after removed) for dataset ``rows``, batched with a KV cache."""
    if not isinstance(model, GenerationMixin):
        raise TypeError(f"{type(model).__name__} cannot generate")
    model.eval()
    device = next(model.parameters()).device
    eos = model.generation_config.eos_token_id
    out: list[list[int]] = []
    for i in range(0, len(rows), batch_size):
        ids, pixels = batcher.prompt_batch(rows[i : i + batch_size])
        inputs: dict[str, Any] = {
            "input_ids": ids.to(device),
            "attention_mask": torch.ones_like(ids, device=device),
            **{k: v.to(device) for k, v in pixels.items()},
        }
        # transformers types generate's self by a Protocol (GenerativePreTrainedModel) its own models fail
        gen = model.generate(  # type: ignore[misc]
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=eos,
        )
        for seq in gen[:, ids.shape[1] :].tolist():
            out.append(seq[: seq.index(eos)] if eos in seq else seq)
    return out
