"""`registry demo` leaves nothing behind on any way out, refuses to reuse a directory, and
shell completion (bash, zsh, fish) offers the locked config versions for VERSION arguments."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from registry.cli import demo as demo_module
from registry.cli.app import app
from tests.helpers import RegistryRepo, run_cli

BIN = Path(sys.executable).parent


def demo_databases(server: str) -> list[str]:
    with psycopg.connect(server) as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'registry_demo%'")
        return [row[0] for row in rows.fetchall()]


def test_demo_keep_on_an_existing_directory_is_a_one_line_refusal(tmp_path: Path) -> None:
    existing = tmp_path / "mine"
    existing.mkdir()
    (existing / "notes.txt").write_text("keep me\n")

    result = run_cli("demo", "--keep", existing)

    assert result.code == 2
    assert result.stderr == f"error: --keep {existing} already exists (name a new or empty " \
                            "directory, or remove it first)\n"
    assert [p.name for p in existing.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("keep", [False, True])
@pytest.mark.slow
def test_a_demo_that_fails_midway_drops_its_database(
    embedded_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keep: bool
) -> None:
    """An exception after the first reconcile (tables made, connections opened): the database
    goes either way; with --keep the repo stays to be looked at."""
    original = demo_module.Demo.registry

    def failing(self: Any, *args: str, expect: int = 0) -> None:
        if args[0] == "eval":
            raise RuntimeError("the demo broke here")
        original(self, *args, expect=expect)

    monkeypatch.setattr(demo_module.Demo, "registry", failing)
    before = demo_databases(embedded_server)
    kept = tmp_path / "kept"

    with pytest.raises(RuntimeError, match="the demo broke here"):
        demo_module.run_demo(app, dsn=embedded_server, keep=kept if keep else None,
                             out=open(os.devnull, "w"))  # noqa: SIM115

    assert demo_databases(embedded_server) == before
    assert (kept / "registry" / "configs").is_dir() == keep


def complete(shell: str, line: str, cwd: Path) -> list[str]:
    """What `registry` prints for Tab at the end of `line`, driven as each shell's script does."""
    env = {**os.environ, "_REGISTRY_COMPLETE": f"complete_{shell}"}
    if shell == "bash":
        words = line.split(" ")
        env |= {"COMP_WORDS": line, "COMP_CWORD": str(len(words) - 1)}
    else:
        env |= {"_TYPER_COMPLETE_ARGS": line}
        if shell == "fish":
            env["_TYPER_COMPLETE_FISH_ACTION"] = "get-args"
    proc = subprocess.run([str(BIN / "registry")], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    if shell == "zsh":  # _arguments '*: :(("v1" "v2"))'
        return [item.strip('"') for item in out.split("((")[1].split("))")[0].split()]
    return [item.split("\t")[0] for item in out.split()]


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_offers_the_config_versions(registry_repo: RegistryRepo, shell: str,
                                               tmp_path: Path) -> None:
    first = registry_repo.locked()
    second = registry_repo.locked(chunk_size=300)

    assert complete(shell, "registry show ", registry_repo.path) == [second, first, "production"]
    assert complete(shell, f"registry promote {first}", registry_repo.path) == [first]
    assert complete(shell, f"registry show --repo {registry_repo.path} pro", tmp_path) == \
        ["production"]
