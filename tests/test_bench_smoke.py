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
