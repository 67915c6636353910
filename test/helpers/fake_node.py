"""A stand-in for an rclpy node where only its logger is used: every line logged, at any level, kept."""

from __future__ import annotations


class RecordingLogger:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def _keep(self, text: str) -> None:
        self.lines.append(text)

    info = warning = error = _keep


class RecordingNode:
    def __init__(self) -> None:
        self.logger = RecordingLogger()

    def get_logger(self) -> RecordingLogger:
        return self.logger
