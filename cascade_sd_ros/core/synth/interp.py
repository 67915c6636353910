"""Motion-compensated frame interpolation for low-frame-rate video (the v2e idea, without a network).

Between two frames A (time t_a) and B (t_b) a cross-fade makes a moving edge fade out at its old
place and in at its new one; a real event camera sees it sweep across the pixels in between. Here
the motion A -> B is estimated by block matching (coarse, on a downscaled copy, so it stays cheap
at any resolution), and the frame at fraction ``w`` is ``(1 - w) * A(p - w F) + w * B(p + (1 - w) F)``
with ``F`` the flow followed back to where the pixel came from (a short fixed-point iteration),
sampled bilinearly. Warped key frames are made once per frame pair, spaced so nothing moves more
than a pixel between neighbours, and the simulator's sub-steps cross-fade between key frames: edges
sweep across the pixels in between at sub-pixel steps, for about the cost of a plain cross-fade.
Occlusions and non-rigid changes fall back to the blend; the result equals A at ``w = 0`` and B at
``w = 1`` exactly, and pixels far from any motion are exactly the cross-fade.
"""

from __future__ import annotations

import numpy as np

from .esim import Box, FrameSequenceSource


def block_flow(
    a: np.ndarray, b: np.ndarray, block: int = 4, radius: int = 8, max_side: int = 160
) -> tuple[np.ndarray, np.ndarray]:
    """Dense flow A -> B in pixels (float32 [H, W] each for y and x) by block matching.

    Frames are first shrunk by an integer factor so their longer side is <= ``max_side``; blocks of
    ``block`` px are matched within ``radius`` px there (so full-resolution motion up to
    ``radius * factor`` px per frame is found). Ties and flat blocks keep zero motion.
    """
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"block_flow needs two equal 2-D frames, got {a.shape} and {b.shape}")
    h, w = a.shape
    f = max(1, int(np.ceil(max(h, w) / max_side)))
    sa, sb = _shrink(a, f), _shrink(b, f)
    sh, sw = sa.shape
    if sh < block or sw < block:  # too small to match blocks: no motion estimate
        return np.zeros((h, w), np.float32), np.zeros((h, w), np.float32)
    bh, bw = max(1, sh // block), max(1, sw // block)
    ch, cw = bh * block, bw * block  # the area covered by whole blocks
    pad = np.pad(sb, radius, mode="edge")
    ref = sa[:ch, :cw]
    shifts = [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)]
    cost = np.empty((len(shifts), bh, bw), np.float32)
    for k, (dy, dx) in enumerate(shifts):
        shifted = pad[radius + dy : radius + dy + ch, radius + dx : radius + dx + cw]
        cost[k] = np.abs(shifted - ref).reshape(bh, block, bw, block).sum(axis=(1, 3))
    # Each block is matched on its 3x3 block neighbourhood: a block inside a uniform region sees
    # the region's edges (the aperture problem), and the flow field comes out smoother.
    padded = np.pad(cost, ((0, 0), (1, 1), (1, 1)), mode="edge")
    support = sum(padded[:, 1 + i : 1 + i + bh, 1 + j : 1 + j + bw] for i in (-1, 0, 1) for j in (-1, 0, 1))
    # Prefer small motion: a tiny cost per pixel of displacement breaks ties in flat texture.
    d = np.asarray(shifts, np.float32)
    support = support + np.float32(2e-3 * 9 * block * block) * np.abs(d).sum(axis=1)[:, None, None]
    choice = np.argmin(support, axis=0)
    best_dy, best_dx = d[choice, 0], d[choice, 1]
    # Back to full resolution: each block's motion over its pixels (edge blocks extend to the border).
    rows = np.minimum(np.arange(h) // (block * f), bh - 1)
    cols = np.minimum(np.arange(w) // (block * f), bw - 1)
    fy = best_dy[rows][:, cols] * np.float32(f)
    fx = best_dx[rows][:, cols] * np.float32(f)
    return fy.astype(np.float32), fx.astype(np.float32)


def _shrink(img: np.ndarray, f: int) -> np.ndarray:
    if f == 1:
        return img.astype(np.float32, copy=False)
    h, w = (img.shape[0] // f) * f, (img.shape[1] // f) * f
    return img[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3), dtype=np.float32)


def _sample(img: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Bilinear samples of ``img`` at float32 coordinates (clamped to the frame)."""
    h, w = img.shape
    y = np.clip(y, 0.0, np.float32(h - 1))
    x = np.clip(x, 0.0, np.float32(w - 1))
    y0 = np.minimum(y.astype(np.int64), max(h - 2, 0))  # coordinates are >= 0: truncation is floor
    x0 = np.minimum(x.astype(np.int64), max(w - 2, 0))
    wy = y - y0
    wx = x - x0
    y1 = np.minimum(y0 + 1, h - 1)
    x1 = np.minimum(x0 + 1, w - 1)
    top = img[y0, x0] + wx * (img[y0, x1] - img[y0, x0])
    bottom = img[y1, x0] + wx * (img[y1, x1] - img[y1, x0])
    return (top + wy * (bottom - top)).astype(np.float32, copy=False)


def _nearest(img: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Nearest samples (the block flow is piecewise constant: bilinear buys nothing there)."""
    h, w = img.shape
    return img[np.clip(np.rint(y), 0, h - 1).astype(np.int64), np.clip(np.rint(x), 0, w - 1).astype(np.int64)]


class FlowInterpolatedSource(FrameSequenceSource):
    """Frames at known times, interpolated along estimated motion (see module docstring)."""

    max_step_px = 1.0  # largest motion between two neighbouring key frames

    def __init__(self, frames: np.ndarray, times_s: np.ndarray | list[float], block: int = 4, radius: int = 8) -> None:
        super().__init__(frames, times_s)
        self._block, self._radius = block, radius
        self._flow_index = -1
        self._keys = np.zeros((0, 0, 0), np.float32)
        # Warping can move a changed region a little beyond the pixels that differ: widen by a block.
        margin = 2 * block * max(1, int(np.ceil(max(self.height, self.width) / 160)))
        self._boxes = [
            None
            if b is None
            else (
                max(0, b[0] - margin),
                min(self.height, b[1] + margin),
                max(0, b[2] - margin),
                min(self.width, b[3] + margin),
            )
            for b in self._boxes
        ]

    def _keyframes(self, i: int) -> np.ndarray:
        """Warped frames of segment ``i`` at fractions k / K, K = the largest motion in px (>= 1):
        between neighbours nothing moves more than a pixel, so a cross-fade between them is
        exact to sub-pixel level, and each sub-step costs no more than a plain cross-fade."""
        if i != self._flow_index:  # sub-steps walk segments in order: keep only the current one
            a, b = self.frames[i], self.frames[i + 1]
            fy, fx = block_flow(a, b, self._block, self._radius)
            largest = max(float(np.abs(fy).max()), float(np.abs(fx).max()))
            steps = max(1, int(np.ceil(largest / self.max_step_px)))
            keys = np.empty((steps + 1,) + a.shape, np.float32)
            keys[0], keys[steps] = a, b
            rows, cols = np.nonzero(_dilate((fy != 0) | (fx != 0), int(np.ceil(largest)) + 1))
            for k in range(1, steps):
                keys[k] = _warp(a, b, fy, fx, rows, cols, np.float32(k / steps))
            self._keys = keys
            self._flow_index = i
        return self._keys

    def intensity(self, t_s: float, box: Box | None = None) -> np.ndarray:
        y0, y1, x0, x1 = box or (0, self.height, 0, self.width)
        i, w = self._segment(t_s)
        if w == 0.0 or len(self.times) < 2:
            return self.frames[i, y0:y1, x0:x1].copy()
        if w == 1.0:
            return self.frames[i + 1, y0:y1, x0:x1].copy()
        keys = self._keyframes(i)
        pos = w * (len(keys) - 1)
        k = min(int(pos), len(keys) - 2)
        u = np.float32(pos - k)
        a, b = keys[k, y0:y1, x0:x1], keys[k + 1, y0:y1, x0:x1]
        return a + u * (b - a)


def _warp(
    a: np.ndarray, b: np.ndarray, fy: np.ndarray, fx: np.ndarray, rows: np.ndarray, cols: np.ndarray, w: np.float32
) -> np.ndarray:
    """The frame at fraction ``w`` from A to B: a cross-fade, warped along the flow at ``rows, cols``
    (every pixel whose warp can differ from the cross-fade)."""
    out = a + w * (b - a)
    if rows.size:
        py, px = rows.astype(np.float32), cols.astype(np.float32)
        # Flow at the intermediate time: the flow of where this pixel came from in A.
        gy, gx = fy[rows, cols], fx[rows, cols]
        for _ in range(2):
            qy, qx = py - w * gy, px - w * gx
            gy, gx = _nearest(fy, qy, qx), _nearest(fx, qy, qx)
        wa = _sample(a, py - w * gy, px - w * gx)
        wb = _sample(b, py + (1 - w) * gy, px + (1 - w) * gx)
        out[rows, cols] = (1 - w) * wa + w * wb
    return out


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    """Boolean dilation by a (2r+1)^2 square (separable running sums)."""
    out = mask
    for axis in (0, 1):
        c = np.cumsum(np.pad(out.astype(np.int32), [(r + 1, r) if a == axis else (0, 0) for a in (0, 1)]), axis=axis)
        n = out.shape[axis]
        hi = np.take(c, np.arange(2 * r + 1, 2 * r + 1 + n), axis=axis)
        lo = np.take(c, np.arange(0, n), axis=axis)
        out = (hi - lo) > 0
    return out
