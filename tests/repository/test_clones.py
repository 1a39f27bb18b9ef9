"""The clones a team really has: a CI checkout (one commit deep, no tags, detached HEAD, no local
main), a clone without tags, a lock tag moved or made lightweight at origin. Every command either
fetches what it needs or refuses in one line naming what to fetch; none answers wrongly."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry.repository.git import Git
from registry.repository.history import read_history
from registry.repository.lifecycle import promote, tag
from tests.helpers import RegistryRepo, git, run_cli


def promoted(repo: RegistryRepo, version: str) -> None:
    tag(Git(repo.path), push=True)
    repo.merge(promote(Git(repo.path), version).branch)


@pytest.fixture
def two_promotions(registry_repo: RegistryRepo) -> tuple[RegistryRepo, str, str, str]:
    """v1 promoted, then v2 promoted; v3 locked. Everything tagged and pushed."""
    v1, v2 = registry_repo.locked(), registry_repo.locked()
    promoted(registry_repo, v1)
    promoted(registry_repo, v2)
    v3 = registry_repo.locked()
    tag(Git(registry_repo.path), push=True)
    return registry_repo, v1, v2, v3


def ci_checkout(origin: Path, dest: Path, *, depth: int | None = 1, tags: bool = False,
                local_main: bool = False) -> Path:
    """What actions/checkout makes: a clone `depth` commits deep, without tags, HEAD detached
    at origin/main, no local branch (unless `local_main`)."""
    args = ["clone", "--quiet", "--no-tags", "--no-checkout"]
    if depth is not None:
        args += ["--depth", str(depth)]
    git(dest.parent, *args, f"file://{origin}", str(dest))
    git(dest, "checkout", "--quiet", "--detach", "origin/main")
    if not local_main:
        git(dest, "branch", "-D", "main")
    if tags:
        git(dest, "fetch", "--quiet", "--tags", "origin")
    git(dest, "config", "user.name", "CI")
    git(dest, "config", "user.email", "ci@example.com")
    return dest


DEFAULT_SHAPES = ("shallow", "full-no-tags")
"""The shapes the default suite runs; the others run with `-m reliability` (each costs ~3 s)."""
CHECKOUTS = {
    "shallow": {"depth": 1},
    "shallow-with-tags": {"depth": 1, "tags": True},
    "shallow-local-main": {"depth": 1, "local_main": True},
    "full-no-tags": {"depth": None},
    "depth-2": {"depth": 2},
}
SHAPES = [kind if kind in DEFAULT_SHAPES else pytest.param(kind, marks=pytest.mark.reliability)
          for kind in sorted(CHECKOUTS)]


@pytest.mark.parametrize("kind", SHAPES)
def test_history_in_a_ci_checkout_equals_history_in_a_full_clone(
    two_promotions: tuple[RegistryRepo, str, str, str], tmp_path: Path, kind: str
) -> None:
    repo, *_ = two_promotions
    full = read_history(Git(repo.path), "origin/main")
    clone = ci_checkout(repo.origin, tmp_path / kind, **CHECKOUTS[kind])  # type: ignore[arg-type]
    result = run_cli("history", "--repo", clone, "--format", "json")
    assert result.code == 0, result.stderr
    import json

    assert [(e["kind"], e["chunk_version"], e["tag"]) for e in json.loads(result.stdout)] == [
        (e.kind, e.chunk_version, e.tag) for e in full]


@pytest.mark.parametrize("kind", SHAPES)
def test_rollback_and_retire_in_a_ci_checkout_see_the_previous_production(
    two_promotions: tuple[RegistryRepo, str, str, str], tmp_path: Path, kind: str
) -> None:
    repo, v1, _v2, _v3 = two_promotions
    clone = ci_checkout(repo.origin, tmp_path / kind, **CHECKOUTS[kind])  # type: ignore[arg-type]
    retired = run_cli("retire", v1, "--repo", clone)
    assert retired.code == 7 and "previous production" in retired.stderr, retired
    rolled = run_cli("rollback", "--repo", clone, "--format", "json")
    assert rolled.code == 0, rolled.stderr
    assert f'"chunk_version": "{v1}"' in rolled.stdout
    assert '"base": "origin/main"' in rolled.stdout


@pytest.mark.parametrize("kind", SHAPES)
def test_validate_in_a_ci_checkout_checks_every_tag(
    two_promotions: tuple[RegistryRepo, str, str, str], tmp_path: Path, kind: str
) -> None:
    repo, *_ = two_promotions
    clone = ci_checkout(repo.origin, tmp_path / kind, **CHECKOUTS[kind])  # type: ignore[arg-type]
    result = run_cli("validate", "--repo", clone, "--ref", "HEAD")
    assert result.code == 0, result.stdout + result.stderr
    assert "not on" not in result.stdout and "delete the tag" not in result.stdout
    assert "no lock tag" not in result.stdout


@pytest.mark.slow
def test_validate_catches_tampering_in_a_shallow_clone_without_tags(
    two_promotions: tuple[RegistryRepo, str, str, str], tmp_path: Path
) -> None:
    repo, v1, *_ = two_promotions
    path = f"configs/{v1}.yaml"
    repo.write(path, repo.read(path).replace("chunk_size: 450", "chunk_size: 400"), "edit v1")
    clone = ci_checkout(repo.origin, tmp_path / "ci")
    result = run_cli("validate", "--repo", clone, "--ref", "HEAD")
    assert result.code == 1 and "tampering" in result.stdout, result.stdout + result.stderr


@pytest.mark.slow
def test_a_shallow_clone_without_a_reachable_origin_refuses_in_one_line(
    two_promotions: tuple[RegistryRepo, str, str, str], tmp_path: Path
) -> None:
    repo, v1, *_ = two_promotions
    clone = ci_checkout(repo.origin, tmp_path / "ci")
    git(clone, "remote", "set-url", "origin", str(tmp_path / "gone.git"))
    for args in (["history"], ["rollback"], ["retire", v1], ["validate", "--ref", "HEAD"]):
        result = run_cli(*args, "--repo", clone)
        assert result.code == 6, (args, result)
        assert "shallow" in result.stderr and "git fetch --unshallow" in result.stderr, args
        assert len(result.stderr.strip().splitlines()) == 1


def test_untagged_configs_on_main_are_named_not_passed_as_ok(registry_repo: RegistryRepo) -> None:
    v1 = registry_repo.locked()
    result = run_cli("validate", "--repo", registry_repo.path, "--ref", "main")
    assert f"{v1} has no lock tag" in result.stdout
    assert not result.stdout.splitlines()[-1].startswith("ok:"), result.stdout


@pytest.mark.parametrize("command", ["lock", "promote", "rollback", "retire"])
def test_change_commands_in_a_detached_checkout_branch_from_origin_main(
    two_promotions: tuple[RegistryRepo, str, str, str], tmp_path: Path, command: str,
    tokenizer_file: Path,
) -> None:
    repo, _v1, _v2, v3 = two_promotions
    clone = ci_checkout(repo.origin, tmp_path / "ci", depth=None, tags=True)
    args: dict[str, list[str | Path]] = {
        "lock": ["lock", "--chunk-size", "300", "--embedder", "BAAI/bge-large-en-v1.5",
                 "--tokenizer-file", tokenizer_file],
        "promote": ["promote", v3], "rollback": ["rollback"], "retire": ["retire", v3],
    }
    result = run_cli(*args[command], "--repo", clone, "--format", "json")
    assert result.code == 0, result.stderr
    assert '"base": "origin/main"' in result.stdout


@pytest.mark.slow
def test_change_commands_and_reads_use_the_same_main(
    two_promotions: tuple[RegistryRepo, str, str, str],
) -> None:
    """A local main behind origin/main (a teammate merged; we did not pull): both read and
    change from origin/main, so a promotion cannot be built on a stale production.yaml."""
    repo, _v1, _v2, v3 = two_promotions
    repo.git("reset", "--quiet", "--hard", "HEAD~1")  # local main one merge behind
    result = run_cli("promote", v3, "--repo", repo.path, "--format", "json")
    assert result.code == 0, result.stderr
    assert '"base": "origin/main"' in result.stdout


def test_no_main_at_all_says_what_to_fetch(registry_repo: RegistryRepo, tmp_path: Path) -> None:
    registry_repo.locked()
    clone = ci_checkout(registry_repo.origin, tmp_path / "ci", depth=None)
    git(clone, "remote", "remove", "origin")
    result = run_cli("rollback", "--repo", clone)
    assert result.code == 6
    assert "no commits yet" not in result.stderr and "detached" in result.stderr


# -- tags moved or replaced at origin ---------------------------------------------------------


def teammate(repo: RegistryRepo, tmp_path: Path) -> Path:
    clone = tmp_path / "teammate"
    git(tmp_path, "clone", "--quiet", str(repo.origin), str(clone))
    git(clone, "config", "user.name", "Teammate")
    git(clone, "config", "user.email", "teammate@example.com")
    return clone


@pytest.mark.slow
def test_a_lock_tag_moved_at_origin_is_reported_as_tampering_not_as_a_fetch_failure(
    two_promotions: tuple[RegistryRepo, str, str, str], tmp_path: Path, dsn: str
) -> None:
    repo, v1, *_ = two_promotions
    other = teammate(repo, tmp_path)
    name = f"chunk-config/{v1}"
    git(other, "tag", "-f", "-a", name, "-m", "moved", "HEAD")
    git(other, "push", "--quiet", "--force", "origin", f"refs/tags/{name}")
    (other / "notes.txt").write_text("later work\n")
    git(other, "add", "notes.txt")
    git(other, "commit", "--quiet", "-m", "later work")
    git(other, "push", "--quiet", "origin", "main")
    for _ in range(2):  # every later run says the same, not "git fetch failed: exit 1"
        result = run_cli("reconcile", "--repo", repo.path, "--dsn", dsn)
        assert result.code == 1, result
        assert "fetch failed" not in result.stderr
        assert f"tag {name} was moved at origin" in result.stderr and "tampering" in result.stderr
    assert Git(repo.path).resolve("origin/main") == git(other, "rev-parse", "HEAD"), (
        "the branches were fetched all the same")


def test_a_moved_non_registry_tag_does_not_block_the_fetch(
    registry_repo: RegistryRepo, tmp_path: Path
) -> None:
    registry_repo.git("tag", "release", "HEAD")
    registry_repo.git("push", "--quiet", "origin", "release")
    registry_repo.locked()
    other = teammate(registry_repo, tmp_path)
    git(other, "tag", "-f", "release", "HEAD")
    git(other, "push", "--quiet", "--force", "origin", "release")
    (other / "notes.txt").write_text("x\n")
    git(other, "add", "notes.txt")
    git(other, "commit", "--quiet", "-m", "x")
    git(other, "push", "--quiet", "origin", "main")
    ours = Git(registry_repo.path)
    ours.fetch()
    assert ours.resolve("origin/main") == git(other, "rev-parse", "HEAD")


@pytest.mark.slow
def test_registry_tag_replaces_a_lightweight_lock_tag_on_the_same_commit(
    registry_repo: RegistryRepo, tmp_path: Path
) -> None:
    v1 = registry_repo.locked()
    name = f"chunk-config/{v1}"
    introduced = registry_repo.git("log", "--format=%H", "--diff-filter=A", "main", "--",
                                   f"configs/{v1}.yaml")
    registry_repo.git("tag", name, introduced)
    registry_repo.git("push", "--quiet", "origin", name)
    before = run_cli("validate", "--repo", registry_repo.path, "--ref", "main")
    assert "lightweight" in before.stdout
    result = run_cli("tag", "--repo", registry_repo.path, "--push")
    assert result.code == 0, result.stderr
    assert registry_repo.git("cat-file", "-t", name) == "tag"
    assert registry_repo.git("rev-parse", f"{name}^{{commit}}") == introduced
    after = run_cli("validate", "--repo", registry_repo.path, "--ref", "main")
    assert "lightweight" not in after.stdout, after.stdout
    assert git(registry_repo.origin, "cat-file", "-t", name) == "tag"
    # A clone that fetched the lightweight tag takes the annotated one: same commit, no alarm.
    other = teammate(registry_repo, tmp_path)
    git(other, "tag", "-f", name, introduced)
    Git(other).fetch()
    assert git(other, "cat-file", "-t", name) == "tag"
