"""Fair races between the project and its baselines (issue 20), shared by the benches.

A figure is only worth quoting if a skeptic would accept it, so every race here:
- alternates the competitors, round after round (A B C A B C ...), each the same number of
  times, and reports the median with the spread (min..max) rather than a best-of;
- pins every measurement to the same CPU set (`os.sched_setaffinity`, in a fresh subprocess
  per measurement, so no competitor inherits another's warm process or threads), once on
  1 core and once on all the cores this process may use;
- prints the load average at start and end, and refuses to report on a busy machine (the
  1-minute load above `--max-load` per core) unless `--allow-busy` is given, in which case
  every figure carries the label "busy";
- labels the cache state: "cold" is what a fresh clone (and a fresh process) has, "warm" a
  second run in the same process.

A measurement subprocess is the bench script itself, started with `--measure ...`: it calls
`pin()` first, does its setup off the clock, times the work and prints one `FAIR {json}` line
(`report_measurement`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

MAX_LOAD_PER_CORE = 0.5
MARKER = "FAIR "


def load_average() -> tuple[float, float, float]:
    one, five, fifteen = os.getloadavg()
    return one, five, fifteen


def load_line(when: str) -> str:
    one, five, fifteen = load_average()
    return f"load average at {when}: {one:.2f} {five:.2f} {fifteen:.2f} ({len(cpus())} cores)"


def cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def core_sets(available: Sequence[int] | None = None) -> dict[str, list[int]]:
    """{"1 core": [first], "N cores": all}: the two CPU sets every race runs on."""
    found = sorted(available if available is not None else cpus())
    sets = {"1 core": found[:1]}
    if len(found) > 1:
        sets[f"{len(found)} cores"] = found
    return sets


def is_busy(load_1min: float, cores: int, max_per_core: float = MAX_LOAD_PER_CORE) -> bool:
    return load_1min > max_per_core * cores


def check_quiet(allow_busy: bool, max_per_core: float = MAX_LOAD_PER_CORE,
                load_1min: float | None = None, cores: int | None = None) -> str:
    """"" on a quiet machine, "busy" when allowed; otherwise SystemExit with one line (the
    interpreter prints it and exits 1)."""
    load = load_average()[0] if load_1min is None else load_1min
    count = len(cpus()) if cores is None else cores
    if not is_busy(load, count, max_per_core):
        return ""
    if allow_busy:
        return "busy"
    raise SystemExit(f"bench: load average {load:.2f} on {count} cores is above {max_per_core} per "
               f"core, so the figures would measure the neighbours: rerun on a quiet machine, "
               f"or pass --allow-busy (every figure is then labelled busy)")


def schedule(names: Sequence[str], repetitions: int) -> list[str]:
    """The order of the measurements: every competitor once per round, `repetitions` rounds."""
    if len(set(names)) != len(names):
        raise ValueError(f"competitor names repeat: {list(names)}")
    return [name for _ in range(repetitions) for name in names]


@dataclass
class Figures:
    """The repeated measurements of one competitor on one CPU set."""

    name: str
    cores: str
    seconds: list[float] = field(default_factory=list)
    units: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def spread(self) -> str:
        return f"{min(self.seconds):.2f}..{max(self.seconds):.2f}s"

    def to_dict(self) -> dict[str, Any]:
        return {"median_s": round(self.median, 4), "seconds": [round(s, 4) for s in self.seconds],
                "units": self.units, **self.extra}


Measure = Callable[[str, list[int]], dict[str, Any]]


def race(names: Sequence[str], measure: Measure, repetitions: int,
         sets: dict[str, list[int]]) -> dict[str, dict[str, Figures]]:
    """{cores label: {name: Figures}}: on each CPU set, the competitors alternated.

    `measure(name, cpus)` returns at least {"seconds": float, "units": int}; units (chunks,
    rows) must agree between repetitions, or one of the runs did different work.
    """
    results: dict[str, dict[str, Figures]] = {}
    for label, pinned in sets.items():
        figures = {name: Figures(name, label) for name in names}
        for name in schedule(names, repetitions):
            found = measure(name, pinned)
            entry = figures[name]
            units = int(found.pop("units"))
            if entry.seconds and units != entry.units:
                raise RuntimeError(f"{name} on {label}: {units} units, before {entry.units}")
            entry.seconds.append(float(found.pop("seconds")))
            entry.units = units
            entry.extra.update(found)
        results[label] = figures
    return results


def ratio(baseline: Figures, ours: Figures) -> float:
    """How many times faster ours is (median against median, same CPU set)."""
    return baseline.median / ours.median


# -- the measurement subprocess --------------------------------------------------------------


def pin(pinned: Sequence[int]) -> None:
    """Run this process (and the threads and processes it starts) on `pinned` only."""
    os.sched_setaffinity(0, pinned)
    count = str(len(pinned))
    os.environ["RAYON_NUM_THREADS"] = count  # tokenizers and semantic-text-splitter
    os.environ["OMP_NUM_THREADS"] = count


def measure_in_subprocess(argv: Sequence[str], pinned: Sequence[int],
                          timeout: float = 3600) -> dict[str, Any]:
    """Run `argv` (a bench script in --measure mode) pinned to `pinned`; its FAIR line."""
    command = [sys.executable, *argv, "--cpus", ",".join(map(str, pinned))]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[1:3])} failed: {proc.stderr.strip()[-800:]}")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(MARKER):
            return dict(json.loads(line[len(MARKER):]))
    raise RuntimeError(f"{' '.join(argv[1:3])} printed no {MARKER.strip()} line")


def report_measurement(seconds: float, units: int, **extra: Any) -> None:
    print(MARKER + json.dumps({"seconds": seconds, "units": units, **extra}), flush=True)


def timed(work: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = work()
    return time.perf_counter() - started, result


def parse_cpus(value: str) -> list[int]:
    return [int(c) for c in value.split(",") if c]


def add_arguments(parser: argparse.ArgumentParser, repetitions: int) -> None:
    """The options every fair bench takes."""
    parser.add_argument("--repetitions", type=int, default=repetitions,
                        help="Rounds per CPU set; every competitor runs once per round.")
    parser.add_argument("--allow-busy", action="store_true",
                        help="Report even on a loaded machine (figures labelled busy).")
    parser.add_argument("--max-load", type=float, default=MAX_LOAD_PER_CORE,
                        help="Refuse above this 1-minute load average per core.")
    parser.add_argument("--cores", choices=("both", "one", "all"), default="both",
                        help="Race on 1 core, on all cores, or both.")
    parser.add_argument("--cpus", type=parse_cpus, help=argparse.SUPPRESS)


def chosen_sets(choice: str) -> dict[str, list[int]]:
    sets = core_sets()
    labels = list(sets)
    if choice == "one":
        labels = labels[:1]
    elif choice == "all":
        labels = labels[-1:]
    return {label: sets[label] for label in labels}
