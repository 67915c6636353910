"""The nodes' two image inputs (the frame stages' ImageInput, the drafter's ClockOffsetMeter) take a
frame the same way: one decode (``ros.image.stamped_rgb8``), the same frames counted as malformed
with the same reasons, the good ones handed on with their stamps."""

from __future__ import annotations

import math
import threading
import time
from typing import Any

import numpy as np
import pytest

pytest.importorskip("sensor_msgs.msg")

from helpers.fake_node import WorkerNode  # noqa: E402

from cascade_sd_ros.core.align import AppliedOffset, FrameIngest, StreamOffsets  # noqa: E402
from cascade_sd_ros.core.stages.schedule import RoundSchedule  # noqa: E402
from cascade_sd_ros.nodes.clock_offset import ClockOffsetMeter  # noqa: E402
from cascade_sd_ros.nodes.common import ImageInput  # noqa: E402
from cascade_sd_ros.ros.image import numpy_to_image  # noqa: E402
from cascade_sd_ros.ros.stamps import ns_to_stamp  # noqa: E402

MS = 1_000_000


class _Stage:
    def __init__(self) -> None:
        self.opened: list[int] = []

    def open_round(self, t_ns: int) -> None:
        self.opened.append(t_ns)

    def inputs_ready(self, t_ns: int) -> None:
        pass

    def wake(self) -> None:
        pass


class _Source:
    """What the meter's worker hands the offset source: the frames' stamps (it never measures)."""

    pinned = False

    def __init__(self) -> None:
        self.frames: list[int] = []

    def add_frame(self, t_ns: int, image: np.ndarray, arrival_s: float | None = None) -> None:
        self.frames.append(t_ns)

    def update(self) -> AppliedOffset:
        return AppliedOffset(0, 0.0, 0, math.inf, False, "initial")

    def idle(self) -> bool:
        return True

    def reset(self) -> None:
        pass


def _node() -> Any:
    node: Any = WorkerNode()
    node.lock, node.stage = threading.Lock(), _Stage()
    return node


def _messages() -> list[Any]:
    """Two good frames and three bad ones: an unset stamp, an unknown encoding, data cut short."""
    good = np.zeros((4, 6, 3), np.uint8)
    out = []
    for t_ns, msg in (
        (100 * MS, numpy_to_image(good, "rgb8")),
        (None, numpy_to_image(good, "rgb8")),
        (133 * MS, numpy_to_image(np.zeros((4, 6), np.uint8), "mono8")),
        (150 * MS, numpy_to_image(good, "rgb8")),
        (166 * MS, numpy_to_image(good, "rgb8")),
    ):
        if t_ns is not None:
            ns_to_stamp(t_ns, msg.header.stamp)
        out.append(msg)
    out[2].encoding = "yuv422"
    out[3].data = bytes(10)
    return out


def test_both_image_inputs_count_the_same_frames_malformed_for_the_same_reasons() -> None:
    meter_node, input_node = _node(), _node()
    source = _Source()
    meter = ClockOffsetMeter(meter_node, source, lambda msg: None, "camera", 1000 * MS)  # type: ignore[arg-type]
    ingest = FrameIngest(
        offsets=StreamOffsets({"image": 0}),
        buffer_size=10,
        jump_tolerance_ns=1000 * MS,
        schedule=RoundSchedule(0, 0),
        slop_ns=20 * MS,
    )
    images = ImageInput(input_node, ingest, reset_what="frames", on_jump=lambda: None)
    try:
        for msg in _messages():
            meter.on_image(msg)
            images(msg)
        deadline = time.monotonic() + 10
        while not meter.idle() and time.monotonic() < deadline:  # the meter's worker feeds the source
            time.sleep(0.01)
    finally:
        meter_node.stop_workers()
    for stats in (meter.images, images.stats):
        assert (stats.received, stats.malformed) == (5, 3)
    assert source.frames == [100 * MS, 166 * MS]
    assert [t for t, _ in ingest.frames.window(0, 10**12)] == [100 * MS, 166 * MS]
    # one log line each (throttled), naming the first bad frame's reason
    for node in (meter_node, input_node):
        (line,) = node.logger.lines
        assert "stamp is unset" in line and line.startswith("images: skipped malformed message")
