"""Recordings as packet streams: Metavision .raw files, bags with one or several event topics,
and the sensor -> ROS time mapping."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cascade_sd_ros.core import bagio
from cascade_sd_ros.core.events import CD_DTYPE, TRIGGER_DTYPE, EventDecodeError, encode_evt3
from cascade_sd_ros.core.events.evt2 import encode_evt2
from cascade_sd_ros.core.events.sources import iter_packets, read_raw_header
from cascade_sd_ros.core.events.stats import compute_stats, decode_all
from cascade_sd_ros.core.events.timing import SensorToRosClock, first_time_us


def _events(n: int = 3000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    cd = np.zeros(n, CD_DTYPE)
    cd["x"], cd["y"], cd["p"] = rng.integers(0, 320, n), rng.integers(0, 240, n), rng.integers(0, 2, n)
    cd["t"] = np.sort(rng.integers(0, 40_000_000, n))  # spans two EVT 3.0 wraps
    return cd


@pytest.mark.parametrize(
    ("header", "encode"),
    [
        (b"% camera_integrator_name Prophesee\n% evt 3.0\n% geometry 320x240\n% end\n", encode_evt3),
        (b"% format EVT3;height=240;width=320\n% end\n", encode_evt3),
        (b"% evt 2.0\n% Width 320\n% geometry 320x240\n", encode_evt2),
    ],
)
def test_raw_files_decode_whatever_the_chunking(tmp_path: Path, header: bytes, encode) -> None:  # noqa: ANN001
    cd = _events()
    trig = np.zeros(3, TRIGGER_DTYPE)
    trig["t"], trig["p"] = [5, 20_000_000, 39_000_000], [0, 1, 0]
    path = tmp_path / "rec.raw"
    path.write_bytes(header + encode(cd, trig))
    raw = read_raw_header(path)
    assert (raw.width, raw.height, raw.size) == (320, 240, len(header))
    assert raw.encoding == ("evt2" if encode is encode_evt2 else "evt3")
    got_cd, got_trig = decode_all(iter_packets(path))
    assert np.array_equal(got_cd, cd) and np.array_equal(got_trig, trig)
    from cascade_sd_ros.core.events import sources

    small = list(sources.iter_raw_packets(path, chunk_bytes=1001))  # odd size: cut to whole words
    assert len(small) > 5 and all(p.payload.size % (4 if raw.encoding == "evt2" else 2) == 0 for p in small)
    assert np.array_equal(decode_all(small)[0], cd)


def test_raw_file_without_format_needs_an_encoding(tmp_path: Path) -> None:
    path = tmp_path / "bare.raw"
    path.write_bytes(encode_evt3(_events(10)))
    with pytest.raises(EventDecodeError, match="--encoding"):
        list(iter_packets(path))
    assert decode_all(iter_packets(path, encoding="evt3"))[0].size == 10
    bad = tmp_path / "v4.raw"
    bad.write_bytes(b"% evt 4.0\n% end\n")
    with pytest.raises(EventDecodeError, match="evt 4.0"):
        list(iter_packets(bad))
    bad.write_bytes(b"% evt 4.0\n% end\n" + encode_evt3(_events(10)))
    assert decode_all(iter_packets(bad, encoding="evt3"))[0].size == 10  # header still skipped
    with pytest.raises(EventDecodeError, match="raw file"):
        list(iter_packets(path, topic="/x", encoding="evt3"))
    with pytest.raises(EventDecodeError, match="unknown event encoding"):
        list(iter_packets(path, encoding="evt9"))
    with pytest.raises(FileNotFoundError):
        list(iter_packets(tmp_path / "missing.raw"))


def _write_event_bag(path: Path, topics: list[str], cd: np.ndarray, per_packet: int = 20) -> None:
    """Packets of ``per_packet`` events: 20 of _events(2000) span 0.4 s on average (a packet spanning
    more than the decoders' 1 s bound would be clipped)."""
    store = bagio.typestore()
    Header, Time = store.types["std_msgs/msg/Header"], store.types["builtin_interfaces/msg/Time"]
    EventPacket = store.types[bagio.EVENT_PACKET]
    messages = []
    from cascade_sd_ros.core.events import Evt3Encoder

    for topic in topics:
        enc = Evt3Encoder()
        for i, start in enumerate(range(0, cd.size, per_packet)):
            chunk = cd[start : start + per_packet]
            stamp = 1_700_000_000_000_000_000 + int(chunk["t"][0]) * 1000 + 250_000  # 0.25 ms latency
            msg = EventPacket(
                header=Header(stamp=Time(sec=stamp // 10**9, nanosec=stamp % 10**9), frame_id="cam"),
                height=240,
                width=320,
                seq=i,
                time_base=0,
                encoding="evt3",
                is_bigendian=False,
                events=np.frombuffer(enc.encode(chunk), np.uint8),
            )
            messages.append((topic, bagio.EVENT_PACKET, stamp, msg))
    messages.sort(key=lambda m: m[2])
    bagio.write_bag(path, messages, storage="mcap")


def test_bag_topics_are_chosen_or_named(tmp_path: Path) -> None:
    cd = _events(2000)
    one, two = tmp_path / "one", tmp_path / "two"
    _write_event_bag(one, ["/cam/events"], cd)
    _write_event_bag(two, ["/left/events", "/right/events"], cd)
    stats = compute_stats(iter_packets(one))
    assert (stats.on + stats.off, stats.sum_t_us, stats.packets) == (2000, int(cd["t"].sum()), 100)
    assert (stats.events_dropped_span, stats.time_resyncs) == (0, 0)
    with pytest.raises(EventDecodeError, match="--topic"):
        list(iter_packets(two))
    assert np.array_equal(decode_all(iter_packets(two, topic="/right/events"))[0], cd)
    with pytest.raises(EventDecodeError, match="/left/events"):
        list(iter_packets(two, topic="/nope"))


def test_sensor_to_ros_clock_follows_header_stamps(tmp_path: Path) -> None:
    cd = _events(2000)
    bag = tmp_path / "bag"
    _write_event_bag(bag, ["/events"], cd)
    from cascade_sd_ros.core.events.stats import StreamDecoder

    stream, clock = StreamDecoder(), SensorToRosClock(window=8)
    for packet in iter_packets(bag):
        clock.update(packet.stamp_ns, first_time_us(stream.decode(packet)))
    expected = 1_700_000_000_000_000_000 + 250_000
    assert clock.offset_ns == expected
    assert clock.to_ros_ns(10) == expected + 10_000
    assert clock.to_ros_ns(np.array([0, 1])).tolist() == [expected, expected + 1000]
    assert clock.to_sensor_us(expected + 5_000_999) == 5000


def test_clock_keeps_the_least_delayed_offset_in_its_window() -> None:
    clock = SensorToRosClock(window=2)
    assert not clock.ready
    with pytest.raises(RuntimeError):
        _ = clock.offset_ns
    clock.update(1_000_000, 100)  # offset 900_000
    clock.update(2_000_000, 1_050)  # offset 950_000 (more latency)
    clock.update(3_000_000, None)  # no events: nothing learnt
    assert clock.offset_ns == 900_000
    clock.update(4_000_000, 3_050)  # the 900_000 pair leaves the window
    assert clock.offset_ns == 950_000
    clock.reset()
    assert not clock.ready
    with pytest.raises(ValueError, match="window"):
        SensorToRosClock(window=0)
