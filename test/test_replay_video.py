"""A video file turned into a bag (make-bag --from-video) replays end to end through the nodes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.ros, pytest.mark.slow]


def write_tiny_mp4(path: Path, frames: int = 30, fps: int = 10, width: int = 64, height: int = 48) -> None:
    """A red square sliding right over white, encoded with PyAV."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            img = np.full((height, width, 3), 255, np.uint8)
            img[16:32, 4 + i : 20 + i] = (200, 30, 30)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_video_bag_replays_end_to_end(tmp_path: Path) -> None:
    from cascade_sd_ros.tools.cli import main
    from cascade_sd_ros.tools.replay import ReplaySettings, _make_bare, run_replay
    from cascade_sd_ros.tools.replay.pipeline import make_pipeline

    video = tmp_path / "clip.mp4"
    write_tiny_mp4(video)
    assert main(["make-bag", str(tmp_path / "bag"), "--from-video", str(video), "--duration", "1.0"]) == 0
    settings = ReplaySettings(
        bag=tmp_path / "bag",
        out_dir=tmp_path / "out",
        rate=None,
        progress=False,
        models={"target": "tiny:0", "refiner": "tiny:0", "drafter": "tiny:0"},
    )
    run_replay(settings, make_pipeline, _make_bare)
    doc = json.loads((tmp_path / "out" / "report.json").read_text())
    assert doc["input"]["missing_streams"] == {}
    assert doc["run"]["published"]["/image"] == 30
    assert all(n == 0 for per_node in doc["run"]["input_losses"].values() for n in per_node.values()), doc["run"][
        "input_losses"
    ]
    assert doc["summary"]["rounds"] >= 1
    first = doc["rounds"][0]
    assert first["caption"] and not first["degraded"]
    assert first["ground_truth"] is None  # video chunks carry no caption: nothing to score
    # 3 s of video, rounds at each 1 s chunk's end: the verifier alone opens only those whose clip
    # lies within the frames and that a frame follows (the middle one), and agrees there.
    assert doc["summary"]["speed"]["rounds"] >= 1
    assert doc["summary"]["speed"]["lossless_match"] == 1.0
    assert (tmp_path / "out" / "report.md").is_file() and (tmp_path / "out" / "output" / "metadata.yaml").is_file()
