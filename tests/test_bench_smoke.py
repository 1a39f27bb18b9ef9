"""The benchmark scripts still run (tiny sizes; the figures themselves come from bench/)."""

from __future__ import annotations

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
    assert "2 managed tables: 5 round trips" in out and "6 managed tables: 5 round trips" in out
    assert "errors 0" in out
