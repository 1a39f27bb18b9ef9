"""The composite action (`action.yml` at the repository root) that registry repositories pin by
tag or SHA: linted (zizmor on the action, actionlint on a workflow that uses it with each
command), pinned, installing the released tool only, and its `run:` steps executed locally as
the runner would (bash -eo pipefail, inputs with their defaults, `if:` conditions, GITHUB_*
files) for validate on a PR-like checkout and reconcile, watch and dashboard on a real
database, as tests/test_workflows.py runs the reusable workflows."""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from registry.commands.data import ingest
from registry.commands.reconcile import reconcile
from registry.repository.git import Git
from registry.repository.lifecycle import tag
from tests.database import promote
from tests.helpers import RegistryRepo, git
from tests.test_health_eval import write_corpus
from tests.test_workflows import (
    BIN,
    INSTALL_STEP,
    ROOT,
    StepRun,
    cache_tokenizer,
    pr_checkout,
    pr_context,
)

ACTION = ROOT / "action.yml"
COMMANDS = ("validate", "reconcile", "watch", "dashboard")


def load_action() -> dict[Any, Any]:
    data: dict[Any, Any] = yaml.load(ACTION.read_text(), Loader=yaml.BaseLoader)
    return data


def evaluate(expression: str, context: dict[str, str]) -> str:
    """An expression of the forms the action uses: a name, or `a || b` (the first non-empty)."""
    for name in (part.strip() for part in expression.split("||")):
        assert name in context, f"the local runner does not know {name}"
        if context[name]:
            return context[name]
    return ""


def expand(text: str, context: dict[str, str]) -> str:
    return re.sub(r"\$\{\{(.*?)\}\}", lambda m: evaluate(m.group(1), context), text)


def runs_if(condition: str | None, context: dict[str, str], failed: bool) -> bool:
    """A step's `if:` (none means success()); only the forms the action uses are understood."""
    if condition is None:
        return not failed
    found = re.fullmatch(r"\$\{\{ inputs\.command == '(\w+)'( && !cancelled\(\))? \}\}",
                         condition)
    assert found, f"teach the local runner this `if:`: {condition}"
    return context["inputs.command"] == found[1] and (found[2] is not None or not failed)


def run_action(inputs: dict[str, str], workspace: Path, context: dict[str, str],
               runner: Path) -> tuple[list[StepRun], dict[str, str]]:
    """Every `run:` step the action would run with `inputs`, and its outputs."""
    action = load_action()
    declared = action["inputs"]
    assert set(inputs) <= set(declared), set(inputs) - set(declared)
    context = {**context, "github.token": context.get("github.token", "")}
    values = {f"inputs.{name}": inputs.get(name, expand(spec.get("default", ""), context))
              for name, spec in declared.items()}
    context = {**context, **values}
    summary, output = runner / "summary.md", runner / "output"
    output.write_text("")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "CI": "true",
           "GITHUB_ACTIONS": "true", "GITHUB_WORKSPACE": str(workspace),
           "GITHUB_STEP_SUMMARY": str(summary), "GITHUB_OUTPUT": str(output),
           "RUNNER_TEMP": str(runner)}
    runs: list[StepRun] = []
    failed = False
    for step in action["runs"]["steps"]:
        if "run" not in step or step.get("name") == INSTALL_STEP:
            continue
        if not runs_if(step.get("if"), context, failed):
            continue
        assert step["shell"] == "bash"
        step_env = {k: expand(v, context) for k, v in (step.get("env") or {}).items()}
        proc = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c",
                               expand(step["run"], context)],
                              cwd=workspace, env={**env, **step_env}, capture_output=True,
                              text=True)
        runs.append(StepRun(step["name"], proc.returncode, proc.stdout, proc.stderr))
        failed = failed or proc.returncode != 0
    outputs = dict(line.split("=", 1) for line in output.read_text().splitlines() if "=" in line)
    return runs, outputs


def test_the_action_is_linted_pinned_and_installs_only_the_release(tmp_path: Path) -> None:
    audit = subprocess.run([str(BIN / "zizmor"), "--offline", "--no-progress", str(ACTION)],
                           capture_output=True, text=True)
    assert audit.returncode == 0, audit.stdout + audit.stderr
    # actionlint checks a workflow's `uses: ./` inputs against action.yml.
    project = tmp_path / "caller"
    (project / ".github" / "workflows").mkdir(parents=True)
    (project / "action.yml").write_text(ACTION.read_text())
    git(project, "init", "--quiet")
    jobs = {command: {"runs-on": "ubuntu-24.04", "permissions": {"contents": "read"}, "steps": [
        {"uses": "./", "with": {"command": command, "dsn": "${{ secrets.REGISTRY_DSN }}"}}]}
        for command in COMMANDS}
    (project / ".github" / "workflows" / "use.yml").write_text(yaml.safe_dump(
        {"name": "use", "on": {"pull_request": None}, "permissions": {}, "jobs": jobs}))
    lint = subprocess.run([str(BIN / "actionlint")], cwd=project, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr

    action = load_action()
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert action["runs"]["using"] == "composite"
    assert action["inputs"]["version"]["default"] == version
    steps = action["runs"]["steps"]
    [install] = [s for s in steps if s.get("name") == INSTALL_STEP]
    assert "chunk-registry${extra}==${VERSION}" in install["run"] and " ." not in install["run"]
    pinned = re.compile(r"^[\w.-]+/[\w.-]+@[0-9a-f]{40}$")
    assert all(pinned.match(s["uses"]) for s in steps if "uses" in s)
    assert all("${{" not in s.get("run", "") for s in steps), "inputs reach run: only via env"


@pytest.mark.slow
def test_the_action_validates_a_pr_and_refuses_an_unknown_command(
    registry_repo: RegistryRepo, tmp_path: Path
) -> None:
    registry_repo.locked()
    tag(Git(registry_repo.path))
    v2 = registry_repo.lock(chunk_size=400)
    cache_tokenizer(registry_repo)
    workspace = pr_checkout(registry_repo, f"lock/{v2}", tmp_path)
    runner = tmp_path / "runner"
    runner.mkdir()

    runs, _ = run_action({"command": "validate"}, workspace, pr_context(f"lock/{v2}"), runner)
    wrong, _ = run_action({"command": "deploy"}, workspace, pr_context(f"lock/{v2}"), runner)

    assert [(r.name, r.code) for r in runs] == [
        ("Check the command", 0),
        ("Validate (strict, annotations on the files) and the offline plan of the merge", 0),
    ], runs[-1].stderr
    text = (runner / "summary.md").read_text()
    assert "registry validate passed" in text
    assert f"`document_chunks_{v2.replace('-', '_')}`" in text
    assert [(r.name, r.code) for r in wrong] == [("Check the command", 2)]
    assert "::error title=chunk-registry::command must be" in wrong[0].stdout


@pytest.mark.slow
def test_the_action_reconciles_watches_and_publishes_the_dashboard(
    registry_repo: RegistryRepo, dsn: str, tmp_path: Path
) -> None:
    """Reconcile (health warnings do not fail it), watch, then the dashboard of a table emptied
    behind the registry's back: published, with the critical verdict as an output."""
    corpus = write_corpus(tmp_path / "data")
    version = registry_repo.locked()
    registry_repo.write("eval/cases.jsonl", corpus.cases.read_text(), "Eval cases")
    registry_repo.write("tokenizers/BAAI/bge-large-en-v1.5/tokenizer.json",
                        registry_repo.tokenizer_file.read_bytes(), "Pin the tokenizer")
    reconcile(registry_repo.path, dsn=dsn)
    ingest(registry_repo.path, version, corpus.path, dsn=dsn,
           tokenizer_file=registry_repo.tokenizer_file, workers=1)
    promote(registry_repo, version)
    workspace = tmp_path / "workspace"
    subprocess.run(["git", "clone", "--quiet", str(registry_repo.origin), str(workspace)],
                   check=True)
    runner = tmp_path / "runner"
    runner.mkdir()
    context = {"github.base_ref": "", "github.token": ""}

    reconciled, _ = run_action({"command": "reconcile", "dsn": dsn}, workspace, context, runner)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"TRUNCATE public.document_chunks_{version.replace('-', '_')}")
    watched, _ = run_action({"command": "watch", "dsn": dsn}, workspace, context, runner)
    published, outputs = run_action({"command": "dashboard", "dsn": dsn}, workspace, context,
                                    runner)

    assert [(r.name, r.code) for r in reconciled] == [
        ("Check the command", 0),
        ("Tag newly locked configs and reconcile PostgreSQL with main", 0),
        ("Health, into the job summary", 0),
    ], reconciled[-1].stdout + reconciled[-1].stderr
    assert git(registry_repo.origin, "tag", "--list") == f"chunk-config/{version}"
    assert [(r.name, r.code) for r in watched][-1][1] in (0, 1)
    assert [(r.name, r.code) for r in published] == [
        ("Check the command", 0), ("Record today's health report and build the dashboard", 0),
    ], published[-1].stdout + published[-1].stderr
    assert outputs["health-exit"] == "19"
    assert Path(outputs["dashboard"]) == runner / "dashboard" / "index.html"
    assert Path(outputs["dashboard"]).stat().st_size > 1_000_000
    assert "registry health" in (runner / "summary.md").read_text().lower()
