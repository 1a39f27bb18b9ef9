"""Dense and hybrid retrieval over a real chunk table with real vectors: six one-sentence
documents, ingested by the real ingest, their embedding_text embedded by the offline MiniLM and
stored in `embedding vector(384)` with an HNSW index on the embedded PostgreSQL 18 (pgvector).
The PostgreSQL 15 of REGISTRY_TEST_DSN has no pgvector: there only the bm25 fallbacks run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from psycopg import sql

from registry import serving
from registry.commands.data import ingest
from registry.commands.reconcile import reconcile
from registry.database.chunk_table import chunk_table
from registry.embedding.onnx import OnnxEmbedder, installed_model
from registry.errors import ConfigInvalid, Refused
from registry.quality import retrieval
from registry.quality.evaluation import evaluate_table, load_cases
from registry.repository.git import Git
from registry.repository.state import committed_state
from tests.embedding.conftest import needs_minilm
from tests.helpers import RegistryRepo, run_cli
from tests.test_health_eval import promote, set_targets

DOCS = {
    "car": "The automobile's engine needs fresh oil every ten thousand kilometres.",
    "cats": "Cats sleep for most of the day and hunt at dusk.",
    "bank": "The central bank raised interest rates to curb inflation.",
    "plants": "Photosynthesis turns sunlight, water and carbon dioxide into sugar in leaves.",
    "violin": "The violin has four strings tuned in fifths.",
    "everest": "Mount Everest is the highest mountain above sea level.",
}
CASES = [
    # No word in common with its answer: BM25 finds nothing, the vectors do.
    {"query_id": "paraphrase", "query": "how often should a car motor get lubricated",
     "gt_answer": "fresh oil every ten thousand kilometres"},
    {"query_id": "lexical", "query": "central bank interest rates",
     "gt_answer": "raised interest rates to curb inflation"},
    {"query_id": "plants", "query": "how do leaves make sugar from sunlight",
     "gt_answer": "carbon dioxide into sugar in leaves"},
]


@pytest.fixture(scope="module")
def minilm() -> OnnxEmbedder:
    return OnnxEmbedder.installed("all-MiniLM-L6-v2-int8")


def corpus(root: Path) -> tuple[Path, Path]:
    docs = root / "docs"
    docs.mkdir(parents=True)
    for number, text in enumerate(DOCS.values()):
        (docs / f"doc{number}.md").write_text(f"# Note {number}\n\n{text}\n")
    cases = root / "cases.jsonl"
    cases.write_text("".join(json.dumps(c) + "\n" for c in CASES))
    return docs, cases


def ingested(registry_repo: RegistryRepo, dsn: str, tmp_path: Path) -> tuple[str, Path]:
    docs, cases = corpus(tmp_path)
    version = registry_repo.locked()
    reconcile(registry_repo.path, dsn=dsn)
    ingest(registry_repo.path, version, docs, dsn=dsn,
           tokenizer_file=registry_repo.tokenizer_file, workers=1)
    return version, cases


def ingested_with_vectors(registry_repo: RegistryRepo, dsn: str, tmp_path: Path,
                          chunk_size: int = 200) -> tuple[str, Path]:
    """A format 2 config pinning the offline MiniLM (query/passage prefixes e5-style), its
    table reconciled, ingested and holding every chunk's vector."""
    docs, cases = corpus(tmp_path / f"c{chunk_size}")
    locked = run_cli("lock", "--repo", registry_repo.path, "--chunk-size", str(chunk_size),
                     "--embedder-onnx", "all-MiniLM-L6-v2-int8", "--embedder-passage-prefix",
                     "passage: ", "--embedder-query-prefix", "query: ", "--format", "json")
    assert locked.code == 0, locked.stderr
    version = json.loads(locked.stdout)["chunk_version"]
    registry_repo.merge(f"lock/{version}")
    reconcile(registry_repo.path, dsn=dsn)
    _, tokenizer_file = installed_model("all-MiniLM-L6-v2-int8")
    ingest(registry_repo.path, version, docs, dsn=dsn, tokenizer_file=tokenizer_file,
           workers=1)
    with psycopg.connect(dsn) as conn:
        target = chunk_table(committed_state(Git(registry_repo.path)), version)
        missing = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE {} IS NULL").format(
            target.identifier, sql.Identifier(retrieval.EMBEDDING_COLUMN))).fetchone()
    assert missing == (0,)
    return version, cases


def with_vectors(dsn: str, schema: str, table: str, embedder: OnnxEmbedder) -> None:
    """What the reconciler and ingest of a config pinning an embedder leave: the column, the
    HNSW index of the normalised vectors' operator class, every embedding_text embedded with
    the passage prefix: here on a format 1 table, so the retrieval statements are checked
    apart from the embedder pin."""
    name = sql.Identifier(schema, table)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} vector(384)").format(
            name, sql.Identifier(retrieval.EMBEDDING_COLUMN)))
        rows = conn.execute(sql.SQL("SELECT id, embedding_text FROM {} WHERE {} IS NULL").format(
            name, sql.Identifier(retrieval.EMBEDDING_COLUMN))).fetchall()
        vectors = embedder.embed_passages([text for _, text in rows])
        for (row_id, _), vector in zip(rows, vectors, strict=True):
            conn.execute(sql.SQL("UPDATE {} SET {} = %s::vector WHERE id = %s").format(
                name, sql.Identifier(retrieval.EMBEDDING_COLUMN)),
                (retrieval.vector_literal(vector.tolist()), row_id))
        if not conn.execute("SELECT 1 FROM pg_indexes WHERE schemaname = %s AND tablename = %s "
                            "AND indexdef LIKE '%%USING hnsw%%'", (schema, table)).fetchone():
            conn.execute(sql.SQL("CREATE INDEX ON {} USING hnsw ({} vector_ip_ops)").format(
                name, sql.Identifier(retrieval.EMBEDDING_COLUMN)))


def has_pgvector(dsn: str) -> bool:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'vector'").fetchone() is not None


@needs_minilm
def test_dense_finds_the_paraphrase_bm25_cannot_and_hybrid_is_the_rrf_of_both(
    registry_repo: RegistryRepo, dsn: str, tmp_path: Path, minilm: OnnxEmbedder
) -> None:
    if not has_pgvector(dsn):
        pytest.skip("this PostgreSQL has no pgvector (the PG15 here): vectors need PG18's")
    version, cases_file = ingested(registry_repo, dsn, tmp_path)
    target = chunk_table(committed_state(Git(registry_repo.path)), version)
    with_vectors(dsn, target.schema, target.table, minilm)
    spec = minilm.spec
    cases = load_cases(cases_file)

    with psycopg.connect(dsn, autocommit=True) as conn:
        assert retrieval.has_vector_column(conn, target)
        results: dict[str, Any] = {
            mode: evaluate_table(conn, target, cases, k=2, top=1,
                                 plan=retrieval.Plan(mode, None if mode == "bm25" else spec),
                                 embedder=minilm)
            for mode in retrieval.MODES}
        hits = {mode: {c.query_id: c.filter_hit for c in r.cases} for mode, r in results.items()}
        assert hits["bm25"] == {"paraphrase": False, "lexical": True, "plants": True}
        assert hits["dense"]["paraphrase"] and hits["hybrid"]["paraphrase"]
        assert results["hybrid"].metrics["filter_hit_rate"] == 1.0
        assert results["bm25"].retrieval == "bm25" and results["hybrid"].retrieval == "hybrid"

        # The fused SQL ranks exactly as RRF over the two lists, each list checked on its own:
        # BM25 by its statement, dense against an exact numpy scan of the stored vectors.
        stored = conn.execute(sql.SQL("SELECT id, {}::text FROM {}").format(
            sql.Identifier(retrieval.EMBEDDING_COLUMN), target.identifier)).fetchall()
        ids = [row_id for row_id, _ in stored]
        matrix = np.array([json.loads(text) for _, text in stored], dtype=np.float64)
        for case in cases:
            query = minilm.embed_query(case.query)
            exact = [ids[i] for i in np.argsort(-(matrix @ query.astype(np.float64)))[:6]]
            vector = sql.Literal(retrieval.vector_literal(query.tolist()))
            tsquery = sql.Literal(conn.execute(
                "SELECT websearch_to_tsquery('english', %s)::text", (case.query,)).fetchone()[0])
            dense = [r[0] for r in conn.execute(retrieval.dense_statement(
                target.identifier, spec, vector, sql.Literal(6)))]
            assert dense == exact
            bm25 = [r[0] for r in conn.execute(retrieval.bm25_statement(
                target.identifier, tsquery, sql.Literal(6)))]
            fused = conn.execute(retrieval.hybrid_statement(
                target.identifier, spec, tsquery, vector, sql.Literal(6))).fetchall()
            assert [r[0] for r in fused] == [i for i, _ in retrieval.rrf([bm25, dense])][:6]
            assert [r[2] for r in fused] == list(range(1, len(fused) + 1))


def test_a_table_without_vectors_defaults_to_bm25_and_refuses_dense(
    registry_repo: RegistryRepo, dsn: str, tmp_path: Path
) -> None:
    version, _ = ingested(registry_repo, dsn, tmp_path)
    target = chunk_table(committed_state(Git(registry_repo.path)), version)
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert not retrieval.has_vector_column(conn, target)
        assert retrieval.plan(conn, target, None) == retrieval.Plan("bm25")
        for mode in ("dense", "hybrid"):
            with pytest.raises(Refused, match=r"pins no embedder.*--retrieval bm25"):
                retrieval.plan(conn, target, mode)  # type: ignore[arg-type]
        both = retrieval.plan_pair(conn, target, target, None)
        assert both == (retrieval.Plan("bm25"), retrieval.Plan("bm25"))
        asked = retrieval.plan_pair(conn, target, target, "hybrid")
        assert {p.mode for p in asked} == {"bm25"}
        assert asked[0].note is not None and "bm25, the retrieval they share" in asked[0].note


def test_rrf_is_reciprocal_rank_fusion_with_k_60() -> None:
    fused = dict(retrieval.rrf([["a", "b", "c"], ["c", "a"]]))
    assert fused["a"] == pytest.approx(1 / 61 + 1 / 62)
    assert fused["c"] == pytest.approx(1 / 63 + 1 / 61)
    assert fused["b"] == pytest.approx(1 / 62)
    assert [i for i, _ in retrieval.rrf([["a", "b", "c"], ["c", "a"]])] == ["a", "c", "b"]


def test_eval_cli_names_its_retrieval_and_refuses_dense_on_a_bm25_table_in_one_line(
    registry_repo: RegistryRepo, dsn: str, tmp_path: Path
) -> None:
    version, cases = ingested(registry_repo, dsn, tmp_path)
    common = ("--repo", registry_repo.path, "--dsn", dsn, "--cases", cases)

    default = run_cli("eval", version, *common, "--format", "json")
    assert default.code == 0, default.stderr
    assert json.loads(default.stdout)["retrieval"] == "bm25"

    dense = run_cli("eval", version, *common, "--retrieval", "dense")
    assert dense.code == Refused.exit_code
    assert len(dense.stderr.strip().splitlines()) == 1
    assert "pins no embedder" in dense.stderr and "--retrieval bm25" in dense.stderr


def test_health_alerts_when_retrieval_p95_is_above_the_target(
    registry_repo: RegistryRepo, dsn: str, tmp_path: Path
) -> None:
    _, cases = ingested(registry_repo, dsn, tmp_path)
    promote_first(registry_repo, dsn)
    common = ("--repo", registry_repo.path, "--dsn", dsn, "--cases", cases, "--format", "json")

    relaxed = json.loads(run_cli("health", *common).stdout)
    assert "retrieval_latency" not in {a["metric"] for a in relaxed["alerts"]}
    assert relaxed["retrieval"]["retrieval"] == "bm25"

    set_targets(registry_repo, "targets: {retrieval_p95_ms: 0.001}")
    strict = json.loads(run_cli("health", *common).stdout)
    latency = [a for a in strict["alerts"] if a["metric"] == "retrieval_latency"]
    assert len(latency) == 1 and "above the target 0.001 ms" in latency[0]["message"]
    assert "(bm25)" in latency[0]["message"]


def promote_first(registry_repo: RegistryRepo, dsn: str) -> None:
    version = sorted(p.stem for p in (registry_repo.path / "configs").glob("2*.yaml"))[-1]
    promote(registry_repo, version)
    reconcile(registry_repo.path, dsn=dsn)


def test_the_python_api_gives_the_statement_eval_measures(
    registry_repo: RegistryRepo, dsn: str, tmp_path: Path
) -> None:
    version, _ = ingested(registry_repo, dsn, tmp_path)
    promote_first(registry_repo, dsn)
    assert serving.embedder_spec(repo=registry_repo.path) is None
    query = serving.retrieval_query(repo=registry_repo.path, k=3)
    assert query.mode == "bm25" and query.settings == () and query.spec is None
    assert '"public"."document_chunks"' in query.as_string()
    with psycopg.connect(dsn, autocommit=True) as conn:
        served = conn.execute(query.statement, query.parameters(
            conn, "central bank interest rates")).fetchall()
        target = chunk_table(committed_state(Git(registry_repo.path)), version)
        measured = conn.execute(retrieval.bm25_statement(
            target.identifier, sql.Literal("'central' | 'bank' | 'interest' | 'rate'"),
            sql.Literal(3))).fetchall()
    assert served == measured and "central bank" in served[0][1]
    with pytest.raises(ConfigInvalid, match="pins no embedder"):
        serving.retrieval_query(repo=registry_repo.path, mode="hybrid")


def eval_json(registry_repo: RegistryRepo, dsn: str, *args: str | Path) -> dict[str, Any]:
    result = run_cli("eval", *args, "--repo", registry_repo.path, "--dsn", dsn, "--format",
                     "json")
    assert result.code in (0, 1), result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def needs_vectors(dsn: str) -> None:
    if not has_pgvector(dsn):
        pytest.skip("this PostgreSQL has no pgvector (the PG15 here): vectors need PG18's")


@needs_minilm
@pytest.mark.slow
def test_eval_defaults_to_hybrid_on_a_table_with_vectors_as_the_python_api_serves_it(
    registry_repo: RegistryRepo, dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    needs_vectors(dsn)
    version, cases = ingested_with_vectors(registry_repo, dsn, tmp_path)
    narrow = ("--cases", cases, "--k", "2", "--top", "1")

    hybrid = eval_json(registry_repo, dsn, version, *narrow)
    bm25 = eval_json(registry_repo, dsn, version, *narrow, "--retrieval", "bm25")

    assert hybrid["retrieval"] == "hybrid" and bm25["retrieval"] == "bm25"
    hits = {r["retrieval"]: {c["query_id"]: c["filter_hit"] for c in r["cases"]}
            for r in (hybrid, bm25)}
    assert hits["hybrid"]["paraphrase"] and not hits["bm25"]["paraphrase"]
    with psycopg.connect(dsn) as conn:
        recorded = conn.execute("SELECT details->>'retrieval' FROM chunk_registry.eval_runs "
                                "ORDER BY id").fetchall()
    assert [r[0] for r in recorded] == ["hybrid", "bm25"]

    # The Python API: the embedder spec and the very statement eval ran.
    spec = serving.embedder_spec(version, repo=registry_repo.path)
    assert spec is not None and spec.query_prefix == "query: "
    query = serving.retrieval_query(version, repo=registry_repo.path, k=4)
    assert query.mode == "hybrid" and query.spec == spec
    embedder = retrieval.load_embedder(spec)
    question = "how often should a car motor get lubricated"
    vector = embedder.embed_query(question).tolist()
    target = chunk_table(committed_state(Git(registry_repo.path)), version)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for setting in query.settings:
            conn.execute(setting)
        served = conn.execute(query.statement, query.parameters(conn, question, vector)
                              ).fetchall()
        tsquery = query.parameters(conn, question, vector)["tsquery"]
        measured = conn.execute(retrieval.hybrid_statement(
            target.identifier, spec, sql.Literal(tsquery),
            sql.Literal(retrieval.vector_literal(vector)), sql.Literal(4))).fetchall()
    assert served == measured and "fresh oil" in served[0][1]

    # Another model's files behind the locked name: refused before any query, in one line.
    other_model, tokenizer = installed_model("paraphrase-MiniLM-L3-v2")
    monkeypatch.setenv(retrieval.MODEL_FILE_ENV, str(other_model))
    monkeypatch.setenv(retrieval.TOKENIZER_FILE_ENV, str(tokenizer))
    refused = run_cli("eval", version, "--cases", cases, "--repo", registry_repo.path, "--dsn",
                      dsn)
    assert refused.code == 12 and len(refused.stderr.strip().splitlines()) == 1
    assert "was locked with" in refused.stderr
    # bm25 needs no embedder, so it still runs
    assert run_cli("eval", version, "--cases", cases, "--repo", registry_repo.path, "--dsn", dsn,
                   "--retrieval", "bm25").code == 0


@needs_minilm
@pytest.mark.slow
def test_compare_and_health_use_the_same_retrieval_as_production_serves(
    registry_repo: RegistryRepo, dsn: str, tmp_path: Path
) -> None:
    needs_vectors(dsn)
    bm25_only, cases = ingested(registry_repo, dsn, tmp_path)
    promote(registry_repo, bm25_only)
    reconcile(registry_repo.path, dsn=dsn)
    first, _ = ingested_with_vectors(registry_repo, dsn, tmp_path, chunk_size=200)

    mixed = eval_json(registry_repo, dsn, "--compare", first, "--cases", cases)
    assert mixed["retrieval"] == "bm25"
    assert f"{bm25_only} (its config pins no embedder) has no vectors" in mixed["note"]
    shown = run_cli("eval", "--compare", first, "--cases", cases, "--repo", registry_repo.path,
                    "--dsn", dsn)
    assert "retrieval: bm25 on both sides" in shown.stdout
    assert "both sides judged by bm25, the retrieval they share" in shown.stdout

    promote(registry_repo, first)
    reconcile(registry_repo.path, dsn=dsn)
    second, _ = ingested_with_vectors(registry_repo, dsn, tmp_path, chunk_size=150)
    both = eval_json(registry_repo, dsn, "--compare", second, "--cases", cases)
    assert both["retrieval"] == "hybrid" and both["note"] is None
    served = serving.retrieval_query(repo=registry_repo.path)
    assert served.mode == "hybrid"
    assert target_name(registry_repo, first) in served.as_string()

    report = run_cli("health", "--repo", registry_repo.path, "--dsn", dsn, "--cases", cases,
                     "--format", "json", "--sample", "0")
    assert json.loads(report.stdout)["retrieval"]["retrieval"] == "hybrid"




def target_name(registry_repo: RegistryRepo, version: str) -> str:
    return chunk_table(committed_state(Git(registry_repo.path)), version).table
