"""Seeded synthetic scenes: one to four coloured shapes moving over a textured background.

A scene is a frozen :class:`SceneSpec` (pure data, resolution independent) drawn by
:func:`sample_scene` from a ``numpy.random.Generator``; the same generator state always gives the
same scene. :func:`render_frame` / :func:`render_frames` draw it at any resolution and time, and
:class:`SceneRenderer` also gives the float intensity (whole frame or a box) that the event
simulator samples at >= 1 kHz.

Geometry is normalised so one spec renders alike at 48x48 and at 346x260: a centre ``(x, y)`` is
a fraction of the frame width / height, a radius is a fraction of ``min(height, width)``, and a
speed is a fraction of the frame extent along the motion axis per second. Objects stay wholly
inside the frame for the scene duration, and two objects never touch (their bounding circles stay
apart), so neither hides any part of the other and their drawing order changes no pixel.

Caption grammar (fixed word order, tiny vocabulary :data:`VOCABULARY`)::

    caption  := object (" and " object){0,3}
    object   := "a " colour " " shape " " motion
    motion   := "is still" | "moves " direction [" " speed]      # speed only if include_speed
    colour   := red | green | blue | yellow | purple
    shape    := circle | square | triangle
    direction:= left | right | up | down
    speed    := fast | slowly

e.g. ``"a red circle moves left and a blue square is still"`` or, with speed,
``"a yellow triangle moves up slowly"``. Objects are listed in spec order (first drawn first).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np

COLOURS: dict[str, tuple[float, float, float]] = {
    # Saturated and all much brighter than the dark background, so every colour also has a strong
    # luminance edge (the event camera sees luminance only).
    "red": (0.95, 0.15, 0.15),
    "green": (0.20, 0.85, 0.20),
    "blue": (0.25, 0.40, 1.00),
    "yellow": (0.95, 0.90, 0.15),
    "purple": (0.70, 0.30, 0.95),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
MOTIONS: tuple[str, ...] = ("left", "right", "up", "down", "still")
SPEED_WORDS: tuple[str, ...] = ("slowly", "fast")
# Unit vectors in image coordinates (x right, y down).
_DIRECTION: dict[str, tuple[float, float]] = {
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
    "still": (0.0, 0.0),
}

VOCABULARY: tuple[str, ...] = (
    ("a", "and", "moves", "is", "still") + tuple(COLOURS) + SHAPES + ("left", "right", "up", "down") + SPEED_WORDS
)

# [fraction of min(H, W)] object radius range: >= 7 px at 48 px, >= 9.6 px at 64 px.
RADIUS_RANGE: tuple[float, float] = (0.15, 0.18)
# Most objects one scene holds. Scenes draw 1 to SCENE_OBJECTS by default (so every seed's scene
# of the first zoo stays what it was); 3-4 give the 17-23-word captions where decoding, not the
# prefill, sets a caption's cost, as for a robot's longer descriptions.
MAX_OBJECTS = 4
SCENE_OBJECTS = 2
# Radii of crowded scenes shrink (3 objects: >= 6.1 px at 48 px, 4: >= 5.4 px) so they fit apart.
_CROWDED_RADIUS_SCALE = {3: 0.85, 4: 0.75}
# [fraction of axis extent / s] slow and fast speeds: 0.12 * 1.5 s * 64 px = 11.5 px of travel.
DEFAULT_SPEEDS: tuple[float, float] = (0.12, 0.24)
# Bounding radius of each shape relative to its radius (square corner, triangle vertex).
_SQUARE_HALF = 0.9
_TRIANGLE_CIRCUMRADIUS = 1.3
_BOUND = {"circle": 1.0, "square": _SQUARE_HALF * math.sqrt(2.0), "triangle": _TRIANGLE_CIRCUMRADIUS}
_MAX_BOUND = max(_BOUND.values())
_GAP = 0.04  # [fraction of min(H, W)] clearance between two shapes (2 px at 48 px): never touching
_BACKGROUND_LEVEL_RANGE = (0.12, 0.22)  # dark, so all colours stand out
_BACKGROUND_CONTRAST = 0.04  # texture amplitude: visible, but far below the objects' contrast
_TEXTURE_COMPONENTS = 6


@dataclass(frozen=True)
class ObjectSpec:
    """One shape. ``x0, y0``: centre at t = 0 (fractions of width / height)."""

    shape: str
    colour: str
    motion: str  # one of MOTIONS
    speed: str  # "slowly" | "fast" (ignored when motion == "still")
    speed_value: float  # [fraction of axis extent / s]; 0 when still
    x0: float
    y0: float
    radius: float  # [fraction of min(H, W)]

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"ObjectSpec.shape {self.shape!r} not in {SHAPES}")
        if self.colour not in COLOURS:
            raise ValueError(f"ObjectSpec.colour {self.colour!r} not in {tuple(COLOURS)}")
        if self.motion not in MOTIONS:
            raise ValueError(f"ObjectSpec.motion {self.motion!r} not in {MOTIONS}")
        if self.speed not in SPEED_WORDS:
            raise ValueError(f"ObjectSpec.speed {self.speed!r} not in {SPEED_WORDS}")
        if not (0.0 < self.radius < 0.5):
            raise ValueError(f"ObjectSpec.radius {self.radius} must be in (0, 0.5)")
        if not (math.isfinite(self.speed_value) and self.speed_value >= 0.0):
            raise ValueError(f"ObjectSpec.speed_value {self.speed_value} must be finite and >= 0")

    def centre(self, t_s: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Centre (fractions of width, height) at time(s) ``t_s``."""
        dx, dy = _DIRECTION[self.motion]
        t = np.asarray(t_s, dtype=np.float64)
        return self.x0 + dx * self.speed_value * t, self.y0 + dy * self.speed_value * t


@dataclass(frozen=True)
class SceneSpec:
    """A whole scene: objects (drawn in order, later on top) over a background texture."""

    objects: tuple[ObjectSpec, ...]
    texture_seed: int
    background_level: float  # mean grey level in [0, 1]
    background_tint: tuple[float, float, float]  # per-channel gain around 1
    duration_s: float

    def __post_init__(self) -> None:
        if not 1 <= len(self.objects) <= MAX_OBJECTS:
            raise ValueError(f"SceneSpec needs 1 to {MAX_OBJECTS} objects, got {len(self.objects)}")
        if not (math.isfinite(self.duration_s) and self.duration_s > 0):
            raise ValueError(f"SceneSpec.duration_s {self.duration_s} must be > 0")
        if not 0.0 <= self.background_level <= 1.0:
            raise ValueError(f"SceneSpec.background_level {self.background_level} not in [0, 1]")


def _max_speed_for(duration_s: float, radius: float) -> float:
    """Largest speed that keeps an object of ``radius`` inside the frame for ``duration_s``."""
    return (1.0 - 2.0 * _MAX_BOUND * radius) / duration_s


def sample_scene(
    rng: np.random.Generator,
    duration_s: float = 2.0,
    n_objects: int | None = None,
    speeds: tuple[float, float] = DEFAULT_SPEEDS,
    motions: Sequence[str] = MOTIONS,
    max_objects: int = SCENE_OBJECTS,
) -> SceneSpec:
    """Draw a scene from ``rng`` (deterministic given the generator state).

    ``n_objects``: 1 to :data:`MAX_OBJECTS` (None: 1 to ``max_objects``, equally likely). ``speeds``: (slow, fast) in fractions of
    the axis extent per second; both are scaled down together when ``duration_s`` is too long for
    the fast one to stay in frame, so their ratio (2 by default) holds. ``motions``: allowed motions.
    """
    if not (math.isfinite(duration_s) and duration_s > 0):
        raise ValueError(f"duration_s must be > 0, got {duration_s}")
    if not (isinstance(max_objects, int) and 1 <= max_objects <= MAX_OBJECTS):
        raise ValueError(f"max_objects must be 1 to {MAX_OBJECTS}, got {max_objects!r}")
    if n_objects is not None and not (isinstance(n_objects, int) and 1 <= n_objects <= MAX_OBJECTS):
        raise ValueError(f"n_objects must be 1 to {MAX_OBJECTS} or None, got {n_objects!r}")
    slow, fast = speeds
    if not (0 < slow < fast):
        raise ValueError(f"speeds must be (slow, fast) with 0 < slow < fast, got {speeds}")
    bad = [m for m in motions if m not in MOTIONS]
    if bad or not motions:
        raise ValueError(f"motions must be a non-empty subset of {MOTIONS}, got {list(motions)}")
    scale = min(1.0, _max_speed_for(duration_s, RADIUS_RANGE[1]) / fast)
    speed_of = {"slowly": slow * scale, "fast": fast * scale}

    count = int(rng.integers(1, max_objects + 1)) if n_objects is None else n_objects
    # One or two objects: one position per object per placement (a clash redraws them all), as the
    # first zoo's scenes were drawn. Three or four need smaller shapes to fit a 48 px frame, and
    # retries per object to be found in milliseconds rather than seconds.
    crowded = count > 2
    radius_scale = _CROWDED_RADIUS_SCALE[count] if crowded else 1.0
    tries_per_object = 200 if crowded else 1
    objects: list[ObjectSpec] = []
    for _attempt in range(1000):
        # What the caption says is drawn first and kept while positions are searched, so the
        # placement constraint barely skews the motion / shape mix; only combinations with no room
        # at all are redrawn.
        colours = rng.choice(list(COLOURS), size=count, replace=False)  # distinct colours
        looks = [_sample_look(rng, motions, speed_of) for _ in range(count)]
        for _placement in range(100):
            objects = []
            for colour, (shape, motion, speed, speed_value, radius) in zip(colours, looks):
                radius *= radius_scale
                for _try in range(tries_per_object):
                    x0, y0 = _start_position(rng, motion, speed_value, duration_s, radius)
                    obj = ObjectSpec(shape, str(colour), motion, speed, speed_value, x0, y0, radius)
                    if all(_apart(obj, other, duration_s) for other in objects):
                        objects.append(obj)
                        break
                else:
                    break
            if len(objects) == count:
                break
        if len(objects) == count:
            break
    else:
        raise RuntimeError("could not place the objects apart from each other")

    level = float(rng.uniform(*_BACKGROUND_LEVEL_RANGE))
    red, green, blue = (float(v) for v in 1.0 + rng.uniform(-0.15, 0.15, size=3))
    return SceneSpec(
        objects=tuple(objects),
        texture_seed=int(rng.integers(0, 2**31 - 1)),
        background_level=level,
        background_tint=(red, green, blue),
        duration_s=float(duration_s),
    )


def _sample_look(
    rng: np.random.Generator, motions: Sequence[str], speed_of: dict[str, float]
) -> tuple[str, str, str, float, float]:
    """(shape, motion, speed word, speed value, radius) of one object."""
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    motion = motions[int(rng.integers(len(motions)))]
    speed = SPEED_WORDS[int(rng.integers(2))]
    radius = float(rng.uniform(*RADIUS_RANGE))
    return shape, motion, speed, (0.0 if motion == "still" else speed_of[speed]), radius


def _start_position(
    rng: np.random.Generator, motion: str, speed_value: float, duration_s: float, radius: float
) -> tuple[float, float]:
    """Start so that the whole shape stays inside [0, 1] on both axes over the duration."""
    margin = _MAX_BOUND * radius  # conservative: a radius is <= this fraction of either axis
    travel = speed_value * duration_s
    dx, dy = _DIRECTION[motion]
    lo_x, hi_x = margin + max(0.0, -dx) * travel, 1.0 - margin - max(0.0, dx) * travel
    lo_y, hi_y = margin + max(0.0, -dy) * travel, 1.0 - margin - max(0.0, dy) * travel
    if lo_x > hi_x or lo_y > hi_y:
        raise ValueError(f"motion {motion} at speed {speed_value} cannot stay in frame for {duration_s} s")
    return float(rng.uniform(lo_x, hi_x)), float(rng.uniform(lo_y, hi_y))


def _apart(a: ObjectSpec, b: ObjectSpec, duration_s: float) -> bool:
    """The two shapes never touch: their bounding circles stay ``_GAP`` apart over the duration
    (measured on a square frame; wider frames only push them further apart in pixels)."""
    # Plain floats: this runs thousands of times per crowded scene, where numpy's per-call cost ruled.
    px, py = b.x0 - a.x0, b.y0 - a.y0
    (adx, ady), (bdx, bdy) = _DIRECTION[a.motion], _DIRECTION[b.motion]
    vx, vy = bdx * b.speed_value - adx * a.speed_value, bdy * b.speed_value - ady * a.speed_value
    vv = vx * vx + vy * vy
    # Relative motion is linear, so the closest approach is at one clipped time.
    t_min = 0.0 if vv == 0.0 else min(max(-(px * vx + py * vy) / vv, 0.0), duration_s)
    closest = math.hypot(px + vx * t_min, py + vy * t_min)
    return closest >= _BOUND[a.shape] * a.radius + _BOUND[b.shape] * b.radius + _GAP


def describe_object(obj: ObjectSpec, include_speed: bool = False) -> str:
    """``"a red circle moves left"`` (``"... moves left fast"`` with ``include_speed``)."""
    if obj.motion == "still":
        motion = "is still"
    else:
        motion = f"moves {obj.motion}" + (f" {obj.speed}" if include_speed else "")
    return f"a {obj.colour} {obj.shape} {motion}"


def caption(spec: SceneSpec, include_speed: bool = False) -> str:
    """The true caption of ``spec`` in the module's grammar.

    Objects are listed in palette order (``COLOURS``), not in the order they were sampled: that
    order shows in no pixel, so a caption that followed it could not be learnt or checked."""
    palette = list(COLOURS)
    ordered = sorted(spec.objects, key=lambda o: palette.index(o.colour))
    return " and ".join(describe_object(o, include_speed) for o in ordered)


@dataclass(frozen=True)
class ObjectDescription:
    """One parsed caption clause; ``speed`` is None when the caption did not state it."""

    colour: str
    shape: str
    motion: str
    speed: str | None


def parse_caption(text: str) -> list[ObjectDescription]:
    """Parse a caption of the grammar; raises ValueError naming the first word that does not fit."""
    words = text.strip().split()
    out: list[ObjectDescription] = []
    i = 0

    def need(options: Iterable[str], what: str) -> str:
        nonlocal i
        options = tuple(options)
        if i >= len(words) or words[i] not in options:
            got = words[i] if i < len(words) else "<end>"
            raise ValueError(f"caption {text!r}: expected {what} {options} at word {i}, got {got!r}")
        i += 1
        return words[i - 1]

    while True:
        need(("a",), "article")
        colour = need(COLOURS, "colour")
        shape = need(SHAPES, "shape")
        verb = need(("moves", "is"), "verb")
        speed: str | None = None
        if verb == "is":
            need(("still",), "'still'")
            motion = "still"
        else:
            motion = need(("left", "right", "up", "down"), "direction")
            if i < len(words) and words[i] in SPEED_WORDS:
                speed = words[i]
                i += 1
        out.append(ObjectDescription(colour, shape, motion, speed))
        if i == len(words):
            break
        need(("and",), "'and'")
        if len(out) == MAX_OBJECTS:
            raise ValueError(f"caption {text!r}: more than {MAX_OBJECTS} objects")
    return out


Box = tuple[int, int, int, int]  # (y0, y1, x0, x1), half-open pixel ranges


class SceneRenderer:
    """Draws one spec at one resolution; the background is computed once and reused."""

    def __init__(self, spec: SceneSpec, height: int, width: int) -> None:
        if not (isinstance(height, (int, np.integer)) and isinstance(width, (int, np.integer))):
            raise TypeError(f"height and width must be ints, got {height!r}, {width!r}")
        if height < 8 or width < 8:
            raise ValueError(f"frame must be at least 8x8, got {height}x{width}")
        self.spec = spec
        self.height = int(height)
        self.width = int(width)
        self._scale = float(min(height, width))  # px per unit radius
        self.background = _background(spec, self.height, self.width)  # float32 [H, W, 3]
        self.background_luma = _luma(self.background)  # float32 [H, W]
        self._colours = [np.asarray(COLOURS[o.colour], np.float32) for o in spec.objects]
        self._luma = [float(_luma(c[None, None, :])[0, 0]) for c in self._colours]

    def object_box(self, index: int, t_s: float) -> Box:
        """Pixel box (clipped to the frame) that holds object ``index`` at time ``t_s``."""
        obj = self.spec.objects[index]
        cx, cy = obj.centre(t_s)
        px, py = float(cx) * self.width - 0.5, float(cy) * self.height - 0.5  # pixel-centre coords
        r = _BOUND[obj.shape] * obj.radius * self._scale + 1.5  # +1.5 px: anti-aliasing fringe
        y0, y1 = max(0, int(math.floor(py - r))), min(self.height, int(math.ceil(py + r)) + 1)
        x0, x1 = max(0, int(math.floor(px - r))), min(self.width, int(math.ceil(px + r)) + 1)
        return (y0, max(y0, y1), x0, max(x0, x1))

    def changed_boxes(self, t0_s: float, t1_s: float) -> list[Box]:
        """Disjoint pixel boxes outside which the image is the same at ``t0_s`` and ``t1_s``.

        Only moving objects change pixels; each sweeps the union of its boxes at both ends
        (linear motion). Overlapping boxes merge, so no pixel is listed twice.
        """
        boxes: list[Box] = []
        for i, obj in enumerate(self.spec.objects):
            if obj.motion == "still" or t0_s == t1_s:
                continue
            a, b = self.object_box(i, t0_s), self.object_box(i, t1_s)
            box = (min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3]))
            if box[0] < box[1] and box[2] < box[3]:
                boxes.append(box)
        return merge_boxes(boxes)

    def _coverage(self, index: int, t_s: float, box: Box) -> np.ndarray:
        """Anti-aliased coverage in [0, 1] of object ``index`` over ``box``: float32 [h, w]."""
        obj = self.spec.objects[index]
        y0, y1, x0, x1 = box
        cx, cy = obj.centre(t_s)
        r = obj.radius * self._scale
        dx = (np.arange(x0, x1, dtype=np.float32) - np.float32(float(cx) * self.width - 0.5))[None, :]
        dy = (np.arange(y0, y1, dtype=np.float32) - np.float32(float(cy) * self.height - 0.5))[:, None]
        if obj.shape == "circle":
            sd = np.sqrt(dx * dx + dy * dy) - np.float32(r)
        elif obj.shape == "square":
            h = np.float32(_SQUARE_HALF * r)
            qx, qy = np.abs(dx) - h, np.abs(dy) - h
            outside = np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2)
            sd = outside + np.minimum(np.maximum(qx, qy), 0)
        else:  # triangle pointing up; max of the three edge half-plane distances
            inradius = np.float32(_TRIANGLE_CIRCUMRADIUS * r / 2.0)
            c30, s30 = np.float32(math.sqrt(3.0) / 2.0), np.float32(0.5)
            sd = np.maximum(np.maximum(dy, c30 * dx - s30 * dy), -c30 * dx - s30 * dy) - inradius
        return np.clip(np.float32(0.5) - sd, 0.0, 1.0).astype(np.float32, copy=False)

    def rgb(self, t_s: float, box: Box | None = None) -> np.ndarray:
        """Float RGB in [0, 1]: float32 [h, w, 3] over ``box`` (whole frame when None)."""
        box = box or (0, self.height, 0, self.width)
        img = self.background[box[0] : box[1], box[2] : box[3]].copy()
        return self._composite(img, t_s, box, self._colours, lambda a: a[..., None])

    def intensity(self, t_s: float, box: Box | None = None) -> np.ndarray:
        """Float luminance in [0, 1]: float32 [h, w] over ``box`` (whole frame when None)."""
        box = box or (0, self.height, 0, self.width)
        img = self.background_luma[box[0] : box[1], box[2] : box[3]].copy()
        return self._composite(img, t_s, box, [np.float32(v) for v in self._luma], lambda a: a)

    def _composite(
        self,
        img: np.ndarray,
        t_s: float,
        box: Box,
        values: Sequence[np.ndarray | np.float32],
        shape_alpha: Callable[[np.ndarray], np.ndarray],
    ) -> np.ndarray:
        """Draw each object over ``img`` (covering ``box``), only where its own box meets ``box``
        (coverage is exactly 0 outside an object's box)."""
        y0, y1, x0, x1 = box
        for i, value in enumerate(values):
            oy0, oy1, ox0, ox1 = self.object_box(i, t_s)
            iy0, iy1, ix0, ix1 = max(y0, oy0), min(y1, oy1), max(x0, ox0), min(x1, ox1)
            if iy0 >= iy1 or ix0 >= ix1:
                continue
            sub = img[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0]
            sub += shape_alpha(self._coverage(i, t_s, (iy0, iy1, ix0, ix1))) * (value - sub)
        return img

    def frame(self, t_s: float) -> np.ndarray:
        """uint8 RGB [H, W, 3] at ``t_s``."""
        return _to_uint8(self.rgb(t_s))


def merge_boxes(boxes: list[Box]) -> list[Box]:
    """Replace overlapping boxes by their bounding box until all are disjoint."""
    out = list(boxes)
    merged = True
    while merged:
        merged = False
        for i in range(len(out)):
            for j in range(i + 1, len(out)):
                a, b = out[i], out[j]
                if a[0] < b[1] and b[0] < a[1] and a[2] < b[3] and b[2] < a[3]:
                    out[i] = (min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3]))
                    del out[j]
                    merged = True
                    break
            if merged:
                break
    return out


def _luma(rgb: np.ndarray) -> np.ndarray:
    """Rec. 601 luma of float RGB [..., 3] -> float32 [...]."""
    w = np.asarray([0.299, 0.587, 0.114], np.float32)
    return (rgb.astype(np.float32, copy=False) @ w).astype(np.float32, copy=False)


def _to_uint8(rgb: np.ndarray) -> np.ndarray:
    return np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _background(spec: SceneSpec, height: int, width: int) -> np.ndarray:
    """Low-contrast texture from ``spec.texture_seed``: a few random low-frequency waves, defined in
    normalised coordinates so every resolution shows the same pattern."""
    rng = np.random.default_rng(spec.texture_seed)
    u = ((np.arange(width, dtype=np.float64) + 0.5) / width)[None, :]
    v = ((np.arange(height, dtype=np.float64) + 0.5) / height)[:, None]
    tex = np.zeros((height, width), np.float64)
    for _ in range(_TEXTURE_COMPONENTS):
        fx, fy = rng.uniform(-6.0, 6.0, size=2)
        phase = rng.uniform(0.0, 2.0 * math.pi)
        tex += rng.uniform(0.3, 1.0) * np.sin(2.0 * math.pi * (fx * u + fy * v) + phase)
    tex /= max(float(np.max(np.abs(tex))), 1e-9)
    grey = spec.background_level + _BACKGROUND_CONTRAST * tex
    rgb = grey[..., None] * np.asarray(spec.background_tint, np.float64)[None, None, :]
    return np.clip(rgb, 0.0, 1.0).astype(np.float32)


def render_frame(spec: SceneSpec, t_s: float, height: int, width: int) -> np.ndarray:
    """uint8 RGB [H, W, 3] of ``spec`` at time ``t_s``."""
    return SceneRenderer(spec, height, width).frame(t_s)


def render_frames(spec: SceneSpec, times_s: Sequence[float] | np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 RGB [N, H, W, 3] of ``spec`` at each time in ``times_s``."""
    renderer = SceneRenderer(spec, height, width)
    times = np.asarray(times_s, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(times)):
        raise ValueError("times_s must be finite")
    out = np.empty((len(times), height, width, 3), np.uint8)
    for i, t in enumerate(times):
        out[i] = renderer.frame(float(t))
    return out


def render_intensities(spec: SceneSpec, times_s: Sequence[float] | np.ndarray, height: int, width: int) -> np.ndarray:
    """Float luminance variant for the event simulator: float32 [N, H, W] in [0, 1]."""
    renderer = SceneRenderer(spec, height, width)
    times = np.asarray(times_s, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(times)):
        raise ValueError("times_s must be finite")
    return (
        np.stack([renderer.intensity(float(t)) for t in times])
        if len(times)
        else np.empty((0, height, width), np.float32)
    )
