"""A parameter a stage node does not declare is never dropped without a word: one warning line per
parameter, naming it and, for a known move, where it lives now; the shipped yaml and the demo's
and replay's own overrides stay warning-free; the demo and replay refuse such parameters."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

pytest.importorskip("rclpy")

import rclpy  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402

from cascade_sd_ros.nodes.event_drafter import EventDrafter  # noqa: E402
from cascade_sd_ros.nodes.frame_refiner import FrameRefiner  # noqa: E402
from cascade_sd_ros.nodes.overrides import declared_by_node, ignored_override  # noqa: E402
from cascade_sd_ros.nodes.video_verifier import VideoVerifier  # noqa: E402
from cascade_sd_ros.ros.param_files import override_sources  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config" / "cascade.yaml"
NODES = {"event_drafter": EventDrafter, "frame_refiner": FrameRefiner, "video_verifier": VideoVerifier}
IDLE = Parameter("autostart", value=False)  # declared and checked, no model loaded


def _context(argv: list[str]) -> Iterator[Any]:
    context = rclpy.context.Context()
    rclpy.init(args=argv, context=context)
    try:
        yield context
    finally:
        if context.ok():
            rclpy.shutdown(context=context)


def _ignored(node: str, argv: list[str], overrides: list[Parameter] = (), namespace: str = "/cascade_sd") -> tuple:  # type: ignore[assignment]
    """The warnings of ``node`` started with this command line and constructor overrides."""
    for context in _context(argv):
        stage = NODES[node](context=context, parameter_overrides=[IDLE, *overrides], ros_args=argv, namespace=namespace)
        try:
            return stage.ignored_parameters
        finally:
            stage.destroy_node()
    raise AssertionError("unreachable")


def _params_file(tmp_path: Path, blocks: dict[str, dict[str, Any]]) -> str:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({key: {"ros__parameters": values} for key, values in blocks.items()}))
    return str(path)


# ------------------------------------------------------------------ where an override was written


def test_override_sources_match_what_rcl_hands_the_node(tmp_path: Path) -> None:
    """Every block rcl applies to /ns/video_verifier, and only those, named or shared as written."""
    path = tmp_path / "p.yaml"
    path.write_text(
        "/**:\n  ros__parameters:\n    shared: 1\n    nested: {a: 1, b: {c: 2}}\n"
        "/**/video_verifier:\n  ros__parameters:\n    by_name: 2\n"
        "/*/video_verifier:\n  ros__parameters:\n    one_level: 3\n"
        "ns:\n  video_verifier:\n    ros__parameters:\n    \n      nested_key: 4\n"
        "/ns/*:\n  ros__parameters:\n    any_in_ns: 5\n"
        "video_verifier:\n  ros__parameters:\n    relative_is_root: 6\n"
        "/other/video_verifier:\n  ros__parameters:\n    elsewhere: 7\n"
        "/**/event_drafter:\n  ros__parameters:\n    drafters: 8\n"
    )
    argv = ["node", "--ros-args", "--params-file", str(path), "-p", "rule:=9", "--", "not_ros", "-p", "x:=1"]
    sources = override_sources(argv, "/ns/video_verifier")
    assert sources.named == {"by_name", "one_level", "nested_key", "rule"}
    assert sources.shared == {"shared", "nested.a", "nested.b.c", "any_in_ns"}
    for context in _context(argv):
        node = Node(
            "video_verifier", namespace="/ns", context=context, automatically_declare_parameters_from_overrides=True
        )
        try:
            given = {n for n in node._parameters if n not in ("use_sim_time", "start_type_description_service")}
        finally:
            node.destroy_node()
    assert sources.all == given
    assert override_sources(["node"], "/ns/video_verifier").all == set()


# ------------------------------------------------------------------ the policy, line by line


@pytest.mark.parametrize(
    ("node", "name", "named", "expected"),
    [
        (
            "video_verifier",
            "estimate_offset",
            True,
            "parameter 'estimate_offset' is ignored here: it moved to event_drafter",
        ),
        (
            "video_verifier",
            "gamma",
            True,
            "video_verifier does not declare it (declared by event_drafter, frame_refiner)",
        ),
        ("frame_refiner", "estimate_offset", True, "frame_refiner does not declare it (declared by event_drafter)"),
        ("event_drafter", "round_perod", True, "'round_perod' (set for this node) is ignored: no stage"),
        ("event_drafter", "round_perod", False, "'round_perod' (set in a block every node reads) is ignored: no stage"),
        ("event_drafter", "mode", False, None),  # the refiner's and verifier's, in the shared block
        ("video_verifier", "estimate_offset", False, None),  # the drafter's, in the shared block
    ],
)
def test_each_ignored_override_is_one_line_naming_it(node: str, name: str, named: bool, expected: str | None) -> None:
    line = ignored_override(node, name, named, declared_by_node())
    if expected is None:
        assert line is None
    else:
        assert line is not None and expected in line and "\n" not in line


# ------------------------------------------------------------------ through the nodes


def test_a_user_yaml_setting_estimate_offset_on_the_verifier_is_said_not_ignored(tmp_path: Path) -> None:
    path = _params_file(tmp_path, {"/**/video_verifier": {"estimate_offset": False, "draft_wiat": 0.1}})
    (typo, moved) = _ignored("video_verifier", ["n", "--ros-args", "--params-file", path])  # sorted by name
    assert "'estimate_offset'" in moved and "moved to event_drafter" in moved
    assert "'draft_wiat'" in typo and "no stage" in typo
    # the same through a -p rule and through the constructor (the one-process tools, tests)
    (line,) = _ignored("video_verifier", ["n", "--ros-args", "-p", "estimate_offset:=false"])
    assert "moved to event_drafter" in line
    (line,) = _ignored("video_verifier", ["n"], [Parameter("estimate_offset", value=False)])
    assert "moved to event_drafter" in line
    # the verifier's block is no business of the drafter's; where estimate_offset lives now, it is taken
    assert _ignored("event_drafter", ["n", "--ros-args", "--params-file", path]) == ()
    drafter = _params_file(tmp_path, {"/**/event_drafter": {"estimate_offset": False}})
    assert _ignored("event_drafter", ["n", "--ros-args", "--params-file", drafter]) == ()


def test_a_shared_block_gives_each_stage_what_it_declares_and_catches_typos(tmp_path: Path) -> None:
    path = _params_file(tmp_path, {"/**": {"estimate_offset": False, "mode": "lossless-greedy", "round_perod": 1.0}})
    argv = ["n", "--ros-args", "--params-file", path]
    for node in NODES:
        (line,) = _ignored(node, argv)
        assert "'round_perod'" in line and "block every node reads" in line, node


@pytest.mark.parametrize("node", list(NODES))
def test_the_shipped_yaml_as_the_launch_loads_it_warns_of_nothing(node: str) -> None:
    """cascade.launch.py: config/cascade.yaml, then the node's own launch arguments (launch_ros writes
    them in a block named by the node's full name)."""
    launch_args = {"model": "", "device": "cpu", "dtype": "auto", "backend": "auto", "draft_ids": "auto"}
    launch_args.update({"use_sim_time": False, "autostart": False})
    if node != "event_drafter":
        launch_args["mode"] = "lossless-greedy"
    own = Path(os.environ.get("TMPDIR", "/tmp")) / f"launch_params_{os.getpid()}_{node}.yaml"
    own.write_text(yaml.safe_dump({f"/cascade_sd/{node}": {"ros__parameters": launch_args}}))
    try:
        argv = ["n", "--ros-args", "--params-file", str(CONFIG), "--params-file", str(own)]
        assert _ignored(node, argv) == ()
        # and in the root namespace, as `ros2 run ... --params-file config/cascade.yaml` starts it
        assert _ignored(node, ["n", "--ros-args", "--params-file", str(CONFIG)], namespace="") == ()
    finally:
        own.unlink()


def test_a_node_process_logs_the_warning_in_one_line(tmp_path: Path) -> None:
    """``python -m cascade_sd_ros.nodes.video_verifier --ros-args --params-file``: main() hands the
    command line to the node (a bad mode then ends it at configure, so the process is gone)."""
    path = _params_file(tmp_path, {"video_verifier": {"estimate_offset": False}})
    args = [sys.executable, "-m", "cascade_sd_ros.nodes.video_verifier", "--ros-args", "--params-file", path]
    args += ["-p", "model:=tiny:0", "-p", "mode:=bogus"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    (line,) = [ln for ln in done.stderr.splitlines() if "estimate_offset" in ln]
    assert "[WARN]" in line and "moved to event_drafter" in line


# ------------------------------------------------------------------ the demo's and replay's overrides


def _demo_params(oracle: bool) -> dict[str, dict[str, Any]]:
    """What run_demo hands PipelineConfig for the shipped zoo."""
    from cascade_sd_ros.core.synth.stream import StreamConfig
    from cascade_sd_ros.core.zoo import default_zoo_path
    from cascade_sd_ros.tools.pipeline import scene_rounds, trained_params, zoo_meta

    params = scene_rounds(StreamConfig(n_scenes=2)).params(oracle=oracle)
    for node in ("video_verifier", "frame_refiner"):
        params[node] = {**params[node], "mode": "lossless-greedy"}
    for node, values in trained_params(zoo_meta(str(default_zoo_path() / "target"))).items():
        params[node] = {**params.get(node, {}), **values}
    params["video_verifier"] = {**params["video_verifier"], "max_wait": 1.0, "use_drafts": "none"}
    return params


@pytest.mark.parametrize("oracle", [True, False])
def test_the_demos_overrides_reach_each_node_declared(tmp_path: Path, oracle: bool) -> None:
    """In one process (constructor overrides) and as stage processes (their params file): no warning."""
    from cascade_sd_ros.tools.pipeline import SENSOR_PARAMS, PipelineConfig
    from cascade_sd_ros.tools.stage_processes import params_file_body

    params = _demo_params(oracle)
    params["common"] = {**params["common"], **SENSOR_PARAMS, "mode": "lossless-greedy"}  # replay --fast, a shared mode
    config = PipelineConfig(params=params)
    for stage, node in (("drafter", "event_drafter"), ("refiner", "frame_refiner"), ("verifier", "video_verifier")):
        overrides = [p for p in config.overrides(stage) if p.name != "model"]
        assert _ignored(node, ["n"], overrides) == (), node
        body = params_file_body("/demo/cascade", node, {p.name: p.value for p in overrides})
        path = tmp_path / f"{node}.yaml"
        path.write_text(yaml.safe_dump(body))
        assert _ignored(node, ["n", "--ros-args", "--params-file", str(path)], namespace="/demo/cascade") == (), node
        # the stage process's file names its node: what the node does not declare is said
        body[f"/demo/cascade/{node}"]["ros__parameters"]["draft_wiat"] = 0.1
        path.write_text(yaml.safe_dump(body))
        argv = ["n", "--ros-args", "--params-file", str(path)]
        (line,) = _ignored(node, argv, namespace="/demo/cascade")
        assert "'draft_wiat' (set for this node)" in line


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            {"video_verifier": {"estimate_offset": False}},
            "video_verifier: parameter 'estimate_offset' is ignored here: it moved to event_drafter",
        ),
        ({"frame_refiner": {"draft_head": ""}}, "frame_refiner does not declare it (declared by video_verifier)"),
        ({"common": {"round_perod": 1.0}}, "common: parameter 'round_perod'"),
    ],
)
def test_the_demo_and_replay_refuse_a_parameter_no_node_would_take(params: dict, message: str) -> None:
    from cascade_sd_ros.tools.pipeline import PipelineConfig

    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        PipelineConfig(params=params)


def test_replay_param_refused_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``cascade-sd replay --param video_verifier:estimate_offset=false``: one line, exit 2."""
    from cascade_sd_ros.tools.cli import main

    code = main(["replay", str(tmp_path / "no_bag"), "--param", "video_verifier:estimate_offset=false"])
    err = capsys.readouterr().err
    assert code == 2 and "estimate_offset" in err and "moved to event_drafter" in err, err
