"""Replay of the real EVT 3.0 recording (../shared/data/evt3_test_events_1): events only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cascade_sd_ros.tools.replay.source import scan_bag

# Golden figures of the whole recording (../shared/data/README.md). The README's second trigger count
# repeats the first; the recording has one more p = 1 edge (its trigger edges alternate and start and
# end on one; see test_events_evt3.py), and the exact sum of t includes it. The EVT 3.0 specification
# names value 1 the rising edge (the README, after upstream, called p = 0 rising): 2079 rising, 2078 falling.
GOLDEN = {"off": 218291, "on": 125183, "trigger_rise": 2079, "trigger_fall": 2078, "sum_t_us": 2885601049874}


def test_scan_of_real_bag_matches_golden_figures_and_misses_rgb(evt3_bag: Path) -> None:
    scan = scan_bag(evt3_bag)
    d = scan.to_dict()
    ev = d["events"]["/event_camera/events"]
    assert {k: ev[k] for k in GOLDEN} == GOLDEN
    assert ev["packets"] == 517 and ev["encoding"] == "evt3"
    assert list(d["missing_streams"]) == ["rgb"]
    assert d["unknown_types"] == {} and d["corrupt_records"] == {}
    assert abs(d["duration_s"] - 2.076) < 0.01


@pytest.mark.ros
@pytest.mark.slow
def test_events_only_replay_completes_and_reports_missing_rgb(evt3_bag: Path, tmp_path: Path) -> None:
    from cascade_sd_ros.tools.replay import ReplaySettings, _make_bare, run_replay
    from cascade_sd_ros.tools.replay.pipeline import make_pipeline

    settings = ReplaySettings(
        bag=evt3_bag,
        out_dir=tmp_path / "out",
        rate=None,
        progress=False,
        models={"target": "tiny:0", "refiner": "tiny:0", "drafter": "tiny:0"},
        params={"common": {"round_period": 0.5}},
    )
    result = run_replay(settings, make_pipeline, _make_bare)
    doc = json.loads((tmp_path / "out" / "report.json").read_text())
    assert doc is not None and result.report["summary"] == doc["summary"]
    assert list(doc["input"]["missing_streams"]) == ["rgb"]
    ev = doc["input"]["events"]["/event_camera/events"]
    assert {k: ev[k] for k in GOLDEN} == GOLDEN
    assert doc["run"]["published"] == {"/events": 517}  # mapped onto the nodes' input by type
    # Fast mode lost nothing on the way: every node took every packet.
    # (the drafter takes images too, for the clock-offset estimate: none in this bag, none lost)
    assert doc["run"]["input_losses"]["event_drafter"] == {"events": 0, "images": 0}
    assert doc["run"]["node_inputs_received"]["event_drafter"]["events"]["received"] == 517
    assert "/image" in doc["run"]["node_inputs_not_in_bag"]
    # Rounds the drafter opened end degraded: without frames the verifier cannot stand behind text.
    assert doc["summary"]["rounds"] >= 1
    assert all(r["degraded"] and "no RGB frames" in r["degraded_reason"] for r in doc["rounds"])
    assert doc["summary"]["speed"]["rounds_with_reference"] == 0  # nothing to decode alone without a clip
    assert "Missing streams" in (tmp_path / "out" / "report.md").read_text()
