"""The README's exit-code table is the contract: every code it lists is raised by something
named in registry/errors.py and nothing else exits with an unlisted code; every command (found
by walking the typer app, so a new command without a row here fails) answers a usage error with
2, an unknown version with 16, and its own verdicts with the code the table gives them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import typer.main

from registry import errors
from registry.cli.app import app
from tests.database import promote
from tests.helpers import RegistryRepo, git, run_cli

ROOT = Path(__file__).resolve().parent.parent
UNKNOWN = "2099-01-01-000000-v9"
VERSION_PARAMS = {"version", "compare", "against"}
"""Parameters that name a chunk_version: an unknown one must exit UNKNOWN_VERSION everywhere."""


def readme_exit_codes() -> dict[int, str]:
    text = (ROOT / "README.md").read_text()
    table = text.split("### Exit codes", 1)[1].split("\n## ", 1)[0]
    return {int(m[1]): m[2] for m in re.finditer(r"^\| (\d+) \| (.+) \|$", table, re.M)}


def leaf_commands() -> dict[str, Any]:
    """Every runnable command of the app, by its path (`db url`)."""
    found: dict[str, Any] = {}

    def walk(command: Any, path: list[str]) -> None:
        if getattr(command, "commands", None):
            for name, sub in command.commands.items():
                walk(sub, [*path, name])
        else:
            found[" ".join(path)] = command

    walk(typer.main.get_command(app), [])
    return found


def defined_codes() -> set[int]:
    classes = [c for c in vars(errors).values()
               if isinstance(c, type) and issubclass(c, errors.RegistryError)]
    return {c.exit_code for c in classes} | {errors.UNEXPECTED_EXIT_CODE, *errors.VERDICT_CODES}


def test_the_readme_table_lists_exactly_the_codes_the_code_defines() -> None:
    table = readme_exit_codes()

    assert set(table) == defined_codes() | {0, 2, 130}
    assert errors.UnknownVersion.exit_code == errors.UNKNOWN_VERSION == 16
    assert "usage error" in table[2] and table[2].count(";") == 0
    assert "unknown version" in table[errors.UNKNOWN_VERSION]
    assert "pending" in table[errors.PLAN_PENDING]
    assert "warnings" in table[errors.HEALTH_WARNINGS]
    assert "critical" in table[errors.HEALTH_CRITICAL]
    assert len({errors.PLAN_PENDING, errors.HEALTH_WARNINGS, errors.HEALTH_CRITICAL, 1, 2}) == 5


@pytest.mark.slow
def test_every_command_answers_as_the_exit_code_table_says(
    registry_repo: RegistryRepo, dsn: str, tmp_path: Path
) -> None:
    repo = str(registry_repo.path)
    v1 = registry_repo.locked()
    assert run_cli("tag", "--repo", repo).code == 0
    promote(registry_repo, v1)
    cases = tmp_path / "cases.jsonl"
    cases.write_text('{"query_id": "q1", "query": "what", "gt_answer": "that"}\n')
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.md").write_text("# A\n\nSome text.\n")
    dead = "postgresql://postgres@127.0.0.1:1/nowhere"
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    not_a_repo = tmp_path / "plain"
    not_a_repo.mkdir()
    existing_init = tmp_path / "team"
    (existing_init / "configs").mkdir(parents=True)
    (existing_init / "configs" / "production.yaml").write_text("production: other\n")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "configs").mkdir()
    (bad / "configs" / "production.yaml").write_text("production: [\n")
    git(bad, "init", "--quiet")
    tok = str(registry_repo.tokenizer_file)
    required = {"ingest": ["--source", str(corpus), "--repo", repo, "--dsn", dsn,
                           "--tokenizer-file", tok],
                "eval": ["--cases", str(cases), "--repo", repo, "--dsn", dsn],
                "health": ["--repo", repo, "--dsn", dsn],
                "show": ["--repo", repo], "runbook": ["--repo", repo], "env": ["--repo", repo],
                "promote": ["--repo", repo], "retire": ["--repo", repo]}
    verdicts: dict[str, list[tuple[list[str], int]]] = {
        "init": [([str(existing_init)], 11)],
        "lock": [(["--repo", repo, "--tokenizer-file", tok, "--chunk-size", "5000"], 1),
                 (["--repo", str(not_a_repo), "--tokenizer-file", tok], 6)],
        "validate": [(["--repo", repo], 0), (["--repo", str(bad)], 1)],
        "tag": [(["--repo", repo], 0), (["--repo", str(not_a_repo)], 6)],
        "list": [(["--repo", repo], 0), (["--repo", repo, "--ref", "nope"], 6)],
        "show": [([v1, "--repo", repo], 0)],
        "runbook": [([v1, "--repo", repo], 0)],
        "env": [([v1, "--repo", repo], 0)],
        "promote": [([v1, "--repo", repo], 7), (["not-a-version", "--repo", repo], 16)],
        "retire": [([v1, "--repo", repo], 7)],
        "rollback": [(["--repo", repo], 7)],
        "history": [(["--repo", repo], 0)],
        "demo": [(["--keep", str(tmp_path / "taken")], 2)],
        "plan": [(["--repo", repo, "--dsn", dsn, "--detailed-exitcode"], errors.PLAN_PENDING),
                 (["--repo", repo, "--dsn", dead, "--detailed-exitcode"], 5),
                 (["--repo", repo, "--dsn", dsn], 0)],
        "health": [(["--repo", repo, "--dsn", dsn, "--no-record"], errors.HEALTH_CRITICAL)],
        "reconcile": [(["--repo", repo, "--dsn", dead], 5),
                      (["--repo", repo, "--dsn", dsn], 7)],
        "status": [(["--repo", repo, "--dsn", dsn], 0)],
        "eval": [(["--repo", repo, "--dsn", dsn], 2)],
        "ingest": [([v1, "--repo", repo, "--dsn", dead, "--source", str(corpus),
                     "--tokenizer-file", tok], 5)],
        "dashboard": [(["--out", str(tmp_path / "dash"), "--repo", repo, "--dsn", dead], 5)],
        "watch-promotion": [(["--repo", repo, "--dsn", dsn], 0)],
        "db url": [(["--dsn", dsn], 0), (["--dsn", " "], 2)],
        "db stop": [([], 0)],
        "notify test": [(["--repo", repo], 1)],
        "environments": [(["--repo", repo], 0)],
        "experiment start": [
            (["e", "--candidate", v1, "--share", "0.1", "--ends", "7d", "--repo", repo], 7),
            (["e", "--candidate", UNKNOWN, "--share", "0.1", "--ends", "7d", "--repo", repo],
             16)],
        "experiment set-share": [(["0.5", "--repo", repo], 7)],
        "experiment end": [(["--repo", repo], 7)],
        "experiment report": [(["--repo", repo, "--dsn", dsn], 7)],
        "tune": [(["--repo", repo, "--dsn", dsn, "--source", str(corpus), "--cases", str(cases),
                   "--tokenizer-file", tok, "--chunk-size", "5000"], 1),
                 (["--repo", repo, "--dsn", dsn, "--source", str(corpus), "--cases", str(cases),
                   "--tokenizer-file", tok, "--lock-best", "--pr", "--objectives", "size"], 2)],
    }
    commands = leaf_commands()
    mismatches: list[str] = []

    def check(path: str, args: list[str], expected: int) -> None:
        result = run_cli(*path.split(), *args)
        if result.code != expected:
            mismatches.append(f"registry {path} {' '.join(args)}: exit {result.code}, expected "
                              f"{expected}: {result.stderr.strip()[:300]}")

    assert set(commands) == set(verdicts), "a command without exit-code coverage here"
    for path, command in commands.items():
        check(path, ["--no-such-option"], 2)
        for args, expected in verdicts[path]:
            check(path, args, expected)
        names = {p.name for p in command.params} & VERSION_PARAMS
        for name in sorted(names):
            param = next(p for p in command.params if p.name == name)
            given = [UNKNOWN] if param.param_type_name == "argument" else [param.opts[0], UNKNOWN]
            partner = ["--compare", v1] if name == "against" else []
            check(path, [*given, *partner, *required[path.split()[0]]], errors.UNKNOWN_VERSION)
    assert not mismatches, "\n".join(mismatches)


def test_every_registry_error_survives_pickling_with_its_type_text_and_exit_code() -> None:
    """A Ray worker's refusal reaches the driver pickled: the user must get the same one line
    and exit code as from the built-in engine (plain Exception pickling would call the class
    with the rendered text alone, losing `fix` and `where` as fields)."""
    import pickle

    from registry.cli.demo import DemoFailed
    from registry.ingest.pipeline import IngestFailed
    from registry.quality.reader import ReaderError

    kinds = [k for k in vars(errors).values()
             if isinstance(k, type) and issubclass(k, errors.RegistryError)]
    kinds += [DemoFailed, IngestFailed, ReaderError]
    assert len(kinds) > 15
    for kind in kinds:
        error = kind("the model file differs", where="configs/v1.yaml", fix="pass the locked one")
        error.extra = 42  # type: ignore[attr-defined]
        back = pickle.loads(pickle.dumps(error))
        assert type(back) is kind
        assert (str(back), back.exit_code, back.message, back.where, back.fix, back.extra) == (
            str(error), error.exit_code, "the model file differs", "configs/v1.yaml",
            "pass the locked one", 42)
