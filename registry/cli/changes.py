"""The GitOps changes: promote, retire, rollback (each a branch with one commit)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from registry.cli.completion import complete_version
from registry.cli.output import (
    FormatOpt,
    PrOpt,
    PushOpt,
    RepoOpt,
    emit_json,
    print_next_step,
    proposal_dict,
    say,
)

if TYPE_CHECKING:
    from registry.commands.changes import Change


def _report_change(change: Change, fmt: str) -> None:
    """Print what a promote/retire/rollback made, and the step that makes it count."""
    result, proposal = change.result, change.proposal
    if fmt == "json":
        emit_json({
            "action": result.action, "chunk_version": result.chunk_version,
            "branch": result.branch, "commit": result.commit, "base": result.base,
            "title": result.title, "previous": result.previous, "reverted": result.reverted,
            "pushed": result.pushed, "pull_request": proposal_dict(proposal),
            "reused": result.reused,
        })
        return
    say(f"{result.title}: branch {result.branch}")
    say(f"  commit {result.commit[:10]} on top of {result.base}")
    if result.reverted:
        say(f"  reverts {result.reverted[:10]}")
    print_next_step(result.branch, result.pushed, proposal)


def promote(
    version: Annotated[str, typer.Argument(help="The locked chunk_version to make production.",
                                           autocompletion=complete_version)],
    force: Annotated[
        bool, typer.Option("--force", help="Promote although the last eval comparison failed.")
    ] = False,
    dsn: Annotated[
        str | None,
        typer.Option("--dsn", help="Database whose eval_runs gate the promotion (default: "
                     "REGISTRY_DSN, then DATABASE_URL; none: no gate here, the reconciler's "
                     "applies)."),
    ] = None,
    push: PushOpt = False,
    pr: PrOpt = False,
    repo: RepoOpt = Path("."),
    fmt: FormatOpt = "text",
) -> None:
    """Point production at a locked version: a branch promote/<version> with one commit."""
    from registry.commands import changes

    _report_change(changes.promote(repo, version, dsn=dsn, force=force, push=push, pr=pr), fmt)


def retire(
    version: Annotated[str, typer.Argument(help="The locked chunk_version to retire.",
                                           autocompletion=complete_version)],
    push: PushOpt = False,
    pr: PrOpt = False,
    repo: RepoOpt = Path("."),
    fmt: FormatOpt = "text",
) -> None:
    """Delete a locked config (its table is dropped after the grace period): branch retire/<v>."""
    from registry.commands import changes

    _report_change(changes.retire(repo, version, push=push, pr=pr), fmt)


def rollback(
    push: PushOpt = False, pr: PrOpt = False, repo: RepoOpt = Path("."), fmt: FormatOpt = "text"
) -> None:
    """Revert the last promotion on main: a branch rollback/<version> with a `git revert`."""
    from registry.commands import changes

    _report_change(changes.rollback(repo, push=push, pr=pr), fmt)
