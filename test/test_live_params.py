"""Parameters honest at run time: the live ones (prompt, gamma, draft_wait) take effect from the next
round or proposal; every other one is read-only and a change is refused with a reason."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("rclpy")

from rclpy.parameter import Parameter  # noqa: E402

from cascade_sd_ros.core.stage_model import load_stage_model  # noqa: E402

pytestmark = pytest.mark.ros


@pytest.fixture
def nodes(rclpy_context: Any):  # noqa: ANN201
    from cascade_sd_ros.nodes.event_drafter import EventDrafter
    from cascade_sd_ros.nodes.frame_refiner import FrameRefiner
    from cascade_sd_ros.nodes.video_verifier import VideoVerifier

    made = {
        "drafter": EventDrafter(context=rclpy_context, model=load_stage_model("tiny:0", "drafter")),
        "refiner": FrameRefiner(context=rclpy_context, model=load_stage_model("tiny:0", "refiner")),
        "verifier": VideoVerifier(context=rclpy_context, model=load_stage_model("tiny:0", "target")),
    }
    yield made
    for node in made.values():
        node.close()
        node.destroy_node()


def test_live_parameters_take_effect(nodes: dict[str, Any]) -> None:
    verifier, drafter, refiner = nodes["verifier"], nodes["drafter"], nodes["refiner"]
    (ok,) = verifier.set_parameters([Parameter("draft_wait", value=0.2)])
    assert ok.successful, ok.reason
    assert verifier.stage.draft_wait_s == 0.2 and verifier.stage.draft_wait_budget_s() == 0.2
    for node, gamma in ((drafter, 7), (refiner, 9)):
        (ok,) = node.set_parameters([Parameter("gamma", value=gamma)])
        assert ok.successful, ok.reason
        assert node.stage.gamma == gamma and node.stage.max_ahead == gamma * node.cfg.lookahead
    (ok,) = verifier.set_parameters([Parameter("prompt", value="what moves?")])
    assert ok.successful
    verifier.stage.open_round(123)
    assert verifier.stage.record(123).question == "what moves?"  # the next round asks it


def test_out_of_range_and_empty_values_are_refused(nodes: dict[str, Any]) -> None:
    drafter, verifier = nodes["drafter"], nodes["verifier"]
    (bad,) = drafter.set_parameters([Parameter("gamma", value=0)])
    assert not bad.successful and drafter.stage.gamma == drafter.cfg.gamma
    (bad,) = verifier.set_parameters([Parameter("prompt", value="   ")])
    assert not bad.successful and "empty" in bad.reason
    # the adapted draft length's ceiling below the start length: refused, both kept
    (bad,) = drafter.set_parameters([Parameter("gamma_max", value=drafter.cfg.gamma - 1)])
    assert not bad.successful and "exceed gamma_max" in bad.reason
    assert (drafter.stage.gamma, drafter.stage.gamma_max) == (drafter.cfg.gamma, drafter.cfg.gamma_max)
    (ok,) = drafter.set_parameters([Parameter("gamma_max", value=drafter.cfg.gamma)])
    assert ok.successful and drafter.stage.gamma_max == drafter.cfg.gamma  # fixed length from now on


@pytest.mark.parametrize(
    ("stage", "name", "value"),
    [
        ("verifier", "max_wait", 2.0),
        ("verifier", "mode", "pyramid"),
        ("drafter", "model", "tiny:3"),
        ("refiner", "lookahead", 4),
        ("verifier", "round_period", 1.0),
    ],
)
def test_a_parameter_that_cannot_change_live_is_refused_with_a_reason(
    nodes: dict[str, Any], stage: str, name: str, value: Any
) -> None:
    node = nodes[stage]
    before = node.get_parameter(name).value
    (res,) = node.set_parameters([Parameter(name, value=value)])
    assert not res.successful and "read-only" in res.reason
    assert node.get_parameter(name).value == before
