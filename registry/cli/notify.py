"""`registry notify test`: send a test message to each notification target, one line each."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from registry.errors import NotificationFailed, RegistryError

notify_app = typer.Typer(help="Notifications (the notifications: section of production.yaml).",
                         no_args_is_help=True)


@notify_app.command("test")
def test(
    target: Annotated[
        list[str] | None, typer.Option("--target", help="Only this target (repeatable).")
    ] = None,
    repo: Annotated[
        Path, typer.Option("--repo", help="Registry repository (default: the current "
                           "directory).")
    ] = Path("."),
    ref: Annotated[
        str | None, typer.Option("--ref", help="Git ref to read production.yaml from.")
    ] = None,
) -> None:
    """Send a test message to every target (or --target NAME) and report each outcome.
    Exit 15 when any target did not accept it."""
    from registry.notify.dispatch import send_test
    from registry.repository.git import Git
    from registry.repository.state import committed_state

    state = committed_state(Git(repo), ref)
    settings = state.settings.notifications
    if settings is None:
        raise RegistryError("production.yaml has no notifications: section",
                            where=f"{state.ref}:configs/production.yaml",
                            fix="add targets and routes (see docs/notifications.md)")
    unknown = sorted(set(target or ()) - {t.name for t in settings.targets})
    if unknown:
        raise RegistryError(f"no notification target named {', '.join(unknown)}",
                            fix="use one of " + ", ".join(t.name for t in settings.targets))
    outcomes = send_test(settings, target or ())
    for outcome in outcomes:
        state_text = "sent" if outcome.sent else "FAILED"
        sys.stdout.write(f"{outcome.target} ({outcome.kind}): {state_text}: {outcome.detail}\n")
    failed = [o.target for o in outcomes if not o.sent]
    if failed:
        raise NotificationFailed(f"{len(failed)} of {len(outcomes)} notification targets did "
                                 f"not accept the test message: {', '.join(failed)}",
                                 fix="check the environment variables they name and the "
                                 "endpoints (details above)")
