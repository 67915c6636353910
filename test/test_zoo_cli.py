"""train / distill / eval-zoo argument handling: bad arguments exit 2 with a clear message."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cascade_sd_ros.tools.cli import main


@pytest.mark.parametrize(
    "argv",
    [
        ["train"],  # --out is required: the default used to be the packaged zoo
        ["train", "--stage", "verifier"],
        ["train", "--seed", "-1"],
        ["train", "--samples", "0"],
        ["train", "--max-minutes", "0"],
        ["train", "--out", "build/never-written", "--max-objects", "5"],  # a 48 px frame holds four
        ["train", "--out", "build/never-written", "--max-objects", "0"],
        ["distill", "--stage", "target"],
        ["eval-zoo", "--scenes", "0"],
        ["eval-zoo", "--gamma", "x"],
    ],
)
def test_bad_arguments_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2


def test_train_rejects_two_budgets(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--max-minutes", "1", "2", "--quiet", "--out", "build/never-written"]) == 2
    assert "one value or three" in capsys.readouterr().err


def test_eval_zoo_names_a_missing_zoo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval-zoo", "--zoo", str(tmp_path / "nowhere"), "--json"]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_distill_names_an_incomplete_model_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cascade_sd_ros.core.zoo import default_zoo_path

    zoo = tmp_path / "zoo"
    shutil.copytree(default_zoo_path(), zoo, ignore=shutil.ignore_patterns("*.png"))
    (zoo / "drafter" / "model.safetensors").unlink()
    code = main(
        [
            "distill",
            "--zoo",
            str(zoo),
            "--stage",
            "drafter",
            "--samples",
            "1",
            "--eval-samples",
            "1",
            "--data-dir",
            str(tmp_path / "d"),
            "--quiet",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "drafter" in err and "model.safetensors" in err


# ------------------------------------------------------------------------------ nothing destroyed unasked


def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()
    }


def test_train_never_writes_into_the_packaged_zoo_unasked(capsys: pytest.CaptureFixture[str]) -> None:
    from cascade_sd_ros.core.zoo import default_zoo_path

    zoo = default_zoo_path()
    before = _tree(zoo)
    for out in (zoo, zoo / "target", zoo.parent / "elsewhere_in_the_package"):
        assert main(["train", "--out", str(out), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "installed package" in err and "--force" in err
    assert _tree(zoo) == before and not (zoo.parent / "elsewhere_in_the_package").exists()


def test_train_keeps_existing_stage_folders_without_resume_or_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cascade_sd_ros.tools.train import check_out

    (tmp_path / "target").mkdir()
    (tmp_path / "target" / "mine.txt").write_text("not made by train")
    assert main(["train", "--out", str(tmp_path), "--stage", "target", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "already holds target" in err and err.count("\n") == 1
    assert (tmp_path / "target" / "mine.txt").read_text() == "not made by train"
    # asked for: --resume continues from the folder, --force replaces it; another stage is free
    assert check_out(tmp_path, ("target",), force=False, keep_ok=True) is None
    assert check_out(tmp_path, ("target",), force=True) is None
    assert check_out(tmp_path, ("refiner",), force=False) is None


def test_distill_never_deletes_an_existing_folder_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cascade_sd_ros.core.zoo import default_zoo_path
    from cascade_sd_ros.tools.train import check_out

    out = tmp_path / "out"
    for stage in ("refiner", "drafter", "target"):
        (out / stage).mkdir(parents=True)
        (out / stage / "mine.txt").write_text(stage)
    before, zoo_before = _tree(out), _tree(default_zoo_path())
    assert main(["distill", "--out", str(out), "--samples", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "already holds refiner, drafter, target" in err and "--force" in err and err.count("\n") == 1
    assert main(["distill", "--samples", "1", "--quiet"]) == 2  # in place, in the packaged zoo
    assert "installed package" in capsys.readouterr().err
    assert _tree(out) == before and _tree(default_zoo_path()) == zoo_before
    assert check_out(out, ("refiner", "drafter"), force=True) is None  # --force is the way to ask
