"""Event simulator: physical sanity, interpolated crossing times, refractory, noise, determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cascade_sd_ros.core.events import CD_DTYPE
from cascade_sd_ros.core.synth.esim import EsimConfig, EventSimulator, FrameSequenceSource
from cascade_sd_ros.core.synth.scene import SceneRenderer, sample_scene

H, W = 24, 64
NO_SPREAD = EsimConfig(threshold_sigma=0.0, refractory_us=0)


def _bar(speed_px_s: float, level: float, bg: float = 0.2, x0: float = 8.0, width: float = 10.0):
    """Bright vertical bar moving right, anti-aliased: returns t_s -> float frame [H, W]."""
    cols = np.arange(W, dtype=np.float64) + 0.5

    def frame(t_s: float) -> np.ndarray:
        left = x0 + speed_px_s * t_s
        cover = np.clip(np.minimum(cols - left, left + width - cols), 0.0, 1.0)
        return np.broadcast_to((bg + (level - bg) * cover).astype(np.float32), (H, W)).copy()

    return frame


def _edges(speed: float, t_us: np.ndarray, x0: float = 8.0, width: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    left = x0 + speed * t_us * 1e-6
    return left, left + width


def test_moving_bright_bar_on_leading_off_trailing() -> None:
    speed = 20.0
    ev = EventSimulator(H, W, NO_SPREAD).simulate(_bar(speed, 0.9), [0.0, 1.0])
    on, off = ev[ev["p"] == 1], ev[ev["p"] == 0]
    assert len(on) > 100 and len(off) > 100
    _, lead = _edges(speed, on["t"])
    trail, _ = _edges(speed, off["t"])
    # Every ON event sits on the leading edge, every OFF event on the trailing edge, at its time.
    assert np.abs(on["x"] + 0.5 - lead).max() < 1.5
    assert np.abs(off["x"] + 0.5 - trail).max() < 1.5
    assert on["x"].mean() > off["x"].mean() + 8


def test_event_rate_scales_with_speed_and_contrast() -> None:
    def count(speed: float, level: float) -> int:
        return len(EventSimulator(H, W, NO_SPREAD).simulate(_bar(speed, level), [0.0, 0.5]))

    slow, fast = count(10.0, 0.9), count(20.0, 0.9)
    assert 1.7 < fast / slow < 2.3
    # Contrast: log(0.9/0.2) ~ 1.5 vs log(0.4/0.2) ~ 0.69, about twice the thresholds crossed.
    low = count(10.0, 0.4)
    assert 1.6 < slow / low < 2.8


def test_still_scene_without_noise_gives_no_events() -> None:
    rng = np.random.default_rng(0)
    spec = sample_scene(rng, 1.0, motions=["still"])
    r = SceneRenderer(spec, H, W)
    sim = EventSimulator(H, W, EsimConfig(noise_rate_hz=0.0))
    sim.reset(r.intensity(0.0), 0)
    assert len(sim.advance(r, 1_000_000)) == 0
    assert len(EventSimulator(H, W).simulate(lambda t: r.intensity(t), [0.0, 0.2])) == 0


def test_background_noise_rate() -> None:
    rate = 5.0
    sim = EventSimulator(H, W, EsimConfig(noise_rate_hz=rate), seed=3)
    frame = np.full((H, W), 0.5, np.float32)
    ev = sim.simulate(np.stack([frame, frame]), [0.0, 2.0])
    expected = rate * H * W * 2.0
    assert abs(len(ev) - expected) < 5 * math.sqrt(expected)
    assert 0.4 < ev["p"].mean() < 0.6
    assert ev.dtype == CD_DTYPE and np.all(np.diff(ev["t"]) >= 0)


def test_crossing_times_are_interpolated_between_substeps() -> None:
    # Log intensity rises linearly at 100 /s: threshold 0.2 is crossed every 2 ms exactly,
    # although the simulator samples only every 1 ms (crossings fall between samples).
    a, c = 100.0, 0.2
    cfg = EsimConfig(threshold_on=c, threshold_sigma=0.0, refractory_us=0, log_eps=0.01)
    i0 = 0.02

    def frame(t_s: float) -> np.ndarray:
        return np.full((4, 4), (i0 + cfg.log_eps) * math.exp(a * t_s) - cfg.log_eps, np.float32)

    ev = EventSimulator(4, 4, cfg).simulate(frame, [0.0, 0.0155])
    px = ev[(ev["x"] == 1) & (ev["y"] == 2)]
    expected = np.arange(1, 8) * c / a * 1e6  # 2000, 4000, ... µs
    assert np.all(px["p"] == 1)
    assert np.abs(px["t"] - expected).max() <= 2  # float32 log rounding, not sub-step quantisation


def test_refractory_period_spaces_events_per_pixel() -> None:
    cfg = EsimConfig(threshold_on=0.05, threshold_off=0.05, threshold_sigma=0.0, refractory_us=5000)
    ev = EventSimulator(H, W, cfg).simulate(_bar(30.0, 0.9), [0.0, 0.5])
    key = ev["y"].astype(np.int64) * W + ev["x"]
    order = np.lexsort((ev["t"], key))
    k, t = key[order], ev["t"][order]
    same = k[1:] == k[:-1]
    assert same.any() and np.min(np.diff(t)[same]) >= 5000
    unlimited = EventSimulator(
        H, W, EsimConfig(threshold_on=0.05, threshold_off=0.05, threshold_sigma=0.0, refractory_us=0)
    )
    assert len(unlimited.simulate(_bar(30.0, 0.9), [0.0, 0.5])) > len(ev)


def test_per_pixel_threshold_spread_and_determinism() -> None:
    a = EventSimulator(64, 64, EsimConfig(threshold_sigma=0.03), seed=1)
    b = EventSimulator(64, 64, EsimConfig(threshold_sigma=0.03), seed=1)
    c = EventSimulator(64, 64, EsimConfig(threshold_sigma=0.03), seed=2)
    assert abs(float(a.threshold_on.std()) - 0.03) < 0.005 and abs(float(a.threshold_on.mean()) - 0.2) < 0.005
    assert np.array_equal(a.threshold_on, b.threshold_on) and not np.array_equal(a.threshold_on, c.threshold_on)
    frames = _bar(20.0, 0.9)
    assert np.array_equal(
        EventSimulator(H, W, seed=5).simulate(frames, [0, 0.3]), EventSimulator(H, W, seed=5).simulate(frames, [0, 0.3])
    )


def test_events_sorted_and_within_sensor() -> None:
    spec = sample_scene(np.random.default_rng(4), 1.0, n_objects=2, motions=["left", "up"])
    r = SceneRenderer(spec, 48, 64)
    sim = EventSimulator(48, 64, EsimConfig(noise_rate_hz=1.0), seed=4)
    sim.reset(r.intensity(0.0), 0)
    ev = sim.advance(r, 1_000_000)
    assert len(ev) > 1000
    assert np.all(np.diff(ev["t"]) >= 0) and ev["t"].min() >= 0 and ev["t"].max() <= 1_000_000
    assert ev["x"].max() < 64 and ev["y"].max() < 48 and set(np.unique(ev["p"])) <= {0, 1}


def test_box_limited_sampling_matches_whole_frame_sampling() -> None:
    spec = sample_scene(np.random.default_rng(8), 0.5, n_objects=2, motions=["right", "down"])
    r = SceneRenderer(spec, 32, 40)
    fast = EventSimulator(32, 40, seed=1)
    fast.reset(r.intensity(0.0), 0)
    boxed = fast.advance(r, 500_000)
    whole = EventSimulator(32, 40, seed=1).simulate(lambda t: r.intensity(t), [0.0, 0.5])
    assert len(boxed) > 100 and np.array_equal(boxed, whole)


def test_low_frame_rate_frames_are_interpolated() -> None:
    dark = np.full((2, 2), 0.1, np.float32)
    bright = dark.copy()
    bright[0, 0] = 0.11 * math.exp(1.1) - 0.01  # log(I + eps) rises by 1.1: five thresholds of 0.2
    cfg = EsimConfig(threshold_on=0.2, threshold_sigma=0.0, refractory_us=0)
    ev = EventSimulator(2, 2, cfg).simulate(np.stack([dark, bright]), [0.0, 0.1])
    assert len(ev) == 5 and np.all((ev["x"] == 0) & (ev["y"] == 0) & (ev["p"] == 1))
    # Spread over the 100 ms interval (cross-fade), not bunched at a frame time.
    assert ev["t"].min() > 5_000 and ev["t"].max() <= 100_000 and np.all(np.diff(ev["t"]) > 5_000)
    src = FrameSequenceSource(np.stack([dark, dark, bright]), [0.0, 0.1, 0.2])
    assert src.changed_boxes(0.0, 0.1) == [] and src.changed_boxes(0.1, 0.15) == [(0, 1, 0, 1)]


def test_validation() -> None:
    with pytest.raises(ValueError):
        EsimConfig(substep_hz=500.0)
    with pytest.raises(ValueError):
        EsimConfig(threshold_on=0.0)
    sim = EventSimulator(H, W)
    with pytest.raises(RuntimeError):
        sim.advance(FrameSequenceSource(np.zeros((1, H, W), np.float32), [0.0]), 10)
    with pytest.raises(ValueError):
        sim.reset(np.zeros((H + 1, W), np.float32), 0)
    with pytest.raises(ValueError):
        sim.simulate(np.zeros((2, H, W), np.float32), [0.0, 0.0])
    with pytest.raises(ValueError):
        sim.simulate(np.full((2, H, W), 2.0, np.float32), [0.0, 0.1])
