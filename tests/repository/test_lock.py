"""`registry lock`: a branch with one commit, the user's checkout untouched."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import yaml

from registry.tokenizer import file_hash
from tests.helpers import RegistryRepo, run_cli


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


def test_lock_refuses_values_outside_the_guardrails_before_writing_anything(
    registry_repo: RegistryRepo,
) -> None:
    refs_before = registry_repo.git("for-each-ref")
    for flags in (["--chunk-size", "1001"], ["--overlap-ratio", "0.6"],
                  ["--jaccard-threshold", "0.4"], ["--prefix-policy", "C"],
                  ["--chunk-size", "490"]):
        result = run_cli("lock", "--repo", registry_repo.path, "--tokenizer-file",
                         registry_repo.tokenizer_file, *flags)
        assert result.code == 1, flags
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert registry_repo.git("for-each-ref") == refs_before
    assert "token budget 512" in result.stderr


def test_versions_locked_in_the_same_second_get_bumped(registry_repo: RegistryRepo) -> None:
    from registry.repository.git import Git
    from registry.repository.lifecycle import lock

    moment = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    versions = [
        lock(Git(registry_repo.path), chunk_size=size, overlap_ratio=0.1, jaccard_threshold=0.8,
             prefix_policy="A", embedder="BAAI/bge-large-en-v1.5",
             tokenizer_file=registry_repo.tokenizer_file, now=moment).config.chunk_version
        for size in (300, 350, 400)
    ]
    assert versions == ["2026-01-02-030405-v1", "2026-01-02-030405-v2", "2026-01-02-030405-v3"]


def test_lock_records_tokenizer_hash_identity_and_baseline_metrics(
    registry_repo: RegistryRepo, tmp_path: Path
) -> None:
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"metrics": {"oracle_hit_rate": 0.51, "filter_hit_rate": 0.24}}))

    result = run_cli("lock", "--repo", registry_repo.path, "--tokenizer-file",
                     registry_repo.tokenizer_file, "--baseline-metrics", metrics, "--push",
                     "--format", "json")

    data = json.loads(result.stdout)
    text = registry_repo.git("show", f"{data['branch']}:configs/{data['chunk_version']}.yaml")
    config = yaml.safe_load(text)
    assert config["tokenizer_hash"] == file_hash(registry_repo.tokenizer_file)
    assert config["created_by"] == "Test Locker <locker@example.com>"
    assert config["baseline_metrics"] == {"oracle_hit_rate": 0.51, "filter_hit_rate": 0.24}
    assert registry_repo.git("ls-remote", "origin", data["branch"])


def test_lock_without_a_tokenizer_offline_is_a_clear_error(registry_repo: RegistryRepo) -> None:
    result = run_cli("lock", "--repo", registry_repo.path)
    assert result.code == 8
    assert "is not pinned in the repo nor in the Hugging Face cache" in result.stderr
    assert "pass --tokenizer-file" in result.stderr


def test_lock_finds_a_tokenizer_in_the_local_hf_cache(
    registry_repo: RegistryRepo, isolated: Path
) -> None:
    snapshot = isolated / "hf" / "hub" / "models--acme--tiny-embedder" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "tokenizer.json").write_bytes(registry_repo.tokenizer_file.read_bytes())

    result = run_cli("lock", "--repo", registry_repo.path, "--embedder", "acme/tiny-embedder",
                     "--format", "json")

    assert result.code == 0, result.stderr
    version = json.loads(result.stdout)["chunk_version"]
    text = registry_repo.git("show", f"lock/{version}:configs/{version}.yaml")
    assert yaml.safe_load(text)["tokenizer_hash"] == file_hash(registry_repo.tokenizer_file)


def test_lock_needs_a_git_identity(registry_repo: RegistryRepo, isolated: Path) -> None:
    (isolated / ".gitconfig").write_text("[init]\n\tdefaultBranch = main\n")
    result = run_cli("lock", "--repo", registry_repo.path, "--tokenizer-file",
                     registry_repo.tokenizer_file)
    assert result.code == 6
    assert "git config user.name" in result.stderr
