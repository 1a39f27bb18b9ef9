"""`registry init`: a team's registry repository that validates, plans and lints as generated,
and a rerun that changes nothing and overwrites nothing."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from registry.config import ProductionConfig
from registry.repository.scaffold import FILES, README_MARKER
from tests.helpers import RegistryRepo, git, run_cli
from tests.test_workflows import BIN, pr_checkout, pr_context, run_workflow_steps


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_init_makes_a_registry_repo_that_validates_and_a_rerun_is_a_no_op(tmp_path: Path) -> None:
    target = tmp_path / "team-registry"

    first = run_cli("init", target)

    assert first.code == 0, first.stderr
    assert (target / ".git").is_dir() and git(target, "branch", "--show-current") == "main"
    for path in [*FILES, "README.md"]:
        assert f"wrote {path}" in first.stdout
    production = yaml.safe_load((target / "configs" / "production.yaml").read_text())
    assert production["production"] is None
    assert ProductionConfig.from_mapping(production) == ProductionConfig(
        production=None, registry="team-registry")
    assert not (target / "schemas").exists()  # the schemas ship inside the wheel
    assert run_cli("validate", "--repo", target).code == 0
    before = {p: p.read_bytes() for p in target.rglob("*") if p.is_file() and ".git/" not in str(p)}

    again = run_cli("init", target)

    assert again.code == 0
    assert again.stdout.strip().endswith("nothing to do")
    assert {p: p.read_bytes() for p in before} == before


def test_init_refuses_to_overwrite_a_file_that_differs_and_writes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "team-registry"
    workflow = target / ".github" / "workflows" / "validate.yml"
    workflow.parent.mkdir(parents=True)
    workflow.write_text("name: our own validate\n")

    result = run_cli("init", target)

    assert result.code == 11
    assert result.stderr.count("\n") == 1
    assert ".github/workflows/validate.yml exists with other content" in result.stderr
    assert workflow.read_text() == "name: our own validate\n"
    assert not (target / "configs").exists() and not (target / ".git").exists()


def test_init_appends_its_section_to_an_existing_readme_once(tmp_path: Path) -> None:
    target = tmp_path / "docs-repo"
    target.mkdir()
    git(target, "init", "--quiet", "-b", "trunk")
    (target / "README.md").write_text("# Our search\n\nHow we index.\n")

    assert run_cli("init", target).code == 0
    assert run_cli("init", target).code == 0

    text = (target / "README.md").read_text()
    assert text.startswith("# Our search\n\nHow we index.\n\n" + README_MARKER)
    assert text.count(README_MARKER) == 1
    assert git(target, "branch", "--show-current") == "trunk"  # an existing repo is kept


def test_init_pins_the_release_by_tag_or_by_sha(tmp_path: Path) -> None:
    from registry.repository.scaffold import tool_version

    version = tool_version()
    by_tag = run_cli("init", tmp_path / "a", "--tool-repo", "acme/chunk-registry")
    sha = "0123456789abcdef0123456789abcdef01234567"
    by_sha = run_cli("init", tmp_path / "b", "--pin-sha", sha)
    assert by_tag.code == 0 and by_sha.code == 0
    validate = (tmp_path / "a" / ".github" / "workflows" / "validate.yml").read_text()
    assert f"uses: acme/chunk-registry/.github/workflows/registry-validate.yml@v{version}\n" in validate
    assert f'version: "{version}"' in validate
    hook = yaml.safe_load((tmp_path / "a" / ".pre-commit-config.yaml").read_text())
    assert hook["repos"][0]["repo"] == "https://github.com/acme/chunk-registry"
    assert hook["repos"][0]["rev"] == f"v{version}"
    pinned = (tmp_path / "b" / ".github" / "workflows" / "reconcile.yml").read_text()
    assert f"registry-reconcile.yml@{sha} # v{version}\n" in pinned
    assert run_cli("init", tmp_path / "c", "--pin-sha", "v1").code == 2


def test_the_generated_workflows_pass_actionlint_and_zizmor(tmp_path: Path) -> None:
    target = tmp_path / "team-registry"
    assert run_cli("init", target).code == 0
    files = sorted(str(p) for p in (target / ".github" / "workflows").glob("*.yml"))
    assert len(files) == 2
    lint = subprocess.run([str(BIN / "actionlint"), *files], capture_output=True, text=True,
                          cwd=target)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    audit = subprocess.run([str(BIN / "zizmor"), "--offline", "--no-progress", str(target)],
                           capture_output=True, text=True, cwd=target)
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert "No findings to report" in audit.stdout + audit.stderr


@pytest.mark.slow
def test_the_generated_validate_workflow_passes_a_pr_offline_with_a_pinned_tokenizer(
    tmp_path: Path, tokenizer_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No HF cache, HF_HUB_OFFLINE unset and the hub unreachable: the tokenizer committed at
    tokenizers/<name>/tokenizer.json is what --strict checks, and nothing waits on the network."""
    origin = tmp_path / "origin.git"
    subprocess.run(["git", "init", "--quiet", "--bare", "-b", "main", str(origin)], check=True)
    path = tmp_path / "registry"
    assert run_cli("init", path).code == 0
    git(path, "remote", "add", "origin", str(origin))
    pinned = path / "tokenizers" / "acme" / "wordpiece" / "tokenizer.json"
    pinned.parent.mkdir(parents=True)
    pinned.write_bytes(tokenizer_file.read_bytes())
    git(path, "add", "-A")
    git(path, "commit", "--quiet", "-m", "Start the registry")
    git(path, "push", "--quiet", "-u", "origin", "main")
    repo = RegistryRepo(path=path, origin=origin, tokenizer_file=tokenizer_file)
    version = repo.lock(tokenizer="acme/wordpiece", tokenizer_file=None)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    workspace = pr_checkout(repo, f"lock/{version}", tmp_path)
    summary = tmp_path / "summary.md"

    started = time.monotonic()
    runs = run_workflow_steps(path / ".github" / "workflows" / "validate.yml", workspace,
                              pr_context(f"lock/{version}"), summary)

    assert [(r.name, r.code) for r in runs] == [
        ("Validate the registry (strict, annotations on the files)", 0),
        ("Offline plan of the merge, into the job summary", 0),
    ], runs[-1].stdout + runs[-1].stderr
    assert "::error" not in runs[0].stdout and "::warning" not in runs[0].stdout
    assert "Plan: 1 to create" in summary.read_text()
    assert time.monotonic() - started < 30


def test_lock_outside_a_registry_says_to_run_init(tmp_path: Path, tokenizer_file: Path) -> None:
    path = tmp_path / "not-yet"
    path.mkdir()
    git(path, "init", "--quiet", "-b", "main")
    (path / "notes.md").write_text("x\n")
    git(path, "add", "-A")
    git(path, "commit", "--quiet", "-m", "notes")

    result = run_cli("lock", "--repo", path, "--tokenizer-file", tokenizer_file)

    assert result.code == 1
    assert "configs/production.yaml is missing on main" in result.stderr
    assert "run `registry init`" in result.stderr
    assert git(path, "branch", "--list", "lock/*") == ""


def test_a_schema_error_points_at_the_packaged_schema_not_a_repo_file(
    registry_repo: RegistryRepo,
) -> None:
    registry_repo.write("configs/production.yaml", "production: null\nmonitoring: {window: 5}\n")

    result = run_cli("validate", "--repo", registry_repo.path)

    assert result.code == 1
    line = next(line for line in result.stdout.splitlines() if "window" in line)
    assert "shipped inside the chunk-registry package" in line and "see schemas/" not in line
