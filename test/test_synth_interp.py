"""Motion-compensated interpolation: flow recovery, exact end frames, events that follow the edge."""

from __future__ import annotations

import numpy as np

from cascade_sd_ros.core.synth.esim import EsimConfig, EventSimulator, FrameSequenceSource
from cascade_sd_ros.core.synth.interp import FlowInterpolatedSource, block_flow

H, W = 24, 96
SPEED = 60.0  # px/s: 6 px per frame at 10 fps
TEX = (np.random.default_rng(0).random((H, W)) * 0.03).astype(np.float32)


def _bar_frame(t_s: float, x0: float = 8.0, width: float = 12.0) -> np.ndarray:
    cols = np.arange(W) + 0.5
    left = x0 + SPEED * t_s
    cover = np.clip(np.minimum(cols - left, left + width - cols), 0.0, 1.0).astype(np.float32)
    frame = np.broadcast_to(0.2 + 0.7 * cover, (H, W)).astype(np.float32)
    return frame + TEX * (1 - cover)  # faint static texture behind the bar


def test_block_flow_recovers_a_translation() -> None:
    rng = np.random.default_rng(1)
    big = rng.random((80, 120)).astype(np.float32)
    a, b = big[10:58, 10:106], big[7:55, 15:111]  # content moves by (+3, -5) px from a to b
    fy, fx = block_flow(a, b)
    inner = (slice(8, -8), slice(8, -8))
    assert np.median(fy[inner]) == 3 and np.median(fx[inner]) == -5
    assert np.mean((fy[inner] == 3) & (fx[inner] == -5)) > 0.9
    still_y, still_x = block_flow(a, a)
    assert not still_y.any() and not still_x.any()


def test_end_frames_are_exact() -> None:
    times = np.array([0.0, 0.1, 0.2])
    frames = np.stack([_bar_frame(t) for t in times])
    src = FlowInterpolatedSource(frames, times)
    assert np.array_equal(src.intensity(0.0), frames[0])
    assert np.array_equal(src.intensity(0.1), frames[1])
    assert np.array_equal(src.intensity(0.2), frames[2])
    assert np.allclose(src.intensity(0.15, (2, 10, 5, 40)), src.intensity(0.15)[2:10, 5:40])


def _edge_error(source: FrameSequenceSource) -> float:
    sim = EventSimulator(H, W, EsimConfig(threshold_sigma=0.0, refractory_us=0))
    sim.reset(source.intensity(0.0), 0)
    ev = sim.advance(source, 900_000)
    on = ev[ev["p"] == 1]
    lead = 8.0 + SPEED * on["t"] * 1e-6 + 12.0
    assert len(on) > 1000
    return float(np.abs(on["x"] + 0.5 - lead).mean())


def test_events_follow_the_moving_edge_between_frames() -> None:
    times = np.arange(10) / 10.0
    frames = np.stack([_bar_frame(t) for t in times])
    flow = _edge_error(FlowInterpolatedSource(frames, times))
    fade = _edge_error(FrameSequenceSource(frames, times))
    assert flow < 1.0 and flow < 0.5 * fade


def test_static_parts_equal_the_cross_fade_exactly() -> None:
    rng = np.random.default_rng(3)
    a = (0.2 + 0.05 * rng.random((48, 64))).astype(np.float32)
    b = a.copy() * np.float32(1.01)  # a global flicker: no motion anywhere but the square
    a[5:15, 5:15] = 0.9
    b[5:15, 9:19] = 0.9  # the square moves 4 px right
    flow = FlowInterpolatedSource(np.stack([a, b]), [0.0, 0.1])
    fade = FrameSequenceSource(np.stack([a, b]), [0.0, 0.1])
    got, ref = flow.intensity(0.05), fade.intensity(0.05)
    assert np.array_equal(got[30:, :], ref[30:, :]) and np.array_equal(got[:, 40:], ref[:, 40:])
    assert not np.array_equal(got[5:15, 5:19], ref[5:15, 5:19])  # the square itself is warped
    assert np.allclose(got[8, 7:17], 0.9, atol=0.02)  # half way: the square covers columns 7..16
