"""Train whole stages end to end: dataset -> model -> training -> held-out check -> saved folder."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from transformers import LlavaForConditionalGeneration, PreTrainedModel, VideoLlavaForConditionalGeneration

from cascade_sd_ros.core.zoo.batches import StageBatcher
from cascade_sd_ros.core.zoo.configs import (
    ARCHS,
    DATA,
    SCHEDULES,
    STAGES,
    DataGeometry,
    Stage,
    TrainSchedule,
    build_image_processor,
    build_model,
)
from cascade_sd_ros.core.zoo.data import EVAL_STREAM, SCENE_OBJECTS, TRAIN_STREAM, ZooData, load_or_build
from cascade_sd_ros.core.zoo.grow import deepen, grow_from
from cascade_sd_ros.core.zoo.load import check_stage_folder, default_zoo_path
from cascade_sd_ros.core.zoo.metrics import score_captions
from cascade_sd_ros.core.zoo.save import save_stage
from cascade_sd_ros.core.zoo.tokenizer import DEFAULT_QUESTION, build_tokenizer, decode_text
from cascade_sd_ros.core.zoo.training import TrainResult, greedy_captions, train_stage

_ORDER: tuple[Stage, ...] = ("refiner", "drafter", "target")  # the target grows from the refiner

__all__ = ["TrainSettings", "scaled_schedule", "deepen_schedule", "load_datasets", "train_zoo", "plot_losses"]


@dataclass(frozen=True)
class TrainSettings:
    """``samples`` RGB clips train target and refiner; the first ``event_samples`` of the same scenes
    also get event images and train the drafter (events are the costly part to simulate)."""

    seed: int = 0
    samples: int = 30000
    event_samples: int = 8000
    eval_samples: int = 200
    steps_scale: float = 1.0
    batch_scale: int = 1
    lr_scale: float = 1.0
    max_minutes: dict[str, float] | None = None  # per-stage wall-time budget
    device: str = "cpu"
    workers: int = 1
    data_dir: Path | None = Path("build/zoo-data")
    progress: bool = True
    geometry: DataGeometry = DATA
    grow_target: bool = True  # start the target from the trained refiner (grow.py)
    resume: bool = False  # continue from the stage's weights already in the output zoo
    max_objects: int = SCENE_OBJECTS  # scenes of 1 to this many objects (training and held-out)


def scaled_schedule(schedule: TrainSchedule, steps_scale: float, batch_scale: int) -> TrainSchedule:
    steps = max(1, int(round(schedule.steps * steps_scale)))
    warmup = int(round(schedule.warmup_steps * max(1.0, steps_scale)))
    deepen_steps = max(1, int(round(schedule.deepen_steps * steps_scale))) if schedule.deepen_steps else 0
    return dataclasses.replace(
        schedule,
        steps=steps,
        batch_size=schedule.batch_size * batch_scale,
        warmup_steps=max(1, min(warmup, steps // 10)),
        deepen_steps=deepen_steps,
    )


def _load(settings: TrainSettings, count: int, stream: int, with_events: bool, desc: str) -> ZooData:
    bar = _bar(count, desc, settings.progress)
    data = load_or_build(
        settings.data_dir,
        count,
        settings.seed,
        stream,
        settings.geometry,
        with_events=with_events,
        progress=bar.update_to if bar else None,
        workers=settings.workers,
        max_objects=settings.max_objects,
    )
    if bar:
        bar.close()
    return data


def load_datasets(settings: TrainSettings, stages: Iterable[Stage] = STAGES) -> dict[str, ZooData]:
    """Datasets the stages need: "rgb" (clips), "events" (clips + event images), "held_out" (both,
    from a disjoint scene stream)."""
    stages = tuple(stages)
    out: dict[str, ZooData] = {}
    if "target" in stages or "refiner" in stages:
        out["rgb"] = _load(settings, settings.samples, TRAIN_STREAM, False, "render clips")
    if "drafter" in stages:
        out["events"] = _load(settings, settings.event_samples, TRAIN_STREAM, True, "simulate events")
    out["held_out"] = _load(settings, settings.eval_samples, EVAL_STREAM, True, "held-out scenes")
    return out


class _Bar:
    """tqdm with an absolute update (dataset progress reports counts done)."""

    def __init__(self, total: int, desc: str) -> None:
        from tqdm import tqdm

        self._bar = tqdm(total=total, desc=desc, dynamic_ncols=True)

    def update_to(self, done: int) -> None:
        self._bar.update(done - self._bar.n)

    def set_postfix(self, **kw: Any) -> None:
        self._bar.set_postfix(**kw, refresh=False)

    def close(self) -> None:
        self._bar.close()


def _bar(total: int, desc: str, enabled: bool) -> _Bar | None:
    return _Bar(total, desc) if enabled else None


def train_zoo(
    stages: Iterable[Stage], settings: TrainSettings, out: Path | None = None, plot: Path | None = None
) -> dict[str, Any]:
    """Train ``stages`` and save each to ``out/<stage>``; returns a JSON-able summary."""
    stages = tuple(stages)
    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise ValueError(f"unknown stage(s) {bad}; expected some of {STAGES}")
    root = Path(out) if out is not None else default_zoo_path()
    tokenizer = build_tokenizer()
    datasets = load_datasets(settings, stages)
    held_out = datasets["held_out"]
    summary: dict[str, Any] = {"seed": settings.seed, "device": settings.device, "stages": {}}
    curves: dict[str, list[float]] = {}
    trained: dict[str, PreTrainedModel] = {}
    for stage in sorted(stages, key=_ORDER.index):
        train = datasets["events" if stage == "drafter" else "rgb"]
        torch.manual_seed(settings.seed * 1000 + STAGES.index(stage))
        schedule = scaled_schedule(SCHEDULES[stage], settings.steps_scale, settings.batch_scale)
        schedule = dataclasses.replace(schedule, lr=schedule.lr * settings.lr_scale)
        depth = ARCHS[stage].text_layers
        # a resumed stage continues at its saved depth (deepened by _resume when shallower)
        shallow = (
            schedule.shallow_layers
            if schedule.shallow_layers
            and schedule.deepen_steps
            and schedule.shallow_layers < depth
            and not settings.resume
            else None
        )
        arch = dataclasses.replace(ARCHS[stage], text_layers=shallow) if shallow else None
        model = build_model(stage, tokenizer, settings.geometry, arch=arch)
        grown_from = None
        if settings.resume:
            grown_from = _resume(root / stage, stage, model)
        elif stage == "target" and settings.grow_target:
            source = trained.get("refiner") or _load_refiner(root / "refiner")
            if source is None:
                raise ValueError(
                    f"growing the target needs a trained refiner (train it first, or it must be in "
                    f"{root / 'refiner'}); or pass --no-grow"
                )
            grow_from(source, model)
            grown_from = "refiner"
        processor = build_image_processor(stage, settings.geometry)
        budget = None if settings.max_minutes is None else settings.max_minutes.get(stage)
        budget_s = None if budget is None else budget * 60.0
        started = time.monotonic()
        phases = [
            _fit(
                stage,
                model,
                schedule,
                settings,
                tokenizer,
                processor,
                train,
                max_seconds=None if budget_s is None else budget_s / (2 if shallow else 1),
            )
        ]
        if shallow:
            deep = build_model(stage, tokenizer, settings.geometry)  # the new layers' init, from the seeded RNG
            deepen(model.cpu(), deep)
            model = deep
            left = None if budget_s is None else max(1.0, budget_s - (time.monotonic() - started))
            # other batches than the first phase's: a distinct seed for the batch order
            phases.append(
                _fit(
                    stage,
                    model,
                    deepen_schedule(schedule),
                    settings,
                    tokenizer,
                    processor,
                    train,
                    max_seconds=left,
                    seed=settings.seed + 7919,
                )
            )
            grown_from = f"{grown_from or 'scratch'}, trained at {shallow} layers, deepened {shallow} -> {depth}"
        result = TrainResult(
            losses=[x for r in phases for x in r.losses],
            steps=sum(r.steps for r in phases),
            seconds=sum(r.seconds for r in phases),
            stopped_early=any(r.stopped_early for r in phases),
        )
        curves[stage] = result.losses
        rows = np.arange(len(held_out))
        eval_batcher = StageBatcher(stage, model, tokenizer, processor, held_out, device=settings.device)
        texts = [
            decode_text(tokenizer, ids)
            for ids in greedy_captions(model, eval_batcher, rows, batch_size=64 * settings.batch_scale)
        ]
        score = score_captions(texts, held_out.captions)
        info = {
            "steps": result.steps,
            "planned_steps": schedule.steps + (schedule.deepen_steps if shallow else 0),
            "stopped_early": result.stopped_early,
            "train_s": round(result.seconds, 1),
            "samples": len(train),
            "final_loss": round(float(np.mean(result.losses[-50:])), 4),
            "params": int(sum(p.numel() for p in model.parameters())),
            "held_out": score.as_dict(),
            "grown_from": grown_from,
        }
        if shallow:
            info["phases"] = [
                {"layers": n, "steps": r.steps, "train_s": round(r.seconds, 1)}
                for n, r in zip((shallow, depth), phases)
            ]
        save_stage(
            root / stage,
            stage,
            model.cpu(),
            tokenizer,
            processor,
            settings.geometry,
            DEFAULT_QUESTION,
            extra={
                "train": {
                    **info,
                    "seed": settings.seed,
                    "max_objects": settings.max_objects,
                    "device": settings.device,
                    "batch_size": schedule.batch_size,
                    "lr": schedule.lr,
                }
            },
        )
        summary["stages"][stage] = info
        trained[stage] = model
    if plot is not None and curves:
        plot_losses(curves, plot)
        summary["plot"] = str(plot)
    return summary


def deepen_schedule(schedule: TrainSchedule) -> TrainSchedule:
    """The fine-tuning phase after a progressive stage is deepened (see TrainSchedule)."""
    steps = schedule.deepen_steps
    return dataclasses.replace(
        schedule,
        steps=steps,
        lr=schedule.lr * schedule.deepen_lr_scale,
        warmup_steps=max(1, min(schedule.warmup_steps, steps // 10)),
        shallow_layers=None,
        deepen_steps=0,
    )


def _fit(
    stage: Stage,
    model: PreTrainedModel,
    schedule: TrainSchedule,
    settings: TrainSettings,
    tokenizer: Any,
    processor: Any,
    train: ZooData,
    max_seconds: float | None,
    seed: int | None = None,
) -> TrainResult:
    """Train ``model`` (moved to the settings' device) by ``schedule``, with a progress bar."""
    model.to(settings.device)  # type: ignore[arg-type]  # transformers' @wraps(Module.to) reads as unbound: self expected first
    batcher = StageBatcher(stage, model, tokenizer, processor, train, device=settings.device)
    layers = _layers(model)
    bar = _bar(schedule.steps, f"train {stage} ({layers} layers)", settings.progress)

    def on_step(step: int, loss: float) -> None:
        if bar is not None:
            bar.update_to(step)
            if step % 10 == 0:
                bar.set_postfix(loss=f"{loss:.3f}")

    result = train_stage(
        model, batcher, schedule, settings.seed if seed is None else seed, max_seconds=max_seconds, on_step=on_step
    )
    if bar is not None:
        bar.close()
    return result


def _load_stage(folder: Path, stage: Stage) -> PreTrainedModel:
    cls = VideoLlavaForConditionalGeneration if stage == "target" else LlavaForConditionalGeneration
    return cls.from_pretrained(folder, local_files_only=True, dtype=torch.float32)


def _layers(model: PreTrainedModel) -> int:
    return int(model.config.get_text_config().num_hidden_layers)


def _resume(folder: Path, stage: Stage, model: PreTrainedModel) -> str:
    """Load the saved stage into ``model``; a shallower saved stage is deepened into it (grow.py).
    Returns what the model started from (recorded in zoo.json)."""
    check_stage_folder(folder, stage)
    saved = _load_stage(folder, stage)
    if _layers(saved) > _layers(model):
        raise ValueError(
            f"{folder} has {_layers(saved)} language-model layers, more than the {stage}'s "
            f"{_layers(model)}: resume it with the architecture it was trained with"
        )
    if _layers(saved) < _layers(model):
        deepen(saved, model)
        return f"resumed {folder}, deepened {_layers(saved)} -> {_layers(model)} layers"
    model.load_state_dict(saved.state_dict())
    return f"resumed {folder}"


def _load_refiner(folder: Path) -> PreTrainedModel | None:
    if not (folder / "config.json").is_file():
        return None
    check_stage_folder(folder, "refiner")
    return _load_stage(folder, "refiner")


def plot_losses(curves: dict[str, list[float]], path: Path, title: str = "zoo training loss") -> None:
    """Loss per step (and a 50-step running mean) of each stage, log scale, to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, losses in curves.items():
        y = np.asarray(losses, dtype=np.float64)
        line = ax.plot(y, alpha=0.25, linewidth=0.8)[0]
        k = min(50, len(y))
        smooth = np.convolve(y, np.ones(k) / k, mode="valid")
        ax.plot(np.arange(k - 1, len(y)), smooth, color=line.get_color(), label=name)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("caption cross-entropy")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
