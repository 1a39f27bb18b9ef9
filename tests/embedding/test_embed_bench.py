"""bench/embed_bench.py still runs (tiny sizes; the figures come from the bench itself)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.embedding.conftest import needs_minilm

BENCH = Path(__file__).resolve().parents[2] / "bench" / "embed_bench.py"


@pytest.mark.bench
@needs_minilm
def test_embed_bench_runs_at_tiny_sizes() -> None:
    out = subprocess.run(
        [sys.executable, str(BENCH), "--chunks", "4", "--tokens", "32", "--batch-sizes", "2",
         "--repeat", "1"],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout
    assert "4 chunks of [32] tokens" in out
    assert "batch   2: onnx" in out and "chunks/s, http" in out
