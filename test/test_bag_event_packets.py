"""The real driver bag deserialises into rclpy's EventPacket, and its type hash is the built one's."""

from __future__ import annotations

from pathlib import Path

import pytest
import rclpy
from event_camera_msgs.msg import EventPacket
from rclpy.serialization import deserialize_message
from rosbags.rosbag2 import Reader

EXPECTED_HASH = "RIHS01_d6fa176260b1f37e5a40845305315e150a0f18191241eb64f407442aa29844aa"


@pytest.fixture
def built_type_hash(rclpy_context) -> str:
    """The hash the middleware announces for the EventPacket this environment built or installed."""
    node = rclpy.create_node("type_hash_probe", context=rclpy_context)
    try:
        node.create_publisher(EventPacket, "/type_hash_probe", 1)
        (info,) = node.get_publishers_info_by_topic("/type_hash_probe")
        return str(info.topic_type_hash)
    finally:
        node.destroy_node()


def test_built_event_packet_has_the_drivers_type_hash(built_type_hash: str) -> None:
    assert built_type_hash == EXPECTED_HASH


def test_real_bag_deserialises_into_rclpy_event_packets(evt3_bag: Path, built_type_hash: str) -> None:
    with Reader(evt3_bag) as reader:
        (conn,) = [c for c in reader.connections if c.topic == "/event_camera/events"]
        assert conn.msgtype == "event_camera_msgs/msg/EventPacket"
        assert conn.digest == built_type_hash == EXPECTED_HASH
        packets = [deserialize_message(raw, EventPacket) for _, _, raw in reader.messages([conn])]
    assert len(packets) == 517
    assert {p.encoding for p in packets} == {"evt3"}
    assert all(len(p.events) > 0 and len(p.events) % 2 == 0 for p in packets)
    assert len({(p.width, p.height) for p in packets}) == 1
    seqs = [p.seq for p in packets]
    assert seqs == sorted(seqs)
