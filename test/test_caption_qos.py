"""A round's final caption survives the next round's burst of growing updates.

The verifier publishes one update per verifier step and the final, and the next round's updates
follow at once. A subscriber that did not take messages meanwhile (a loaded process: the demo's
verifier alone lost its first final this way, now and then) must still find every final in its queue.
"""

from __future__ import annotations

import time

import pytest

pytest.importorskip("rclpy")

import rclpy  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402

from cascade_sd_ros.core.names import TOPIC_CAPTION  # noqa: E402
from cascade_sd_ros.nodes.common import CAPTION_QOS  # noqa: E402
from cascade_sd_ros.tools.pipeline import CaptionCollector  # noqa: E402

pytestmark = pytest.mark.ros

TOKENS = 32  # the default max_new_tokens: one growing update per token, then the final


def _update(round_id: int, n: int, final: bool):  # noqa: ANN202 (a generated message type)
    from cascade_sd_ros.msg import VerifiedCaption

    msg = VerifiedCaption()
    msg.round_id = round_id
    msg.token_ids = list(range(n))
    msg.final = final
    return msg


def test_a_final_caption_outlives_the_next_rounds_updates(rclpy_context) -> None:
    from cascade_sd_ros.msg import VerifiedCaption

    sender = rclpy.create_node("caption_sender", context=rclpy_context)
    collector = CaptionCollector(context=rclpy_context)
    executor = SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(collector)
    try:
        pub = sender.create_publisher(VerifiedCaption, TOPIC_CAPTION, CAPTION_QOS)
        deadline = time.monotonic() + 10.0
        while pub.get_subscription_count() < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pub.get_subscription_count() == 1
        # three rounds back to back while the collector takes nothing (its executor does not spin)
        rounds = (1, 2, 3)
        for rid in rounds:
            for n in range(1, TOKENS):
                pub.publish(_update(rid, n, False))
            pub.publish(_update(rid, TOKENS, True))
        assert pub.wait_for_all_acked(rclpy.duration.Duration(seconds=10.0))
        deadline = time.monotonic() + 10.0
        while len(collector.finals) < len(rounds) and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
        assert sorted(collector.finals) == list(rounds)
        assert all(len(collector.finals[r].token_ids) == TOKENS for r in rounds)
        assert collector.growing == len(rounds) * (TOKENS - 1)  # no update lost either
    finally:
        executor.shutdown()
        collector.destroy_node()
        sender.destroy_node()
