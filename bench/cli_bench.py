"""Foundation benchmarks (issue 2), each a ratio against a baseline measured in the same run.

1. `registry --help` wall time vs a bare typer hello-world app (goal <= 1.3x).
2. `registry validate` on N generated configs vs `check-jsonschema` on the same files with the
   same schema (goal <= 0.5x), cold (no parse cache) and warm.

Run: `.venv/bin/python bench/cli_bench.py [--configs 1000] [--runs 7]`
(needs the `bench` extra for check-jsonschema: `pip install -e '.[bench]'`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

HELLO = """\
import typer

app = typer.Typer()


@app.command()
def hello(name: str = "world") -> None:
    \"\"\"Say hello.\"\"\"
    print(f"hello {name}")


@app.command()
def bye() -> None:
    \"\"\"Say bye.\"\"\"


if __name__ == "__main__":
    app()
"""


def timed(cmd: list[str], runs: int, cwd: Path | None = None, setup: list[str] | None = None,
          ok: tuple[int, ...] = (0,)) -> list[float]:
    times = []
    for _ in range(runs):
        if setup:
            subprocess.run(setup, check=True, capture_output=True)
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if proc.returncode not in ok:
            raise SystemExit(f"{cmd} exited {proc.returncode}: {proc.stderr[-500:]}")
    return times


def report(name: str, ours: list[float], base: list[float], goal: float) -> None:
    ratio = statistics.median(ours) / statistics.median(base)
    verdict = "meets" if ratio <= goal else "MISSES"
    print(f"{name}: ours {statistics.median(ours) * 1000:.0f} ms, baseline "
          f"{statistics.median(base) * 1000:.0f} ms (median of {len(ours)}), ratio {ratio:.2f}x "
          f"-> {verdict} goal <= {goal}x")


def make_registry(where: Path, count: int) -> Path:
    """A git repo with `count` valid, distinct locked configs in the working tree."""
    repo = where / "registry"
    (repo / "configs").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    (repo / "configs" / "production.yaml").write_text("production: null\n")
    for i in range(count):
        version = f"2026-01-{1 + i // 3600:02d}-{(i // 60) % 60:02d}{i % 60:02d}00-v1"
        (repo / "configs" / f"{version}.yaml").write_text(
            f"schema_version: 1\nchunk_version: {version}\nchunk_size: {100 + i % 370}\n"
            f"overlap_ratio: 0.1\njaccard_threshold: 0.8\nprefix_policy: A\n"
            "embedder_name: BAAI/bge-large-en-v1.5\nembedder_max_tokens: 512\n"
            "tokenizer_name: BAAI/bge-large-en-v1.5\n"
            f"tokenizer_hash: sha256:{i:064x}\ncreated_at: '2026-01-01T00:00:00Z'\n"
            "created_by: Bench <bench@example.com>\nbaseline_metrics: {oracle_hit_rate: 0.47}\n"
        )
    return repo


def main() -> None:
    # Commands run as an installed tool runs: with bytecode cached (pip compiles it at install
    # time), for the tool and the baseline alike. Some shells export PYTHONDONTWRITEBYTECODE.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    parser = argparse.ArgumentParser()
    parser.add_argument("--configs", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    env_python = str(BIN / "python")
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        hello = tmpdir / "hello.py"
        hello.write_text(HELLO)
        ours = timed([str(BIN / "registry"), "--help"], args.runs)
        base = timed([env_python, str(hello), "--help"], args.runs)
        report("registry --help vs bare typer app", ours, base, 1.3)

        repo = make_registry(tmpdir, args.configs)
        files = sorted(str(p) for p in (repo / "configs").glob("2*.yaml"))
        checker = shutil.which("check-jsonschema", path=str(BIN))
        if checker is None:
            raise SystemExit("check-jsonschema is missing: pip install -e '.[bench]'")
        schema = ROOT / "schemas" / "locked-config.schema.json"
        base = timed([checker, "--schemafile", str(schema), *files], args.runs)
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        os.environ.update(env)
        validate = [str(BIN / "registry"), "validate", "--repo", str(repo)]
        cache = repo / ".git" / "chunk-registry"
        cold = timed(validate, args.runs, setup=["rm", "-rf", str(cache)])
        warm = timed(validate, args.runs)
        report(f"registry validate cold, {len(files)} configs vs check-jsonschema", cold, base, 0.5)
        report(f"registry validate warm, {len(files)} configs vs check-jsonschema", warm, base, 0.5)


if __name__ == "__main__":
    main()
