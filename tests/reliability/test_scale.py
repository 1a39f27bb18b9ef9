"""Many tables on a server at its default settings: `registry status` reads thousands of
chunk tables without overflowing the shared lock table (max_locks_per_transaction 64)."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from registry.database import bookkeeping
from registry.database.chunk_table import table_ddl
from registry.errors import RegistryError
from registry.reconciler import actual
from registry.reconciler.run import reconcile
from registry.reconciler.status import status
from tests.database import Database, table_of
from tests.helpers import RegistryRepo

pytestmark = pytest.mark.reliability

MANY = 3000


def _many_chunk_tables(dsn: str, count: int) -> list[str]:
    """`count` managed shadow tables as the reconciler creates them (every index included),
    each a LIKE copy of the first (one statement: the same columns, checks and indexes)."""
    names = [f"document_chunks_2020_01_01_000000_s{i}" for i in range(count)]
    with psycopg.connect(dsn, autocommit=True) as conn:
        bookkeeping.ensure_schema(conn)
        for statement in table_ddl("public", names[0], chunk_version="2020-01-01-000000-s0",
                                   config_hash=f"{0:064x}", prefix_policy="A", chunk_size=400,
                                   token_budget=512):
            conn.execute(statement)
        like = sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL)")
        for start in range(0, count, 200):
            with conn.transaction(), conn.pipeline():
                for i, name in enumerate(names[start:start + 200], start):
                    if i:
                        conn.execute(like.format(sql.Identifier(name), sql.Identifier(names[0])))
                    bookkeeping.record_created(conn, "public", name, f"2020-01-01-000000-s{i}",
                                               f"{i:064x}", None)
    return names


@pytest.mark.timeout(900)
def test_status_reads_thousands_of_tables_at_default_settings(
    registry_repo: RegistryRepo, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    v1 = registry_repo.locked()
    reconcile(registry_repo.path, dsn=dsn)
    Database(dsn).fill(table_of(v1))
    many = _many_chunk_tables(dsn, MANY)
    with psycopg.connect(dsn) as conn:
        setting = conn.execute("SHOW max_locks_per_transaction").fetchone()
    assert setting == ("64",)

    estimated = status(registry_repo.path, dsn=dsn)
    counted = status(registry_repo.path, dsn=dsn, exact=True)
    monkeypatch.setattr(actual, "COUNT_BATCH", MANY * 2)  # every count in one transaction
    with pytest.raises(RegistryError, match="shared memory"):
        status(registry_repo.path, dsn=dsn, exact=True)

    for report, labelled in ((estimated, True), (counted, False)):
        rows = {r.table.removeprefix("public."): r for r in report.rows}
        assert len(rows) == MANY + 1
        assert all(rows[name].rows == 0 for name in many)
        assert all(r.rows_estimated is labelled for r in rows.values())
    assert {r.chunk_version: r.rows for r in counted.rows}[v1] == 3


def test_row_estimates_lock_no_table(dsn: str) -> None:
    """Estimates come from the catalog: a table locked exclusively by another session (an
    ALTER in progress) does not hold them up, where a count would wait."""
    names = _many_chunk_tables(dsn, 2)
    with psycopg.connect(dsn) as holder, psycopg.connect(dsn, autocommit=True) as conn:
        holder.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
            sql.Identifier(names[0])))
        conn.execute("SET statement_timeout = '2s'")
        assert actual.row_estimates(conn, "public", names) == {names[0]: 0, names[1]: 0}
