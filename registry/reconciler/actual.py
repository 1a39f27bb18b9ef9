"""The actual state: what the database holds, read in a constant number of queries (the
catalog, the bookkeeping rows, and row estimates or counts), or made up for an offline plan."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from registry.config import ProductionConfig
from registry.database import bookkeeping
from registry.database.bookkeeping import BOOKKEEPING_SCHEMA, ManagedTable

if TYPE_CHECKING:
    from registry.repository.state import RegistryState


@dataclass(frozen=True)
class Relation:
    """A relation in the target schema named like the registry's (the view or a table)."""

    name: str
    kind: str
    reads: tuple[tuple[str, str], ...] = ()

    @property
    def is_view(self) -> bool:
        return self.kind == "v"


@dataclass
class ActualState:
    """What the database holds: bookkeeping rows, look-alike relations, known row counts."""

    schema: str
    base_name: str
    now: datetime
    schema_exists: bool = True
    bookkeeping: bool = True
    managed: list[ManagedTable] = field(default_factory=list)
    relations: dict[str, Relation] = field(default_factory=dict)
    rows: dict[str, int | None] = field(default_factory=dict)
    """table -> row count (or 1/0 for a has-rows probe); None when unknown (offline plan)."""

    @property
    def live(self) -> dict[str, ManagedTable]:
        """Managed rows not yet dropped, by chunk_version (unique by an index)."""
        return {m.chunk_version: m for m in self.managed if m.status != "dropped"}

    @property
    def production(self) -> ManagedTable | None:
        return next((m for m in self.managed if m.status == "production"), None)


_CATALOG = """
SELECT statement_timestamp(),
       EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = %(schema)s),
       to_regclass(%(bookkeeping)s) IS NOT NULL,
       to_regclass(%(evals)s) IS NOT NULL,
       (SELECT coalesce(jsonb_agg(jsonb_build_array(c.relname, c.relkind, (
                SELECT coalesce(jsonb_agg(DISTINCT jsonb_build_array(tn.nspname, t.relname)), '[]')
                FROM pg_rewrite r
                JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid
                                AND d.refclassid = 'pg_class'::regclass
                JOIN pg_class t ON t.oid = d.refobjid
                JOIN pg_namespace tn ON tn.oid = t.relnamespace
                WHERE r.ev_class = c.oid AND d.refobjid <> c.oid))), '[]')
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = %(schema)s AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
          AND (c.relname = %(base)s OR c.relname LIKE %(pattern)s ESCAPE '\\'))
"""

def _like_prefix(text: str) -> str:
    """`text` matched literally by LIKE ... ESCAPE '\\' (its `_`, `%` and `\\` escaped)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def read_actual(conn: psycopg.Connection[Any], settings: ProductionConfig) -> ActualState:
    """The database as the planner needs it, in two queries whatever the number of tables."""
    base = settings.base_name
    row = conn.execute(
        _CATALOG,
        {"schema": settings.schema, "base": base, "pattern": _like_prefix(base) + "\\_%",
         "bookkeeping": f"{BOOKKEEPING_SCHEMA}.managed_tables",
         "evals": f"{BOOKKEEPING_SCHEMA}.eval_runs"},
    ).fetchone()
    assert row is not None
    now, schema_exists, has_bookkeeping, evals, relations = row
    actual = ActualState(schema=settings.schema, base_name=base, now=now,
                         schema_exists=schema_exists, bookkeeping=has_bookkeeping)
    for name, kind, reads in relations:
        actual.relations[name] = Relation(name, kind, tuple((s, t) for s, t in reads))
    if has_bookkeeping:
        actual.managed = bookkeeping.managed_tables(conn, with_last_compare=evals)
    return actual


_COUNT = sql.SQL("SELECT count(*) FROM {}.{}")
_HAS_ROWS = sql.SQL("SELECT count(*) FROM (SELECT 1 FROM {}.{} LIMIT 1) AS capped")
COUNT_BATCH = 100
"""Tables counted per transaction: each count locks its table and the indexes the planner
opens, and one transaction over thousands of tables overflows the shared lock table at default
settings (max_locks_per_transaction 64 x max_connections)."""


def row_counts(
    conn: psycopg.Connection[Any], schema: str, tables: Sequence[str], *, exact: bool = True
) -> dict[str, int | None]:
    """Rows of many tables (not `exact`: 1 or 0, "has rows") in one round trip: the counts go
    out as one pipeline (a UNION ALL of N arms plans twice as slowly), with a sync every
    COUNT_BATCH statements so that, in autocommit, each batch is a transaction of its own and
    releases its locks."""
    if not tables:
        return {}
    template = _COUNT if exact else _HAS_ROWS
    cursors = []
    with conn.pipeline() as pipeline:
        for index, table in enumerate(tables):
            if index and index % COUNT_BATCH == 0:
                pipeline.sync()
            cursor = conn.cursor()
            cursor.execute(template.format(sql.Identifier(schema), sql.Identifier(table)))
            cursors.append(cursor)
    counts: dict[str, int | None] = {}
    for table, cursor in zip(tables, cursors, strict=True):
        row = cursor.fetchone()
        counts[table] = int(row[0]) if row else None
    return counts


_ESTIMATES = """
SELECT c.relname,
       CASE WHEN c.reltuples >= 0 AND pg_stat_get_mod_since_analyze(c.oid) = 0
            THEN c.reltuples::bigint
            ELSE pg_stat_get_live_tuples(c.oid) END
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = ANY(%s) AND c.relkind IN ('r', 'p')
"""


def row_estimates(
    conn: psycopg.Connection[Any], schema: str, tables: Sequence[str]
) -> dict[str, int | None]:
    """Estimated rows of many tables from the catalog alone, in one query that locks none of
    them and reads no heap: pg_class.reltuples while no row changed since the last ANALYZE,
    else the statistics collector's live tuples (which lag a backend's writes by up to a
    second until it flushes them)."""
    if not tables:
        return {}
    found = {name: int(rows) for name, rows in conn.execute(_ESTIMATES, (schema, list(tables)))}
    return {table: found.get(table) for table in tables}


def synthetic_actual(state: RegistryState) -> ActualState:
    """A database exactly reconciled to `state`, rows unknown: the base of an offline plan."""
    settings = state.settings
    now = datetime.now(UTC)
    actual = ActualState(schema=settings.schema, base_name=settings.base_name, now=now)
    production = settings.production
    for version, config in sorted(state.configs.items()):
        table = settings.table_name(version)
        status = "production" if version == production else "shadow"
        actual.managed.append(ManagedTable(
            settings.schema, table, version, config.config_hash, status, now, state.commit,
            now if status == "production" else None, None, None, None, present=True))
        actual.relations[table] = Relation(table, "r")
        actual.rows[table] = None
    if production:
        actual.relations[settings.base_name] = Relation(
            settings.base_name, "v", ((settings.schema, settings.table_name(production)),))
    return actual


