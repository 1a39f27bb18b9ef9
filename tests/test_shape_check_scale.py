"""The table-shape drift check at many configs: the expected shape is built once per prefix
policy (not a temporary table per config) and every table's catalog shape is read in one
query, so plan/status/reconcile do a fixed amount of catalog work however many configs there
are; and the comparison still tells each table from another config's (issue 13, item 3)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from registry.config import LockedConfig
from registry.database.chunk_table import table_ddl
from registry.reconciler.actual import shape_drift

REGISTRY = "public.document_chunks"


class CountingConnection(psycopg.Connection[Any]):
    """A real connection that counts the statements it is asked to run."""

    statements = 0

    def execute(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        type(self).statements += 1
        return super().execute(*args, **kwargs)


def config(i: int, *, policy: str | None = None, chunk_size: int | None = None) -> LockedConfig:
    when = datetime(2025, 1, 1, tzinfo=UTC) + timedelta(minutes=i)
    return LockedConfig(
        chunk_version=when.strftime("%Y-%m-%d-%H%M%S") + "-v1",
        chunk_size=chunk_size or 200 + i % 250, overlap_ratio=0.1, jaccard_threshold=0.8,
        prefix_policy=policy or "AB"[i % 2], embedder_name="BAAI/bge-large-en-v1.5",
        embedder_max_tokens=512, tokenizer_name="BAAI/bge-large-en-v1.5",
        tokenizer_hash="sha256:" + "ab" * 32, created_at=when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        created_by="Test <test@example.com>")


def create(conn: psycopg.Connection[Any], table: str, made_from: LockedConfig) -> None:
    for statement in table_ddl("public", table, chunk_version=made_from.chunk_version,
                               config_hash=made_from.config_hash,
                               prefix_policy=made_from.prefix_policy,
                               chunk_size=made_from.chunk_size,
                               token_budget=made_from.token_budget, registry=REGISTRY):
        conn.execute(statement)


def tables_of(configs: list[LockedConfig]) -> dict[str, LockedConfig]:
    return {"document_chunks_" + c.chunk_version.replace("-", "_"): c for c in configs}


def test_tables_made_by_the_ddl_of_their_config_show_no_drift_and_others_do(dsn: str) -> None:
    configs = [config(i) for i in range(24)]
    tables = tables_of(configs)
    names = list(tables)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for name, made_from in tables.items():
            create(conn, name, made_from)
        # Made from another config: another chunk_size, version, policy.
        conn.execute(f"DROP TABLE {names[1]}")
        create(conn, names[1], config(1, chunk_size=999, policy="A"))
        conn.execute(f"DROP TABLE {names[2]}")
        create(conn, names[2], configs[3])

        drift = shape_drift(conn, "public", tables, REGISTRY)

    assert sorted(drift) == sorted([names[1], names[2]])
    assert any("999" in line for line in drift[names[1]])
    assert any(configs[3].chunk_version in line for line in drift[names[2]])


def test_the_shape_check_runs_the_same_statements_at_6_and_40_configs(dsn: str) -> None:
    executed = []
    for count in (6, 40):
        configs = [config(i) for i in range(count)]
        tables = tables_of(configs)
        with psycopg.connect(dsn, autocommit=True) as conn:
            for name, made_from in tables.items():
                create(conn, name, made_from)
        with CountingConnection.connect(dsn, autocommit=True) as counting:
            CountingConnection.statements = 0
            assert shape_drift(counting, "public", tables, REGISTRY) == {}
            executed.append(CountingConnection.statements)
        with psycopg.connect(dsn, autocommit=True) as conn:
            for name in tables:
                conn.execute(f"DROP TABLE {name}")

    assert executed[0] == executed[1], executed
