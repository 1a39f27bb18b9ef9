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
    # 5 for the reconcile, at most 4 for its one pipelined batch of table-shape comparisons
    assert set(trips) == {2, 6} and all(count <= 9 for count in trips.values()), trips
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
