"""Smoke run of bench/vector_ingest_bench.py (marker `bench`): it still runs and prints its
ratios (the figures themselves come from running it on demand)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.embedding.conftest import needs_minilm
from tests.test_vector_tables import has_pgvector

BENCH = Path(__file__).resolve().parent.parent / "bench" / "vector_ingest_bench.py"


@pytest.mark.bench
@needs_minilm
def test_vector_ingest_bench_runs_at_tiny_sizes(pg_server: str) -> None:
    if not has_pgvector(pg_server):
        pytest.skip("this server has no pgvector (the PostgreSQL 15 at REGISTRY_TEST_DSN)")
    out = subprocess.run(
        [sys.executable, str(BENCH), "--dsn", pg_server, "--documents", "2", "--rounds", "1",
         "--memory-scale", "2", "--chunk-size", "60"],
        capture_output=True, text=True, timeout=900, check=True).stdout
    assert "ratio end to end / embedder alone:" in out
    assert "cache hit rate 100.0%" in out
    assert "memory: peak RSS" in out
