"""pgvector created by the reconciler in a tables schema that is not on the search_path (a
`tables: {schema: rag}` registry on a database without the extension): ingest, eval (dense,
hybrid and bm25), tune and an application's `retrieval_query` all still find the `vector` type
and its operators."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from registry import serving
from registry.embedding.onnx import installed_model
from registry.embedding.spec import EmbedderSpec
from registry.quality import retrieval
from tests.embedding.conftest import needs_minilm
from tests.embedding.test_ingest_vectors import lock, minilm_spec
from tests.embedding.test_tune_vectors import corpus
from tests.helpers import PRODUCTION_YAML, RegistryRepo, run_cli
from tests.test_vector_tables import needs_pgvector

__all__ = ["minilm_spec"]  # the fixture, imported for this module's tests


@needs_minilm
@pytest.mark.slow
def test_pgvector_in_a_schema_off_the_search_path_serves_every_reader(
    dsn: str, tmp_path: Path, minilm_spec: EmbedderSpec
) -> None:
    needs_pgvector(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP EXTENSION IF EXISTS vector")
    assert "schema: public" in PRODUCTION_YAML
    repo = RegistryRepo.create(tmp_path, installed_model("all-MiniLM-L6-v2-int8")[1],
                               production_yaml=PRODUCTION_YAML.replace("schema: public",
                                                                       "schema: rag"))
    version = lock(repo, minilm_spec)
    source, cases = corpus(tmp_path)
    assert run_cli("reconcile", "--repo", repo.path, "--dsn", dsn).code == 0
    with psycopg.connect(dsn) as conn:
        where = conn.execute("SELECT extnamespace::regnamespace::text FROM pg_extension "
                             "WHERE extname = 'vector'").fetchone()
        path = conn.execute("SHOW search_path").fetchone()
    assert where == ("rag",) and path is not None and "rag" not in path[0]

    ingested = run_cli("ingest", version, "--repo", repo.path, "--source", source, "--dsn", dsn)
    assert ingested.code == 0, ingested.stderr
    for mode in ("hybrid", "dense", "bm25"):
        judged = run_cli("eval", version, "--repo", repo.path, "--cases", cases, "--dsn", dsn,
                         "--retrieval", mode)
        assert judged.code in (0, 10), (mode, judged.stderr)  # judged, whatever the verdict
        assert "error" not in judged.stderr, (mode, judged.stderr)

    query = serving.retrieval_query(version, repo=repo.path, k=3)
    assert query.spec is not None
    vector = retrieval.load_embedder(query.spec).embed_query("engine oil").tolist()
    with psycopg.connect(dsn, autocommit=True) as conn:
        for setting in query.settings:
            conn.execute(setting)
        rows = conn.execute(query.statement,
                            query.parameters(conn, "engine oil", vector)).fetchall()
    assert rows and [rank for _, _, rank in rows] == list(range(1, len(rows) + 1))


@pytest.mark.parametrize("path", ["", "public", '"$user", public'])
def test_the_search_path_gains_pgvector_once_whatever_it_was(dsn: str, path: str) -> None:
    needs_pgvector(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP EXTENSION IF EXISTS vector")
        conn.execute("CREATE SCHEMA IF NOT EXISTS elsewhere")
        conn.execute("CREATE EXTENSION vector SCHEMA elsewhere")
        conn.execute("SELECT set_config('search_path', %s, false)", (path,))
        retrieval.prepare_vector_reads(conn, 5)
        assert conn.execute("SELECT '[1,0]'::vector <#> '[1,0]'::vector").fetchone() == (-1.0,)
        conn.execute("DROP EXTENSION vector")
