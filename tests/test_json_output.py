"""`--format json` is a contract: each command's output has one shape, a JSON Schema shipped in
the package (`registry/output_schemas/<name>.json`, listed in docs/json-output.md), and every
command is run here for real and its output validated against it. Names are consistent
(`chunk_version`, schema-qualified tables), timestamps RFC 3339 UTC (`...Z`), counts integers."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from registry.cli.app import app
from registry.output_schemas import SCHEMA_DIR, output_schema, schema_names
from tests.helpers import RegistryRepo, run_cli
from tests.test_exit_codes import leaf_commands
from tests.test_health_eval import Corpus, write_corpus

ROOT = Path(__file__).resolve().parent.parent
RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
TIMESTAMP_KEY = re.compile(r"(_at|_ends|^at|^timestamp)$")
OLD_NAMES = {"config_version", "version"}
COUNT_KEYS = {"cases", "rows", "chunks", "documents", "bm25_prefix_leakage", "over_budget_chunks",
              "over_budget", "snapshot_size"}


def json_commands() -> set[str]:
    """The commands whose --format accepts json."""
    found = set()
    for path, command in leaf_commands().items():
        for param in command.params:
            if param.name == "fmt" and "json" in getattr(param.type, "choices", ()):
                found.add(path)
    return found


def walk(value: Any, path: str = "$") -> Iterator[tuple[str, str, Any]]:
    """(path, key, value) for every key of every object inside `value`."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield path, key, item
            yield from walk(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from walk(item, f"{path}[{index}]")


class Outputs:
    """Runs commands with --format json and keeps each parsed output under its schema name."""

    def __init__(self) -> None:
        self.seen: dict[str, list[Any]] = {}

    def run(self, schema: str, *args: str | Path, codes: tuple[int, ...] = (0,)) -> Any:
        result = run_cli(*args, "--format", "json")
        assert result.code in codes, (args, result.stdout, result.stderr)
        data = json.loads(result.stdout)
        self.seen.setdefault(schema, []).append(data)
        return data


@pytest.fixture
def lifecycle(registry_repo: RegistryRepo, dsn: str, tmp_path: Path) -> Outputs:
    """The lifecycle of the demo through the CLI, every JSON output kept."""
    out = Outputs()
    corpus: Corpus = write_corpus(tmp_path / "corpus")
    repo = ["--repo", str(registry_repo.path)]
    db = ["--dsn", dsn]
    tok = ["--tokenizer-file", str(registry_repo.tokenizer_file)]
    out.run("init", "init", tmp_path / "team")
    v1 = out.run("lock", "lock", *repo, *tok)["chunk_version"]
    registry_repo.merge(f"lock/{v1}")
    out.run("plan", "plan", *repo, "--base", "main", "--head", f"lock/{v1}")
    out.run("tag", "tag", "--push", *repo)
    out.run("validate", "validate", *repo)
    out.run("plan", "plan", *repo, *db)
    out.run("reconcile", "reconcile", *repo, *db)
    out.run("ingest", "ingest", v1, "--source", corpus.path, "--workers", "1", *repo, *db, *tok)
    out.run("eval", "eval", v1, "--cases", corpus.cases, *repo, *db)
    promote = out.run("change", "promote", v1, *repo, *db)
    registry_repo.merge(promote["branch"])
    out.run("reconcile", "reconcile", *repo, *db)
    v2 = out.run("lock", "lock", "--chunk-size", "300", *repo, *tok)["chunk_version"]
    registry_repo.merge(f"lock/{v2}")
    out.run("tag", "tag", "--push", *repo)
    out.run("reconcile", "reconcile", "--source", corpus.path, "--workers", "1", *repo, *db,
            *tok)
    out.run("eval-compare", "eval", "--compare", v2, "--cases", corpus.cases, *repo, *db,
            codes=(0, 1))
    out.run("health", "health", "--cases", corpus.cases, *repo, *db, *tok, codes=(0, 18, 19))
    out.run("status", "status", *repo, *db)
    out.run("status", "status", "--exact", *repo, *db)
    out.run("list", "list", *repo)
    out.run("show", "show", v1, *repo)
    out.run("runbook", "runbook", v1, *repo)
    out.run("watch-promotion", "watch-promotion", *repo, *db, codes=(0, 1))
    out.run("tune", "tune", "--source", corpus.path, "--cases", corpus.cases, "--trials", "2",
            "--chunk-size", "100:300", *repo, *db, *tok)
    out.run("dashboard", "dashboard", "--out", tmp_path / "dash", *repo, *db)
    registry_repo.merge(out.run("change", "promote", v2, *repo)["branch"])
    out.run("change", "rollback", *repo)
    v3 = out.run("lock", "lock", "--chunk-size", "200", *repo, *tok)["chunk_version"]
    registry_repo.merge(f"lock/{v3}")
    out.run("tag", "tag", "--push", *repo)
    out.run("change", "retire", v3, *repo)
    out.run("environments", "environments", *repo)
    started = out.run("change", "experiment", "start", "trial", "--candidate", v1, "--share",
                      "0.1", "--ends", "14d", *repo)
    registry_repo.merge(started["branch"])
    routed = out.run("reconcile", "reconcile", *repo, *db)
    assert routed["served"]["state"]["experiment"]["candidate"]["chunk_version"] == v1
    registry_repo.merge(out.run("change", "experiment", "set-share", "0.2", *repo)["branch"])
    out.run("experiment-report", "experiment", "report", *repo, *db)
    registry_repo.merge(out.run("change", "experiment", "end", *repo)["branch"])
    out.run("experiment-report", "experiment", "report", "--name", "trial", *repo, *db)
    out.run("history", "history", *repo)
    out.run("db-url", "db", "url", *db)
    out.run("db-stop", "db", "stop")
    return out


COMMAND_SCHEMAS = {
    "init": ["init"], "lock": ["lock"], "validate": ["validate"], "tag": ["tag"],
    "list": ["list"], "show": ["show"], "runbook": ["runbook"], "history": ["history"],
    "promote": ["change"], "retire": ["change"], "rollback": ["change"], "plan": ["plan"],
    "reconcile": ["reconcile"], "status": ["status"], "ingest": ["ingest"],
    "eval": ["eval", "eval-compare"], "health": ["health"], "dashboard": ["dashboard"],
    "watch-promotion": ["watch-promotion"], "db url": ["db-url"], "db stop": ["db-stop"],
    "tune": ["tune"], "environments": ["environments"], "experiment start": ["change"],
    "experiment set-share": ["change"], "experiment end": ["change"],
    "experiment report": ["experiment-report"],
}
"""Which schema each command's JSON follows."""


def test_every_json_command_has_a_shipped_schema_listed_in_the_docs() -> None:
    docs = (ROOT / "docs" / "json-output.md").read_text()

    assert json_commands() == set(COMMAND_SCHEMAS), "a --format json command without a schema"
    assert {s for names in COMMAND_SCHEMAS.values() for s in names} == set(schema_names())
    for name in schema_names():
        schema = output_schema(name)
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["$id"].endswith(f"/{name}.json")
        assert f"`{name}.json`" in docs, f"{name}.json is not documented"
    assert "docs/json-output.md" in (ROOT / "README.md").read_text()
    assert SCHEMA_DIR.parent.name == "registry"
    assert app is not None


@pytest.mark.slow
def test_every_json_output_validates_against_its_schema_and_follows_the_conventions(
    lifecycle: Outputs,
) -> None:
    assert set(lifecycle.seen) == set(schema_names())
    problems: list[str] = []
    for name, outputs in lifecycle.seen.items():
        validator = jsonschema.Draft202012Validator(
            output_schema(name), format_checker=jsonschema.FormatChecker())
        for output in outputs:
            problems += [f"{name}: {e.json_path}: {e.message}"
                         for e in validator.iter_errors(output)]
            for path, key, value in walk(output):
                if key in OLD_NAMES:
                    problems.append(f"{name}: {path}.{key}: say chunk_version")
                if TIMESTAMP_KEY.search(key) and isinstance(value, str):
                    if not RFC3339_UTC.match(value):
                        problems.append(f"{name}: {path}.{key}: {value!r} is not RFC 3339 UTC")
                    else:
                        datetime.fromisoformat(value)
                if key == "table" and isinstance(value, str) and "." not in value:
                    problems.append(f"{name}: {path}.{key}: {value!r} is not schema-qualified")
                if isinstance(value, float) and value.is_integer() and (
                        key in COUNT_KEYS or key.endswith("_count")):
                    problems.append(f"{name}: {path}.{key}: {value!r} is a count as a float")
    assert not problems, "\n".join(problems)
