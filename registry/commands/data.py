"""`registry ingest`: fill one locked config's table from a corpus."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from registry.database.connection import resolve_dsn
from registry.ingest import pipeline
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
) -> pipeline.IngestReport:
    """The locked config as committed on the main branch (or `ref`), ingested into its table
    on the database in force."""
    state = committed_state(Git(repo), ref)
    return pipeline.ingest(state, version, source, resolve_dsn(dsn).value,
                           tokenizer_file=tokenizer_file, dedup=dedup, workers=workers,
                           strict=strict, max_document_bytes=max_document_bytes,
                           on_progress=on_progress, on_problem=on_problem)
