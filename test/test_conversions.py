"""Message conversions pinned to cv_bridge's documented behaviour; EventPacket input; stamps."""

from __future__ import annotations

import sys

import numpy as np
import pytest

pytest.importorskip("sensor_msgs.msg")

from builtin_interfaces.msg import Time  # noqa: E402
from event_camera_msgs.msg import EventPacket  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from cascade_sd_ros.core.events import CD_DTYPE, encode_evt3  # noqa: E402
from cascade_sd_ros.ros.events import EventStream, PacketError, packet_input  # noqa: E402
from cascade_sd_ros.ros.image import (  # noqa: E402
    ENCODINGS,
    ImageEncodingError,
    image_to_numpy,
    image_to_rgb8,
    numpy_to_image,
    stamped_rgb8,
)
from cascade_sd_ros.ros.stamps import StampError, ns_to_stamp, seconds_to_ns, stamp_to_ns  # noqa: E402

RNG = np.random.default_rng(7)


def _raw(encoding: str, h: int, w: int, payload: bytes, step: int, big: bool = False) -> Image:
    msg = Image()
    msg.height, msg.width, msg.encoding, msg.step, msg.is_bigendian = h, w, encoding, step, big
    msg.data = payload
    return msg


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_round_trip_every_encoding_like_cv2_to_imgmsg(encoding: str) -> None:
    dtype, channels, _ = ENCODINGS[encoding]
    shape = (5, 7) if channels == 1 else (5, 7, channels)
    px = RNG.integers(0, np.iinfo(dtype).max, shape, dtype=dtype)
    msg = numpy_to_image(px, encoding)
    assert msg.step == 7 * channels * dtype.itemsize  # unpadded rows
    assert msg.is_bigendian == (sys.byteorder == "big")
    back = image_to_numpy(msg)
    assert back.dtype == dtype and back.shape == shape and np.array_equal(back, px)


def test_colour_orders_to_rgb8() -> None:
    rgb = RNG.integers(0, 256, (3, 4, 3), dtype=np.uint8)
    alpha = RNG.integers(0, 256, (3, 4, 1), dtype=np.uint8)
    assert np.array_equal(image_to_rgb8(numpy_to_image(rgb, "rgb8")), rgb)
    assert np.array_equal(image_to_rgb8(numpy_to_image(rgb[:, :, ::-1].copy(), "bgr8")), rgb)
    assert np.array_equal(image_to_rgb8(numpy_to_image(np.concatenate([rgb, alpha], 2), "rgba8")), rgb)
    bgra = np.concatenate([rgb[:, :, ::-1], alpha], 2)
    assert np.array_equal(image_to_rgb8(numpy_to_image(bgra, "bgra8")), rgb)
    # 8UC3 has no colour order: cv_bridge converts it to a 3-channel colour encoding byte for byte
    assert np.array_equal(image_to_rgb8(numpy_to_image(rgb, "8UC3")), rgb)
    mono = rgb[:, :, 0].copy()
    assert np.array_equal(image_to_rgb8(numpy_to_image(mono, "mono8")), np.repeat(mono[:, :, None], 3, 2))


def test_cv_bridge_is_looked_for_once_per_process_not_per_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without cv_bridge each decode retried the import (a failed import is not cached): a search of
    sys.path on the disk for every frame of a 30 Hz camera."""
    from importlib.abc import MetaPathFinder

    from cascade_sd_ros.ros import image as image_mod

    looked: list[str] = []

    class Recorder(MetaPathFinder):
        def find_spec(self, name: str, path: object = None, target: object = None) -> None:
            if name.split(".")[0] == "cv_bridge":
                looked.append(name)
            return None

    monkeypatch.setattr(sys, "meta_path", [Recorder(), *sys.meta_path])
    monkeypatch.delitem(sys.modules, "cv_bridge", raising=False)
    image_mod._cv_bridge.cache_clear()
    msg = numpy_to_image(np.zeros((4, 6, 3), np.uint8), "bgr8")
    for _ in range(5):
        image_to_rgb8(msg)
    assert len(looked) <= 1
    image_mod._cv_bridge.cache_clear()


def test_mono16_scales_like_convert_to_and_honours_big_endian() -> None:
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    big = _raw("mono16", 1, 4, values.astype(">u2").tobytes(), 8, big=True)
    little = _raw("mono16", 1, 4, values.astype("<u2").tobytes(), 8, big=False)
    for msg in (big, little):
        assert np.array_equal(image_to_numpy(msg), values)
        assert image_to_rgb8(msg)[0, :, 0].tolist() == [0, 1, 128, 255]  # round(v * 255 / 65535)


def test_row_padding_is_dropped() -> None:
    px = RNG.integers(0, 256, (3, 4, 3), dtype=np.uint8)
    step = 4 * 3 + 5
    rows = [px[r].tobytes() + b"\xee" * 5 for r in range(3)]
    msg = _raw("rgb8", 3, 4, b"".join(rows), step)
    assert np.array_equal(image_to_numpy(msg), px)


@pytest.mark.parametrize(
    ("encoding", "h", "w", "nbytes", "step", "match"),
    [
        ("bayer_rggb8", 2, 2, 4, 2, "unsupported image encoding 'bayer_rggb8'"),
        ("32FC1", 2, 2, 16, 8, "unsupported image encoding '32FC1'"),
        ("rgb8", 2, 2, 12, 5, "shorter than a row"),
        ("rgb8", 2, 2, 6, 6, "needs 12"),
        ("mono16", 2, 2, 10, 5, "not a multiple"),
        ("mono8", 0, 2, 0, 2, "empty"),
    ],
)
def test_bad_images_are_rejected_with_a_clear_error(
    encoding: str, h: int, w: int, nbytes: int, step: int, match: str
) -> None:
    with pytest.raises(ImageEncodingError, match=match):
        image_to_rgb8(_raw(encoding, h, w, bytes(nbytes), step))


def test_a_frame_is_its_stamp_and_rgb8_pixels_or_the_reason_it_is_not() -> None:
    px = RNG.integers(0, 256, (3, 4, 3), dtype=np.uint8)
    msg = numpy_to_image(px[:, :, ::-1].copy(), "bgr8")
    ns_to_stamp(2_000_000_007, msg.header.stamp)
    t_ns, rgb = stamped_rgb8(msg)  # type: ignore[misc]
    assert t_ns == 2_000_000_007 and np.array_equal(rgb, px)
    # the reasons are the conversions' own one-line errors
    unset = numpy_to_image(px, "rgb8")
    assert stamped_rgb8(unset) == "stamp is unset (0 s, 0 ns)"
    bayer = _raw("bayer_rggb8", 2, 2, bytes(4), 2)
    ns_to_stamp(1, bayer.header.stamp)
    reason = stamped_rgb8(bayer)
    assert isinstance(reason, str) and reason.startswith("unsupported image encoding 'bayer_rggb8'")


def test_numpy_to_image_rejects_pixels_not_fitting_the_encoding() -> None:
    with pytest.raises(ImageEncodingError, match="do not fit"):
        numpy_to_image(np.zeros((2, 2, 3), np.uint16), "rgb8")
    with pytest.raises(ImageEncodingError, match="unsupported"):
        numpy_to_image(np.zeros((2, 2), np.uint8), "yuv422")


def test_stamps() -> None:
    assert stamp_to_ns(ns_to_stamp(1_500_000_123)) == 1_500_000_123
    for sec, nsec, match in ((0, 0, "unset"), (-1, 5, "negative"), (1, 1_000_000_000, "nanosec")):
        t = Time()
        t.sec, t.nanosec = sec, nsec
        with pytest.raises(StampError, match=match):
            stamp_to_ns(t)
    assert seconds_to_ns(0.25, "x") == 250_000_000
    with pytest.raises(ValueError, match="finite"):
        seconds_to_ns(float("nan"), "slop")


def _packet(events: np.ndarray, stamp_ns: int, encoder_state=None) -> EventPacket:  # noqa: ANN001
    msg = EventPacket()
    ns_to_stamp(stamp_ns, msg.header.stamp)
    msg.width, msg.height, msg.encoding, msg.seq = 64, 48, "evt3", 0
    msg.events = encode_evt3(events, state=encoder_state)
    return msg


def _events(t0_us: int, n: int) -> np.ndarray:
    ev = np.zeros(n, CD_DTYPE)
    ev["x"] = RNG.integers(0, 64, n)
    ev["y"] = RNG.integers(0, 48, n)
    ev["p"] = RNG.integers(0, 2, n)
    ev["t"] = t0_us + np.sort(RNG.integers(0, 1000, n))
    return ev


def test_event_stream_anchors_sensor_time_to_the_first_stamp() -> None:
    from cascade_sd_ros.core.events import Evt3Encoder

    enc = Evt3Encoder()
    stream = EventStream()
    first = _events(5_000, 50)
    second = _events(6_000, 30)
    stamp = 1_000_000_000_000
    a = stream.decode(packet_input(_packet(first, stamp, enc)))
    # the second packet's stamp carries host jitter (+3 ms): sensor spacing wins
    b = stream.decode(packet_input(_packet(second, stamp + 1_000_000 + 3_000_000, enc)))
    assert np.array_equal(a.cd, first) and np.array_equal(b.cd, second)
    assert a.t_ns[0] == stamp
    assert np.array_equal(b.t_ns, stamp + (second["t"] - first["t"][0]) * 1000)
    stream.reset()
    c = stream.decode(packet_input(_packet(_events(9_000, 5), 7_000_000_000_000)))
    assert c.t_ns[0] == 7_000_000_000_000


def test_malformed_packets_are_rejected() -> None:
    empty = _packet(_events(0, 3), 10**9)
    empty.events = b""
    with pytest.raises(PacketError, match="no event bytes"):
        packet_input(empty)
    flat = _packet(_events(0, 3), 10**9)
    flat.width = 0
    with pytest.raises(PacketError, match="geometry"):
        packet_input(flat)
    unset = _packet(_events(0, 3), 10**9)
    unset.header.stamp = Time()
    with pytest.raises(StampError):
        packet_input(unset)
