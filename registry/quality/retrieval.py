"""The three retrievals an eval, the gate, health and an application can run over a chunk table:
BM25 (PostgreSQL full-text search), dense (pgvector nearest neighbours of the query vector) and
hybrid (reciprocal rank fusion of the two lists, k=60 as in Cormack et al. 2009).

One statement per query, composed here once: for dense and hybrid, `registry eval` measures
exactly the SQL that `registry.serving.retrieval_query` hands to an application. For bm25 alone
eval ranks a bounded candidate set (`evaluation.retrieval_statement`: the rows matching the
most query terms, at most 20 x k), which is the application's exact ranking whenever a
question matches no more rows than that. Dense ranking uses the operator of the
HNSW index the reconciler builds (inner product `<#>` for L2-normalised vectors, cosine `<=>`
otherwise), so PostgreSQL can answer it from the index.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

import psycopg
from psycopg import sql

from registry.config import LockedConfig
from registry.database.chunk_table import EMBEDDING_COLUMN, VECTOR_ON_SEARCH_PATH, ChunkTable
from registry.embedding.spec import EmbedderSpec
from registry.errors import EmbedderError, Refused, UsageError
from registry.extras import require

if TYPE_CHECKING:
    from registry.embedding.base import Embedder

RetrievalMode = Literal["bm25", "dense", "hybrid"]
MODES: tuple[RetrievalMode, ...] = ("bm25", "dense", "hybrid")
RRF_K = 60
"""Reciprocal rank fusion constant: score = sum over lists of 1 / (RRF_K + rank)."""
MODEL_FILE_ENV = "REGISTRY_EMBEDDER_MODEL_FILE"
TOKENIZER_FILE_ENV = "REGISTRY_EMBEDDER_TOKENIZER_FILE"


def embedder_spec(config: LockedConfig) -> EmbedderSpec | None:
    """The embedder a config pins (format 2), None for a BM25-only config (format 1)."""
    return config.embedder


def has_vector_column(conn: psycopg.Connection[Any], target: ChunkTable) -> bool:
    """The table has the `embedding vector(dim)` column (no table read, only the catalog)."""
    row = conn.execute(
        "SELECT t.typname FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
        "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s AND a.attname = %s AND NOT a.attisdropped",
        (target.schema, target.table, EMBEDDING_COLUMN)).fetchone()
    return row is not None and row[0] == "vector"


def distance_operator(spec: EmbedderSpec) -> sql.SQL:
    """`<#>` (negative inner product) for normalised vectors, `<=>` (cosine distance) else:
    the operator of the HNSW index's operator class, so the index serves the ORDER BY."""
    return sql.SQL("<#>" if spec.normalize else "<=>")


def vector_literal(vector: Sequence[float]) -> str:
    """pgvector's text form: `[0.1,0.2,...]` (repr keeps every float32 digit)."""
    return "[" + ",".join(repr(float(x)) for x in vector) + "]"


@dataclass(frozen=True)
class Plan:
    """What one side of an eval runs: the mode, and the embedder when the mode needs one."""

    mode: RetrievalMode
    spec: EmbedderSpec | None = None
    note: str | None = None
    """Why the mode is not the one asked for (a fallback), or None."""


def capable(conn: psycopg.Connection[Any], target: ChunkTable) -> EmbedderSpec | None:
    """The embedder spec when the table can be searched densely (the config pins one and the
    column exists), else None."""
    spec = embedder_spec(target.config)
    if spec is None or not has_vector_column(conn, target):
        return None
    return spec


def plan(conn: psycopg.Connection[Any], target: ChunkTable,
         requested: RetrievalMode | None) -> Plan:
    """One table: `requested`, or by default hybrid when the table has vectors, bm25 else. A
    dense or hybrid request on a table without vectors is refused."""
    spec = capable(conn, target)
    if requested is None:
        return Plan("hybrid", spec) if spec is not None else Plan("bm25")
    if requested != "bm25" and spec is None:
        raise Refused(f"table {target.qualified} has no vectors ({why_no_vectors(target)}), "
                      f"so it cannot be searched by {requested}",
                      fix="use --retrieval bm25, or lock a config that pins an embedder")
    return Plan(requested, spec if requested != "bm25" else None)


def plan_pair(conn: psycopg.Connection[Any], shadow: ChunkTable, against: ChunkTable,
              requested: RetrievalMode | None) -> tuple[Plan, Plan]:
    """Both sides of a comparison run the same retrieval: the one asked for (default hybrid)
    when both tables have vectors, else bm25 on both, with the reason stated."""
    specs = [capable(conn, t) for t in (shadow, against)]
    wanted: RetrievalMode = requested or "hybrid"
    if wanted == "bm25":
        return Plan("bm25"), Plan("bm25")
    missing = [t for t, s in zip((shadow, against), specs, strict=True) if s is None]
    if not missing:
        return Plan(wanted, specs[0]), Plan(wanted, specs[1])
    if requested is None and len(missing) == 2:
        return Plan("bm25"), Plan("bm25")
    names = " and ".join(f"{t.chunk_version} ({why_no_vectors(t)})" for t in missing)
    note = (f"{wanted} asked for, but {names} {'has' if len(missing) == 1 else 'have'} no "
            "vectors: both sides judged by bm25, the retrieval they share")
    return Plan("bm25", note=note), Plan("bm25", note=note)


def why_no_vectors(target: ChunkTable) -> str:
    if embedder_spec(target.config) is None:
        return "its config pins no embedder"
    return f"no {EMBEDDING_COLUMN} column: run `registry reconcile`"


# ---------------------------------------------------------------------------------------------
# The statements


def bm25_statement(table: sql.Composable, tsquery: sql.Composable, k: sql.Composable
                   ) -> sql.Composed:
    """The k best chunks by ts_rank_cd: (id, text, rank)."""
    return sql.SQL(
        "SELECT id, bm25_text, row_number() OVER (ORDER BY score DESC, id) AS rank FROM ("
        "SELECT id, bm25_text, ts_rank_cd(bm25_tsv, {q}::tsquery) AS score FROM {table} "
        "WHERE bm25_tsv @@ {q}::tsquery ORDER BY score DESC, id LIMIT {k}) ranked"
    ).format(table=table, q=tsquery, k=k)


def dense_statement(table: sql.Composable, spec: EmbedderSpec, vector: sql.Composable,
                    k: sql.Composable) -> sql.Composed:
    """The k nearest chunks (the HNSW index answers the inner ORDER BY ... LIMIT)."""
    return sql.SQL(
        "SELECT id, bm25_text, row_number() OVER (ORDER BY distance, id) AS rank FROM ("
        "SELECT id, bm25_text, {column} {op} {v}::vector AS distance FROM {table} "
        "WHERE {column} IS NOT NULL ORDER BY distance LIMIT {k}) nearest"
    ).format(table=table, column=sql.Identifier(EMBEDDING_COLUMN),
             op=distance_operator(spec), v=vector, k=k)


def hybrid_statement(table: sql.Composable, spec: EmbedderSpec, tsquery: sql.Composable,
                     vector: sql.Composable, k: sql.Composable) -> sql.Composed:
    """Reciprocal rank fusion of the BM25 and dense top-k lists, in one statement:
    (id, text, rank) of the k best fused chunks."""
    return sql.SQL(
        "WITH bm25 AS ({bm25}), dense AS ({dense}), fused AS ("
        "SELECT id, coalesce(b.bm25_text, d.bm25_text) AS bm25_text, "
        "coalesce(1.0 / ({rrf} + b.rank), 0) + coalesce(1.0 / ({rrf} + d.rank), 0) AS score "
        "FROM bm25 b FULL OUTER JOIN dense d USING (id)) "
        "SELECT id, bm25_text, row_number() OVER (ORDER BY score DESC, id) AS rank FROM fused "
        "ORDER BY score DESC, id LIMIT {k}"
    ).format(bm25=bm25_statement(table, tsquery, k), dense=dense_statement(table, spec, vector, k),
             rrf=sql.Literal(RRF_K), k=k)


def statement(mode: RetrievalMode, table: sql.Composable, spec: EmbedderSpec | None,
              tsquery: sql.Composable, vector: sql.Composable, k: sql.Composable
              ) -> sql.Composed:
    if mode == "bm25":
        return bm25_statement(table, tsquery, k)
    if spec is None:
        raise UsageError(f"{mode} retrieval needs an embedder spec", fix="use bm25")
    if mode == "dense":
        return dense_statement(table, spec, vector, k)
    return hybrid_statement(table, spec, tsquery, vector, k)


def prepare_vector_reads(conn: psycopg.Connection[Any], k: int) -> None:
    """The session settings a dense or hybrid statement needs: pgvector's schema on the
    search_path, and hnsw.ef_search at least k (HNSW returns at most that many rows, 40 by
    default)."""
    for statement in vector_settings(k):
        conn.execute(statement)


def vector_settings(k: int) -> tuple[sql.Composed, ...]:
    """The statements of `prepare_vector_reads`, for an application to run."""
    return (VECTOR_ON_SEARCH_PATH,
            sql.SQL("SET hnsw.ef_search = {}").format(sql.Literal(max(40, k))))


def rrf(lists: Sequence[Sequence[str]], k: int = RRF_K) -> list[tuple[str, float]]:
    """Reciprocal rank fusion in Python (what hybrid_statement computes), best first, ties by
    id: the reference the tests and the bench hold the SQL to."""
    scores: dict[str, float] = {}
    for ranked in lists:
        for rank, item in enumerate(ranked, 1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda pair: (-pair[1], pair[0]))


# ---------------------------------------------------------------------------------------------
# The embedder a locked spec names, checked


def load_embedder(spec: EmbedderSpec, *, check: bool = True) -> Embedder:
    """The embedder `spec` pins, with its fingerprint checked (EmbedderChanged otherwise).
    onnx: the files named by REGISTRY_EMBEDDER_MODEL_FILE / REGISTRY_EMBEDDER_TOKENIZER_FILE,
    else the installed model package whose files hash as pinned (their hashes checked either
    way); openai: the endpoint and token of the environment."""
    from pathlib import Path

    from registry.embedding.base import check_fingerprint

    embedder: Embedder
    if spec.backend == "openai":
        from registry.embedding.openai import OpenAIEmbedder

        embedder = OpenAIEmbedder.from_spec(spec)
    else:
        require("onnxruntime", "the onnx embedder")
        from registry.embedding.locked import installed_files
        from registry.embedding.onnx import OnnxEmbedder

        model_file, tokenizer_file = (os.environ.get(MODEL_FILE_ENV),
                                      os.environ.get(TOKENIZER_FILE_ENV))
        found = installed_files(spec)
        model = Path(model_file) if model_file else found[0]
        tokenizer = Path(tokenizer_file) if tokenizer_file else found[1]
        if model is None or tokenizer is None:
            raise EmbedderError(
                f"no installed model package has the files of the onnx embedder {spec.name} "
                f"({spec.model_hash})",
                fix=f"export {MODEL_FILE_ENV}=model.onnx and {TOKENIZER_FILE_ENV}="
                    "tokenizer.json (the files the config was locked with)")
        embedder = OnnxEmbedder.from_spec(spec, model, tokenizer)
    if check:
        check_fingerprint(spec, embedder, where=f"embedder {spec.name}")
    return cast("Embedder", embedder)
