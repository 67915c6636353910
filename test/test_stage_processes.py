"""Stage nodes as processes: where they run, how they stop, and what a failed start says."""

from __future__ import annotations

import os
import time

import pytest

pytest.importorskip("rclpy")

from cascade_sd_ros.tools.pipeline import PipelineConfig  # noqa: E402
from cascade_sd_ros.tools.stage_processes import StageProcesses, cpu_plan  # noqa: E402

pytestmark = pytest.mark.ros


def test_the_verifier_gets_a_cpu_of_its_own() -> None:
    assert cpu_plan("verifier", {0, 1, 2, 3}) == {0}
    assert cpu_plan("drafter", {0, 1, 2, 3}) == {1, 2, 3}
    assert cpu_plan("refiner", {2, 5}) == {5}
    assert cpu_plan("verifier", {3}) is None  # one CPU: nothing to pin


def test_the_work_folder_it_made_goes_after_a_clean_run_and_stays_after_an_error(tmp_path) -> None:  # noqa: ANN001
    with StageProcesses() as procs:
        clean = procs.workdir
        (clean / "refiner.log").write_text("a log")
    assert not clean.exists()
    with pytest.raises(RuntimeError, match="stage failed"), StageProcesses() as procs:
        failed = procs.workdir
        raise RuntimeError("stage failed")  # its message may name the folder's logs: they stay
    assert failed.is_dir()
    failed.rmdir()
    with StageProcesses(workdir=tmp_path) as procs:  # the caller's folder is the caller's
        pass
    assert tmp_path.is_dir()


def test_a_stage_process_starts_serves_and_exits_0_on_sigint(tmp_path) -> None:  # noqa: ANN001
    from cascade_sd_ros.tools.pipeline import SensorPlayer, new_context

    config = PipelineConfig(models={"refiner": "tiny:0"}, stages=("refiner",))
    procs = StageProcesses(workdir=tmp_path)
    context = new_context()
    player = SensorPlayer(context=context, namespace="/stage_proc_test")
    try:
        (proc,) = procs.start(config, "/stage_proc_test", tag="t")
        mine = os.sched_getaffinity(0)
        if len(mine) >= 2:
            assert os.sched_getaffinity(proc.popen.pid) == cpu_plan("refiner", mine)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and player.pub_image.get_subscription_count() < 1:
            procs.check_alive()
            time.sleep(0.1)
        assert player.pub_image.get_subscription_count() == 1, "the refiner process never subscribed"
        codes = procs.stop()
        assert codes == {"/stage_proc_test/refiner": 0}, proc.log_tail()
        assert "Traceback" not in proc.log_path.read_text()
    finally:
        procs.stop()
        player.destroy_node()
        import rclpy

        rclpy.shutdown(context=context)


def test_a_stage_that_cannot_start_is_named_with_its_log(tmp_path) -> None:  # noqa: ANN001
    config = PipelineConfig(
        models={"drafter": "tiny:0"}, stages=("drafter",), params={"event_drafter": {"gamma": 0}}
    )  # out of range
    with StageProcesses(workdir=tmp_path) as procs:
        procs.start(config, "/stage_proc_bad", tag="b")
        deadline = time.monotonic() + 120
        with pytest.raises(RuntimeError, match="stage drafter .* exited with status") as info:
            while time.monotonic() < deadline:
                procs.check_alive()
                time.sleep(0.1)
        assert "gamma" in str(info.value)
