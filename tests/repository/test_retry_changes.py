"""Changes that can be retried: a branch left by a merged change is replaced, an identical one is
reused, `--pr` adopts the pushed branch and the open pull request, and a failure after the push
says what exists and what to run. Real git (a bare origin) and the local GitHub API server."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from registry.repository.git import Git
from registry.repository.lifecycle import tag
from tests.github_server import FakeGitHub, acme_origin
from tests.helpers import RegistryRepo, git, run_cli

TOKEN = "ghp_Retry0123456789abcdefABCDEF0123456789"


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def two_locked(registry_repo: RegistryRepo) -> tuple[str, str]:
    """v1 and v2 locked, merged and tagged on main (nothing promoted)."""
    v1 = registry_repo.locked()
    v2 = registry_repo.locked(chunk_size=300)
    tag(Git(registry_repo.path), push=True)
    return v1, v2


def cli_json(*args: str | Path) -> tuple[int, dict[str, object], str]:
    result = run_cli(*args, "--format", "json")
    return result.code, (json.loads(result.stdout) if result.stdout else {}), result.stderr


def origin_branches(repo: RegistryRepo) -> list[str]:
    return git(repo.origin, "for-each-ref", "--format=%(refname:short)", "refs/heads").split()


@pytest.mark.slow
def test_branches_left_by_merged_changes_are_replaced(
    registry_repo: RegistryRepo, two_locked: tuple[str, str]
) -> None:
    v1, v2 = two_locked
    repo = registry_repo.path
    for version in (v1, v2):
        code, made, err = cli_json("promote", version, "--repo", repo, "--push")
        assert code == 0, err
        registry_repo.merge(str(made["branch"]))
    code, rolled, err = cli_json("rollback", "--repo", repo, "--push")
    assert code == 0, err
    registry_repo.merge(str(rolled["branch"]))
    assert rolled["branch"] == f"rollback/{v1}"

    again, promoted, err = cli_json("promote", v2, "--repo", repo, "--push")
    assert again == 0, err
    assert promoted["branch"] == f"promote/{v2}" and promoted["reused"] is False
    registry_repo.merge(str(promoted["branch"]))
    second, rolled_again, err = cli_json("rollback", "--repo", repo, "--push")

    assert second == 0, err
    assert rolled_again["branch"] == f"rollback/{v1}" and rolled_again["reused"] is False
    assert rolled_again["commit"] != rolled["commit"]
    assert git(registry_repo.origin, "rev-parse", f"refs/heads/rollback/{v1}") == (
        rolled_again["commit"])


def test_an_identical_change_reuses_its_branch_and_a_different_one_is_refused_in_one_line(
    registry_repo: RegistryRepo, two_locked: tuple[str, str]
) -> None:
    v1, _ = two_locked
    repo = registry_repo.path

    first = cli_json("promote", v1, "--repo", repo, "--push")
    rerun = cli_json("promote", v1, "--repo", repo, "--push")

    assert first[0] == 0 and rerun[0] == 0, rerun[2]
    assert rerun[1]["reused"] is True and rerun[1]["commit"] == first[1]["commit"]
    registry_repo.git("branch", "--force", f"retire/{v1}", "main")
    registry_repo.git("checkout", "--quiet", f"retire/{v1}")
    registry_repo.write("notes.txt", "someone else's work\n", "unrelated work")
    registry_repo.git("checkout", "--quiet", "main")
    refused = run_cli("retire", v1, "--repo", repo)
    assert refused.code == 6
    assert refused.stderr.count("\n") == 1
    assert f"branch retire/{v1} already exists with other changes" in refused.stderr
    assert "not merged" in refused.stderr and f"git branch -D retire/{v1}" in refused.stderr


def test_a_branch_only_at_origin_is_adopted_when_identical(
    registry_repo: RegistryRepo, two_locked: tuple[str, str]
) -> None:
    v1, _ = two_locked
    repo = registry_repo.path
    first = cli_json("promote", v1, "--repo", repo, "--push")
    registry_repo.git("branch", "-D", f"promote/{v1}")

    rerun = cli_json("promote", v1, "--repo", repo, "--push")

    assert rerun[0] == 0, rerun[2]
    assert rerun[1]["reused"] is True and rerun[1]["commit"] == first[1]["commit"]


@pytest.fixture
def github(registry_repo: RegistryRepo, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeGitHub]:
    with acme_origin(registry_repo, monkeypatch, TOKEN) as server:
        yield server


@pytest.mark.slow
def test_pr_is_idempotent_and_a_failure_after_the_push_says_what_exists(
    registry_repo: RegistryRepo, two_locked: tuple[str, str], github: FakeGitHub,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    v1, _ = two_locked
    repo = registry_repo.path
    monkeypatch.setenv("GITHUB_API_URL", f"http://127.0.0.1:{closed_port()}")

    failed = run_cli("promote", v1, "--repo", repo, "--pr")

    assert failed.code == 9, failed.stderr
    assert f"promote/{v1}" in origin_branches(registry_repo)
    pushed = git(registry_repo.origin, "rev-parse", f"refs/heads/promote/{v1}")
    assert f"branch promote/{v1} is pushed to origin at {pushed[:10]}" in failed.stderr
    assert f"rerun `registry promote {v1} --pr`" in failed.stderr
    assert failed.stderr.count("\n") == 1

    monkeypatch.setenv("GITHUB_API_URL", github.url)
    opened = cli_json("promote", v1, "--repo", repo, "--pr")
    again = cli_json("promote", v1, "--repo", repo, "--pr")

    assert opened[0] == 0 and again[0] == 0, again[2]
    assert opened[1]["reused"] is True and opened[1]["commit"] == pushed
    pull = opened[1]["pull_request"]
    assert isinstance(pull, dict) and pull["created"] is True
    assert again[1]["pull_request"] == {**pull, "created": False}
    assert [r.method for r in github.received].count("POST") == 1


def test_lock_pr_rerun_adopts_the_pushed_lock_instead_of_locking_a_new_version(
    registry_repo: RegistryRepo, github: FakeGitHub, monkeypatch: pytest.MonkeyPatch,
) -> None:
    repo = registry_repo.path
    args = ("lock", "--repo", repo, "--tokenizer-file", registry_repo.tokenizer_file,
            "--chunk-size", "320", "--pr")
    monkeypatch.setenv("GITHUB_API_URL", f"http://127.0.0.1:{closed_port()}")
    failed = run_cli(*args)
    assert failed.code == 9, failed.stderr
    [branch] = [b for b in origin_branches(registry_repo) if b.startswith("lock/")]
    assert f"branch {branch} is pushed to origin" in failed.stderr
    assert "rerun the same `registry lock ... --pr`" in failed.stderr

    monkeypatch.setenv("GITHUB_API_URL", github.url)
    code, rerun, err = cli_json(*args)

    assert code == 0, err
    assert rerun["branch"] == branch and rerun["reused"] is True
    assert [b for b in origin_branches(registry_repo) if b.startswith("lock/")] == [branch]
    assert isinstance(rerun["pull_request"], dict) and rerun["pull_request"]["created"] is True
    other = cli_json("lock", "--repo", repo, "--tokenizer-file", registry_repo.tokenizer_file,
                     "--chunk-size", "330", "--pr")
    assert other[0] == 0 and other[1]["branch"] != branch and other[1]["reused"] is False


def test_pr_on_an_origin_that_is_not_github_pushes_nothing(
    registry_repo: RegistryRepo, two_locked: tuple[str, str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    v1, _ = two_locked
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN)

    refused = run_cli("promote", v1, "--repo", registry_repo.path, "--pr")

    assert refused.code == 6
    assert "does not name a GitHub repository" in refused.stderr
    assert "nothing was pushed" in refused.stderr
    assert f"promote/{v1}" not in origin_branches(registry_repo)
