"""Benchmark: wall time to generate a synthetic scene bag (goal: a 10 s 346x260 bag in < 30 s).

Usage: .venv/bin/python bench/make_bag.py [--seconds 10] [--scene-duration 2] [--seeds 0 1 2]
       [--storage mcap] [--worst-case] [--video]

Per seed: writes the bag to a temporary folder through the same code as ``cascade-sd make-bag``
and reports the wall time, split into simulation (scenes, events, EVT 3.0 packets, frames) and
serialisation/writing, with event and message counts. ``--worst-case`` forces two moving objects
in every scene (the most events). The first run includes numba's cached-kernel load.
``--video`` times video-to-events instead: a 346x260 30 fps mp4 of the scenes, converted with
motion-compensated and with cross-fade interpolation (decode + simulate + packets, no bag).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from cascade_sd_ros.core.synth import bag as synth_bag
from cascade_sd_ros.core.synth.clocks import ClockModel
from cascade_sd_ros.core.synth.scene import MOTIONS
from cascade_sd_ros.core.synth.stream import StreamConfig, iter_scenes


def _video_bench(seconds: float, scene_duration: float, seed: int) -> None:
    import av
    import numpy as np

    from cascade_sd_ros.core.synth.video import VideoStreamConfig, frames_to_stream, read_video

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clip.mp4"
        config = StreamConfig(
            n_scenes=max(1, round(seconds / scene_duration)), scene_duration_s=scene_duration, seed=seed
        )
        with av.open(str(path), "w") as container:
            stream = container.add_stream("mpeg4", rate=30)
            stream.width, stream.height, stream.pix_fmt = config.width, config.height, "yuv420p"
            stream.bit_rate = 4_000_000
            for scene in iter_scenes(config):
                for f in scene.frames:
                    for packet in stream.encode(av.VideoFrame.from_ndarray(f.image, format="rgb24")):
                        container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        for mode in ("flow", "crossfade"):
            t0 = time.perf_counter()
            chunks = list(frames_to_stream(read_video(path), VideoStreamConfig(interpolation=mode)))
            dt = time.perf_counter() - t0
            events = sum(len(c.events) for c in chunks)
            frames = sum(len(c.frames) for c in chunks)
            print(
                f"video {seconds:.0f} s 346x260 30 fps, {mode}: {dt:5.1f} s for {frames} frames, "
                f"{events / 1e6:.2f} M events ({np.float64(dt / seconds):.2f} s per video second)"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--scene-duration", type=float, default=2.0)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    ap.add_argument("--worst-case", action="store_true", help="two moving objects in every scene")
    ap.add_argument("--video", action="store_true", help="time video-to-events instead of scene bags")
    args = ap.parse_args()
    if args.video:
        _video_bench(args.seconds, args.scene_duration, args.seeds[0])
        return
    n_scenes = max(1, round(args.seconds / args.scene_duration))
    print(
        f"{n_scenes} scenes x {args.scene_duration} s at 346x260, 30 fps RGB, storage {args.storage}"
        f"{', worst case (two moving objects)' if args.worst_case else ''}"
    )
    worst = dict(n_objects=2, motions=tuple(m for m in MOTIONS if m != "still")) if args.worst_case else {}
    for seed in args.seeds:
        config = StreamConfig(
            n_scenes=n_scenes,
            scene_duration_s=args.scene_duration,
            seed=seed,
            clocks=ClockModel(3_000_000, 1.0, 0.02),
            **worst,
        )
        t0 = time.perf_counter()
        scenes = list(iter_scenes(config))
        t_sim = time.perf_counter() - t0
        events = sum(len(s.events) for s in scenes)
        packets = sum(len(s.packets) for s in scenes)
        with tempfile.TemporaryDirectory() as tmp:
            t1 = time.perf_counter()
            count = synth_bag.write_scene_bag(Path(tmp) / "bag", scenes, storage=args.storage)
            t_write = time.perf_counter() - t1
            size = sum(p.stat().st_size for p in (Path(tmp) / "bag").iterdir())
        total = t_sim + t_write
        print(
            f"seed {seed}: total {total:5.1f} s (simulate {t_sim:4.1f} s + write {t_write:4.1f} s), "
            f"{events / 1e6:.2f} M events in {packets} packets, {count} messages, {size / 1e6:.0f} MB"
        )


if __name__ == "__main__":
    main()
