"""Pull requests over the GitHub REST API, against a local server that implements the documented
contract and records what it received; and the GitHub Actions helpers."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from registry.errors import GitError, GitHubError, Problem
from registry.repository.git import Git
from registry.repository.github import (
    annotation,
    append_step_summary,
    parse_remote_url,
    propose,
)
from registry.repository.lifecycle import tag
from tests.github_server import FakeGitHub, acme_origin
from tests.helpers import RegistryRepo, run_cli
from tests.repository.test_promote_rollback import promoted

TOKEN = "ghp_Secret0123456789abcdefABCDEF0123456789"


@pytest.fixture
def github(registry_repo: RegistryRepo, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeGitHub]:
    """See `acme_origin` (the API knows TOKEN)."""
    with acme_origin(registry_repo, monkeypatch, TOKEN) as server:
        yield server


def pulls(server: FakeGitHub) -> list[tuple[str, str]]:
    return [(r.method, r.path) for r in server.received]


@pytest.mark.parametrize(("url", "expected"), [
    ("https://github.com/acme/chunk-configs.git", ("github.com", "acme", "chunk-configs")),
    ("https://github.com/acme/chunk-configs", ("github.com", "acme", "chunk-configs")),
    ("https://x-access-token:s3cret@github.com/acme/c.d/", ("github.com", "acme", "c.d")),
    ("git@github.com:acme/chunk-configs.git", ("github.com", "acme", "chunk-configs")),
    ("org-12@github.com:acme/chunk_configs", ("github.com", "acme", "chunk_configs")),
    ("ssh://git@github.com/acme/chunk-configs.git", ("github.com", "acme", "chunk-configs")),
    ("ssh://git@ghe.example.com:2222/data/registry.git", ("ghe.example.com", "data", "registry")),
    ("https://ghe.example.com:8443/data/registry.git", ("ghe.example.com", "data", "registry")),
])
def test_owner_and_repo_come_from_https_and_ssh_origin_urls(
    url: str, expected: tuple[str, str, str]
) -> None:
    repo = parse_remote_url(url)
    assert (repo.host, repo.owner, repo.name) == expected


def test_enterprise_hosts_get_their_own_api_and_web_urls() -> None:
    repo = parse_remote_url("https://ghe.example.com:8443/data/registry.git")
    assert repo.api_url({}) == "https://ghe.example.com:8443/api/v3"
    assert repo.api_url({"GITHUB_API_URL": "https://api.ghe.example.com/"}) == (
        "https://api.ghe.example.com"
    )
    assert repo.compare_url("main", "lock/2025-01-02-030405-v1") == (
        "https://ghe.example.com:8443/data/registry/compare/main...lock/2025-01-02-030405-v1"
        "?expand=1"
    )
    assert parse_remote_url("git@github.com:acme/r.git").api_url({}) == "https://api.github.com"


@pytest.mark.parametrize("url", [
    "/srv/git/registry.git", "file:///srv/git/registry.git",
    "https://user:hunter2@gitlab.example.com/group/sub/registry.git", "https://github.com/acme",
])
def test_an_origin_that_is_not_a_github_repository_is_one_clear_line(url: str) -> None:
    with pytest.raises(GitError, match="does not name a GitHub repository") as err:
        parse_remote_url(url)
    assert "hunter2" not in str(err.value)


def test_promote_pr_pushes_the_branch_and_opens_a_pull_request(
    registry_repo: RegistryRepo, github: FakeGitHub
) -> None:
    v1 = registry_repo.locked()
    tag(Git(registry_repo.path))

    result = run_cli("promote", v1, "--pr", "--repo", registry_repo.path)

    assert result.code == 0, result.stderr
    out, err = result.stdout, result.stderr
    assert "Opened pull request #1: https://github.com/acme/chunk-configs/pull/1" in out
    assert TOKEN not in out + err
    assert pulls(github) == [("GET", "/repos/acme/chunk-configs/pulls"),
                             ("POST", "/repos/acme/chunk-configs/pulls")]
    listing, create = github.received
    assert listing.query == {"head": f"acme:promote/{v1}", "base": "main", "state": "open"}
    assert create.headers["authorization"] == f"Bearer {TOKEN}"
    assert create.headers["accept"] == "application/vnd.github+json"
    assert create.headers["x-github-api-version"] == "2022-11-28"
    body = create.body
    assert (body["head"], body["base"]) == (f"promote/{v1}", "main")
    assert body["title"] == f"Promote chunk config {v1} to production"
    assert "Production moves from none to" in body["body"]
    assert f"## Config `{v1}`" in body["body"] and "chunk_size: 450" in body["body"]
    assert f"## Runbook: chunk config {v1}" in body["body"]
    assert f"`registry plan --base origin/main --head promote/{v1}`" in body["body"]
    table = f"document_chunks_{v1.replace('-', '_')}"
    assert f"| ~ | SwapProduction | `{table}` |" in body["body"]
    assert "Chunk-Version" not in body["body"]
    assert registry_repo.git("ls-remote", str(registry_repo.origin), f"promote/{v1}")


def test_a_second_pr_for_the_same_branch_finds_the_open_one(
    registry_repo: RegistryRepo, github: FakeGitHub
) -> None:
    result = run_cli("lock", "--pr", "--tokenizer-file", registry_repo.tokenizer_file,
                     "--repo", registry_repo.path, "--format", "json")
    assert result.code == 0, result.stderr
    first = json.loads(result.stdout)
    assert first["pull_request"] == {
        "number": 1, "url": "https://github.com/acme/chunk-configs/pull/1", "created": True,
    }
    again = propose(Git(registry_repo.path), first["branch"], "main", "t", "b")
    assert (again.number, again.created) == (1, False)
    assert [m for m, _ in pulls(github)] == ["GET", "POST", "GET"]


def test_without_a_token_pr_prints_the_compare_page(
    registry_repo: RegistryRepo, github: FakeGitHub, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("GITHUB_TOKEN")
    v1, v2 = registry_repo.locked(), registry_repo.locked()
    promoted(registry_repo, v1)
    promoted(registry_repo, v2)

    result = run_cli("rollback", "--pr", "--repo", registry_repo.path)

    assert result.code == 0, result.stderr
    out = result.stdout
    assert (f"open the pull request at https://github.com/acme/chunk-configs/compare/"
            f"main...rollback/{v1}?expand=1") in out
    assert github.received == []
    assert registry_repo.git("ls-remote", str(registry_repo.origin), f"rollback/{v1}")


def test_gh_token_and_an_enterprise_api_prefix_work_too(
    registry_repo: RegistryRepo, github: FakeGitHub, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("GITHUB_TOKEN")
    monkeypatch.setenv("GH_TOKEN", TOKEN)
    github.prefix = "/api/v3"
    monkeypatch.setenv("GITHUB_API_URL", github.url)
    v1 = registry_repo.locked()
    result = _retire_branch(registry_repo, v1)

    proposal = propose(Git(registry_repo.path), result, "main", "Retire", "body")

    assert proposal.number == 1
    assert pulls(github)[-1] == ("POST", "/api/v3/repos/acme/chunk-configs/pulls")


def _retire_branch(repo: RegistryRepo, version: str) -> str:
    from registry.repository.lifecycle import retire

    return retire(Git(repo.path), version, push=True).branch


@pytest.mark.parametrize(("setup", "expected"), [
    ("bad-token", r"^error: GitHub rejected the token \(401 Bad credentials\) \(set GITHUB_TOKEN"),
    ("unknown-repo", r"^error: GitHub has no repository acme/chunk-configs, or the token cannot "
                     r"see it \(404 Not Found\)"),
    ("already-exists", r"^error: a pull request already exists on acme/chunk-configs: A pull "
                       r"request already exists for acme:promote/"),
    ("rate-limit-403", r"^error: GitHub API rate limit exceeded \(403\); it resets at "
                       r"{reset} UTC, in \d+ min \(wait until then"),
    ("rate-limit-429", r"^error: GitHub API rate limit exceeded \(429\); it resets at "),
    ("secondary", r"^error: GitHub secondary rate limit hit \(403\); retry after 60 s"),
    ("unreachable", r"^error: cannot reach the GitHub API at http://127\.0\.0\.1:1: "),
])
def test_api_errors_become_one_clear_line_with_exit_9(
    registry_repo: RegistryRepo, github: FakeGitHub, monkeypatch: pytest.MonkeyPatch,
    setup: str, expected: str,
) -> None:
    v1 = registry_repo.locked()
    tag(Git(registry_repo.path))
    if setup == "bad-token":
        monkeypatch.setenv("GITHUB_TOKEN", "ghp_wrong")
    elif setup == "unknown-repo":
        github.repos.clear()
    elif setup == "already-exists":
        github.pulls["acme/chunk-configs"] = [{
            "number": 7, "state": "open", "head": {"ref": f"promote/{v1}",
                                                    "label": f"acme:promote/{v1}"},
            "base": {"ref": "main"}, "html_url": "https://github.com/acme/chunk-configs/pull/7",
        }]
        github.list_lags = True
    elif setup.startswith("rate-limit"):
        github.rate_limit = 0
        github.limited_status = int(setup[-3:])
    elif setup == "secondary":
        github.secondary_retry_after = 60
    elif setup == "unreachable":
        monkeypatch.setenv("GITHUB_API_URL", "http://127.0.0.1:1")

    result = run_cli("promote", v1, "--pr", "--repo", registry_repo.path)

    out, err = result.stdout, result.stderr
    assert result.code == 9, err
    reset = datetime.fromtimestamp(github.reset_at, UTC).strftime("%Y-%m-%d %H:%M:%S")
    # After the push, the line also says what now exists and what to rerun (the rest is the
    # API's own error, unchanged).
    pushed = re.compile(rf": branch promote/{v1} is pushed to origin at [0-9a-f]{{10}}, no pull "
                        "request was opened")
    assert pushed.search(err) and f"rerun `registry promote {v1} --pr`" in err, err
    assert re.match(expected.replace("{reset}", reset), pushed.sub("", err)), err
    assert err.count("\n") == 1
    assert TOKEN not in out + err and "ghp_wrong" not in out + err


def test_a_head_branch_that_was_never_pushed_is_refused_by_the_api(
    registry_repo: RegistryRepo, github: FakeGitHub
) -> None:
    version = registry_repo.lock()
    with pytest.raises(GitHubError, match=r"422 head invalid\) \(check that the branch was pushed"):
        propose(Git(registry_repo.path), f"lock/{version}", "main", "Lock", "body")


def test_annotations_escape_what_github_would_misread() -> None:
    problem = Problem("configs/a,b:c.yaml", 4, "100% wrong\nreally", "fix: it")
    assert annotation(problem) == (
        "::error file=configs/a%2Cb%3Ac.yaml,line=4,title=registry validate::100%25 wrong%0Areally"
        " (fix: it)"
    )
    warning = Problem("configs/x.yaml", 1, "tokenizer not checked", severity="warning")
    assert annotation(warning).startswith("::warning file=configs/x.yaml,line=1,")


def test_the_step_summary_is_appended_to_only_inside_actions(tmp_path: Path) -> None:
    summary = tmp_path / "summary.md"
    summary.write_text("# Earlier step\n")
    assert append_step_summary("## Plan", {}) is False
    assert append_step_summary("## Plan", {"GITHUB_STEP_SUMMARY": str(summary)}) is True
    assert append_step_summary("- one\n", {"GITHUB_STEP_SUMMARY": str(summary)}) is True
    assert summary.read_text() == "# Earlier step\n## Plan\n- one\n"
