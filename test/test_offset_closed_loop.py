"""Issue 18, closed loop in the nodes: nobody tells the stages the clock offset. The drafter (where the
events are decoded) measures it, applies it once confident and publishes it latched on
``clock_offset``; the verifier and the refiner follow it (each round keeps the offset it opened with),
every final caption says which offset picked its frames, and the verifier never subscribes to the raw
events. Tiny random models, synthetic scenes in motion, one process over DDS."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

pytest.importorskip("rclpy")

from cascade_sd_ros.core.synth.clocks import ClockModel  # noqa: E402
from cascade_sd_ros.core.synth.packets import PacketConfig  # noqa: E402
from cascade_sd_ros.core.synth.stream import StreamConfig, iter_scenes  # noqa: E402
from cascade_sd_ros.tools.pipeline import (  # noqa: E402
    PipelineConfig,
    SensorPlayer,
    build_pipeline,
    load_models,
    play_scenes,
    scene_rounds,
)

pytestmark = pytest.mark.ros

TINY = {"target": "tiny:0", "refiner": "tiny:0", "drafter": "tiny:0"}
TRUE_NS = -180_000_000  # unknown to every stage
N_SCENES = 6


def test_the_offset_is_measured_applied_shared_and_reported(rclpy_context: Any) -> None:
    stream = StreamConfig(
        n_scenes=N_SCENES + 1,
        height=48,
        width=48,
        seed=11,
        motions=("left", "right", "up", "down"),
        clocks=ClockModel(event_offset_ns=TRUE_NS),
        packets=PacketConfig(time_threshold_us=5000),
    )
    scenes = list(iter_scenes(stream))
    rounds = scene_rounds(stream)
    params = rounds.params(oracle=False)  # frame_offset 0, measured
    params["common"] = {**params["common"], "max_new_tokens": 4}
    params["video_verifier"] = {**params["video_verifier"], "draft_wait": 0.05, "max_wait": 1.0}
    config = PipelineConfig(models=TINY, params=params)
    pipeline = build_pipeline(config, rclpy_context, models=load_models(config))
    player = SensorPlayer(context=rclpy_context)
    pipeline.start()
    try:
        assert player.wait_matched(config.image_subscribers(), config.event_subscribers())
        finals: dict[int, Any] = {}
        drafter = pipeline.stage_nodes["drafter"]
        sent = 0
        confident_after: int | None = None  # the scene after whose data the drafter was confident
        for i in range(len(scenes)):
            finals.update(play_scenes(pipeline, player, scenes[i : i + 1], rounds, first=i, timeout_s=30))
            # as a sensor's real time would: the drafter takes the scene's events and runs its estimate
            # before the next scene plays
            sent += len(scenes[i].packets)
            deadline = time.monotonic() + 20
            while (
                drafter.events_in.received < sent or not drafter.offset_meter.idle()
            ) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert drafter.events_in.received >= sent, (drafter.events_in.received, sent)
            if confident_after is None and drafter.clock.current().confident:
                confident_after = i
        assert finals[0] is not None and finals[0].frame_offset_source == "initial" and finals[0].frame_offset_ms == 0.0
        # confident once a few estimates agree: after at most 4 scenes (8 s); the estimates fall due by
        # event time, however loaded the cores
        assert confident_after is not None and confident_after <= 3, confident_after
        # round i opens while scene i plays (before its end: the initial offset 0 puts it 180 ms early), so
        # every round after that scene's uses the estimate
        late = [finals[i] for i in range(confident_after + 1, N_SCENES)]
        assert late and all(m is not None for m in late)
        for m in late:
            assert m.frame_offset_source == "estimate", m.frame_offset_source
            assert abs(m.frame_offset_ms - TRUE_NS / 1e6) <= 5.0, m.frame_offset_ms
        applied = drafter.clock.current()
        assert applied.confident and abs(applied.offset_ns - TRUE_NS) <= 5_000_000
        for follower in (pipeline.verifier, pipeline.stage_nodes["refiner"]):
            used = follower.follower.current()
            assert used.source == "estimate" and used.offset_ns == applied.offset_ns, (follower.get_name(), used)
            assert follower.offsets.offset("image") == applied.offset_ns
        # the verifier's core is the caption's: it never subscribed to the raw events (the drafter did)
        topics = {sub.topic_name.rsplit("/", 1)[-1] for sub in pipeline.verifier.subscriptions}
        assert "events" not in topics and "clock_offset" in topics, topics
        # latched: a listener that comes later still hears the applied offset at once
        from cascade_sd_ros.msg import ClockOffset
        from cascade_sd_ros.nodes.common import LATCHED_QOS

        heard: list[Any] = []
        got = threading.Event()
        listener = rclpy_context_node(rclpy_context)
        listener.create_subscription(ClockOffset, "clock_offset", lambda m: (heard.append(m), got.set()), LATCHED_QOS)
        pipeline.executor.add_node(listener)
        assert got.wait(10.0)
        assert heard[-1].confident and heard[-1].source == "estimate"
        assert abs(heard[-1].offset_ns - TRUE_NS) <= 5_000_000
        pipeline.executor.remove_node(listener)
        listener.destroy_node()
    finally:
        pipeline.close()
        player.destroy_node()


def rclpy_context_node(context: Any) -> Any:
    from rclpy.node import Node

    return Node("clock_offset_listener", context=context)


def test_only_the_drafter_takes_the_raw_events(rclpy_context: Any) -> None:
    """Default parameters (a launch's): the drafter subscribes to the events and, to measure the offset,
    the images, and publishes ``clock_offset``; the verifier follows it and never subscribes to the raw
    events (whose rate would cost the target's core). A pinned drafter needs no images."""
    from cascade_sd_ros.tools.pipeline import PipelineConfig, build_pipeline

    def topics(params: dict[str, Any]) -> dict[str, tuple[set[str], set[str]]]:
        config = PipelineConfig(models=TINY, params=params, collect_captions=False)
        pipeline = build_pipeline(config, rclpy_context, models=load_models(config))
        try:
            return {
                stage: (
                    {s.topic_name.rsplit("/", 1)[-1] for s in node.subscriptions},
                    {p.topic_name.rsplit("/", 1)[-1] for p in node.publishers},
                )
                for stage, node in pipeline.stage_nodes.items()
            }
        finally:
            pipeline.close()

    measured = topics({})
    assert "events" not in measured["verifier"][0] and "clock_offset" in measured["verifier"][0]
    assert "clock_offset" in measured["refiner"][0] and "events" not in measured["refiner"][0]
    assert {"events", "image"} <= measured["drafter"][0] and "clock_offset" in measured["drafter"][1]
    pinned = topics({"event_drafter": {"estimate_offset": False}, "video_verifier": {"follow_clock_offset": False}})
    assert "image" not in pinned["drafter"][0] and "clock_offset" in pinned["drafter"][1]
    assert "clock_offset" not in pinned["verifier"][0] and "events" not in pinned["verifier"][0]


def test_strobe_edges_in_the_drafters_events_give_every_stage_the_exact_offset(rclpy_context: Any) -> None:
    """Trigger sync lives where the events are decoded: with the RGB strobe in the event stream (40 ppm
    drift, a missing edge, spurious edges, 5 % frame drops) and nothing known, the drafter counts the
    strobe's edges from the streams' starts (it heard both begin) and its fit is exact from the first
    edges on, before any estimate: every round, the first included, picks its frames with the trigger
    offset (refiner and verifier follow it), within 1 ms of the truth, drift included."""
    from cascade_sd_ros.core.synth.stream import StrobeConfig

    stream = StreamConfig(
        n_scenes=N_SCENES + 1,
        height=48,
        width=48,
        seed=11,
        motions=("left", "right", "up", "down"),
        clocks=ClockModel(event_offset_ns=TRUE_NS, event_drift_ppm=40.0, drop_rate=0.05),
        packets=PacketConfig(time_threshold_us=5000),
        strobe=StrobeConfig(missing=(7,), extra_per_s=2.0),
    )
    scenes = list(iter_scenes(stream))
    assert scenes[0].frames[0].index == 0  # the count's premise: the first exposure's frame is heard
    rounds = scene_rounds(stream)
    params = rounds.params(oracle=False)
    params["common"] = {**params["common"], "max_new_tokens": 2}
    config = PipelineConfig(models=TINY, params=params)
    pipeline = build_pipeline(config, rclpy_context, models=load_models(config))
    player = SensorPlayer(context=rclpy_context)
    pipeline.start()
    try:
        assert player.wait_matched(config.image_subscribers(), config.event_subscribers())
        drafter = pipeline.stage_nodes["drafter"]
        followers = (pipeline.verifier, pipeline.stage_nodes["refiner"])
        finals: dict[int, Any] = {}
        sent = 0
        for i in range(len(scenes)):
            # the first scene at the sensors' rate (the drafter's worker fits the strobe while it plays, as
            # on a robot); the rest as fast as the rounds go, the drafter's work done in between
            rate = 1.0 if i == 0 else None
            finals.update(play_scenes(pipeline, player, scenes[i : i + 1], rounds, first=i, timeout_s=30, rate=rate))
            sent += len(scenes[i].packets)
            deadline = time.monotonic() + 20
            while (
                drafter.events_in.received < sent or not drafter.offset_meter.idle()
            ) and time.monotonic() < deadline:
                time.sleep(0.05)
        applied = drafter.clock.current()
        assert applied.source == "trigger", (applied, drafter.clock.tracker.last_trigger, drafter.clock.start_note)
        assert drafter.clock.tracker.trigger_alias == "stream start", drafter.clock.start_note
        for i in range(N_SCENES):  # every round, the first included
            m = finals.get(i)
            assert m is not None and m.frame_offset_source == "trigger", (i, m and m.frame_offset_source)
            assert abs(m.frame_offset_ms * 1e6 - scenes[i].truth.event_offset_ns) <= 1_000_000, (i, m.frame_offset_ms)
        for node in (drafter.clock, *(f.follower for f in followers)):
            got = node.current()
            assert got.source == "trigger" and got.confident, got
            for scene in scenes:  # the truth at each scene's start, drift included
                assert abs(got.at(scene.truth.start_ns) - scene.truth.event_offset_ns) <= 1_000_000
        assert drafter.clock.sync.edges_seen > 0
        diag = drafter.offset_meter.values(0)
        assert diag["frame_offset_trigger_alias"] == "stream start", diag
        assert str(diag["frame_offset_trigger_start"]).startswith("trusted"), diag
    finally:
        pipeline.close()
        player.destroy_node()
