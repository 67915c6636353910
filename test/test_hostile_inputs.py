"""One bad message costs that message, never the node, the round or the host.

The cases come from a fuzzing session against the running nodes: random 4 MB evt3 payloads (their
garbage TIME_HIGH words spread one packet over days, and the offset estimator once sized an array
by that span: 23.8 GB), legal uint64 ``time_base`` values that overflowed int64, a corrupted time
word that shifted the event clock for good, and exceptions no callback expected.
"""

from __future__ import annotations

import resource
import time
import tracemalloc
from typing import Any

import numpy as np
import pytest
from helpers.fake_node import RecordingNode

from cascade_sd_ros.core.align.offsets import OffsetEstimator
from cascade_sd_ros.core.events import CD_DTYPE, encode_evt3, encode_libcaer, encode_mono

RNG = np.random.default_rng(7)


def _events(t0_us: int, n: int, span_us: int = 1000) -> np.ndarray:
    ev = np.zeros(n, CD_DTYPE)
    ev["x"] = RNG.integers(0, 64, n)
    ev["y"] = RNG.integers(0, 48, n)
    ev["p"] = RNG.integers(0, 2, n)
    ev["t"] = t0_us + np.sort(RNG.integers(0, span_us, n))
    ev["t"][0] = t0_us  # the packet's first event at t0, as its stamp says
    return ev


# ---------------------------------------------------------------------- offset estimator, bounded


def _feed_motion(est: OffsetEstimator, t0_ns: int, n_frames: int = 30) -> None:
    """Frames whose difference energy follows the event rate (bursts every few frames)."""
    period = 33_000_000
    for i in range(n_frames):
        t = t0_ns + i * period
        burst = 200 if i % 4 == 0 else 20
        est.add_events(np.sort(RNG.integers(t, t + period, burst)).astype(np.int64))
        est.add_frame(t, np.full((16, 16), (i * 37) % 255 if i % 4 == 0 else 0, np.uint8))


def test_a_packet_claiming_days_allocates_nothing_for_its_span() -> None:
    est = OffsetEstimator()
    _feed_motion(est, 10**12)
    tracemalloc.start()
    try:
        days = np.array([10**12, 10**12 + 3 * 86_400 * 10**9], np.int64)  # garbage TIME_HIGH words
        est.add_events(days)
        # a small packet far in the future (its own span is fine, its place is not)
        est.add_events(np.array([10**12 + 10**16, 10**12 + 10**16 + 5], np.int64))
        _feed_motion(est, 10**12 + 30 * 33_000_000)
        est.estimate()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20, f"estimate peaked at {peak / 2**20:.0f} MiB"


def test_a_frame_stamp_from_nowhere_restarts_the_difference() -> None:
    est = OffsetEstimator()
    _feed_motion(est, 10**12)
    est.add_frame(10**12 + 10**15, np.zeros((16, 16), np.uint8))  # days later
    _, peak = 0, 0
    tracemalloc.start()
    try:
        est.estimate()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert est.rejected == 1 and peak < 50 * 2**20


# ---------------------------------------------------------------------- event clock, int64-safe


def _packet(payload: bytes, stamp_ns: int, encoding: str = "evt3", time_base: int = 0) -> Any:
    pytest.importorskip("rclpy")
    from event_camera_msgs.msg import EventPacket

    from cascade_sd_ros.ros.stamps import ns_to_stamp

    msg = EventPacket()
    ns_to_stamp(stamp_ns, msg.header.stamp)
    msg.width, msg.height, msg.encoding, msg.seq, msg.time_base = 64, 48, encoding, 0, time_base
    msg.events = payload
    return msg


def test_event_times_outside_int64_are_refused_before_they_anchor_the_stream() -> None:
    pytest.importorskip("rclpy")
    from cascade_sd_ros.core.events import EventDecodeError
    from cascade_sd_ros.ros.events import EventStream, PacketError, packet_input

    stream = EventStream()
    payload, _ = encode_mono(_events(0, 20))
    for time_base in (2**64 - 1, 10**19, 2**63 - 1000):
        with pytest.raises((PacketError, EventDecodeError)):
            stream.decode(packet_input(_packet(payload, 10**9, "mono", time_base)))
    # nothing was anchored by them: the next good packet's first event lands on its own stamp
    good = stream.decode(packet_input(_packet(encode_evt3(_events(5_000, 30)), 2 * 10**9)))
    assert good.t_ns.min() >= 2 * 10**9 - 1_000_000 and good.t_ns[0] == 2 * 10**9


def test_a_packet_far_from_its_stamp_reanchors_instead_of_shifting_the_stream() -> None:
    pytest.importorskip("rclpy")
    from cascade_sd_ros.ros.events import EventStream, packet_input

    stream = EventStream()
    base = 10**12
    a, tb = encode_mono(_events(1_000, 30))
    first = stream.decode(packet_input(_packet(a, base, "mono", tb)))
    assert first.t_ns[0] == base
    # a sensor time 16.8 s ahead of what the stamp says (one flipped TIME_HIGH bit upstream)
    b, tb = encode_mono(_events(1_000 + 2_000 + 2**24, 30))
    shifted = stream.decode(packet_input(_packet(b, base + 2_000_000, "mono", tb)))
    assert stream.reanchors == 1 and shifted.t_ns[0] == base + 2_000_000
    c, tb = encode_mono(_events(1_000 + 3_000 + 2**24, 30))
    after = stream.decode(packet_input(_packet(c, base + 3_000_000 + 2_000, "mono", tb)))  # 2 µs jitter
    assert after.t_ns[0] == base + 3_000_000 and stream.reanchors == 1


def test_a_packet_spanning_more_than_a_second_never_reaches_the_event_clock_whole() -> None:
    """The decoder clips it to its densest second (counted), or the stream refuses it."""
    pytest.importorskip("rclpy")
    from cascade_sd_ros.ros.events import EventStream, PacketError, packet_input

    stream = EventStream()
    payload, tb = encode_libcaer(_events(0, 50, span_us=5_000_000))
    try:
        got = stream.decode(packet_input(_packet(payload, 10**9, "libcaer", tb)))
    except PacketError as exc:
        assert "span" in str(exc)
    else:
        assert 0 < len(got.t_ns) < 50 and int(got.t_ns.max() - got.t_ns.min()) <= 1_000_000_000


# ---------------------------------------------------------------------- the node's edge


def test_callback_guard_counts_logs_once_with_traceback_and_keeps_the_signature() -> None:
    pytest.importorskip("rclpy")
    import inspect

    from cascade_sd_ros.nodes.common import CallbackGuard

    node = RecordingNode()
    guard = CallbackGuard(node, throttle_s=3600)  # type: ignore[arg-type]
    seen: list[int] = []

    def on_msg(msg: int) -> None:
        if msg < 0:
            raise OverflowError("int too big to convert")
        seen.append(msg)

    wrapped = guard.wrap("events", on_msg)
    assert list(inspect.signature(wrapped).parameters) == ["msg"]  # rclpy picks message-only on this
    for m in (1, -1, -2, 3):
        wrapped(m)
    assert seen == [1, 3]
    assert guard.errors == {"events": 2}
    assert len(node.logger.lines) == 1 and "Traceback" in node.logger.lines[0]
    assert guard.values()["callback_errors"] == 2
    # Ctrl-C shut the context down under a running callback: stopping, not a bad message
    node.context.shut_down()
    wrapped(-3)
    assert guard.errors == {"events": 2} and len(node.logger.lines) == 1


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_hostile_packets_to_the_running_nodes_cost_nothing_but_themselves(rclpy_context: Any) -> None:
    """The fuzzing session's packets, published to the drafter (its offset estimator takes the events it
    decodes): alive, memory flat, every packet counted, captions still exact."""
    pytest.importorskip("rclpy")
    from cascade_sd_ros.core.spec.engine import target_only_greedy
    from cascade_sd_ros.core.stage_model import load_stage_model
    from cascade_sd_ros.core.synth.clocks import ClockModel
    from cascade_sd_ros.core.synth.packets import PacketConfig
    from cascade_sd_ros.core.synth.stream import StreamConfig, iter_scenes
    from cascade_sd_ros.tools.pipeline import (
        PipelineConfig,
        SensorPlayer,
        build_pipeline,
        load_models,
        play_scenes,
        scene_rounds,
    )

    tiny = {"target": "tiny:0", "refiner": "tiny:0", "drafter": "tiny:0"}
    stream = StreamConfig(
        n_scenes=3,
        height=64,
        width=64,
        seed=5,
        clocks=ClockModel(event_offset_ns=20_000_000),
        packets=PacketConfig(time_threshold_us=5000),
    )
    scenes = list(iter_scenes(stream))
    rounds = scene_rounds(stream)
    params = rounds.params()
    params["common"] = {**params["common"], "max_new_tokens": 6}
    params["video_verifier"] = {**params["video_verifier"], "draft_wait": 0.5, "max_wait": 1.0}
    # the offset estimator takes the drafter's decoded events: the 23.8 GB case
    params["event_drafter"] = {**params["event_drafter"], "estimate_offset": True}
    config = PipelineConfig(models=tiny, params=params)
    pipeline = build_pipeline(config, rclpy_context, models=load_models(config))
    player = SensorPlayer(context=rclpy_context)
    pipeline.start()
    try:
        assert player.wait_matched(config.image_subscribers(), config.event_subscribers())
        drafter, verifier = pipeline.stage_nodes["drafter"], pipeline.stage_nodes["verifier"]
        stamp = scenes[0].frames[0].stamp_ns
        rng = np.random.default_rng(0)
        hostile = [_packet(rng.integers(0, 256, 4 << 20, dtype=np.uint8).tobytes(), stamp) for _ in range(3)]
        mono, _ = encode_mono(_events(0, 10))
        caer, _ = encode_libcaer(_events(0, 10))
        hostile += [
            _packet(mono, stamp, "mono", 2**64 - 1),
            _packet(mono, stamp, "trigger", 2**64 - 1),
            _packet(caer, stamp, "libcaer", 2**64 - 1),
        ]
        flipped = bytearray(encode_evt3(_events(0, 200)))
        flipped[1] ^= 0x40  # a bit of the first word (TIME_HIGH in an encoder's first packet)
        hostile.append(_packet(bytes(flipped), stamp))
        rss0 = _rss_mb()
        for msg in hostile:
            player.pub_events.publish(msg)

        def handled(node: Any) -> int:
            return node.events_in.received

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and handled(drafter) < len(hostile):
            time.sleep(0.05)
        assert handled(drafter) == len(hostile)
        time.sleep(0.2)  # let the last callbacks return
        assert _rss_mb() - rss0 < 100, "the hostile packets grew the process by more than 100 MB"
        for node, stream in ((drafter, drafter._stream),):
            # the three hostile time_base packets are refused; the garbage payloads show as time-word
            # resyncs and events clipped to the span bound (decoding them is not an error)
            assert node.events_in.malformed >= 3, f"{node.get_name()}: the time_base packets were not counted"
            assert stream.time_resyncs + stream.events_dropped_span + node.events_in.malformed > 3
            assert not node.guard.errors, f"{node.get_name()}: a callback raised: {node.guard.last_error}"
        # the nodes keep serving, exactly: the packets' state did not poison the next scene's stream
        finals = play_scenes(pipeline, player, scenes, rounds, timeout_s=60)
        target = load_stage_model(tiny["target"], "target")
        for i, msg in sorted(finals.items()):
            assert msg is not None and msg.final, f"scene {i}: no final caption"
            inp = verifier.inputs[rounds.round_ids[i]]
            assert list(msg.token_ids) == target_only_greedy(
                target.adapter, target.context(inp.frames, inp.question), 6
            )
    finally:
        pipeline.close()
        player.destroy_node()
