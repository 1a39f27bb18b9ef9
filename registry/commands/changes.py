"""The GitOps changes: promote, retire, rollback. Each makes a branch with one commit (and, with
`--pr`, opens its pull request); promote reads the eval gate from the database the user named."""

from __future__ import annotations

import os
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from registry.config import PRODUCTION_ENVIRONMENT
from registry.database.connection import configured_dsn, session
from registry.environments import environment_dsn, promotion_path_note, select
from registry.repository import lifecycle
from registry.repository.git import Git
from registry.repository.github import Proposal
from registry.repository.history import read_history
from registry.repository.state import read_state


@dataclass(frozen=True)
class Change:
    """What a change command made, and the pull request opened for it (with `--pr`)."""

    result: lifecycle.ChangeResult
    proposal: Proposal | None


def _proposed(git: Git, result: lifecycle.ChangeResult, pr: bool, rerun: str) -> Change:
    if not pr:
        return Change(result, None)
    return Change(result, lifecycle.propose_pushed(git, result.branch, result.base,
                                                   result.commit, f"`{rerun} --pr`"))


def promote(repo: Path, version: str, *, dsn: str | None = None, force: bool = False,
            push: bool = False, pr: bool = False, environment: str | None = None) -> Change:
    """With a database named (`--dsn`, the environment's `dsn_env`, REGISTRY_DSN,
    DATABASE_URL) its eval_runs gate the promotion; without one the reconciler's gate applies.
    An environment with `promotion: {from: ...}` also passes the promotion path gate, on the
    source environment's database (`environments.promotion_path_note`)."""
    git = Git(repo)
    if pr:
        lifecycle.check_pr_origin(git)
    name = environment or PRODUCTION_ENVIRONMENT
    base = git.desired_ref(fetch=False)
    state = select(read_state(git, base), name)
    variable = state.settings.dsn_env
    if dsn is not None or variable is None:
        named = configured_dsn(dsn)
    else:  # the environment's own database, or none (never another environment's)
        named = configured_dsn(environment_dsn(state, None)) \
            if os.environ.get(variable, "").strip() else None
    with ExitStack() as stack:
        conn = (stack.enter_context(session(named.value, purpose="promote"))
                if named is not None else None)
        note = None
        if state.settings.promotion is not None and state.settings.production != version:
            served = {v for e in read_history(git, base, name)
                      if e.kind in ("promote", "rollback") for v in (e.chunk_version, e.previous)}
            note = promotion_path_note(state, version, force=force, conn=conn,
                                       served_before=version in served)
        result = lifecycle.promote(git, version, conn=conn, force=force, push=push or pr,
                                   environment=name, path_note=note)
    where = "" if environment is None else f" --environment {environment}"
    return _proposed(git, result, pr, f"registry promote {version}{where}")


def retire(repo: Path, version: str, *, push: bool = False, pr: bool = False) -> Change:
    git = Git(repo)
    if pr:
        lifecycle.check_pr_origin(git)
    return _proposed(git, lifecycle.retire(git, version, push=push or pr), pr,
                     f"registry retire {version}")


def rollback(repo: Path, *, push: bool = False, pr: bool = False,
             environment: str | None = None) -> Change:
    git = Git(repo)
    if pr:
        lifecycle.check_pr_origin(git)
    where = "" if environment is None else f" --environment {environment}"
    return _proposed(git, lifecycle.rollback(
        git, push=push or pr, environment=environment or PRODUCTION_ENVIRONMENT), pr,
        f"registry rollback{where}")
