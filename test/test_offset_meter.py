"""The drafter's offset meter measures where the data make an estimate due, not on a wall-clock timer:
the same stream gets the same estimates however fast it is played (a ``--fast`` replay ran a few
estimates where a paced one ran one per second of event time); what waits for the worker is bounded."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Callable

import numpy as np
import pytest

pytest.importorskip("sensor_msgs.msg")

from helpers.fake_node import WorkerNode  # noqa: E402

from cascade_sd_ros.core.align import ClockOffsetSource  # noqa: E402
from cascade_sd_ros.core.synth.clocks import ClockModel  # noqa: E402
from cascade_sd_ros.core.synth.esim import EsimConfig  # noqa: E402
from cascade_sd_ros.core.synth.packets import PacketConfig  # noqa: E402
from cascade_sd_ros.core.synth.stream import StreamConfig, iter_scenes  # noqa: E402
from cascade_sd_ros.nodes import clock_offset  # noqa: E402
from cascade_sd_ros.nodes.clock_offset import ClockOffsetMeter  # noqa: E402
from cascade_sd_ros.ros.events import StreamEvents  # noqa: E402
from cascade_sd_ros.ros.image import numpy_to_image  # noqa: E402
from cascade_sd_ros.ros.outputs import applied_from_msg  # noqa: E402
from cascade_sd_ros.ros.stamps import ns_to_stamp  # noqa: E402

SIZE = 48
TRUE_NS = -220_000_000


def _moving_stream(n_scenes: int) -> StreamConfig:
    """Moving scenes with background activity, the event clock TRUE_NS off the frames'."""
    return StreamConfig(
        n_scenes=n_scenes,
        height=SIZE,
        width=SIZE,
        seed=1,
        motions=("left", "right", "up", "down"),
        clocks=ClockModel(event_offset_ns=TRUE_NS),
        packets=PacketConfig(time_threshold_us=5000),
        esim=replace(EsimConfig(), noise_rate_hz=0.1),
    )


def _inputs(n_scenes: int = 4) -> list[tuple[str, Any]]:
    """A moving stream as the drafter's callbacks get it, in publication order: decoded packets
    (events on the event clock) with their seq, and Image messages."""
    stream = _moving_stream(n_scenes)
    out: list[tuple[str, Any]] = []
    for scene in iter_scenes(stream):
        for _, kind, item in scene.timeline():
            if kind == "events" and item.events.size:
                t = item.events["t"].astype(np.int64) * 1000 + (item.stamp_ns - int(item.events["t"][0]) * 1000)
                out.append(("events", (StreamEvents(cd=item.events, t_ns=t), item.seq)))
            elif kind == "image":
                msg = numpy_to_image(item.image, "rgb8")
                ns_to_stamp(item.stamp_ns, msg.header.stamp)
                out.append(("image", msg))
    return out


def _wait_idle(meter: ClockOffsetMeter, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not meter.idle():
        assert time.monotonic() < deadline, "the meter never caught up"
        time.sleep(0.001)


def _measure(inputs: list[tuple[str, Any]], pace: Callable[[ClockOffsetMeter], None]) -> tuple[int, list[Any]]:
    """(estimates run, offsets published) for ``inputs`` played with ``pace`` after each one."""
    node = WorkerNode()
    published: list[Any] = []
    meter = ClockOffsetMeter(node, ClockOffsetSource(initial_ns=0), published.append, "camera", 10**9)  # type: ignore[arg-type]
    try:
        for kind, item in inputs:
            if kind == "events":
                decoded, seq = item
                meter.add_events(decoded, SIZE, SIZE, seq)
            else:
                meter.on_image(item)
            pace(meter)
        _wait_idle(meter)
    finally:
        node.stop_workers()
    offsets = [(a.offset_ns, a.source, a.confident) for a in map(applied_from_msg, published)]
    return meter.source.estimates, offsets


def test_the_same_stream_gets_the_same_estimates_at_any_play_rate() -> None:
    inputs = _inputs()
    # as fast as the drafter decodes (a --fast replay): the worker falls far behind the stream
    fast = _measure(inputs, lambda meter: None)
    # at sensor rate and beyond: every input measured before the next one comes
    paced = _measure(inputs, _wait_idle)
    assert fast == paced
    estimates, offsets = fast
    # 8 s of event time: an estimate at the first packet, then one per second until confident (then
    # every 5 s); a wall-clock timer runs only as many as fit in the wall time the fast run took
    assert estimates >= 4, estimates
    assert offsets[0][1] == "initial" and offsets[-1][1] == "estimate" and offsets[-1][2]
    assert abs(offsets[-1][0] - TRUE_NS) <= 5_000_000


def test_what_waits_for_the_worker_is_bounded_and_the_drops_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clock_offset, "QUEUED_FRAME_BYTES", 3 * SIZE * SIZE * 3)  # three frames
    node = WorkerNode()
    meter = ClockOffsetMeter(node, ClockOffsetSource(initial_ns=0), lambda msg: None, "camera", 10**9)  # type: ignore[arg-type]
    node.stop_workers()  # a worker that never catches up
    frames = [item for kind, item in _inputs(1) if kind == "image"][:10]
    for msg in frames:
        meter.on_image(msg)
    values = meter.values(0)
    assert (values["frame_offset_inputs_queued"], values["frame_offset_inputs_dropped"]) == (3, 7)
    assert not meter.idle()


@pytest.mark.ros
def test_the_drafter_node_runs_as_many_estimates_as_fast_as_at_sensor_rate(rclpy_context: Any) -> None:
    """The drafter node over DDS: the same scenes played as fast as its queues take them and at
    sensor rate (4x, to keep the test short) get the same number of estimates."""
    from cascade_sd_ros.tools.pipeline import PipelineConfig, SensorPlayer, build_pipeline, scene_rounds

    stream = _moving_stream(4)
    scenes = list(iter_scenes(stream))
    params = scene_rounds(stream).params(oracle=False)
    config = PipelineConfig(models={"drafter": "tiny:0"}, stages=("drafter",), params=params)
    estimates = []
    for rate in (None, 4.0):
        namespace = f"/rate_{int(rate or 0)}"  # each run its own topics
        pipeline = build_pipeline(replace(config, namespace=namespace), rclpy_context)
        player = SensorPlayer(context=rclpy_context, namespace=namespace)
        pipeline.start()
        try:
            assert player.wait_matched(config.image_subscribers(), config.event_subscribers())
            drafter = pipeline.stage_nodes["drafter"]
            sent = (0, 0)
            for scene in scenes:
                player.play(scene, event_offset_ns=TRUE_NS, rate=rate)
                # as a replay's back-pressure does: the next scene once the drafter took this one (its
                # queues hold one scene), not once its estimates are done
                sent = (sent[0] + len(scene.packets), sent[1] + len(scene.frames))
                deadline = time.monotonic() + 30
                while (drafter.events_in.received, drafter.images_in.received) != sent:
                    assert time.monotonic() < deadline, (drafter.events_in.received, drafter.images_in.received, sent)
                    time.sleep(0.005)
            deadline = time.monotonic() + 60
            while not drafter.offset_meter.idle() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert (drafter.events_in.received, drafter.images_in.received) == sent
            assert drafter.offset_meter.idle() and drafter.offset_meter.dropped == 0
            estimates.append(drafter.clock.estimates)
        finally:
            pipeline.close()
            player.destroy_node()
    assert estimates[0] == estimates[1] >= 4, estimates


def test_a_strobe_fitted_at_every_edge_is_published_each_time_and_logged_once() -> None:
    """Fits follow the edges (a packet with new edges makes one due), each nudging the applied value
    by microseconds: every change is published, the log says it when it matters."""
    from cascade_sd_ros.core.synth.stream import StrobeConfig

    stream = StreamConfig(
        n_scenes=2,
        height=SIZE,
        width=SIZE,
        seed=3,
        clocks=ClockModel(event_offset_ns=-120_000_000),
        packets=PacketConfig(time_threshold_us=5000),
        strobe=StrobeConfig(),
    )
    node = WorkerNode()
    published: list[Any] = []
    meter = ClockOffsetMeter(node, ClockOffsetSource(initial_ns=0), published.append, "camera", 10**9)  # type: ignore[arg-type]
    try:
        for scene in iter_scenes(stream):
            for _, kind, item in scene.timeline():
                if kind == "events":
                    data = item.events if item.events.size else item.triggers
                    base = item.stamp_ns - int(data["t"][0]) * 1000
                    t = item.events["t"].astype(np.int64) * 1000 + base
                    trig_t = item.triggers["t"].astype(np.int64) * 1000 + base
                    decoded = StreamEvents(cd=item.events, t_ns=t, triggers=item.triggers, trigger_t_ns=trig_t)
                    meter.add_events(decoded, SIZE, SIZE, item.seq)
                elif kind == "image":
                    msg = numpy_to_image(item.image, "rgb8")
                    ns_to_stamp(item.stamp_ns, msg.header.stamp)
                    meter.on_image(msg)
        _wait_idle(meter)
    finally:
        node.stop_workers()
    final = applied_from_msg(published[-1])
    assert final.source == "trigger" and final.confident and abs(final.offset_ns + 120_000_000) <= 1_000_000
    lines = [line for line in node.logger.lines if line.startswith("clock offset")]
    assert len(published) > 10 and 1 <= len(lines) <= 2, (len(published), lines)
