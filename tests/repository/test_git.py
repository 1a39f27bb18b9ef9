"""Reading the remote: `fetch` skips the fetch only when the remote has nothing new."""

from __future__ import annotations

from pathlib import Path

from registry.repository.git import Git
from tests.helpers import RegistryRepo, git


def other_clone(repo: RegistryRepo, tmp_path: Path) -> Path:
    """A second clone of the same origin: a teammate pushing while we are not looking."""
    clone = tmp_path / "teammate"
    git(tmp_path, "clone", "--quiet", str(repo.origin), str(clone))
    git(clone, "config", "user.name", "Teammate")
    git(clone, "config", "user.email", "teammate@example.com")
    return clone


def test_nothing_new_on_the_remote_runs_no_fetch(registry_repo: RegistryRepo) -> None:
    fetch_head = registry_repo.path / ".git" / "FETCH_HEAD"
    Git(registry_repo.path).fetch()
    assert not fetch_head.exists(), "the clone is up to date: no fetch ran"


def test_a_pushed_commit_a_new_tag_and_a_deleted_branch_are_fetched(
    registry_repo: RegistryRepo, tmp_path: Path
) -> None:
    clone = other_clone(registry_repo, tmp_path)
    ours = Git(registry_repo.path)

    (clone / "notes.txt").write_text("pushed by a teammate\n")
    git(clone, "add", "notes.txt")
    git(clone, "commit", "--quiet", "-m", "A teammate's commit")
    git(clone, "push", "--quiet", "origin", "main")
    ours.fetch()
    assert ours.resolve("origin/main") == git(clone, "rev-parse", "HEAD")

    git(clone, "tag", "-a", "chunk-config/2030-01-01-000000-v1", "-m", "tag", "HEAD")
    git(clone, "push", "--quiet", "origin", "--tags")
    ours.fetch()
    assert ours.resolve("chunk-config/2030-01-01-000000-v1") == git(clone, "rev-parse", "HEAD")

    git(clone, "push", "--quiet", "origin", "HEAD:refs/heads/lock/feature")
    ours.fetch()
    assert ours.resolve("origin/lock/feature")
    git(clone, "push", "--quiet", "origin", "--delete", "lock/feature")
    ours.fetch()
    assert ours.resolve("origin/lock/feature") is None, "a deleted remote branch is pruned"
