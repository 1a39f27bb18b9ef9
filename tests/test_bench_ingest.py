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


@pytest.mark.timeout(1500)
def test_ingest_benchmark_quick_run_reports_ratios(tmp_path: Path) -> None:
    for module in ("langchain_text_splitters", "semchunk", "chonkie", "semantic_text_splitter",
                   "datasketch"):
        pytest.importorskip(module)
    results = ROOT / "bench" / "results" / "ingest.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "ingest" / "run.py"), "--quick",
                           "--sample-mb", "1", "--repetitions", "2", "--allow-busy",
                           "--only", "chunking,dedup"], capture_output=True, text=True,
                          timeout=1400)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "load average at start" in proc.stdout and "load average at end" in proc.stdout
    data = json.loads(results.read_text())
    chunking = data["chunking"]
    assert chunking["long_documents"] >= 1
    assert "1 core" in chunking["cores"]
    for figures in chunking["cores"].values():
        assert figures["ours_vs_floor"] > 0 and figures["one_process_vs_floor"] > 0
        assert set(figures["figures"]) == {
            "encode_batch (floor)", "ours", "ours, one process", "chonkie chunk_batch",
            "langchain over processes", "semchunk processes",
            "semantic-text-splitter chunk_all"}
        assert all(len(f["seconds"]) == 2 for f in figures["figures"].values())
        assert figures["ours_vs_chonkie chunk_batch"] > 0
    ours = "ours (shingles + MinHash + LSH + verify)"
    for run in data["dedup"]["runs"]:
        assert run[ours]["precision_vs_exact"] == 1.0
        assert run["datasketch MinHashLSH (bulk)"]["recall"] > 0
        assert run["ours_faster_x"] > 0
