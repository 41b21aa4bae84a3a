"""The `luminescence` command (pipeline/stages/cli.py): every subcommand reaches its stage's
own parser; unknown commands are a usage error."""

from __future__ import annotations

import sys

import pytest

from pipeline.stages.cli import COMMANDS, main


@pytest.fixture(autouse=True)
def _own_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    """main() renames sys.argv[0] for the stage's usage line; keep that out of other tests."""
    monkeypatch.setattr(sys, "argv", list(sys.argv))


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {name} " in out for name in COMMANDS)


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["trian"]) == 2
    assert "unknown command 'trian'" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_command_shows_its_stage_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main([name, "--help"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith("usage: ")
