"""Commands on the registry repository that need no database: init, lock, validate, tag,
list, show, runbook, env, history."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry.config import LockedConfig
from registry.errors import UsageError
from registry.repository import lifecycle, scaffold, validation
from registry.repository.git import Git
from registry.repository.github import Proposal
from registry.repository.history import Event, read_history
from registry.repository.runbook import export_lines, render
from registry.repository.state import WORKTREE, RegistryState, committed_state, read_state


@dataclass(frozen=True)
class Locked:
    """What `lock` made, and the pull request opened for it (with `--pr`)."""

    result: lifecycle.LockResult
    proposal: Proposal | None


def init(directory: Path, *, tool_repo: str, pin_sha: str | None) -> scaffold.InitResult:
    return scaffold.init(directory, tool_repo=tool_repo, pin_sha=pin_sha)


def lock(repo: Path, *, pr: bool = False, push: bool = False, **parameters: Any) -> Locked:
    git = Git(repo)
    if pr:
        lifecycle.check_pr_origin(git)
    result = lifecycle.lock(git, push=push or pr, **parameters)
    if not pr:
        return Locked(result, None)
    return Locked(result, lifecycle.propose_pushed(git, result.branch, result.base,
                                                   result.commit,
                                                   "the same `registry lock ... --pr`"))


def tokenizer_files(items: list[str]) -> dict[str, Path]:
    """`--tokenizer-file NAME=PATH` options as {name: path}."""
    files: dict[str, Path] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            raise UsageError(f"--tokenizer-file {item!r} is not NAME=PATH")
        files[name] = Path(path)
    return files


def validate(repo: Path, ref: str | None, *, strict: bool,
             tokenizer_files: Mapping[str, Path]) -> validation.Report:
    git = Git(repo)
    state = read_state(git, ref or WORKTREE)
    return validation.validate(git, state, strict=strict, tokenizer_files=dict(tokenizer_files))


def tag(repo: Path, ref: str | None, *, push: bool) -> lifecycle.TagResult:
    return lifecycle.tag(Git(repo), ref=ref, push=push)


def config_row(state: RegistryState, version: str, tags: Mapping[str, Any]) -> dict[str, Any]:
    """One config as `list` and `show` print it."""
    config = state.configs[version]
    tag_name = state.settings.tag_name(version)
    return {
        **config.to_dict(),
        "label": config.label(),
        "config_hash": config.config_hash,
        "ingest_run_id": config.ingest_run_id,
        "table": f"{state.settings.schema}.{state.settings.table_name(version)}",
        "overlap_tokens": config.overlap_tokens,
        "tag": tag_name if tag_name in tags else None,
        "is_production": state.is_production(version),
    }


def list_configs(repo: Path, ref: str | None) -> tuple[RegistryState, list[dict[str, Any]]]:
    """The state read, and its configs newest first."""
    git = Git(repo)
    state = committed_state(git, ref)
    tags = git.tags(state.settings.tag_prefix)
    return state, [config_row(state, v, tags) for v in sorted(state.configs, reverse=True)]


def show(repo: Path, ref: str | None, version: str) -> dict[str, Any]:
    git = Git(repo)
    state = committed_state(git, ref)
    config = state.config(version)
    return config_row(state, config.chunk_version, git.tags(state.settings.tag_prefix))


def runbook(repo: Path, ref: str | None, version: str, fmt: str) -> str:
    state = committed_state(Git(repo), ref)
    return render(state.config(version), state.settings, fmt)


def env(repo: Path, ref: str | None, version: str) -> str:
    config: LockedConfig = committed_state(Git(repo), ref).config(version)
    return export_lines(config)


def history(repo: Path, ref: str | None, limit: int | None) -> list[Event]:
    git = Git(repo)
    return read_history(git, git.desired_ref(ref, fetch=False))[:limit]
