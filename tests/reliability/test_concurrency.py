"""Concurrency: eight reconcilers started at once (exactly one applies, the others exit 4 or,
with --wait-lock, queue and find nothing left to do), and a shadow ingest plus promotions and
rollbacks while four reader loops read production (zero reader errors; the p99 read latency
during the view swaps is reported)."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from registry.commands.reconcile import reconcile
from registry.faults import FAULT_ENV
from tests.database import Database, promote, table_of
from tests.helpers import RegistryRepo
from tests.reliability.conftest import (
    Readers,
    finish,
    percentile,
    run_registry,
    start_registry,
    wait_stopped,
)
from tests.reliability.scenarios import invariants, write_corpus

pytestmark = pytest.mark.reliability
RECONCILERS = 8
BUSY = 4


def reconcile_args(repo: RegistryRepo, dsn: str, *extra: str) -> list[str]:
    return ["reconcile", "--repo", str(repo.path), "--dsn", dsn, "--format", "json", *extra]


def collect(procs: list[subprocess.Popen[str]], timeout: float = 90) -> list[tuple[int, str, str]]:
    return [finish(proc, timeout) for proc in procs]


def lock_waiters(dsn: str) -> int:
    """Sessions queued on an advisory lock in `dsn`'s database."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT "
                           "granted AND database = (SELECT oid FROM pg_database WHERE datname = "
                           "current_database())").fetchone()
        return int(row[0]) if row else 0


def outcomes(dsn: str) -> list[str]:
    return [r["outcome"] for r in Database(dsn).runs()]


def test_eight_reconcilers_at_once_exactly_one_applies_the_others_exit_4(
    registry_repo: RegistryRepo, dsn: str, figures: dict[str, Any]
) -> None:
    v1 = registry_repo.locked()
    # Whoever wins the lock stops itself right after taking it, so the race cannot end before
    # every other process has tried.
    procs = [start_registry(*reconcile_args(registry_repo, dsn),
                            env={FAULT_ENV: "reconcile.locked:stop"})
             for _ in range(RECONCILERS)]
    try:
        deadline = time.monotonic() + 90
        while sum(p.poll() is not None for p in procs) < RECONCILERS - 1:
            assert time.monotonic() < deadline, "the losers never gave up"
            time.sleep(0.05)
        winner = next(p for p in procs if p.poll() is None)
        wait_stopped(winner)
    finally:
        results = collect(procs)
    codes = sorted(code for code, _, _ in results)
    won = next(r for p, r in zip(procs, results, strict=True) if p is winner)

    assert codes == [0] + [BUSY] * (RECONCILERS - 1), results
    for code, _, err in results:
        if code == BUSY:
            assert re.fullmatch(r"error: another reconcile is running: the lock is held by "
                                rf"backend pid \d+ \(chunk-registry reconcile \(pid {winner.pid}\)"
                                r".*\(wait for it to finish.*\)\n", err), err
    assert json.loads(won[1])["outcome"] == "applied"
    assert outcomes(dsn) == ["applied"]
    assert Database(dsn).tables() == [table_of(v1)]

    # The same race without holding the winner: still exactly one run applies the change.
    v2 = registry_repo.locked(chunk_size=300)
    procs = [start_registry(*reconcile_args(registry_repo, dsn)) for _ in range(RECONCILERS)]
    raced = collect(procs)
    applied = [json.loads(out)["outcome"] for code, out, _ in raced if code == 0]
    assert sorted({code for code, _, _ in raced}) <= [0, BUSY], raced
    assert applied.count("applied") == 1 and set(applied) <= {"applied", "noop"}, raced
    assert outcomes(dsn).count("applied") == 2 and "failed" not in outcomes(dsn)
    assert Database(dsn).tables() == sorted([table_of(v1), table_of(v2)])
    correct = sum(1 for code, _, _ in results if code in (0, BUSY)) + len(raced)
    figures["concurrent reconcilers"] = {
        "runs": 2 * RECONCILERS, "correct outcomes": correct,
        "held race": {"applied": 1, "exit 4": codes.count(BUSY)},
        "free race": {"applied": applied.count("applied"), "noop": applied.count("noop"),
                      "exit 4": sum(code == BUSY for code, _, _ in raced)}}


def test_wait_lock_queues_reconcilers_behind_the_holder_and_gives_up_after_its_bound(
    registry_repo: RegistryRepo, dsn: str, figures: dict[str, Any]
) -> None:
    registry_repo.locked()
    holder = start_registry(*reconcile_args(registry_repo, dsn),
                            env={FAULT_ENV: "reconcile.locked:stop"})
    waiters: list[subprocess.Popen[str]] = []
    try:
        wait_stopped(holder)
        started = time.monotonic()
        impatient = run_registry(*reconcile_args(registry_repo, dsn, "--wait-lock", "1"))
        gave_up_after = time.monotonic() - started
        waiters = [start_registry(*reconcile_args(registry_repo, dsn, "--wait-lock", "60"))
                   for _ in range(RECONCILERS - 1)]
        deadline = time.monotonic() + 60
        while lock_waiters(dsn) < RECONCILERS - 1:
            assert time.monotonic() < deadline, "the waiters never queued"
            assert all(w.poll() is None for w in waiters), "a waiter gave up"
            time.sleep(0.1)
    finally:
        first = finish(holder)
        rest = collect(waiters)

    assert impatient.returncode == BUSY
    assert "(waited 1s)" in impatient.stderr and "--wait-lock" in impatient.stderr
    assert 1.0 <= gave_up_after < 15
    assert first[0] == 0 and json.loads(first[1])["outcome"] == "applied"
    assert [code for code, _, _ in rest] == [0] * (RECONCILERS - 1), rest
    assert [json.loads(out)["outcome"] for _, out, _ in rest] == ["noop"] * (RECONCILERS - 1)
    assert outcomes(dsn) == ["applied"] + ["noop"] * (RECONCILERS - 1)
    figures["--wait-lock"] = {"waiters": RECONCILERS - 1, "all succeeded": True,
                              "gave up after s (bound 1s)": round(gave_up_after, 2)}


def test_a_second_ingest_of_the_same_config_exits_4_while_the_first_runs(
    registry_repo: RegistryRepo, dsn: str, tmp_path: Path, figures: dict[str, Any]
) -> None:
    version = registry_repo.locked(chunk_size=120)
    reconcile(registry_repo.path, dsn=dsn)
    corpus = write_corpus(tmp_path / "corpus", 300)
    args = ["ingest", version, "--repo", str(registry_repo.path), "--dsn", dsn, "--source",
            str(corpus), "--tokenizer-file", str(registry_repo.tokenizer_file), "--workers", "1"]
    first = start_registry(*args, env={FAULT_ENV: "ingest.copy_batch#1:stop"})
    try:
        wait_stopped(first)
        second = run_registry(*args)
    finally:
        code, _, err = finish(first)

    assert second.returncode == BUSY
    assert second.stderr.startswith(f"error: another ingest of {version} into public.")
    assert code == 0, err
    statuses = [r[0] for r in Database(dsn).query(
        "SELECT status FROM chunk_registry.ingest_runs ORDER BY id")]
    assert statuses == ["succeeded"], "the refused ingest recorded nothing"
    assert invariants(dsn) == []
    figures["concurrent ingests of one config"] = {"runs": 2, "correct outcomes": 2}


SWAPS = 6


def test_readers_of_production_see_no_error_during_an_ingest_and_view_swaps(
    registry_repo: RegistryRepo, dsn: str, tmp_path: Path, figures: dict[str, Any]
) -> None:
    v1, v2 = registry_repo.locked(chunk_size=100), registry_repo.locked(chunk_size=120)
    reconcile(registry_repo.path, dsn=dsn)
    corpus = write_corpus(tmp_path / "corpus", 300)
    ingest = ["ingest", "--repo", registry_repo.path, "--dsn", dsn, "--source", corpus,
              "--tokenizer-file", registry_repo.tokenizer_file, "--workers", "1"]
    assert run_registry(ingest[0], v1, *ingest[1:]).returncode == 0
    promote(registry_repo, v1)
    reconcile(registry_repo.path, dsn=dsn)

    windows: list[tuple[float, float]] = []
    with Readers(dsn, threads=4, pause=0.002) as readers:
        ingest_started = time.monotonic()
        filled = run_registry(ingest[0], v2, *ingest[1:])
        ingest_window = (ingest_started, time.monotonic())
        assert filled.returncode == 0, filled.stderr
        for number in range(SWAPS):
            if number == 0:
                promote(registry_repo, v2)
            else:
                registry_repo.git("revert", "--no-edit", "HEAD")
                registry_repo.git("push", "--quiet", "origin", "main")
            started = time.monotonic()
            result = reconcile(registry_repo.path, dsn=dsn)
            windows.append((started, time.monotonic()))
            assert result.outcome == "applied", result.to_dict()
            time.sleep(0.3)
    readers.check()
    swap = [lat for start, end in windows for lat in readers.latencies(start, end)]
    during_ingest = readers.latencies(*ingest_window)
    everything = readers.latencies()

    assert Database(dsn).view_target() == [table_of(v1 if SWAPS % 2 == 0 else v2)]
    assert invariants(dsn) == []
    assert swap, "no read overlapped a swap"
    assert max(everything) < 5.0
    figures["readers during ingest and swaps"] = {
        "readers": 4, "reads": len(everything), "errors": len(readers.errors),
        "empty": len(readers.bad), "swaps": SWAPS,
        "p50_ms": round(percentile(everything, 50) * 1000, 2),
        "p99_ms_during_ingest": round(percentile(during_ingest, 99) * 1000, 2),
        "p99_ms_during_swaps": round(percentile(swap, 99) * 1000, 2),
        "max_ms_during_swaps": round(max(swap) * 1000, 2), "reads_during_swaps": len(swap)}
