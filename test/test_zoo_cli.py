"""train / distill / eval-zoo argument handling: bad arguments exit 2 with a clear message."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cascade_sd_ros.tools.cli import main


@pytest.mark.parametrize("argv", [
    ["train", "--stage", "verifier"],
    ["train", "--seed", "-1"],
    ["train", "--samples", "0"],
    ["train", "--max-minutes", "0"],
    ["distill", "--stage", "target"],
    ["eval-zoo", "--scenes", "0"],
    ["eval-zoo", "--gamma", "x"],
])
def test_bad_arguments_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2


def test_train_rejects_two_budgets(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--max-minutes", "1", "2", "--quiet"]) == 2
    assert "one value or three" in capsys.readouterr().err


def test_eval_zoo_names_a_missing_zoo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval-zoo", "--zoo", str(tmp_path / "nowhere"), "--json"]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_distill_names_an_incomplete_model_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cascade_sd_ros.core.zoo import default_zoo_path

    zoo = tmp_path / "zoo"
    shutil.copytree(default_zoo_path(), zoo, ignore=shutil.ignore_patterns("*.png"))
    (zoo / "drafter" / "model.safetensors").unlink()
    code = main(["distill", "--zoo", str(zoo), "--stage", "drafter", "--samples", "1", "--eval-samples", "1",
                 "--data-dir", str(tmp_path / "d"), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert "drafter" in err and "model.safetensors" in err
