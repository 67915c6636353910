"""What can be checked of launch/, config/ and rviz/ without launch_ros: the launch file compiles and
starts executables the package installs; the YAML sets only declared parameters, of the declared
type and within their ranges, and the stages agree on what they must share."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch" / "cascade.launch.py"
CONFIG = ROOT / "config" / "cascade.yaml"
RVIZ = ROOT / "rviz" / "cascade.rviz"
NODES = ("event_drafter", "frame_refiner", "video_verifier")
# Values every stage declaring them must agree on (rounds are named alike by all stages).
SHARED = ("prompt", "round_period", "round_phase", "max_new_tokens", "frame_offset", "mode")


def _declared(node: str) -> dict:
    import importlib

    module = importlib.import_module(f"cascade_sd_ros.nodes.{node}")
    return {p.name: p for p in module.PARAMS}


def _installed_executables() -> set[str]:
    text = (ROOT / "CMakeLists.txt").read_text()
    m = re.search(r"foreach\(node ([\w ]+)\)", text)
    assert m, "CMakeLists.txt no longer installs the node executables in a foreach(node ...)"
    assert "DESTINATION lib/${PROJECT_NAME}" in text
    return set(m.group(1).split())


def test_launch_file_compiles_and_starts_installed_executables() -> None:
    source = LAUNCH.read_text()
    tree = ast.parse(source, str(LAUNCH))
    compile(tree, str(LAUNCH), "exec")
    funcs = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert "generate_launch_description" in funcs
    # executables are the first argument of each _stage(...) call
    started = {
        c.args[0].value for c in ast.walk(tree) if isinstance(c, ast.Call) and getattr(c.func, "id", "") == "_stage"
    }
    assert started == set(NODES) and started <= _installed_executables()
    # every node gets the CLI-facing arguments the issue names
    args = {
        e.elts[0].value
        for e in ast.walk(tree)
        if isinstance(e, ast.Tuple) and len(e.elts) == 3 and isinstance(e.elts[0], ast.Constant)
    }
    for name in (
        "namespace",
        "device",
        "target_model",
        "refiner_model",
        "drafter_model",
        "use_sim_time",
        "run_drafter",
        "run_refiner",
        "run_verifier",
        "events_topic",
        "image_topic",
    ):
        assert name in args, f"launch argument {name} missing"
    for node in NODES:  # the launch overrides only parameters the nodes declare
        for key in ("model", "device", "dtype"):
            assert key in _declared(node)


ALL = "/**"  # the block every node reads: what the stages share, given once


def _yaml_blocks() -> dict[str, dict]:
    data = yaml.safe_load(CONFIG.read_text())
    out = {}
    for key, body in data.items():
        node = ALL if key == ALL else key.rsplit("/", 1)[-1]
        assert node == ALL or node in NODES, f"config section {key} names no node of this package"
        out[node] = body["ros__parameters"]
    assert set(out) - {ALL} == set(NODES)
    return out


def _yaml_params() -> dict[str, dict]:
    """What each node gets: the shared block's parameters it declares, then its own block."""
    blocks = _yaml_blocks()
    shared = blocks.get(ALL, {})
    return {n: {**{k: v for k, v in shared.items() if k in _declared(n)}, **blocks[n]} for n in NODES}


@pytest.mark.parametrize("node", NODES)
def test_yaml_sets_only_declared_parameters_with_declared_types_and_ranges(node: str) -> None:
    declared = _declared(node)
    for name in _yaml_blocks()[node]:
        assert name in declared, f"{node}: {name} in cascade.yaml is not declared by the node"
    for name, value in _yaml_params()[node].items():
        p = declared[name]
        assert type(value) is type(p.default), (
            f"{node}.{name}: YAML {type(value).__name__}, declared {type(p.default).__name__}"
        )
        if p.lo is not None:
            assert p.lo <= value <= p.hi, f"{node}.{name}={value} outside [{p.lo}, {p.hi}]"
        assert not p.read_only or name not in ("model", "device", "dtype"), (
            "models and devices come from launch arguments"
        )


def test_the_shared_block_sets_only_parameters_some_stage_declares() -> None:
    for name in _yaml_blocks().get(ALL, {}):
        assert any(name in _declared(n) for n in NODES), f"/**: {name} is declared by no stage"


def test_stages_agree_on_shared_parameters_and_yaml_sets_them_once() -> None:
    blocks, params = _yaml_blocks(), _yaml_params()
    for name in SHARED:
        holders = [n for n in NODES if name in _declared(n)]
        assert holders, name
        assert name in blocks[ALL], f"shared parameter {name} must be set once, in cascade.yaml's /** block"
        for n in holders:
            assert name not in blocks[n], f"{n}: shared parameter {name} is repeated in its own block"
            assert name in params[n]
        values = {repr(params[n][name]) for n in holders}
        assert len(values) == 1, f"stages disagree on {name}: {values}"


def test_yaml_defaults_match_the_nodes_defaults() -> None:
    """The file documents the defaults; a changed default must be changed in both places."""
    params = _yaml_params()
    for node in NODES:
        declared = _declared(node)
        for name, value in params[node].items():
            if node == "video_verifier" and name == "sensor_qos_depth":
                continue  # deliberately deeper than the node default for event bursts
            assert value == declared[name].default, (
                f"{node}.{name}: yaml {value!r} vs node default {declared[name].default!r}"
            )


def test_the_drafters_events_queue_holds_a_second_of_a_1khz_driver_and_the_others_keep_theirs() -> None:
    """The events subscription is sized to the sensor: 50 packets was 50 ms of a 1 kHz driver, and a
    paced replay of one lost 250-485 packets while the drafter drafted."""
    from cascade_sd_ros.nodes.common import COMMON_PARAMS, with_defaults

    assert _declared("event_drafter")["sensor_qos_depth"].default >= 1000
    assert _declared("frame_refiner")["sensor_qos_depth"].default == 50  # 30 Hz images: over a second
    bumped = with_defaults(COMMON_PARAMS, sensor_qos_depth=7)
    assert [p.name for p in bumped] == [p.name for p in COMMON_PARAMS]
    assert {p.name: p.default for p in bumped}["sensor_qos_depth"] == 7
    with pytest.raises(KeyError, match="sensor_qos_dept"):
        with_defaults(COMMON_PARAMS, sensor_qos_dept=7)


def test_rviz_config_shows_the_caption_topics() -> None:
    data = yaml.safe_load(RVIZ.read_text())
    displays = data["Visualization Manager"]["Displays"]
    topics = {d["Topic"]["Value"] for d in displays if "Topic" in d}
    assert "/cascade_sd/caption_marker" in topics and "/cascade_sd/caption_image" in topics
    classes = {d["Class"] for d in displays}
    assert {"rviz_default_plugins/Marker", "rviz_default_plugins/Image"} <= classes
