"""Video to events: chunking, frame-time handling, resizing, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cascade_sd_ros.core.events import make_decoder
from cascade_sd_ros.core.synth.clocks import ClockModel
from cascade_sd_ros.core.synth.scene import render_frames, sample_scene
from cascade_sd_ros.core.synth.video import VideoError, VideoStreamConfig, frames_to_stream, read_video


def _frames(n: int = 20, fps: float = 10.0) -> list[tuple[int, np.ndarray]]:
    spec = sample_scene(np.random.default_rng(1), n / fps, n_objects=1, motions=["down"])
    images = render_frames(spec, np.arange(n) / fps, 32, 40)
    return [(int(round(i / fps * 1e9)), images[i]) for i in range(n)]


def test_chunks_cover_the_frames_and_events_decode() -> None:
    chunks = list(frames_to_stream(_frames(), VideoStreamConfig(chunk_s=0.5)))
    assert [len(c.frames) for c in chunks] == [5, 5, 5, 5]
    assert [c.truth.scene_index for c in chunks] == [0, 1, 2, 3]
    assert all(c.truth.caption == "" and c.truth.spec is None for c in chunks)
    decoder = make_decoder("evt3", 40, 32)
    events = np.concatenate([c.events for c in chunks])
    got = np.concatenate([decoder.decode(p.payload).cd for c in chunks for p in c.packets])
    assert len(events) > 50 and np.array_equal(got, events)
    assert np.all(np.diff(events["t"]) >= 0) and events["t"].max() <= 1_900_000
    on, off = events[events["p"] == 1], events[events["p"] == 0]
    assert on["y"].mean() > off["y"].mean()  # moving down: ON below, OFF above


def test_non_rising_times_are_skipped_and_frames_resized() -> None:
    frames = _frames(6)
    frames.insert(3, (frames[2][0], frames[2][1]))  # duplicated time stamp
    chunks = list(frames_to_stream(frames, VideoStreamConfig(chunk_s=10.0, height=16, width=20)))
    assert len(chunks) == 1 and len(chunks[0].frames) == 6
    assert chunks[0].frames[0].image.shape == (16, 20, 3)
    assert [f.index for f in chunks[0].frames] == [0, 1, 2, 4, 5, 6]


def test_clock_model_applies_to_video() -> None:
    clocks = ClockModel(event_offset_ns=4_000_000, jitter_ms=0.0, drop_rate=0.5)
    chunks = list(frames_to_stream(_frames(), VideoStreamConfig(chunk_s=1.0, clocks=clocks, seed=3)))
    assert sum(c.truth.frames_dropped for c in chunks) + sum(len(c.frames) for c in chunks) == 20
    assert sum(c.truth.frames_dropped for c in chunks) > 0
    for c in chunks:
        for p in c.packets:
            assert p.stamp_ns == VideoStreamConfig().start_ns + 4_000_000 + int(p.events["t"][0]) * 1000


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(VideoError):
        list(read_video(tmp_path / "missing.mp4"))
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(VideoError):
        list(read_video(bad))
    with pytest.raises(VideoError):
        list(frames_to_stream([(0, np.zeros((8, 8), np.uint8))]))
    with pytest.raises(ValueError):
        VideoStreamConfig(height=10)
