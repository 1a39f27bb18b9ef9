"""bench/tune_bench.py still runs, and a 20-trial `registry tune` on the demo corpus stays under
a minute (the figures themselves come from the bench, README's Benchmarks)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "tune_bench.py"


@pytest.mark.bench
def test_tune_bench_runs_and_twenty_trials_take_under_a_minute(pg_server: str,
                                                               tmp_path: Path) -> None:
    figures_file = tmp_path / "figures.json"
    out = subprocess.run(
        [sys.executable, str(BENCH), "--dsn", pg_server, "--rounds", "2", "--trials", "20",
         "--allow-busy", "--json", str(figures_file)],
        capture_output=True, text=True, timeout=600, check=True,
    ).stdout
    assert re.search(r"later trial: [\d.]+x cheaper than a full ingest", out), out
    figures = json.loads(figures_file.read_text())
    twenty = figures["twenty_trials"]
    assert twenty["trials"] == 20 and twenty["complete"] + twenty["pruned"] == 20, twenty
    assert twenty["seconds"] < 60, twenty
    assert figures["cost"]["later_trial_ms"] < figures["cost"]["full_ingest_ms"], figures
