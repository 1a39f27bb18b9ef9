"""What applications pay to ask "which table do I read?", against baselines in the same run.

1. Warm `Router.table(key=...)` (an experiment running, so every call hashes the key) against
   one served-state query per call (no cache) and the git path (`retrieval_table(repo=...)`,
   what the API did before: it reads the committed main branch on every call), alternated
   round after round (bench/fair.py's schedule), median per call with the spread.
2. Cold: a new Router's first call (connect + the one query) and a refresh after the
   served-state version moved (the one query).
3. Refresh under concurrent swaps: reader threads share one Router (check interval
   `--interval`) and read every table it returns, while a swapper publishes a new production
   table and candidate every `--swap-every` seconds and a dropper drops every table that left
   the served state more than `--grace` ago (the applier's own rule, `served_within`; the
   reconciler's grace is 60 s for a 2 s interval, scaled down here to keep the run short).
   Counted: reads, reader errors, and dropped tables returned (must both be 0).

Usage: python bench/serving_bench.py [--dsn ADMIN_DSN] [--calls 100000] [--repetitions 5]
       [--seconds 10] [--readers 4] [--allow-busy]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from fair import check_quiet, load_line, schedule
from pgload import embedded_server
from pgtemp import throwaway_database
from psycopg import sql

from registry.database import bookkeeping
from registry.serving import Router, retrieval_table

ENVIRONMENT = "production"
REGISTRY = "bench"


def served(production: str, candidate: str | None, share: float = 0.3) -> dict[str, Any]:
    ends = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    state: dict[str, Any] = {
        "registry": REGISTRY, "environment": ENVIRONMENT, "view": "public.document_chunks",
        "production": {"version": production, "table": f"public.{production}"},
        "experiment": None}
    if candidate:
        state["experiment"] = {"name": "bench", "candidate": {"version": candidate,
                                                             "table": f"public.{candidate}"},
                               "share": share, "salt": "bench", "ends": ends,
                               "view": "public.document_chunks_candidate"}
    return state


def publish(conn: psycopg.Connection[Any], production: str, candidate: str | None) -> int:
    tables = [("public", production)] + ([("public", candidate)] if candidate else [])
    with conn.transaction():
        version, _ = bookkeeping.publish_served_state(
            conn, REGISTRY, ENVIRONMENT, served(production, candidate), None, tables)
    return version


def create(conn: psycopg.Connection[Any], name: str) -> None:
    conn.execute(sql.SQL("CREATE TABLE {} (id int)").format(sql.Identifier(name)))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1)").format(sql.Identifier(name)))


@contextmanager
def git_registry() -> Iterator[Path]:
    """A registry repository with production.yaml on main: the git path's input."""
    with tempfile.TemporaryDirectory(prefix="bench-repo-") as tmp:
        repo = Path(tmp)
        (repo / "configs").mkdir()
        (repo / "configs" / "production.yaml").write_text(
            "production: null\ntables: {schema: public, base_name: document_chunks}\n")
        for args in (["init", "-q", "-b", "main"], ["add", "-A"],
                     ["-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "start"]):
            subprocess.run(["git", "-C", str(repo), *args], check=True)
        yield repo


def per_call(work: Callable[[int], object], calls: int) -> float:
    started = time.perf_counter()
    for i in range(calls):
        work(i)
    return (time.perf_counter() - started) / calls


def warm(dsn: str, calls: int, repetitions: int, label: str) -> None:
    router = Router(dsn, registry=REGISTRY, environment=ENVIRONMENT)
    keys = [f"user-{i}" for i in range(calls)]
    router.table(key=keys[0])
    query = psycopg.connect(dsn, autocommit=True)
    git_calls = max(5, calls // 5000)
    with git_registry() as repo:
        competitors: dict[str, Callable[[], float]] = {
            "router (warm)": lambda: per_call(lambda i: router.table(key=keys[i]), calls),
            "query per call": lambda: per_call(lambda i: query.execute(
                bookkeeping.READ_SERVED, (-1, None, ENVIRONMENT, REGISTRY, REGISTRY)).fetchall(),
                max(1, calls // 20)),
            "git per call": lambda: per_call(lambda i: retrieval_table(repo=repo), git_calls),
        }
        times: dict[str, list[float]] = {name: [] for name in competitors}
        for name in schedule(list(competitors), repetitions):
            times[name].append(competitors[name]())
    query.close()
    ours = statistics.median(times["router (warm)"])
    print(f"1. per call{label} (median of {repetitions} alternated rounds, min..max):")
    for name, values in times.items():
        median = statistics.median(values)
        ratio = "" if name == "router (warm)" else f"  router is {median / ours:,.0f}x faster"
        print(f"   {name:<15} {median * 1e6:>12,.2f} us  ({min(values) * 1e6:,.2f}.."
              f"{max(values) * 1e6:,.2f}){ratio}")
    print(f"   version checks during the rounds: {router.refreshes - 1} (at most one per "
          f"{router.check_interval:g}s check interval, each one query)")
    router.close()


def cold(dsn: str, conn: psycopg.Connection[Any], repetitions: int, label: str) -> None:
    firsts, refreshes = [], []
    for i in range(repetitions * 4):
        started = time.perf_counter()
        router = Router(dsn, registry=REGISTRY, environment=ENVIRONMENT)
        router.table(key="k")
        firsts.append(time.perf_counter() - started)
        publish(conn, "t_a" if i % 2 else "t_b", "t_c")
        started = time.perf_counter()
        router.refresh()
        router.table(key="k")
        refreshes.append(time.perf_counter() - started)
        router.close()
    print(f"2. cold{label}: first call (connect + 1 query) median "
          f"{statistics.median(firsts) * 1e3:.2f} ms ({min(firsts) * 1e3:.2f}.."
          f"{max(firsts) * 1e3:.2f}); refresh after a version change (1 query) median "
          f"{statistics.median(refreshes) * 1e3:.3f} ms")


def swaps(dsn: str, conn: psycopg.Connection[Any], seconds: float, readers: int,
          interval: float, swap_every: float, grace: float, label: str) -> tuple[int, int]:
    router = Router(dsn, registry=REGISTRY, environment=ENVIRONMENT, check_interval=interval)
    stop = threading.Event()
    counts = {"reads": 0, "errors": 0, "dropped": 0, "swaps": 0, "drops": 0}
    lock = threading.Lock()
    first_error: list[str] = []

    def read(index: int) -> None:
        with psycopg.connect(dsn, autocommit=True) as own:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    table = router.table(key=f"reader-{index}-{i}")
                    own.execute(sql.SQL("SELECT id FROM {}").format(
                        sql.Identifier(*table.split(".")))).fetchall()
                    with lock:
                        counts["reads"] += 1
                except psycopg.errors.UndefinedTable as err:
                    with lock:
                        counts["dropped"] += 1
                        first_error.append(str(err))
                except Exception as err:
                    with lock:
                        counts["errors"] += 1
                        first_error.append(repr(err))

    def swap_and_drop() -> None:
        with psycopg.connect(dsn, autocommit=True) as own:
            serial = 0
            live: list[str] = ["t_a", "t_b", "t_c"]
            while not stop.wait(swap_every):
                serial += 1
                production, candidate = f"s_{serial}_p", f"s_{serial}_c"
                create(own, production)
                create(own, candidate)
                live += [production, candidate]
                publish(own, production, candidate)
                counts["swaps"] += 1
                now = own.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
                for table in list(live):
                    if not bookkeeping.served_within(own, "public", table, [REGISTRY], grace,
                                                     now):
                        own.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(table)))
                        live.remove(table)
                        counts["drops"] += 1

    threads = [threading.Thread(target=read, args=(i,)) for i in range(readers)]
    threads.append(threading.Thread(target=swap_and_drop))
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    print(f"3. refresh under swaps{label}: {readers} readers, check every {interval:g}s, a swap "
          f"every {swap_every:g}s, drop {grace:g}s after a table left: {counts['reads']:,} "
          f"reads, {counts['swaps']} swaps, {counts['drops']} tables dropped, "
          f"{router.refreshes} refreshes; reader errors {counts['errors']}, dropped tables "
          f"returned {counts['dropped']}")
    if first_error:
        print(f"   first error: {first_error[0]}")
    router.close()
    return counts["errors"], counts["dropped"]


def run(admin: str, args: argparse.Namespace) -> int:
    label = f" [busy: {load_line('start')}]" if check_quiet(args.allow_busy) else ""
    with throwaway_database(admin) as dsn, psycopg.connect(dsn, autocommit=True) as conn:
        bookkeeping.ensure_schema(conn)
        for name in ("t_a", "t_b", "t_c"):
            create(conn, name)
        publish(conn, "t_a", "t_c")
        warm(dsn, args.calls, args.repetitions, label)
        cold(dsn, conn, args.repetitions, label)
        errors, dropped = swaps(dsn, conn, args.seconds, args.readers, args.interval,
                                args.swap_every, args.grace, label)
    print(load_line("end"))
    return 1 if errors or dropped else 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dsn", help="admin DSN (default: an embedded server in a temp dir)")
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--readers", type=int, default=4)
    parser.add_argument("--interval", type=float, default=0.05)
    parser.add_argument("--swap-every", type=float, default=0.1)
    parser.add_argument("--grace", type=float, default=1.0)
    parser.add_argument("--allow-busy", action="store_true",
                        help="Report on a loaded machine (figures labelled busy).")
    args = parser.parse_args(argv)
    print(load_line("start"))
    if args.dsn:
        sys.exit(run(args.dsn, args))
    with embedded_server() as admin:
        code = run(admin, args)
    sys.exit(code)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
