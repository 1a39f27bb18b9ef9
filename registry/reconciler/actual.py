"""The actual state: what the database holds, read in a constant number of queries (the
catalog, the bookkeeping rows, and row estimates or counts), or made up for an offline plan."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from registry.config import LockedConfig, ProductionConfig, ingest_run_id_for
from registry.database import bookkeeping
from registry.database.bookkeeping import BOOKKEEPING_SCHEMA, ManagedTable
from registry.database.chunk_table import (
    EMBEDDING_COLUMN,
    VECTOR_EXTENSION,
    Marker,
    VectorColumn,
    hnsw_index_name,
    read_marker,
    table_ddl,
)
from registry.quality.gate import GateVerdict

if TYPE_CHECKING:
    from registry.repository.state import RegistryState


@dataclass(frozen=True)
class Relation:
    """A relation in the target schema named like the registry's (the view or a table)."""

    name: str
    kind: str
    reads: tuple[tuple[str, str], ...] = ()
    marker: Marker | None = None
    """The registry's marker in its comment (None: unmarked, so not the registry's)."""

    @property
    def is_view(self) -> bool:
        return self.kind == "v"


@dataclass(frozen=True)
class VectorSupport:
    """pgvector in the target database: where its type lives (None: not created), whether the
    server has it to create, and whether this role may (superuser, or a trusted extension and
    CREATE on the database)."""

    database: str
    type_schema: str | None
    available: bool
    can_create: bool

    @property
    def usable(self) -> bool:
        """Whether a table with a vector column can be created now (the extension first)."""
        return self.type_schema is not None or (self.available and self.can_create)

    def refusal(self) -> tuple[str, str]:
        """(what, how to fix) when it cannot: the admin's one statement, in this database."""
        statement = f"CREATE EXTENSION {VECTOR_EXTENSION};"
        if not self.available:
            return (f"pgvector is not installed on the server of database {self.database}, so "
                    "the tables of configs that pin an embedder cannot be created",
                    f"an admin installs pgvector on the server, then runs `{statement}` in "
                    f"database {self.database}")
        return (f"the pgvector extension is not created in database {self.database} and this "
                "role may not create it", f"an admin runs `{statement}` in database "
                f"{self.database}, then reconcile again")


ASSUMED_VECTOR = VectorSupport("(offline)", "public", True, True)
"""An offline plan's assumption: pgvector is there (a real plan reads the database)."""


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
    served_until: dict[tuple[str, str], datetime | None] = field(default_factory=dict)
    """(schema, table) -> when applications stopped being served it (None: served now)."""
    vector: VectorSupport = ASSUMED_VECTOR
    shape_drift: dict[str, list[str]] = field(default_factory=dict)
    """table -> how its shape differs from what the reconciler creates (read for the tables
    of the desired configs only; absent: not compared, or no difference)."""
    path_gate: GateVerdict | None = None
    """The promotion path gate's verdict on the version the environment should serve (read
    when it has `promotion:` and a swap to a version it never served is due)."""

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
                WHERE r.ev_class = c.oid AND d.refobjid <> c.oid),
                obj_description(c.oid, 'pg_class'))), '[]')
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = %(schema)s AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
          AND (c.relname = %(base)s OR c.relname LIKE %(pattern)s ESCAPE '\\'))
"""

def _like_prefix(text: str) -> str:
    """`text` matched literally by LIKE ... ESCAPE '\\' (its `_`, `%` and `\\` escaped)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


_VECTOR = """
SELECT current_database(),
       (SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
        WHERE e.extname = %(name)s),
       EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = %(name)s),
       coalesce((SELECT rolsuper FROM pg_roles WHERE rolname = current_user), false)
       OR (coalesce((SELECT bool_or(trusted) FROM pg_available_extension_versions
                     WHERE name = %(name)s), false)
           AND has_database_privilege(current_database(), 'CREATE'))
"""


def read_vector_support(conn: psycopg.Connection[Any]) -> VectorSupport:
    """pgvector in this database (one catalog query, nothing created)."""
    row = conn.execute(_VECTOR, {"name": VECTOR_EXTENSION}).fetchone()
    assert row is not None
    return VectorSupport(str(row[0]), row[1], bool(row[2]), bool(row[3]))


def vector_column(config: LockedConfig, type_schema: str | None) -> VectorColumn | None:
    """The vector column `config`'s table gets (None: a BM25-only config, or no pgvector)."""
    spec = config.embedder
    if spec is None or type_schema is None:
        return None
    return VectorColumn(spec.dimension, spec.normalize, type_schema)


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
    for name, kind, reads, comment in relations:
        actual.relations[name] = Relation(name, kind, tuple((s, t) for s, t in reads),
                                          read_marker(comment))
    if has_bookkeeping:
        actual.managed = bookkeeping.managed_tables(conn, with_last_compare=evals,
                                                    registries=settings.identities)
        actual.served_until = bookkeeping.served_tables_until(conn, settings.identities)
    actual.vector = read_vector_support(conn)
    return actual


_SHAPE = """
SELECT coalesce((SELECT jsonb_agg(jsonb_build_array('column', a.attname,
            format_type(a.atttypid, a.atttypmod), a.attnotnull, a.attgenerated::text,
            pg_get_expr(d.adbin, d.adrelid)) ORDER BY a.attname)
        FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE a.attrelid = %(oid)s AND a.attnum > 0 AND NOT a.attisdropped), '[]')
    || coalesce((SELECT jsonb_agg(jsonb_build_array('constraint', c.contype::text,
            pg_get_constraintdef(c.oid)) ORDER BY 2, 3)
        FROM pg_constraint c WHERE c.conrelid = %(oid)s), '[]')
    || coalesce((SELECT jsonb_agg(jsonb_build_array('index', i.indisunique,
            regexp_replace(pg_get_indexdef(i.indexrelid), '^.* USING ', 'USING ')) ORDER BY 3)
        FROM pg_index i WHERE i.indrelid = %(oid)s), '[]')
"""
"""A table's shape, without names: columns (type, NOT NULL, generated, default),
constraints (kind, definition) and indexes (unique, method, keys, predicate)."""


_SHAPE_OF = _SHAPE.replace(
    "%(oid)s", "to_regclass(format('%%I.%%I', %(schema)s::text, %(table)s::text))")
"""The shape of `schema.table` by name: '[]' when there is no such table."""
_SHAPE_TEXT_OF = "SELECT (SHAPE)::text".replace("SHAPE", _SHAPE_OF)
_SHAPES_IN_SCHEMA = """
SELECT rel.relname, (SHAPE)::text
FROM pg_class rel JOIN pg_namespace ns ON ns.oid = rel.relnamespace
WHERE ns.nspname = %(schema)s AND rel.relname = ANY(%(tables)s) AND rel.relkind IN ('r', 'p')
""".replace("SHAPE", _SHAPE.replace("%(oid)s", "rel.oid"))
"""The shape (as jsonb's text) of every table of `tables` in `schema` that exists, in one
query (the catalog only: no table is locked or read)."""

_PLACEHOLDER_VERSION = "chunk-registry-shape-version"
_PLACEHOLDER_CHUNK_SIZE = 987654321
_PLACEHOLDER_BUDGET = 987654322
"""What the expected shape of a prefix policy is built with, then replaced by each config's
own values: literals no real config has, so the replacement touches nothing else."""


def _expected_template(conn: psycopg.Connection[Any], prefix_policy: str, registry: str,
                       vector: VectorColumn | None = None) -> str:
    """The shape of a table made by the reconciler's DDL for `prefix_policy`, with
    placeholder values: the DDL run (as a temporary table, rolled back) so that the comparison
    follows it on every PostgreSQL version."""
    name = f"chunk_registry_expected_{prefix_policy.lower()}"
    with conn.pipeline(), conn.transaction(force_rollback=True):
        for statement in table_ddl(
            "pg_temp", name, chunk_version=_PLACEHOLDER_VERSION, config_hash="0" * 64,
            prefix_policy=prefix_policy, chunk_size=_PLACEHOLDER_CHUNK_SIZE,
            token_budget=_PLACEHOLDER_BUDGET, registry=registry, vector=vector,
        ):
            conn.execute(statement)
        row = conn.execute(_SHAPE_TEXT_OF, {"schema": "pg_temp", "table": name}).fetchone()
        assert row is not None
        return str(row[0])


def _expected(template: str, config: LockedConfig) -> str:
    """The policy's shape (jsonb text) with `config`'s values in place of the placeholders
    (text literals as the catalog prints them, inside JSON strings)."""
    filled = template
    for placeholder, value in (
            (f"'{_PLACEHOLDER_VERSION}'", _quoted(config.chunk_version)),
            (f"'{ingest_run_id_for(_PLACEHOLDER_VERSION, '0' * 64)}'",
             _quoted(config.ingest_run_id)),
            (str(_PLACEHOLDER_CHUNK_SIZE), str(config.chunk_size)),
            (str(_PLACEHOLDER_BUDGET), str(config.token_budget))):
        filled = filled.replace(placeholder, value)
    return filled


def _quoted(text: str) -> str:
    """A text literal as the catalog prints it, as it reads inside a JSON string."""
    return json.dumps("'" + text.replace("'", "''") + "'")[1:-1]


def _items(shape: str) -> list[tuple[Any, ...]]:
    return [tuple(item) for item in json.loads(shape)]


def _describe(item: tuple[Any, ...]) -> str:
    kind, *rest = item
    if kind == "column":
        name, type_name, not_null, generated, default = rest
        extra = " NOT NULL" if not_null else ""
        extra += f" GENERATED ({default})" if generated else (
            f" DEFAULT {default}" if default else "")
        return f"column {name} {type_name}{extra}"
    if kind == "constraint":
        return f"constraint {rest[1]}"
    return f"{'unique ' if rest[0] else ''}index {rest[1]}"


def shape_drift(
    conn: psycopg.Connection[Any], schema: str, tables: Mapping[str, LockedConfig],
    registry: str, vector_schema: str | None = None,
) -> dict[str, list[str]]:
    """table -> how it differs from the table the reconciler would create for its config
    (columns, types, constraints, indexes). The expected shape is built once per prefix
    policy by the same DDL (`chunk_table.table_ddl`, a temporary table rolled back) with
    placeholder values, then each config's values put in; the tables' shapes are read from
    the catalog in one query. A fixed amount of work however many configs (a temporary table
    per config cost ~4 statements and its locks each, every plan and status). Tables absent
    are left out. A config that pins an embedder expects its vector column and HNSW index (a
    template per prefix policy and vector shape; `vector_schema`: where pgvector's type lives,
    None when it is not created: then they are missing by definition)."""
    if not tables:
        return {}
    found = {str(name): str(shape) for name, shape in conn.execute(
        _SHAPES_IN_SCHEMA, {"schema": schema, "tables": list(tables)}).fetchall()}
    def key(config: LockedConfig) -> tuple[str, VectorColumn | None]:
        return config.prefix_policy, vector_column(config, vector_schema)

    templates = {shape_key: _expected_template(conn, shape_key[0], registry, shape_key[1])
                 for shape_key in {key(tables[name]) for name in found}}
    drift: dict[str, list[str]] = {}
    for table, shape in found.items():
        config = tables[table]
        no_vectors: list[str] = []
        if config.embedder is not None and vector_schema is None:
            no_vectors = [f"missing column {EMBEDDING_COLUMN} vector({config.embedder.dimension}) "
                          "NOT NULL (pgvector is not created in this database)",
                          f"missing index {hnsw_index_name(table)} USING hnsw"]
        expected_shape = _expected(templates[key(config)], config)
        if shape == expected_shape and not no_vectors:  # the same text: the same shape
            continue
        actual, expected = _items(shape), _items(expected_shape)
        if not actual:
            continue
        missing = [f"missing {_describe(i)}" for i in expected if i not in actual]
        extra = [f"unexpected {_describe(i)}" for i in actual if i not in expected]
        if missing or extra or no_vectors:
            drift[table] = missing + no_vectors + extra
    return drift


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


def synthetic_actual(
    state: RegistryState, retired: Mapping[str, datetime] | None = None
) -> ActualState:
    """A database exactly reconciled to `state`, rows unknown: the base of an offline plan.
    `retired` (version -> when): retired tables it still holds, those whose grace period
    under `state` is not over."""
    settings = state.settings
    now = datetime.now(UTC)
    actual = ActualState(schema=settings.schema, base_name=settings.base_name, now=now)
    for version, at in sorted((retired or {}).items()):
        if at + settings.grace_period <= now:
            continue
        table = settings.table_name(version)
        actual.managed.append(ManagedTable(
            settings.schema, table, version, "", "retired", at, None, None, None, at, None,
            present=True, registry=settings.identity))
        actual.relations[table] = Relation(table, "r", marker=Marker(settings.identity, version))
    production = settings.production
    for version, config in sorted(state.configs.items()):
        table = settings.table_name(version)
        status = "production" if version == production else "shadow"
        actual.managed.append(ManagedTable(
            settings.schema, table, version, config.config_hash, status, now, state.commit,
            now if status == "production" else None, None, None, None, present=True,
            registry=settings.identity))
        actual.relations[table] = Relation(
            table, "r", marker=Marker(settings.identity, version, config.config_hash))
        actual.rows[table] = None
    if production:
        actual.relations[settings.base_name] = Relation(
            settings.base_name, "v", ((settings.schema, settings.table_name(production)),),
            Marker(settings.identity, production))
    return actual


