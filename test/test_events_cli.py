"""``cascade-sd events``: golden figures through the command line, decode to .npy, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cascade_sd_ros.core.events import CD_DTYPE, TRIGGER_DTYPE, encode_evt3
from cascade_sd_ros.tools.cli import main

RAW_HEADER = b"% evt 3.0\n% format EVT3;height=480;width=640\n% end\n"


def _stats(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert main(["events", "stats", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def test_stats_of_the_real_bag(evt3_bag: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = _stats(capsys, str(evt3_bag), "--topic", "/event_camera/events")
    assert (out["off"], out["on"]) == (218291, 125183)
    assert (out["trigger_rise"], out["trigger_fall"]) == (2079, 2078)  # value 1 = rising; see test_events_evt3
    assert out["sum_t_us"] == 2885601049874
    assert (out["first_t_us"], out["last_t_us"]) == (7139840, 9218023)
    assert out["mean_rate_ev_s"] == pytest.approx(343474 / ((9218023 - 7139840) / 1e6))
    assert out["decode_mev_s"] > 0 and out["packets"] == 517
    # the storage file alone gives the same figures
    assert _stats(capsys, str(evt3_bag / "test_events_1.db3"))["sum_t_us"] == 2885601049874


def test_decode_writes_what_the_api_returns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(3)
    cd = np.zeros(500, CD_DTYPE)
    cd["x"], cd["y"], cd["p"], cd["t"] = (
        rng.integers(0, 640, 500),
        rng.integers(0, 480, 500),
        rng.integers(0, 2, 500),
        np.arange(500) * 97,
    )
    trig = np.zeros(2, TRIGGER_DTYPE)
    trig["t"], trig["p"] = [10, 20], [0, 1]
    raw = tmp_path / "rec.raw"
    raw.write_bytes(RAW_HEADER + encode_evt3(cd, trig))
    out, out_trig = tmp_path / "cd.npy", tmp_path / "trig.npy"
    assert main(["events", "decode", str(raw), "-o", str(out), "--triggers", str(out_trig)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["cd_events"] == 500 and report["trigger_events"] == 2
    assert np.array_equal(np.load(out), cd) and np.array_equal(np.load(out_trig), trig)
    stats = _stats(capsys, str(raw))
    assert (stats["on"] + stats["off"], stats["sum_t_us"]) == (500, int(cd["t"].sum()) + 30)


def test_errors_exit_nonzero_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["events", "stats", str(tmp_path / "missing")]) == 1
    assert "no such recording" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["events", "stats", str(tmp_path / "empty")]) == 1
    assert "metadata.yaml" in capsys.readouterr().err
    for argv in (
        ["events"],
        ["events", "stats"],
        ["events", "stats", "x", "--encoding", "evt9"],
        ["events", "decode", "x"],
    ):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
