"""``sensor_msgs/Image`` <-> numpy, pinned to cv_bridge's documented behaviour.

cv_bridge is used when the robot's ROS has it; these machines don't, so the standard encodings are
also implemented here with numpy and behave as cv_bridge's ``imgmsg_to_cv2`` / ``cv2_to_imgmsg``:

* a row is ``step`` bytes, of which ``width * channels * itemsize`` are pixels (padding dropped);
* ``is_bigendian`` is honoured for 16-bit data (bytes swapped when it differs from this machine);
* ``passthrough`` keeps the message's layout: ``[H, W]`` for one channel, ``[H, W, C]`` otherwise;
* colour conversions follow cv_bridge's rules: ``8UC3`` carries no colour order, so it converts to a
  3-channel colour encoding byte for byte; 16 -> 8 bit scales by 255/65535 (rounded), as cv_bridge's
  ``convertTo`` does between ``CV_16U`` [0, 65535] and ``CV_8U`` [0, 255];
* anything else is rejected with :class:`ImageEncodingError` naming the encoding.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

import numpy as np

from cascade_sd_ros.ros.stamps import StampError, stamp_to_ns

# encoding -> (dtype, channels, colour order or None for "no colour information")
ENCODINGS: dict[str, tuple[np.dtype, int, str | None]] = {
    "rgb8": (np.dtype(np.uint8), 3, "rgb"),
    "bgr8": (np.dtype(np.uint8), 3, "bgr"),
    "rgba8": (np.dtype(np.uint8), 4, "rgba"),
    "bgra8": (np.dtype(np.uint8), 4, "bgra"),
    "mono8": (np.dtype(np.uint8), 1, "mono"),
    "mono16": (np.dtype(np.uint16), 1, "mono"),
    "8UC3": (np.dtype(np.uint8), 3, None),
}


class ImageEncodingError(ValueError):
    """An Image this module cannot read: unknown encoding, or data not matching its geometry."""


def _spec(encoding: str) -> tuple[np.dtype, int, str | None]:
    try:
        return ENCODINGS[encoding]
    except KeyError:
        raise ImageEncodingError(
            f"unsupported image encoding {encoding!r}; supported: {', '.join(ENCODINGS)}"
        ) from None


@functools.cache
def _cv_bridge() -> Any | None:
    """cv_bridge's converter where it is installed (a ROS distribution), else None. Asked once per
    process: a failed import is not cached by Python, and retrying it searched sys.path on the disk
    for every frame (2-3 % of a node's executor threads at 30 Hz)."""
    try:
        from cv_bridge import CvBridge  # type: ignore[import-not-found]
    except ImportError:
        return None
    return CvBridge()


def image_to_numpy(msg: Any) -> np.ndarray:
    """The pixels in the message's own encoding (cv_bridge ``passthrough``), native byte order, a copy."""
    dtype, channels, _ = _spec(msg.encoding)
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h == 0 or w == 0:
        raise ImageEncodingError(f"image is empty ({w}x{h})")
    row_bytes = w * channels * dtype.itemsize
    if step < row_bytes:
        raise ImageEncodingError(
            f"image step {step} is shorter than a row of {w} px {msg.encoding} ({row_bytes} bytes)"
        )
    if step % dtype.itemsize:
        raise ImageEncodingError(f"image step {step} is not a multiple of the {dtype.itemsize}-byte sample size")
    raw = msg.data
    data = np.asarray(raw, dtype=np.uint8) if isinstance(raw, list) else np.frombuffer(raw, dtype=np.uint8)
    if data.size < step * h:
        raise ImageEncodingError(
            f"image data has {data.size} bytes, {msg.encoding} {w}x{h} with step {step} needs {step * h}"
        )
    wire = dtype.newbyteorder(">" if msg.is_bigendian else "<")
    rows = data[: step * h].reshape(h, step)[:, :row_bytes]
    pixels = np.ascontiguousarray(rows).view(wire).reshape((h, w) if channels == 1 else (h, w, channels))
    return pixels.astype(dtype, copy=True)  # to native byte order


def image_to_rgb8(msg: Any) -> np.ndarray:
    """uint8 ``[H, W, 3]`` RGB, as cv_bridge's ``imgmsg_to_cv2(msg, "rgb8")``."""
    bridge = _cv_bridge()
    if bridge is not None:
        return np.asarray(bridge.imgmsg_to_cv2(msg, desired_encoding="rgb8"))
    _, _, order = _spec(msg.encoding)
    px = image_to_numpy(msg)
    if px.dtype == np.uint16:
        # cv_bridge: convertTo(CV_8U, 255/65535), which rounds and saturates
        px = np.clip(np.rint(px.astype(np.float64) * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
    if order == "mono":
        return np.repeat(px[:, :, None], 3, axis=2)
    if order in ("rgb", None):
        return np.ascontiguousarray(px[:, :, :3]) if px.shape[2] == 3 else px
    if order == "bgr":
        return np.ascontiguousarray(px[:, :, ::-1])
    if order == "rgba":
        return np.ascontiguousarray(px[:, :, :3])
    if order == "bgra":
        return np.ascontiguousarray(px[:, :, 2::-1])
    raise ImageEncodingError(f"no conversion from {msg.encoding!r} to rgb8")


def stamped_rgb8(msg: Any) -> tuple[int, np.ndarray] | str:
    """A camera frame as a node takes it: (stamp in ns, uint8 ``[H, W, 3]`` RGB), or why it cannot
    be taken (a bad stamp or an image :func:`image_to_rgb8` refuses), in one line for the input's
    malformed count. Every image input decodes through here, so all count the same frames as bad."""
    try:
        return stamp_to_ns(msg.header.stamp), image_to_rgb8(msg)
    except (StampError, ImageEncodingError) as exc:
        return str(exc)


def numpy_to_image(pixels: np.ndarray, encoding: str, header: Any | None = None) -> Any:
    """An Image holding ``pixels`` (layout as :func:`image_to_numpy` returns) in ``encoding``.

    As cv_bridge's ``cv2_to_imgmsg``: rows unpadded (``step = width * channels * itemsize``), data in
    this machine's byte order with ``is_bigendian`` set to match.
    """
    from sensor_msgs.msg import Image

    dtype, channels, _ = _spec(encoding)
    px = np.asarray(pixels)
    want_shape = 2 if channels == 1 else 3
    if px.dtype != dtype or px.ndim != want_shape or (channels > 1 and px.shape[2] != channels):
        raise ImageEncodingError(
            f"pixels {px.dtype} {px.shape} do not fit {encoding!r} ({dtype}, {channels} channel(s))"
        )
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(px.shape[0]), int(px.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = sys.byteorder == "big"
    msg.step = msg.width * channels * dtype.itemsize
    msg.data = np.ascontiguousarray(px).tobytes()
    return msg
