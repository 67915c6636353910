"""``cascade-sd replay`` arguments and the replay's ROS-free helpers (params, remaps, round timing, progress)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from cascade_sd_ros.core.report import SceneInterval
from cascade_sd_ros.tools.cli import main
from cascade_sd_ros.tools.pipeline import ROUND_MARGIN_NS
from cascade_sd_ros.tools.replay.pipeline import (
    auto_remaps,
    merge_params,
    parse_params,
    parse_value,
    replay_params,
    round_params,
)
from cascade_sd_ros.tools.replay.progress import ProgressBar, ProgressState, render
from cascade_sd_ros.tools.replay.source import BagScan, ReplayInputError, TopicInfo

S = 1_000_000_000


def _scan(topics: dict[str, str], scenes: list[SceneInterval] | None = None) -> BagScan:
    infos = {name: TopicInfo(name, name, msgtype) for name, msgtype in topics.items()}
    return BagScan(Path("bag"), 0, 4 * S, infos, scenes or [])


@pytest.mark.parametrize(
    "argv",
    [
        ["replay", "/no/such/bag"],
        ["replay", "/no/such/bag", "--remap", "/a"],
        ["replay", "/no/such/bag", "--param", "bogus:x=1"],
        ["replay", "/no/such/bag", "--model", "oracle=tiny:0"],
    ],
)
def test_bad_replay_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert "cascade-sd replay: error:" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["replay"],
        ["replay", "x", "--rate", "0"],
        ["replay", "x", "--rate", "2", "--fast"],
        ["replay", "x", "--mode", "greedy"],
        ["replay", "x", "--rounds", "never"],
    ],
)
def test_argparse_errors_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2


def test_non_empty_out_dir_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from test_replay_player import write_test_bag

    write_test_bag(tmp_path / "in")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    assert main(["replay", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    assert "not an empty directory" in capsys.readouterr().err
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_params_parse_and_merge() -> None:
    assert parse_value("true") is True and parse_value("3") == 3 and parse_value("0.5") == 0.5
    assert parse_value("tiny:0") == "tiny:0"
    params = parse_params(["common:round_period=0.5", "video_verifier:max_wait=1", "video_verifier:mode=pyramid"])
    assert params == {"common": {"round_period": 0.5}, "video_verifier": {"max_wait": 1.0, "mode": "pyramid"}}
    # a whole number for a double parameter is that float (rclpy would refuse INTEGER for DOUBLE and
    # the stage would exit); integer parameters stay integers
    assert type(params["video_verifier"]["max_wait"]) is float
    typed = parse_params(["video_verifier:head_stop_below=0", "common:draft_wait=0", "event_drafter:gamma=4"])
    assert typed == {
        "video_verifier": {"head_stop_below": 0.0},
        "common": {"draft_wait": 0.0},
        "event_drafter": {"gamma": 4},
    }
    assert [type(v) for d in typed.values() for v in d.values()] == [float, float, int]
    merged = replay_params("cascade", params)
    assert merged["frame_refiner"]["mode"] == "cascade" and merged["video_verifier"]["mode"] == "pyramid"
    assert merge_params({"a": {"x": 1, "y": 2}}, {"a": {"y": 3}, "b": {"z": 4}}) == {
        "a": {"x": 1, "y": 3},
        "b": {"z": 4},
    }


def test_auto_remaps_only_when_unambiguous() -> None:
    scan = _scan(
        {
            "/cam/events": "event_camera_msgs/msg/EventPacket",
            "/cam/image": "sensor_msgs/msg/Image",
            "/cam/image_small": "sensor_msgs/msg/Image",
        }
    )
    inputs = {"event_camera_msgs/msg/EventPacket": {"/events"}, "sensor_msgs/msg/Image": {"/image"}}
    assert auto_remaps(scan, inputs, {}) == {"/cam/events": "/events"}  # two image topics: no guess
    assert auto_remaps(scan, inputs, {"/cam/events": "/elsewhere"}) == {}  # --remap wins


def test_round_params_follow_ground_truth_scenes() -> None:
    scenes = [
        SceneInterval(i, 10 * S + 2 * i * S, 10 * S + 2 * (i + 1) * S, f"scene {i}", 30_000_000) for i in range(3)
    ]
    params = round_params(_scan({}, scenes), "auto")
    assert params["common"]["round_period"] == pytest.approx(2.0)
    # round at each scene's end minus the pipeline's margin, on the event clock (offset added)
    phase = params["common"]["round_phase"]
    assert (10 * S + 2 * S - ROUND_MARGIN_NS + 30_000_000) % (2 * S) == pytest.approx(phase * 1e9)
    # nobody tells the stages the offset: the drafter measures it (from frame_offset 0), the others follow
    assert params["event_drafter"]["frame_offset"] == 0.0 and params["event_drafter"]["estimate_offset"] is True
    assert params["video_verifier"]["follow_clock_offset"] is True and params["frame_refiner"]["follow_clock_offset"]
    oracle = round_params(_scan({}, scenes), "auto", oracle=True)  # --oracle-offset: the truth, pinned
    assert oracle["video_verifier"]["frame_offset"] == pytest.approx(0.03)
    assert oracle["event_drafter"]["estimate_offset"] is False
    assert not oracle["video_verifier"]["follow_clock_offset"] and not oracle["frame_refiner"]["follow_clock_offset"]
    assert round_params(_scan({}, scenes), "period") == {}
    assert round_params(_scan({}), "auto") == {}
    with pytest.raises(ReplayInputError, match="no ground truth"):
        round_params(_scan({}), "scenes")
    uneven = [SceneInterval(0, 0, 2 * S, "a"), SceneInterval(1, 2 * S, 3 * S, "b"), SceneInterval(2, 3 * S, 5 * S, "c")]
    assert round_params(_scan({}, uneven), "auto") == {}
    with pytest.raises(ReplayInputError, match="unequal"):
        round_params(_scan({}, uneven), "scenes")


def test_progress_bar_text_and_throttle() -> None:
    line = render(
        ProgressState(bag_s=1.0, total_s=2.0, rounds_opened=3, rounds_final=2, wall_s=2.0, held=True), width=10
    )
    assert line.startswith("[#####-----]") and "1.00/2.00 s bag" in line and "3 opened, 2 final" in line
    assert "0.5x" in line and "waiting on the cascade" in line
    stream = io.StringIO()
    bar = ProgressBar(stream, log_interval_s=3600.0)
    state = ProgressState(0.5, 2.0, 0, 0, 1.0)
    bar.update(state)
    bar.update(state)  # throttled
    bar.close(state)  # always written
    assert stream.getvalue().count("\n") == 2


def test_describe_models_records_folder_metadata(tmp_path: Path) -> None:
    import json

    from cascade_sd_ros.core.zoo.load import META_FILE
    from cascade_sd_ros.tools.replay.pipeline import describe_models

    folder = tmp_path / "target"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "video_llava"}))
    (folder / META_FILE).write_text(json.dumps({"stage": "target", "steps": 10}))
    (folder / "model.safetensors").write_bytes(b"\0" * 10)
    d = describe_models({"target": str(folder), "drafter": "tiny:3"})
    assert d["target"] == {
        "source": str(folder),
        "model_type": "video_llava",
        "zoo": {"stage": "target", "steps": 10},
        "weights_bytes": 10,
    }
    assert d["drafter"]["kind"].startswith("tiny")


def test_zoo_params_follow_the_targets_zoo_json(tmp_path: Path) -> None:
    import json

    from cascade_sd_ros.core.zoo.load import META_FILE
    from cascade_sd_ros.tools.replay.pipeline import zoo_params

    folder = tmp_path / "target"
    folder.mkdir()
    (folder / META_FILE).write_text(
        json.dumps(
            {
                "question": "what moves?",
                "geometry": {"image_size": 48, "clip_duration_s": 1.0, "num_frames": 8, "event_window_s": 0.25},
            }
        )
    )
    assert zoo_params({"target": str(folder)}) == {
        "video_verifier": {"clip_duration": 1.0, "frames": 8},
        "event_drafter": {"event_window": 0.25},
        "common": {"prompt": "what moves?"},
    }
    assert zoo_params({"target": "tiny:0"}) == {}
    (folder / META_FILE).write_text("[1, 2]")
    with pytest.raises(ReplayInputError, match="target model"):
        zoo_params({"target": str(folder)})


def test_speed_lines_print_the_ratio_and_an_unfair_reference() -> None:
    from test_report import _ref, make_round

    from cascade_sd_ros.core import report, speed
    from cascade_sd_ros.tools.replay import speed_lines

    tokens = (5, 6, 7)
    rounds = [make_round(1, caption=100.0, alone=_ref(tokens, 300.0), bare=_ref(tokens, 120.0))]
    lines = speed_lines(report.speed(rounds))
    assert lines[0].endswith(
        "cascade 100 ms, verifier alone 300 ms (target bare, no ROS: 120 ms); speed-up over the verifier alone: 3.00x"
    )
    assert lines[1].startswith("NOT AN HONEST REFERENCE: the verifier alone took 2.50x the target's bare cost")
    honest = [make_round(1, caption=100.0, alone=_ref(tokens, 130.0), bare=_ref(tokens, 120.0))]
    assert len(speed_lines(report.speed(honest))) == 1 and speed.honest_reference(130.0 / 120.0)
    assert speed_lines(report.speed([make_round(1)])) == []


def test_throughput_line_gives_both_runs_and_their_ratio() -> None:
    from cascade_sd_ros.tools.replay import throughput
    from cascade_sd_ros.tools.replay.report import throughput_line

    tp = throughput({"wall_s": 10.0, "rounds_opened": 120}, 80, {"wall_s": 10.0, "rounds_opened": 50, "finals": 50})
    assert throughput_line(tp) == (
        "final captions per second of playback: cascade 8.00 (80 finals in 10.0 s), "
        "verifier alone 5.00 (50 finals in 10.0 s): 1.60x"
    )
    alone_less = throughput({"wall_s": 10.0, "rounds_opened": 5}, 5, None)  # --baseline offline / none
    assert throughput_line(alone_less) == "final captions per second of playback: cascade 0.50 (5 finals in 10.0 s)"
    assert throughput_line(None) is None and throughput_line(throughput({}, 0, None)) is None
