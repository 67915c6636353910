"""Event representations against plain numpy references."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cascade_sd_ros.core.events import CD_DTYPE, EventFrameRenderer, count_image, time_window, voxel_grid

W, H = 12, 9


def _events(seed: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ev = np.zeros(n, CD_DTYPE)
    ev["x"], ev["y"] = rng.integers(0, W + 2, n), rng.integers(0, H + 2, n)  # some outside
    ev["p"], ev["t"] = rng.integers(0, 2, n), np.sort(rng.integers(0, 10_000, n))
    return ev


def _inside(ev: np.ndarray) -> np.ndarray:
    return ev[(ev["x"] < W) & (ev["y"] < H)]


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 300), st.integers(1, 5))
def test_renderer_matches_sequential_painting(seed: int, n: int, chunks: int) -> None:
    ev = _events(seed, n)
    images = EventFrameRenderer(W, H, chunks).render(ev)
    assert images.shape == (chunks, H, W, 3) and images.dtype == np.uint8
    bounds = [c * n // chunks for c in range(chunks + 1)]
    for c in range(chunks):
        ref = np.full((H, W, 3), 255, np.uint8)
        for e in _inside(ev[bounds[c] : bounds[c + 1]]):
            ref[e["y"], e["x"]] = (255, 0, 0) if e["p"] else (0, 0, 255)
        assert np.array_equal(images[c], ref)


def test_chunks_have_equal_counts_and_buffer_is_reused() -> None:
    renderer = EventFrameRenderer(W, H, 4)
    assert np.diff(renderer.chunk_bounds(10)).tolist() == [2, 3, 2, 3]
    first = renderer.render(_events(1, 50))
    second = renderer.render(_events(2, 50))
    assert first is second  # one buffer, allocated at construction
    assert np.all(renderer.render(_events(3, 0)) == 255)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 300))
def test_count_image_matches_bincount(seed: int, n: int) -> None:
    ev = _inside(_events(seed, n))
    ref = np.zeros((2, H, W), np.int32)
    np.add.at(ref, (ev["p"].astype(np.int64), ev["y"], ev["x"]), 1)
    buf = np.full((2, H, W), 7, np.int32)
    assert np.array_equal(count_image(_events(seed, n), W, H), ref)
    assert count_image(_events(seed, n), W, H, out=buf) is buf and np.array_equal(buf, ref)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 200), st.integers(1, 6))
def test_voxel_grid_matches_reference(seed: int, n: int, bins: int) -> None:
    ev = _events(seed, n)
    grid = voxel_grid(ev, W, H, bins)
    inside = _inside(ev)
    t0, t1 = int(ev["t"][0]), int(ev["t"][-1])
    ref = np.zeros((bins, H, W), np.float64)
    for e in inside:
        tn = (bins - 1) * (e["t"] - t0) / (t1 - t0) if t1 > t0 else 0.0
        lo = int(np.floor(tn))
        v = 1.0 if e["p"] else -1.0
        ref[lo, e["y"], e["x"]] += v * (1 - (tn - lo))
        if lo + 1 < bins:
            ref[lo + 1, e["y"], e["x"]] += v * (tn - lo)
    np.testing.assert_allclose(grid, ref, atol=1e-4)
    # polarity is conserved: every event spreads a total weight of exactly +-1
    assert grid.sum() == pytest.approx(float((2 * inside["p"].astype(np.int64) - 1).sum()), abs=1e-3)


def test_time_window_and_validation() -> None:
    ev = _events(0, 100)
    win = time_window(ev, 2000, 5000)
    assert np.all((win["t"] >= 2000) & (win["t"] < 5000))
    assert win.size == np.count_nonzero((ev["t"] >= 2000) & (ev["t"] < 5000))
    with pytest.raises(ValueError, match="CD_DTYPE"):
        count_image(np.zeros(3), W, H)
    with pytest.raises(ValueError, match="num_chunks"):
        EventFrameRenderer(W, H, 0)
    with pytest.raises(ValueError, match="before"):
        voxel_grid(ev, W, H, 3, t_start_us=10, t_end_us=5)
    with pytest.raises(ValueError, match="out must be"):
        voxel_grid(ev, W, H, 3, out=np.zeros((3, H, W), np.float64))
