"""bench/fair.py's rules (default suite: pure logic and one pinned subprocess, no benchmark)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import fair


def test_competitors_alternate_round_after_round_the_same_number_of_times() -> None:
    order = fair.schedule(["ours", "chonkie", "langchain"], 3)
    assert order == ["ours", "chonkie", "langchain"] * 3


def test_race_alternates_on_every_cpu_set_and_reports_medians() -> None:
    calls: list[tuple[str, tuple[int, ...]]] = []
    times = {"ours": iter([1.0, 9.0, 2.0]), "baseline": iter([4.0, 3.0, 5.0])}

    def measure(name: str, pinned: list[int]) -> dict[str, Any]:
        calls.append((name, tuple(pinned)))
        return {"seconds": next(times[name]), "units": 7}

    raced = fair.race(["ours", "baseline"], measure, 3, {"1 core": [0]})
    assert [name for name, _ in calls] == ["ours", "baseline"] * 3
    assert {pinned for _, pinned in calls} == {(0,)}
    ours, baseline = raced["1 core"]["ours"], raced["1 core"]["baseline"]
    assert (ours.median, baseline.median) == (2.0, 4.0)  # the 9 s outlier does not count
    assert fair.ratio(baseline, ours) == 2.0
    assert ours.spread() == "1.00..9.00s"


def test_race_refuses_runs_that_did_different_work() -> None:
    units = iter([10, 10, 11])

    def measure(name: str, pinned: list[int]) -> dict[str, Any]:
        return {"seconds": 1.0, "units": next(units)}

    with pytest.raises(RuntimeError, match="11 units, before 10"):
        fair.race(["ours"], measure, 3, {"1 core": [0]})


def test_a_busy_machine_is_refused_in_one_line_unless_allowed() -> None:
    assert fair.check_quiet(False, 0.5, load_1min=0.9, cores=2) == ""
    with pytest.raises(SystemExit) as refused:
        fair.check_quiet(False, 0.5, load_1min=1.1, cores=2)
    message = str(refused.value.code)
    assert "load average 1.10 on 2 cores" in message and "--allow-busy" in message
    assert "\n" not in message
    assert fair.check_quiet(True, 0.5, load_1min=1.1, cores=2) == "busy"
    assert fair.check_quiet(True, 0.5, load_1min=0.2, cores=2) == ""


def test_one_core_and_all_cores() -> None:
    assert fair.core_sets([3, 1, 2]) == {"1 core": [1], "3 cores": [1, 2, 3]}
    assert fair.core_sets([5]) == {"1 core": [5]}


def test_a_measurement_runs_pinned_in_its_own_process() -> None:
    code = ("import os, sys; sys.path.insert(0, sys.argv[1]); import fair; "
            "fair.pin(fair.parse_cpus(sys.argv[-1])); "
            "fair.report_measurement(0.5, len(os.sched_getaffinity(0)), "
            "rayon=os.environ['RAYON_NUM_THREADS'], pid=os.getpid())")
    first = min(os.sched_getaffinity(0))
    found = fair.measure_in_subprocess(["-c", code, str(Path(fair.__file__).parent), "--cpus"],
                                       [first])
    assert found["units"] == 1 and found["rayon"] == "1" and found["seconds"] == 0.5
    assert found["pid"] != os.getpid()


def test_the_ingest_bench_refuses_a_busy_machine_before_measuring() -> None:
    script = Path(fair.__file__).parent / "ingest" / "run.py"
    proc = subprocess.run([sys.executable, str(script), "--max-load", "-1"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("bench: load average")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "corpus:" not in proc.stdout
