"""The Python API for applications: which table to read, and which config production uses.

Retrieval code calls `retrieval_table()` instead of hard-coding `document_chunks_<version>`
(the seed's get_retrieval_table): production reads the view, a shadow evaluation reads one
locked config's table. Both read the committed main branch of the registry repo (no fetch, no
database), so they are cheap enough to call at start-up. `embedder_spec()` and
`retrieval_query()` give what a hybrid query needs: the embedder to embed the question with,
and the statement.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from registry.config import LockedConfig
from registry.embedding.spec import EmbedderSpec
from registry.errors import ConfigInvalid
from registry.quality import retrieval
from registry.quality.evaluation import relax_to_any
from registry.repository.git import Git
from registry.repository.state import RegistryState, committed_state

REPO_ENV = "REGISTRY_REPO"


def _state(repo: Path | str | None) -> RegistryState:
    path = repo if repo is not None else os.environ.get(REPO_ENV, ".")
    return committed_state(Git(path))


def retrieval_table(
    use_shadow: bool = False, version: str | None = None, *, repo: Path | str | None = None
) -> str:
    """The qualified name to read: `public.document_chunks` (the production view), or with
    `use_shadow` the table of `version` (default: CHUNK_VERSION from the environment, as
    `registry env VERSION` exports it). The schema bounds both parts to `[a-z_][a-z0-9_]*`,
    so the name is usable as is; pass it to `psycopg.sql.Identifier` when building SQL."""
    state = _state(repo)
    settings = state.settings
    if not use_shadow and version is None:
        return _qualified(settings.schema, settings.base_name)
    chosen = version or os.environ.get("CHUNK_VERSION", "").strip()
    if not chosen:
        raise ConfigInvalid(
            "no shadow version to read", where="retrieval_table",
            fix='pass version="..." or export CHUNK_VERSION (eval "$(registry env VERSION)")',
        )
    config = state.config(chosen)
    return _qualified(settings.schema, settings.table_name(config.chunk_version))


def active_config(*, repo: Path | str | None = None) -> LockedConfig:
    """The production LockedConfig on the main branch (ConfigInvalid when there is none)."""
    return _state(repo).config("production")


def _qualified(schema: str, name: str) -> str:
    return f"{schema}.{name}"


def embedder_spec(version: str | None = None, *, repo: Path | str | None = None
                  ) -> EmbedderSpec | None:
    """The embedder production's config (or `version`'s) pins: what the application must
    embed its queries with (`query_prefix` prepended), or None for a BM25-only config."""
    return retrieval.embedder_spec(_state(repo).config(version or "production"))


@dataclass(frozen=True)
class RetrievalQuery:
    """One retrieval statement for an application: run `settings` (SET statements) on the
    connection, then `statement` with `parameters(conn, question, vector)`. Rows: (id,
    bm25_text, rank), best first. `registry eval` measures this same statement."""

    mode: retrieval.RetrievalMode
    statement: sql.Composed
    settings: tuple[sql.Composed, ...]
    spec: EmbedderSpec | None

    def as_string(self, context: Any = None) -> str:
        return self.statement.as_string(context)

    def parameters(self, conn: psycopg.Connection[Any], question: str,
                   vector: Sequence[float] | None = None, *, match: str = "any"
                   ) -> dict[str, str]:
        """The statement's parameters for a question: its tsquery as eval builds it
        (websearch_to_tsquery, top-level AND relaxed to OR with match="any") and, unless
        bm25, the query's vector (embedded with `spec.query_prefix` first) as pgvector text."""
        row = conn.execute("SELECT websearch_to_tsquery('english', %s)::text",
                           (question,)).fetchone()
        tsquery = str(row[0]) if row else ""
        values = {"tsquery": relax_to_any(tsquery) if match == "any" else tsquery}
        if self.mode != "bm25":
            if vector is None:
                raise ConfigInvalid(f"{self.mode} retrieval needs the query's vector",
                                    where="RetrievalQuery.parameters",
                                    fix="embed the question (with spec.query_prefix) first")
            values["embedding"] = retrieval.vector_literal(vector)
        return values


def retrieval_query(
    version: str | None = None, *, mode: retrieval.RetrievalMode | None = None, k: int = 50,
    repo: Path | str | None = None,
) -> RetrievalQuery:
    """The SQL (composed with psycopg.sql) of a hybrid query over production (its view for
    bm25, its table when vectors are read), or over the table of `version`: reciprocal rank
    fusion (k=60) of BM25 (`websearch_to_tsquery`,
    ranked by ts_rank_cd) and dense (the HNSW index's operator) lists of `k` each. `mode`
    defaults to hybrid when the config pins an embedder, bm25 otherwise."""
    state = _state(repo)
    settings = state.settings
    config = state.config(version or "production")
    spec = retrieval.embedder_spec(config)
    chosen: retrieval.RetrievalMode = mode or ("hybrid" if spec is not None else "bm25")
    if chosen != "bm25" and spec is None:
        raise ConfigInvalid(f"{config.chunk_version} pins no embedder, so it has no vectors for "
                            f"{chosen} retrieval", where="retrieval_query",
                            fix='use mode="bm25", or lock a config that pins an embedder')
    # The production view exposes VIEW_COLUMNS, which hold no vector column: a dense or hybrid
    # query reads production's table itself (re-read the registry after a promotion; the
    # previous table stays through the grace period, so a reader that lags keeps working).
    through_view = version is None and chosen == "bm25"
    name = settings.base_name if through_view else settings.table_name(config.chunk_version)
    # The schema bounds both name parts to [a-z_][a-z0-9_]*: no `%` a parameter could clash with.
    statement = retrieval.statement(
        chosen, sql.Identifier(settings.schema, name), spec,
        sql.Placeholder("tsquery"), sql.Placeholder("embedding"), sql.Literal(k))
    ef_search = (sql.SQL("SET hnsw.ef_search = {}").format(sql.Literal(max(40, k))),)
    return RetrievalQuery(chosen, statement, ef_search if chosen != "bm25" else (), spec)
