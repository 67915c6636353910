"""Train the alignment MLP and the draft head by distillation from the zoo's own models (no labels).

1. Distillation set: per scene, the target's greedy caption and, from one teacher-forced forward, its
   final hidden states at the context's last two positions and at every caption token; the frozen
   event encoder's tokens of the event image; the target's own visual tokens of the clip (all
   frames: the head's video memory; the frame at T's: the alignment MLP's reference).
2. Alignment MLP (the note's Gap 4): event tokens -> the target's frame tokens, encoders frozen;
   loss MSE + (1 - cosine). Metric: cosine per visual token and the share over 0.9, held out.
3. Head: EAGLE's loss (smooth-L1 on the predicted state + cross-entropy of the target's LM head on it
   against the target's own token), unrolled `UNROLL` steps deep on its own predictions so a chained
   draft is in distribution. Each sample plays one of the three modes (fused / target states alone /
   events alone), so one set of weights serves the ablation and the fallbacks; the target's video
   tokens are memory wherever its states are (the target has prefilled the clip), except in a share
   `VIDEO_DROP` of samples, so a head whose video rows are missing still drafts well.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from transformers import VideoLlavaForConditionalGeneration

from cascade_sd_ros.core.head.features import cosine_per_token, event_tokens, target_video_tokens
from cascade_sd_ros.core.head.model import AlignmentMLP, FusedDraftHead, init_from_target
from cascade_sd_ros.core.zoo.batches import StageBatcher
from cascade_sd_ros.core.zoo.data import ZooData
from cascade_sd_ros.core.zoo.load import Zoo

__all__ = [
    "HeadData",
    "HeadSchedule",
    "build_head_data",
    "train_alignment",
    "train_head",
    "alignment_metrics",
    "head_metrics",
    "MODE_SHARES",
    "UNROLL",
]

UNROLL = 3  # training-time chain depth: positions read the head's own predictions up to this deep
MODE_SHARES = (0.5, 0.25, 0.25)  # fused, target states alone, events alone (per sample)
VIDEO_DROP = 0.15  # of the samples with target states, the share trained without the video rows
COS_THRESHOLD = 0.9


@dataclass
class HeadData:
    """Distillation set. L head positions per scene (padded), D the target's width, R event rows.

    events `[N, R, E]`, frames `[N, R, D]` (the target's tokens of the frame at T), video `[N, V, D]`
    (the target's tokens of every frame of the clip, V = F x R), states
    `[N, L+1, D]` (f_{-1}, f_0 .. f_{L-1}), inputs `[N, L]` (last prompt token, c_0 .. c_{L-2}),
    labels `[N, L]` (c_0 .. c_{L-1}, the target's greedy caption and its EOS), mask `[N, L]`.
    """

    events: torch.Tensor
    frames: torch.Tensor
    video: torch.Tensor
    states: torch.Tensor
    inputs: torch.Tensor
    labels: torch.Tensor
    mask: torch.Tensor

    def __len__(self) -> int:
        return int(self.events.shape[0])

    def take(self, rows: torch.Tensor) -> "HeadData":
        return HeadData(
            *(t[rows] for t in (self.events, self.frames, self.video, self.states, self.inputs, self.labels, self.mask))
        )


@dataclass(frozen=True)
class HeadSchedule:
    align_steps: int = 1500
    head_steps: int = 3000
    batch_size: int = 64
    lr: float = 2e-3
    warmup: int = 50


@torch.no_grad()
def _greedy_fixed_point(
    target: VideoLlavaForConditionalGeneration, prompt: torch.Tensor, video: torch.Tensor, guess: torch.Tensor, eos: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The target's greedy captions and their teacher-forced states, by fixed-point iteration.

    guess `[B, W]`: any starting captions (the scenes' own captions are close, which makes it fast;
    they never leak into the result). Each pass runs one teacher-forced forward and keeps every row's
    longest prefix that equals the target's argmax there, plus the target's own next token; a row is
    done when its whole caption up to the first EOS (or W tokens) equals the argmax: exactly greedy
    decoding, in a few batched forwards instead of W sequential steps.
    Returns (captions `[B, W]`, valid mask `[B, W]`, states `[B, W + 1, D]` = f_{-1}, f_0 .. f_{W-1}).
    """
    b, width = guess.shape
    p_len = prompt.shape[0]
    caps = guess.clone()
    embeds = target.model.get_input_embeddings()
    video_features = target.model.get_video_features(pixel_values_videos=video).pooler_output
    lm_head = target.get_output_embeddings()
    for _ in range(width + 1):
        ids = torch.cat([prompt.expand(b, -1), caps[:, :-1]], dim=1)  # [B, P + W - 1]
        x = embeds(ids)
        mask = ids.eq(int(target.config.video_token_index)).unsqueeze(-1)
        x = x.masked_scatter(mask, video_features.reshape(-1, x.shape[-1]).to(x.dtype))
        hidden = target.model.language_model(inputs_embeds=x).last_hidden_state  # [B, P+W-1, D]
        pred = lm_head(hidden[:, p_len - 1 :]).argmax(-1)  # [B, W]: the target's token at each position
        same = pred == caps
        is_eos = pred == eos
        first_eos = torch.where(is_eos.any(1), is_eos.float().argmax(1), torch.full((b,), width))  # [B]
        pos = torch.arange(width).expand(b, -1)
        wrong = (~same) & (pos <= first_eos.unsqueeze(1))
        if not wrong.any():
            valid = pos <= first_eos.unsqueeze(1)
            return caps, valid, hidden[:, p_len - 2 :].float()
        first_wrong = torch.where(wrong.any(1), wrong.float().argmax(1), torch.full((b,), width))
        # keep the agreed prefix, take the target's token there and its guesses after (Jacobi)
        caps = torch.where(pos >= first_wrong.unsqueeze(1), pred, caps)
    raise RuntimeError("greedy fixed point did not converge")  # each pass fixes >= 1 position: unreachable


@torch.no_grad()
def build_head_data(
    zoo: Zoo, data: ZooData, batch: int = 32, max_new_tokens: int = 24, progress: Callable[[int], None] | None = None
) -> HeadData:
    """Run the frozen zoo over `data` (with event images) once: captions, states, visual tokens."""
    if data.events is None:
        raise ValueError("the head trains on event images, but this dataset has none")
    target, drafter = zoo.target.model, zoo.drafter.model
    if not isinstance(target, VideoLlavaForConditionalGeneration):
        raise ValueError(f"the head distils from a Video-LLaVA target, got {type(target).__name__}")
    tb = StageBatcher("target", target, zoo.tokenizer, zoo.processors["target"], data, zoo.prompt)
    db = StageBatcher("drafter", drafter, zoo.tokenizer, zoo.processors["drafter"], data, zoo.prompt)
    if zoo.target.eos_token_id is None:
        raise ValueError("the target has no EOS id: its captions would have no end to learn")
    eos, pad = int(zoo.target.eos_token_id), int(zoo.tokenizer.pad_token_id)
    prompt = torch.tensor(tb.prompt_ids, dtype=torch.long)
    width = max_new_tokens + 1
    guesses = torch.full((len(data), width), pad, dtype=torch.long)
    guesses[:, : min(width, tb.caption_ids.shape[1])] = tb.caption_ids[:, :width]
    parts: list[tuple[torch.Tensor, ...]] = []
    for lo in range(0, len(data), batch):
        rows = np.arange(lo, min(len(data), lo + batch))
        b = len(rows)
        video = tb.pixels(rows)["pixel_values_videos"]
        labels, mask, states = _greedy_fixed_point(target, prompt, video, guesses[rows], eos)
        labels = torch.where(mask, labels, torch.full_like(labels, pad))
        inputs = torch.cat([prompt[-1:].expand(b, 1), labels[:, :-1]], dim=1)  # [B, W]
        ev = event_tokens(drafter, db.pixels(rows)["pixel_values"])
        clip = target_video_tokens(target, video)  # [B, F * R, D], frame by frame
        last = clip.view(b, video.shape[1], -1, clip.shape[-1])[:, -1]  # [B, R, D]: the frame at T's
        parts.append((ev, last, clip, states, inputs, labels, mask))
        if progress is not None:
            progress(lo + b)
    cat = [torch.cat([p[i] for p in parts]) for i in range(7)]
    # trim shared padding: the longest caption sets L
    length = int(cat[6].sum(1).max())
    return HeadData(
        cat[0], cat[1], cat[2], cat[3][:, : length + 1], cat[4][:, :length], cat[5][:, :length], cat[6][:, :length]
    )


def _lr(step: int, steps: int, sched: HeadSchedule) -> float:
    if step < sched.warmup:
        return sched.lr * (step + 1) / sched.warmup
    frac = min(1.0, (step - sched.warmup) / max(1, steps - sched.warmup))
    return sched.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))


def _fit(
    params: list[torch.nn.Parameter],
    loss_of: Callable[[torch.Tensor], torch.Tensor],
    n: int,
    steps: int,
    sched: HeadSchedule,
    seed: int,
    deadline: float | None,
    on_step: Callable[[int, float], None] | None,
) -> tuple[list[float], int]:
    """AdamW over `params` for `steps` batches of rows drawn from n (stops at `deadline`)."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(params, lr=sched.lr, weight_decay=0.01, betas=(0.9, 0.98))
    losses: list[float] = []
    step = 0
    while step < steps:
        if deadline is not None and step > 0 and time.monotonic() > deadline:
            break  # (one step at least: a run that overran its budget before training still trains)
        rows = torch.randperm(n, generator=gen)[: min(sched.batch_size, n)]
        for g in opt.param_groups:
            g["lr"] = _lr(step, steps, sched)
        loss = loss_of(rows)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        step += 1
        if on_step is not None:
            on_step(step, losses[-1])
    return losses, step


def train_alignment(
    align: AlignmentMLP,
    data: HeadData,
    sched: HeadSchedule,
    seed: int,
    deadline: float | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> tuple[list[float], int]:
    """Fit event tokens -> the target's frame tokens (encoders frozen: their outputs are data)."""
    align.train()

    def loss_of(rows: torch.Tensor) -> torch.Tensor:
        pred, ref = align(data.events[rows]), data.frames[rows]
        return F.mse_loss(pred, ref) + (1 - cosine_per_token(pred, ref)).mean()

    out = _fit(list(align.parameters()), loss_of, len(data), sched.align_steps, sched, seed, deadline, on_step)
    align.eval()
    return out


def _modes(b: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per sample: (use target states, use events, use video) as bool `[B]` masks drawn by
    MODE_SHARES and VIDEO_DROP."""
    u = torch.rand(b, generator=gen)
    fused, target_only = MODE_SHARES[0], MODE_SHARES[0] + MODE_SHARES[1]
    use_states = u < target_only  # fused or target-only
    use_events = (u < fused) | (u >= target_only)  # fused or events-only
    use_video = use_states & (torch.rand(b, generator=gen) >= VIDEO_DROP)
    return use_states, use_events, use_video


def head_losses(
    head: FusedDraftHead,
    lm_head: torch.nn.Module,
    embed: torch.nn.Module,
    memory: torch.Tensor,
    data: HeadData,
    use_states: torch.Tensor,
    use_events: torch.Tensor,
    use_video: torch.Tensor,
    unroll: int = UNROLL,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """EAGLE loss over `unroll` chained passes; also each pass's top-1 hits `[B, L]` (bool).
    use_video counts only for a head with video rows."""
    b, n = data.inputs.shape
    keep = use_states.float().view(b, 1, 1)
    true_in = data.states[:, :n] * keep  # [B, L, D]: row p-1's state for position p (zero: no states)
    target = data.states[:, 1:]  # [B, L, D]: what position p predicts, f_p
    tok = embed(data.inputs)  # [B, L, D]
    mask = data.mask.float()
    mem_mask = use_events.view(b, 1).expand(b, memory.shape[1])
    video = data.video if head.cfg.video_rows else None
    feats, total, hits = true_in, torch.zeros(()), []
    for depth in range(unroll):
        pred = head(feats, tok, memory, mem_mask, video, use_video)  # [B, L, D]
        logits = lm_head(pred)  # [B, L, V]
        w = mask.clone()
        w[:, :depth] = 0  # pass d: position p reads a state predicted d steps back (p >= d)
        reg = (F.smooth_l1_loss(pred, target, reduction="none").mean(-1) * w).sum() / w.sum().clamp_min(1)
        ce = (F.cross_entropy(logits.transpose(1, 2), data.labels, reduction="none") * w).sum() / w.sum().clamp_min(1)
        total = total + reg + 0.5 * ce
        hits.append((logits.argmax(-1) == data.labels) & data.mask)
        # next pass: positions >= 1 read the prediction of the row before them (none without states)
        shifted = torch.cat([true_in[:, :1], pred[:, :-1]], dim=1) * keep
        feats = torch.where((torch.arange(n) <= depth).view(1, n, 1), true_in, shifted)
    return total / unroll, hits


def train_head(
    head: FusedDraftHead,
    align: AlignmentMLP,
    zoo: Zoo,
    data: HeadData,
    sched: HeadSchedule,
    seed: int,
    deadline: float | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> tuple[list[float], int]:
    """Fit the head on the target's own states (the alignment MLP frozen: its tokens are memory)."""
    lm_head = zoo.target.model.get_output_embeddings()
    embed = zoo.target.model.get_input_embeddings()
    for p in [*lm_head.parameters(), *embed.parameters(), *align.parameters()]:
        p.requires_grad_(False)
    init_from_target(head, zoo.target.model.model.language_model.norm.weight)
    with torch.no_grad():
        memory_all = align(data.events)  # [N, R, D]
    gen = torch.Generator().manual_seed(seed + 1)
    head.train()

    def loss_of(rows: torch.Tensor) -> torch.Tensor:
        use_states, use_events, use_video = _modes(len(rows), gen)
        loss, _ = head_losses(
            head, lm_head, embed, memory_all[rows], data.take(rows), use_states, use_events, use_video
        )
        return loss

    out = _fit(list(head.parameters()), loss_of, len(data), sched.head_steps, sched, seed, deadline, on_step)
    head.eval()
    return out


@torch.no_grad()
def alignment_metrics(align: AlignmentMLP, data: HeadData) -> dict[str, float]:
    """Cosine similarity per visual token (aligned event token vs the target's), mean and share > 0.9."""
    cos = cosine_per_token(align(data.events), data.frames)  # [N, R]
    return {
        "cos_mean": round(float(cos.mean()), 4),
        "cos_share_over_0.9": round(float((cos > COS_THRESHOLD).float().mean()), 4),
        "tokens": int(cos.numel()),
    }


@torch.no_grad()
def head_metrics(head: FusedDraftHead, align: AlignmentMLP, zoo: Zoo, data: HeadData) -> dict[str, dict[str, float]]:
    """Teacher-forced top-1 agreement with the target, per mode, at chain depth 1 and `UNROLL` (a head
    with video rows: also fused without them, what it drafts when no video tokens were caught)."""
    lm_head = zoo.target.model.get_output_embeddings()
    embed = zoo.target.model.get_input_embeddings()
    memory = align(data.events)
    b = len(data)
    out: dict[str, dict[str, float]] = {}
    modes = {"fused": (True, True, True), "target": (True, False, True), "events": (False, True, False)}
    if head.cfg.video_rows:
        modes["fused_no_video"] = (True, True, False)
    for mode, (s, e, v) in modes.items():
        use_s, use_e, use_v = torch.full((b,), s), torch.full((b,), e), torch.full((b,), v)
        _, hits = head_losses(head, lm_head, embed, memory, data, use_s, use_e, use_v)
        n = data.mask.sum().clamp_min(1)
        out[mode] = {f"top1_depth{d + 1}": round(float(h.sum() / n), 4) for d, h in enumerate(hits)}
    return out
