"""bagio: typestore contents, both ways of finding .msg files, write -> read round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cascade_sd_ros.core import bagio


def _packet(store, seq: int, payload: bytes):  # noqa: ANN001, ANN202
    Header = store.types["std_msgs/msg/Header"]
    Time = store.types["builtin_interfaces/msg/Time"]
    EventPacket = store.types[bagio.EVENT_PACKET]
    return EventPacket(
        header=Header(stamp=Time(sec=5, nanosec=seq), frame_id="cam"),
        height=480,
        width=640,
        seq=seq,
        time_base=1000 * seq,
        encoding="evt3",
        is_bigendian=False,
        events=np.frombuffer(payload, np.uint8),
    )


def test_typestore_has_project_and_event_types() -> None:
    store = bagio.typestore()
    for name in (
        "sensor_msgs/msg/Image",
        bagio.EVENT_PACKET,
        "cascade_sd_ros/msg/DraftTokens",
        "cascade_sd_ros/msg/Commit",
        "cascade_sd_ros/msg/VerifiedCaption",
        "cascade_sd_ros/msg/SceneGroundTruth",
    ):
        assert name in store.types, name


def test_msg_dir_falls_back_to_ament_share(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pytest.importorskip("ament_index_python")
    import os
    import sys

    if not os.environ.get("AMENT_PREFIX_PATH"):
        monkeypatch.setenv("AMENT_PREFIX_PATH", sys.prefix)  # the venv is the install prefix here
    monkeypatch.setattr(bagio, "_SOURCE_MSG_DIRS", {bagio.PACKAGE: tmp_path, "event_camera_msgs": tmp_path})
    try:
        installed = bagio.msg_dir(bagio.PACKAGE)
    except bagio.BagError:
        pytest.skip("cascade_sd_ros is not installed in the ament index here")
    assert installed != tmp_path and (installed / "DraftTokens.msg").is_file()
    assert "cascade_sd_ros/msg/Commit" in bagio.typestore().types


def test_unknown_package_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(bagio.BagError, match="no_such_msgs"):
        bagio.msg_dir("no_such_msgs")


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_write_then_read_round_trip(tmp_path: Path, storage: str) -> None:
    store = bagio.typestore()
    payloads = [bytes([i, 0x20, 0x05, 0x60]) for i in range(3)]
    bag = tmp_path / "bag"
    written = bagio.write_bag(
        bag, [("/events", bagio.EVENT_PACKET, 10 + i, _packet(store, i, p)) for i, p in enumerate(payloads)], storage
    )
    assert written == 3
    assert bagio.topics(bag) == {"/events": bagio.EVENT_PACKET}
    got = list(bagio.iter_messages(bag, ["/events"]))
    assert [(t, ts) for t, _, ts, _ in got] == [("/events", 10), ("/events", 11), ("/events", 12)]
    assert [m.events.tobytes() for *_, m in got] == payloads
    assert [m.time_base for *_, m in got] == [0, 1000, 2000]
    # a single storage file opens too
    storage_file = next(p for p in bag.iterdir() if p.suffix in (".db3", ".mcap"))
    assert len(list(bagio.iter_messages(storage_file))) == 3


def test_bad_paths_and_topics(tmp_path: Path) -> None:
    with pytest.raises(bagio.BagError, match="no such bag"):
        bagio.open_reader(tmp_path / "missing")
    with pytest.raises(bagio.BagError, match="metadata.yaml"):
        bagio.open_reader(tmp_path).open()
    (tmp_path / "x.txt").write_text("no")
    with pytest.raises(bagio.BagError, match="neither MCAP nor sqlite3"):
        bagio.open_reader(tmp_path / "x.txt").open()
    with pytest.raises(bagio.BagError, match="storage"):
        bagio.write_bag(tmp_path / "b", [], storage="zip")


def test_missing_topic_names_what_exists(evt3_bag: Path) -> None:
    with pytest.raises(bagio.BagError, match="/event_camera/events"):
        next(bagio.iter_messages(evt3_bag, ["/nope"]))
