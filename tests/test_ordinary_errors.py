"""Ordinary conditions are one line with their cause, fix and own exit code, never
"unexpected error" (exit 3): a role without rights on the bookkeeping schema, eval cases
PostgreSQL text cannot hold, a bookkeeping schema edited by hand."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from registry.database.bookkeeping import BOOKKEEPING_SCHEMA
from tests.helpers import run_cli, training_text
from tests.test_ingest import Shadow, shadow  # noqa: F401  (the fixture)


def cases_file(path: Path, query: str = "the module") -> Path:
    path.write_text(json.dumps({"query_id": "q1", "query": query, "gt_answer": "module"}) + "\n")
    return path


def corpus_file(path: Path) -> Path:
    path.write_text(json.dumps({"doc_id": "a", "text": training_text()[3]}) + "\n")
    return path


def commands(target: Shadow, tmp_path: Path, dsn: str) -> dict[str, list[str | Path]]:
    repo = ["--repo", target.repo.path, "--dsn", dsn]
    return {
        "ingest": ["ingest", target.version, "--source", corpus_file(tmp_path / "c.jsonl"),
                   "--tokenizer-file", target.repo.tokenizer_file, "--workers", "1", *repo],
        "eval": ["eval", target.version, "--cases", cases_file(tmp_path / "q.jsonl"), *repo],
        "health": ["health", "--version", target.version, "--tokenizer-file",
                   target.repo.tokenizer_file, *repo],
        "watch-promotion": ["watch-promotion", *repo],
        "status": ["status", "--no-fetch", *repo],
    }


@pytest.fixture
def stranger(shadow: Shadow) -> Iterator[str]:  # noqa: F811
    """The DSN of a role that may log in and nothing more."""
    role = f"stranger_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(shadow.dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    yield make_conninfo(shadow.dsn, user=role)
    with psycopg.connect(shadow.dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


@pytest.mark.parametrize("command", ["ingest", *(
    pytest.param(c, marks=pytest.mark.reliability) for c in ("eval", "health", "watch-promotion"))])
def test_a_role_without_rights_gets_exit_13_and_the_grant_to_ask_for(
    shadow: Shadow, stranger: str, tmp_path: Path, command: str  # noqa: F811
) -> None:
    shadow.ingest(corpus_file(tmp_path / "first.jsonl"))
    result = run_cli(*commands(shadow, tmp_path, stranger)[command])
    assert result.code == 13, result
    assert result.stderr.startswith("error: the database role lacks a right")
    assert "permission denied" in result.stderr and len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize("query", ["nul \u0000 inside", "lone \ud800 surrogate"])
def test_an_eval_case_postgres_cannot_store_is_refused_at_its_line(
    shadow: Shadow, tmp_path: Path, query: str  # noqa: F811
) -> None:
    shadow.ingest(corpus_file(tmp_path / "first.jsonl"))
    for field in ("query", "gt_answer", "query_id"):
        case = {"query_id": "q1", "query": "module", "gt_answer": "module", field: query}
        cases = tmp_path / "q.jsonl"
        cases.write_text(json.dumps(case) + "\n")
        result = run_cli("eval", shadow.version, "--cases", cases, "--repo", shadow.repo.path,
                         "--dsn", shadow.dsn)
        assert result.code == 1, (field, result)
        assert f"q.jsonl:1: case field {field} holds a NUL character or an unpaired " \
               "surrogate" in result.stderr


DAMAGE = {
    "version row deleted": "DELETE FROM {s}.schema_version",
    "version table dropped": "DROP TABLE {s}.schema_version",
    "ingest_runs dropped": "DROP TABLE {s}.ingest_runs CASCADE",
    "eval_runs dropped": "DROP TABLE {s}.eval_runs CASCADE",
    "health_reports dropped": "DROP TABLE {s}.health_reports CASCADE",
    "managed_tables column dropped": "ALTER TABLE {s}.managed_tables DROP COLUMN status",
}


@pytest.mark.parametrize("damage", [
    d if d in ("version row deleted", "ingest_runs dropped")
    else pytest.param(d, marks=pytest.mark.reliability) for d in sorted(DAMAGE)])
@pytest.mark.slow
def test_a_hand_edited_bookkeeping_schema_is_exit_14_for_every_command(
    shadow: Shadow, tmp_path: Path, damage: str  # noqa: F811
) -> None:
    shadow.ingest(corpus_file(tmp_path / "first.jsonl"))
    with psycopg.connect(shadow.dsn, autocommit=True) as admin:
        admin.execute(sql.SQL(DAMAGE[damage]).format(s=sql.Identifier(BOOKKEEPING_SCHEMA)))
    codes = {}
    for name, args in commands(shadow, tmp_path, shadow.dsn).items():
        result = run_cli(*args)
        codes[name] = result.code
        assert result.code != 3, (name, result.stderr)
        if "error:" in result.stderr:
            assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert 14 in codes.values(), codes


@pytest.mark.parametrize("bad_dsn", ["postgresql://host-\udfff/db", "host=a password=b\ud800",
                                 "postgresql://u:p@" + "x" * 70 + ".example/db",
                                 "postgresql://u:p@a..b/db"])
def test_a_dsn_that_cannot_be_encoded_is_a_usage_error(
    shadow: Shadow, bad_dsn: str  # noqa: F811
) -> None:
    """Found by the fuzz: a lone surrogate (argv from non-UTF-8 bytes) or a host label IDNA
    refuses used to be "unexpected error"."""
    result = run_cli("status", "--repo", shadow.repo.path, "--no-fetch", "--dsn", bad_dsn)
    assert result.code == 2, result
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_a_wrapped_driver_error_keeps_exit_13_for_a_missing_right(
    shadow: Shadow, stranger: str  # noqa: F811
) -> None:
    """`database_error` (ingest's load, tune, reconcile, environments) maps a missing right as
    the central `explain` does, not to a generic "database error" (exit 1)."""
    from registry.database.connection import database_error, explain

    with psycopg.connect(stranger, autocommit=True) as conn, \
            pytest.raises(psycopg.Error) as caught:
        conn.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(shadow.table)))
    wrapped = database_error(caught.value, stranger, "loading the table")
    central = explain(caught.value)
    assert central is not None and wrapped.exit_code == central.exit_code == 13
    assert str(wrapped) == str(central)


@pytest.mark.slow
def test_a_role_that_may_not_write_the_chunk_table_gets_exit_13_from_ingest_loading(
    shadow: Shadow, stranger: str, tmp_path: Path  # noqa: F811
) -> None:
    """Rights on the bookkeeping schema and SELECT on the shadow table, not INSERT: the COPY
    fails inside ingest's "database error while loading" path, which must say 13."""
    role = psycopg.conninfo.conninfo_to_dict(stranger)["user"]
    with psycopg.connect(shadow.dsn, autocommit=True) as admin:
        schema = admin.execute("SELECT schemaname FROM pg_tables WHERE tablename = %s",
                               (shadow.table,)).fetchone()
        assert schema is not None
        who = sql.Identifier(str(role))
        book = sql.Identifier(BOOKKEEPING_SCHEMA)
        admin.execute(sql.SQL("GRANT USAGE, CREATE ON SCHEMA {} TO {}").format(book, who))
        admin.execute(sql.SQL("GRANT ALL ON ALL TABLES IN SCHEMA {} TO {}").format(book, who))
        admin.execute(sql.SQL("GRANT ALL ON ALL SEQUENCES IN SCHEMA {} TO {}").format(book, who))
        admin.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(
            sql.Identifier(schema[0]), who))
        admin.execute(sql.SQL("GRANT SELECT ON {}.{} TO {}").format(
            sql.Identifier(schema[0]), sql.Identifier(shadow.table), who))
    result = run_cli(*commands(shadow, tmp_path, stranger)["ingest"])
    assert result.code == 13, result
    assert "permission denied" in result.stderr and len(result.stderr.splitlines()) == 1
    failed = shadow.runs()
    assert failed and failed[-1]["status"] == "failed", failed
