"""In-process streams: driver-shaped packets, clocks with recorded truth, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from cascade_sd_ros.core.events import CD_DTYPE, make_decoder
from cascade_sd_ros.core.synth.clocks import ClockModel
from cascade_sd_ros.core.synth.packets import PacketConfig, Packetizer
from cascade_sd_ros.core.synth.scene import caption
from cascade_sd_ros.core.synth.stream import StreamConfig, iter_scenes

SMALL = dict(n_scenes=2, scene_duration_s=0.5, height=40, width=48, fps=20.0)


def test_scenes_frames_and_truth() -> None:
    cfg = StreamConfig(seed=3, **SMALL)
    scenes = list(iter_scenes(cfg))
    assert len(scenes) == 2
    for i, s in enumerate(scenes):
        assert s.truth.scene_index == i and s.truth.seed == 3
        assert s.truth.caption == caption(s.truth.spec)
        assert s.truth.end_ns - s.truth.start_ns == 500_000_000
        assert [f.index for f in s.frames] == list(range(10 * i, 10 * i + 10))
        for f in s.frames:
            assert f.image.shape == (40, 48, 3) and f.image.dtype == np.uint8
            assert s.truth.start_ns <= f.true_ns < s.truth.end_ns and f.stamp_ns == f.true_ns
    assert scenes[1].truth.start_ns == scenes[0].truth.end_ns
    line = scenes[0].timeline()
    assert line[0] == (scenes[0].truth.start_ns, "truth", scenes[0].truth)
    assert [t for t, _, _ in line] == sorted(t for t, _, _ in line)
    assert len(line) == 1 + len(scenes[0].packets) + len(scenes[0].frames)


def test_busier_streams_caption_every_object_and_bad_counts_are_refused() -> None:
    cfg = StreamConfig(seed=3, n_objects=4, **SMALL)
    for s in iter_scenes(cfg):
        assert len(s.truth.spec.objects) == 4 and s.truth.caption.count(" and ") == 3
    with pytest.raises(ValueError, match="max_objects"):
        StreamConfig(max_objects=5)


def test_packets_decode_to_the_simulated_events_and_follow_driver_conventions() -> None:
    cfg = StreamConfig(seed=5, n_objects=2, **SMALL)
    decoder = make_decoder("evt3", 48, 40)
    seq = 0
    for s in iter_scenes(cfg):
        for p in s.packets:
            assert p.seq == seq and p.encoding == "evt3" and p.time_base == 0
            seq += 1
            assert p.stamp_ns == cfg.start_ns + int(p.events["t"][0]) * 1000
            # One time window per packet (the driver's 1 ms message threshold).
            assert p.events["t"][-1] // 1000 == p.events["t"][0] // 1000
            got = decoder.decode(p.payload).cd
            assert np.array_equal(got, p.events)
    assert seq > 50


def test_size_threshold_splits_packets() -> None:
    ev = np.zeros(1000, CD_DTYPE)
    ev["x"] = np.arange(1000) % 48
    ev["y"] = np.arange(1000) // 48
    ev["t"] = 10
    pk = Packetizer(48, 40, PacketConfig(time_threshold_us=1000, size_threshold_bytes=800)).packets(ev, 0)
    assert len(pk) == 10 and all(len(p.payload) <= 800 for p in pk)
    decoder = make_decoder("evt3", 48, 40)
    assert np.array_equal(np.concatenate([decoder.decode(p.payload).cd for p in pk]), ev)


def test_clock_offset_jitter_and_drops_are_applied_and_recorded() -> None:
    clocks = ClockModel(event_offset_ns=-7_000_000, jitter_ms=2.0, drop_rate=0.3)
    cfg = StreamConfig(seed=9, clocks=clocks, **{**SMALL, "n_scenes": 4})
    scenes = list(iter_scenes(cfg))
    dropped = sum(s.truth.frames_dropped for s in scenes)
    kept = sum(len(s.frames) for s in scenes)
    assert kept + dropped == 40 and 3 <= dropped <= 22
    for s in scenes:
        assert s.truth.event_offset_ns == -7_000_000 and s.truth.jitter_ms == 2.0
        assert len(s.frames) + s.truth.frames_dropped == 10
        for p in s.packets:
            assert p.stamp_ns == cfg.start_ns - 7_000_000 + int(p.events["t"][0]) * 1000
    jitter = np.array([f.stamp_ns - f.true_ns for s in scenes for f in s.frames]) / 1e6
    assert 0.8 < jitter.std() < 3.5 and abs(jitter.mean()) < 1.5


def test_same_seed_same_stream_different_seed_different_scenes() -> None:
    def digest(seed: int) -> tuple:
        cfg = StreamConfig(seed=seed, clocks=ClockModel(1000, 1.0, 0.2), **SMALL)
        return tuple(
            (
                s.truth.caption,
                tuple(p.payload for p in s.packets),
                tuple(f.stamp_ns for f in s.frames),
                tuple(f.image.tobytes() for f in s.frames),
            )
            for s in iter_scenes(cfg)
        )

    assert digest(1) == digest(1)
    a, b = digest(1), digest(2)
    assert [x[0] for x in a] != [x[0] for x in b] and a != b


def test_validation() -> None:
    with pytest.raises(ValueError):
        StreamConfig(n_scenes=0)
    with pytest.raises(ValueError):
        StreamConfig(fps=0.0)
    with pytest.raises(ValueError):
        ClockModel(drop_rate=1.0)
    with pytest.raises(ValueError):
        ClockModel(jitter_ms=-1.0)
    with pytest.raises(ValueError):
        StreamConfig(height=4000)
    with pytest.raises(ValueError):
        Packetizer(48, 40).packets(np.zeros(3, np.int64), 0)  # type: ignore[arg-type]


def test_packets_across_the_evt3_time_wrap_decode_exactly() -> None:
    # EVT 3.0 carries 24-bit µs time (wraps every 16.8 s); a long stream must still decode exactly.
    rng = np.random.default_rng(0)
    ev = np.zeros(4000, CD_DTYPE)
    ev["t"] = np.sort(rng.integers(0, 40_000_000, ev.size))
    ev["x"], ev["y"], ev["p"] = rng.integers(0, 48, ev.size), rng.integers(0, 40, ev.size), rng.integers(0, 2, ev.size)
    packetizer = Packetizer(48, 40)
    packets = packetizer.packets(ev[:2000], 0) + packetizer.packets(ev[2000:], 0)
    decoder = make_decoder("evt3", 48, 40)
    assert np.array_equal(np.concatenate([decoder.decode(p.payload).cd for p in packets]), ev)
