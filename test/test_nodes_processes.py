"""The three nodes as three separate processes (``python -m cascade_sd_ros.nodes.<name>``), talking
over DDS only: the same lossless captions as the verifier alone on the same clips."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("rclpy")

from helpers import processes as child_processes  # noqa: E402

from cascade_sd_ros.core.align import TimeBuffer, select_clip  # noqa: E402
from cascade_sd_ros.core.spec.engine import target_only_greedy  # noqa: E402
from cascade_sd_ros.core.stage_model import load_stage_model  # noqa: E402
from cascade_sd_ros.core.synth.clocks import ClockModel  # noqa: E402
from cascade_sd_ros.core.synth.packets import PacketConfig  # noqa: E402
from cascade_sd_ros.core.synth.stream import StreamConfig, iter_scenes  # noqa: E402
from cascade_sd_ros.tools.pipeline import CaptionCollector, SensorPlayer, scene_rounds  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
OFFSET_NS = 150_000_000
MAX_NEW = 8
N_SCENES = 10


def _args(node: str, rounds: Any) -> list[str]:
    common = {
        "model": "tiny:0",
        "round_period": rounds.period_s,
        "round_phase": rounds.phase_s,
        "max_new_tokens": MAX_NEW,
        "sensor_reliability": "reliable",
        "sensor_qos_depth": 2000,
    }
    if node != "event_drafter":
        common["frame_offset"] = OFFSET_NS / 1e9
    out = [sys.executable, "-m", f"cascade_sd_ros.nodes.{node}", "--ros-args"]
    for k, v in common.items():
        out += ["-p", f"{k}:={v}"]
    return out


@pytest.fixture
def processes(tmp_path: Path):  # noqa: ANN201
    procs: list[tuple[subprocess.Popen, Path]] = []

    def start(node: str, rounds: Any) -> None:
        log = tmp_path / f"{node}.log"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        with log.open("w") as out:  # the child has its own copy of the descriptor
            procs.append(
                (
                    child_processes.start(_args(node, rounds), cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT),
                    log,
                )
            )

    yield start
    # SIGINT to every node first (they shut down together), then wait; a node that does not stop
    # in time is killed with its process group.
    for p, _ in procs:
        if p.poll() is None:
            child_processes.signal_group(p.pid, signal.SIGINT)
    for p, _ in procs:
        child_processes.stop(p)


def test_three_processes_give_the_verifier_alone_captions(rclpy_context: Any, processes: Any) -> None:
    from rclpy.executors import MultiThreadedExecutor

    stream = StreamConfig(
        n_scenes=N_SCENES + 1,
        height=64,
        width=64,
        seed=3,
        clocks=ClockModel(event_offset_ns=OFFSET_NS, jitter_ms=3.0, drop_rate=0.1),
        packets=PacketConfig(time_threshold_us=5000),
    )
    rounds = scene_rounds(stream)
    for node in ("event_drafter", "frame_refiner", "video_verifier"):
        processes(node, rounds)
    scenes = list(iter_scenes(stream))
    target = load_stage_model("tiny:0", "target")

    player = SensorPlayer(context=rclpy_context)
    collector = CaptionCollector(context=rclpy_context)
    executor = MultiThreadedExecutor(context=rclpy_context)
    executor.add_node(collector)
    import threading

    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()
    try:
        assert player.wait_matched(2, 1, timeout_s=90), "the node processes did not come up"
        # the drafts/commit topics match between the processes themselves; give discovery a moment
        time.sleep(1.0)
        frames: TimeBuffer[Any] = TimeBuffer(10_000)
        finals: dict[int, Any] = {}
        for i, scene in enumerate(scenes):
            player.play(scene, event_offset_ns=OFFSET_NS)
            for f in scene.frames:
                frames.insert(f.stamp_ns, f.image)
            if i:
                got = collector.wait_final(round_id=rounds.round_ids[i - 1], timeout_s=60)
                assert got, f"scene {i - 1}: no caption"
                finals[i - 1] = collector.finals[rounds.round_ids[i - 1]]
        for i, msg in finals.items():
            end = rounds.round_ids[i] - OFFSET_NS  # the round's T on the RGB clock
            clip = select_clip(frames, end, 1_000_000_000, 8, 20_000_000)
            assert clip is not None
            import numpy as np

            ctx = target.context(np.stack(clip.items), "describe the scene")
            assert list(msg.token_ids) == target_only_greedy(target.adapter, ctx, MAX_NEW), f"scene {i}"
            assert msg.lossless and not msg.text == ""
    finally:
        executor.remove_node(collector)  # before shutdown: no callback may run on a destroyed node
        executor.shutdown(timeout_sec=5)
        spin.join(timeout=5)
        player.destroy_node()
        collector.destroy_node()
