"""Replay of a generated bag through the real nodes (tiny models): the demo's captions, lossless
against the verifier alone, and a report that the output bag alone reproduces."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rosbags.highlevel import AnyReader

from cascade_sd_ros.core import bagio

pytestmark = [pytest.mark.ros, pytest.mark.slow]

MODELS = {"target": "tiny:0", "refiner": "tiny:0", "drafter": "tiny:0"}
N_SCENES = 2
SEED = 5
# The demo's stream (tools/demo.run_demo): 64x64, 5 ms event packets, N + 1 scenes (a lead-out),
# 30 ms event clock offset, 2 ms RGB jitter, 5 % dropped frames, 2 s scenes.
DEMO_OFFSET_MS, DEMO_JITTER_MS, DEMO_DROP = 30.0, 2.0, 0.05
MAKE_BAG_ARGS = [
    "--scenes",
    str(N_SCENES + 1),
    "--seed",
    str(SEED),
    "--width",
    "64",
    "--height",
    "64",
    "--event-offset-ms",
    str(DEMO_OFFSET_MS),
    "--jitter-ms",
    str(DEMO_JITTER_MS),
    "--drop-rate",
    str(DEMO_DROP),
    "--packet-ms",
    "5",
    "--duration",
    "2.0",
]


@pytest.fixture(scope="module")
def demo_results() -> list[Any]:
    from cascade_sd_ros.tools.demo import run_demo

    results, _speedup, _info = run_demo(
        n_scenes=N_SCENES,
        seed=SEED,
        sources=dict(MODELS),
        mode="lossless-greedy",
        stages=("drafter", "refiner", "verifier"),
        offset_ns=int(DEMO_OFFSET_MS * 1e6),
        jitter_ms=DEMO_JITTER_MS,
        drop_rate=DEMO_DROP,
        device="cpu",
        timeout_s=60.0,
        oracle_offset=True,
    )
    return results


@pytest.fixture(scope="module")
def generated_bag(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cascade_sd_ros.tools.cli import main

    bag = tmp_path_factory.mktemp("generated") / "bag"
    assert main(["make-bag", str(bag), *MAKE_BAG_ARGS]) == 0
    return bag


def _replay(bag: Path, out: Path, baseline: str = "pass") -> dict[str, Any]:
    from cascade_sd_ros.tools.replay import ReplaySettings, _make_bare, run_replay
    from cascade_sd_ros.tools.replay.pipeline import make_pipeline

    # the oracle offset, as the demo above: token-for-token comparisons need both runs on the same clips
    # (a measured offset picks the first rounds' frames by the initial guess, timing-dependent)
    settings = ReplaySettings(
        bag=bag, out_dir=out, rate=None, models=dict(MODELS), progress=False, baseline=baseline, oracle_offset=True
    )
    return run_replay(settings, make_pipeline, _make_bare).report


@pytest.fixture(scope="module")
def replayed(generated_bag: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("replay_generated") / "out"
    _replay(generated_bag, out)
    return out


def test_replay_gives_the_demos_final_captions(demo_results: list[Any], replayed: Path) -> None:
    doc = json.loads((replayed / "report.json").read_text())
    assert len(doc["scenes"]) == N_SCENES + 1
    for i in range(N_SCENES):
        scene = doc["scenes"][i]
        assert demo_results[i].caption is not None, f"demo scene {i} produced no caption"
        assert scene["ground_truth"] == demo_results[i].ground_truth
        assert scene["last_caption"] == demo_results[i].caption, f"scene {i}"


def test_replay_is_lossless_against_the_verifier_alone(replayed: Path) -> None:
    doc = json.loads((replayed / "report.json").read_text())
    sp = doc["summary"]["speed"]
    assert doc["summary"]["rounds"] >= N_SCENES
    # The verifier alone opens a round once a frame passes it; the lead-out scene's round has none
    # after it, so only the scenes' rounds are sure to have a reference.
    assert sp["reference"] == "verifier-alone" and sp["rounds_with_reference"] >= N_SCENES
    assert sp["lossless_match"] == 1.0 and sp["bare_match"] == 1.0
    assert all(r["verifier_alone"]["same_tokens"] for r in doc["rounds"] if r["verifier_alone"] is not None)
    assert all(r["target_bare"] is not None for r in doc["rounds"] if r["verifier_alone"] is not None)
    assert doc["run"]["baseline"]["kind"] == "pass"
    assert set(doc["run"]["baseline"]["rounds_missing"]) <= {doc["rounds"][-1]["round_id"]}
    assert doc["run"]["mode"] == "lossless-greedy" and doc["run"]["models"] == MODELS
    losses = doc["run"]["input_losses"]
    assert set(losses) == {"event_drafter", "frame_refiner", "video_verifier"}
    assert all(n == 0 for per_node in losses.values() for n in per_node.values())
    assert {"torch", "transformers", "rclpy", "cascade_sd_ros"} <= set(doc["run"]["versions"])


def _finals(bag: Path, topic: str) -> list[Any]:
    """Final VerifiedCaptions of ``topic``, read with rosbags alone (not the replay's reader)."""
    out = []
    with AnyReader([bag], default_typestore=bagio.typestore()) as reader:
        conns = [c for c in reader.connections if c.topic == topic]
        for conn, _t, raw in reader.messages(connections=conns):
            msg = reader.deserialize(raw, conn.msgtype)
            if msg.final:
                out.append(msg)
    return out


def test_report_figures_are_the_output_bags(replayed: Path) -> None:
    doc = json.loads((replayed / "report.json").read_text())
    finals = _finals(replayed / "output", "/caption")
    alone = {m.round_id: m for m in _finals(replayed / "output", "/replay/verifier_alone")}
    summ = doc["summary"]
    assert [int(m.round_id) for m in sorted(finals, key=lambda m: m.round_id)] == [r["round_id"] for r in doc["rounds"]]
    for stage, name in enumerate(("drafter", "refiner")):
        drafted = sum(int(m.drafted_per_stage[stage]) for m in finals)
        accepted = sum(int(m.accepted_per_stage[stage]) for m in finals)
        assert summ["acceptance"][name]["drafted"] == drafted
        assert summ["acceptance"][name]["accepted"] == accepted
    total = np.array([m.latency_total_ms for m in finals], dtype=np.float64)
    for p in (50, 95, 99):
        assert summ["latency_ms"]["total"][f"p{p}"] == pytest.approx(np.percentile(total, p), rel=1e-6)
    assert summ["target_forwards"] == sum(int(m.target_forwards) for m in finals)
    assert summ["degraded"]["count"] == sum(bool(m.degraded) for m in finals)
    # The speed figure is caption latency, recomputed here from the messages alone: p50 of the
    # verifier alone over p50 of the cascade on the rounds both finished, the bare target beside it.
    bare = {m.round_id: m for m in _finals(replayed / "output", "/replay/target_bare")}
    both = [m for m in finals if m.round_id in alone]
    casc_p50 = float(np.percentile([m.latency_caption_ms for m in both], 50))
    alone_p50 = float(np.percentile([alone[m.round_id].latency_caption_ms for m in both], 50))
    bare_p50 = float(np.percentile([bare[m.round_id].latency_caption_ms for m in both], 50))
    sp = summ["speed"]
    assert sp["rounds"] == len(both) >= N_SCENES
    assert sp["caption_latency_cascade"]["p50_ms"] == pytest.approx(casc_p50, abs=0.01)
    assert sp["caption_latency_alone"]["p50_ms"] == pytest.approx(alone_p50, abs=0.01)
    assert sp["speedup_p50"] == pytest.approx(alone_p50 / casc_p50, abs=2e-3)
    assert sp["alone_over_bare"] == pytest.approx(alone_p50 / bare_p50, abs=2e-3)
    ratio = alone_p50 / bare_p50
    assert sp["reference_honest"] == (None if ratio < 1 / 1.15 else ratio <= 1.15)
    for r, m in zip(doc["rounds"], sorted(finals, key=lambda m: m.round_id)):
        # the parts of caption latency add up to it (other = the rest), from the message's fields
        parts = r["caption_parts_ms"]
        assert parts["prefill"] == pytest.approx(m.latency_prefill_ms, abs=1e-3)
        assert parts["draft_wait"] == pytest.approx(m.latency_draft_wait_ms, abs=1e-3)
        assert sum(parts.values()) == pytest.approx(m.latency_caption_ms, abs=1e-3)
    # throughput: final captions per second of each pass's playback, counted from the bags
    tp = doc["run"]["throughput"]
    assert tp["cascade"]["finals"] == len({m.round_id for m in finals})
    assert tp["cascade"]["playback_s"] == pytest.approx(doc["run"]["wall_s"], abs=1e-3)
    assert tp["alone"]["finals"] == len({m.round_id for m in _finals(replayed / "verifier_alone", "/caption")})
    assert tp["ratio"] == pytest.approx(tp["cascade"]["captions_per_s"] / tp["alone"]["captions_per_s"], rel=1e-2)
    md = (replayed / "report.md").read_text()
    assert f"{summ['rounds']} rounds" in md
    assert "Final captions per second of playback: cascade" in md
    for fig in ("latency.png", "acceptance.png", "skew.png", "speedup.png"):
        assert (replayed / fig).stat().st_size > 0


def test_frames_only_bag_runs_what_can_run(generated_bag: Path, tmp_path: Path) -> None:
    """Without the event stream the verifier still opens rounds from frames and captions them."""
    frames_only = tmp_path / "frames_only"
    keep = ("/camera/image_raw", "/camera/camera_info", "/ground_truth")
    bagio.write_bag(frames_only, (m for m in bagio.iter_messages(generated_bag) if m[0] in keep), storage="mcap")
    # The offline baseline: the target decodes each round's own clip after the cascade stopped.
    report = _replay(frames_only, tmp_path / "out", baseline="offline")
    assert list(report["input"]["missing_streams"]) == ["events"]
    assert report["summary"]["rounds"] >= N_SCENES
    assert all(r["caption"] for r in report["rounds"])
    assert report["run"]["baseline"]["kind"] == "offline"
    sp = report["summary"]["speed"]
    assert sp["reference"] == "target-bare" and sp["rounds_with_reference"] == report["summary"]["rounds"]
    assert sp["lossless_match"] == 1.0 and sp["alone_over_bare"] == 1.0
