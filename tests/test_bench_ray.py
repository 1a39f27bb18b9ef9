"""Smoke run of bench/ray_bench.py (marker `bench`): both engines on two tiny corpora, the
same chunks (the bench exits non-zero otherwise), the ratios, memory per worker and the
scaling model printed, load average labelled; and a config pinning the int8 MiniLM, embedded
by both engines (Ray: in embedding actors). Also the no-address path: each Ray run starts a
local Ray of its own and stops it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.bench


@pytest.mark.timeout(2400)
def test_ray_bench_runs_both_engines_and_prints_the_model(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    output = tmp_path / "ray.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "ray_bench.py"), "--sizes-mb",
                           "0.3,0.6", "--embed-sizes-mb", "0.05", "--rounds", "1", "--workers",
                           "2", "--allow-busy",
                           "--output", str(output)], capture_output=True, text=True,
                          timeout=2300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "load average at start" in proc.stdout and "load average at end" in proc.stdout
    assert "Ray/built-in" in proc.stdout and "same chunks" in proc.stdout
    assert "scaling model" in proc.stdout and " 64 nodes:" in proc.stdout
    data = json.loads(output.read_text())
    assert set(data["sizes"]) == {"0.3", "0.6"}
    for figures in data["sizes"].values():
        assert figures["chunks"] > 0 and figures["overhead"] > 0
        assert figures["ray_largest_worker_mb"] > 0 and figures["builtin_largest_worker_mb"] > 0
    assert data["database"]["copy_mb_s"] > 0 and data["database"]["move_mb_s"] > 0
    embedded = data["embedded_sizes"]["0.05"]  # both engines computed every vector
    assert "int8 MiniLM pinned" in proc.stdout
    assert len(set(embedded["vectors_computed"])) == 1 and embedded["vectors_computed"][0] > 0
