"""A stand-in for an rclpy node where only its logger and context are used: every line logged, at
any level, kept; the context is ok until ``shut_down()``. ``WorkerNode`` also makes background
workers (a StageNode's, without the lifecycle), stopped by ``stop_workers()``."""

from __future__ import annotations

from typing import Any, Callable


class RecordingLogger:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def _keep(self, text: str) -> None:
        self.lines.append(text)

    info = warning = error = _keep


class RecordingContext:
    def __init__(self) -> None:
        self._ok = True

    def ok(self) -> bool:
        return self._ok

    def shut_down(self) -> None:
        self._ok = False


class RecordingNode:
    def __init__(self) -> None:
        self.logger = RecordingLogger()
        self.context = RecordingContext()

    def get_logger(self) -> RecordingLogger:
        return self.logger


class WorkerNode(RecordingNode):
    def __init__(self) -> None:
        super().__init__()
        self.workers: list[Any] = []

    def create_background_worker(self, callback: Callable[[], Any]) -> Any:
        from cascade_sd_ros.nodes.common import BackgroundWorker

        worker = BackgroundWorker(callback, "test_worker")
        worker.start()
        self.workers.append(worker)
        return worker

    def stop_workers(self) -> None:
        for worker in self.workers:
            worker.stop()
