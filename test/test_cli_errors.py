"""Every ``cascade-sd`` command on a table of bad inputs: one line on stderr, no traceback, non-zero.

Bad paths, empty and garbage files, unknown types, bad model folders, bad parameters. Each case
fails at argument or validation time: no ROS node starts and no training runs. The table runs
in-process (``main(argv)``); a few cases also run as real processes, and ``--debug`` shows the
traceback there.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cascade_sd_ros.core import bagio
from cascade_sd_ros.tools.cli import main


@pytest.fixture(scope="module")
def bad(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Bad inputs of every kind, and one good bag to give bad parameters with."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    from cascade_sd_ros.core.zoo import default_zoo_path

    root = tmp_path_factory.mktemp("bad")
    (root / "empty.mcap").write_bytes(b"")
    (root / "empty.mp4").write_bytes(b"")
    (root / "junk.mcap").write_bytes(b"this is not a recording\n" * 10)
    (root / "empty_dir").mkdir()
    garbled = root / "garbled_metadata"
    garbled.mkdir()
    (garbled / "metadata.yaml").write_text("rosbag2_bagfile_information: [\x00: {{\n")
    store = bagio.typestore()
    header = store.types["std_msgs/msg/Header"](
        stamp=store.types["builtin_interfaces/msg/Time"](sec=1, nanosec=0), frame_id="cam"
    )
    packet = store.types[bagio.EVENT_PACKET](
        header=header,
        height=4,
        width=4,
        seq=0,
        time_base=0,
        encoding="evt3",
        is_bigendian=False,
        events=np.zeros(0, np.uint8),
    )
    bagio.write_bag(root / "good_bag", [("/event_camera/events", bagio.EVENT_PACKET, 10**9, packet)], storage="mcap")
    other = get_typestore(Stores.EMPTY)  # a bag of a type nobody here knows
    other.register(get_types_from_msg("int32 value", "mystery_msgs/msg/Thing"))
    with Writer(root / "unknown_type_bag", version=8, storage_plugin=StoragePlugin.SQLITE3) as w:
        conn = w.add_connection("/mystery", "mystery_msgs/msg/Thing", typestore=other)
        w.write(conn, 1, b"\x00\x01\x00\x00\x07\x00\x00\x00")
    for stage in ("target", "refiner", "drafter"):  # every file there, none of them usable
        folder = root / "bad_zoo" / stage
        folder.mkdir(parents=True)
        for name in ("model.safetensors", "tokenizer.json", "preprocessor_config.json"):
            (folder / name).write_bytes(b"\x00garbage")
        (folder / "config.json").write_text("{not json")
    shutil.copytree(root / "bad_zoo", root / "distilled")  # an --out that already holds stage folders
    shutil.copytree(default_zoo_path(), root / "corrupt_zoo", ignore=shutil.ignore_patterns("*.png"))
    (root / "corrupt_zoo" / "target" / "model.safetensors").write_bytes(b"\x08\x00garbage")
    (root / "zoo_path").write_text(str(default_zoo_path()))
    return root


CASES: list[tuple[str, list[str], int, str]] = [
    # (case, argv with {bad} for the fixture folder, exit status, words the one line must hold)
    ("demo: bad scene count", ["demo", "--scenes", "0"], 2, "--scenes"),
    ("demo: bad seed", ["demo", "--seed", "x"], 2, "--seed"),
    ("demo: bad drop rate", ["demo", "--drop-rate", "2"], 2, "--drop-rate"),
    ("demo: no verifier", ["demo", "--stages", "drafter"], 2, "verifier"),
    ("demo: bad model spec", ["demo", "--model", "verifier"], 2, "--model"),
    ("replay: no such bag", ["replay", "{bad}/nowhere"], 2, "does not exist"),
    ("replay: empty file", ["replay", "{bad}/empty.mcap"], 2, "empty file"),
    ("replay: not a bag", ["replay", "{bad}/junk.mcap"], 2, "not a rosbag2"),
    ("replay: empty folder", ["replay", "{bad}/empty_dir"], 2, "metadata.yaml"),
    ("replay: garbled metadata", ["replay", "{bad}/garbled_metadata"], 2, "not YAML"),
    ("replay: unknown type only", ["replay", "{bad}/unknown_type_bag"], 2, "mystery_msgs/msg/Thing"),
    ("replay: bad remap", ["replay", "{bad}/good_bag", "--remap", "nope"], 2, "--remap"),
    ("replay: bad rate", ["replay", "{bad}/good_bag", "--rate", "0"], 2, "--rate"),
    ("replay: missing model folder", ["replay", "{bad}/good_bag", "--model", "target={bad}/nowhere"], 2, "nowhere"),
    ("replay: bad param", ["replay", "{bad}/good_bag", "--param", "nope"], 2, "--param"),
    ("events: no such file", ["events", "stats", "{bad}/nowhere"], 1, "no such recording"),
    ("events: empty file", ["events", "stats", "{bad}/empty.mcap"], 1, "empty file"),
    ("events: not a bag", ["events", "stats", "{bad}/junk.mcap"], 1, "not a rosbag2"),
    ("events: empty folder", ["events", "stats", "{bad}/empty_dir"], 1, "metadata.yaml"),
    ("events: garbled metadata", ["events", "stats", "{bad}/garbled_metadata"], 1, "not YAML"),
    ("events: unknown type only", ["events", "stats", "{bad}/unknown_type_bag"], 1, "0 event_camera_msgs"),
    ("events: no such topic", ["events", "stats", "{bad}/good_bag", "--topic", "/nope"], 1, "/nope"),
    ("events: unknown encoding", ["events", "stats", "{bad}/good_bag", "--encoding", "evt9"], 2, "evt9"),
    ("events: no action", ["events"], 2, "ACTION"),
    ("events: decode without -o", ["events", "decode", "{bad}/good_bag"], 2, "-o"),
    (
        "events: decode into no folder",
        ["events", "decode", "{bad}/good_bag", "-o", "{bad}/nowhere/x.npy"],
        1,
        "does not exist",
    ),
    ("make-bag: out exists", ["make-bag", "{bad}/empty_dir"], 2, "exists"),
    ("make-bag: bad scene count", ["make-bag", "{bad}/mb", "--scenes", "0"], 2, "--scenes"),
    ("make-bag: bad fps", ["make-bag", "{bad}/mb", "--fps", "nan"], 2, "--fps"),
    ("make-bag: width alone", ["make-bag", "{bad}/mb", "--width", "10"], 2, "--height"),
    ("make-bag: no such video", ["make-bag", "{bad}/mb", "--from-video", "{bad}/nowhere.mp4"], 2, "no such file"),
    ("make-bag: empty video", ["make-bag", "{bad}/mb", "--from-video", "{bad}/empty.mp4"], 2, "empty.mp4"),
    ("make-bag: empty bag file", ["make-bag", "{bad}/mb", "--from-video", "{bad}/empty.mcap"], 2, "empty file"),
    ("train: no --out", ["train"], 2, "--out"),
    ("train: bad samples", ["train", "--out", "{bad}/t", "--samples", "0"], 2, "--samples"),
    ("train: bad steps scale", ["train", "--out", "{bad}/t", "--steps-scale", "x"], 2, "--steps-scale"),
    ("train: two budgets", ["train", "--out", "{bad}/t", "--max-minutes", "1", "2"], 2, "one value or three"),
    ("train: into the packaged zoo", ["train", "--out", "{zoo}"], 2, "installed package"),
    ("train: over stage folders", ["train", "--out", "{bad}/distilled", "--stage", "target"], 2, "already holds"),
    ("distill: no such zoo", ["distill", "--zoo", "{bad}/nowhere", "--out", "{bad}/d"], 2, "does not exist"),
    ("distill: bad model folder", ["distill", "--zoo", "{bad}/bad_zoo", "--out", "{bad}/d"], 2, "config.json"),
    ("distill: over stage folders", ["distill", "--out", "{bad}/distilled"], 2, "already holds"),
    ("distill: bad weights", ["distill", "--lambda-logit", "-1", "--out", "{bad}/d"], 2, "--lambda-logit"),
    ("distill: no such data", ["distill", "--data", "{bad}/nowhere.npz", "--out", "{bad}/d"], 2, "nowhere.npz"),
    ("distill: bad stage", ["distill", "--stage", "target"], 2, "--stage"),
    ("eval-zoo: no such zoo", ["eval-zoo", "--zoo", "{bad}/nowhere"], 2, "does not exist"),
    ("eval-zoo: bad model folder", ["eval-zoo", "--zoo", "{bad}/bad_zoo"], 2, "config.json"),
    ("eval-zoo: corrupt weights", ["eval-zoo", "--zoo", "{bad}/corrupt_zoo"], 1, "SafetensorError"),
    ("eval-zoo: bad scene count", ["eval-zoo", "--scenes", "0"], 2, "--scenes"),
]


def _argv(argv: list[str], bad: Path) -> list[str]:
    zoo = (bad / "zoo_path").read_text()
    return [a.replace("{bad}", str(bad)).replace("{zoo}", zoo) for a in argv]


@pytest.mark.parametrize(("case", "argv", "code", "words"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_a_nonzero_exit(
    case: str, argv: list[str], code: int, words: str, bad: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        got = main(_argv(argv, bad))
    except SystemExit as exc:  # argparse's own exit, with our one-line message
        got = exc.code
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert got == code, (case, err)
    assert len(lines) == 1 and "Traceback" not in err, (case, err)
    assert lines[0].startswith(f"cascade-sd {argv[0]}"), (case, err)
    assert words in lines[0], (case, err)
    assert not (bad / "mb").exists() and not (bad / "t").exists() and not (bad / "d").exists()


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cascade_sd_ros.tools.cli", *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["events", "stats", "{bad}/empty.mcap"],
        ["replay", "{bad}/junk.mcap"],
        ["make-bag", "{bad}/mb", "--from-video", "{bad}/empty.mcap"],
    ],
    ids=["events", "replay", "make-bag"],
)
def test_a_real_process_prints_one_line(argv: list[str], bad: Path) -> None:
    result = _run(*_argv(argv, bad))
    assert result.returncode != 0 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_debug_shows_the_traceback(bad: Path) -> None:
    plain = _run("events", "stats", str(bad / "empty.mcap"))
    debug = _run("--debug", "events", "stats", str(bad / "empty.mcap"))
    assert plain.returncode == debug.returncode == 1
    assert "Traceback" not in plain.stderr and "Traceback" in debug.stderr and "BagError" in debug.stderr
    assert "empty file" in debug.stderr.strip().splitlines()[-1]


def test_an_unexpected_error_is_one_line_too(
    monkeypatch: pytest.MonkeyPatch, bad: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cascade_sd_ros.tools import events_cmd

    def boom(args: object) -> int:
        raise KeyError("a bug")

    monkeypatch.setattr(events_cmd, "run", boom)
    assert main(["events", "stats", str(bad / "good_bag")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error: KeyError" in err and "--debug" in err
    with pytest.raises(KeyError):
        main(["--debug", "events", "stats", str(bad / "good_bag")])


def test_exit_status_is_documented() -> None:
    result = _run("--help")
    assert "3 partial" in " ".join(result.stdout.split())  # the epilog names every status
