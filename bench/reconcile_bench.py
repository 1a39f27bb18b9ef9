"""Benchmarks of the reconciler, each against a baseline measured in the same run.

1. `registry plan` and `registry status` on a repo with N locked configs and N tags, against
   `gto show` on the same repository with N GTO tags (GTO rebuilds its state from every tag).
   GTO comes with the `bench` extra (`pip install -e '.[bench]'`); `--gto PATH` picks another.
2. SQL round trips of a no-op reconcile with a few vs many managed tables (counted by libpq's
   protocol trace: every Query or Sync message the client sends is one round trip).
4. The table-shape drift check alone on N tables made by the reconciler's DDL for N configs
   (the `registry plan`/`status`/`reconcile` share of it): today's against the code of
   `--shape-baseline` (a temporary table per config, pipelined in batches of 50), alternated.
3. View swap latency, and the longest stall of a concurrent read loop during swaps, against
   the same read loop with no swap; plus the stall when a long query holds the view.

Usage: python bench/reconcile_bench.py [--dsn DSN] [--configs 1500] [--small 10] [--large 1000]
       [--swaps 50] [--gto PATH] [--only plan|round-trips|swap|shape]
       (default: an embedded server in a temporary directory; --dsn is an admin DSN, each part
       runs in a database of its own that is dropped afterwards)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from pgload import ReadLoop, embedded_server, hold_the_view
from pgtemp import throwaway_database

from registry.commands.reconcile import reconcile
from registry.config import LockedConfig, ingest_run_id_for
from registry.reconciler.applier import Applier
from registry.reconciler.planner import SwapProduction

# The read loop's query: a few rows of one document, as a RAG retrieval reads them.
DOCUMENT_READ = ("SELECT id, chunk_version FROM document_chunks "
                 "WHERE doc_id = 'doc-7' LIMIT 5")

PRODUCTION_YAML = """\
production: {production}
tables: {{schema: public, base_name: document_chunks}}
retention: {{grace_period: 48h, keep_previous: 1}}
"""


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def make_repo(root: Path, configs: int, gto_tags: bool) -> tuple[Path, list[str]]:
    """A registry repo (with a bare origin) holding `configs` locked configs, each tagged by
    `registry tag`, plus one annotated GTO registration tag per config when asked."""
    origin, repo = root / "origin.git", root / "registry"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], check=True)
    subprocess.run(["git", "clone", "-q", str(origin), str(repo)], check=True,
                   capture_output=True)
    (repo / "configs").mkdir()
    start = datetime(2025, 1, 1, tzinfo=UTC)
    versions = []
    for i in range(configs):
        when = start + timedelta(minutes=i)
        version = when.strftime("%Y-%m-%d-%H%M%S") + "-v1"
        config = LockedConfig(
            chunk_version=version, chunk_size=200 + i % 250, overlap_ratio=0.1,
            jaccard_threshold=0.8, prefix_policy="A", embedder_name="BAAI/bge-large-en-v1.5",
            embedder_max_tokens=512, tokenizer_name="BAAI/bge-large-en-v1.5",
            tokenizer_hash="sha256:" + "ab" * 32, created_at=when.strftime("%Y-%m-%dT%H:%M:%SZ"),
            created_by="Bench <bench@example.com>", baseline_metrics={"oracle_hit_rate": 0.47},
        )
        (repo / "configs" / f"{version}.yaml").write_text(config.dump())
        versions.append(version)
    (repo / "configs" / "production.yaml").write_text(
        PRODUCTION_YAML.format(production=versions[-1]))
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", f"Lock {configs} configs")
    git(repo, "push", "-q", "origin", "main")
    subprocess.run([sys.executable, "-m", "registry", "tag", "--repo", str(repo)], check=True,
                   capture_output=True)
    if gto_tags:
        for i in range(configs):
            git(repo, "tag", "-a", f"cfg{i}@v1.0.0", "-m", f"Registering artifact cfg{i}")
    return repo, versions


def bench_shape(dsn: str, configs: int, baseline_commit: str, rounds: int = 3) -> None:
    import importlib.util
    import statistics

    from fair import load_line
    from psycopg import sql

    from registry.database.chunk_table import table_ddl
    from registry.reconciler.actual import shape_drift

    print(f"\n## 4. table-shape drift check on {configs} tables ({load_line('start')})")
    start = datetime(2025, 1, 1, tzinfo=UTC)
    tables: dict[str, LockedConfig] = {}
    for i in range(configs):
        when = start + timedelta(minutes=i)
        config = LockedConfig(
            chunk_version=when.strftime("%Y-%m-%d-%H%M%S") + "-v1", chunk_size=200 + i % 250,
            overlap_ratio=0.1, jaccard_threshold=0.8, prefix_policy="A",
            embedder_name="BAAI/bge-large-en-v1.5", embedder_max_tokens=512,
            tokenizer_name="BAAI/bge-large-en-v1.5", tokenizer_hash="sha256:" + "ab" * 32,
            created_at=when.strftime("%Y-%m-%dT%H:%M:%SZ"), created_by="Bench <b@example.com>")
        tables["document_chunks_" + config.chunk_version.replace("-", "_")] = config
    registry = "public.document_chunks"
    text = subprocess.run(["git", "-C", str(Path(__file__).resolve().parent.parent), "show",
                           f"{baseline_commit}:registry/reconciler/actual.py"], check=True,
                          capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "baseline_actual.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("baseline_actual", path)
    assert spec and spec.loader
    baseline = importlib.util.module_from_spec(spec)
    sys.modules["baseline_actual"] = baseline
    spec.loader.exec_module(baseline)
    with psycopg.connect(dsn, autocommit=True) as conn:
        names = list(tables)
        for first in range(0, configs, 100):
            with conn.transaction(), conn.pipeline():
                for name in names[first:first + 100]:
                    config = tables[name]
                    for statement in table_ddl(
                            "public", name, chunk_version=config.chunk_version,
                            config_hash=config.config_hash, prefix_policy="A",
                            chunk_size=config.chunk_size, token_budget=config.token_budget,
                            registry=registry):
                        conn.execute(statement)
        conn.execute(sql.SQL("ANALYZE"))
        times: dict[str, list[float]] = {"baseline": [], "today": []}
        for _ in range(rounds):
            for label, check in (("baseline", baseline.shape_drift), ("today", shape_drift)):
                started = time.perf_counter()
                found = check(conn, "public", tables, registry)
                times[label].append(time.perf_counter() - started)
                assert found == {}, (label, list(found.items())[:2])
    old, new = (statistics.median(times[k]) for k in ("baseline", "today"))
    print(f"baseline ({baseline_commit}, a temporary table per config): {old * 1000:.0f} ms")
    print(f"today (one expected shape per prefix policy, one catalog query): {new * 1000:.0f} ms"
          f" ({old / new:.1f}x faster; {load_line('end')})")


def timed(command: list[str], runs: int = 3) -> float:
    """Best wall time of `command` over `runs` (a whole process, as a user runs it)."""
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        best = min(best, time.perf_counter() - started)
    return best


def bench_plan_status(dsn: str, configs: int, gto: str | None) -> None:
    print(f"\n## 1. plan / status on {configs} configs and {configs} tags")
    with tempfile.TemporaryDirectory(prefix="bench-repo-") as tmp:
        started = time.perf_counter()
        repo, _ = make_repo(Path(tmp), configs, gto_tags=gto is not None)
        print(f"repo built in {time.perf_counter() - started:.1f}s")
        started = time.perf_counter()
        result = reconcile(repo, dsn=dsn, force=True)
        print(f"first reconcile: {len(result.plan.actions)} actions, {result.outcome}, "
              f"{time.perf_counter() - started:.1f}s")
        registry = [sys.executable, "-m", "registry"]
        cold_cache = repo / ".git" / "chunk-registry"
        shutil.rmtree(cold_cache, ignore_errors=True)
        cold = timed([*registry, "plan", "--repo", str(repo), "--dsn", dsn], runs=1)
        plan = timed([*registry, "plan", "--repo", str(repo), "--dsn", dsn])
        status = timed([*registry, "status", "--repo", str(repo), "--dsn", dsn])
        noop = timed([*registry, "reconcile", "--repo", str(repo), "--dsn", dsn])
        version = timed([*registry, "--help"])
        from fair import load_line

        print(f"({load_line('after the timings')})")
        print(f"registry --help (process start-up floor): {version:.3f}s")
        print(f"registry plan (cold parse cache):          {cold:.3f}s")
        print(f"registry plan:                             {plan:.3f}s")
        print(f"registry status:                           {status:.3f}s")
        print(f"registry reconcile (no-op):                {noop:.3f}s")
        if gto:
            gto_show = timed([gto, "show", "--repo", str(repo)], runs=1)
            print(f"gto show (same repo, {configs} GTO tags):   {gto_show:.3f}s")
            print(f"ratio gto show / registry plan:            {gto_show / plan:.1f}x")
            print(f"ratio gto show / registry status:          {gto_show / status:.1f}x")
        else:
            print("gto show: skipped (pass --gto PATH to compare)")


@contextlib.contextmanager
def counting_round_trips() -> Iterator[dict[str, int]]:
    """Count client round trips of every psycopg connection opened inside the block."""
    counts = {"round_trips": 0, "connections": 0}
    traces: list[tuple[Any, Path]] = []
    original = psycopg.connect

    def traced(*args: Any, **kwargs: Any) -> Any:
        conn = original(*args, **kwargs)
        path = Path(tempfile.mkstemp(prefix="pgtrace-")[1])
        handle = path.open("w")
        conn.pgconn.trace(handle.fileno())
        conn.pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)
        traces.append((handle, path))
        counts["connections"] += 1
        return conn

    psycopg.connect = traced  # type: ignore[assignment]
    try:
        yield counts
    finally:
        psycopg.connect = original  # type: ignore[assignment]
        for handle, path in traces:
            handle.close()
            for line in path.read_text().splitlines():
                parts = line.split()
                if len(parts) >= 3 and parts[0] == "F" and parts[2] in ("Query", "Sync"):
                    counts["round_trips"] += 1
            path.unlink()


def bench_round_trips(admin: str, sizes: list[int]) -> None:
    print(f"\n## 2. SQL round trips of a no-op reconcile ({' vs '.join(map(str, sizes))} tables)")
    for size in sizes:
        with throwaway_database(admin) as dsn, tempfile.TemporaryDirectory() as tmp:
            repo, _ = make_repo(Path(tmp), size, gto_tags=False)
            reconcile(repo, dsn=dsn, force=True)
            with counting_round_trips() as counts:
                started = time.perf_counter()
                result = reconcile(repo, dsn=dsn)
                seconds = time.perf_counter() - started
            assert result.outcome == "noop", result.outcome
            print(f"{size:>5} managed tables: {counts['round_trips']} round trips on "
                  f"{counts['connections']} connections, {seconds * 1000:.0f} ms")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bench_swap(admin: str, swaps: int) -> None:
    print(f"\n## 3. view swap latency and reader stall ({swaps} swaps under a read loop)")
    with throwaway_database(admin) as dsn, tempfile.TemporaryDirectory() as tmp:
        repo, versions = make_repo(Path(tmp), 2, gto_tags=False)
        reconcile(repo, dsn=dsn, force=True)
        tables = ["document_chunks_" + v.replace("-", "_") for v in versions]
        with psycopg.connect(dsn, autocommit=True) as conn:
            for version, table in zip(versions, tables, strict=True):
                row = conn.execute("SELECT config_hash FROM chunk_registry.managed_tables "
                                   "WHERE table_name = %s", (table,)).fetchone()
                assert row is not None
                conn.execute(
                    psycopg.sql.SQL(
                        "INSERT INTO {} (id, doc_id, chunk_index, embedding_text, bm25_text, "
                        "embedding_token_count, bm25_token_count, chunk_version, ingest_run_id) "
                        "SELECT {} || i, 'doc-' || (i %% 1000), i, 'text ' || i, 'text ' || i, "
                        "3, 2, %s, %s FROM generate_series(1, 50000) i"
                    ).format(psycopg.sql.Identifier(table), psycopg.sql.Literal(table)),
                    (version, ingest_run_id_for(version, row[0])))
                conn.execute(psycopg.sql.SQL("ANALYZE {}").format(psycopg.sql.Identifier(table)))
        from registry.config import ProductionConfig

        settings = ProductionConfig(production=versions[-1])

        def swap(conn: psycopg.Connection[Any], i: int, **options: Any) -> tuple[float, int]:
            action = SwapProduction("public", "document_chunks", tables[(i + 1) % 2],
                                    tables[i % 2], versions[i % 2])
            applier = Applier(conn, settings, None, datetime.now(UTC), **options)
            started = time.perf_counter()
            result = applier.run(action)
            assert result.outcome == "applied", result.error
            return time.perf_counter() - started, result.attempts

        with ReadLoop(dsn, DOCUMENT_READ) as baseline:
            time.sleep(2.0)
        swap_times: list[float] = []
        with psycopg.connect(dsn, autocommit=True) as conn, ReadLoop(dsn, DOCUMENT_READ) as during:
            time.sleep(0.2)
            for i in range(swaps):
                swap_times.append(swap(conn, i)[0])
                time.sleep(0.02)
        report("reader, no swap", baseline.latencies, baseline.errors)
        report(f"reader during {swaps} swaps", during.latencies, during.errors)
        print(f"swap latency: p50 {percentile(swap_times, 0.5) * 1000:.1f} ms, "
              f"max {max(swap_times) * 1000:.1f} ms")
        print(f"ratio longest stall during swaps / longest read without: "
              f"{max(during.latencies) / max(baseline.latencies):.1f}x")

        hold = 1.5
        long_query = threading.Thread(target=hold_the_view, args=(dsn, hold))
        with psycopg.connect(dsn, autocommit=True) as conn, ReadLoop(dsn, DOCUMENT_READ) as blocked:
            long_query.start()
            time.sleep(0.2)
            took, attempts = swap(conn, swaps, lock_timeout_ms=200)
            long_query.join()
        report(f"reader while a {hold}s query holds the view (lock_timeout 200ms)",
               blocked.latencies, blocked.errors)
        print(f"swap behind the {hold}s query: {took:.2f}s in {attempts} attempts")


def report(label: str, latencies: list[float], errors: list[str]) -> None:
    print(f"{label}: {len(latencies)} reads, p50 {percentile(latencies, 0.5) * 1000:.2f} ms, "
          f"p99 {percentile(latencies, 0.99) * 1000:.2f} ms, max {max(latencies) * 1000:.1f} ms, "
          f"errors {len(errors)}")


def main(argv: list[str] | None = None) -> None:
    # Commands run as an installed tool runs: with bytecode cached (pip compiles it at install
    # time), for the tool and the baseline alike. Some shells export PYTHONDONTWRITEBYTECODE.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dsn", help="admin DSN (default: an embedded server in a temp dir)")
    parser.add_argument("--configs", type=int, default=1500)
    parser.add_argument("--small", type=int, default=10)
    parser.add_argument("--large", type=int, default=1000)
    parser.add_argument("--swaps", type=int, default=50)
    beside = Path(sys.executable).parent / "gto"
    parser.add_argument("--gto", default=str(beside) if beside.exists() else shutil.which("gto"),
                        help="path to a `gto` executable to compare with (default: the bench "
                        "extra's)")
    parser.add_argument("--only", choices=["plan", "round-trips", "swap", "shape"])
    parser.add_argument("--shape-baseline", default="45be195",
                        help="commit of the shape check to compare with")
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        admin = args.dsn or stack.enter_context(embedded_server())
        steps: dict[str, Callable[[], None]] = {
            "plan": lambda: _in_database(admin, lambda dsn: bench_plan_status(
                dsn, args.configs, args.gto)),
            "round-trips": lambda: bench_round_trips(admin, [args.small, args.large]),
            "swap": lambda: bench_swap(admin, args.swaps),
            "shape": lambda: _in_database(admin, lambda dsn: bench_shape(
                dsn, args.configs, args.shape_baseline)),
        }
        for name, step in steps.items():
            if args.only in (None, name):
                step()


def _in_database(admin: str, body: Callable[[str], None]) -> None:
    with throwaway_database(admin) as dsn:
        body(dsn)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
