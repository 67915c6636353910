"""rclpy message classes by their rosbag2 type names (``pkg/msg/Name``)."""

from __future__ import annotations

import importlib
from functools import lru_cache


@lru_cache(maxsize=None)
def rclpy_type(msgtype: str) -> type:
    """The generated Python class of ``msgtype``, e.g. ``sensor_msgs/msg/Image``.

    Raises:
        ValueError: the name is not of the form ``pkg/msg/Name``.
        ImportError / AttributeError: no such generated interface in this environment.
    """
    parts = msgtype.split("/")
    if len(parts) != 3 or parts[1] != "msg" or not all(parts):
        raise ValueError(f"message type {msgtype!r} is not of the form pkg/msg/Name")
    pkg, _, name = parts
    module = importlib.import_module(f"{pkg}.msg")
    return getattr(module, name)
