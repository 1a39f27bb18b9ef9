"""The GitOps changes: promote, retire, rollback. Each makes a branch with one commit (and, with
`--pr`, opens its pull request); promote reads the eval gate from the database the user named."""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from registry.database.connection import configured_dsn, session
from registry.repository import lifecycle
from registry.repository.git import Git
from registry.repository.github import Proposal


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
            push: bool = False, pr: bool = False) -> Change:
    """With a database named (`--dsn`, REGISTRY_DSN, DATABASE_URL) its eval_runs gate the
    promotion; without one the reconciler's gate applies."""
    git = Git(repo)
    if pr:
        lifecycle.check_pr_origin(git)
    named = configured_dsn(dsn)
    with ExitStack() as stack:
        conn = (stack.enter_context(session(named.value, purpose="promote"))
                if named is not None else None)
        result = lifecycle.promote(git, version, conn=conn, force=force, push=push or pr)
    return _proposed(git, result, pr, f"registry promote {version}")


def retire(repo: Path, version: str, *, push: bool = False, pr: bool = False) -> Change:
    git = Git(repo)
    if pr:
        lifecycle.check_pr_origin(git)
    return _proposed(git, lifecycle.retire(git, version, push=push or pr), pr,
                     f"registry retire {version}")


def rollback(repo: Path, *, push: bool = False, pr: bool = False) -> Change:
    git = Git(repo)
    if pr:
        lifecycle.check_pr_origin(git)
    return _proposed(git, lifecycle.rollback(git, push=push or pr), pr, "registry rollback")
