"""The start-up check (issue 16): with only target_model set, the launch/demo either runs with a
matching drafter or says in one line why the stages cannot cooperate; vocabulary mixes cross as text
unless draft_ids is same-vocab."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from helpers import mini_checkpoints as mc

from cascade_sd_ros.core.cooperation import plan_cooperation
from cascade_sd_ros.core.stage_model import VocabularyMismatch, default_stage_source

LAUNCH = Path(__file__).resolve().parents[1] / "launch" / "cascade.launch.py"


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("coop")
    return {
        "video_llava": mc.video_llava_hf(root / "video_llava"),
        "qwen": mc.llava_qwen(root / "qwen"),
        "eventgpt": mc.eventgpt(root / "eventgpt"),
    }


def test_only_target_model_set_is_refused_in_one_line_naming_what_to_set(folders: dict[str, Path]) -> None:
    target = str(folders["video_llava"])
    with pytest.raises(VocabularyMismatch) as err:
        plan_cooperation({"drafter": "", "refiner": "", "target": target})
    text = str(err.value)
    assert "\n" not in text and target in text and "drafter" in text and "shipped zoo" in text
    assert "drafter_model" in text and "run_drafter:=false" in text
    with pytest.raises(VocabularyMismatch, match="the refiner is the shipped zoo"):  # drafter off, refiner left
        plan_cooperation({"refiner": default_stage_source("refiner"), "target": target})
    assert plan_cooperation({"target": target}).draft_ids == {}  # the verifier alone: nothing to check


def test_matching_and_foreign_drafters_are_planned_ids_and_text(folders: dict[str, Path]) -> None:
    target = str(folders["video_llava"])
    plan = plan_cooperation({"drafter": str(folders["eventgpt"]), "target": target})
    assert plan.draft_ids == {"drafter": "same-vocab"} and "token ids" in plan.lines[0]
    plan = plan_cooperation({"drafter": str(folders["qwen"]), "target": target})
    assert plan.draft_ids == {"drafter": "text"} and "cross as text" in plan.lines[0]
    with pytest.raises(VocabularyMismatch) as err:
        plan_cooperation({"drafter": str(folders["qwen"]), "target": target}, "same-vocab")
    assert "\n" not in str(err.value) and "draft_ids" in str(err.value) and "480 ids" in str(err.value)
    assert plan_cooperation({"drafter": str(folders["eventgpt"]), "target": target}, {"drafter": "text"}).draft_ids == {
        "drafter": "text"
    }


def test_the_shipped_zoo_alone_cooperates_by_ids() -> None:
    plan = plan_cooperation({"drafter": "", "refiner": "", "target": ""})
    assert plan.draft_ids == {"drafter": "same-vocab", "refiner": "same-vocab"}


def test_a_stage_without_a_tokenizer_cannot_draft_as_text() -> None:
    with pytest.raises(VocabularyMismatch) as err:
        plan_cooperation({"drafter": "tiny:0", "target": ""})
    assert "tiny:0 has no tokenizer" in str(err.value) and "verifier" in str(err.value)
    assert plan_cooperation({"drafter": "tiny:0", "target": "tiny:1"}).draft_ids == {"drafter": "same-vocab"}


def test_the_launch_runs_the_check_before_its_nodes() -> None:
    tree = ast.parse(LAUNCH.read_text())
    gen = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "generate_launch_description")
    calls = [c for c in ast.walk(gen) if isinstance(c, ast.Call) and isinstance(c.func, ast.Name)]
    names = [c.func.id for c in calls if c.func.id in ("OpaqueFunction", "_stage")]
    assert names[0] == "OpaqueFunction" and names.count("_stage") == 3
    check = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "_check_models")
    assert "plan_cooperation" in ast.unparse(check)
