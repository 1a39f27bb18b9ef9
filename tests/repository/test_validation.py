"""`registry validate`: every invariant of DESIGN section 2, each as `path:line: message (fix)`."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from registry.repository.git import Git
from registry.repository.state import WORKTREE, read_state
from registry.repository.validation import Report, validate
from tests.helpers import RegistryRepo, run_cli


def validated(path: Path, **options: Any) -> Report:
    """`validate` of the working tree, as `registry validate` runs it."""
    git = Git(path)
    return validate(git, read_state(git, WORKTREE), **options)


def locked_text(registry_repo: RegistryRepo, version: str) -> str:
    return registry_repo.git("show", f"main:configs/{version}.yaml") + "\n"


def errors_of(registry_repo: RegistryRepo, ref: str | None = None) -> list[str]:
    args = ["validate", "--repo", registry_repo.path]
    if ref:
        args += ["--ref", ref]
    result = run_cli(*args)
    return [line for line in result.lines if not line.startswith(("ok:", "FAILED:", "warning:"))]


def test_a_fresh_lock_merged_and_tagged_validates_clean(registry_repo: RegistryRepo) -> None:
    registry_repo.locked()
    assert run_cli("tag", "--repo", registry_repo.path).code == 0
    result = run_cli("validate", "--repo", registry_repo.path,
                     "--tokenizer-file", f"BAAI/bge-large-en-v1.5={registry_repo.tokenizer_file}")
    assert result.code == 0, result.stdout + result.stderr
    assert result.lines[-1].startswith("ok: 1 configs in the working tree, 0 errors, 0 warnings")


def test_out_of_range_value_is_reported_at_its_line_with_the_fix(registry_repo: RegistryRepo) -> None:
    version = registry_repo.locked()
    text = locked_text(registry_repo, version).replace("chunk_size: 450", "chunk_size: 2000")
    registry_repo.write(f"configs/{version}.yaml", text)

    result = run_cli("validate", "--repo", registry_repo.path)

    assert result.code == 1
    assert (f"configs/{version}.yaml:3: chunk_size 2000 is above the hard cap 1000 "
            "(lock a new version with --chunk-size between 1 and 1000)") in result.lines


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (("overlap_ratio: 0.1", "overlap_ratio: 0.7"), r":4: overlap_ratio 0.7 is above the hard cap 0.5"),
        (("jaccard_threshold: 0.8", "jaccard_threshold: 0.3"), r":5: jaccard_threshold 0.3 is below the hard floor 0.5"),
        (("prefix_policy: A", "prefix_policy: C"), r":6: prefix_policy 'C' is not one of A, B"),
        (("chunk_size: 450", "chunk_size: '450'"), r":3: chunk_size '450' should be of type integer"),
        (("chunk_size: 450", "chunk_size: 450\nchunk_sise: 450"), r":4: unknown field chunk_sise"),
        (("embedder_max_tokens: 512\n", ""), r":1: required field embedder_max_tokens is missing"),
        (("chunk_size: 450", "chunk_size: 480"), r":3: chunk_size 480 \+ prefix budget 32 \+ 2 special tokens = 514 exceeds the token budget 512"),
        (("chunk_size: 450", "chunk_size: 450\nchunk_size: 400"), r":4: duplicate key 'chunk_size'"),
        (("chunk_size: 450", "chunk_size: [450"), r":\d+: malformed YAML"),
        (("chunk_size: 450", "chunk_size: .nan"), r":3: \.nan is not a finite number"),
        (("chunk_size: 450", "chunk_size: 0x1c2"), r":3: chunk_size '0x1c2' should be of type integer"),
        ((r"created_at: '[^']*'", "created_at: '2025-13-01T00:00:00Z'"),
         r":11: created_at '2025-13-01T00:00:00Z' is not a real UTC time"),
    ],
)
def test_each_schema_and_guardrail_violation_names_its_line(
    registry_repo: RegistryRepo, edit: tuple[str, str], expected: str
) -> None:
    version = registry_repo.locked()
    text = locked_text(registry_repo, version)
    edited = re.sub(edit[0], edit[1], text, count=1)
    assert edited != text
    registry_repo.write(f"configs/{version}.yaml", edited)

    errors = errors_of(registry_repo)

    assert any(re.search(re.escape(f"configs/{version}.yaml") + expected, e) for e in errors), errors


def test_file_name_must_equal_chunk_version(registry_repo: RegistryRepo) -> None:
    version = registry_repo.locked()
    registry_repo.git("mv", f"configs/{version}.yaml", "configs/2025-01-01-000000-v1.yaml")

    errors = errors_of(registry_repo)

    assert errors == [f"configs/2025-01-01-000000-v1.yaml:2: file name does not match chunk_version "
                      f"{version} (rename the file to configs/{version}.yaml or fix chunk_version)"]


def test_duplicate_versions_and_missing_production_are_reported(registry_repo: RegistryRepo) -> None:
    version = registry_repo.locked()
    registry_repo.write("configs/copy.yaml", locked_text(registry_repo, version))
    production = registry_repo.read("configs/production.yaml").replace(
        "production: null", "production: 2030-01-01-000000-v1")
    registry_repo.write("configs/production.yaml", production)

    errors = errors_of(registry_repo)

    assert any("configs/copy.yaml:2: chunk_version" in e and "already used" in e for e in errors) or \
        any(f"configs/{version}.yaml:2: chunk_version {version} is already used" in e for e in errors)
    assert ("configs/production.yaml:1: production names 2030-01-01-000000-v1, which is not a "
            "locked config in configs/ (lock that version first, or point production at an "
            "existing one)") in errors


def test_editing_a_tagged_config_is_reported_as_tampering(registry_repo: RegistryRepo) -> None:
    version = registry_repo.locked()
    assert run_cli("tag", "--repo", registry_repo.path).code == 0
    text = locked_text(registry_repo, version).replace("created_by: Test Locker", "created_by: Mallory")
    registry_repo.write(f"configs/{version}.yaml", text, message="quietly edit a locked config")

    errors = errors_of(registry_repo)

    assert errors == [
        f"configs/{version}.yaml:1: configs/{version}.yaml differs from the locked blob tagged "
        f"chunk-config/{version} (tampering: a locked config is immutable) (restore the tagged "
        "content and lock a new version for the change)"
    ]


def test_a_moved_tag_and_a_tag_off_main_are_reported(registry_repo: RegistryRepo) -> None:
    first = registry_repo.locked()
    second = registry_repo.locked(chunk_size=300)
    run_cli("tag", "--repo", registry_repo.path)
    registry_repo.git("tag", "-f", "-a", f"chunk-config/{first}", "-m", "moved", "main")
    registry_repo.git("checkout", "--quiet", "-b", "side", "main~1")
    registry_repo.write(f"configs/{second}.yaml", locked_text(registry_repo, second),
                        message="side branch copy")
    registry_repo.git("tag", "-f", "-a", f"chunk-config/{second}", "-m", "off main", "side")
    registry_repo.git("checkout", "--quiet", "main")

    errors = errors_of(registry_repo)

    assert any(e.startswith(f"configs/{first}.yaml:1: tag chunk-config/{first} was moved") for e in errors)
    assert any(e.startswith(f"configs/{second}.yaml:1: tag chunk-config/{second} points to commit")
               and "not on origin/main" in e for e in errors)


def test_a_config_pushed_straight_to_main_is_a_warning(registry_repo: RegistryRepo) -> None:
    version = registry_repo.lock()
    registry_repo.merge(f"lock/{version}", how="rebase")

    report = validated(registry_repo.path)

    assert report.ok
    assert [w.message for w in report.warnings if "without a pull request" in w.message]


def test_squash_merged_pr_is_not_flagged(registry_repo: RegistryRepo) -> None:
    version = registry_repo.lock()
    registry_repo.merge(f"lock/{version}", how="squash")

    report = validated(registry_repo.path)

    assert not [w for w in report.warnings if "without a pull request" in w.message]


def test_tokenizer_hash_mismatch_is_an_error_and_missing_tokenizer_a_warning(
    registry_repo: RegistryRepo, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from tests.helpers import build_tokenizer

    registry_repo.locked()
    other = build_tokenizer(tmp_path_factory.mktemp("other") / "tokenizer.json", vocab_size=3000)

    missing = validated(registry_repo.path)
    strict = validated(registry_repo.path, strict=True)
    mismatch = validated(registry_repo.path, tokenizer_files={"BAAI/bge-large-en-v1.5": other})

    assert missing.ok and any("cannot check the tokenizer hash" in w.message
                              for w in missing.warnings)
    assert not strict.ok and "cannot check the tokenizer hash" in strict.errors[0].message
    assert not mismatch.ok and "hashes to sha256:" in mismatch.errors[0].message


def test_validate_a_committed_ref_ignores_the_working_tree(registry_repo: RegistryRepo) -> None:
    version = registry_repo.locked()
    registry_repo.write(f"configs/{version}.yaml", "not: [valid")

    assert run_cli("validate", "--repo", registry_repo.path).code == 1
    assert run_cli("validate", "--repo", registry_repo.path, "--ref", "main").code == 0


def test_github_format_prints_annotations(registry_repo: RegistryRepo) -> None:
    version = registry_repo.locked()
    text = locked_text(registry_repo, version).replace("chunk_size: 450", "chunk_size: 0")
    registry_repo.write(f"configs/{version}.yaml", text)

    result = run_cli("validate", "--repo", registry_repo.path, "--format", "github")

    assert result.code == 1
    assert (f"::error file=configs/{version}.yaml,line=3,title=registry validate::chunk_size 0 "
            "is below the hard floor 1 (lock a new version with --chunk-size between 1 and 1000)"
            ) in result.lines


def test_json_format_lists_problems(registry_repo: RegistryRepo) -> None:
    registry_repo.write("configs/production.yaml", "production: [1, 2]\n")

    result = run_cli("validate", "--repo", registry_repo.path, "--format", "json")

    data = json.loads(result.stdout)
    assert result.code == 1 and data["ok"] is False and data["errors"] == 1
    assert data["problems"][0]["path"] == "configs/production.yaml"
    assert data["problems"][0]["line"] == 1


def test_usage_errors_exit_2(registry_repo: RegistryRepo) -> None:
    result = run_cli("validate", "--repo", registry_repo.path, "--format", "yaml")
    assert result.code == 2
