"""Write a synthetic (or video-derived) stream to a rosbag2 with ground truth.

Topics (names are the defaults of the ROS 2 camera drivers and of this package's nodes):

=========================  ======================================  ==============================
topic                      type                                    content
=========================  ======================================  ==============================
``/event_camera/events``   ``event_camera_msgs/msg/EventPacket``   evt3 packets, driver-shaped
``/camera/image_raw``      ``sensor_msgs/msg/Image``               rgb8 frames, RGB clock stamps
``/camera/camera_info``    ``sensor_msgs/msg/CameraInfo``          one per frame, same stamp
``/ground_truth``          ``cascade_sd_ros/msg/SceneGroundTruth`` one per scene, at its start
=========================  ======================================  ==============================

Each message is logged at its header stamp (its receive time in a perfect recorder), and
messages of one scene are written in log-time order. Uses :func:`cascade_sd_ros.core.bagio.typestore`
so ``metadata.yaml`` carries each topic's type_description_hash.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer

from cascade_sd_ros.core import bagio

from .packets import EventPacketData
from .stream import RgbFrame, SceneData, SceneTruth

EVENTS_TOPIC = "/event_camera/events"
IMAGE_TOPIC = "/camera/image_raw"
CAMERA_INFO_TOPIC = "/camera/camera_info"
GROUND_TRUTH_TOPIC = "/ground_truth"
EVENT_FRAME_ID = "event_camera"
CAMERA_FRAME_ID = "camera"

IMAGE_TYPE = "sensor_msgs/msg/Image"
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
GROUND_TRUTH_TYPE = "cascade_sd_ros/msg/SceneGroundTruth"


class _Builder:
    """Message objects of one typestore."""

    def __init__(self) -> None:
        self.types = bagio.typestore().types

    def time(self, t_ns: int) -> Any:
        if t_ns < 0:
            raise ValueError(f"cannot stamp a negative time ({t_ns} ns)")
        sec, nanosec = divmod(int(t_ns), 1_000_000_000)
        return self.types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec)

    def header(self, t_ns: int, frame_id: str) -> Any:
        return self.types["std_msgs/msg/Header"](stamp=self.time(t_ns), frame_id=frame_id)

    def packet(self, p: EventPacketData) -> Any:
        return self.types[bagio.EVENT_PACKET](
            header=self.header(p.stamp_ns, EVENT_FRAME_ID),
            height=p.height,
            width=p.width,
            seq=p.seq,
            time_base=p.time_base,
            encoding=p.encoding,
            is_bigendian=False,
            events=np.frombuffer(p.payload, np.uint8),
        )

    def image(self, f: RgbFrame) -> Any:
        h, w, _ = f.image.shape
        return self.types[IMAGE_TYPE](
            header=self.header(f.stamp_ns, CAMERA_FRAME_ID),
            height=h,
            width=w,
            encoding="rgb8",
            is_bigendian=0,
            step=w * 3,
            data=np.ascontiguousarray(f.image).reshape(-1),
        )

    def camera_info(self, f: RgbFrame) -> Any:
        h, w, _ = f.image.shape
        # A plain pinhole with ~53 degree horizontal field of view and no distortion.
        fx = fy = float(w)
        cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
        return self.types[CAMERA_INFO_TYPE](
            header=self.header(f.stamp_ns, CAMERA_FRAME_ID),
            height=h,
            width=w,
            distortion_model="plumb_bob",
            d=np.zeros(5),
            k=np.array([fx, 0, cx, 0, fy, cy, 0, 0, 1], float),
            r=np.eye(3).reshape(-1),
            p=np.array([fx, 0, cx, 0, 0, fy, cy, 0, 0, 0, 1, 0], float),
            binning_x=0,
            binning_y=0,
            roi=self.types["sensor_msgs/msg/RegionOfInterest"](
                x_offset=0, y_offset=0, height=0, width=0, do_rectify=False
            ),
        )

    def truth(self, t: SceneTruth) -> Any:
        return self.types[GROUND_TRUTH_TYPE](
            header=self.header(t.start_ns, CAMERA_FRAME_ID),
            scene_index=t.scene_index,
            start=self.time(t.start_ns),
            end=self.time(t.end_ns),
            caption=t.caption,
            event_offset_ns=t.event_offset_ns,
            jitter_ms=float(t.jitter_ms),
            frames_dropped=t.frames_dropped,
            seed=t.seed,
        )


def scene_messages(scenes: Iterable[SceneData]) -> Iterator[tuple[str, str, int, Any]]:
    """(topic, msgtype, log time ns, message) for every message, scene by scene, in time order;
    each image is followed by its camera info."""
    build = _Builder()
    for scene in scenes:
        for t_ns, _kind, item in scene.timeline():  # the item's class says its kind
            if isinstance(item, SceneTruth):
                yield GROUND_TRUTH_TOPIC, GROUND_TRUTH_TYPE, t_ns, build.truth(item)
            elif isinstance(item, EventPacketData):
                yield EVENTS_TOPIC, bagio.EVENT_PACKET, t_ns, build.packet(item)
            else:
                yield IMAGE_TOPIC, IMAGE_TYPE, t_ns, build.image(item)
                yield CAMERA_INFO_TOPIC, CAMERA_INFO_TYPE, t_ns, build.camera_info(item)


TOPICS: dict[str, str] = {
    EVENTS_TOPIC: bagio.EVENT_PACKET,
    IMAGE_TOPIC: IMAGE_TYPE,
    CAMERA_INFO_TOPIC: CAMERA_INFO_TYPE,
    GROUND_TRUTH_TOPIC: GROUND_TRUTH_TYPE,
}
_STORAGES = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}


def write_scene_bag(path: str | Path, scenes: Iterable[SceneData], storage: str = "mcap") -> int:
    """Write ``scenes`` to a new rosbag2 folder ``path``; returns the message count.

    All four topics are declared up front, so the bag lists them even when one stays empty
    (e.g. only still scenes: no events).
    """
    if storage not in _STORAGES:
        raise ValueError(f"storage must be one of {sorted(_STORAGES)}, got {storage!r}")
    target = Path(path)
    if target.exists():
        raise ValueError(f"{target} exists; rosbag2 writes a new folder")
    store = bagio.typestore()
    count = 0
    with Writer(target, version=8, storage_plugin=_STORAGES[storage]) as writer:
        connections = {
            topic: writer.add_connection(topic, msgtype, typestore=store) for topic, msgtype in TOPICS.items()
        }
        for topic, msgtype, t_ns, msg in scene_messages(scenes):
            writer.write(connections[topic], int(t_ns), store.serialize_cdr(msg, msgtype))
            count += 1
    return count
