"""The bad-input corpus: every hostile or broken registry file is one clear `path:line` problem,
never a traceback; and generated configs are accepted exactly when they are within bounds."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from registry.config import PREFIX_BUDGET_TOKENS, TOKEN_BUDGET
from registry.repository.state import parse_config_file
from tests.helpers import RegistryRepo, run_cli

VERSION = "2025-09-07-143022-v1"
GOOD = {
    "schema_version": 1,
    "chunk_version": VERSION,
    "chunk_size": 450,
    "overlap_ratio": 0.1,
    "jaccard_threshold": 0.8,
    "prefix_policy": "A",
    "embedder_name": "BAAI/bge-large-en-v1.5",
    "embedder_max_tokens": 512,
    "tokenizer_name": "BAAI/bge-large-en-v1.5",
    "tokenizer_hash": "sha256:" + "ab" * 32,
    "created_at": "2025-09-07T14:30:22Z",
    "created_by": "Ada <ada@example.com>",
    "baseline_metrics": {"oracle_hit_rate": 0.47},
}


def good_text(**changes: Any) -> str:
    data = {**GOOD, **changes}
    return yaml.safe_dump({k: v for k, v in data.items() if v is not ...}, sort_keys=False)


BILLION_LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8)
)

CORPUS: dict[str, tuple[bytes, str]] = {
    "malformed yaml": (b"chunk_size: [450\n", r"malformed YAML"),
    "tab indentation": (b"a:\n\tb: 1\n", r"malformed YAML"),
    "not a mapping": (b"- 1\n- 2\n", r"expected a mapping"),
    "empty file": (b"", r"expected a mapping"),
    "two documents": (good_text().encode() + b"---\na: 1\n", r"malformed YAML"),
    "wrong type": (good_text(chunk_size="450").encode(), r"chunk_size '450' should be of type integer"),
    "bool for int": (good_text(chunk_size=True).encode(), r"chunk_size true should be of type integer"),
    "unknown field": (good_text(chunk_sizee=450).encode(), r"unknown field chunk_sizee"),
    "missing field": (good_text(tokenizer_hash=...).encode(), r"required field tokenizer_hash is missing"),
    "chunk too big": (good_text(chunk_size=5000).encode(), r"above the hard cap 1000"),
    "chunk zero": (good_text(chunk_size=0).encode(), r"below the hard floor 1"),
    "negative overlap": (good_text(overlap_ratio=-0.1).encode(), r"below the hard floor 0"),
    "huge number": (good_text().replace("450", "9" * 400).encode(), r"too large"),
    "float overflow": (good_text().replace("0.1", "1e999").encode(), r"overflows a float"),
    "nan": (good_text().replace("0.8", ".nan").encode(), r"not a finite number"),
    "infinity": (good_text().replace("0.8", "-.inf").encode(), r"not a finite number"),
    "duplicate keys": (good_text().encode() + b"chunk_size: 300\n", r"duplicate key 'chunk_size'"),
    "billion laughs": (BILLION_LAUGHS.encode(), r"anchors and aliases are not allowed"),
    "merge key": (b"base: {a: 1}\nother:\n  <<: {a: 2}\n", r"only plain string keys"),
    "python tag": (b"chunk_size: !!python/object/apply:os.system ['true']\n", r"YAML tag"),
    "sql in version": (good_text(chunk_version="v1'; DROP TABLE x; --").encode(),
                       r"chunk_version .* does not have the required form"),
    "path in version": (good_text(chunk_version="../../etc/passwd").encode(),
                        r"does not have the required form"),
    "newline in version": (good_text(chunk_version=VERSION + "\n").encode(),
                           r"does not have the required form"),
    "unicode digits in version": (good_text(chunk_version="２025-09-07-143022-v1").encode(),
                                  r"does not have the required form"),
    "version too long": (good_text(chunk_version="2025-09-07-143022-v12345678").encode(),
                         r"(required form|wrong size)"),
    "non-utf8": (good_text().encode().replace(b"Ada", b"Ad\xe9"), r"not valid UTF-8"),
    "nul byte": (good_text().encode() + b"\x00", r"NUL byte"),
    "10 MB": (b"a: " + b"x" * (10 * 1024 * 1024) + b"\n", r"above the 65536-byte limit"),
    "over budget": (good_text(chunk_size=500).encode(), r"exceeds the token budget 512"),
    "bad metric": (good_text(baseline_metrics={"oracle_hit_rate": 7}).encode(), r"above the hard cap 1"),
}


def repo_with(registry_repo: RegistryRepo, name: str, raw: bytes) -> Path:
    target = registry_repo.path / "configs" / name
    target.write_bytes(raw)
    return target


@pytest.mark.parametrize("case", sorted(CORPUS))
def test_bad_config_is_one_located_problem(registry_repo: RegistryRepo, case: str) -> None:
    raw, expected = CORPUS[case]
    repo_with(registry_repo, f"{VERSION}.yaml", raw)

    result = run_cli("validate", "--repo", registry_repo.path)

    assert result.code == 1, (case, result.stdout, result.stderr)
    problems = [line for line in result.lines if re.match(r"^configs/[^:]+:\d+: ", line)]
    assert problems, result.stdout
    assert any(re.search(expected, line) for line in problems), (case, problems)
    assert "Traceback" not in result.stdout + result.stderr


def test_symlink_pointing_outside_the_repo_is_refused(registry_repo: RegistryRepo, tmp_path: Path) -> None:
    outside = tmp_path / "outside.yaml"
    outside.write_text(good_text())
    os.symlink(outside, registry_repo.path / "configs" / f"{VERSION}.yaml")

    result = run_cli("validate", "--repo", registry_repo.path)

    assert result.code == 1
    assert f"configs/{VERSION}.yaml:1: configs must be regular files, not symlinks (commit the file itself)" in result.lines


def test_committed_symlink_is_refused_at_a_ref(registry_repo: RegistryRepo) -> None:
    os.symlink("/etc/passwd", registry_repo.path / "configs" / f"{VERSION}.yaml")
    registry_repo.write("x", "", message="commit a symlink")

    result = run_cli("validate", "--repo", registry_repo.path, "--ref", "main")

    assert result.code == 1 and "not symlinks" in result.stdout


@pytest.mark.parametrize(
    ("production", "expected"),
    [
        (b"production: 2030-01-01-000000-v1\n", r"production names 2030-01-01-000000-v1"),
        (b"production: x'; drop table y\n", r"is not a chunk_version or null"),
        (b"production: null\ntables: {schema: pg_catalog}\n", r"tables.schema 'pg_catalog' is reserved"),
        (b"production: null\ntables: {base_name: Document-Chunks}\n", r"does not have the required form"),
        (b"production: null\nretention: {grace_period: forever}\n", r"does not have the required form"),
        (b"production: null\nproduction: null\n", r"duplicate key"),
        (b"{}\n", r"required field production is missing"),
    ],
)
def test_bad_production_file_is_one_located_problem(
    registry_repo: RegistryRepo, production: bytes, expected: str
) -> None:
    (registry_repo.path / "configs" / "production.yaml").write_bytes(production)

    result = run_cli("validate", "--repo", registry_repo.path)

    assert result.code == 1
    assert any(re.search(r"^configs/production\.yaml:\d+: .*" + expected, line) for line in result.lines), result.lines


def test_no_traceback_even_from_a_real_process(registry_repo: RegistryRepo) -> None:
    repo_with(registry_repo, f"{VERSION}.yaml", BILLION_LAUGHS.encode())
    proc = subprocess.run([sys.executable, "-m", "registry", "validate", "--repo",
                           str(registry_repo.path)], capture_output=True, text=True)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "anchors and aliases are not allowed" in proc.stdout


def test_not_a_repository_is_a_git_error(tmp_path: Path) -> None:
    result = run_cli("validate", "--repo", tmp_path)
    assert result.code == 6
    assert result.stderr == (f"error: {tmp_path} is not a git repository (pass --repo with the "
                             "registry repository's path, or run `git init` there)\n")


# ---------------------------------------------------------------------------------------------
# Generated configs: accepted exactly when within the schema bounds and guardrails.

numbers = st.one_of(st.integers(-5, 1200), st.floats(-1, 2, allow_nan=False))


@st.composite
def configs(draw: st.DrawFn) -> dict[str, Any]:
    data = dict(GOOD)
    data["chunk_size"] = draw(st.one_of(st.integers(-10, 1100), st.just(450)))
    data["overlap_ratio"] = draw(st.floats(-0.2, 0.8, allow_nan=False))
    data["jaccard_threshold"] = draw(st.floats(0.2, 1.2, allow_nan=False))
    data["prefix_policy"] = draw(st.sampled_from(["A", "B", "C", "a"]))
    data["embedder_max_tokens"] = draw(st.integers(0, 9000))
    data["chunk_version"] = draw(st.one_of(
        st.just(VERSION),
        st.from_regex(r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}-[0-9]{6}-v[0-9]{1,8}\Z"),
        st.text(max_size=30),
    ))
    return data


def expected_valid(data: dict[str, Any]) -> bool:
    """An independent statement of the rules (DESIGN section 2), not a copy of the code."""
    size, ratio = data["chunk_size"], data["overlap_ratio"]
    version_ok = re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}-[0-9]{6}-v[1-9][0-9]{0,5}",
                              data["chunk_version"]) is not None
    in_bounds = (
        1 <= size <= 1000 and 0 <= ratio <= 0.5 and 0.5 <= data["jaccard_threshold"] <= 1
        and data["prefix_policy"] in ("A", "B") and 16 <= data["embedder_max_tokens"] <= 8192
        and version_ok
    )
    if not in_bounds:
        return False
    budget = min(data["embedder_max_tokens"], TOKEN_BUDGET)
    overlap = math.floor(size * ratio + 0.5 + 1e-9)
    return size + PREFIX_BUDGET_TOKENS + 2 <= budget and (size == 1 or overlap < size)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs())
@pytest.mark.slow
def test_generated_configs_are_accepted_exactly_within_bounds(data: dict[str, Any]) -> None:
    from registry.config import guardrail_violations

    config, problems = parse_config_file(f"configs/{VERSION}.yaml", good_text(**data).encode())
    valid = config is not None and not problems and not guardrail_violations(config)
    assert valid == expected_valid(data), (data, problems)
    assert all(p.line >= 1 and p.message for p in problems)


def test_a_config_copied_under_another_name_is_reported_not_a_crash(registry_repo: RegistryRepo) -> None:
    """The parse cache is keyed by blob: the same bytes under a second name must be read again."""
    repo_with(registry_repo, f"{VERSION}.yaml", good_text().encode())
    registry_repo.write("x", "", message="lock")
    first = run_cli("validate", "--repo", registry_repo.path, "--ref", "main")
    registry_repo.git("mv", f"configs/{VERSION}.yaml", "configs/2025-09-07-143022-v9.yaml")
    registry_repo.write("x", "", message="rename it")

    renamed = run_cli("validate", "--repo", registry_repo.path, "--ref", "main")

    assert first.code == 0, first.stdout
    assert renamed.code == 1 and "Traceback" not in renamed.stdout + renamed.stderr
    assert "configs/2025-09-07-143022-v9.yaml:2: file name does not match chunk_version" in renamed.stdout
