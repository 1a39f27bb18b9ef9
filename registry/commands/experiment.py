"""`registry experiment start|set-share|end|report`: the first three are changes (a branch with
one commit to production.yaml, `--pr` opens the pull request), the report reads outcomes."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

from registry.commands.changes import Change, _proposed
from registry.config import (
    PRODUCTION_ENVIRONMENT,
    Guardrails,
    parse_duration,
    parse_rfc3339,
    utc_now,
)
from registry.database import bookkeeping
from registry.database.connection import resolve_dsn, session
from registry.environments import environment_dsn, select
from registry.errors import Refused, UsageError
from registry.quality import experiment as experiments
from registry.repository import lifecycle
from registry.repository.git import Git
from registry.repository.state import committed_state

_DURATION = re.compile(r"[0-9]{1,6}[smhd]")
_RFC3339 = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"
                      r"(Z|[+-][0-9]{2}:[0-9]{2})")


def parse_ends(text: str, now: datetime | None = None) -> datetime:
    """`--ends`: an RFC 3339 time, or a duration from now (`14d`, `36h`)."""
    value = text.strip()
    if _DURATION.fullmatch(value):
        return (now or utc_now()) + parse_duration(value)
    if _RFC3339.fullmatch(value):
        try:
            return parse_rfc3339(value)
        except ValueError as err:
            raise UsageError(f"--ends {err}", fix="use e.g. 2026-12-01T00:00:00Z or 14d"
                             ) from None
    raise UsageError(f"--ends {text!r} is neither an RFC 3339 time nor a duration",
                     fix="use e.g. 2026-12-01T00:00:00Z or 14d")


def start(repo: Path, name: str, candidate: str, *, share: float, ends: str,
          salt: str | None = None, guardrails: Guardrails | None = None, push: bool = False,
          pr: bool = False, environment: str | None = None) -> Change:
    git = Git(repo)
    if pr:
        lifecycle.check_pr_origin(git)
    result = lifecycle.experiment_start(git, name, candidate, share=share, ends=parse_ends(ends),
                                        salt=salt, guardrails=guardrails, push=push or pr,
                                        environment=environment or PRODUCTION_ENVIRONMENT)
    return _proposed(git, result, pr, f"registry experiment start {name}")


def set_share(repo: Path, share: float, *, push: bool = False, pr: bool = False,
              environment: str | None = None) -> Change:
    git = Git(repo)
    if pr:
        lifecycle.check_pr_origin(git)
    return _proposed(git, lifecycle.experiment_set_share(
        git, share, push=push or pr, environment=environment or PRODUCTION_ENVIRONMENT), pr,
        f"registry experiment set-share {share:g}")


def end(repo: Path, *, reason: str | None = None, push: bool = False, pr: bool = False,
        environment: str | None = None) -> Change:
    git = Git(repo)
    if pr:
        lifecycle.check_pr_origin(git)
    return _proposed(git, lifecycle.experiment_end(
        git, reason=reason, push=push or pr,
        environment=environment or PRODUCTION_ENVIRONMENT), pr, "registry experiment end")


def report(repo: Path, *, name: str | None = None, metric: str = "success",
           dsn: str | None = None, ref: str | None = None, fetch: bool = True,
           environment: str | None = None) -> experiments.ExperimentReport:
    """The declared experiment's report (or `name`'s, e.g. an experiment that ended)."""
    state = select(committed_state(Git(repo), ref, fetch=fetch), environment)
    dsn = environment_dsn(state, dsn)
    chosen = name or (state.settings.experiment.name if state.settings.experiment else None)
    if chosen is None:
        raise Refused(f"no experiment is declared in {state.environment}",
                      fix="pass --name to report on an experiment that ended")
    with session(resolve_dsn(dsn).value, purpose="experiment report") as conn:
        bookkeeping.ensure_schema(conn)
        return experiments.report(conn, state.settings, chosen, metric=metric)
