"""`cascade-sd train --stage head`: the distillation run end to end, written as a zoo folder `head/`.

Renders (or loads cached) training and held-out scenes with event images, builds the distillation
sets from the frozen zoo, trains the alignment MLP then the head inside a wall-time budget, measures
them on held-out scenes and saves `head/` (float32 safetensors + head.json with the figures).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import LlavaForConditionalGeneration

from cascade_sd_ros.core.head.io import encoder_fingerprint, event_encoder_fingerprint, save_head, tensor_fingerprint
from cascade_sd_ros.core.head.model import AlignmentMLP, FusedDraftHead, HeadConfig, parameter_count
from cascade_sd_ros.core.head.train import (
    HeadSchedule,
    alignment_metrics,
    build_head_data,
    head_metrics,
    train_alignment,
    train_head,
)
from cascade_sd_ros.core.zoo.data import EVAL_STREAM, SCENE_OBJECTS, TRAIN_STREAM, load_or_build
from cascade_sd_ros.core.zoo.load import default_zoo_path, load_zoo, read_zoo_meta

__all__ = ["HeadRunSettings", "run_head_training", "trained_max_objects"]


@dataclass(frozen=True)
class HeadRunSettings:
    zoo: Path | None  # the zoo the head serves (None: the shipped one)
    out: Path  # the head folder to write
    seed: int = 0
    samples: int = 1500
    eval_samples: int = 200
    steps_scale: float = 1.0
    max_minutes: float = 15.0  # training time after the distillation sets are built
    data_dir: Path = Path("build/zoo-data")
    workers: int = 1
    progress: bool = True
    max_objects: int | None = None  # scenes of 1 to this many objects (None: the target's own training mix)
    video_memory: bool = True  # the head attends to the target's video tokens (False: aligned event tokens only)


def trained_max_objects(zoo_root: Path | None) -> int:
    """The most objects per scene the zoo's target was trained on (zoo.json; older zoos: 2)."""
    meta = read_zoo_meta((zoo_root or default_zoo_path()) / "target")
    return int(meta.get("train", {}).get("max_objects", SCENE_OBJECTS))


def run_head_training(s: HeadRunSettings) -> dict[str, Any]:
    """Train and save the head; returns the summary written into head.json."""
    start = time.monotonic()
    torch.manual_seed(s.seed)
    zoo = load_zoo(s.zoo)
    if not isinstance(zoo.drafter.model, LlavaForConditionalGeneration):
        raise ValueError(f"the event encoder must be a LLaVA drafter, got {type(zoo.drafter.model).__name__}")

    def say(text: str) -> None:
        if s.progress:
            print(f"[head {time.monotonic() - start:6.1f}s] {text}", flush=True)

    objects = s.max_objects or trained_max_objects(s.zoo)
    train_scenes, eval_scenes = (
        load_or_build(s.data_dir, n, s.seed, stream, zoo.geometry, True, workers=s.workers, max_objects=objects)
        for n, stream in ((s.samples, TRAIN_STREAM), (s.eval_samples, EVAL_STREAM))
    )
    say(f"scenes ready: {len(train_scenes)} train, {len(eval_scenes)} held out, 1-{objects} objects each")
    every = max(1, len(train_scenes) // 8)
    train = build_head_data(
        zoo, train_scenes, progress=lambda n: say(f"distilled {n} scenes") if n % every < 32 else None
    )
    held = build_head_data(zoo, eval_scenes)
    say(f"distillation sets built (caption positions {train.inputs.shape[1]})")
    # the budget is for training: scenes and distillation sets are cached or one-off
    deadline = time.monotonic() + 60.0 * s.max_minutes
    cfg = HeadConfig(
        hidden=int(train.states.shape[-1]),
        event_dim=int(train.events.shape[-1]),
        event_rows=int(train.events.shape[1]),
        video_rows=int(train.video.shape[1]) if s.video_memory else 0,
    )
    head, align = FusedDraftHead(cfg), AlignmentMLP(cfg)
    sched = HeadSchedule(align_steps=max(1, int(1500 * s.steps_scale)), head_steps=max(1, int(3000 * s.steps_scale)))
    # the MLP gets at most a quarter of what is left, the head the rest
    left = deadline - time.monotonic()
    a_losses, a_steps = train_alignment(align, train, sched, s.seed, deadline=time.monotonic() + 0.25 * left)
    say(f"alignment MLP: {a_steps} steps, loss {a_losses[-1]:.4f}")
    h_losses, h_steps = train_head(head, align, zoo, train, sched, s.seed, deadline=deadline)
    say(f"head: {h_steps} steps, loss {h_losses[-1]:.4f}")
    summary: dict[str, Any] = {
        "trained_on": {
            "zoo": str(s.zoo or "shipped"),
            "target": tensor_fingerprint([zoo.target.model]),
            "seed": s.seed,
            "max_objects": objects,
            "scenes": len(train),
            "held_out": len(held),
        },
        "encoder_fingerprint": encoder_fingerprint(zoo.drafter.model, align),
        # what a drafter node names its EventFeatures by (it runs the encoder, not the MLP)
        "event_encoder": event_encoder_fingerprint(zoo.drafter.model),
        "schedule": {**asdict(sched), "align_steps_run": a_steps, "head_steps_run": h_steps},
        "params": {"head": parameter_count(head), "align": parameter_count(align)},
        "final_loss": {"align": round(a_losses[-1], 4), "head": round(h_losses[-1], 4)},
        "held_out": {"alignment": alignment_metrics(align, held), "head": head_metrics(head, align, zoo, held)},
        "train_s": round(time.monotonic() - start, 1),
    }
    save_head(s.out, head, align, summary)
    say(f"saved {s.out}")
    return summary
