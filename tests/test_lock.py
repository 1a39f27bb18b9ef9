"""`registry lock`: a branch with one commit, the user's checkout untouched."""

from __future__ import annotations

from tests.helpers import RegistryRepo


def test_lock_creates_a_branch_with_one_commit_and_leaves_the_checkout_alone(
    registry_repo: RegistryRepo,
) -> None:
    registry_repo.git("checkout", "--quiet", "-b", "my-work")
    registry_repo.write("notes.txt", "uncommitted work\n")
    head_before = registry_repo.head()

    version = registry_repo.lock(chunk_size=400)

    assert registry_repo.git("rev-parse", "--abbrev-ref", "HEAD") == "my-work"
    assert registry_repo.head() == head_before
    assert registry_repo.read("notes.txt") == "uncommitted work\n"
    assert registry_repo.git("status", "--porcelain") == "?? notes.txt"
    branch = f"lock/{version}"
    assert registry_repo.git("rev-list", "--count", f"main..{branch}") == "1"
    changed = registry_repo.git("diff", "--name-status", f"main..{branch}")
    assert changed == f"A\tconfigs/{version}.yaml"
    message = registry_repo.git("log", "-1", "--format=%B", branch)
    assert f"Chunk-Version: {version}" in message
    assert registry_repo.git("log", "-1", "--format=%an <%ae>", branch) == "Test Locker <locker@example.com>"
