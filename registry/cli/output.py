"""What every command group of the CLI shares: the common options, plain-text and JSON
output, and the renderings two groups print (a change's next step, an ingest report, the
ingest progress)."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from registry.cli.completion import complete_version
from registry.errors import RegistryError, UsageError
from registry.secrets import scrub, scrub_log_handlers
from registry.timestamps import json_default

if TYPE_CHECKING:
    from registry.repository.github import Proposal

RepoOpt = Annotated[
    Path, typer.Option("--repo", help="Registry repository (default: the current directory).")
]


RefOpt = Annotated[
    str | None,
    typer.Option("--ref", help="Git ref to read (default: origin/main when there is a remote, "
                 "else main)."),
]


DataFormat = Literal["text", "json"]


FormatOpt = Annotated[DataFormat, typer.Option("--format", help="Output format.")]


PR_HELP = ("Push the branch and open a pull request (GITHUB_TOKEN or GH_TOKEN; without one, "
           "print the page that opens it).")


DsnOpt = Annotated[
    str | None,
    typer.Option("--dsn", help="PostgreSQL DSN (default: REGISTRY_DSN, then DATABASE_URL, else "
                 "the embedded server in REGISTRY_HOME; `embedded` asks for it by name, which "
                 "CI requires). A set but empty DSN is an error."),
]


EnvironmentOpt = Annotated[
    str | None,
    typer.Option("--environment", help="The environment to act on (configs/environments/<name>"
                 ".yaml, or production: configs/production.yaml, the default); its database is "
                 "the one its dsn_env names unless --dsn is given."),
]


FetchOpt = Annotated[
    bool, typer.Option("--fetch/--no-fetch", help="git fetch origin before reading origin/main.")
]


PushOpt = Annotated[bool, typer.Option("--push", help="Push the branch to origin.")]


PrOpt = Annotated[bool, typer.Option("--pr", help=PR_HELP)]


DedupOpt = Annotated[
    Literal["document", "corpus"],
    typer.Option("--dedup", help="Near-duplicates within each document, or across the corpus "
                 "(MinHash LSH, verified exactly)."),
]


WorkersOpt = Annotated[
    int | None, typer.Option("--workers", min=1, help="Chunking processes (default: CPU count).")
]


EngineOpt = Annotated[
    Literal["builtin", "ray"],
    typer.Option("--engine", help="builtin: processes on this machine; ray: Ray actors "
                 "and tasks (a local Ray, or the cluster at --ray-address; extra `ray`)."),
]


RayAddressOpt = Annotated[
    str | None, typer.Option("--ray-address", help="With --engine ray: join this cluster "
                             "(host:6379, or ray://host:10001) instead of starting a local Ray.")
]


StrictOpt = Annotated[
    bool, typer.Option("--strict", help="Fail the run (writing nothing) at the first bad "
                       "document instead of skipping it.")
]


VersionArg = Annotated[
    str, typer.Argument(help="A chunk_version, or `production`.", autocompletion=complete_version)
]


CasesOpt = Annotated[
    Path | None,
    typer.Option("--cases", help="JSONL (or JSON array) of {query_id, query, gt_answer}."),
]


def say(text: str = "") -> None:
    sys.stdout.write(scrub(text) + "\n")


def emit_json(data: Any) -> None:
    """The `--format json` output: its shape is registry/output_schemas/<name>.json."""
    say(json.dumps(data, indent=2, default=json_default))


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    """Columns padded to their widest cell, like `kubectl get`. Plain text on purpose: rich's
    Table takes ~1 ms a row, 1.7 s for a registry of 1,500 configs."""
    widths = [max([len(header), *(len(row[i]) for row in rows)])
              for i, header in enumerate(headers)]
    say("\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
                     .rstrip() for row in [headers, *rows]))


def usage(message: str) -> RegistryError:
    return UsageError(message)


def proposal_dict(proposal: Proposal | None) -> dict[str, Any] | None:
    if proposal is None:
        return None
    return {"number": proposal.number, "url": proposal.url, "created": proposal.created}


def print_proposal(proposal: Proposal) -> None:
    if proposal.number is None:
        say(f"Next: open the pull request at {proposal.url}")
        say("  (set GITHUB_TOKEN or GH_TOKEN to have `--pr` open it for you)")
    elif proposal.created:
        say(f"Opened pull request #{proposal.number}: {proposal.url}")
    else:
        say(f"Pull request #{proposal.number} is already open: {proposal.url}")


def print_next_step(branch: str, pushed: bool, proposal: Any) -> None:
    """What the user does next with a change branch: the PR that was opened, or how to open one."""
    if proposal is not None:
        print_proposal(proposal)
    elif pushed:
        say(f"Next: open a pull request from {branch} and merge it.")
    else:
        say(f"Next: git push origin {branch}, then open a pull request and merge it.")


def print_ingest(report: Any) -> None:
    say(f"Ingested {report.chunk_version} into {report.table}: {report.chunks} chunks from "
        f"{report.documents} documents ({report.bytes / 1e6:.1f} MB in {report.seconds:.1f}s, "
        f"{report.mb_per_s:.2f} MB/s, run #{report.run})")
    say(f"  {report.duplicates_removed} near-duplicates removed ({report.dedup}), "
        f"{report.too_small} tiny chunks dropped, {report.over_budget} over budget, "
        f"{report.skipped} documents skipped, {report.replaced_rows} previous rows replaced")
    if report.embedder_fingerprint:
        say(f"  vectors: {report.vectors_computed} computed, {report.vectors_reused} reused from "
            f"the embedding cache ({report.embed_seconds:.1f}s in the model)")
    if report.ray:
        ray = report.ray
        say(f"  on Ray ({ray['nodes']} node{'s' if ray['nodes'] != 1 else ''} at "
            f"{ray['address']}, {ray['cpus']} CPUs, {ray['gpus']} GPUs): "
            f"{len(ray.get('shards', []))} shards staged in chunk_registry.{ray['staging']}, "
            "moved in one transaction")
    if report.into_production:
        say(f"  into production: {report.documents_added} documents added, "
            f"{report.documents_changed} changed, {report.documents_removed} removed, "
            f"{report.documents_unchanged} unchanged; evaluations before this ingest are "
            "stale (run `registry eval`)")
    for entry in report.accounted[:10]:
        into = f" (into {', '.join(entry['into'][:3])})" if entry.get("into") else ""
        say(f"  not ingested: {entry['doc']}: {entry['outcome']}{into}: {entry['reason']}")
    if report.not_ingested > 10:
        say(f"  ... {report.not_ingested - 10} more not ingested, named in the run record's "
            "details.accounted")


@contextlib.contextmanager
def ingest_feedback(quiet: bool) -> Iterator[tuple[Any, Any]]:
    """Progress and skipped documents on stderr: a rich bar on a TTY, else a line every 5 s."""
    def on_problem(problem: Any) -> None:
        sys.stderr.write(f"warning: skipped {problem.render()}\n")

    if quiet:
        yield None, on_problem
        return
    if sys.stderr.isatty():
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        bar = Progress(TextColumn("{task.description}"), BarColumn(),
                       TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                       console=Console(stderr=True), transient=True)
        task = bar.add_task("ingest", total=None, info="")

        def on_progress(state: Any) -> None:
            bar.update(task, total=state.total_bytes, completed=state.bytes,
                       info=f"{state.documents} docs, {state.chunks} chunks, "
                       + (f"{state.vectors} vectors, " if state.vectors else "")
                       + f"{state.mb_per_s:.2f} MB/s")

        def on_problem_tty(problem: Any) -> None:
            bar.console.print(f"warning: skipped {problem.render()}", markup=False,
                              highlight=False)

        with bar:
            yield on_progress, on_problem_tty
        return
    last = {"at": 0.0}

    def on_progress_plain(state: Any) -> None:
        if time.monotonic() - last["at"] >= 5.0:
            last["at"] = time.monotonic()
            total = f" of {state.total_bytes / 1e6:.1f}" if state.total_bytes else ""
            vectors = f", {state.vectors} vectors" if state.vectors else ""
            sys.stderr.write(f"ingest: {state.bytes / 1e6:.1f}{total} MB, {state.documents} "
                             f"documents, {state.chunks} chunks{vectors}, "
                             f"{state.mb_per_s:.2f} MB/s\n")

    yield on_progress_plain, on_problem


def until_signalled(logger: str) -> tuple[logging.Logger, threading.Event]:
    """For a loop that runs until SIGINT/SIGTERM: timestamped log lines on stderr, and the
    event the signals set (logged)."""
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(message)s", datefmt="%Y-%m-%dT%H:%M:%S%z")
    scrub_log_handlers()
    log = logging.getLogger(logger)
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    return log, stop
