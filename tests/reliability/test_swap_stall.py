"""A swap while a long query holds the view, at the default settings users run: new readers
are stalled at most 100 ms in total (the swap waits for the holder without queuing its
exclusive lock behind it), and the swap lands once the long query is done."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from registry.reconciler.run import reconcile
from tests.database import Database, promote, table_of
from tests.helpers import RegistryRepo

pytestmark = pytest.mark.reliability

HOLD = 3.0


class Readers:
    """New short reads of production, back to back, each timed."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.latencies: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.stop.is_set():
                started = time.perf_counter()
                conn.execute("SELECT id FROM document_chunks LIMIT 1").fetchall()
                self.latencies.append(time.perf_counter() - started)
                time.sleep(0.002)

    def run_for(self, seconds: float) -> list[float]:
        self.thread.start()
        time.sleep(seconds)
        self.stop.set()
        self.thread.join()
        return self.latencies

    def __enter__(self) -> Readers:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def _hold_the_view(dsn: str, reading: threading.Event) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute("SELECT count(*) FROM document_chunks").fetchall()
        reading.set()
        time.sleep(HOLD)


def test_a_long_reader_stalls_new_readers_at_most_100ms_per_swap(
    registry_repo: RegistryRepo, dsn: str
) -> None:
    db = Database(dsn)
    v1, v2 = registry_repo.locked(), registry_repo.locked(chunk_size=300)
    reconcile(registry_repo.path, dsn=dsn)
    db.fill(table_of(v1))
    promote(registry_repo, v1)
    reconcile(registry_repo.path, dsn=dsn)
    db.fill(table_of(v2))
    promote(registry_repo, v2)
    quiet = Readers(dsn).run_for(1.0)
    normal = sorted(quiet)[int(0.99 * len(quiet))]

    reading = threading.Event()
    holder = threading.Thread(target=_hold_the_view, args=(dsn, reading))
    with Readers(dsn) as readers:
        holder.start()
        assert reading.wait(10)
        started = time.monotonic()
        result = reconcile(registry_repo.path, dsn=dsn)
        took = time.monotonic() - started
        holder.join()
        time.sleep(0.2)

    swap = result.results[0]
    assert swap.outcome == "applied" and swap.attempts > 1
    assert took > HOLD / 2  # it waited for the holder rather than failing or cutting in
    assert db.view_target() == [table_of(v2)]
    stalled = sum(max(0.0, latency - normal) for latency in readers.latencies)
    assert stalled <= 0.100, f"readers stalled {stalled * 1000:.0f} ms in total"
