"""Lifecycle (managed) stage nodes, driven from a test client through their ``change_state`` and
``get_state`` services as ``ros2 lifecycle set`` would: with ``autostart:=false`` a verifier loads
nothing until configured, runs no round while inactive, captions once active, stops again on
deactivate and releases its model on cleanup; a configure that fails (a bad model folder) leaves it
unconfigured with a one-line reason, in its diagnostics too, and the node still serving."""

from __future__ import annotations

import gc
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

pytest.importorskip("rclpy")

from rclpy.parameter import Parameter  # noqa: E402

pytestmark = pytest.mark.ros

FRAME_NS = 50_000_000  # 20 Hz
PERIOD_S = 0.5  # a round every 10 frames


def _wait(cond: Callable[[], bool], timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


class Bench:
    """A verifier under test on a single-threaded executor of its own, as `spin_node` runs it, and a
    lifecycle client, a frame player and a caption collector on another, both spinning in the
    background. (One multi-threaded executor for all let a transition destroy the verifier's
    publishers while another executor thread was adding their QoS event handlers to a wait set: rclpy
    raised InvalidHandle there, the spin thread died and the cleanup call was never answered.)"""

    def __init__(self, context: Any, overrides: list[Parameter]) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from lifecycle_msgs.srv import ChangeState, GetState
        from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor

        from cascade_sd_ros.nodes.video_verifier import VideoVerifier
        from cascade_sd_ros.tools.pipeline import CaptionCollector, SensorPlayer

        self.verifier = VideoVerifier(context=context, parameter_overrides=overrides)
        self.client = Node_(context)
        name = self.verifier.get_fully_qualified_name()
        self.change = self.client.create_client(ChangeState, f"{name}/change_state")
        self.get = self.client.create_client(GetState, f"{name}/get_state")
        self.statuses: list[Any] = []
        self.client.create_subscription(DiagnosticArray, "/diagnostics", lambda m: self.statuses.extend(m.status), 50)
        self.player = SensorPlayer(context=context)
        self.collector = CaptionCollector(context=context)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.verifier)
        self.others = MultiThreadedExecutor(num_threads=3, context=context)
        for node in (self.client, self.player, self.collector):
            self.others.add_node(node)
        self._threads = [threading.Thread(target=e.spin, daemon=True) for e in (self.executor, self.others)]
        for thread in self._threads:
            thread.start()
        assert self.change.wait_for_service(timeout_sec=10.0) and self.get.wait_for_service(timeout_sec=10.0)
        self.next_ns = 1_000_000_000

    def _call(self, client: Any, request: Any) -> Any:
        future = client.call_async(request)
        assert _wait(future.done, 120.0), "lifecycle service call timed out"
        return future.result()

    def transition(self, label: str) -> bool:
        from lifecycle_msgs.srv import ChangeState

        request = ChangeState.Request()
        request.transition.label = label
        return bool(self._call(self.change, request).success)

    def state(self) -> str:
        from lifecycle_msgs.srv import GetState

        return str(self._call(self.get, GetState.Request()).current_state.label)

    def play(self, seconds: float) -> None:
        """Frames of ``seconds`` of a moving gradient, stamped on from where the last call ended."""
        from cascade_sd_ros.ros.image import numpy_to_image
        from cascade_sd_ros.ros.stamps import ns_to_stamp

        assert _wait(lambda: self.player.pub_image.get_subscription_count() >= 1, 10.0)
        for _ in range(int(seconds * 1e9 / FRAME_NS)):
            k = self.next_ns // FRAME_NS
            img = numpy_to_image(np.full((32, 32, 3), (k * 7) % 256, np.uint8), "rgb8")
            ns_to_stamp(self.next_ns, img.header.stamp)
            self.player.pub_image.publish(img)
            self.next_ns += FRAME_NS
            time.sleep(0.002)

    def close(self) -> None:
        self.verifier.close()
        for executor in (self.executor, self.others):
            executor.shutdown()
        for thread in self._threads:
            thread.join(5.0)
        for node in (self.verifier, self.client, self.player, self.collector):
            node.destroy_node()


def Node_(context: Any) -> Any:  # noqa: N802 - a plain rclpy node, named for what it is
    import rclpy

    return rclpy.create_node("lifecycle_client", context=context)


def _overrides(model: str) -> list[Parameter]:
    return [
        Parameter("autostart", value=False),
        Parameter("model", value=model),
        Parameter("round_period", value=PERIOD_S),
        Parameter("clip_duration", value=0.2),
        Parameter("max_new_tokens", value=4),
        Parameter("sensor_reliability", value="reliable"),
        Parameter("sensor_qos_depth", value=500),
        Parameter("draft_wait", value=0.0),
        Parameter("use_drafts", value="none"),
    ]


@pytest.fixture
def make_bench(rclpy_context: Any):  # noqa: ANN201
    made: list[Bench] = []

    def make(model: str) -> Bench:
        bench = Bench(rclpy_context, _overrides(model))
        made.append(bench)
        return bench

    yield make
    for bench in made:
        bench.close()


def test_configure_activate_deactivate_cleanup_through_the_lifecycle_services(make_bench: Any) -> None:
    bench = make_bench("tiny:0")
    verifier = bench.verifier
    assert bench.state() == "unconfigured" and "model" not in vars(verifier)  # nothing loaded yet

    assert bench.transition("configure")
    assert bench.state() == "inactive" and verifier.model is not None
    model_ref = weakref.ref(verifier.model)
    # inactive: frames over four round boundaries arrive and are dropped; no round opens, no caption
    bench.play(2.0)
    assert _wait(lambda: verifier.inputs_inactive >= 30)
    assert verifier.stage.snapshot()["rounds_opened"] == 0 and not bench.collector.finals
    assert not verifier.stage.running

    assert bench.transition("activate")
    assert bench.state() == "active" and verifier.stage.running
    # its diagnostics say which inputs and outputs have peers: the player's images, the collector
    assert _wait(
        lambda: (
            verifier.matched_values().get("matched_publishers.image", 0) >= 1
            and verifier.matched_values().get("matched_subscribers.caption", 0) >= 1
        )
    ), verifier.matched_values()
    assert verifier.matched_values()["matched_publishers.prompt"] == 0  # nobody asks in this bench
    bench.play(2.0)
    assert bench.collector.wait_final(count=1, timeout_s=60.0), "no caption after activate"
    assert all(len(m.token_ids) >= 1 for m in bench.collector.finals.values())

    assert bench.transition("deactivate")
    assert bench.state() == "inactive" and not verifier.stage.running
    opened = verifier.stage.snapshot()["rounds_opened"]
    finals = len(bench.collector.finals)
    dropped = verifier.inputs_inactive
    bench.play(2.0)
    assert _wait(lambda: verifier.inputs_inactive >= dropped + 30)
    assert verifier.stage.snapshot()["rounds_opened"] == opened and len(bench.collector.finals) == finals

    assert bench.transition("cleanup")
    assert bench.state() == "unconfigured"
    assert "stage" not in vars(verifier) and "model" not in vars(verifier)
    assert verifier.matched_values() == {}  # its inputs and outputs are gone
    assert not [t for t in threading.enumerate() if t.name.startswith("video_verifier_") and t.is_alive()]
    gc.collect()
    assert model_ref() is None, "cleanup left the model alive"
    # and it comes back: configure + activate again, and it captions again
    assert bench.transition("configure") and bench.transition("activate")
    before = len(bench.collector.finals)
    bench.play(2.0)
    assert bench.collector.wait_final(count=before + 1, timeout_s=60.0)
    # shutdown from active: the worker stops and the model goes, as on cleanup
    model_ref = weakref.ref(verifier.model)
    stage = verifier.stage
    assert bench.transition("shutdown")
    assert bench.state() == "finalized" and not stage.running and "model" not in vars(verifier)
    del stage
    gc.collect()
    assert model_ref() is None, "shutdown left the model alive"


def test_a_failing_configure_leaves_the_node_unconfigured_with_a_one_line_reason(
    make_bench: Any, tmp_path: Path
) -> None:
    missing = tmp_path / "no_such_model"
    bench = make_bench(str(missing))
    assert not bench.transition("configure")
    assert bench.state() == "unconfigured"  # not errored out, not a dead process: it answers

    def reported() -> bool:
        return any(s.level == b"\x02" and s.message.startswith("configure failed:") for s in bench.statuses)

    assert _wait(reported, 10.0), [s.message for s in bench.statuses]
    status = next(s for s in bench.statuses if s.message.startswith("configure failed:"))
    assert "\n" not in status.message and str(missing) in status.message, status.message
    values = {kv.key: kv.value for kv in status.values}
    assert values["lifecycle_state"] == "unconfigured"
    assert not bench.transition("activate")  # nothing to activate
    assert bench.state() == "unconfigured"


def test_autostart_is_the_default_and_a_node_reports_ready_only_once_warmed_up(rclpy_context: Any) -> None:
    from cascade_sd_ros.core.stage_model import load_stage_model
    from cascade_sd_ros.nodes.event_drafter import EventDrafter

    node = EventDrafter(context=rclpy_context, model=load_stage_model("tiny:0", "drafter"))
    try:
        assert node.lifecycle_state == "active" and node.stage.running
    finally:
        node.close()
        node.destroy_node()


def test_the_drafters_offset_timer_is_made_by_configure_and_dropped_by_cleanup(rclpy_context: Any) -> None:
    """The background worker (the drafter's offset estimate, off its executor) lives from configure to
    cleanup, like everything configure makes."""
    from cascade_sd_ros.nodes.event_drafter import EventDrafter

    drafter = EventDrafter(
        context=rclpy_context,
        parameter_overrides=[Parameter("autostart", value=False), Parameter("model", value="tiny:0")],
    )
    try:
        assert not any(t.name == "event_drafter_update_offset" for t in threading.enumerate())
        drafter.trigger_configure()
        assert any(t.name == "event_drafter_update_offset" and t.is_alive() for t in threading.enumerate())
        drafter.trigger_cleanup()
        assert _wait(lambda: not any(t.name == "event_drafter_update_offset" for t in threading.enumerate()), 5.0)
    finally:
        drafter.close()
        drafter.destroy_node()
