"""Replay of the real EVT 3.0 recording (../shared/data/evt3_test_events_1): events only."""
from __future__ import annotations

from pathlib import Path

from cascade_sd_ros.tools.replay_source import scan_bag

# Golden figures of the whole recording (../shared/data/README.md). The README's falling-edge count
# repeats the rising one; the recording has one more falling edge (its trigger edges alternate and
# start and end falling; see test_events_evt3.py), and the exact sum of t includes it.
GOLDEN = {"off": 218291, "on": 125183, "trigger_rise": 2078, "trigger_fall": 2079, "sum_t_us": 2885601049874}


def test_scan_of_real_bag_matches_golden_figures_and_misses_rgb(evt3_bag: Path) -> None:
    scan = scan_bag(evt3_bag)
    d = scan.to_dict()
    ev = d["events"]["/event_camera/events"]
    assert {k: ev[k] for k in GOLDEN} == GOLDEN
    assert ev["packets"] == 517 and ev["encoding"] == "evt3"
    assert list(d["missing_streams"]) == ["rgb"]
    assert d["unknown_types"] == {} and d["corrupt_records"] == {}
    assert abs(d["duration_s"] - 2.076) < 0.01
