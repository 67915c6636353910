"""Child process for test_interfaces_ipc: publishes every sample until killed or a deadline."""

from __future__ import annotations

import sys
import time

import rclpy
from msg_samples import build_samples
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


def main() -> int:
    deadline = time.monotonic() + float(sys.argv[1] if len(sys.argv) > 1 else 30.0)
    rclpy.init()
    node = rclpy.create_node("sample_publisher")
    samples = build_samples()
    pubs = {topic: node.create_publisher(type(msg), f"/ipc_test/{topic}", QOS) for topic, msg in samples.items()}
    try:
        while time.monotonic() < deadline:
            for topic, msg in samples.items():
                pubs[topic].publish(msg)
            rclpy.spin_once(node, timeout_sec=0.2)
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
