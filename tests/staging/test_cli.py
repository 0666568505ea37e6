from __future__ import annotations

import pytest

from staging import cli


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in [*cli._COMMAND_MODULES, "phantom"]:
        assert command in out


@pytest.mark.parametrize("command", [*cli._COMMAND_MODULES, "phantom"])
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([command, "--help"]) == 0
    assert f"psma-stage {command}" in capsys.readouterr().out


def test_only_the_requested_command_is_registered() -> None:
    parser = cli.build_parser("stage")
    subparsers = next(a for a in parser._actions if a.dest == "command")
    assert set(subparsers.choices) == {"stage"}  # type: ignore[attr-defined]


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["no-such-command"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert "COMMAND" in capsys.readouterr().err


def test_command_map_names_every_registered_command() -> None:
    parser = cli.build_parser(None)
    subparsers = next(a for a in parser._actions if a.dest == "command")
    registered = set(subparsers.choices) - {"phantom"}  # type: ignore[attr-defined]
    assert registered == set(cli._COMMAND_MODULES)
