"""The git layer: reading the remote (`fetch` skips the fetch only when the remote has nothing
new), blobs through GitPython's persistent object database, tags, and repositories without
commits or with a detached HEAD."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry.errors import GitError
from registry.repository.git import BATCH_READ_FROM, Git, TagInfo, git_blob_sha
from registry.repository.state import WORKTREE, read_state
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


def test_blobs_are_read_through_one_persistent_cat_file(registry_repo: RegistryRepo) -> None:
    ours = Git(registry_repo.path)
    contents = {f"notes/{i}.txt": f"note {i}\n".encode() for i in range(20)}
    for path, content in contents.items():
        registry_repo.write(path, content)
    registry_repo.git("add", "notes")
    registry_repo.git("commit", "--quiet", "-m", "notes")
    shas = [registry_repo.git("rev-parse", f"HEAD:{path}") for path in contents]

    first = ours.read_blobs(shas[:1])
    process = ours.repo.git.cat_file_all.proc.pid
    rest = ours.read_blobs(shas[1:])

    assert {**first, **rest} == dict(zip(shas, contents.values(), strict=True))
    assert ours.repo.git.cat_file_all.proc.pid == process, "one cat-file answered every read"
    with pytest.raises(GitError, match="is missing from the repository"):
        ours.read_blobs(["0" * 40])
    assert ours.read_blobs(shas[:1]) == first, "a missing blob does not break the process"


def test_a_stored_blob_is_what_git_hashes(registry_repo: RegistryRepo) -> None:
    ours = Git(registry_repo.path)
    sha = ours.store_blob(b"chunk_size: 450\n")
    assert sha == git_blob_sha(b"chunk_size: 450\n")
    assert registry_repo.git("cat-file", "blob", sha) == "chunk_size: 450"


def test_tags_are_peeled_to_their_commit_and_told_apart(registry_repo: RegistryRepo) -> None:
    ours = Git(registry_repo.path)
    head = registry_repo.head()
    ours.create_tag("chunk-config/2030-01-01-000000-v1", head, "Locked chunk config")
    registry_repo.git("tag", "chunk-config/2030-01-01-000000-v2", head)
    registry_repo.git("tag", "other/2030-01-01-000000-v1", head)

    tags = ours.tags("chunk-config/")

    assert tags == {
        "chunk-config/2030-01-01-000000-v1": TagInfo(
            "chunk-config/2030-01-01-000000-v1", head, annotated=True),
        "chunk-config/2030-01-01-000000-v2": TagInfo(
            "chunk-config/2030-01-01-000000-v2", head, annotated=False),
    }
    assert registry_repo.git("cat-file", "-t", "chunk-config/2030-01-01-000000-v1") == "tag"
    assert ours.object_type("chunk-config/2030-01-01-000000-v1") == "tag"
    assert ours.object_type("chunk-config/2030-01-01-000000-v2") == "commit"
    assert ours.object_type("no-such-tag") is None


def test_a_repository_with_no_commits(tmp_path: Path) -> None:
    git(tmp_path, "init", "--quiet", "-b", "main", "empty")
    (tmp_path / "empty" / "configs").mkdir()
    (tmp_path / "empty" / "configs" / "production.yaml").write_text("production: null\n")
    ours = Git(tmp_path / "empty" / "configs")

    assert ours.root == tmp_path / "empty", "a subfolder finds the repository above it"
    assert ours.resolve("HEAD") is None
    assert ours.tags("chunk-config/") == {}
    with pytest.raises(GitError, match="no main branch"):
        ours.main_branch()
    with pytest.raises(GitError, match="ref main does not exist"):
        read_state(ours, "main")
    assert read_state(ours, WORKTREE).errors == [], "the working tree reads without a commit"


def test_a_detached_head_still_finds_main(registry_repo: RegistryRepo) -> None:
    main = registry_repo.head()
    registry_repo.git("checkout", "--quiet", "--detach", "HEAD")
    ours = Git(registry_repo.path)

    assert ours.resolve("HEAD") == main
    assert ours.main_branch() == "main"

    registry_repo.git("branch", "--quiet", "-m", "main", "trunk")
    with pytest.raises(GitError, match="no main branch"):
        Git(registry_repo.path).main_branch()


def test_a_folder_outside_any_repository_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(GitError, match="is not a git repository"):
        Git(tmp_path)


def test_the_remote_url_is_the_configured_one(registry_repo: RegistryRepo) -> None:
    ours = Git(registry_repo.path)
    assert ours.remote_url() == str(registry_repo.origin)
    assert ours.remote_url("upstream") is None


def test_many_blobs_are_read_in_one_fed_batch(registry_repo: RegistryRepo) -> None:
    ours = Git(registry_repo.path)
    contents = [f"blob {i}\n".encode() * (i + 1) for i in range(BATCH_READ_FROM + 10)]
    shas = [ours.store_blob(content) for content in contents]

    assert ours.read_blobs(shas) == dict(zip(shas, contents, strict=True))
    with pytest.raises(GitError, match=f"blob {'0' * 40} is missing"):
        ours.read_blobs([*shas, "0" * 40])
