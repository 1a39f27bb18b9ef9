"""The reconciler's commands: plan, reconcile, status, and `db` (the database in use)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from registry.cli.output import (
    DedupOpt,
    DsnOpt,
    EngineOpt,
    EnvironmentOpt,
    FetchOpt,
    FormatOpt,
    RayAddressOpt,
    RefOpt,
    RepoOpt,
    WorkersOpt,
    emit_json,
    ingest_feedback,
    print_ingest,
    print_table,
    say,
    until_signalled,
    usage,
)
from registry.errors import PLAN_PENDING, Refused

PlanFormat = Literal["text", "json", "markdown"]


def plan(
    repo: RepoOpt = Path("."),
    ref: RefOpt = None,
    dsn: DsnOpt = None,
    fmt: Annotated[PlanFormat, typer.Option("--format", help="Output format.")] = "text",
    detailed_exitcode: Annotated[
        bool,
        typer.Option("--detailed-exitcode", help="Exit 0 in sync, 17 changes pending (an "
                     "error keeps its own code)."),
    ] = False,
    base: Annotated[
        str | None, typer.Option("--base", help="Offline: the ref a PR merges into (no database).")
    ] = None,
    head: Annotated[
        str | None, typer.Option("--head", help="Offline: the ref being merged (with --base).")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Plan as `reconcile --force` would.")
    ] = False,
    fetch: FetchOpt = True,
    environment: EnvironmentOpt = None,
) -> None:
    """What reconcile would change in PostgreSQL (or, with --base/--head, what merging would)."""
    from registry.commands import reconcile as commands
    from registry.reconciler.render import render_plan

    if (base is None) != (head is None):
        raise usage("--base and --head go together")
    if base is not None and head is not None:
        result = commands.offline_plan(repo, base, head, environment)
    else:
        result = commands.plan(repo, ref=ref, dsn=dsn, fetch=fetch, force=force,
                               environment=environment)
    if fmt == "json":
        emit_json(result.to_dict())
    else:
        sys.stdout.write(render_plan(result, fmt))
    if base is not None and result.blocking:
        first = result.blocking[0]
        raise Refused(f"merging {head} into {base}: {first.message}", fix=first.fix)
    if detailed_exitcode and not result.in_sync:
        raise typer.Exit(PLAN_PENDING)


def reconcile(
    repo: RepoOpt = Path("."),
    ref: RefOpt = None,
    dsn: DsnOpt = None,
    force: Annotated[
        bool, typer.Option("--force", help="Allow swapping production to an empty table, or over a "
                           "view the registry did not create.")
    ] = False,
    watch: Annotated[
        bool, typer.Option("--watch", help="Keep reconciling every --interval until stopped.")
    ] = False,
    interval: Annotated[
        float, typer.Option("--interval", help="Seconds between runs with --watch.", min=0.1)
    ] = 60.0,
    lock_timeout: Annotated[
        int, typer.Option("--lock-timeout", help="Milliseconds the view swap may wait for readers "
                          "before it retries.", min=1)
    ] = 500,
    wait_lock: Annotated[
        float, typer.Option("--wait-lock", help="Wait up to SECONDS for another reconciler to "
                            "finish instead of exiting 4.", min=0)
    ] = 0.0,
    require_signed: Annotated[
        bool, typer.Option("--require-signed", help="Apply only a commit (or annotated tag) "
                           "whose SSH signature verifies against the allowed signers.")
    ] = False,
    allowed_signers: Annotated[
        Path | None, typer.Option("--allowed-signers", help="With --require-signed: the "
                                  "ssh-keygen allowed_signers file (default: git config "
                                  "gpg.ssh.allowedSignersFile).")
    ] = None,
    fetch: FetchOpt = True,
    fmt: FormatOpt = "text",
    source: Annotated[
        Path | None, typer.Option("--source", help="Then ingest this corpus into every shadow "
                                  "table that has no successful ingest yet (see `ingest`).")
    ] = None,
    tokenizer_file: Annotated[
        list[Path] | None, typer.Option(help="With --source: tokenizer.json files to pick from "
                                        "by hash (repeatable; default: the HF cache).")
    ] = None,
    dedup: DedupOpt = "document",
    workers: WorkersOpt = None,
    environment: EnvironmentOpt = None,
    engine: EngineOpt = "builtin",
    ray_address: RayAddressOpt = None,
) -> None:
    """Make PostgreSQL match the repo: create shadow tables, swap production, retire, drop."""
    from registry.commands import reconcile as commands

    options: dict[str, Any] = {"ref": ref, "dsn": dsn, "force": force, "fetch": fetch,
                               "lock_timeout_ms": lock_timeout, "wait_lock": wait_lock,
                               "require_signed": require_signed,
                               "allowed_signers": allowed_signers, "environment": environment}
    if source is None and (engine != "builtin" or ray_address):
        raise usage("--engine and --ray-address go with --source (they choose how it ingests)")
    if ray_address and engine != "ray":
        raise usage("--ray-address goes with --engine ray")
    if watch:
        if source is not None:
            raise usage("--source does not go with --watch (ingests are long; run them apart)")
        _watch(repo, interval, options)
        return
    logging.getLogger("registry").setLevel(logging.ERROR)
    reports: list[Any] = []
    if source is None:
        result = commands.reconcile(repo, **options)
    else:
        from registry.commands import data  # numpy: only with --source

        with ingest_feedback(quiet=fmt == "json") as (on_progress, on_problem):
            both = data.reconcile_and_ingest(
                repo, source, tokenizer_files=tokenizer_file or [], dedup=dedup,
                workers=workers, engine=engine, ray_address=ray_address,
                on_progress=on_progress, on_problem=on_problem, **options)
        result, reports = both.result, both.ingests
    if fmt == "json":
        shown = result.to_dict()
        if source is not None:
            shown["ingests"] = [r.to_dict() for r in reports]
        emit_json(shown)
    else:
        _render_run(result)
        for report in reports:
            print_ingest(report)
        if source is not None and not reports:
            say("Every shadow table already has a successful ingest.")
    result.raise_for_outcome()


def _render_run(result: Any) -> None:
    from registry.reconciler.render import render_plan, summary

    run = f"run #{result.run_id}" if result.run_id else "run"
    if result.outcome == "noop":
        say(f"In sync: {result.plan.ref} ({(result.plan.commit or '')[:10]}) matches "
            f"{result.plan.target} ({run}).")
        for finding in result.plan.findings:
            say(f"  ! {finding.render()}")
        _render_served(result.served)
        return
    sys.stdout.write(render_plan(result.plan))
    for item in result.results:
        tries = f" after {item.attempts} attempts" if item.attempts > 1 else ""
        detail = f": {item.error}" if item.error else ""
        say(f"{item.outcome}{tries}: {item.action.describe()}{detail}")
    say(f"Reconcile {run}: {result.outcome} ({summary(result.plan)}).")
    _render_served(result.served)


def _render_served(served: Any) -> None:
    """What applications read now, when it changed (an experiment started or ended counts)."""
    if served is None:
        return
    if served.changed:
        experiment = served.state.get("experiment")
        routed = (f"; experiment {experiment['name']}: {experiment['share']:g} of keys read "
                  f"{experiment['candidate']['table']}" if experiment else "")
        production = (served.state.get("production") or {}).get("table") or "nothing"
        say(f"Served state version {served.version}: {production}{routed}.")
    for note in served.notes:
        say(f"  ! {note}")

def _watch(repo: Path, interval: float, options: dict[str, Any]) -> None:
    """Reconcile until SIGINT/SIGTERM; one log line per run, outages logged with backoff."""
    from registry.commands import reconcile as commands
    from registry.reconciler.render import summary

    log, stop = until_signalled("registry.watch")

    def on_result(result: Any) -> None:
        commit = (result.plan.commit or "")[:10]
        log.info("reconciled %s (%s): %s, %s", result.plan.ref, commit, result.outcome,
                 summary(result.plan))
        for item in result.failed:
            log.warning("failed: %s: %s", item.action.describe(), item.error)
        for finding in result.plan.blocking:
            log.warning("blocked: %s", finding.render())

    log.info("watching %s every %gs", options.get("ref") or "the main branch", interval)
    runs = commands.watch(repo, stop=stop, interval=interval, on_result=on_result, **options)
    log.info("stopped after %d runs", runs)


def status(
    repo: RepoOpt = Path("."),
    ref: RefOpt = None,
    dsn: DsnOpt = None,
    fetch: FetchOpt = True,
    fmt: FormatOpt = "text",
    exact: Annotated[
        bool, typer.Option("--exact", help="Count every table's rows (reads every row) instead "
                           "of the catalog's estimates.")
    ] = False,
    environment: EnvironmentOpt = None,
) -> None:
    """Every config and its table: rows, sync status, production, last reconcile that touched it."""
    from registry.commands import reconcile as commands

    report = commands.status(repo, ref=ref, dsn=dsn, fetch=fetch, exact=exact,
                             environment=environment)
    if fmt == "json":
        emit_json(report.to_dict())
        return
    last = report.last_run
    if last:
        say(f"Last reconcile: #{last['id']} {last['outcome']} at {last['finished_at'] or '-'} "
            f"({last['git_ref']} {(last['git_commit'] or '')[:10]}, {last['actor']})")
    else:
        say("Last reconcile: never")
    print_table(
        ["", "VERSION", "PARAMS", "TABLE", "ROWS", "STATUS", "LAST RUN"],
        [["*" if r.production else ("+" if r.desired_production else ""), r.chunk_version,
          r.params or "(retired)", r.table,
          "-" if r.rows is None else ("~" if r.rows_estimated else "") + str(r.rows), r.status,
          f"#{r.last_run} {(r.last_run_commit or '')[:10]}" if r.last_run else "-"]
         for r in report.rows],
    )
    for row in report.rows:
        if row.note:
            say(f"{row.chunk_version}: {row.note}")
    others = [f for f in report.plan.findings if f.kind == "unmanaged"]
    for finding in others:
        say(f"! {finding.render()}")
    say("* production now, + production in the repo but not yet served"
        + ("" if report.exact else "; ~ rows estimated from the catalog (--exact counts them)"))


def environments_command(
    repo: RepoOpt = Path("."),
    ref: RefOpt = None,
    fetch: FetchOpt = True,
    fmt: FormatOpt = "text",
    names: Annotated[
        bool, typer.Option("--names", help="Only the names, one a line (for a shell loop).")
    ] = False,
) -> None:
    """The declared environments in promotion order: what each serves, its tables, identity,
    DSN variable and promotion path (`--format json` feeds a CI matrix: one reconcile each)."""
    from registry.commands import reconcile as commands

    rows = commands.environment_rows(repo, ref=ref, fetch=fetch)
    if names:
        for row in rows:
            say(str(row["name"]))
        return
    if fmt == "json":
        emit_json(rows)
        return
    print_table(
        ["ENVIRONMENT", "SERVES", "TABLES", "REGISTRY", "DSN FROM", "PROMOTED FROM"],
        [[str(r["name"]), str(r["serves"] or "-"), str(r["tables"]), str(r["registry"]),
          str(r["dsn_env"] or "REGISTRY_DSN"), _path_text(r["promotion"])] for r in rows])


def _path_text(promotion: Any) -> str:
    if not promotion:
        return "-"
    soak = int(promotion["soak"])
    hours = f"{soak // 3600}h" if soak % 3600 == 0 else f"{soak}s"
    healthy = ", healthy" if promotion["require_healthy"] else ""
    return f"{promotion['from']} after {hours}{healthy}"


db_app = typer.Typer(
    help="The database in use, and the embedded PostgreSQL.", no_args_is_help=True,
    rich_markup_mode=None,
)


@db_app.command("url")
def db_url(dsn: DsnOpt = None, fmt: FormatOpt = "text") -> None:
    """The DSN in use (password masked); starts the embedded server when it is the default."""
    from registry.commands import reconcile as commands

    resolved = commands.db_url(dsn)
    if fmt == "json":
        emit_json({"dsn": resolved.redacted, "source": resolved.source})
    else:
        say(resolved.redacted)


@db_app.command("stop")
def db_stop(fmt: FormatOpt = "text") -> None:
    """Stop the embedded PostgreSQL (REGISTRY_HOME); later commands start it again."""
    from registry.commands import reconcile as commands

    stopped, data = commands.db_stop()
    if fmt == "json":
        emit_json({"stopped": stopped, "data_dir": str(data)})
    elif stopped:
        say(f"stopped the embedded PostgreSQL in {data}")
    else:
        say(f"the embedded PostgreSQL in {data} is not running")
