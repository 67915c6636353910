"""The verifier reports a disagreement heard over the wire: a drafter node started with half the
verifier's ``round_period`` names rounds off the verifier's schedule; the verifier counts them, logs
one ERROR with the numbers, and its diagnostics show it at ERROR level, while every draft is still
handled as before (the verifier's own rounds are captioned)."""

from __future__ import annotations

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

TINY = {"target": "tiny:0", "drafter": "tiny:0"}
N_SCENES = 3


def _stream() -> StreamConfig:
    return StreamConfig(
        n_scenes=N_SCENES + 1,  # + a lead-out scene
        height=64,
        width=64,
        seed=5,
        clocks=ClockModel(event_offset_ns=0),
        packets=PacketConfig(time_threshold_us=5000),
    )


def test_a_drafter_on_another_round_period_is_reported_as_an_error(rclpy_context: Any, capfd: Any) -> None:
    from diagnostic_msgs.msg import DiagnosticArray

    stream = _stream()
    rounds = scene_rounds(stream)
    params = rounds.params()
    half = rounds.schedule.period_ns // 2
    params["common"] = {**params["common"], "max_new_tokens": 4}
    params["event_drafter"] = {"round_period": half / 1e9, "round_phase": (rounds.schedule.phase_ns % half) / 1e9}
    params["video_verifier"] = {**params["video_verifier"], "draft_wait": 0.1, "max_wait": 0.5}
    config = PipelineConfig(models=TINY, stages=("drafter", "verifier"), params=params)
    pipeline = build_pipeline(config, rclpy_context, models=load_models(config))
    player = SensorPlayer(context=rclpy_context)
    statuses: list[Any] = []
    player.create_subscription(DiagnosticArray, "/diagnostics", lambda m: statuses.extend(m.status), 50)
    pipeline.executor.add_node(player)
    try:
        pipeline.start()
        assert player.wait_matched(config.image_subscribers(), config.event_subscribers())
        # in real time: played as fast as it goes, the verifier opens its next round before the drafter
        # drafts the one between, which then is abandoned unheard
        finals = play_scenes(pipeline, player, list(iter_scenes(stream)), rounds, timeout_s=60.0, rate=1.0)
        verifier = pipeline.verifier
        # every draft still handled: the verifier's own rounds are captioned
        assert all(m is not None for m in finals.values()), finals
        found = verifier.schedule_check.found
        assert set(found) == {"drafter"}, (found, verifier.drafts_in.values())
        assert (found["drafter"].period_ns, found["drafter"].phase_ns) == (half, rounds.schedule.phase_ns % half)
        assert verifier.schedule_check.off_schedule >= 2

        def reported() -> bool:
            return any(
                s.name.endswith("video_verifier") and s.level == b"\x02" and "round parameters disagree" in s.message
                for s in statuses
            )

        deadline = time.monotonic() + 10.0
        while not reported() and time.monotonic() < deadline:
            time.sleep(0.05)
        status = next(s for s in reversed(statuses) if "round parameters disagree" in s.message)
        values = {kv.key: kv.value for kv in status.values}
        assert f"every {half / 1e9:.3f} s" in status.message and int(values["rounds_off_schedule"]) >= 2
        assert f"round_period is {rounds.schedule.period_ns / 1e9:.3f} s" in values["schedule_disagreement"]
    finally:
        pipeline.close()
        player.destroy_node()
    logged = [line for line in capfd.readouterr().err.splitlines() if "round parameters disagree" in line]
    assert len(logged) == 1 and "[ERROR]" in logged[0], logged
