"""Smoke run of bench/ingest (marker `bench`): the script still runs and reports its ratios.

Skipped without the `bench` extra (the competitor chunkers and datasketch)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.bench


def test_ingest_benchmark_quick_run_reports_ratios(tmp_path: Path) -> None:
    for module in ("langchain_text_splitters", "semchunk", "chonkie", "semantic_text_splitter",
                   "datasketch"):
        pytest.importorskip(module)
    results = ROOT / "bench" / "results" / "ingest.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "ingest" / "run.py"), "--quick",
                           "--only", "chunking,dedup"], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(results.read_text())
    assert data["chunking"]["ours_1p_vs_encode"] > 0
    assert set(data["chunking"]["competitors"]) == {
        "langchain TokenTextSplitter", "semchunk", "chonkie TokenChunker",
        "semantic-text-splitter"}
    assert all(run["precision_vs_exact"] == 1.0 for run in data["dedup"]["runs"])
