"""``cascade-sd make-bag OUT``: a synthetic (or video-derived) rosbag2 with ground truth.

Synthetic (default): ``--scenes`` scenes of ``--duration`` seconds each (one or two coloured shapes
moving over a textured background), events from the ESIM-style simulator packed as EVT 3.0 the way
the ROS 2 event camera drivers publish them, rgb8 frames at ``--fps`` with camera info, and one
``cascade_sd_ros/msg/SceneGroundTruth`` per scene (caption, interval, true clock offset, jitter,
dropped frames). ``--from-video`` turns a video file, or the RGB topic of a rosbag2, into the same
topics instead (the captions are then empty: the truth of a real video is unknown).

Same arguments, same bytes (for the same OUT folder name: the bag's file is named after it).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np

if TYPE_CHECKING:  # the heavy modules load only when the command runs
    from cascade_sd_ros.core.bagio import ReadReport
    from cascade_sd_ros.core.synth.clocks import ClockModel
    from cascade_sd_ros.core.synth.esim import EsimConfig
    from cascade_sd_ros.core.synth.packets import PacketConfig
    from cascade_sd_ros.core.synth.stream import SceneData

DEFAULT_HEIGHT, DEFAULT_WIDTH = 260, 346  # DAVIS346-like


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _index_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated frame indices, got {text!r}") from None
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"frame indices must be >= 0, got {text!r}")
    return values


def _finite(lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite float in [lo, hi) (or (lo, hi) with ``lo_open``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise argparse.ArgumentTypeError(f"must be finite, got {text}")
        if lo is not None and (value < lo or (lo_open and value == lo)):
            raise argparse.ArgumentTypeError(f"must be {'>' if lo_open else '>='} {lo}, got {value}")
        if hi is not None and value >= hi:
            raise argparse.ArgumentTypeError(f"must be < {hi}, got {value}")
        return value

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="OUT", help="new rosbag2 folder to write (must not exist)")
    parser.add_argument("--scenes", type=_positive_int, default=5, help="number of synthetic scenes (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of scenes, sensor and clocks (default 0)")
    parser.add_argument(
        "--duration",
        type=_finite(0.0, lo_open=True),
        default=2.0,
        help="seconds per scene (default 2.0); with --from-video: chunk length of the ground truth",
    )
    parser.add_argument(
        "--event-offset-ms",
        type=_finite(),
        default=0.0,
        help="event camera clock minus RGB camera clock, ms (default 0)",
    )
    parser.add_argument("--jitter-ms", type=_finite(0.0), default=0.0, help="std of RGB stamp jitter, ms (default 0)")
    parser.add_argument("--drop-rate", type=_finite(0.0, 1.0), default=0.0, help="probability of dropping an RGB frame")
    parser.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap", help="rosbag2 storage (default mcap)")
    parser.add_argument(
        "--from-video",
        metavar="FILE",
        default=None,
        help="video file (mp4, ...) or rosbag2 whose RGB topic becomes the event stream",
    )
    parser.add_argument(
        "--interpolation",
        choices=("flow", "crossfade"),
        default="flow",
        help="between video frames: motion-compensated (default) or cross-fade (faster)",
    )
    parser.add_argument("--image-topic", default="/camera/image_raw", help="RGB topic when --from-video is a bag")
    parser.add_argument(
        "--width", type=_positive_int, default=None, help=f"frame width (default {DEFAULT_WIDTH}; video: its own)"
    )
    parser.add_argument(
        "--height", type=_positive_int, default=None, help=f"frame height (default {DEFAULT_HEIGHT}; video: its own)"
    )
    parser.add_argument(
        "--fps", type=_finite(0.0, 1000.01, lo_open=True), default=30.0, help="RGB frame rate of synthetic scenes"
    )
    parser.add_argument(
        "--threshold", type=_finite(0.0, lo_open=True), default=0.2, help="contrast threshold, log units (default 0.2)"
    )
    parser.add_argument(
        "--noise-hz", type=_finite(0.0), default=0.0, help="background noise events per pixel per second"
    )
    parser.add_argument(
        "--packet-ms", type=_finite(0.001), default=1.0, help="driver's event message time threshold, ms (default 1)"
    )
    parser.add_argument("--include-speed", action="store_true", help="captions say 'fast' / 'slowly'")
    parser.add_argument(
        "--drift-ppm",
        type=_finite(-1000.0, 1000.0),
        default=0.0,
        help="event clock rate minus RGB clock rate, ppm (default 0)",
    )
    parser.add_argument(
        "--strobe",
        action="store_true",
        help="write the RGB exposure strobe into the event stream as EXT_TRIGGER edges (channel 0: "
        "rising at capture, falling 5 ms later; synthetic scenes only)",
    )
    parser.add_argument(
        "--strobe-missing",
        type=_index_list,
        default=(),
        metavar="I,J,...",
        help="frame indices whose strobe edges are lost (with --strobe)",
    )
    parser.add_argument(
        "--strobe-extra-hz",
        type=_finite(0.0, 1000.0),
        default=0.0,
        help="spurious strobe edge pairs per second (with --strobe)",
    )


def _bag_frames(path: Path, topic: str, report: ReadReport) -> Iterator[tuple[int, np.ndarray]]:
    """The frames of a bag's RGB topic; a damaged bag gives those before the damage (in ``report``)."""
    from cascade_sd_ros.core import bagio
    from cascade_sd_ros.core.names import stamp_ns
    from cascade_sd_ros.ros.image import image_to_rgb8

    first: int | None = None
    for _topic, msgtype, t_ns, msg in bagio.iter_messages(path, [topic], report=report):
        if msgtype != "sensor_msgs/msg/Image":
            raise bagio.BagError(f"{path}: topic {topic} is {msgtype}, not sensor_msgs/msg/Image")
        stamp = stamp_ns(msg.header.stamp.sec, msg.header.stamp.nanosec)
        t = stamp if stamp > 0 else t_ns  # an unset header stamp: fall back to the record time
        first = t if first is None else first
        yield t - first, image_to_rgb8(msg)


def _is_bag(path: Path) -> bool:
    """A rosbag2 folder or storage file (by its first bytes: a renamed .mcap is still a bag)."""
    from cascade_sd_ros.core import bagio

    return (
        path.is_dir() or path.suffix in (".mcap", ".db3") or (path.is_file() and bagio.storage_kind(path) != "unknown")
    )


def run(args: argparse.Namespace) -> int:
    from cascade_sd_ros.core.synth.bag import write_scene_bag
    from cascade_sd_ros.core.synth.clocks import ClockModel
    from cascade_sd_ros.core.synth.esim import EsimConfig
    from cascade_sd_ros.core.synth.packets import PacketConfig

    out = Path(args.out)
    if out.exists():
        print(f"cascade-sd make-bag: error: {out} exists; choose a new folder", file=sys.stderr)
        return 2
    if (args.width is None) != (args.height is None):
        print("cascade-sd make-bag: error: give both --width and --height, or neither", file=sys.stderr)
        return 2
    if not 0 <= args.seed < 2**63:
        print(f"cascade-sd make-bag: error: --seed must be in [0, 2**63), got {args.seed}", file=sys.stderr)
        return 2
    from cascade_sd_ros.core.bagio import ReadReport

    report = ReadReport()
    try:
        if (args.strobe_missing or args.strobe_extra_hz) and not args.strobe:
            raise ValueError("--strobe-missing and --strobe-extra-hz need --strobe")
        if args.drift_ppm and args.from_video is not None:
            raise ValueError("--drift-ppm applies to synthetic scenes only, not to --from-video")
        if args.strobe and args.from_video is not None:
            raise ValueError("--strobe writes synthetic scenes' exposures; it does not apply to --from-video")
        clocks = ClockModel(
            int(round(args.event_offset_ms * 1e6)), args.jitter_ms, args.drop_rate, event_drift_ppm=args.drift_ppm
        )
        esim = EsimConfig(threshold_on=args.threshold, threshold_off=args.threshold, noise_rate_hz=args.noise_hz)
        packets = PacketConfig(time_threshold_us=max(1, int(round(args.packet_ms * 1000))))
        scenes = _scenes(args, clocks, esim, packets, report)
        started = time.perf_counter()
        count = write_scene_bag(out, scenes, storage=args.storage)
    except (ValueError, OSError) as err:  # bad input file or parameter combination: named in the message
        if out.exists():  # a half-written bag of ours (OUT did not exist before): leave nothing behind
            shutil.rmtree(out)
        print(f"cascade-sd make-bag: error: {err}", file=sys.stderr)
        return 2
    print(f"make-bag: wrote {count} messages to {out} ({args.storage}) in {time.perf_counter() - started:.1f} s")
    if report.partial:  # a damaged --from-video bag: the frames before the damage were used
        print(f"cascade-sd make-bag: partial: {report.summary()}", file=sys.stderr)
        return 3
    return 0


def _scenes(
    args: argparse.Namespace, clocks: ClockModel, esim: EsimConfig, packets: PacketConfig, report: ReadReport
) -> Iterator[SceneData]:
    if args.from_video is None:
        from cascade_sd_ros.core.synth.stream import StreamConfig, StrobeConfig, iter_scenes

        strobe = StrobeConfig(missing=args.strobe_missing, extra_per_s=args.strobe_extra_hz) if args.strobe else None
        config = StreamConfig(
            n_scenes=args.scenes,
            scene_duration_s=args.duration,
            seed=args.seed,
            height=args.height or DEFAULT_HEIGHT,
            width=args.width or DEFAULT_WIDTH,
            fps=args.fps,
            esim=esim,
            clocks=clocks,
            packets=packets,
            include_speed=args.include_speed,
            strobe=strobe,
        )
        return iter_scenes(config)
    from cascade_sd_ros.core.synth.video import VideoStreamConfig, frames_to_stream, read_video

    source = Path(args.from_video)
    if not source.exists():
        raise ValueError(f"--from-video: no such file or bag: {source}")
    frames = _bag_frames(source, args.image_topic, report) if _is_bag(source) else read_video(source)
    config = VideoStreamConfig(
        seed=args.seed,
        chunk_s=args.duration,
        height=args.height,
        width=args.width,
        esim=esim,
        clocks=clocks,
        packets=packets,
        interpolation=args.interpolation,
    )
    return frames_to_stream(frames, config)
