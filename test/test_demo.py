"""``cascade-sd demo``: argument errors exit 2; a short run prints captions equal to the verifier alone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

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
        (["--max-objects", "5", "--models", "tiny:0"], "--max-objects must be 1 to 4"),
        (["--models", "/nonexistent/zoo"], "does not exist"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc_info:
        code = main(["demo", *argv])
        raise SystemExit(code)
    assert exc_info.value.code == 2
    assert message in capsys.readouterr().err


def _check_scenes(out: dict, n: int) -> None:
    assert len(out["scenes"]) == n
    for scene in out["scenes"]:
        assert set(scene) >= {
            "caption",
            "ground_truth",
            "verifier_alone",
            "equal",
            "acceptance",
            "latency_ms",
            "alone_latency_ms",
            "bare_ms",
            "parts_ms",
        }
        # the verifier alone ran as its own node on the same scene: lossless means the same caption
        assert scene["caption"] is not None and scene["verifier_alone"] is not None
        assert scene["caption"] == scene["verifier_alone"] and scene["equal"] is True
        assert scene["ground_truth"].startswith("a ")
        assert set(scene["acceptance"]) == {"drafter", "refiner", "head"}  # head: the verifier's own (off here)
        assert scene["latency_ms"] > 0 and scene["alone_latency_ms"] > 0 and scene["bare_ms"] > 0
        parts = scene["parts_ms"]
        assert set(parts) == {"prefill", "verify", "draft_wait", "other"}
        # every measured part lies inside the caption latency: what is left ("other") is not negative
        assert all(v >= 0 for k, v in parts.items() if k != "other") and parts["other"] >= -1.0, parts
    cascade, alone = out["caption_latency_cascade"], out["caption_latency_alone"]
    assert cascade["n"] == alone["n"] == n
    assert out["speedup_p50"] == pytest.approx(alone["p50_ms"] / cascade["p50_ms"], rel=0.01)
    assert out["target_bare"]["n"] == n and out["alone_over_bare"] > 0
    # the floor decoded the verifier's own clip of every round: the same caption as the verifier alone
    assert out["bare_same_caption"] == f"{n}/{n}"
    assert out["tokens_per_verifier_step"] >= 1.0
    # each round says which clock offset picked its frames, where it came from and how far off it was
    for scene in out["scenes"]:
        assert scene["offset_source"] in ("initial", "estimate", "trigger", "pinned"), scene["offset_source"]
        assert scene["offset_error_ms"] == pytest.approx(scene["offset_ms"] - out["offset_ms"], abs=0.02)


def test_demo_json_on_tiny_models_in_separate_processes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--scenes", "2", "--models", "tiny:0", "--json", "--seed", "3", "--fast"]) == 0
    out = json.loads(capsys.readouterr().out)
    _check_scenes(out, 2)
    assert out["processes"] == "separate stage processes"


@pytest.mark.parametrize("processes", [[], ["--one-process"]], ids=["separate-processes", "one-process"])
def test_demo_measures_the_offset_by_default_and_the_alone_run_follows(
    processes: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """No oracle (the default): the stages start from offset 0, the cascade's drafter measures the
    scenes' 30 ms and the refiner and verifier apply it once confident; the verifier alone is told the
    offset of each cascade round and the bare floor decodes the same clip, so every scene's caption is
    equal before the estimate and after it. Sensor rate, so the estimate has the scenes' time."""
    # in one process every model and the estimate share one interpreter: on a loaded 2-core machine
    # the estimate took more than five scenes there (the full suite on a clean clone)
    n = 8 if processes else 5
    assert main(["demo", "--scenes", str(n), "--models", "tiny:0", "--json", "--seed", "1", *processes]) == 0
    out = json.loads(capsys.readouterr().out)
    _check_scenes(out, n)
    assert out["oracle_offset"] is False and out["offset_ms"] == 30.0
    scenes = out["scenes"]
    assert scenes[0]["offset_source"] == "initial" and scenes[0]["offset_ms"] == 0.0
    sources = [s["offset_source"] for s in scenes]
    # seed 1 moves from its first scene on: confident after two scenes here, four on a loaded machine
    assert "estimate" in sources, sources
    first = sources.index("estimate")
    assert all(src == "estimate" for src in sources[first:]), sources
    assert all(abs(s["offset_error_ms"]) <= 5.0 for s in scenes[first:]), [s["offset_error_ms"] for s in scenes]
    assert out["offset_status"].startswith(f"measured by the drafter, applied from scene {first} on")


def test_demo_json_in_one_process(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["demo", "--scenes", "2", "--models", "tiny:0", "--json", "--seed", "3", "--fast", "--one-process"]) == 0
    )
    out = json.loads(capsys.readouterr().out)
    _check_scenes(out, 2)
    assert out["processes"] == "one process" and out["executor"] == "multi-threaded"


def test_demo_on_the_events_executor() -> None:
    # its own process, as `cascade-sd demo --one-process --executor events` runs: rclpy's experimental
    # EventsExecutor segfaulted pytest's process (output capture) now and then, never a plain one
    env = {**os.environ, "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cascade_sd_ros.tools.cli",
            "demo",
            "--scenes",
            "1",
            "--models",
            "tiny:0",
            "--json",
            "--fast",
            "--one-process",
            "--executor",
            "events",
            "--oracle-offset",  # the executor is the point here, not the offset estimate
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert out["executor"] == "events"
    assert out["scenes"][0]["equal"] is True


def _stage_processes_of(marker: str) -> list[int]:
    """Pids of live processes whose command line names ``marker`` (the demo's namespace)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in cmd and "cascade_sd_ros.nodes." in cmd and state != "Z":
            pids.append(int(entry))
    return pids


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_demo_stopped_midway_leaves_no_stage_process(sig: int) -> None:
    """Ctrl-C stops the stage processes in order; a killed demo takes them with it (no orphans)."""
    env = {**os.environ, "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cascade_sd_ros.tools.cli", "demo", "--scenes", "3", "--models", "tiny:0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    marker = f"cascade_sd_demo_{proc.pid}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(_stage_processes_of(marker)) < 4 and proc.poll() is None:
            time.sleep(0.1)
        assert len(_stage_processes_of(marker)) == 4, "the demo did not start its four stage processes"
        proc.send_signal(sig)
        code = proc.wait(timeout=30)
        if sig == signal.SIGINT:
            assert code == 130 and "Traceback" not in proc.stderr.read()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and _stage_processes_of(marker):
            time.sleep(0.1)
        assert _stage_processes_of(marker) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in _stage_processes_of(marker):
            os.kill(pid, signal.SIGKILL)


def test_pipeline_config_names_a_bad_executor() -> None:
    from cascade_sd_ros.tools.pipeline import PipelineConfig

    with pytest.raises(ValueError, match="executor must be one of"):
        PipelineConfig(executor="static")
    with pytest.raises(ValueError, match="use_sim_time needs executor='multi-threaded'"):
        PipelineConfig(use_sim_time=True, executor="events")
    assert PipelineConfig(use_sim_time=True).use_sim_time


class _Floor:
    """A stand-in for the demo's bare floor: which round it was asked to time, with which offset."""

    def __init__(self) -> None:
        self.measured: list[tuple[int, int, int | None]] = []

    def measure(self, index: int, scenes: object, t_ns: int, offset_ns: int | None = None) -> None:
        self.measured.append((index, t_ns, offset_ns))


@pytest.mark.parametrize("relay", [True, False])
def test_one_process_passes_follow_the_plan(monkeypatch: pytest.MonkeyPatch, relay: bool) -> None:
    """One PassPlan carries what both passes play: the cascade's pass first, the floor of each scene
    with the offset the cascade's round used, then the verifier alone on the target only, told the
    cascade's offsets when the plan relays them."""
    from types import SimpleNamespace

    from cascade_sd_ros.tools import demo, pipeline

    passes: list[tuple[object, ...]] = []
    finals = {"cascade": {0: {"frame_offset_ms": 12.5}, 1: {"frame_offset_ms": float("nan")}}, "alone": {0: {}}}

    def run_pass(config, models, scenes, rounds, rate, timeout_s, follow=None):  # type: ignore[no-untyped-def]
        passes.append((config, sorted(models), len(scenes), rate, timeout_s, follow))
        return finals[config]

    monkeypatch.setattr(demo, "_run_pass", run_pass)
    monkeypatch.setattr(pipeline, "load_models", lambda config: {"target": "T", "refiner": "R", "drafter": "D"})
    floor = _Floor()
    plan = demo.PassPlan(
        config="cascade",
        alone_config="alone",
        scenes=("scene 0", "scene 1", "lead-out"),
        rounds=SimpleNamespace(round_ids=(100, 200, 300)),
        rate=2.0,
        timeout_s=5.0,
        bare=floor,  # type: ignore[arg-type]
        relay=relay,
        one_process=True,
    )
    cascade, alone = demo.run_passes(plan)
    assert (cascade, alone) == (finals["cascade"], finals["alone"])
    assert passes == [
        ("cascade", ["drafter", "refiner", "target"], 3, 2.0, 5.0, None),
        ("alone", ["target"], 3, 2.0, 5.0, finals["cascade"] if relay else None),
    ]
    # scene 1's round reported no offset: its floor cuts the clip with the pinned one
    assert floor.measured == [(0, 100, 12_500_000), (1, 200, None)]


def test_stage_process_passes_take_the_same_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from cascade_sd_ros.tools import demo

    seen: list[object] = []
    monkeypatch.setattr(demo, "_process_passes", lambda plan: seen.append(plan) or ({}, {}))
    plan = demo.PassPlan(
        config="cascade",
        alone_config="alone",
        scenes=(),
        rounds=SimpleNamespace(round_ids=()),
        rate=None,
        timeout_s=1.0,
        bare=_Floor(),  # type: ignore[arg-type]
        relay=False,
        one_process=False,
    )
    assert demo.run_passes(plan) == ({}, {}) and seen == [plan]
    with pytest.raises(AttributeError):
        plan.rate = 1.0  # type: ignore[misc]


def test_demo_text_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--scenes", "1", "--models", "tiny:0", "--stages", "refiner,verifier", "--fast"]) == 0
    text = capsys.readouterr().out
    for needle in (
        "scene 0",
        "verified",
        "ground truth",
        "verifier alone",
        "[equal]",
        "acceptance",
        "speed-up",
        "caption latency",
        "bare",
    ):
        assert needle in text, f"{needle!r} is not in the demo's output:\n{text}"  # whole: which verdict


def test_demo_defaults_to_the_shipped_zoo(capsys: pytest.CaptureFixture[str]) -> None:
    from cascade_sd_ros.core.zoo import default_zoo_path

    assert (default_zoo_path() / "target" / "model.safetensors").is_file(), "the zoo ships with the package"
    # the comparison run: the scenes' true offset, pinned
    assert main(["demo", "--scenes", "1", "--json", "--fast", "--oracle-offset"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["models"] == "shipped zoo" and out["oracle_offset"] is True
    assert out["scenes"][0]["offset_source"] == "pinned" and out["scenes"][0]["offset_error_ms"] == 0.0
    (scene,) = out["scenes"]
    assert scene["equal"] is True and scene["caption"] and scene["caption"] == scene["verifier_alone"]
