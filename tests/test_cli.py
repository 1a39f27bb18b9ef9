"""The CLI as a user meets it: every command has help, errors are one line, help is cheap."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
import typer

from registry.cli.app import app
from tests.helpers import run_cli


def command_paths() -> list[list[str]]:
    """Every command and sub-command of the app, as argv prefixes."""
    root = typer.main.get_command(app)
    paths: list[list[str]] = []

    def walk(command: Any, prefix: list[str]) -> None:
        sub = getattr(command, "commands", None)
        if sub is None:
            paths.append(prefix)
            return
        for name, child in sub.items():
            walk(child, [*prefix, name])

    walk(root, [])
    return paths


def test_the_app_has_the_foundation_commands() -> None:
    names = {" ".join(p) for p in command_paths()}
    assert {"lock", "validate", "tag", "list", "show", "runbook", "env"} <= names


@pytest.mark.parametrize("path", command_paths(), ids=" ".join)
def test_every_command_has_help(path: list[str]) -> None:
    result = run_cli(*path, "--help")
    assert result.code == 0, result.stderr
    assert f"Usage: registry {' '.join(path)}" in result.stdout
    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]  # type: ignore[attr-defined]
    assert command.help and len(command.help.strip()) > 20, f"{path} has no real help text"


def test_unexpected_errors_are_one_line_with_exit_3(monkeypatch: pytest.MonkeyPatch) -> None:
    import registry.repository.validation

    def explode(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(registry.repository.validation, "validate", explode)
    result = run_cli("validate")
    assert result.code == 3
    assert result.stderr == ("unexpected error: ZeroDivisionError: boom (rerun with --debug for "
                             "the traceback, and report it)\n")


def test_help_does_not_import_heavy_modules() -> None:
    code = ("import sys; from registry.cli.app import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = {'git', 'psycopg', 'jsonschema', 'tokenizers', 'yaml'} & set(sys.modules)\n"
            "print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
