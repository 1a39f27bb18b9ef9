"""The benchmark scripts still run (tiny sizes; the figures themselves come from bench/)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "reconcile_bench.py"


@pytest.mark.bench
def test_reconcile_bench_runs_at_tiny_sizes(pg_server: str) -> None:
    out = subprocess.run(
        [sys.executable, str(BENCH), "--dsn", pg_server, "--configs", "5", "--small", "2",
         "--large", "6", "--swaps", "3"],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout
    assert "registry plan:" in out
    trips = {int(size): int(count) for size, count in
             re.findall(r"(\d+) managed tables: (\d+) round trips", out)}
    # A no-op reconcile costs the same however many tables it manages: 8 reads for the plan,
    # 4 syncs of the one pipelined table-shape template (per prefix policy), the run's record,
    # 2 reads of what is served and the served state's one statement in its transaction.
    assert set(trips) == {2, 6} and trips[2] == trips[6] <= 18, trips
    assert "errors 0" in out


SERVING = Path(__file__).resolve().parent.parent / "bench" / "serving_bench.py"


@pytest.mark.bench
def test_serving_bench_runs_and_no_reader_sees_a_dropped_table(pg_server: str) -> None:
    out = subprocess.run(
        [sys.executable, str(SERVING), "--dsn", pg_server, "--calls", "2000", "--repetitions",
         "2", "--seconds", "3", "--allow-busy"],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout
    warm = float(re.search(r"router \(warm\)\s+([\d,.]+) us", out).group(1).replace(",", ""))  # type: ignore[union-attr]
    assert warm < 1000, out
    assert "version checks during the rounds:" in out
    assert re.search(r"(\d+) swaps", out) and "swaps, 0 tables" not in out, out
    assert "reader errors 0, dropped tables returned 0" in out, out


@pytest.mark.bench
def test_hybrid_bench_runs_at_tiny_sizes(pg_server: str) -> None:
    import json

    import psycopg

    with psycopg.connect(pg_server) as conn:
        if conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'"
                        ).fetchone() is None:
            pytest.skip("this PostgreSQL has no pgvector (the PG15 here)")
    script = BENCH.parent / "hybrid_bench.py"
    out = subprocess.run(
        [sys.executable, str(script), "--dsn", pg_server, "--rows", "1500", "--queries", "4",
         "--rounds", "1", "--k", "10", "--allow-busy", "--format", "json"],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout
    result = json.loads(out[out.index("{"):out.rindex("}") + 1])
    assert set(result["latency_ms"]) == {"bm25", "dense-hnsw", "dense-exact", "hybrid-hnsw",
                                         "hybrid-exact"}
    assert all(f["p50"] > 0 for f in result["latency_ms"].values())
    recalls = list(result["hnsw_recall_at_k"].values())
    assert all(0 < r <= 1 for r in recalls) and recalls[-1] >= recalls[0]
    # At 1500 rows the planner rightly prefers a sequential scan; at 100k it takes the index.
    assert set(result["uses_hnsw"]) == {"dense-hnsw", "hybrid-hnsw"}


SCALE = Path(__file__).resolve().parent.parent / "bench" / "scale_bench.py"


@pytest.mark.bench
def test_scale_bench_cli_races_each_side_with_its_own_code() -> None:
    """The CLI race runs the baseline's code, not today's (it checks which `registry` each
    side imports), and prints the time per config and its growth for both commands."""
    out = subprocess.run(
        [sys.executable, str(SCALE), "--only", "cli", "--configs", "3,6", "--repetitions", "1",
         "--allow-busy"],
        capture_output=True, text=True, timeout=600, check=True, cwd=SCALE.parent.parent,
    ).stdout
    for name in ("baseline validate", "now validate", "baseline plan", "now plan"):
        assert re.search(rf"\b6 configs {name}: median [0-9.]+ s .* ms per config \[cold", out)
        assert re.search(rf"  {name}: 3: [0-9.]+ ms \(1\.00x / 1\.00x\), 6: ", out), out
