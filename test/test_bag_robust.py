"""Bags as robots record them, and damaged ones: every message before the damage, said where.

The recordings are made here, in tmp dirs, the way rosbag2 writes them: MCAP through the ``mcap``
writer (profile ros2, ``ros2idl`` schemas with ``#include``, channel metadata with the type hash,
chunks compressed zstd / lz4, a hand-written ``metadata.yaml`` with an empty
``storage_identifier``), sqlite3 and file/message-compressed bags through the ``rosbags`` writer.
Each packet holds 20 ON and 20 OFF events, so the figures of any prefix of N packets are known.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cascade_sd_ros.core import bagio
from cascade_sd_ros.core.events import CD_DTYPE
from cascade_sd_ros.core.events.evt3 import Evt3Encoder
from cascade_sd_ros.tools.cli import main

mcap_writer = pytest.importorskip("mcap.writer")

STORE = bagio.typestore()
EVENTS, IMAGES = "/event_camera/events", "/camera/image_raw"
IMAGE = "sensor_msgs/msg/Image"
N_PACKETS, PER_PACKET, T0 = 120, 40, 1_700_000_000_000_000_000
SEP = "=" * 80 + "\n"

# What rosidl_adapter generates (msg -> idl), as rosbag2 stores it: the top type, then every
# included file, each under an "IDL: " line. rosbags 0.11.9 alone cannot parse the #include lines.
_IDL = {
    bagio.EVENT_PACKET: """// generated from rosidl_adapter/resource/msg.idl.em
// with input from event_camera_msgs/msg/EventPacket.msg
// generated code does not contain a copyright notice

#include "std_msgs/msg/Header.idl"

module event_camera_msgs {
  module msg {
    struct EventPacket {
      std_msgs::msg::Header header;

      uint32 height;

      uint32 width;

      uint64 seq;

      uint64 time_base;

      string encoding;

      boolean is_bigendian;

      sequence<uint8> events;
    };
  };
};
""",
    IMAGE: """// generated from rosidl_adapter/resource/msg.idl.em
// with input from sensor_msgs/msg/Image.msg
// generated code does not contain a copyright notice

#include "std_msgs/msg/Header.idl"

module sensor_msgs {
  module msg {
    @verbatim (language="comment", text=
      "This message contains an uncompressed image")
    struct Image {
      std_msgs::msg::Header header;

      uint32 height;

      uint32 width;

      string encoding;

      uint8 is_bigendian;

      uint32 step;

      sequence<uint8> data;
    };
  };
};
""",
    "std_msgs/msg/Header": """// generated from rosidl_adapter/resource/msg.idl.em
// with input from std_msgs/msg/Header.msg
// generated code does not contain a copyright notice

#include "builtin_interfaces/msg/Time.idl"

module std_msgs {
  module msg {
    struct Header {
      builtin_interfaces::msg::Time stamp;

      string frame_id;
    };
  };
};
""",
    "builtin_interfaces/msg/Time": """// generated from rosidl_adapter/resource/msg.idl.em
// with input from builtin_interfaces/msg/Time.msg
// generated code does not contain a copyright notice


module builtin_interfaces {
  module msg {
    struct Time {
      int32 sec;

      uint32 nanosec;
    };
  };
};
""",
}


def idl_schema(msgtype: str) -> str:
    deps = [msgtype, "std_msgs/msg/Header", "builtin_interfaces/msg/Time"]
    return "".join(f"{SEP}IDL: {name}\n{_IDL[name]}" for name in deps)


def _time(t_ns: int) -> Any:
    return STORE.types["builtin_interfaces/msg/Time"](sec=t_ns // 10**9, nanosec=t_ns % 10**9)


def recording(n_packets: int = N_PACKETS) -> list[tuple[str, str, int, bytes]]:
    """(topic, type, t_ns, CDR) in time order: EventPackets (evt3, 1 ms apart) and a frame every 10."""
    enc = Evt3Encoder()
    Header = STORE.types["std_msgs/msg/Header"]
    out = []
    for i in range(n_packets):
        t_ns = T0 + i * 1_000_000
        cd = np.zeros(PER_PACKET, CD_DTYPE)
        cd["x"], cd["y"] = np.arange(PER_PACKET) % 64, (i % 48)
        cd["p"] = np.arange(PER_PACKET) % 2
        cd["t"] = i * 1000 + np.arange(PER_PACKET) * 10
        msg = STORE.types[bagio.EVENT_PACKET](
            header=Header(stamp=_time(t_ns), frame_id="cam"),
            height=48,
            width=64,
            seq=i,
            time_base=0,
            encoding="evt3",
            is_bigendian=False,
            events=np.frombuffer(enc.encode(cd), np.uint8),
        )
        out.append((EVENTS, bagio.EVENT_PACKET, t_ns, bytes(STORE.serialize_cdr(msg, bagio.EVENT_PACKET))))
        if i % 10 == 5:
            img = STORE.types[IMAGE](
                header=Header(stamp=_time(t_ns), frame_id="cam"),
                height=4,
                width=4,
                encoding="rgb8",
                is_bigendian=0,
                step=12,
                data=np.full(48, i % 256, np.uint8),
            )
            out.append((IMAGES, IMAGE, t_ns + 1, bytes(STORE.serialize_cdr(img, IMAGE))))
    return out


def write_mcap(
    path: Path,
    records: list[tuple[str, str, int, bytes]],
    *,
    compression: str = "zstd",
    chunk_size: int = 4096,
    schema: str = "idl",
    digest: dict[str, str] | None = None,
    chunking: bool = True,
) -> None:
    """One MCAP file as rosbag2's mcap storage writes it (profile ros2, cdr, type hash in the channel)."""
    kinds = {
        "zstd": mcap_writer.CompressionType.ZSTD,
        "lz4": mcap_writer.CompressionType.LZ4,
        "none": mcap_writer.CompressionType.NONE,
    }
    with path.open("wb") as f:
        w = mcap_writer.Writer(f, chunk_size=chunk_size, compression=kinds[compression], use_chunking=chunking)
        w.start(profile="ros2", library="rosbag2")
        channels: dict[str, int] = {}
        for seq, (topic, msgtype, t_ns, raw) in enumerate(records):
            if topic not in channels:
                if schema == "idl":
                    sid = w.register_schema(msgtype, "ros2idl", idl_schema(msgtype).encode())
                elif schema == "garbled":  # an IDL cut in half: no parser takes it
                    sid = w.register_schema(msgtype, "ros2idl", idl_schema(msgtype)[:300].encode())
                else:
                    sid = w.register_schema(
                        msgtype, "ros2msg", STORE.generate_msgdef(msgtype, ros_version=2)[0].encode()
                    )
                hash_ = (digest or {}).get(msgtype, STORE.hash_rihs01(msgtype))
                channels[topic] = w.register_channel(
                    topic, "cdr", sid, {"offered_qos_profiles": "", "topic_type_hash": hash_}
                )
            w.add_message(channels[topic], t_ns, raw, t_ns, seq)
        w.finish()


def write_metadata(
    folder: Path, files: list[str], records: list[tuple[str, str, int, bytes]], storage_identifier: str = ""
) -> None:
    counts: dict[tuple[str, str], int] = {}
    for topic, msgtype, _t, _raw in records:
        counts[(topic, msgtype)] = counts.get((topic, msgtype), 0) + 1
    topics = "".join(
        f"    - topic_metadata:\n        name: {t}\n        type: {ty}\n        serialization_format: cdr\n"
        f"        offered_qos_profiles: ''\n        type_description_hash: {STORE.hash_rihs01(ty)}\n"
        f"      message_count: {n}\n"
        for (t, ty), n in counts.items()
    )
    listed = "".join(f"    - {name}\n" for name in files)
    (folder / "metadata.yaml").write_text(
        "rosbag2_bagfile_information:\n  version: 9\n"
        f"  storage_identifier: '{storage_identifier}'\n  duration:\n    nanoseconds: 120000000\n"
        f"  starting_time:\n    nanoseconds_since_epoch: {T0}\n  message_count: {len(records)}\n"
        f"  topics_with_message_count:\n{topics}  compression_format: ''\n  compression_mode: ''\n"
        f"  relative_file_paths:\n{listed}  files: []\n  custom_data: ~\n  ros_distro: kilted\n"
    )


def write_robot_bag(
    folder: Path,
    records: list[tuple[str, str, int, bytes]] | None = None,
    *,
    files: int = 1,
    renamed: bool = True,
    **kw: Any,
) -> Path:
    """A ``ros2 bag record`` folder: MCAP with ros2idl schemas, storage_identifier '', and the
    file renamed after recording (metadata.yaml still lists rosbag2's own name)."""
    records = recording() if records is None else records
    folder.mkdir()
    names = [f"rosbag2_2026_12_04-07_00_00_{k}.mcap" for k in range(files)]
    per = -(-len(records) // files)
    for k, name in enumerate(names):
        on_disk = f"robot_run_{k}.mcap" if renamed else name
        write_mcap(folder / on_disk, records[k * per : (k + 1) * per], **kw)
    write_metadata(folder, names, records)
    return folder


def write_sqlite_bag(
    folder: Path, records: list[tuple[str, str, int, bytes]] | None = None, *, mode: str = "", storage: str = "sqlite3"
) -> Path:
    from rosbags.rosbag2 import CompressionFormat, CompressionMode, StoragePlugin, Writer

    records = recording() if records is None else records
    plugin = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}[storage]
    w = Writer(folder, version=8, storage_plugin=plugin)
    if mode:
        w.set_compression(CompressionMode[mode.upper()], CompressionFormat.ZSTD)
    with w:
        conns: dict[str, Any] = {}
        for topic, msgtype, t_ns, raw in records:
            if topic not in conns:
                conns[topic] = w.add_connection(topic, msgtype, typestore=STORE)
            w.write(conns[topic], t_ns, raw)
    return folder


def stats(capsys: pytest.CaptureFixture[str], path: Path, code: int = 0) -> tuple[dict, str]:
    assert main(["events", "stats", str(path)]) == code
    out, err = capsys.readouterr()
    return json.loads(out), err


def expect(n_packets: int) -> dict[str, int]:
    return {"packets": n_packets, "on": n_packets * PER_PACKET // 2, "off": n_packets * PER_PACKET // 2}


def figures(d: dict) -> dict:
    return {k: v for k, v in d.items() if k not in ("decode_mev_s", "partial")}


def chunks(path: Path) -> list[Any]:
    """The chunk index of an intact MCAP file (mcap's own reader), in file order."""
    from mcap.reader import make_reader

    with path.open("rb") as f:
        summary = make_reader(f).get_summary()
    return sorted(summary.chunk_indexes, key=lambda c: c.chunk_start_offset)


def events_before(records: list[tuple[str, str, int, bytes]], t_ns: int) -> int:
    return sum(1 for topic, _ty, t, _r in records if topic == EVENTS and t < t_ns)


# ------------------------------------------------------------------------------ must show


def test_ros2idl_mcap_from_a_robot_counts_as_the_same_sqlite3_bag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = recording()
    robot = write_robot_bag(tmp_path / "robot", records)
    reference = write_sqlite_bag(tmp_path / "sqlite", records)
    got, err = stats(capsys, robot)
    want, _ = stats(capsys, reference)
    assert figures(got) == figures(want)
    assert {k: got[k] for k in ("packets", "on", "off")} == expect(N_PACKETS)
    assert "Traceback" not in err
    with bagio.open_bag(robot) as bag:  # the bag's own IDL definitions were used, not the fallback
        assert {c.topic: c.definition for c in bag.connections} == {EVENTS: "bag", IMAGES: "bag"}
        assert bag.damage == []


@pytest.mark.parametrize(
    "variant",
    [
        "lz4",
        "none",
        "no-chunks",
        "split",
        "bare-renamed",
        "ros2msg",
        "not-renamed",
        "garbled-metadata",
        "no-metadata",
        "mcap-file-zstd",
        "sqlite3-file-zstd",
        "sqlite3-message-zstd",
        "mcap-message-zstd",
    ],
)
def test_every_way_a_robot_records_gives_the_same_figures(
    variant: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = recording()
    bag = tmp_path / "bag"
    if variant in ("lz4", "none"):
        write_robot_bag(bag, records, compression=variant)
    elif variant == "no-chunks":
        write_robot_bag(bag, records, chunking=False)
    elif variant == "split":
        write_robot_bag(bag, records, files=3)
    elif variant == "ros2msg":
        write_robot_bag(bag, records, schema="msg")
    elif variant == "not-renamed":
        write_robot_bag(bag, records, renamed=False)
    elif variant == "bare-renamed":
        write_mcap(tmp_path / "recording.bin", records)
        bag = tmp_path / "recording.bin"
    elif variant in ("garbled-metadata", "no-metadata"):
        write_robot_bag(bag, records, renamed=False)
        if variant == "no-metadata":
            (bag / "metadata.yaml").unlink()
        else:
            (bag / "metadata.yaml").write_text("rosbag2_bagfile_information: [\x00: {{\n  - ]")
    else:
        storage, mode, _ = variant.split("-")
        write_sqlite_bag(bag, records, mode=mode, storage=storage)
    got, err = stats(capsys, bag)
    assert {k: got[k] for k in ("packets", "on", "off")} == expect(N_PACKETS)
    assert "partial" not in got and "Traceback" not in err


def test_an_unparseable_schema_falls_back_to_the_package_definition_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    bag = write_robot_bag(tmp_path / "bag", schema="garbled")
    with caplog.at_level(logging.WARNING, logger="cascade_sd_ros.core.bagio"):
        got, _ = stats(capsys, bag)
    assert {k: got[k] for k in ("packets", "on", "off")} == expect(N_PACKETS)
    notes = [r.getMessage() for r in caplog.records if bagio.EVENT_PACKET in r.getMessage()]
    assert len(notes) == 1 and "package's own definition" in notes[0] and "hash agrees" in notes[0]


def test_an_unparseable_schema_with_another_hash_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = "RIHS01_" + "0" * 64
    bag = write_robot_bag(tmp_path / "bag", schema="garbled", digest={bagio.EVENT_PACKET: bad})
    assert main(["events", "stats", str(bag)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and bad in err and "Traceback" not in err


def test_a_wrong_recorded_hash_with_a_good_definition_reads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    bag = write_robot_bag(tmp_path / "bag", digest={bagio.EVENT_PACKET: "RIHS01_" + "f" * 64})
    with caplog.at_level(logging.WARNING, logger="cascade_sd_ros.core.bagio"):
        got, _ = stats(capsys, bag)
    assert {k: got[k] for k in ("packets", "on", "off")} == expect(N_PACKETS)
    assert any("does not match" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------------------ damaged


@pytest.mark.parametrize("compression", ["zstd", "lz4", "none"])
def test_cut_at_a_chunk_reads_every_message_before_it(
    compression: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = recording()
    bag = write_robot_bag(tmp_path / "bag", records, compression=compression, renamed=False)
    (mcap,) = bag.glob("*.mcap")
    index = chunks(mcap)
    k = len(index) // 2
    data = mcap.read_bytes()
    mcap.write_bytes(data[: index[k].chunk_start_offset + 20])  # the recorder died inside chunk k's header
    got, err = stats(capsys, bag, code=3)
    assert {k_: got[k_] for k_ in ("packets", "on", "off")} == expect(
        events_before(records, index[k].message_start_time)
    )
    assert len(got["partial"]["damage"]) == 1 and "cut short" in got["partial"]["damage"][0]
    assert f"at byte {index[k].chunk_start_offset}" in got["partial"]["damage"][0]
    assert err.count("\n") == 1 and err.startswith("cascade-sd events: partial: ") and "Traceback" not in err


@pytest.mark.parametrize("compression", ["zstd", "lz4", "none"])
@pytest.mark.parametrize("fraction", [0.37, 0.81])
def test_cut_anywhere_gives_an_exact_prefix(compression: str, fraction: float, tmp_path: Path) -> None:
    records = recording()
    path = tmp_path / "x.mcap"
    write_mcap(path, records, compression=compression)
    index = chunks(path)
    data = path.read_bytes()
    cut = int(len(data) * fraction)
    path.write_bytes(data[:cut])
    report = bagio.ReadReport()
    got = [(t, ts) for t, _ty, ts, _m in bagio.iter_messages(path, report=report)]
    whole = [c for c in index if c.chunk_start_offset + c.chunk_length <= cut]
    complete = sum(1 for r in records if r[2] <= max((c.message_end_time for c in whole), default=-1))
    assert got == [(t, ts) for t, _ty, ts, _r in records[: len(got)]]  # nothing reordered, nothing skipped
    assert complete <= len(got) < len(records)
    assert len(report.damage) == 1 and report.damage[0].messages_before == len(got)
    inside = [c for c in index if c.chunk_start_offset + 600 < cut < c.chunk_start_offset + c.chunk_length]
    if compression == "none" and inside:  # an uncompressed chunk cut short still gives its whole records
        assert len(got) > complete
    with pytest.raises(bagio.BagError, match="cut short"):  # without a report: every message, then the error
        list(bagio.iter_messages(path))


@pytest.mark.parametrize("compression", ["zstd", "none"])
@pytest.mark.parametrize("indexed", [True, False], ids=["indexed", "cut-too"])
def test_a_corrupt_chunk_stops_reading_there_and_says_so(
    compression: str, indexed: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = recording()
    bag = write_robot_bag(tmp_path / "bag", records, compression=compression, renamed=False)
    (mcap,) = bag.glob("*.mcap")
    index = chunks(mcap)
    k = 3
    data = bytearray(mcap.read_bytes())
    middle = index[k].chunk_start_offset + index[k].chunk_length // 2
    data[middle : middle + 8] = bytes(b ^ 0x5A for b in data[middle : middle + 8])
    if not indexed:  # no summary either: the file is read record by record
        data = data[: index[-1].chunk_start_offset + 30]
    mcap.write_bytes(bytes(data))
    got, err = stats(capsys, bag, code=3)
    assert {k_: got[k_] for k_ in ("packets", "on", "off")} == expect(
        events_before(records, index[k].message_start_time)
    )
    (damage,) = got["partial"]["damage"]
    assert f"at byte {index[k].chunk_start_offset}" in damage and ("CRC" in damage or "corrupt" in damage)
    assert "Traceback" not in err and err.count("\n") == 1


def test_a_corrupt_record_is_skipped_and_counted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    records = recording()
    records[10] = (EVENTS, bagio.EVENT_PACKET, records[10][2], b"\x00\x01\x00\x00\xff\xff")
    got, err = stats(capsys, write_sqlite_bag(tmp_path / "bag", records), code=3)
    assert got["packets"] == N_PACKETS - 1 and got["partial"]["corrupt_records"] == {EVENTS: 1}
    assert "skipped 1 corrupt record(s) on /event_camera/events" in err and err.count("\n") == 1


def test_a_half_cut_db3_gives_the_messages_before_the_cut(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    records = recording(400)
    bag = write_sqlite_bag(tmp_path / "bag", records)
    (db3,) = bag.glob("*.db3")
    data = db3.read_bytes()
    db3.write_bytes(data[: len(data) // 2 + 123])
    report = bagio.ReadReport()
    got = [(t, ts) for t, _ty, ts, _m in bagio.iter_messages(bag, report=report)]
    assert 0 < len(got) < len(records) and got == [(t, ts) for t, _ty, ts, _r in records[: len(got)]]
    assert "cut short" in report.summary()
    out, err = stats(capsys, bag, code=3)
    assert out["packets"] == sum(1 for t, _ in got if t == EVENTS) and "partial" in err


@pytest.mark.parametrize("where", ["bare", "folder"])
def test_a_zero_byte_mcap_is_one_line(where: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if where == "bare":
        path = tmp_path / "x.mcap"
        path.write_bytes(b"")
    else:
        path = tmp_path / "bag"
        path.mkdir()
        (path / "a_0.mcap").write_bytes(b"")
        write_metadata(path, ["a_0.mcap"], recording(1))
    assert main(["events", "stats", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "empty file" in err


def test_an_empty_last_file_of_a_split_bag_is_partial(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    records = recording()
    bag = write_robot_bag(tmp_path / "bag", records, files=2, renamed=False)
    last = sorted(bag.glob("*.mcap"))[-1]
    last.write_bytes(b"")  # the recorder split, then was killed before writing a byte
    got, err = stats(capsys, bag, code=3)
    assert got["packets"] == sum(1 for r in records[: (len(records) + 1) // 2] if r[0] == EVENTS)
    assert "empty file" in err


def test_replay_scan_plays_what_was_read_of_a_cut_bag(tmp_path: Path) -> None:
    from cascade_sd_ros.tools.replay.source import iter_records, scan_bag

    records = recording()
    bag = write_robot_bag(tmp_path / "bag", records, renamed=False)
    (mcap,) = bag.glob("*.mcap")
    index = chunks(mcap)
    mcap.write_bytes(mcap.read_bytes()[: index[5].chunk_start_offset + 3])
    scan = scan_bag(bag)
    before = [r for r in records if r[2] < index[5].message_start_time]
    assert scan.storage_error is not None and "cut short" in scan.storage_error
    assert scan.topics[EVENTS].count == sum(1 for r in before if r[0] == EVENTS)
    assert scan.events[EVENTS]["packets"] == scan.topics[EVENTS].count
    assert [(r.topic, r.t_ns, r.raw) for r in iter_records(scan)] == [(t, ts, raw) for t, _ty, ts, raw in before]


def test_split_bag_files_are_read_in_order(tmp_path: Path) -> None:
    records = recording()
    bag = write_robot_bag(tmp_path / "bag", records, files=3)
    got = [(t, ts) for t, _ty, ts, _m in bagio.iter_messages(bag)]
    assert got == [(t, ts) for t, _ty, ts, _r in records]
    shutil.rmtree(bag)


def test_a_recorder_killed_in_wal_mode_loses_no_committed_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """rosbag2's resilient sqlite3 preset writes through a WAL; a killed recorder leaves it beside the .db3."""
    import sqlite3

    records = recording()
    bag = write_sqlite_bag(tmp_path / "bag", records[:60])
    (db3,) = bag.glob("*.db3")
    live = sqlite3.connect(db3)
    live.execute("PRAGMA journal_mode=WAL")
    live.execute("PRAGMA wal_autocheckpoint=0")
    topic_ids = dict(live.execute("SELECT name, id FROM topics"))
    live.executemany(
        "INSERT INTO messages (topic_id, timestamp, data) VALUES (?, ?, ?)",
        [(topic_ids[t], ts, raw) for t, _ty, ts, raw in records[60:]],
    )
    live.commit()
    killed = tmp_path / "killed"
    killed.mkdir()
    for f in bag.iterdir():  # what is on disk while the recorder still runs: db3, -wal, -shm
        shutil.copy(f, killed / f.name)
    live.close()
    assert (killed / f"{db3.name}-wal").stat().st_size > 0
    found = {p.name: p.read_bytes() for p in killed.iterdir()}
    got, _ = stats(capsys, killed)
    assert {k: got[k] for k in ("packets", "on", "off")} == expect(N_PACKETS)  # not only the first 60 records
    assert {p.name: p.read_bytes() for p in killed.iterdir()} == found  # the WAL replays in a copy


def test_replay_exits_3_on_a_damaged_bag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command's exit status from the scan's figures (the playback itself is test_replay_player's)."""
    from types import SimpleNamespace

    from cascade_sd_ros.tools import replay
    from cascade_sd_ros.tools.replay.source import scan_bag

    bag = write_robot_bag(tmp_path / "bag", renamed=False)
    (mcap,) = bag.glob("*.mcap")
    mcap.write_bytes(mcap.read_bytes()[: chunks(mcap)[4].chunk_start_offset + 5])

    def fake_run(settings: Any, *_: Any) -> Any:
        report = {"summary": {"rounds": 0}, "input": scan_bag(settings.bag).to_dict()}
        return SimpleNamespace(report=report, out_dir=settings.out_dir, output_bag=settings.out_dir / "output")

    monkeypatch.setattr(replay, "run_replay", fake_run)
    assert main(["replay", str(bag), "--out", str(tmp_path / "out")]) == 3
    err = capsys.readouterr().err
    assert "partial: " in err and "cut short" in err and "Traceback" not in err
