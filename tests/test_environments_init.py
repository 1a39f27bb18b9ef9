"""`registry init --staging` and the workflows: staging and production declared, one reconcile
job per environment in its own GitHub environment, lint-clean; the PR check plans every
environment the merge declares."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from registry.repository.git import Git
from registry.repository.lifecycle import tag
from tests.helpers import RegistryRepo, git, run_cli
from tests.test_workflows import BIN, load, pr_checkout, pr_context, run_workflow_steps


def test_init_staging_scaffolds_two_environments_that_validate_and_lint(tmp_path: Path) -> None:
    target = tmp_path / "team-registry"
    result = run_cli("init", target, "--staging")
    assert result.code == 0, result.stderr
    assert "wrote configs/environments/staging.yaml" in result.stdout
    assert run_cli("validate", "--repo", target).code == 0
    git(target, "add", "-A")
    git(target, "commit", "--quiet", "-m", "Start the registry")
    listed = run_cli("environments", "--repo", target, "--no-fetch", "--format", "json")
    assert listed.code == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [(r["name"], r["dsn_env"], r["registry"]) for r in rows] == [
        ("staging", "STAGING_DSN", "team-registry-staging"),
        ("production", "PRODUCTION_DSN", "team-registry")]
    assert rows[1]["promotion"]["from"] == "staging"

    reconcile = yaml.safe_load((target / ".github" / "workflows" / "reconcile.yml").read_text())
    jobs = reconcile["jobs"]
    assert list(jobs) == ["staging", "production"]
    assert jobs["production"]["needs"] == "staging"
    assert [j["with"]["environment"] for j in jobs.values()] == ["staging", "production"]
    assert jobs["production"]["with"]["source-dsn-env"] == "STAGING_DSN"
    files = sorted(str(p) for p in (target / ".github" / "workflows").glob("*.yml"))
    lint = subprocess.run([str(BIN / "actionlint"), *files], capture_output=True, text=True,
                          cwd=target)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    audit = subprocess.run([str(BIN / "zizmor"), "--offline", "--no-progress", str(target)],
                           capture_output=True, text=True, cwd=target)
    assert audit.returncode == 0, audit.stdout + audit.stderr


def test_the_reusable_reconcile_runs_each_command_for_its_environment() -> None:
    workflow = load("registry-reconcile.yml")
    inputs = workflow["on"]["workflow_call"]["inputs"]
    assert inputs["registry-environment"]["default"] == "production"
    runs = [line.strip() for job in workflow["jobs"].values() for step in job["steps"]
            for line in step.get("run", "").splitlines() if line.strip().startswith("registry ")]
    needs_database = [r for r in runs if not r.startswith("registry tag")]
    assert needs_database and all('--environment "$ENVIRONMENT"' in r for r in needs_database)
    for job in workflow["jobs"].values():
        assert job["environment"] == "${{ inputs.environment }}"


@pytest.mark.slow
def test_the_pr_check_plans_every_environment(registry_repo: RegistryRepo, tmp_path: Path,
                                              ) -> None:
    version = registry_repo.locked()
    tag(Git(registry_repo.path))
    registry_repo.write("configs/environments/staging.yaml",
                        "serves: null\ntables: {schema: staging, base_name: document_chunks}\n",
                        "Declare staging")
    registry_repo.git("checkout", "--quiet", "-b", f"promote/staging/{version}")
    registry_repo.write("configs/environments/staging.yaml",
                        f"serves: {version}\ntables: {{schema: staging, base_name: "
                        "document_chunks}\n", f"Promote {version} to staging")
    workspace = pr_checkout(registry_repo, f"promote/staging/{version}", tmp_path)
    summary = tmp_path / "summary.md"
    tokenizers = workspace / "tokenizers" / "BAAI" / "bge-large-en-v1.5"
    tokenizers.mkdir(parents=True)
    (tokenizers / "tokenizer.json").write_bytes(registry_repo.tokenizer_file.read_bytes())

    runs = run_workflow_steps("validate.yml", workspace,
                              pr_context(f"promote/staging/{version}"), summary)

    assert [(r.name, r.code) for r in runs][-1] == (
        "Offline plan of the merge, into the job summary", 0), runs[-1].stderr
    text = summary.read_text()
    assert ", staging)" in text
    staging = text.split(", staging)")[1]
    assert "SwapProduction" in staging and f"document_chunks_{version.replace('-', '_')}" in staging
