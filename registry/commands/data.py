"""The data path's commands: `ingest` (one locked config's table from a corpus) and
`reconcile --source` (reconcile, ingest every table never ingested, reconcile again)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registry.commands.reconcile import reconcile_with
from registry.database.connection import resolve_dsn, session
from registry.ingest import pipeline
from registry.reconciler.run import RunResult
from registry.repository.git import Git
from registry.repository.state import committed_state


def ingest(
    repo: Path | str,
    version: str,
    source: Path,
    *,
    dsn: str | None = None,
    ref: str | None = None,
    tokenizer_file: Path | None = None,
    dedup: pipeline.DedupMode = "document",
    workers: int | None = None,
    strict: bool = False,
    max_document_bytes: int = pipeline.MAX_DOCUMENT_BYTES,
    on_progress: Callable[[pipeline.Progress], None] | None = None,
    on_problem: Callable[[pipeline.SourceProblem], None] | None = None,
    into_production: bool = False,
    max_change: float | None = None,
    embedder_model: Path | None = None,
    embedder_tokenizer: Path | None = None,
) -> pipeline.IngestReport:
    """The locked config as committed on the main branch (or `ref`), ingested into its table
    on the database in force."""
    state = committed_state(Git(repo), ref)
    return pipeline.ingest(state, version, source, resolve_dsn(dsn).value,
                           tokenizer_file=tokenizer_file, dedup=dedup, workers=workers,
                           strict=strict, max_document_bytes=max_document_bytes,
                           on_progress=on_progress, on_problem=on_problem,
                           into_production=into_production, max_change=max_change,
                           embedder_model=embedder_model, embedder_tokenizer=embedder_tokenizer)


@dataclass
class ReconcileAndIngest:
    """`reconcile --source`: the run that counts (the second one when the ingests let a
    refused swap go ahead) and the ingests in between."""

    result: RunResult
    ingests: list[pipeline.IngestReport] = field(default_factory=list)


def reconcile_and_ingest(
    repo: Path, source: Path, *, tokenizer_files: list[Path],
    dedup: pipeline.DedupMode = "document", workers: int | None = None,
    on_progress: Callable[[pipeline.Progress], None] | None = None,
    on_problem: Callable[[pipeline.SourceProblem], None] | None = None,
    **options: Any,
) -> ReconcileAndIngest:
    """Reconcile, ingest `source` into every shadow table with no successful ingest, and
    reconcile again when the first run was refused (e.g. a swap that waited for rows)."""
    git = Git(repo)
    outcome = ReconcileAndIngest(reconcile_with(git, **options))
    if outcome.result.outcome == "failed":
        return outcome
    state = committed_state(git, options.get("ref"))
    resolved = resolve_dsn(options.get("dsn"))
    with session(resolved.value, purpose="ingest pending") as conn:
        outcome.ingests = pipeline.ingest_pending(
            state, conn, source, resolved.value, tokenizer_files=tokenizer_files, dedup=dedup,
            workers=workers, on_progress=on_progress, on_problem=on_problem)
    if outcome.ingests and outcome.result.outcome == "refused":
        outcome.result = reconcile_with(git, **options)
    return outcome
