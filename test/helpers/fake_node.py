"""A stand-in for an rclpy node where only its logger and context are used: every line logged, at
any level, kept; the context is ok until ``shut_down()``."""

from __future__ import annotations


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
