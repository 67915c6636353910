"""Training and evaluation samples for the zoo, made by the same functions the nodes use at runtime.

One sample is a scene (`core.synth.scene.sample_scene`) and a moment T:

* target: `num_frames` RGB frames evenly spanning [T - clip_duration, T] (`SceneRenderer.frame`),
* refiner: the frame at T (the clip's last frame, so it is not stored twice),
* drafter: the events of [T - event_window, T] from `core.synth.esim.EventSimulator`, drawn by
  `core.events.EventFrameRenderer` (EventGPT style) — the drafter node's own representation.

Captions list objects in the palette order of `scene.COLOURS` (`canonical_spec`): the order of
`sample_scene` is the order the colours were drawn, which nothing in the pixels reveals, so a model
could only guess it. Objects never overlap, so reordering them does not change a single pixel.

Arrays are cached as .npz (uint8 pixels, caption strings), built once per (seed, count, geometry).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from cascade_sd_ros.core.synth import scene as scene_mod
from cascade_sd_ros.core.synth.scene import SCENE_OBJECTS
from cascade_sd_ros.core.zoo.configs import DATA, DataGeometry

__all__ = [
    "ZooData",
    "build_sample",
    "canonical_spec",
    "sample_moment",
    "clip_times",
    "render_clip",
    "render_event_image",
    "build_data",
    "load_or_build",
    "split_rng",
    "cache_path",
    "TRAIN_STREAM",
    "EVAL_STREAM",
    "DISTILL_STREAM",
    "SCENE_OBJECTS",
]

# Seed domains: training, held-out evaluation and distillation scenes never share a stream.
TRAIN_STREAM, EVAL_STREAM, DISTILL_STREAM = 0x7A1, 0xE7A, 0xD15


def split_rng(seed: int, stream: int) -> np.random.Generator:
    """Independent generator for (seed, stream); the same pair always gives the same scenes."""
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return np.random.default_rng([int(seed), int(stream)])


def canonical_spec(spec: scene_mod.SceneSpec) -> scene_mod.SceneSpec:
    """The same scene with objects in palette order, so its caption order is visible in the pixels."""
    order = list(scene_mod.COLOURS)
    objects = tuple(sorted(spec.objects, key=lambda o: order.index(o.colour)))
    return dataclasses.replace(spec, objects=objects)


def sample_moment(
    rng: np.random.Generator, geometry: DataGeometry = DATA, max_objects: int = SCENE_OBJECTS
) -> tuple[scene_mod.SceneSpec, float]:
    """A canonical scene of 1 to ``max_objects`` objects and the time T [s] its clip ends at."""
    spec = canonical_spec(scene_mod.sample_scene(rng, duration_s=geometry.scene_duration_s, max_objects=max_objects))
    t_end = float(rng.uniform(geometry.clip_duration_s, geometry.scene_duration_s))
    return spec, t_end


def clip_times(t_end: float, geometry: DataGeometry = DATA) -> np.ndarray:
    """[num_frames] frame times evenly spanning [T - clip_duration, T]."""
    return np.linspace(t_end - geometry.clip_duration_s, t_end, geometry.num_frames)


def render_clip(renderer: scene_mod.SceneRenderer, t_end: float, geometry: DataGeometry = DATA) -> np.ndarray:
    """uint8 [num_frames, H, W, 3] clip ending at ``t_end``."""
    return np.stack([renderer.frame(float(t)) for t in clip_times(t_end, geometry)])


def render_event_image(
    spec: scene_mod.SceneSpec, renderer: scene_mod.SceneRenderer, t_end: float, seed: int, geometry: DataGeometry = DATA
) -> np.ndarray:
    """uint8 [H, W, 3] event image of [T - window, T]: simulated events drawn as the drafter node does."""
    from cascade_sd_ros.core.events import EventFrameRenderer
    from cascade_sd_ros.core.synth.esim import EsimConfig, EventSimulator

    side = geometry.image_size
    t0_us, t1_us = int(round((t_end - geometry.event_window_s) * 1e6)), int(round(t_end * 1e6))
    sim = EventSimulator(side, side, EsimConfig(substep_hz=geometry.esim_rate_hz), seed=seed)
    sim.reset(renderer.intensity(t0_us * 1e-6), t0_us)
    events = sim.advance(renderer, t1_us)  # CD_DTYPE, sorted by t
    image = EventFrameRenderer(side, side, geometry.event_chunks).render(events)
    return np.asarray(image, dtype=np.uint8).reshape(side, side, 3)


@dataclass
class ZooData:
    """Cached samples. video uint8 [N, F, H, W, 3]; events uint8 [N, H, W, 3] (or None when the
    event images were not built); captions [N] in the scene grammar."""

    video: np.ndarray
    events: np.ndarray | None
    captions: list[str]
    geometry: DataGeometry

    def __len__(self) -> int:
        return len(self.captions)

    def subset(self, rows: np.ndarray) -> "ZooData":
        return ZooData(
            self.video[rows],
            None if self.events is None else self.events[rows],
            [self.captions[int(i)] for i in rows],
            self.geometry,
        )

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        extra = {} if self.events is None else {"events": self.events}
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")  # per process: concurrent builders never collide
        # numpy types **kwds as if they could hold its allow_pickle flag
        np.savez(
            tmp,
            video=self.video,
            captions=np.asarray(self.captions),
            geometry=np.asarray(json.dumps(self.geometry.to_dict())),
            **extra,  # type: ignore[arg-type]
        )
        tmp.replace(path)

    @staticmethod
    def load(path: Path) -> "ZooData":
        with np.load(path) as z:
            geometry = DataGeometry(**json.loads(str(z["geometry"])))
            events = z["events"] if "events" in z.files else None
            return ZooData(z["video"], events, [str(c) for c in z["captions"]], geometry)


def build_sample(
    seed: int,
    stream: int,
    index: int,
    geometry: DataGeometry = DATA,
    with_events: bool = True,
    max_objects: int = SCENE_OBJECTS,
) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Sample ``index`` of (seed, stream): (clip, event image or None, caption). Each sample has its own
    generator, so any subset can be built in any order or process and still be the same."""
    rng = np.random.default_rng([int(seed), int(stream), int(index)])
    spec, t_end = sample_moment(rng, geometry, max_objects)
    side = geometry.image_size
    renderer = scene_mod.SceneRenderer(spec, side, side)
    clip = render_clip(renderer, t_end, geometry)
    image = render_event_image(spec, renderer, t_end, int(rng.integers(2**31 - 1)), geometry) if with_events else None
    return clip, image, scene_mod.caption(spec)


def _build_chunk(
    args: tuple[int, int, int, int, DataGeometry, bool, int],
) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    seed, stream, lo, hi, geometry, with_events, max_objects = args
    samples = [build_sample(seed, stream, i, geometry, with_events, max_objects) for i in range(lo, hi)]
    clips = np.stack([s[0] for s in samples])
    images = (
        np.stack([s[1] for s in samples if s[1] is not None]) if with_events else None
    )  # all or none by with_events
    return clips, images, [s[2] for s in samples]


def build_data(
    count: int,
    seed: int,
    stream: int,
    geometry: DataGeometry = DATA,
    with_events: bool = True,
    progress: Callable[[int], None] | None = None,
    workers: int = 1,
    max_objects: int = SCENE_OBJECTS,
) -> ZooData:
    """Render samples 0..count-1 of (seed, stream), over ``workers`` processes (same result for any)."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    split_rng(seed, stream)  # validates the seed
    step = 64
    jobs = [
        (seed, stream, lo, min(count, lo + step), geometry, with_events, max_objects) for lo in range(0, count, step)
    ]
    chunks: Iterator[tuple[np.ndarray, np.ndarray | None, list[str]]]
    if workers == 1:
        chunks = map(_build_chunk, jobs)
        pool = None
    else:
        import multiprocessing

        pool = multiprocessing.get_context("spawn").Pool(workers)
        chunks = pool.imap(_build_chunk, jobs)
    clips: list[np.ndarray] = []
    images: list[np.ndarray] = []
    captions: list[str] = []
    try:
        for clip, image, caps in chunks:
            clips.append(clip)
            if image is not None:  # all or none by with_events
                images.append(image)
            captions.extend(caps)
            if progress is not None:
                progress(len(captions))
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    events = np.concatenate(images) if with_events else None
    return ZooData(np.concatenate(clips), events, captions, geometry)


def cache_path(
    cache_dir: Path,
    count: int,
    seed: int,
    stream: int,
    geometry: DataGeometry,
    with_events: bool,
    max_objects: int = SCENE_OBJECTS,
) -> Path:
    parts: list[object] = [count, seed, stream, geometry.to_dict(), with_events]
    if max_objects != SCENE_OBJECTS:  # so caches of the default mix keep their names
        parts.append({"max_objects": max_objects})
    key = json.dumps(parts, sort_keys=True)
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    return cache_dir / f"zoo-{'ev' if with_events else 'rgb'}-{count}-s{seed}-{digest}.npz"


def load_or_build(
    cache_dir: Path | None,
    count: int,
    seed: int,
    stream: int,
    geometry: DataGeometry = DATA,
    with_events: bool = True,
    progress: Callable[[int], None] | None = None,
    workers: int = 1,
    max_objects: int = SCENE_OBJECTS,
) -> ZooData:
    """Load the cached samples for these parameters, or build (and cache) them."""
    if cache_dir is not None:
        path = cache_path(cache_dir, count, seed, stream, geometry, with_events, max_objects)
        if path.is_file():
            return ZooData.load(path)
    data = build_data(count, seed, stream, geometry, with_events, progress, workers, max_objects)
    if cache_dir is not None:
        data.save(path)
    return data
