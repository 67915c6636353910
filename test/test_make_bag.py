"""``cascade-sd make-bag``: topics, type hashes, ground truth, exact events, determinism, video input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from cascade_sd_ros.core import bagio
from cascade_sd_ros.core.events import make_decoder
from cascade_sd_ros.core.synth.clocks import ClockModel
from cascade_sd_ros.core.synth.scene import render_frames, sample_scene
from cascade_sd_ros.core.synth.stream import StreamConfig, iter_scenes
from cascade_sd_ros.tools.cli import main

EVENT_PACKET_HASH = "RIHS01_d6fa176260b1f37e5a40845305315e150a0f18191241eb64f407442aa29844aa"
SMALL = ["--scenes", "2", "--duration", "0.5", "--width", "48", "--height", "40", "--fps", "20"]


def _make(out: Path, *extra: str) -> None:
    assert main(["make-bag", str(out), *SMALL, *extra]) == 0


def _metadata(bag: Path) -> dict:
    return yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]


def test_bag_topics_hashes_truth_and_exact_events(tmp_path: Path) -> None:
    bag = tmp_path / "bag"
    _make(bag, "--seed", "4", "--event-offset-ms", "-2.5", "--jitter-ms", "1.0", "--drop-rate", "0.2")
    meta = _metadata(bag)
    topics = {t["topic_metadata"]["name"]: t["topic_metadata"] for t in meta["topics_with_message_count"]}
    assert {k: v["type"] for k, v in topics.items()} == {
        "/event_camera/events": "event_camera_msgs/msg/EventPacket",
        "/camera/image_raw": "sensor_msgs/msg/Image",
        "/camera/camera_info": "sensor_msgs/msg/CameraInfo",
        "/ground_truth": "cascade_sd_ros/msg/SceneGroundTruth",
    }
    assert topics["/event_camera/events"]["type_description_hash"] == EVENT_PACKET_HASH
    assert all(v["type_description_hash"].startswith("RIHS01_") for v in topics.values())
    assert meta["storage_identifier"] == "mcap"

    # The same configuration in-process: the bag holds exactly its events, captions and clocks.
    expected = list(
        iter_scenes(
            StreamConfig(
                n_scenes=2,
                scene_duration_s=0.5,
                height=40,
                width=48,
                fps=20.0,
                seed=4,
                clocks=ClockModel(-2_500_000, 1.0, 0.2),
            )
        )
    )
    decoder = make_decoder("evt3", 48, 40)
    decoded, truths, images = [], [], []
    for topic, _type, t_ns, msg in bagio.iter_messages(bag):
        if topic == "/event_camera/events":
            assert msg.encoding == "evt3" and msg.time_base == 0 and (msg.width, msg.height) == (48, 40)
            assert t_ns == msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
            decoded.append(decoder.decode(msg.events).cd)
        elif topic == "/ground_truth":
            truths.append(msg)
        elif topic == "/camera/image_raw":
            assert msg.encoding == "rgb8" and msg.step == 48 * 3
            images.append(msg)
    sim_events = np.concatenate([s.events for s in expected])
    assert len(sim_events) > 100 and np.array_equal(np.concatenate(decoded), sim_events)
    assert [t.caption for t in truths] == [s.truth.caption for s in expected]
    for t, s in zip(truths, expected):
        assert t.event_offset_ns == -2_500_000 and t.jitter_ms == pytest.approx(1.0)
        assert t.frames_dropped == s.truth.frames_dropped and t.seed == 4 and t.scene_index == s.truth.scene_index
        assert t.start.sec * 10**9 + t.start.nanosec == s.truth.start_ns
    assert len(images) == sum(len(s.frames) for s in expected)


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_same_seed_byte_identical_different_seed_different(tmp_path: Path, storage: str) -> None:
    for sub, seed in (("a", "7"), ("b", "7"), ("c", "8")):
        (tmp_path / sub).mkdir()
        _make(tmp_path / sub / "bag", "--seed", seed, "--jitter-ms", "0.5", "--drop-rate", "0.1", "--storage", storage)

    def files(sub: str) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted((tmp_path / sub / "bag").iterdir())}

    assert files("a") == files("b")
    assert files("a") != files("c")
    captions = {
        sub: [m.caption for *_, m in bagio.iter_messages(tmp_path / sub / "bag", ["/ground_truth"])] for sub in "ac"
    }
    assert captions["a"] != captions["c"]


def _write_video(path: Path, n: int = 12) -> None:
    import av

    spec = sample_scene(np.random.default_rng(2), 1.0, n_objects=1, motions=["right"])
    frames = render_frames(spec, np.arange(n) / 24.0, 48, 64)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=24)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_from_video_file_and_from_bag_rgb_topic(tmp_path: Path) -> None:
    video = tmp_path / "clip.mp4"
    _write_video(video)
    out = tmp_path / "from_video"
    assert main(["make-bag", str(out), "--from-video", str(video), "--duration", "0.25"]) == 0
    counts = {t["topic_metadata"]["name"]: t["message_count"] for t in _metadata(out)["topics_with_message_count"]}
    assert counts["/camera/image_raw"] == 12 and counts["/event_camera/events"] > 5
    decoder = make_decoder("evt3", 64, 48)
    ev = np.concatenate([decoder.decode(m.events).cd for *_, m in bagio.iter_messages(out, ["/event_camera/events"])])
    on, off = ev[ev["p"] == 1], ev[ev["p"] == 0]
    assert on["x"].mean() > off["x"].mean()  # object moves right: ON leads, OFF trails
    truths = [m for *_, m in bagio.iter_messages(out, ["/ground_truth"])]
    assert truths and all(m.caption == "" for m in truths)

    synthetic = tmp_path / "synthetic"
    _make(synthetic, "--seed", "1")
    again = tmp_path / "from_bag"
    assert main(["make-bag", str(again), "--from-video", str(synthetic), "--storage", "sqlite3"]) == 0
    counts = {t["topic_metadata"]["name"]: t["message_count"] for t in _metadata(again)["topics_with_message_count"]}
    assert counts["/camera/image_raw"] == 20


@pytest.mark.parametrize(
    "argv",
    [
        ["--drop-rate", "1.0"],
        ["--duration", "0"],
        ["--width", "64"],
        ["--scenes", "0"],
        ["--storage", "rosbag1"],
        ["--from-video", "/nonexistent/clip.mp4"],
        ["--jitter-ms", "nan"],
        ["--strobe-missing", "3"],  # needs --strobe
        ["--strobe", "--strobe-missing", "x"],
        ["--drift-ppm", "5000"],
    ],
)
def test_bad_arguments_exit_2(tmp_path: Path, argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        code = main(["make-bag", str(tmp_path / "bag"), *argv])
        raise SystemExit(code)
    assert info.value.code == 2
    assert not (tmp_path / "bag").exists()


def test_existing_output_and_unreadable_video_exit_2(tmp_path: Path) -> None:
    (tmp_path / "bag").mkdir()
    assert main(["make-bag", str(tmp_path / "bag")]) == 2
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all")
    assert main(["make-bag", str(tmp_path / "out"), "--from-video", str(junk)]) == 2
    assert not (tmp_path / "out").exists()


def test_strobe_with_drift_and_a_missing_edge(tmp_path: Path) -> None:
    """--strobe writes one rising and one falling EXT_TRIGGER edge per exposure (EVT 3.0 value 1 =
    rising), less the missing frame's; with --drift-ppm the rising edges lie at offset + drift after
    each frame's capture."""
    bag = tmp_path / "bag"
    _make(bag, "--strobe", "--strobe-missing", "3", "--drift-ppm", "200", "--event-offset-ms", "25")
    decoder = make_decoder("evt3", 48, 40)
    rising = []
    for *_, m in bagio.iter_messages(bag, ["/event_camera/events"]):
        res = decoder.decode(m.events)
        first = min(int(a["t"][0]) for a in (res.cd, res.triggers) if a.size)
        stamp = m.header.stamp.sec * 10**9 + m.header.stamp.nanosec
        rising += (res.triggers["t"][res.triggers["p"] == 1].astype(np.int64) * 1000 + stamp - first * 1000).tolist()
    frames = [
        m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for *_, m in bagio.iter_messages(bag, ["/camera/image_raw"])
    ]
    assert len(frames) == 20 and len(rising) == 19  # 2 scenes x 0.5 s x 20 fps, one edge lost
    start = frames[0]
    expected = [f + 25_000_000 + round((f - start) * 200e-6) for i, f in enumerate(frames) if i != 3]
    assert np.abs(np.array(rising) - np.array(expected)).max() <= 1000  # µs resolution of the sensor
