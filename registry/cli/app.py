"""`registry`: the typer app, its root options and the error funnel.

The commands live in one module per group (registry_repo, changes, reconcile, data, quality);
each parses, calls the command layer (`registry.commands`, imported inside the command so
`registry --help` stays fast) and renders. Every RegistryError becomes one red line and its
exit code; anything else is a bug: "unexpected error" and exit 3 (traceback only with --debug).
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from registry.cli import changes, data, quality, reconcile, registry_repo, tune
from registry.cli.experiment import experiment_app
from registry.cli.notify import notify_app
from registry.cli.output import say
from registry.errors import UNEXPECTED_EXIT_CODE, RegistryError, out_of_space
from registry.secrets import scrub

app = typer.Typer(
    name="registry",
    help="A git repository as the registry of locked RAG chunking configurations, with "
    "PostgreSQL kept in step by a reconciler.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

_debug = {"on": os.environ.get("REGISTRY_DEBUG", "") not in ("", "0")}


def _show_version(value: bool) -> None:
    if value:
        from importlib.metadata import version  # 130 ms: only for --version

        say(f"registry (chunk-registry) {version('chunk-registry')}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks of unexpected errors.")
    ] = False,
    show_version: Annotated[
        bool, typer.Option("--version", is_eager=True, callback=_show_version,
                           help="Print the installed chunk-registry version and exit.")
    ] = False,
) -> None:
    if debug:
        _debug["on"] = True


def demo(
    keep: Annotated[
        Path | None,
        typer.Option("--keep", help="Leave the demo repo in this directory, and its database."),
    ] = None,
    dsn: Annotated[
        str | None,
        typer.Option("--dsn", help="Server to create the demo database on (default: "
                     "REGISTRY_DSN, then DATABASE_URL, else the embedded PostgreSQL)."),
    ] = None,
) -> None:
    """The whole lifecycle on a throwaway registry and database, each step a printed command."""
    from registry.cli.demo import run_demo

    seconds = run_demo(app, dsn=dsn, keep=keep)
    say(f"\nDemo finished in {seconds:.1f} s.")


COMMANDS: list[tuple[str | None, Callable[..., None]]] = [
    (None, registry_repo.init), (None, registry_repo.lock), (None, registry_repo.validate),
    (None, registry_repo.tag), ("list", registry_repo.list_configs), (None, registry_repo.show),
    (None, registry_repo.runbook), ("env", registry_repo.env_command), (None, changes.promote),
    (None, changes.retire), (None, changes.rollback), (None, registry_repo.history),
    (None, demo), (None, reconcile.plan), (None, reconcile.reconcile), (None, reconcile.status),
    ("environments", reconcile.environments_command),
    ("eval", quality.eval_command), (None, quality.health), (None, data.ingest),
    (None, quality.dashboard), ("watch-promotion", quality.watch_promotion), (None, tune.tune),
]
"""Every command, in the order `--help` lists them (name: the function's, unless given)."""
for command_name, command in COMMANDS:
    app.command(command_name)(command)
app.add_typer(reconcile.db_app, name="db")
app.add_typer(notify_app, name="notify")
app.add_typer(experiment_app, name="experiment")


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app, turn errors into one line and an exit code."""
    # psycopg warns about cleanup after an error (a COPY on a lost connection) that the
    # funnel below already reports as one line.
    logging.getLogger("psycopg").setLevel(logging.ERROR)
    try:
        app(args=argv, prog_name="registry")
    except RegistryError as err:
        _fail(f"error: {err}", err.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except BrokenPipeError:
        sys.exit(0)
    except Exception as err:
        from registry.database.connection import explain

        known = explain(err) or out_of_space(err)
        if known is not None:
            _fail(f"error: {known}", known.exit_code)
        if _debug["on"]:
            sys.stderr.write(scrub(traceback.format_exc()))
        reason = str(err).splitlines()[0][:200] if str(err) else ""
        _fail(f"unexpected error: {type(err).__name__}: {reason} (rerun with --debug for the "
              "traceback, and report it)", UNEXPECTED_EXIT_CODE)


def _fail(line: str, code: int) -> None:
    sys.stderr.write(scrub(line).replace("\n", " ") + "\n")
    sys.exit(code)
