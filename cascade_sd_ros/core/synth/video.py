"""Video to events: any RGB frame sequence (a video file via PyAV, or an RGB topic of a bag read by
the caller) becomes an event stream through the same simulator and packetizer as the scenes, so
RGB-only recordings can run the cascade.

Between frames, the simulator's sub-steps see frames interpolated along the estimated motion
(:class:`~.interp.FlowInterpolatedSource`, default) or cross-faded
(:class:`~.esim.FrameSequenceSource`, faster, but a moving edge fades instead of sweeping). The stream comes out in chunks of ``chunk_s`` seconds as
:class:`~.stream.SceneData` with an empty caption (the truth of a real video is unknown; clock
offsets, jitter and drops are still applied and recorded).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from .clocks import ClockModel
from .esim import EsimConfig, EventSimulator, FrameSequenceSource, to_intensity
from .interp import FlowInterpolatedSource
from .packets import PacketConfig, Packetizer
from .stream import DEFAULT_START_NS, RgbFrame, SceneData, SceneTruth

MAX_SIDE = 2048  # EVT 3.0 addresses 11 bits per coordinate
INTERPOLATIONS = ("flow", "crossfade")


class VideoError(ValueError):
    """A video that cannot be read or turned into events (missing, undecodable, too large)."""


@dataclass(frozen=True)
class VideoStreamConfig:
    seed: int = 0
    chunk_s: float = 1.0  # length of each yielded SceneData
    height: int | None = None  # resize to this (both or neither)
    width: int | None = None
    esim: EsimConfig = EsimConfig()
    clocks: ClockModel = ClockModel()
    packets: PacketConfig = PacketConfig()
    start_ns: int = DEFAULT_START_NS
    interpolation: str = "flow"  # "flow" (motion-compensated, see .interp) or "crossfade" (faster)

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")
        if (self.height is None) != (self.width is None):
            raise ValueError("give both height and width, or neither")
        if (
            self.height is not None
            and self.width is not None
            and not (8 <= self.height <= MAX_SIDE and 8 <= self.width <= MAX_SIDE)
        ):
            raise ValueError(f"height and width must be 8..{MAX_SIDE}, got {self.height}x{self.width}")
        if not (math.isfinite(self.chunk_s) and self.chunk_s > 0):
            raise ValueError(f"chunk_s must be > 0, got {self.chunk_s}")


def read_video(path: str | Path) -> Iterator[tuple[int, np.ndarray]]:
    """(time since the first frame [ns], uint8 RGB [H, W, 3]) for each frame of a video file."""
    import av  # PyAV: imported here so the rest of the package does not need it

    p = Path(path)
    if not p.is_file():
        raise VideoError(f"no such video file: {p}")
    try:
        container = av.open(str(p))
    except av.error.FFmpegError as err:
        raise VideoError(f"{p}: cannot open as a video: {err}") from err
    with container:
        if not container.streams.video:
            raise VideoError(f"{p}: has no video stream")
        stream = container.streams.video[0]
        rate = float(stream.average_rate) if stream.average_rate else 30.0
        first: float | None = None
        try:
            for i, frame in enumerate(container.decode(stream)):
                # Frames without a presentation time fall back to the nominal rate.
                t = float(frame.time) if frame.time is not None else i / rate
                first = t if first is None else first
                yield int(round((t - first) * 1e9)), frame.to_ndarray(format="rgb24")
        except av.error.FFmpegError as err:
            raise VideoError(f"{p}: decoding failed: {err}") from err


def _resize(image: np.ndarray, height: int | None, width: int | None) -> np.ndarray:
    if height is None or width is None or image.shape[:2] == (height, width):  # both or neither (config)
        return image
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))


def frames_to_stream(
    frames: Iterable[tuple[int, np.ndarray]], config: VideoStreamConfig = VideoStreamConfig()
) -> Iterator[SceneData]:
    """Events, RGB frames and truth records for a frame sequence of (time [ns], uint8 RGB).

    Times must rise; a frame whose time does not rise is skipped (duplicated timestamps in
    variable-rate videos), as is any frame of a different size than the first.
    """
    clock_rng = np.random.default_rng([config.seed, 0xC10C])
    sim: EventSimulator | None = None
    packetizer: Packetizer | None = None
    chunk_ns = int(round(config.chunk_s * 1e9))
    pending: list[tuple[int, np.ndarray, int]] = []  # (t_ns, image, index)
    prev: tuple[int, np.ndarray] | None = None  # last frame of the previous chunk (interpolation anchor)
    chunk_index = 0
    shape: tuple[int, ...] | None = None
    last_t = -1

    def flush(end_ns: int) -> SceneData:
        nonlocal prev, chunk_index
        assert sim is not None and packetizer is not None
        times = ([prev[0]] if prev else []) + [t for t, _, _ in pending]
        images = ([prev[1]] if prev else []) + [im for _, im, _ in pending]
        packets = []
        if len(times) >= 2:  # events up to this chunk's last frame
            source_type = FlowInterpolatedSource if config.interpolation == "flow" else FrameSequenceSource
            source = source_type(np.stack(images), np.asarray(times, np.float64) * 1e-9)
            events = sim.advance(source, times[-1] // 1000)
            packets = packetizer.packets(events, config.start_ns + config.clocks.event_offset_ns)
        world = np.asarray([config.start_ns + t for t, _, _ in pending], np.int64)
        stamps, kept = config.clocks.rgb_stamps(world, clock_rng)
        rgb = [RgbFrame(idx, int(stamps[k]), int(world[k]), im) for k, (_, im, idx) in enumerate(pending) if kept[k]]
        start = config.start_ns + chunk_index * chunk_ns
        truth = SceneTruth(
            chunk_index,
            start,
            max(start, config.start_ns + end_ns),
            "",
            int(config.clocks.event_offset_ns),
            float(config.clocks.jitter_ms),
            int(len(pending) - kept.sum()),
            int(config.seed),
            None,
        )
        prev = (pending[-1][0], pending[-1][1])
        pending.clear()
        chunk_index += 1
        return SceneData(truth, rgb, packets)

    index = 0
    for t_ns, image in frames:
        img = _resize(np.asarray(image), config.height, config.width)
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise VideoError(f"frames must be uint8 RGB [H, W, 3], got {img.dtype} {img.shape}")
        if shape is None:
            if img.shape[0] > MAX_SIDE or img.shape[1] > MAX_SIDE:
                raise VideoError(
                    f"frames are {img.shape[1]}x{img.shape[0]}; EVT 3.0 allows at most {MAX_SIDE} px a side: resize"
                )
            shape = img.shape
            sim = EventSimulator(img.shape[0], img.shape[1], config.esim, seed=config.seed)
            packetizer = Packetizer(img.shape[1], img.shape[0], config.packets)
            sim.reset(to_intensity(img), t_ns // 1000)
        if img.shape != shape or t_ns <= last_t:
            index += 1
            continue
        last_t = t_ns
        while t_ns >= (chunk_index + 1) * chunk_ns:
            if pending:
                yield flush((chunk_index + 1) * chunk_ns)
            else:  # a gap longer than a chunk in the frame times: nothing to report for it
                chunk_index += 1
        pending.append((t_ns, img, index))
        index += 1
    if pending:
        yield flush(last_t + 1)
