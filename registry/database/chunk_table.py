"""The shape of a chunk table: one home for everything that must agree about it.

A locked config's chunks live in one table, named by `ProductionConfig.table_name` (the rule
itself is `config.table_name_for`) in the schema of production.yaml. Here: the DDL the
reconciler creates it with, the columns the production view exposes, the columns and COPY
types an ingest writes, the predicate of the rows a health check flags (the table's partial
index and the check's query must use the same one), the contextual prefix of a row, and which
table a version uses and whether it exists.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from registry.config import PREFIX_MARKER, LockedConfig, ingest_run_id_for
from registry.errors import Refused

if TYPE_CHECKING:
    from registry.embedding.spec import EmbedderSpec
    from registry.repository.state import RegistryState

VIEW_COLUMNS = (
    "id",
    "doc_id",
    "chunk_index",
    "embedding_text",
    "bm25_text",
    "embedding_token_count",
    "bm25_token_count",
    "chunk_version",
    "ingest_run_id",
    "created_at",
    "bm25_tsv",
)
"""The columns of the production view, in order: the contract retrieval code reads."""

ROW_COLUMNS = ("id", "doc_id", "chunk_index", "embedding_text", "bm25_text",
               "embedding_token_count", "bm25_token_count", "chunk_version", "ingest_run_id")
"""The columns an ingest writes, in the order of `Chunk.row()`; the others are computed."""

COPY_TYPES = ["text", "text", "int4", "text", "text", "int4", "int4", "text", "text"]
"""The binary COPY types of ROW_COLUMNS."""

EMBEDDING_COLUMN = "embedding"
"""The vector column of a table whose config pins an embedder: `vector(<dimension>)`, NOT NULL
(every row has its passage's vector), the contract retrieval code reads. Tables of format 1
(BM25-only) configs have none."""
VECTOR_EXTENSION = "vector"
"""pgvector's extension name (`CREATE EXTENSION vector;`)."""
VECTOR_ON_SEARCH_PATH = sql.SQL(
    "SELECT set_config('search_path', concat_ws(', ', nullif(current_setting('search_path'), ''), "
    "(SELECT quote_ident(n.nspname) FROM pg_extension e JOIN pg_namespace n "
    "ON n.oid = e.extnamespace WHERE e.extname = {})), false)"
).format(sql.Literal(VECTOR_EXTENSION))
"""Puts pgvector's schema at the end of the session's search_path: the reconciler creates the
extension in the tables' schema when it is missing, which need not be on the path, and the
`vector` type, its operators (`<#>`, `<=>`) and psycopg's adapter lookup resolve through it.
Harmless when it is already there or the extension is absent."""


@dataclass(frozen=True)
class VectorColumn:
    """The embedding column and its HNSW index, as a table of one embedder gets them.

    The operator class follows the normalization: vectors stored L2-normalised are indexed
    with `vector_ip_ops` (inner product: for unit vectors the same order as cosine, and the
    cheapest distance; queries order by `embedding <#> q`), raw vectors with
    `vector_cosine_ops` (queries order by `embedding <=> q`). `type_schema`: where the
    extension's type and operator classes live (qualified, whatever the search_path)."""

    dimension: int
    normalize: bool
    type_schema: str

    @property
    def opclass(self) -> str:
        return "vector_ip_ops" if self.normalize else "vector_cosine_ops"

    @property
    def distance_operator(self) -> str:
        return "<#>" if self.normalize else "<=>"


def vector_opclass(spec: EmbedderSpec) -> str:
    """The HNSW operator class of `spec`'s vectors (see VectorColumn)."""
    return VectorColumn(spec.dimension, spec.normalize, "").opclass


def vector_distance_operator(spec: EmbedderSpec) -> str:
    """The pgvector operator a nearest-neighbour query orders by, so the HNSW index is used."""
    return VectorColumn(spec.dimension, spec.normalize, "").distance_operator


def hnsw_index_name(table: str) -> str:
    return f"{table}_hnsw"


@dataclass(frozen=True)
class ChunkTable:
    """Which table a locked config's chunks live in."""

    config: LockedConfig
    schema: str
    table: str
    registries: tuple[str, ...] = ()
    """The identities of the registry that owns it (its bookkeeping rows carry one)."""

    @property
    def chunk_version(self) -> str:
        return self.config.chunk_version

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.table}"

    @property
    def identifier(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.table)


def chunk_table(state: RegistryState, version: str) -> ChunkTable:
    """The table of `version` (or `production`) in the committed state."""
    config = state.config(version)
    return ChunkTable(config, state.settings.schema,
                      state.settings.table_name(config.chunk_version), state.settings.identities)


def relation_exists(conn: psycopg.Connection[Any], schema: str, name: str) -> bool:
    """Whether anything (table, view, index, sequence) is named `schema.name`."""
    found = conn.execute("SELECT to_regclass(format('%%I.%%I', %s::text, %s::text)) IS NOT NULL",
                         (schema, name)).fetchone()
    return bool(found and found[0])


def table_exists(conn: psycopg.Connection[Any], schema: str, table: str) -> bool:
    """Whether `schema.table` exists as a table (a view or anything else of that name is not
    a chunk table)."""
    found = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p'))",
        (schema, table),
    ).fetchone()
    return bool(found and found[0])


def require_table(conn: psycopg.Connection[Any], target: ChunkTable) -> None:
    """Refused when the version's table does not exist (yet)."""
    if not table_exists(conn, target.schema, target.table):
        raise Refused(f"table {target.qualified} of {target.chunk_version} does not exist",
                      fix="merge its lock PR and run `registry reconcile` to create it")


def has_rows(conn: psycopg.Connection[Any], schema: str, table: str) -> bool:
    row = conn.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(
        sql.Identifier(schema, table))).fetchone()
    return bool(row and row[0])


PREFIX_PATTERN = f"^{PREFIX_MARKER}[^\n]*\nSection: [^\n]*\nType: [^\n]*\n\n"
"""The contextual prefix `chunker.prefix_text` writes at the head of embedding_text (title and
path are single lines), with literal newlines: the same pattern for Python's `re` and for
PostgreSQL's regular expressions."""
_PREFIX_RE = re.compile(PREFIX_PATTERN)


def split_prefix(embedding_text: str) -> tuple[str, str]:
    """(the row's own prefix, its body): what the chunker joined into embedding_text."""
    found = _PREFIX_RE.match(embedding_text)
    return (found.group(0), embedding_text[found.end():]) if found else ("", embedding_text)


def prefix_leaks() -> sql.Composed:
    """Rows whose own prefix (the head of embedding_text) is anywhere in their bm25_text: the
    leak policy A forbids. Not `starts_with(bm25_text, 'Document: ')`: a document may begin
    with that text, and a leaked prefix may sit after a first line."""
    return sql.SQL("coalesce(strpos(bm25_text, substring(embedding_text FROM {})) > 0, false)"
                   ).format(sql.Literal(PREFIX_PATTERN))


def over_budget(prefix_policy: str, chunk_size: int, token_budget: int) -> sql.Composed:
    """Rows over the config's budgets by their stored counts. Policy A: the body (bm25_text)
    within chunk_size and embedding_text within the token budget. Policy B: bm25_text is the
    prefix and the body, so its count is not the body's and stays out of the chunk_size rule;
    the whole text within the token budget (the body's own size is checked by re-tokenizing a
    sample, `quality.health`)."""
    budget = sql.SQL("embedding_token_count > {}").format(sql.Literal(token_budget))
    if prefix_policy != "A":
        return sql.SQL("({})").format(budget)
    return sql.SQL("(bm25_token_count > {} OR {})").format(sql.Literal(chunk_size), budget)


def unhealthy_rows(prefix_policy: str, chunk_size: int, token_budget: int) -> sql.Composable:
    """The rows a health check counts against a table: the predicate of the table's partial
    index and of the check's query, built in one place so that PostgreSQL sees them equal."""
    over = over_budget(prefix_policy, chunk_size, token_budget)
    if prefix_policy != "A":
        return over
    return sql.SQL("({} OR {})").format(prefix_leaks(), over)


@dataclass(frozen=True)
class Marker:
    """What the registry writes on each table and view it creates (its COMMENT), as Argo CD
    labels the resources of one application: a bookkeeping row alone never makes a table the
    registry's. `registry` None: a marker written before identities existed."""

    registry: str | None
    chunk_version: str | None
    config_hash: str | None = None

    def text(self) -> str:
        return json.dumps({"registry": self.registry, "chunk_version": self.chunk_version,
                           "config_hash": self.config_hash}, sort_keys=True)


_LEGACY_TABLE = "chunk-registry: chunks of locked config "
_LEGACY_VIEW = "chunk-registry: production reads "


def read_marker(comment: str | None) -> Marker | None:
    """The marker in a table's or view's comment (the JSON one, or the text one written before
    identities); None when it carries none."""
    if not comment:
        return None
    if comment.startswith(_LEGACY_TABLE):
        version, _, rest = comment[len(_LEGACY_TABLE):].partition(" (config_hash ")
        return Marker(None, version, rest.rstrip(")") or None)
    if comment.startswith(_LEGACY_VIEW):
        return Marker(None, comment[len(_LEGACY_VIEW):])
    try:
        data = json.loads(comment)
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("registry"), str):
        return None
    values = [data.get(k) for k in ("chunk_version", "config_hash")]
    return Marker(data["registry"], *(v if isinstance(v, str) else None for v in values))


def marker_ddl(kind: str, schema: str, name: str, marker: Marker) -> sql.Composed:
    """COMMENT ON TABLE|VIEW with the marker."""
    return sql.SQL("COMMENT ON {} {} IS {}").format(
        sql.SQL(kind), sql.Identifier(schema, name), sql.Literal(marker.text()))


def relation_marker(conn: psycopg.Connection[Any], schema: str, name: str) -> Marker | None:
    """The marker of `schema.name` as it is now (None: no such relation, or unmarked)."""
    row = conn.execute("SELECT obj_description(to_regclass(format('%%I.%%I', %s::text, "
                       "%s::text)), 'pg_class')", (schema, name)).fetchone()
    return read_marker(row[0] if row else None)


BM25_TSV = "GENERATED ALWAYS AS (to_tsvector('english', bm25_text)) STORED"
"""How a chunk table computes bm25_tsv, what retrieval searches."""


def search_index_ddl(schema: str, table: str) -> sql.Composed:
    """The full-text index retrieval reads (`bm25_tsv @@ query`)."""
    return sql.SQL("CREATE INDEX {} ON {} USING gin (bm25_tsv)").format(
        sql.Identifier(f"{table}_tsv"), sql.Identifier(schema, table))


def table_ddl(
    schema: str, table: str, *, chunk_version: str, config_hash: str, prefix_policy: str,
    chunk_size: int, token_budget: int, registry: str | None = None, unlogged: bool = False,
    marker: bool = True, generated_tsv: bool = True, vector: VectorColumn | None = None,
) -> list[sql.Composed]:
    """The versioned table. A partial index holds exactly the rows the health check counts as
    unhealthy (prefix leakage, over budget; `unhealthy_rows`, evaluated by PostgreSQL as rows
    are written): it is empty while the table is healthy, costs next to nothing to write, and
    lets the check read only those rows plus a count(*), never the whole heap. The
    CHECKs make rows of another version or ingest run impossible rather than something to
    look for. `unlogged`, without `marker` and `generated_tsv`: a `registry tune` trial's
    scratch table, never the registry's, whose bm25_tsv is written with the very values the
    generated column would hold (`to_tsvector('english', bm25_text)`, computed once per distinct
    text of a tuning run). With `vector` (a config that pins an embedder): the NOT NULL
    embedding column and its HNSW index."""
    t = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table))
    embedding: sql.Composable = sql.SQL("")
    vector_index: list[sql.Composed] = []
    if vector is not None:
        embedding = sql.SQL(", {} {}.vector({}) NOT NULL").format(
            sql.Identifier(EMBEDDING_COLUMN), sql.Identifier(vector.type_schema),
            sql.Literal(vector.dimension))
        vector_index = [sql.SQL("CREATE INDEX {} ON {} USING hnsw ({} {}.{})").format(
            sql.Identifier(hnsw_index_name(table)), t, sql.Identifier(EMBEDDING_COLUMN),
            sql.Identifier(vector.type_schema), sql.Identifier(vector.opclass))]
    statements = [
        sql.SQL(
            "CREATE {kind} {t} ("
            "chunk_index integer NOT NULL CHECK (chunk_index >= 0), "
            "embedding_token_count integer NOT NULL, "
            "bm25_token_count integer NOT NULL, "
            "created_at timestamptz NOT NULL DEFAULT now(), "
            "id text PRIMARY KEY, "
            "doc_id text NOT NULL, "
            "embedding_text text NOT NULL, "
            "bm25_text text NOT NULL, "
            "chunk_version text NOT NULL CHECK (chunk_version = {version}), "
            "ingest_run_id text NOT NULL CHECK (ingest_run_id = {run}), "
            "bm25_tsv tsvector {tsv}{embedding})"
        ).format(kind=sql.SQL("UNLOGGED TABLE" if unlogged else "TABLE"), t=t,
                 tsv=sql.SQL(BM25_TSV if generated_tsv else "NOT NULL"),
                 version=sql.Literal(chunk_version),
                 run=sql.Literal(ingest_run_id_for(chunk_version, config_hash)),
                 embedding=embedding),
        sql.SQL("CREATE INDEX {} ON {} (doc_id, chunk_index)").format(
            sql.Identifier(f"{table}_doc"), t),
        search_index_ddl(schema, table),
        sql.SQL("CREATE INDEX {} ON {} (chunk_index) WHERE {}").format(
            sql.Identifier(f"{table}_bad"), t,
            unhealthy_rows(prefix_policy, chunk_size, token_budget)),
        *vector_index,
    ]
    if marker:
        statements.append(marker_ddl("TABLE", schema, table,
                                     Marker(registry, chunk_version, config_hash)))
    return statements


def view_ddl(schema: str, view: str, table: str) -> sql.Composed:
    """The production view over `table`: exactly VIEW_COLUMNS."""
    return sql.SQL("CREATE OR REPLACE VIEW {} AS SELECT {} FROM {}").format(
        sql.Identifier(schema, view), sql.SQL(", ").join(map(sql.Identifier, VIEW_COLUMNS)),
        sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table)))
