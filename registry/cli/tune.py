"""`registry tune`: the search, its progress line by line, and the report (the Pareto front)."""

from __future__ import annotations

import contextlib
import shlex
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from registry.cli.output import (
    PR_HELP,
    CasesOpt,
    DsnOpt,
    FormatOpt,
    RefOpt,
    RepoOpt,
    emit_json,
    print_proposal,
    print_table,
    say,
    usage,
)

METRIC_COLUMNS = (("oracle_hit_rate", "ORACLE", "{:.3f}"), ("filter_hit_rate", "FILTER", "{:.3f}"),
                  ("rows", "ROWS", "{:,.0f}"), ("index_bytes", "MB", "{:.2f}"),
                  ("p50_latency_ms", "P50 MS", "{:.2f}"))


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM ends the run like Ctrl-C: the scratch schema is dropped on the way out."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _cell(trial: Any, key: str, pattern: str) -> str:
    value = trial.metrics.get(key)
    if value is None:
        return "-"
    return pattern.format(value / 1e6 if key == "index_bytes" else value)


def _trial_row(trial: Any) -> list[str]:
    state = trial.state
    if "identical_to" in trial.details:
        state = f"= #{trial.details['identical_to']}"
    return [f"#{trial.number}", str(trial.params["chunk_size"]),
            f"{trial.params['overlap_ratio']:.2f}", f"{trial.params['jaccard_threshold']:.2f}",
            trial.params["prefix_policy"], *(_cell(trial, k, p) for k, _, p in METRIC_COLUMNS),
            f"{trial.seconds:.2f}", state]


HEADERS = ["TRIAL", "chunk_size", "overlap", "jaccard", "prefix",
           *(title for _, title, _ in METRIC_COLUMNS), "SECONDS", "STATE"]


def tune(
    source: Annotated[Path, typer.Option("--source", help="Corpus: a directory of .md/.txt "
                                         "files or a JSONL file (a representative sample).")],
    cases: CasesOpt = None,
    trials: Annotated[int, typer.Option("--trials", min=1, max=10_000,
                                        help="Trials to run.")] = 30,
    chunk_size: Annotated[str | None, typer.Option(
        "--chunk-size", help="LOW:HIGH tokens (default 200:600, cut to the token budget).")
    ] = None,
    overlap: Annotated[str | None, typer.Option(
        "--overlap", help="LOW:HIGH overlap ratio (default 0:0.2).")] = None,
    jaccard: Annotated[str | None, typer.Option(
        "--jaccard", help="LOW:HIGH Jaccard threshold (default 0.6:0.95).")] = None,
    prefix_policy: Annotated[str | None, typer.Option(
        "--prefix-policy", help="Policies to try: A, B or A,B (default).")] = None,
    space: Annotated[Path | None, typer.Option(
        "--space", help="YAML/JSON file of the ranges (options given win).")] = None,
    timeout: Annotated[float | None, typer.Option(
        "--timeout", min=0, help="Start no trial after this many seconds.")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Sampler seed (repeatable runs).")
                    ] = None,
    objectives: Annotated[str, typer.Option(
        "--objectives", help="Comma-separated: oracle_hit_rate, filter_hit_rate, index_bytes, "
        "rows, p50_latency_ms, p95_latency_ms.")
    ] = "oracle_hit_rate,filter_hit_rate,index_bytes,p50_latency_ms",
    prefer: Annotated[str | None, typer.Option(
        "--prefer", help="The objective that picks the best trial of the Pareto front "
        "(default: the first objective).")] = None,
    dedup: Annotated[Literal["document", "corpus"], typer.Option(
        "--dedup", help="Near-duplicate scope, as `registry ingest --dedup`.")] = "document",
    base: Annotated[str | None, typer.Option(
        "--base", help="The config whose embedder and tokenizer the trials keep (default: "
        "production, else the newest config).")] = None,
    tokenizer_file: Annotated[Path | None, typer.Option(
        "--tokenizer-file", help="tokenizer.json of the base config (else pinned or cache).")
    ] = None,
    embedder: Annotated[str, typer.Option(
        help="Embedder name when the registry holds no config yet.")] = "BAAI/bge-large-en-v1.5",
    embedder_max_tokens: Annotated[int, typer.Option(
        min=1, help="The embedder's maximum input tokens (no config yet).")] = 512,
    lock_best: Annotated[bool, typer.Option(
        "--lock-best", help="Lock the chosen trial's config (branch lock/<version>) with its "
        "metrics as baseline_metrics.")] = False,
    pr: Annotated[bool, typer.Option("--pr", help=f"With --lock-best: {PR_HELP}")] = False,
    repo: RepoOpt = Path("."),
    ref: RefOpt = None,
    dsn: DsnOpt = None,
    fmt: FormatOpt = "text",
) -> None:
    """Search chunk_size, overlap, Jaccard threshold and prefix policy against eval cases:
    Optuna TPE, each trial in a scratch schema (always dropped), the corpus tokenized once."""
    from registry.extras import require

    require("optuna", "registry tune")  # first: the tune extra brings numpy as well
    from registry.commands.tune import tune as run

    if cases is None:
        raise usage("--cases FILE is required")
    if pr and not lock_best:
        raise usage("--pr opens the pull request of --lock-best: pass both")
    text = fmt == "text"

    def started(result: Any) -> None:
        for removed in result.swept:
            say(f"removed the scratch schema {removed} of a run that is gone")
        for kept in result.sweep_kept:
            say(f"could not remove the scratch schema {kept}")
        say(f"tuning run {result.run_id}: {result.documents} documents, {result.tokens:,} "
            f"tokens, tokenized once in {result.encode_seconds:.2f} s; {result.cases} cases "
            f"({result.subset} in the first stage); scratch schema {result.scratch_schema}")
        for note in result.notes:
            say(f"note: {note}")
        say("  ".join(HEADERS))

    def progress(trial: Any) -> None:
        say("  ".join(_trial_row(trial)))

    with _sigterm_interrupts():
        result = run(
            repo, source=source, cases=cases, dsn=dsn, ref=ref, base=base,
            tokenizer_file=tokenizer_file, embedder=embedder,
            embedder_max_tokens=embedder_max_tokens, trials=trials, chunk_size=chunk_size,
            overlap=overlap, jaccard=jaccard, prefix_policy=prefix_policy, space_file=space,
            timeout=timeout, seed=seed,
            objectives=tuple(o.strip() for o in objectives.split(",") if o.strip()),
            prefer=prefer, dedup=dedup, lock_best=lock_best, pr=pr,
            on_start=started if text else None, on_trial=progress if text else None)
    if not text:
        emit_json(result.to_dict())
        return
    front = result.front()
    say(f"\nPareto front ({len(front)} of {len(result.trials)} trials; objectives "
        f"{', '.join(result.settings.objectives)}):")
    print_table(HEADERS, [_trial_row(t) for t in front])
    pruned = sum(1 for t in result.trials if t.state == "pruned")
    twins = sum(1 for t in result.trials if "identical_to" in t.details)
    timing = result.timing()
    say(f"{pruned} pruned, {twins} identical to an earlier trial; {result.seconds:.1f} s in all")
    if "later_build_median_s" in timing:
        say(f"build per trial: first {timing['first_build_s']:.3f} s (with the tokenization), "
            f"then a median {timing['later_build_median_s']:.3f} s")
    if result.best is None:
        say("no trial completed")
        return
    say(f"best (prefer {result.settings.prefer}): trial #{result.best.number} "
        f"{result.best.label}")
    if result.locked:
        locked = result.locked
        say(f"Locked {locked['chunk_version']} on branch {locked['branch']} with "
            f"baseline_metrics {locked['baseline_metrics']}")
        if locked["pull_request"] is not None:
            from registry.repository.github import Proposal

            print_proposal(Proposal(locked["branch"], "main", locked["pull_request"]["url"],
                                    locked["pull_request"]["number"],
                                    locked["pull_request"]["created"]))
        else:
            say(f"Next: git push origin {locked['branch']}, then open a pull request and "
                "merge it.")
    elif result.lock_command is not None:
        say(f"lock it: {shlex.join(result.lock_command)} (or rerun with --lock-best)")
    else:
        say("lock it: rerun with --lock-best (this base's embedder pin cannot be written as "
            "`registry lock` options)")
