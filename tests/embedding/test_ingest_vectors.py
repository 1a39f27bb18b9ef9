"""Ingest with the locked embedder (issue 16, item 4): every chunk's embedding_text embedded with
the passage prefix, streamed beside chunking and COPY; a content-addressed cache in the
bookkeeping schema, so a config that changes only the Jaccard threshold or the prefix policy
embeds nothing it embedded before; the run record says computed vs reused.

A tiny corpus: the int8 MiniLM embeds a few short chunks a second on the shared cores."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from pgvector.psycopg import register_vector

from registry.commands.data import ingest
from registry.database import bookkeeping
from registry.embedding.base import pin
from registry.embedding.onnx import OnnxEmbedder, installed_model
from registry.embedding.spec import EmbedderSpec
from registry.errors import EmbedderChanged
from tests.database import Database, promote, table_of
from tests.embedding.conftest import needs_minilm
from tests.helpers import RegistryRepo, run_cli
from tests.test_vector_tables import needs_pgvector

pytestmark = needs_minilm

DOCUMENTS = {
    "cats.md": "# Cats\n\nCats sleep most of the day on warm windowsills.\n\n"
               "## Food\n\nThey eat fish and chicken, twice a day.\n",
    "rollback.md": "# Rollback\n\nA rollback reverts the promotion commit on main.\n\n"
                   "## View\n\nThe reconciler swaps the view back to the previous table.\n",
    "tables.md": "# Tables\n\nEvery locked config gets its own shadow table in PostgreSQL.\n",
}


@pytest.fixture(scope="module")
def minilm_spec(minilm: OnnxEmbedder) -> EmbedderSpec:
    """Prefixes are not part of the fingerprint (the probes are embedded bare)."""
    return replace(pin(minilm), passage_prefix="passage: ", query_prefix="query: ")


@pytest.fixture
def repo(tmp_path: Path) -> RegistryRepo:
    """A registry whose chunking tokenizer is the embedder's own tokenizer.json."""
    return RegistryRepo.create(tmp_path, installed_model("all-MiniLM-L6-v2-int8")[1])


@pytest.fixture
def source(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    root.mkdir()
    for name, text in DOCUMENTS.items():
        (root / name).write_text(text)
    return root


def lock(repo: RegistryRepo, spec: EmbedderSpec, **params: Any) -> str:
    return repo.locked(**{"chunk_size": 40, "overlap_ratio": 0.0, "embedder_spec": spec,
                          "tokenizer": spec.name, **params})


def rows_with_vectors(dsn: str, table: str) -> list[tuple[str, np.ndarray]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        register_vector(conn)
        found = conn.execute(f'SELECT embedding_text, embedding FROM "{table}" ORDER BY id'
                             ).fetchall()
    return [(text, np.asarray(vector.to_numpy() if hasattr(vector, "to_numpy") else vector))
            for text, vector in found]


def run_details(dsn: str) -> list[dict[str, Any]]:
    return [row[0] for row in Database(dsn).query(
        "SELECT details FROM chunk_registry.ingest_runs WHERE status = 'succeeded' ORDER BY id")]


@pytest.mark.slow
def test_every_row_gets_the_vector_of_its_passage_and_a_rerun_reuses_them(
        repo: RegistryRepo, dsn: str, source: Path, minilm_spec: EmbedderSpec,
        minilm: OnnxEmbedder) -> None:
    needs_pgvector(dsn)
    version = lock(repo, minilm_spec)
    assert run_cli("reconcile", "--repo", repo.path, "--dsn", dsn).code == 0

    report = ingest(repo.path, version, source, dsn=dsn, workers=1)

    rows = rows_with_vectors(dsn, table_of(version))
    assert len(rows) == report.chunks >= 5
    expected = minilm.embed_texts(["passage: " + text for text, _ in rows])
    stored = np.stack([vector for _, vector in rows])
    assert np.allclose(stored, expected, atol=1e-5)
    assert np.allclose(np.linalg.norm(stored, axis=1), 1.0, atol=1e-4)
    assert (report.vectors_computed, report.vectors_reused) == (report.chunks, 0)
    first = run_details(dsn)[-1]
    assert first["vectors_computed"] == report.chunks and first["vectors_reused"] == 0
    assert first["embedder_fingerprint"] == minilm_spec.fingerprint

    again = ingest(repo.path, version, source, dsn=dsn, workers=1)

    assert (again.vectors_computed, again.vectors_reused) == (0, report.chunks)
    assert np.allclose(np.stack([v for _, v in rows_with_vectors(dsn, table_of(version))]),
                       stored, atol=1e-6)

    promote(repo, version)
    assert run_cli("reconcile", "--repo", repo.path, "--dsn", dsn).code == 0
    (source / "new.md").write_text("# New\n\nA fourth document, added while in production.\n")
    change = ingest(repo.path, version, source, dsn=dsn, workers=1, into_production=True,
                    max_change=1.0)

    assert change.documents_added == 1 and change.vectors_reused == report.chunks
    after = rows_with_vectors(dsn, table_of(version))
    assert len(after) == change.chunks > report.chunks
    added = [(text, vector) for text, vector in after if "fourth document" in text]
    assert added and np.allclose(np.stack([v for _, v in added]),
                                 minilm.embed_texts(["passage: " + t for t, _ in added]),
                                 atol=1e-5)


@pytest.mark.slow
def test_a_config_changing_only_jaccard_and_prefix_policy_embeds_nothing_new(
        repo: RegistryRepo, dsn: str, source: Path, minilm_spec: EmbedderSpec) -> None:
    needs_pgvector(dsn)
    first = lock(repo, minilm_spec)
    second = lock(repo, minilm_spec, jaccard_threshold=0.9, prefix_policy="B")
    assert run_cli("reconcile", "--repo", repo.path, "--dsn", dsn).code == 0
    cold = ingest(repo.path, first, source, dsn=dsn, workers=1)
    (source / "new.md").write_text("# New\n\nA document the first config never saw, about "
                                   "the embedding cache.\n")

    warm = ingest(repo.path, second, source, dsn=dsn, workers=2)

    assert warm.vectors_reused == cold.chunks
    assert warm.vectors_computed == warm.chunks - cold.chunks >= 1
    assert run_details(dsn)[-1]["vectors_reused"] == cold.chunks


@pytest.mark.slow
def test_a_model_that_changed_behind_the_lock_is_refused_before_anything_is_written(
        repo: RegistryRepo, dsn: str, source: Path, minilm_spec: EmbedderSpec) -> None:
    needs_pgvector(dsn)
    version = lock(repo, replace(minilm_spec, fingerprint="sha256:" + "0" * 64))
    assert run_cli("reconcile", "--repo", repo.path, "--dsn", dsn).code == 0

    result = run_cli("ingest", version, "--repo", repo.path, "--source", source, "--dsn", dsn)

    assert result.code == EmbedderChanged.exit_code
    assert result.stderr.count("\n") == 1 and "fingerprint" in result.stderr
    assert Database(dsn).count(table_of(version)) == 0


def test_the_cache_round_trips_vectors_on_every_server(dsn: str) -> None:
    """Plain bytea, no pgvector: the PostgreSQL 15 has the cache as well."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        bookkeeping.ensure_schema(conn)
        keys = [bytes([i]) * 32 for i in range(3)]
        vectors = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
        bookkeeping.store_embeddings(conn, "sha256:" + "a" * 64, True, keys[:2], vectors[:2])
        bookkeeping.store_embeddings(conn, "sha256:" + "a" * 64, True, keys[1:], vectors[1:])
        found = bookkeeping.cached_embeddings(conn, "sha256:" + "a" * 64, True, keys, 4)
        other = bookkeeping.cached_embeddings(conn, "sha256:" + "a" * 64, False, keys, 4)
    assert sorted(found) == sorted(keys)
    assert all(np.array_equal(found[k], vectors[i]) for i, k in enumerate(keys))
    assert other == {}
