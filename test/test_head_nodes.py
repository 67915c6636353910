"""The draft head in the nodes (issue 17): the drafter publishes each round's event tokens, the
verifier drafts for itself with the shipped head, and every caption is still the verifier alone's.

The shipped zoo (the head fits only its target), drafter + verifier in one process over DDS, a few
synthetic scenes. Lossless: each final caption equals the target's own greedy decode of the clip the
verifier used, token for token. EventFeatures missing (the drafter's ``publish_features:=false``) or
made by another encoder cost speed only: the head drafts from the target's states alone. A head
trained on another target is refused with the reason, and the verifier runs without it.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from cascade_sd_ros.core.head.adapter import STOP_BELOW  # noqa: E402
from cascade_sd_ros.core.names import STAGE_HEAD  # noqa: E402
from cascade_sd_ros.core.spec.engine import target_only_greedy  # noqa: E402
from cascade_sd_ros.core.synth.clocks import ClockModel  # noqa: E402
from cascade_sd_ros.core.synth.packets import PacketConfig  # noqa: E402
from cascade_sd_ros.core.synth.stream import StreamConfig, iter_scenes  # noqa: E402
from cascade_sd_ros.core.zoo import default_zoo_path  # noqa: E402
from cascade_sd_ros.tools.pipeline import (  # noqa: E402
    PipelineConfig,
    SensorPlayer,
    build_pipeline,
    load_models,
    play_scenes,
    scene_rounds,
    trained_params,
    zoo_meta,
)

pytestmark = pytest.mark.ros

STAGES = ("drafter", "verifier")
N_SCENES = 4
MAX_NEW = 16


def _stream() -> StreamConfig:
    geometry = zoo_meta(str(default_zoo_path() / "target")).get("geometry", {})
    size = int(geometry.get("image_size", 64))
    return StreamConfig(
        n_scenes=N_SCENES + 1,  # + a lead-out scene
        height=size,
        width=size,
        seed=5,
        scene_duration_s=float(geometry.get("scene_duration_s", 2.0)),
        clocks=ClockModel(event_offset_ns=30_000_000, jitter_ms=2.0, drop_rate=0.0),
        packets=PacketConfig(time_threshold_us=5000),
    )


@pytest.fixture(scope="module")
def scenes() -> list[Any]:
    return list(iter_scenes(_stream()))


@pytest.fixture(scope="module")
def models() -> dict[str, Any]:
    return load_models(PipelineConfig(stages=STAGES))


@pytest.fixture(scope="module")
def alone() -> Any:
    """A second copy of the target for the verifier-alone reference (the pipeline's is busy)."""
    from cascade_sd_ros.core.stage_model import load_stage_model

    return load_stage_model(str(default_zoo_path() / "target"), "target")


def _config(drafter: dict[str, Any] | None = None, **verifier: Any) -> tuple[PipelineConfig, Any]:
    rounds = scene_rounds(_stream())
    params = rounds.params()
    for node, values in trained_params(zoo_meta(str(default_zoo_path() / "target"))).items():
        params[node] = {**params.get(node, {}), **values}
    params["common"] = {**params["common"], "max_new_tokens": MAX_NEW}
    params["video_verifier"] = {**params["video_verifier"], "max_wait": 1.0, **verifier}
    params["event_drafter"] = {**params.get("event_drafter", {}), **(drafter or {})}
    return PipelineConfig(stages=STAGES, params=params), rounds


class Run:
    """A pipeline and a player in the test's context, destroyed afterwards."""

    def __init__(self, context: Any, models: dict[str, Any], config: PipelineConfig) -> None:
        self.pipeline = build_pipeline(config, context, models=models)
        self.player = SensorPlayer(context=context)
        self.pipeline.start()
        assert self.player.wait_matched(config.image_subscribers(), config.event_subscribers())

    def close(self) -> None:
        self.pipeline.close()
        self.player.destroy_node()


@pytest.fixture
def make_run(rclpy_context: Any, models: dict[str, Any]):  # noqa: ANN201
    runs: list[Run] = []

    def make(config: PipelineConfig) -> Run:
        run = Run(rclpy_context, models, config)
        runs.append(run)
        return run

    yield make
    for run in runs:
        run.close()


def _play_lossless(run: Run, scenes: list[Any], rounds: Any, target: Any) -> list[Any]:
    """Play every scene; each final caption must be the verifier alone's on the same clip."""
    # at sensor rate: played as fast as DDS takes them, the drafter's ~400 event packets a scene reach
    # it after the verifier's 60 frames, and its features after the verifier's round
    finals = play_scenes(run.pipeline, run.player, scenes, rounds, timeout_s=60, rate=1.0)
    assert sorted(finals) == list(range(N_SCENES))
    verifier = run.pipeline.verifier
    for i, msg in sorted(finals.items()):
        assert msg is not None, f"scene {i}: no final caption"
        inp = verifier.inputs[rounds.round_ids[i]]
        reference = target_only_greedy(target.adapter, target.context(inp.frames, inp.question), MAX_NEW)
        assert list(msg.token_ids) == reference, f"scene {i}: caption with the head differs from the verifier alone"
        assert len(msg.accepted_per_stage) == 3 and len(msg.drafted_per_stage) == 3
    assert all(n.stage.snapshot()["worker_errors"] == 0 for n in run.pipeline.nodes)
    return [finals[i] for i in range(N_SCENES)]


def _head_accepted(finals: list[Any]) -> int:
    return int(np.sum([m.accepted_per_stage[STAGE_HEAD] for m in finals]))


@pytest.mark.parametrize("prefill_draft", [False, True], ids=["plain", "prefill-hiding"])
def test_fused_head_keeps_captions_exact_and_drafts_them(make_run, scenes, alone, prefill_draft: bool) -> None:  # noqa: ANN001
    # draft_head: auto, the shipped head on the shipped target
    # plain: the default head_branches (draft trees); prefill hiding: chains, to show both verify paths
    config, rounds = _config(head_prefill_draft=prefill_draft, **({"head_branches": 0} if prefill_draft else {}))
    run = make_run(config)
    verifier = run.pipeline.verifier
    assert verifier.head_status.startswith("on"), verifier.head_status
    assert verifier._head_spec.adapter.stop_below == STOP_BELOW  # off by default: adapted lengths
    finals = _play_lossless(run, scenes, rounds, alone)
    assert _head_accepted(finals) > 0  # the head's drafts were checked and carried the captions
    drafter = run.pipeline.nodes[0]
    # one EventFeatures per round the drafter drafted for, before its drafts, and the verifier heard
    # them all (whether each came before its round's prefill is the machine's timing: counted, and
    # each way is exact, test_head_source shows the three)
    assert drafter.features_published >= N_SCENES and drafter.features_missing == 0
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline and verifier.features_in.received < drafter.features_published:
        time.sleep(0.05)
    assert verifier.features_in.received == drafter.features_published
    assert verifier.features_in.malformed == 0 and verifier.features_refused == 0
    head = verifier.stage.snapshot()
    ran_on = head["head.rounds_fused"] + head["head.rounds_late"] + head["head.rounds_target_only"]
    assert head["head.rounds"] >= N_SCENES and ran_on in (head["head.rounds"] - 1, head["head.rounds"]), head
    # rounds fused from their start, with no upstream draft in hand, carry the head's first draft
    assert head["head.prefill_drafts"] <= (head["head.rounds_fused"] if prefill_draft else 0), head
    # the head's unsure tokens carried runner-ups, checked in the same verify forward (exact, above)
    if prefill_draft:
        assert head["head.branch_nodes"] == 0 and head["verifies_with_tree"] == 0, head
    else:
        assert head["head.branch_nodes"] > 0 and head["verifies_with_tree"] > 0, head


def test_missing_features_degrade_to_target_states(make_run, scenes, alone) -> None:  # noqa: ANN001
    config, rounds = _config(drafter={"publish_features": False}, head_stop_below=0.7)  # drafts by confidence too
    run = make_run(config)
    assert run.pipeline.verifier._head_spec.adapter.stop_below == 0.7
    finals = _play_lossless(run, scenes, rounds, alone)
    head = run.pipeline.verifier.stage.snapshot()
    assert head["head.rounds_fused"] == 0 and head["head.rounds_late"] == 0
    assert head["head.rounds_target_only"] >= N_SCENES - 1, head  # the last one ends with the next
    assert _head_accepted(finals) > 0  # still drafting, from the target's states alone


def _copy_head(tmp_path: Path, **changes: Any) -> Path:
    folder = tmp_path / "head"
    shutil.copytree(default_zoo_path() / "head", folder)
    meta = json.loads((folder / "head.json").read_text())
    for key, value in changes.items():
        if key == "target":
            meta["trained_on"]["target"] = value
        else:
            meta[key] = value
    (folder / "head.json").write_text(json.dumps(meta))
    return folder


def test_features_of_another_encoder_are_refused(make_run, scenes, alone, tmp_path) -> None:  # noqa: ANN001
    folder = _copy_head(tmp_path, event_encoder="0000000000000000")
    config, rounds = _config(draft_head=str(folder))
    run = make_run(config)
    verifier = run.pipeline.verifier
    finals = _play_lossless(run, scenes, rounds, alone)
    assert verifier.features_refused >= N_SCENES - 1
    head = verifier.stage.snapshot()
    assert head["head.rounds_fused"] == 0 and _head_accepted(finals) > 0


def test_head_of_another_target_is_refused_with_the_reason(make_run, tmp_path) -> None:  # noqa: ANN001
    folder = _copy_head(tmp_path, target="ffffffffffffffff")
    config, _ = _config(draft_head=str(folder))
    verifier = make_run(config).pipeline.verifier
    assert verifier.head_status.startswith("refused: ")
    assert "trained on target ffffffffffffffff" in verifier.head_status and str(folder) in verifier.head_status
    assert verifier.stage.head is None
    # and the verifier alone (use_drafts none) never runs a head, whatever draft_head says
    config, _ = _config(use_drafts="none")
    verifier = make_run(config).pipeline.verifier
    assert verifier.stage.head is None and verifier.head_status.startswith("off")


def test_malformed_features_are_counted_and_skipped(make_run, rclpy_context, scenes, alone) -> None:  # noqa: ANN001
    from cascade_sd_ros.core.names import TOPIC_FEATURES
    from cascade_sd_ros.msg import EventFeatures
    from cascade_sd_ros.nodes.common import FEATURES_QOS
    from cascade_sd_ros.ros.outputs import event_features_msg

    config, rounds = _config(drafter={"publish_features": False})  # only this test's messages
    run = make_run(config)
    verifier = run.pipeline.verifier
    fingerprint = verifier._head_spec.event_encoder
    rid = rounds.round_ids[0]
    bad = [
        event_features_msg(rid, rid, "cam", 9, 64, [float("nan")] * 576, fingerprint),  # NaN
        event_features_msg(rid, rid, "cam", 9, 64, [0.0] * 575, fingerprint),  # cut short
        event_features_msg(rid, rid, "cam", 8, 64, [0.0] * 512, fingerprint),  # another shape
        event_features_msg(rid + 1, rid, "cam", 9, 64, [0.0] * 576, fingerprint),  # id is not its stamp
    ]
    node = rclpy.create_node("features_prober", context=rclpy_context)
    try:
        pub = node.create_publisher(EventFeatures, TOPIC_FEATURES, FEATURES_QOS)
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and pub.get_subscription_count() == 0:
            time.sleep(0.05)
        for msg in bad:
            pub.publish(msg)
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and verifier.features_in.malformed < len(bad):
            time.sleep(0.05)
        assert verifier.features_in.malformed == len(bad) and verifier.features_refused == 0
        _play_lossless(run, scenes, rounds, alone)  # and the node runs on, its head on target states
        assert verifier.stage.snapshot()["head.rounds_fused"] == 0
    finally:
        node.destroy_node()
