"""Connections and the bookkeeping schema: created once, migrated idempotently, versioned."""

from __future__ import annotations

import threading

import psycopg
import pytest

from registry.database.bookkeeping import (
    BOOKKEEPING_VERSION,
    MIGRATIONS,
    bookkeeping_version,
    ensure_schema,
)
from registry.database.connection import redact
from registry.errors import RegistryError
from tests.database import Database


def test_concurrent_first_runs_create_the_schema_once(dsn: str) -> None:
    results: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def first_run() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            start.wait()
            try:
                results.append(ensure_schema(conn))
            except BaseException as err:
                errors.append(err)

    threads = [threading.Thread(target=first_run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == [] and results == [BOOKKEEPING_VERSION] * 4
    db = Database(dsn)
    assert db.query("SELECT version FROM chunk_registry.schema_version") == [(BOOKKEEPING_VERSION,)]
    tables = db.query("SELECT tablename FROM pg_tables WHERE schemaname = 'chunk_registry' "
                      "ORDER BY 1")
    assert [t for (t,) in tables] == [
        "ce_score_distributions",
        "embedding_cache",
        "eval_runs",
        "experiment_outcomes",
        "experiment_stops",
        "health_reports",
        "ingest_runs",
        "managed_tables",
        "notifications",
        "reconcile_runs",
        "rollback_proposals",
        "schema_version",
        "served_state",
        "served_tables",
        "tune_runs",
        "tune_trials",
    ]


def test_a_version_1_schema_is_migrated_in_place(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in MIGRATIONS[1]():
            conn.execute(statement)
        conn.execute("INSERT INTO chunk_registry.schema_version (version) VALUES (1)")
        conn.execute("INSERT INTO chunk_registry.health_reports (report) VALUES ('{}')")
        assert bookkeeping_version(conn) == 1

        assert ensure_schema(conn) == BOOKKEEPING_VERSION

        assert bookkeeping_version(conn) == BOOKKEEPING_VERSION
        assert conn.execute("SELECT count(*) FROM chunk_registry.health_reports").fetchone() == (1,)
        assert conn.execute("SELECT count(*) FROM chunk_registry.eval_runs").fetchone() == (0,)
        assert conn.execute(
            "SELECT count(*) FROM chunk_registry.rollback_proposals").fetchone() == (0,)


def test_one_rollback_proposal_per_promotion_is_enforced_by_the_database(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        ensure_schema(conn)
        insert = ("INSERT INTO chunk_registry.rollback_proposals (chunk_version, promoted_at, "
                  "promote_commit, target_version, registry) VALUES ('v2', now(), %s, 'v1', 'r')")
        conn.execute(insert, ("a" * 40,))
        conn.execute(insert, ("b" * 40,))
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(insert, ("a" * 40,))


def test_the_database_enforces_the_bookkeeping_invariants(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        ensure_schema(conn)
        insert = ("INSERT INTO chunk_registry.managed_tables (schema_name, table_name, "
                  "chunk_version, config_hash, status, registry) "
                  "VALUES ('public', %s, %s, 'h', %s, 'r')")
        conn.execute(insert, ("document_chunks_a", "a", "production"))
        conn.execute("INSERT INTO chunk_registry.managed_tables (schema_name, table_name, "
                     "chunk_version, config_hash, status, registry) VALUES ('other', "
                     "'document_chunks_a', 'a', 'h', 'production', 'other-registry')")
        with pytest.raises(psycopg.errors.NotNullViolation):
            conn.execute("INSERT INTO chunk_registry.managed_tables (schema_name, table_name, "
                         "chunk_version, config_hash, status) VALUES ('public', 'x', 'x', 'h', "
                         "'shadow')")
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(insert, ("document_chunks_b", "b", "production"))
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(insert, ("document_chunks_a", "c", "shadow"))
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(insert, ("document_chunks_d", "d", "retired"))
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(insert, ("document_chunks_e", "e", "gone"))


def test_a_newer_bookkeeping_schema_is_refused(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        ensure_schema(conn)
        conn.execute("UPDATE chunk_registry.schema_version SET version = %s",
                     (BOOKKEEPING_VERSION + 1,))
        with pytest.raises(RegistryError, match="upgrade chunk-registry"):
            ensure_schema(conn)
        assert bookkeeping_version(conn) == BOOKKEEPING_VERSION + 1


@pytest.mark.parametrize(("dsn", "shown"), [
    ("postgresql://u:pw@h:5432/db", "postgresql://u:***@h:5432/db"),
    ("postgresql://u@h/db?password=pw&sslmode=require",
     "postgresql://u@h/db?password=***&sslmode=require"),
    ("host=h user=u password=pw dbname=db", "host=h user=u password=*** dbname=db"),
    ("host=h password = 'p w\\'x' dbname=db", "host=h password = *** dbname=db"),
    ("postgresql://u@h/db", "postgresql://u@h/db"),
])
def test_redact_masks_the_password_in_every_dsn_form(dsn: str, shown: str) -> None:
    assert redact(dsn) == shown
