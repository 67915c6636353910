"""Distil a zoo's refiner and drafter toward its target, end to end: folders in, folders out."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (
    LlavaForConditionalGeneration,
    PreTrainedModel,
    VideoLlavaForConditionalGeneration,
    VideoLlavaImageProcessor,
)

from cascade_sd_ros.core.zoo.batches import StageBatcher
from cascade_sd_ros.core.zoo.configs import DataGeometry, Stage, TrainSchedule
from cascade_sd_ros.core.zoo.data import DISTILL_STREAM, EVAL_STREAM, ZooData, load_or_build
from cascade_sd_ros.core.zoo.distill import Distiller, DistillWeights, argmax_agreement, teacher_captions
from cascade_sd_ros.core.zoo.load import check_stage_folder, read_zoo_meta
from cascade_sd_ros.core.zoo.save import save_stage
from cascade_sd_ros.core.zoo.tokenizer import DEFAULT_QUESTION, load_tokenizer

__all__ = ["DistillSettings", "DISTILL_SCHEDULE", "distill_zoo"]

DISTILL_SCHEDULE = TrainSchedule(steps=600, batch_size=32, lr=5e-4, warmup_steps=30)


@dataclass(frozen=True)
class DistillSettings:
    seed: int = 0
    samples: int = 8000  # fresh synthetic scenes (clips + events) when no data file is given
    eval_samples: int = 200
    data: Path | None = None  # a ZooData .npz of the user's own clips + event images
    data_dir: Path | None = Path("build/zoo-data")
    steps_scale: float = 1.0
    batch_scale: int = 1
    max_minutes: float | None = None  # per student
    device: str = "cpu"
    workers: int = 1
    weights: DistillWeights = DistillWeights()
    progress: bool = True


def _load_model(folder: Path, stage: Stage) -> PreTrainedModel:
    check_stage_folder(folder, stage)
    cls = VideoLlavaForConditionalGeneration if stage == "target" else LlavaForConditionalGeneration
    return cls.from_pretrained(folder, local_files_only=True, dtype=torch.float32)


def _check_size(data: ZooData, model: PreTrainedModel, folder: Path) -> None:
    want = int(model.config.vision_config.image_size)
    have = int(data.video.shape[-2])
    if have != want:
        raise ValueError(
            f"data images are {have} px but the model in {folder} takes {want} px; "
            "store the clips and event images at the model's resolution"
        )


def distill_zoo(
    folders: dict[str, Path],
    students: tuple[Stage, ...],
    out: Path,
    settings: DistillSettings,
    plot: Path | None = None,
) -> dict[str, Any]:
    """Distil ``students`` toward ``folders["target"]``; write target + students as a zoo at ``out``."""
    from cascade_sd_ros.core.zoo.pipeline import _bar, plot_losses, scaled_schedule

    for stage in ("target", *students):
        check_stage_folder(folders[stage], stage)  # fail before any work, naming the folder and file
    target_dir = folders["target"]
    teacher = _load_model(target_dir, "target")
    teacher.to(settings.device)  # type: ignore[arg-type]  # transformers' @wraps(Module.to) reads as unbound: self expected first
    tokenizer = load_tokenizer(target_dir)
    processor = VideoLlavaImageProcessor.from_pretrained(target_dir, local_files_only=True)
    processors = {s: VideoLlavaImageProcessor.from_pretrained(folders[s], local_files_only=True) for s in students}
    meta = read_zoo_meta(target_dir)
    geometry = DataGeometry(**meta["geometry"]) if "geometry" in meta else DataGeometry()
    question = str(meta.get("question", DEFAULT_QUESTION))
    if settings.data is not None:
        if not settings.data.is_file():
            raise FileNotFoundError(f"distillation data {settings.data} does not exist")
        train = ZooData.load(settings.data)
        held = train.subset(np.arange(min(settings.eval_samples, len(train))))
    else:
        # Fresh scenes (not the training ones): the teacher labels data the students have never seen.
        train = load_or_build(
            settings.data_dir,
            settings.samples,
            settings.seed,
            DISTILL_STREAM,
            geometry,
            with_events=True,
            workers=settings.workers,
        )
        held = load_or_build(
            settings.data_dir,
            settings.eval_samples,
            settings.seed,
            EVAL_STREAM,
            geometry,
            with_events=True,
            workers=settings.workers,
        )
    _check_size(train, teacher, target_dir)
    eos = int(tokenizer.eos_token_id)
    pad = int(tokenizer.pad_token_id)
    tb = StageBatcher("target", teacher, tokenizer, processor, train, question, settings.device)
    tb_held = StageBatcher("target", teacher, tokenizer, processor, held, question, settings.device)
    gen_batch = 64 * settings.batch_scale
    caps = teacher_captions(teacher, tb, eos, batch_size=gen_batch)
    caps_held = teacher_captions(teacher, tb_held, eos, batch_size=gen_batch)
    summary: dict[str, Any] = {
        "seed": settings.seed,
        "samples": len(train),
        "device": settings.device,
        "weights": vars(settings.weights),
        "stages": {},
    }
    curves: dict[str, list[float]] = {}
    out.mkdir(parents=True, exist_ok=True)
    for stage in students:
        student = _load_model(folders[stage], stage)
        student.to(settings.device)  # type: ignore[arg-type]  # transformers' @wraps(Module.to) reads as unbound: self expected first
        _check_size(train, student, folders[stage])
        sb = StageBatcher(stage, student, tokenizer, processors[stage], train, question, settings.device)
        sb_held = StageBatcher(stage, student, tokenizer, processors[stage], held, question, settings.device)
        held_distiller = Distiller(teacher, tb_held, student, sb_held, caps_held, pad, settings.weights)
        rows = np.arange(len(held))
        before = argmax_agreement(held_distiller, student, rows)
        distiller = Distiller(teacher, tb, student, sb, caps, pad, settings.weights)
        schedule = scaled_schedule(DISTILL_SCHEDULE, settings.steps_scale, settings.batch_scale)
        torch.manual_seed(settings.seed)
        bar = _bar(schedule.steps, f"distil {stage}", settings.progress)

        def on_step(step: int, loss: float, bar: Any = bar) -> None:
            if bar is not None:
                bar.update_to(step)

        result = distiller.train(
            student,
            schedule,
            settings.seed,
            None if settings.max_minutes is None else settings.max_minutes * 60.0,
            on_step,
        )
        if bar is not None:
            bar.close()
        after = argmax_agreement(held_distiller, student, rows)
        curves[stage] = result.losses
        info = {
            "steps": result.steps,
            "train_s": round(result.seconds, 1),
            "features": distiller.use_features,
            "agreement_before": round(before, 4),
            "agreement_after": round(after, 4),
            "final_loss": round(float(np.mean(result.losses[-50:])), 4),
        }
        old_meta = read_zoo_meta(folders[stage])
        save_stage(
            out / stage,
            stage,
            student.cpu(),
            tokenizer,
            processors[stage],
            geometry,
            question,
            extra={
                "train": old_meta.get("train", {}),
                "distill": {**info, "seed": settings.seed, "samples": len(train)},
            },
        )
        summary["stages"][stage] = info
    if target_dir.resolve() != (out / "target").resolve():
        if (out / "target").exists():
            shutil.rmtree(out / "target")
        shutil.copytree(target_dir, out / "target")
    if plot is not None and curves:
        plot_losses(curves, plot, title="online distillation loss")
        summary["plot"] = str(plot)
    return summary
