"""A paced replay runs each stage node as a process of its own (as on a robot): what it needs of the
nodes comes from the graph and their diagnostics, and the bare reference rebuilds the verifier's clips
from the frames the replay published."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cascade_sd_ros.core import bagio
from cascade_sd_ros.core.align.buffer import TimeBuffer
from cascade_sd_ros.core.align.clip import select_clip
from cascade_sd_ros.tools.replay.processes import BagClips, RemoteNode

MS = 1_000_000


class _Diagnostics:
    def __init__(self, values: dict[str, dict[str, str]]) -> None:
        self._values = values

    def values(self, fqn: str) -> dict[str, str]:
        return dict(self._values.get(fqn, {}))


def test_a_remote_nodes_input_counts_come_from_its_diagnostics() -> None:
    diag = _Diagnostics(
        {
            "/event_drafter": {
                "events.received": "5986",
                "events.malformed": "2",
                "events.dropped": "0",
                "events.rate_hz": "749.500",
                "commits.received": "9",
                "commits.malformed": "0",
                "commits.dropped": "0",
                "rounds_opened": "4",
                "backend": "transformers",
            }
        }
    )
    node = RemoteNode("event_drafter", "/", [], [], diag)  # type: ignore[arg-type]
    assert node.fqn == "/event_drafter" and node.get_name() == "event_drafter"
    assert node.input_counts() == {
        "events": {"received": 5986, "malformed": 2, "dropped": 0},
        "commits": {"received": 9, "malformed": 0, "dropped": 0},
    }
    assert RemoteNode("frame_refiner", "/", [], [], diag).input_counts() == {}  # type: ignore[arg-type]  # not heard yet


def _image_cdr(store: Any, t_ns: int, value: int, stamp_ns: tuple[int, int] | None = None) -> bytes:
    types = store.types
    sec, nanosec = stamp_ns or (t_ns // 10**9, t_ns % 10**9)
    stamp = types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec)
    pixels = np.full((6, 8, 3), value, np.uint8)
    msg = types["sensor_msgs/msg/Image"](
        header=types["std_msgs/msg/Header"](stamp=stamp, frame_id="camera"),
        height=6,
        width=8,
        encoding="rgb8",
        is_bigendian=0,
        step=24,
        data=pixels.reshape(-1),
    )
    return bytes(store.serialize_cdr(msg, "sensor_msgs/msg/Image"))


def test_bag_clips_cut_the_verifiers_clip_from_the_published_frames() -> None:
    """30 fps frames, offset 12 ms: the clip of a round at T is select_clip over [T - 12 ms - 1 s, T - 12 ms]."""
    store = bagio.typestore()
    clips = BagClips(frame_offset_ns=12 * MS, clip_ns=1000 * MS, frames=8, slop_ns=20 * MS, question="q?")
    reference: TimeBuffer[np.ndarray] = TimeBuffer(256)
    for i in range(90):
        t = 10_000 * MS + i * 33 * MS
        clips.on_record("sensor_msgs/msg/Image", _image_cdr(store, t, i))
        reference.insert(t, np.full((6, 8, 3), i, np.uint8))
    clips.on_record("event_camera_msgs/msg/EventPacket", b"not an image: ignored")
    clips.on_record("sensor_msgs/msg/Image", b"\x00\x01 garbage")  # a frame the verifier would skip
    # and a stamp the verifier refuses (nanosec past a second: "11.988 s", the clip's end): skipped too
    clips.on_record("sensor_msgs/msg/Image", _image_cdr(store, 0, 255, stamp_ns=(10, 1_988_000_000)))
    T = 12_000 * MS
    got = clips(7, T)
    want = select_clip(reference, T - 12 * MS, 1000 * MS, 8, 20 * MS)
    assert got is not None and want is not None
    frames, question = got
    assert question == "q?" and frames.shape == (8, 6, 8, 3)
    assert [int(f[0, 0, 0]) for f in frames] == [int(f[0, 0, 0]) for f in want.items]
    assert clips(8, 100 * MS) is None  # no frame anywhere near: the round had nothing to verify


def test_bag_clips_take_the_verifiers_parameters() -> None:
    clips = BagClips.for_verifier(
        {"common": {"prompt": "what moves?"}, "video_verifier": {"frame_offset": 0.03, "frames": 4}}
    )
    assert clips.frame_offset_ns == 30 * MS and clips.frames == 4 and clips.question == "what moves?"
    assert clips.clip_ns == 1000 * MS  # the verifier's declared default


MODELS = {"target": "tiny:0", "refiner": "tiny:0", "drafter": "tiny:0"}


@pytest.mark.ros
@pytest.mark.slow
def test_a_paced_replay_runs_the_stages_as_processes_and_loses_nothing(tmp_path: Path) -> None:
    from cascade_sd_ros.tools.cli import main
    from cascade_sd_ros.tools.replay import ReplaySettings, _make_bare, run_replay
    from cascade_sd_ros.tools.replay.pipeline import make_pipeline

    bag = tmp_path / "bag"
    assert (
        main(
            [
                "make-bag",
                str(bag),
                "--scenes",
                "3",
                "--seed",
                "5",
                "--width",
                "64",
                "--height",
                "64",
                "--event-offset-ms",
                "30",
                "--packet-ms",
                "5",
                "--duration",
                "2.0",
            ]
        )
        == 0
    )
    settings = ReplaySettings(bag=bag, out_dir=tmp_path / "out", rate=1.0, models=dict(MODELS), progress=False)
    assert settings.processes
    report = run_replay(settings, make_pipeline, _make_bare).report
    doc = json.loads((tmp_path / "out" / "report.json").read_text())
    run = doc["run"]
    assert run["processes"] == "separate stage processes"
    assert set(run["node_inputs_received"]) == {"event_drafter", "frame_refiner", "video_verifier"}
    # every record the player published reached each node that takes it
    assert all(n == 0 for per_node in run["input_losses"].values() for n in per_node.values()), run["input_losses"]
    assert not run["unfinished_rounds"]
    sp = report["summary"]["speed"]
    assert sp["reference"] == "verifier-alone" and sp["rounds_with_reference"] >= 2
    assert sp["lossless_match"] == 1.0
    # the bare reference rebuilt the verifier's clips from the published frames: same captions
    assert sp["bare_match"] == 1.0 and doc["run"]["baseline"]["target_bare"]["rounds"] >= 2


def test_a_record_dds_refuses_is_counted_and_the_replay_goes_on() -> None:
    """A reliable reader far behind fills the writer's history: rclpy raises RCLError on publish. The
    player counts it per topic (a sensor would have dropped it too) and plays the rest."""
    from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy

    from cascade_sd_ros.tools.replay.player import Player
    from cascade_sd_ros.tools.replay.schedule import Scheduler
    from cascade_sd_ros.tools.replay.source import Record

    class Node:
        published: list[int] = []

        def publish_clock(self, t_ns: int, force: bool = False) -> None:
            pass

        def publish_raw(self, topic: str, raw: bytes) -> None:
            if raw == b"2":
                raise _rclpy.RCLError("Failed to publish: cannot publish data")
            self.published.append(int(raw))

    records = [
        Record("/events", "event_camera_msgs/msg/EventPacket", 10**9 + i * MS, str(i).encode()) for i in range(5)
    ]
    seen: list[bytes] = []
    player = Player(
        Node(),
        Scheduler(start_bag_ns=10**9, rate=50.0),
        records[-1].t_ns,  # type: ignore[arg-type]
        settle_s=0.01,
        drain_quiet_s=0.05,
        on_record=lambda rec, _clock: seen.append(rec.raw),
    )
    stats = player.play(records)
    assert Node.published == [0, 1, 3, 4] and seen == [b"0", b"1", b"3", b"4"]
    assert stats.published == {"/events": 4} and stats.publish_failures == {"/events": 1}
