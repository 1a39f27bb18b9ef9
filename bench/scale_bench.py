"""Scale cliffs of issue 20, raced fairly (bench/fair.py: alternated rounds, medians, load check)
against the code at the branch point (`--baseline`, default 5a40e1c) loaded from git:

1. Reading the rows of N chunk tables, as `registry status` does: the baseline's one
   pipelined transaction of exact counts, against the catalog estimates (the default now) and
   the exact counts in transactions of 100 (`--exact`); on a server at default settings.
2. Reader stall of one swap while a 3 s query holds the view, at the default lock_timeout:
   the sum over new reads of their latency above the no-swap p99.
3. `registry validate` and offline `registry plan --base main --head pr` without the parse
   cache (what a fresh CI clone has) on a repository of N configs, one squash-merged commit
   and one annotated tag each, against the baseline commit's tree run the same way.

Usage: python bench/scale_bench.py [--tables 1000,3000,10000] [--dsn ADMIN_DSN]
       [--repetitions 3] [--allow-busy] [--only rows|swap|cli]
       [--configs 100,1000,3000,10000]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import fair
import psycopg
from pgtemp import throwaway_database
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pgload import ReadLoop, embedded_server, hold_the_view, make_tables  # noqa: E402

from registry.config import ProductionConfig, ingest_run_id_for  # noqa: E402
from registry.reconciler import actual  # noqa: E402
from registry.reconciler.applier import Applier  # noqa: E402
from registry.reconciler.planner import SwapProduction  # noqa: E402


def baseline_module(commit: str, path: str, name: str) -> ModuleType:
    """`path` as it was at `commit`, imported under `name` (it imports today's registry)."""
    text = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:{path}"], check=True,
                          capture_output=True, text=True).stdout
    target = Path(tempfile.mkdtemp()) / f"{name}.py"
    target.write_text(text)
    spec = importlib.util.spec_from_file_location(name, target)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def bench_rows(admin: str, sizes: list[int], repetitions: int, label: str, commit: str) -> None:
    old = baseline_module(commit, "registry/reconciler/actual.py", "baseline_actual")
    print(f"\n## 1. rows of N chunk tables (status), median of {repetitions} alternated rounds"
          f"{' [' + label + ']' if label else ''}")
    for size in sizes:
        with throwaway_database(admin) as dsn:
            names = make_tables(dsn, size)
            with psycopg.connect(dsn) as conn:
                locks = conn.execute("SHOW max_locks_per_transaction").fetchone()

            def measure(name: str, _cpus: list[int], names: list[str] = names,
                        dsn: str = dsn) -> dict[str, Any]:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    work = {"baseline exact, one transaction":
                            lambda: old.row_counts(conn, "public", names),
                            "estimates (default)":
                            lambda: actual.row_estimates(conn, "public", names),
                            "exact, batched (--exact)":
                            lambda: actual.row_counts(conn, "public", names)}[name]
                    try:
                        seconds, found = fair.timed(work)
                    except psycopg.Error as err:
                        return {"seconds": float("nan"), "units": 0,
                                "error": str(err).splitlines()[0]}
                return {"seconds": seconds, "units": len(found)}

            results = fair.race(["baseline exact, one transaction", "estimates (default)",
                                 "exact, batched (--exact)"], measure, repetitions,
                                {"server": []})
            for figures in results["server"].values():
                shown = (f"FAILED: {figures.extra['error']}" if "error" in figures.extra
                         else f"median {figures.median * 1000:.0f} ms "
                         f"({figures.spread()})")
                print(f"{size:>6} tables (max_locks_per_transaction {locks[0] if locks else '?'})"
                      f" {figures.name}: {shown}")


def bench_swap(admin: str, repetitions: int, label: str, commit: str, hold: float) -> None:
    old = baseline_module(commit, "registry/reconciler/applier.py", "baseline_applier")
    print(f"\n## 2. reader stall of one swap behind a {hold:g}s query on the view, default "
          f"lock_timeout, median of {repetitions} alternated rounds"
          f"{' [' + label + ']' if label else ''}")
    with throwaway_database(admin) as dsn:
        tables = make_tables(dsn, 2)
        versions = ["2020-01-01-000000-s0", "2020-01-01-000000-s1"]
        with psycopg.connect(dsn, autocommit=True) as conn:
            for version, table in zip(versions, tables, strict=True):
                conn.execute("UPDATE chunk_registry.managed_tables SET chunk_version = %s "
                             "WHERE table_name = %s", (version, table))
                conn.execute(sql.SQL(
                    "INSERT INTO {} (id, doc_id, chunk_index, embedding_text, bm25_text, "
                    "embedding_token_count, bm25_token_count, chunk_version, ingest_run_id) "
                    "SELECT {} || i, 'doc-' || i, i, 't', 't', 1, 1, %s, %s "
                    "FROM generate_series(1, 1000) i").format(
                        sql.Identifier(table), sql.Literal(table)),
                    (versions[0], ingest_run_id_for(versions[0], "0" * 64)))
        settings = ProductionConfig(production=versions[0])
        count = [0]

        def measure(name: str, _cpus: list[int]) -> dict[str, Any]:
            i = count[0]
            count[0] += 1
            with psycopg.connect(dsn, autocommit=True) as conn:
                quiet = ReadLoop(dsn, pause=0.002, at_least=50)
                with quiet:
                    time.sleep(0.5)
                normal = sorted(quiet.latencies)[int(0.99 * len(quiet.latencies))]
                kind = old.Applier if name == "baseline" else Applier
                applier = kind(conn, settings, None, datetime.now(UTC), force=True)
                action = SwapProduction("public", "document_chunks", tables[(i + 1) % 2],
                                        tables[i % 2], versions[0])
                reading = threading.Event()
                holder = threading.Thread(target=hold_the_view, args=(dsn, hold, reading))
                with ReadLoop(dsn, pause=0.002, at_least=50) as readers:
                    holder.start()
                    reading.wait(10)
                    took, result = fair.timed(lambda: applier.run(action))
                    holder.join()
                    time.sleep(0.2)
            stalled = sum(max(0.0, x - normal) for x in readers.latencies)
            return {"seconds": stalled, "units": 1, "swap_s": round(took, 2),
                    "outcome": result.outcome, "attempts": result.attempts}

        # The first swap creates the view; the raced ones re-point it.
        with psycopg.connect(dsn, autocommit=True) as conn:
            first = Applier(conn, settings, None, datetime.now(UTC), force=True).run(
                SwapProduction("public", "document_chunks", None, tables[1], versions[0]))
            assert first.outcome == "applied", first.error
        results = fair.race(["baseline", "now"], measure, repetitions, {"server": []})
        for figures in results["server"].values():
            print(f"{figures.name}: readers stalled median {figures.median * 1000:.0f} ms "
                  f"({', '.join(f'{s * 1000:.0f}' for s in figures.seconds)} ms), last swap "
                  f"{figures.extra['outcome']} in {figures.extra['swap_s']}s, "
                  f"{figures.extra['attempts']} attempts")


def config_yaml(i: int) -> tuple[str, str]:
    version = f"2026-01-{1 + i // 3600:02d}-{(i // 60) % 60:02d}{i % 60:02d}00-v1"
    return version, (
        f"schema_version: 1\nchunk_version: {version}\nchunk_size: {100 + i % 370}\n"
        "overlap_ratio: 0.1\njaccard_threshold: 0.8\nprefix_policy: A\n"
        "embedder_name: BAAI/bge-large-en-v1.5\nembedder_max_tokens: 512\n"
        "tokenizer_name: BAAI/bge-large-en-v1.5\n"
        f"tokenizer_hash: sha256:{i:064x}\ncreated_at: '2026-01-01T00:00:00Z'\n"
        "created_by: Bench <bench@example.com>\nbaseline_metrics: {oracle_hit_rate: 0.47}\n")


def make_history(repo: Path, count: int) -> None:
    """`count` configs on main, one squash-merged `(#N)` commit and one annotated tag each, and
    a branch `pr` locking one more (built by one `git fast-import`)."""
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    stream: list[bytes] = []
    when = 1_700_000_000

    def data(text: str) -> None:
        raw = text.encode()
        stream.append(b"data %d\n" % len(raw) + raw + b"\n")

    def commit(branch: str, mark: int, subject: str, path: str, body: str) -> None:
        nonlocal when
        when += 1
        stream.append(f"commit refs/heads/{branch}\nmark :{mark}\n"
                      f"committer Bench <bench@example.com> {when} +0000\n".encode())
        data(subject)
        if mark > 1:
            stream.append(f"from :{mark - 1}\n".encode())
        stream.append(f"M 100644 inline {path}\n".encode())
        data(body)

    commit("main", 1, "Start the registry (#1)", "configs/production.yaml", "production: null\n")
    for i in range(count):
        version, body = config_yaml(i)
        commit("main", i + 2, f"Lock {version} (#{i + 2})", f"configs/{version}.yaml", body)
        stream.append(f"tag chunk-config/{version}\nfrom :{i + 2}\n"
                      f"tagger Bench <bench@example.com> {when} +0000\n".encode())
        data(f"lock {version}")
    version, body = config_yaml(count)
    commit("pr", count + 2, f"Lock {version}", f"configs/{version}.yaml", body)
    subprocess.run(["git", "-C", str(repo), "fast-import", "--quiet"], input=b"".join(stream),
                   check=True)
    subprocess.run(["git", "-C", str(repo), "checkout", "-q", "main"], check=True)


def bench_cli(sizes: list[int], repetitions: int, label: str, commit: str) -> None:
    print(f"\n## 3. validate and offline plan without the parse cache, median of {repetitions} "
          f"alternated rounds{' [' + label + ']' if label else ''}")
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        baseline = Path(tmp) / "baseline"
        baseline.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "registry",
                                  "schemas"], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(baseline)], input=archive, check=True)
        for code in (baseline, ROOT):
            found = subprocess.run(
                [sys.executable, "-c", "import registry; print(registry.__file__)"],
                env={**os.environ, "PYTHONPATH": str(code)}, cwd=tmp, check=True,
                capture_output=True, text=True).stdout.strip()
            if not found.startswith(str(code)):
                raise RuntimeError(f"the code under {code} is not the one run: {found}")
        per_config: dict[str, dict[int, float]] = {}
        for size in sizes:
            repo = Path(tmp) / f"r{size}"
            make_history(repo, size)
            commands = {"validate": ["validate", "--repo", str(repo)],
                        "plan": ["plan", "--repo", str(repo), "--base", "main", "--head", "pr"]}

            def measure(name: str, cpus: list[int], repo: Path = repo,
                        commands: dict[str, list[str]] = commands,
                        size: int = size) -> dict[str, Any]:
                which, command = name.split(" ", 1)
                # Started outside the checkout: `python -m` puts the working directory first
                # on sys.path, so from the repository root the baseline ran today's code.
                env = {**os.environ, "HF_HUB_OFFLINE": "1",
                       "PYTHONPATH": str(baseline if which == "baseline" else ROOT)}
                shutil.rmtree(repo / ".git" / "chunk-registry", ignore_errors=True)
                started = time.perf_counter()
                proc = subprocess.run([sys.executable, "-m", "registry", *commands[command]],
                                      env=env, capture_output=True, text=True, cwd=tmp,
                                      preexec_fn=lambda: os.sched_setaffinity(0, cpus))
                seconds = time.perf_counter() - started
                if proc.returncode != 0:
                    raise RuntimeError(f"{name} exited {proc.returncode}: {proc.stderr[-300:]}")
                return {"seconds": seconds, "units": size}

            names = ["baseline validate", "now validate", "baseline plan", "now plan"]
            results = fair.race(names, measure, repetitions, {"cores": fair.cpus()})
            for figures in results["cores"].values():
                print(f"{size:>6} configs {figures.name}: median {figures.median:.2f} s "
                      f"({figures.spread()}), {figures.median / size * 1000:.2f} ms per config "
                      "[cold: no parse cache]", flush=True)
                per_config.setdefault(figures.name, {})[size] = figures.median / size
    print(growth_lines(per_config))


def growth_lines(per_config: dict[str, dict[int, float]]) -> str:
    """Per competitor: ms per config at each size, and its growth against the smallest size
    and against the size before (1.00x is linear; the fixed start-up cost makes small sizes
    dearer, so the step from the size before shows a cliff first)."""
    lines = ["growth of the time per config (cold), against the smallest size / the size "
             "before:"]
    for name, by_size in per_config.items():
        sizes = sorted(by_size)
        first = by_size[sizes[0]]
        steps = ", ".join(
            f"{size}: {by_size[size] * 1000:.2f} ms ({by_size[size] / first:.2f}x"
            f" / {by_size[size] / by_size[sizes[max(i - 1, 0)]]:.2f}x)"
            for i, size in enumerate(sizes))
        lines.append(f"  {name}: {steps}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dsn", help="admin DSN (default: an embedded server, default settings)")
    parser.add_argument("--tables", default="1000,3000,10000")
    parser.add_argument("--baseline", default="5a40e1c", help="commit of the baseline code")
    parser.add_argument("--hold", type=float, default=3.0)
    parser.add_argument("--only", choices=["rows", "swap", "cli"])
    parser.add_argument("--configs", default="100,1000,3000,10000")
    fair.add_arguments(parser, repetitions=3)
    args = parser.parse_args(argv)
    print(fair.load_line("start"))
    label = fair.check_quiet(args.allow_busy, args.max_load)
    if args.only in (None, "cli"):
        bench_cli([int(n) for n in args.configs.split(",")], args.repetitions, label,
                  args.baseline)
    if args.only == "cli":
        print(fair.load_line("end"))
        return
    with contextlib.ExitStack() as stack:
        admin = args.dsn or stack.enter_context(embedded_server())
        if args.only in (None, "rows"):
            bench_rows(admin, [int(n) for n in args.tables.split(",")], args.repetitions,
                       label, args.baseline)
        if args.only in (None, "swap"):
            bench_swap(admin, args.repetitions, label, args.baseline, args.hold)
    print(fair.load_line("end"))


if __name__ == "__main__":
    main()
