"""The `cascade-sd` command: lists its commands, refuses bad input with exit status 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cascade_sd_ros.tools.cli import COMMANDS, main


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cascade_sd_ros.tools.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_help_lists_every_command() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for name in COMMANDS:
        assert name in result.stdout


def test_every_command_module_has_the_command_interface() -> None:
    import importlib

    for name, (module_name, _help) in COMMANDS.items():
        module = importlib.import_module(module_name)
        assert callable(module.add_arguments) and callable(module.run), name


@pytest.mark.parametrize("argv", [["no-such-command"], [], ["--bogus"]])
def test_unknown_or_missing_command_exits_2(argv: list[str]) -> None:
    result = run_cli(*argv)
    assert result.returncode == 2
    assert "usage: cascade-sd" in result.stderr


def test_bad_arguments_of_a_known_command_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["events", "--definitely-not-an-option"])
    assert exc.value.code == 2
    assert "cascade-sd events" in capsys.readouterr().err
