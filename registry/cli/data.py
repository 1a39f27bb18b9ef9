"""`registry ingest`: fill a shadow table from a corpus."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from registry.cli.completion import complete_version
from registry.cli.output import (
    DedupOpt,
    DsnOpt,
    EngineOpt,
    EnvironmentOpt,
    FormatOpt,
    RayAddressOpt,
    RefOpt,
    RepoOpt,
    StrictOpt,
    WorkersOpt,
    emit_json,
    ingest_feedback,
    print_ingest,
)


def ingest(
    version: Annotated[str, typer.Argument(help="The chunk_version whose table to fill.",
                                           autocompletion=complete_version)],
    source: Annotated[
        Path, typer.Option("--source", help="A directory of .md/.txt files, or a JSONL file of "
                           '{"doc_id", "title"?, "text"} objects.')
    ],
    repo: RepoOpt = Path("."),
    ref: RefOpt = None,
    dsn: DsnOpt = None,
    dedup: DedupOpt = "document",
    workers: WorkersOpt = None,
    engine: EngineOpt = "builtin",
    ray_address: RayAddressOpt = None,
    tokenizer_file: Annotated[
        Path | None, typer.Option(help="tokenizer.json to use instead of the HF cache (its "
                                  "hash must equal the config's tokenizer_hash).")
    ] = None,
    strict: StrictOpt = False,
    max_document_mb: Annotated[
        float, typer.Option(help="Skip documents larger than this.", min=0.001)
    ] = 16.0,
    into_production: Annotated[
        bool, typer.Option("--into-production", help="Allow an ingest into a table readers are "
                           "served (production's, an experiment candidate's) or production "
                           "rolls back to: a document-level change in one "
                           "transaction, recorded in the run.")
    ] = False,
    max_change: Annotated[
        float | None, typer.Option("--max-change", min=0.0, max=1.0, help="With "
                                   "--into-production: refuse when more than this share of the "
                                   "documents would be removed or replaced (default 0.25).")
    ] = None,
    embedder_model: Annotated[
        Path | None, typer.Option(help="The .onnx file of the config's onnx embedder, when no "
                                  "installed model package has it (its hash must be the lock's).")
    ] = None,
    embedder_tokenizer: Annotated[
        Path | None, typer.Option(help="The onnx embedder's tokenizer.json, with --embedder-model.")
    ] = None,
    fmt: FormatOpt = "text",
    environment: EnvironmentOpt = None,
) -> None:
    """Chunk a corpus exactly as a locked config says and load it into that config's table
    (a table readers are served only with --into-production)."""
    from registry.commands import data

    with ingest_feedback(quiet=fmt == "json") as (on_progress, on_problem):
        report = data.ingest(repo, version, source, dsn=dsn, ref=ref, tokenizer_file=tokenizer_file,
                     dedup=dedup, workers=workers, strict=strict,
                     max_document_bytes=int(max_document_mb * 1024 * 1024),
                     on_progress=on_progress, on_problem=on_problem,
                     into_production=into_production, max_change=max_change,
                     environment=environment,
                     embedder_model=embedder_model, embedder_tokenizer=embedder_tokenizer,
                     engine=engine, ray_address=ray_address)
    if fmt == "json":
        emit_json(report.to_dict())
        return
    print_ingest(report)
