"""Replay with a drafter of another tokenizer (issue 16): the zoo's verifier with the zoo drafter under
a foreign tokenizer (built in the test), a generated bag replayed through the nodes:
captions equal to the verifier alone token for token, and the drafter's acceptance in the report,
counted by the verifier on its own ids (target tokens)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cascade_sd_ros.core.stage_model import default_stage_source

pytestmark = [pytest.mark.ros, pytest.mark.slow]

N_SCENES = 2


def test_replay_with_a_foreign_drafter_is_lossless_and_reports_target_token_acceptance(tmp_path: Path) -> None:
    from cascade_sd_ros.core.zoo.foreign import build_foreign_drafter
    from cascade_sd_ros.tools.cli import main
    from cascade_sd_ros.tools.replay import ReplaySettings, _make_bare, run_replay
    from cascade_sd_ros.tools.replay.pipeline import make_pipeline

    drafter = build_foreign_drafter(Path(default_stage_source("drafter")), tmp_path / "foreign")
    bag = tmp_path / "bag"
    assert (
        main(
            [
                "make-bag",
                str(bag),
                "--scenes",
                str(N_SCENES + 1),
                "--seed",
                "3",
                "--width",
                "48",
                "--height",
                "48",
                "--packet-ms",
                "5",
                "--duration",
                "2.0",
            ]
        )
        == 0
    )
    models = {"target": default_stage_source("target"), "drafter": str(drafter)}
    settings = ReplaySettings(
        bag=bag,
        out_dir=tmp_path / "out",
        rate=None,
        models=models,
        progress=False,
        stages=("drafter", "verifier"),
        # the verifier's own draft head off: the foreign drafter's drafts are what this test checks
        params={"video_verifier": {"use_drafts": "drafter", "draft_head": ""}},
    )
    doc = run_replay(settings, make_pipeline, _make_bare).report
    sp = doc["summary"]["speed"]
    assert sp["rounds_with_reference"] >= N_SCENES and sp["lossless_match"] == 1.0
    assert all(r["verifier_alone"]["same_tokens"] for r in doc["rounds"] if r["verifier_alone"] is not None)
    drafted = doc["summary"]["acceptance"]["drafter"]
    assert drafted["drafted"] > 0 and drafted["accepted"] > 0, drafted  # target tokens, read from text drafts
    assert json.loads((tmp_path / "out" / "report.json").read_text())["run"]["models"] == models
