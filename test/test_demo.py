"""``cascade-sd demo``: argument errors exit 2; a short run prints captions equal to the verifier alone."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("rclpy")

from cascade_sd_ros.tools.cli import main  # noqa: E402

pytestmark = pytest.mark.ros


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--scenes", "0"], "positive integer"),
        (["--model", "bogus=tiny:0"], "ROLE=SOURCE"),
        (["--stages", "drafter,refiner", "--models", "tiny:0"], "must include verifier"),
        (["--drop-rate", "1.5", "--models", "tiny:0"], "drop-rate"),
        (["--models", "/nonexistent/zoo"], "does not exist"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc_info:
        code = main(["demo", *argv])
        raise SystemExit(code)
    assert exc_info.value.code == 2
    assert message in capsys.readouterr().err


def test_demo_json_on_tiny_models(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--scenes", "2", "--models", "tiny:0", "--json", "--seed", "3", "--fast"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["scenes"]) == 2
    for scene in out["scenes"]:
        assert set(scene) >= {"caption", "ground_truth", "verifier_alone", "equal", "acceptance", "latency_ms"}
        assert scene["equal"] is True and scene["caption"] == scene["verifier_alone"]
        assert scene["ground_truth"].startswith("a ")
        assert set(scene["acceptance"]) == {"drafter", "refiner", "drafter_by_refiner"}
        assert scene["latency_ms"] > 0
    assert out["speedup"] is not None and out["speedup"] > 0
    assert out["tokens_per_verifier_step"] >= 1.0
    assert out["executor"] == "multi-threaded"
    for scene in out["scenes"]:
        assert set(scene["verifier_ms"]) == {"prefill", "verify", "draft_wait", "alone"}


def test_demo_on_the_events_executor() -> None:
    # its own process, as `cascade-sd demo --executor events` runs: rclpy's experimental EventsExecutor
    # segfaulted pytest's process (output capture) now and then, never a plain one
    env = {**os.environ, "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    proc = subprocess.run(
        [sys.executable, "-m", "cascade_sd_ros.tools.cli", "demo", "--scenes", "1", "--models", "tiny:0", "--json",
         "--fast", "--executor", "events"], capture_output=True, text=True, timeout=300, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert out["executor"] == "events"
    assert out["scenes"][0]["equal"] is True


def test_pipeline_config_names_a_bad_executor() -> None:
    from cascade_sd_ros.tools.pipeline import PipelineConfig

    with pytest.raises(ValueError, match="executor must be one of"):
        PipelineConfig(executor="static")
    with pytest.raises(ValueError, match="use_sim_time needs executor='multi-threaded'"):
        PipelineConfig(use_sim_time=True, executor="events")
    assert PipelineConfig(use_sim_time=True).use_sim_time


def test_demo_text_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--scenes", "1", "--models", "tiny:0", "--stages", "refiner,verifier"]) == 0
    text = capsys.readouterr().out
    for needle in ("scene 0", "verified", "ground truth", "verifier alone", "[equal]", "acceptance", "speed-up"):
        assert needle in text


def test_demo_defaults_to_the_shipped_zoo(capsys: pytest.CaptureFixture[str]) -> None:
    from cascade_sd_ros.core.zoo import default_zoo_path

    assert (default_zoo_path() / "target" / "model.safetensors").is_file(), "the zoo ships with the package"
    assert main(["demo", "--scenes", "1", "--json", "--fast"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["models"] == "shipped zoo"
    (scene,) = out["scenes"]
    assert scene["equal"] is True and scene["caption"] and scene["caption"] == scene["verifier_alone"]
