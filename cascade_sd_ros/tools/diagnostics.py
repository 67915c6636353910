"""The newest ``/diagnostics`` values of each stage node, heard in this process: how the demo's taps
and the replay read what only a node in another process knows (its input counts, and how many peers
each of its endpoints has matched)."""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["DiagnosticsListener"]


class DiagnosticsListener:
    """The newest ``/diagnostics`` values of each node, by its fully qualified name."""

    def __init__(self, node: Any) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        self._lock = threading.Lock()
        self._values: dict[str, dict[str, str]] = {}
        self._updates: dict[str, int] = {}
        node.create_subscription(
            DiagnosticArray,
            "/diagnostics",
            self._on_diagnostics,
            QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE),
        )

    def _on_diagnostics(self, msg: Any) -> None:
        with self._lock:
            for status in msg.status:
                self._values[status.hardware_id] = {kv.key: kv.value for kv in status.values}
                self._updates[status.hardware_id] = self._updates.get(status.hardware_id, 0) + 1

    def values(self, fqn: str) -> dict[str, str]:
        with self._lock:
            return dict(self._values.get(fqn, {}))

    def updates(self, fqn: str) -> int:
        with self._lock:
            return self._updates.get(fqn, 0)
