"""Synthetic scene generator: determinism, caption grammar, geometry the zoo relies on."""

from __future__ import annotations

import numpy as np
import pytest

from cascade_sd_ros.core.synth.scene import (
    COLOURS,
    MAX_OBJECTS,
    MOTIONS,
    SHAPES,
    VOCABULARY,
    ObjectSpec,
    SceneRenderer,
    SceneSpec,
    caption,
    parse_caption,
    render_frame,
    render_frames,
    render_intensities,
    sample_scene,
)


def _scenes(seed: int, n: int, duration_s: float = 1.5) -> list[SceneSpec]:
    rng = np.random.default_rng(seed)
    return [sample_scene(rng, duration_s) for _ in range(n)]


def test_same_seed_same_scenes_and_pixels() -> None:
    a, b = _scenes(7, 5), _scenes(7, 5)
    assert a == b
    for sa, sb in zip(a, b):
        assert np.array_equal(render_frames(sa, [0.0, 0.7], 48, 64), render_frames(sb, [0.0, 0.7], 48, 64))


def test_different_seeds_differ() -> None:
    assert _scenes(1, 5) != _scenes(2, 5)


def test_sampling_covers_the_grammar() -> None:
    scenes = _scenes(0, 300)
    objs = [o for s in scenes for o in s.objects]
    assert {o.shape for o in objs} == set(SHAPES)
    assert {o.colour for o in objs} == set(COLOURS)
    assert {o.motion for o in objs} == set(MOTIONS)
    assert {len(s.objects) for s in scenes} == {1, 2}
    assert len(COLOURS) >= 5
    for s in scenes:
        assert len({o.colour for o in s.objects}) == len(s.objects)  # distinct colours in one scene


def test_caption_grammar_round_trips_and_uses_only_the_vocabulary() -> None:
    for s in _scenes(3, 100):
        for include_speed in (False, True):
            text = caption(s, include_speed=include_speed)
            assert set(text.split()) <= set(VOCABULARY)
            parsed = parse_caption(text)
            # clauses come in palette order: the sampling order shows in no pixel
            ordered = sorted(s.objects, key=lambda o: list(COLOURS).index(o.colour))
            assert [(p.colour, p.shape, p.motion) for p in parsed] == [(o.colour, o.shape, o.motion) for o in ordered]
            if include_speed:
                assert [p.speed for p in parsed] == [None if o.motion == "still" else o.speed for o in ordered]


def test_caption_examples() -> None:
    spec = SceneSpec(
        objects=(
            ObjectSpec("circle", "red", "left", "fast", 0.2, 0.7, 0.3, 0.16),
            ObjectSpec("square", "blue", "still", "slowly", 0.0, 0.3, 0.75, 0.16),
        ),
        texture_seed=1,
        background_level=0.2,
        background_tint=(1.0, 1.0, 1.0),
        duration_s=1.0,
    )
    assert caption(spec) == "a red circle moves left and a blue square is still"
    assert caption(spec, include_speed=True) == "a red circle moves left fast and a blue square is still"


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "a red",
        "a pink circle is still",
        "a red circle moves sideways",
        "a red circle is still and",
        "a red circle is still or a blue square is still",
        "a red circle is still and a blue square is still and a green square is",
        " and ".join(["a red circle is still"] * (MAX_OBJECTS + 1)),
    ],
)
def test_parse_caption_rejects_bad_text(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_caption(bad)


def _object_mask(frame: np.ndarray, colour: str) -> np.ndarray:
    target = np.asarray(COLOURS[colour]) * 255.0
    return np.abs(frame.astype(np.float64) - target).max(axis=-1) < 20


def test_objects_are_large_inside_the_frame_and_move_the_captioned_way() -> None:
    h = w = 48
    for s in _scenes(11, 40, duration_s=2.0):
        frames = render_frames(s, [0.0, 1.0, 2.0], h, w)
        for o in s.objects:
            assert o.radius * min(h, w) >= 7.0
            masks = [_object_mask(f, o.colour) for f in frames]
            areas = [m.sum() for m in masks]
            # Fully inside and not hidden: area stays (nearly) the same all along.
            assert min(areas) > 0.8 * max(areas) > 0
            cy = [np.nonzero(m)[0].mean() for m in masks]
            cx = [np.nonzero(m)[1].mean() for m in masks]
            dx, dy = cx[-1] - cx[0], cy[-1] - cy[0]
            expected = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1), "still": (0, 0)}[o.motion]
            for d, e in ((dx, expected[0]), (dy, expected[1])):
                if e == 0:
                    assert abs(d) < 1.0
                else:
                    assert d * e > 4.0  # clearly visible travel within 2 s at 48 px


def test_two_objects_never_touch_so_drawing_order_changes_no_pixel() -> None:
    checked = 0
    for s in _scenes(5, 120, duration_s=2.0):
        if len(s.objects) == 2:
            checked += 1
            r = SceneRenderer(s, 48, 48)
            full = (0, 48, 0, 48)
            for t in np.linspace(0.0, s.duration_s, 11):
                assert not np.any((r._coverage(0, t, full) > 0) & (r._coverage(1, t, full) > 0))
            swapped = SceneSpec(s.objects[::-1], s.texture_seed, s.background_level, s.background_tint, s.duration_s)
            assert np.array_equal(render_frame(s, 1.0, 48, 48), render_frame(swapped, 1.0, 48, 48))
    assert checked > 30


@pytest.mark.parametrize("count", [3, 4])
def test_crowded_scenes_fit_apart_inside_the_frame_and_caption_every_object(count: int) -> None:
    rng = np.random.default_rng(count)
    full = (0, 48, 0, 48)
    for _ in range(12):
        s = sample_scene(rng, 2.0, n_objects=count)
        assert len(s.objects) == count and len({o.colour for o in s.objects}) == count
        assert all(o.radius * 48 >= 5.0 for o in s.objects)  # smaller than alone, still several pixels
        r = SceneRenderer(s, 48, 48)
        for t in np.linspace(0.0, s.duration_s, 9):
            cover = np.stack([r._coverage(i, t, full) > 0 for i in range(count)])
            assert cover.sum(axis=0).max() == 1  # never touching
            areas = cover.sum(axis=(1, 2))
            assert areas.min() > 0  # every object in view all along
        assert len(parse_caption(caption(s))) == count  # 17 (3) or 23 (4) words


def test_the_default_mix_is_one_or_two_objects_and_max_objects_widens_it() -> None:
    rng = np.random.default_rng(1)
    assert {len(sample_scene(rng).objects) for _ in range(60)} == {1, 2}
    assert {len(sample_scene(rng, max_objects=MAX_OBJECTS).objects) for _ in range(60)} == set(range(1, 5))


def test_placement_keeps_the_motion_mix_nearly_uniform() -> None:
    motions = [o.motion for s in _scenes(6, 600, duration_s=2.0) for o in s.objects]
    counts = np.array([motions.count(m) for m in MOTIONS])
    assert counts.min() > 0.6 * counts.max()  # "still" fits most easily and comes out ~1.2x as often


def test_background_is_low_contrast_and_textured() -> None:
    s = _scenes(9, 1)[0]
    bg = SceneRenderer(s, 64, 64).background_luma
    assert bg.std() > 0.003  # textured
    assert bg.max() - bg.min() < 0.15  # low contrast compared with the objects
    lum = min(np.asarray(c) @ np.asarray([0.299, 0.587, 0.114]) for c in COLOURS.values())
    assert lum > bg.max() * 1.2


def test_render_variants_agree() -> None:
    s = _scenes(4, 1)[0]
    r = SceneRenderer(s, 40, 56)
    frame = render_frame(s, 0.4, 40, 56)
    assert frame.shape == (40, 56, 3) and frame.dtype == np.uint8
    full = r.intensity(0.4)
    box = (5, 30, 10, 50)
    assert np.allclose(r.intensity(0.4, box), full[5:30, 10:50])
    stack = render_intensities(s, [0.4], 40, 56)
    assert stack.shape == (1, 40, 56) and np.allclose(stack[0], full)
    lum = frame.astype(np.float32) / 255.0 @ np.asarray([0.299, 0.587, 0.114], np.float32)
    assert np.abs(lum - full).max() < 3.0 / 255.0


def test_long_durations_scale_speeds_down_but_keep_fast_twice_slow() -> None:
    rng = np.random.default_rng(0)
    speeds = set()
    for _ in range(50):
        for o in sample_scene(rng, 8.0).objects:
            if o.motion != "still":
                speeds.add((o.speed, round(o.speed_value, 9)))
    by_word = dict(speeds)
    assert len(by_word) == 2 and abs(by_word["fast"] - 2 * by_word["slowly"]) < 1e-9


def test_validation() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError):
        sample_scene(rng, duration_s=0.0)
    with pytest.raises(ValueError, match="n_objects"):
        sample_scene(rng, n_objects=MAX_OBJECTS + 1)
    with pytest.raises(ValueError, match="max_objects"):
        sample_scene(rng, max_objects=0)
    with pytest.raises(ValueError):
        sample_scene(rng, motions=["sideways"])
    with pytest.raises(ValueError):
        ObjectSpec("hexagon", "red", "left", "fast", 0.1, 0.5, 0.5, 0.16)
    with pytest.raises(ValueError):
        render_frame(_scenes(0, 1)[0], 0.0, 4, 4)
