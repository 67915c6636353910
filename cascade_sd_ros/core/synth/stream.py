"""In-process synthetic sensor streams: scenes -> RGB frames + EVT 3.0 event packets + ground truth.

:func:`iter_scenes` yields one :class:`SceneData` per scene, back to back in world time, exactly
what ``cascade-sd make-bag`` writes (the bag writer only serialises these), so demos and tests can
drive nodes without a bag:

    for scene in iter_scenes(StreamConfig(n_scenes=3, height=64, width=64)):
        scene.truth.caption, scene.frames, scene.packets

Time: scene ``i`` covers world time ``[i * D, (i + 1) * D)`` after ``start_ns``. The event
sensor's own time (µs, in the EVT 3.0 payload) counts from ``start_ns``; packet stamps add the
event clock offset (see :mod:`.clocks`). The simulator re-references at each scene cut (a cut
emits no events), so each scene's events are its own, and keeps its per-pixel thresholds and
refractory state across cuts (one sensor).

Determinism: everything derives from ``seed`` through independent generators (scenes, sensor,
clocks), so the same config gives the same bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from cascade_sd_ros.core.events import CD_DTYPE, TRIGGER_DTYPE

from .clocks import ClockModel
from .esim import Box, EsimConfig, EventSimulator
from .packets import EventPacketData, PacketConfig, Packetizer
from .scene import MAX_OBJECTS, MOTIONS, SCENE_OBJECTS, SceneRenderer, SceneSpec, caption, sample_scene

DEFAULT_START_NS = 1_767_225_600 * 10**9  # 2026-01-01T00:00:00Z: fixed, so bags are reproducible


@dataclass(frozen=True)
class StrobeConfig:
    """The RGB camera's exposure strobe wired into the event camera's trigger input: per exposure
    (dropped frames too: the camera exposed them) a rising edge at capture and a falling one
    ``exposure_us`` later, on the event clock. ``missing``: frame indices (stream-wide, counting
    dropped frames) whose edges never arrived; ``extra_per_s``: spurious edge pairs per second on the
    same channel at random times (a noisy line)."""

    channel: int = 0
    exposure_us: int = 5000
    missing: tuple[int, ...] = ()
    extra_per_s: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.channel <= 15:
            raise ValueError(f"StrobeConfig.channel must be 0..15 (EVT 3.0), got {self.channel}")
        if not 1 <= self.exposure_us <= 1_000_000:
            raise ValueError(f"StrobeConfig.exposure_us must be 1..1e6, got {self.exposure_us}")
        if not (math.isfinite(self.extra_per_s) and 0.0 <= self.extra_per_s <= 1000.0):
            raise ValueError(f"StrobeConfig.extra_per_s must be in [0, 1000], got {self.extra_per_s}")

    def edges(
        self, frame_index: np.ndarray, capture_us: np.ndarray, span_us: tuple[int, int], rng: np.random.Generator
    ) -> np.ndarray:
        """Trigger events (TRIGGER_DTYPE, sorted) for exposures at ``capture_us`` (sensor µs) plus
        spurious ones in ``span_us``."""
        keep = ~np.isin(frame_index, np.asarray(self.missing, np.int64))
        rise = capture_us[keep]
        n_extra = int(rng.poisson(self.extra_per_s * (span_us[1] - span_us[0]) * 1e-6))
        extra = np.sort(rng.integers(span_us[0], span_us[1], n_extra)) if n_extra else np.zeros(0, np.int64)
        t = np.concatenate([rise, rise + self.exposure_us, extra, extra + self.exposure_us // 2])
        p = np.concatenate([np.ones(rise.size), np.zeros(rise.size), np.ones(extra.size), np.zeros(extra.size)])
        order = np.argsort(t, kind="stable")
        out = np.zeros(t.size, TRIGGER_DTYPE)
        out["id"], out["p"], out["t"] = self.channel, p[order], t[order]
        return out


@dataclass(frozen=True)
class StreamConfig:
    n_scenes: int = 5
    scene_duration_s: float = 2.0
    seed: int = 0
    height: int = 260  # DAVIS346-like sensor; the RGB camera has the same size
    width: int = 346
    fps: float = 30.0  # RGB frame rate
    esim: EsimConfig = EsimConfig()
    clocks: ClockModel = ClockModel()
    packets: PacketConfig = PacketConfig()
    start_ns: int = DEFAULT_START_NS
    include_speed: bool = False  # captions say "fast" / "slowly"
    n_objects: int | None = None  # 1 to MAX_OBJECTS, or None (1 to max_objects, equally likely)
    max_objects: int = SCENE_OBJECTS  # busier scenes (3-4) make longer captions
    motions: tuple[str, ...] = MOTIONS  # motions scenes may use
    strobe: StrobeConfig | None = None  # the RGB exposure strobe in the event stream (None: no triggers)

    def __post_init__(self) -> None:
        if self.n_scenes < 1:
            raise ValueError(f"StreamConfig.n_scenes must be >= 1, got {self.n_scenes}")
        if not 1 <= self.max_objects <= MAX_OBJECTS:
            raise ValueError(f"StreamConfig.max_objects must be 1 to {MAX_OBJECTS}, got {self.max_objects}")
        if not (math.isfinite(self.scene_duration_s) and self.scene_duration_s > 0):
            raise ValueError(f"StreamConfig.scene_duration_s must be > 0, got {self.scene_duration_s}")
        if not (math.isfinite(self.fps) and 0 < self.fps <= 1000):
            raise ValueError(f"StreamConfig.fps must be in (0, 1000], got {self.fps}")
        if not (0 <= self.seed < 2**63):
            raise ValueError(f"StreamConfig.seed must be in [0, 2**63), got {self.seed}")
        if self.start_ns < 0:
            raise ValueError(f"StreamConfig.start_ns must be >= 0, got {self.start_ns}")
        if self.start_ns + self.clocks.event_offset_ns < 0:
            raise ValueError("start_ns + event_offset_ns must be >= 0 (stamps cannot be negative)")
        if not (8 <= self.height <= 2048 and 8 <= self.width <= 2048):
            raise ValueError(f"frame size must be 8..2048 px per side, got {self.height}x{self.width}")

    @property
    def scene_duration_ns(self) -> int:
        return int(round(self.scene_duration_s * 1e9))


@dataclass(frozen=True)
class RgbFrame:
    index: int  # frame number in the whole stream, counting dropped frames
    stamp_ns: int  # header stamp on the RGB clock (with jitter)
    true_ns: int  # capture time (world time = nominal RGB clock)
    image: np.ndarray = field(repr=False)  # uint8 [H, W, 3] rgb8


@dataclass(frozen=True)
class SceneTruth:
    """Ground truth of one scene (fields of ``cascade_sd_ros/msg/SceneGroundTruth``)."""

    scene_index: int
    start_ns: int  # RGB clock
    end_ns: int  # RGB clock
    caption: str
    event_offset_ns: int
    jitter_ms: float
    frames_dropped: int
    seed: int
    spec: SceneSpec | None  # None for video-derived streams


@dataclass(frozen=True)
class SceneData:
    truth: SceneTruth
    frames: list[RgbFrame]
    packets: list[EventPacketData]

    @property
    def events(self) -> np.ndarray:
        """All of the scene's events (CD_DTYPE, sensor µs)."""
        if not self.packets:
            return np.zeros(0, CD_DTYPE)
        return np.concatenate([p.events for p in self.packets])

    def timeline(self) -> list[tuple[int, str, SceneTruth | EventPacketData | RgbFrame]]:
        """Everything in publication order: (stamp [ns], kind, item), kind "truth" | "events" |
        "image"; the truth first at its start, packets before a frame of the same stamp."""
        items: list[tuple[int, int, str, SceneTruth | EventPacketData | RgbFrame]] = [
            (self.truth.start_ns, 0, "truth", self.truth)
        ]
        items += [(p.stamp_ns, 1, "events", p) for p in self.packets]
        items += [(f.stamp_ns, 2, "image", f) for f in self.frames]
        items.sort(key=lambda it: (it[0], it[1]))
        return [(t, kind, item) for t, _, kind, item in items]


class _SceneClock:
    """A scene renderer moved to world time: scene time 0 is world time ``offset_s``."""

    def __init__(self, renderer: SceneRenderer, offset_s: float) -> None:
        self._r, self._offset = renderer, offset_s
        self.height, self.width = renderer.height, renderer.width

    def intensity(self, t_s: float, box: Box | None = None) -> np.ndarray:
        return self._r.intensity(t_s - self._offset, box)

    def changed_boxes(self, t0_s: float, t1_s: float) -> list[Box]:
        return self._r.changed_boxes(t0_s - self._offset, t1_s - self._offset)


def iter_scenes(config: StreamConfig) -> Iterator[SceneData]:
    """Yield the stream scene by scene (see module docstring)."""
    scene_rng = np.random.default_rng([config.seed, 0x5CE])
    clock_rng = np.random.default_rng([config.seed, 0xC10C])
    strobe_rng = np.random.default_rng([config.seed, 0x5780])
    sim = EventSimulator(config.height, config.width, config.esim, seed=config.seed)
    packetizer = Packetizer(config.width, config.height, config.packets)
    d_ns = config.scene_duration_ns
    frame_period_ns = 1e9 / config.fps
    frames_per_scene = max(1, math.ceil(d_ns / frame_period_ns))
    for i in range(config.n_scenes):
        spec = sample_scene(
            scene_rng,
            config.scene_duration_s,
            n_objects=config.n_objects,
            motions=config.motions,
            max_objects=config.max_objects,
        )
        renderer = SceneRenderer(spec, config.height, config.width)
        t0_ns = i * d_ns  # world time since start
        t0_us, t1_us = t0_ns // 1000, (t0_ns + d_ns) // 1000
        sim.reset(renderer.intensity((t0_us * 1000 - t0_ns) * 1e-9), t0_us)
        events = sim.advance(_SceneClock(renderer, t0_ns * 1e-9), t1_us)
        local_ns = np.rint(np.arange(frames_per_scene) * frame_period_ns).astype(np.int64)
        local_ns = local_ns[local_ns < d_ns]
        world_ns = config.start_ns + t0_ns + local_ns
        first_index = i * frames_per_scene
        triggers = None
        if config.strobe is not None:
            capture_us = (t0_ns + local_ns) // 1000
            triggers = config.strobe.edges(
                first_index + np.arange(local_ns.size), capture_us, (t0_us, t1_us), strobe_rng
            )
        if config.clocks.event_drift_ppm:
            # the event sensor's time runs fast or slow against the world (and the RGB clock)
            events = events.copy()
            events["t"] += config.clocks.drift_ns(events["t"] * 1000) // 1000
            if triggers is not None:
                triggers["t"] += config.clocks.drift_ns(triggers["t"] * 1000) // 1000
        packets = packetizer.packets(events, config.start_ns + config.clocks.event_offset_ns, triggers)

        stamps, kept = config.clocks.rgb_stamps(world_ns, clock_rng)
        frames = [
            RgbFrame(first_index + k, int(stamps[k]), int(world_ns[k]), renderer.frame(local_ns[k] * 1e-9))
            for k in range(len(local_ns))
            if kept[k]
        ]
        truth = SceneTruth(
            scene_index=i,
            start_ns=config.start_ns + t0_ns,
            end_ns=config.start_ns + t0_ns + d_ns,
            caption=caption(spec, include_speed=config.include_speed),
            event_offset_ns=config.clocks.offset_at(t0_ns),  # at the scene's start (drift moves it)
            jitter_ms=float(config.clocks.jitter_ms),
            frames_dropped=int(len(local_ns) - kept.sum()),
            seed=int(config.seed),
            spec=spec,
        )
        yield SceneData(truth, frames, packets)
