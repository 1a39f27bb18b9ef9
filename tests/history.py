"""A registry with months of history, made by the real code paths: configs locked and merged,
tables created by the reconciler and filled by the real ingest, promotions and a rollback
reconciled, and one HealthReport a day per config appended through `health.record`. Only the
clock is moved: rows the real paths wrote are back-dated by SQL so they spread over the period."""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import psycopg

from registry.commands.data import ingest
from registry.commands.reconcile import reconcile
from registry.database.bookkeeping import record_eval_run
from registry.database.chunk_table import chunk_table
from registry.quality.health import HealthReport, check_table, record
from registry.repository.git import Git
from registry.repository.state import RegistryState, read_state
from tests.database import Database, promote, table_of
from tests.helpers import RegistryRepo
from tests.test_health_eval import write_corpus

CHUNK_SIZES = (450, 300, 350, 400, 250, 200, 500)


@dataclass
class History:
    versions: list[str]
    production: str
    """Production at the end: promoted, rolled back from, and promoted again."""
    rolled_back: str
    """Promoted, then rolled back (its regression days carry a critical alert)."""
    moves: list[tuple[str, str, str]]
    """Each production move in order: (promote|rollback, version, commit reconciled)."""
    critical: str
    """The config whose latest report carries a critical alert (3 over-budget chunks)."""
    days: int
    reports: int
    now: datetime


def build_history(repo: RegistryRepo, dsn: str, tmp: Path, *, configs: int = 5,
                  days: int = 90, seed: int = 11) -> History:
    corpus = write_corpus(tmp / "history-corpus")
    versions = [repo.locked(chunk_size=size) for size in CHUNK_SIZES[:configs]]
    reconcile(repo.path, dsn=dsn)
    for version in versions:
        ingest(repo.path, version, corpus.path, dsn=dsn, tokenizer_file=repo.tokenizer_file,
               workers=1)
    first, second = versions[0], versions[1]
    moves = []
    for kind, version in [("promote", first), ("promote", second), ("rollback", first),
                          ("promote", second)]:
        moves.append((kind, version, promote(repo, version)))
        reconcile(repo.path, dsn=dsn)
    # A second ingest of production (asked for: a document-level change), so throughput has a
    # trend.
    ingest(repo.path, second, corpus.path, dsn=dsn, tokenizer_file=repo.tokenizer_file, workers=1,
           into_production=True)

    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT statement_timestamp()").fetchone()
        assert row is not None
        now: datetime = row[0]
        ago = {"create": days - 2, "promote1": 80, "promote2": 50, "rollback": 44,
               "promote3": 12}
        runs = [r[0] for r in conn.execute(
            "SELECT id FROM chunk_registry.reconcile_runs WHERE outcome = 'applied' ORDER BY id")]
        assert len(runs) == 5, runs
        for run_id, key in zip(runs, ["create", "promote1", "promote2", "rollback", "promote3"],
                               strict=True):
            at = now - timedelta(days=ago[key])
            conn.execute("UPDATE chunk_registry.reconcile_runs SET started_at = %s, "
                         "finished_at = %s + interval '3 seconds' WHERE id = %s", (at, at, run_id))
        conn.execute("UPDATE chunk_registry.reconcile_runs SET started_at = %s, finished_at = %s "
                     "WHERE outcome = 'noop'", (now - timedelta(days=1), now - timedelta(days=1)))
        conn.execute("UPDATE chunk_registry.managed_tables SET created_at = %s",
                     (now - timedelta(days=ago["create"]),))
        conn.execute("UPDATE chunk_registry.managed_tables SET promoted_at = %s "
                     "WHERE status = 'production'", (now - timedelta(days=ago["promote3"]),))
        ingests = [r[0] for r in conn.execute(
            "SELECT id FROM chunk_registry.ingest_runs ORDER BY id")]
        for index, run_id in enumerate(ingests):
            at = now - timedelta(days=days - 3) + timedelta(hours=index)
            if index == len(ingests) - 1:
                at = now - timedelta(days=20)
            conn.execute("UPDATE chunk_registry.ingest_runs SET started_at = %s - interval "
                         "'5 seconds', finished_at = %s WHERE id = %s", (at, at, run_id))

        state = read_state(Git(repo.path), "main")
        with conn.transaction():
            reports = _daily_reports(conn, state, versions, second, days, now, seed)
    return History(versions, second, second, moves, versions[2], days, reports, now)


def _daily_reports(conn: psycopg.Connection[tuple[object, ...]], state: RegistryState,
                   versions: list[str], second: str, days: int, now: datetime,
                   seed: int) -> int:
    """One report a day per config through `health.record`, in one transaction; the second
    config's week as production before its rollback leaks the prefix and loses hits."""
    rng = random.Random(seed)
    reports = 0
    guard = {"valid": True, "issues": [], "warnings": []}
    for index, version in enumerate(versions):
        config = state.configs[version]
        table = check_table(conn, chunk_table(state, version), sample=0)
        level = 0.62 - 0.05 * index
        for day in range(days, -1, -1):
            at = now - timedelta(days=day, hours=index)
            bad = version == second and 50 >= day > 44
            health = dataclasses.replace(table, prefix_leakage=7 if bad else 0,
                                         over_budget=3 if day == 0 and index == 2 else 0)
            drift = rng.uniform(-0.03, 0.03)
            oracle = max(0.0, min(1.0, level + drift - (0.2 if bad else 0.0)))
            retrieval = {"cases": 10.0, "oracle_hit_rate": round(oracle, 3),
                         "filter_hit_rate": round(max(0.0, oracle - 0.3), 3),
                         "avg_snapshot_size": round(40 + rng.uniform(-6, 6), 1),
                         "p50_latency_ms": 2.0, "p95_latency_ms": 4.0}
            record(conn, HealthReport(config, state.settings, guard, health, retrieval,
                                      timestamp=at))
            reports += 1
    return reports


def young_registry(repo: RegistryRepo, dsn: str) -> tuple[str, str]:
    """Minutes old: (production, a candidate); production has two health reports, the second
    with an oracle hit rate of 0.2 (below the 0.45 target)."""
    first, second = repo.locked(), repo.locked(chunk_size=300)
    reconcile(repo.path, dsn=dsn)
    Database(dsn).fill(table_of(first))
    promote(repo, first)
    reconcile(repo.path, dsn=dsn)
    state = read_state(Git(repo.path), "main")
    guard = {"valid": True, "issues": [], "warnings": []}
    with psycopg.connect(dsn, autocommit=True) as conn:
        table = check_table(conn, chunk_table(state, first))
        for oracle in (0.8, 0.2):
            retrieval = {"cases": 10.0, "oracle_hit_rate": oracle, "filter_hit_rate": 0.5,
                         "avg_snapshot_size": 45.0, "p50_latency_ms": 2.0, "p95_latency_ms": 4.0}
            record(conn, HealthReport(state.configs[first], state.settings, guard, table,
                                      retrieval))
    return first, second


def failed_comparison_then_promotion(repo: RegistryRepo, dsn: str, first: str,
                                     second: str) -> None:
    """`second` compared against `first` and failed its gates (recorded as `registry eval
    --compare` records it), then its promotion merged on main anyway."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        record_eval_run(conn, second, registry="public.document_chunks", cases=10,
                        against=first, passed=False,
                        metrics={"oracle_hit_rate": 0.61, "filter_hit_rate": 0.5},
                        details={"regressions": ["oracle_hit_rate dropped 0.190"],
                                 "deltas": {"oracle_hit_rate": -0.19}})
    promote(repo, second)
