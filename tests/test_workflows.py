"""The GitHub Actions workflows: linted (actionlint, zizmor), pinned, least-privilege, and
validate.yml proven by executing its `run:` steps locally on a PR-like checkout, the way the
runner would (bash -eo pipefail, GITHUB_* variables, a step summary file), following its call
of the reusable registry-validate.yml as GitHub does (inputs from `with:`, else defaults)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from registry.repository.git import Git
from registry.repository.lifecycle import tag
from tests.helpers import RegistryRepo, git

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / ".github" / "workflows"
BIN = Path(sys.executable).parent
INSTALL_STEP = "Install chunk-registry"
"""The one step not executed: the package under test is already installed in this venv."""


TOOL_REPO = "chunk-registry/chunk-registry"
"""Where registry repositories find the reusable workflows (`registry init --tool-repo`)."""


def load(name: str | Path) -> dict[Any, Any]:
    data: dict[Any, Any] = yaml.load((WORKFLOWS / name).read_text(), Loader=yaml.BaseLoader)
    return data


def called_workflow(uses: str) -> Path:
    """The file a job-level `uses:` calls: this repository's own (`$/` or `./`), or this
    repository's at a release tag or SHA (the file a registry repository pins is this one)."""
    for prefix in ("$/", "./"):
        if uses.startswith(prefix):
            return ROOT / uses.removeprefix(prefix)
    repo, _, rest = uses.partition("/.github/workflows/")
    assert repo == TOOL_REPO and "@" in rest, f"the local runner cannot call {uses}"
    return WORKFLOWS / rest.split("@")[0]


def steps_of(workflow: dict[Any, Any], context: dict[str, str]) -> Iterator[tuple[dict[Any, Any],
                                                                                 dict[str, str]]]:
    """Each step of each job with the context it runs in; a job that calls a reusable workflow
    runs that workflow's jobs with `inputs.*` from its `with:` (expanded), else the defaults."""
    for job in workflow["jobs"].values():
        if "uses" in job:
            called = load(called_workflow(job["uses"]))
            declared = called["on"]["workflow_call"].get("inputs") or {}
            given = {k: expand(v, context) for k, v in (job.get("with") or {}).items()}
            assert set(given) <= set(declared), f"{job['uses']} has no input {set(given) - set(declared)}"
            inputs = {f"inputs.{k}": given.get(k, spec.get("default", "")) for k, spec in declared.items()}
            yield from steps_of(called, {**context, **inputs})
            continue
        for step in job["steps"]:
            yield step, context


def test_actionlint_and_zizmor_pass_on_the_workflows() -> None:
    files = sorted(str(p) for p in WORKFLOWS.glob("*.yml"))
    assert [Path(f).name for f in files] == ["ci.yml", "reconcile.yml", "registry-reconcile.yml",
                                             "registry-validate.yml", "validate.yml"]
    lint = subprocess.run([str(BIN / "actionlint"), *files], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    audit = subprocess.run([str(BIN / "zizmor"), "--offline", "--no-progress", str(WORKFLOWS)],
                           capture_output=True, text=True)
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert "No findings to report" in audit.stdout + audit.stderr


def test_actions_are_pinned_by_commit_sha_and_permissions_are_least_privilege() -> None:
    pinned = re.compile(r"^\s+(?:- )?uses: ([\w.-]+/[\w.-]+)@([0-9a-f]{40}) # v\d+\.\d+\.\d+$")
    own = re.compile(r"^    uses: \$/\.github/workflows/registry-[a-z]+\.yml$")
    for path in WORKFLOWS.glob("*.yml"):
        uses = [line for line in path.read_text().splitlines() if "uses:" in line]
        assert uses, path.name
        for line in uses:
            assert pinned.match(line) or own.match(line), f"{path.name}: {line.strip()} is not pinned by SHA"
    assert load("validate.yml")["permissions"] == {"contents": "read"}
    assert load("ci.yml")["permissions"] == {"contents": "read"}
    reconcile = load("reconcile.yml")
    assert reconcile["permissions"] == {}
    assert reconcile["jobs"]["reconcile"]["permissions"] == {"contents": "write",
                                                             "pull-requests": "write"}
    assert reconcile["concurrency"] == {"group": "reconcile", "cancel-in-progress": "false"}
    assert set(reconcile["on"]) == {"push", "schedule", "workflow_dispatch"}
    called = load("registry-reconcile.yml")
    assert called["permissions"] == {}
    assert called["jobs"]["reconcile"]["permissions"] == {"contents": "write"}
    assert called["jobs"]["dashboard"]["permissions"] == {"contents": "read"}


def test_the_reusable_workflows_install_the_released_tool_never_the_checkout() -> None:
    """`pip install .` would judge a PR by its own edited validator: every install step names
    the release (the `version` input, which defaults to this package's version)."""
    import tomllib

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for name in ("registry-validate.yml", "registry-reconcile.yml"):
        workflow = load(name)
        assert set(workflow["on"]) == {"workflow_call"}
        assert workflow["on"]["workflow_call"]["inputs"]["version"]["default"] == version
        installs = [step["run"] for job in workflow["jobs"].values() for step in job["steps"]
                    if step.get("name") == INSTALL_STEP]
        assert installs and all("chunk-registry" in run and "==${VERSION}" in run
                                and " ." not in run for run in installs), installs
    for caller in ("validate.yml", "reconcile.yml"):
        jobs = load(caller)["jobs"]
        assert [job["with"]["version"] for job in jobs.values()] == [version]


# ---------------------------------------------------------------------------------------------
# validate.yml, run locally


@dataclass
class StepRun:
    name: str
    code: int
    stdout: str
    stderr: str


def expand(text: str, context: dict[str, str]) -> str:
    """`${{ github.x }}` from `context`; anything else fails loudly (the test would lie)."""
    def one(found: re.Match[str]) -> str:
        key = found.group(1).strip()
        assert key in context, f"the local runner does not know ${{{{ {key} }}}}"
        return context[key]

    return re.sub(r"\$\{\{(.*?)\}\}", one, text)


def run_workflow_steps(name: str | Path, workspace: Path, context: dict[str, str],
                       summary: Path) -> list[StepRun]:
    """Every `run:` step of the workflow's jobs, in order, as the runner would: bash -eo pipefail
    in the workspace, GITHUB_* set, step env expanded; a failed step skips the rest."""
    workflow = load(name)
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "CI": "true", "GITHUB_ACTIONS": "true", "GITHUB_WORKSPACE": str(workspace),
        "GITHUB_STEP_SUMMARY": str(summary), "GITHUB_EVENT_NAME": context["github.event_name"],
        "GITHUB_BASE_REF": context["github.base_ref"], "GITHUB_HEAD_REF": context["github.head_ref"],
    }
    runs: list[StepRun] = []
    for step, step_context in steps_of(workflow, context):
        if "run" not in step or step.get("name") == INSTALL_STEP:
            continue
        assert "if" not in step, "teach the local runner this step's `if:`"
        step_env = {k: expand(v, step_context) for k, v in (step.get("env") or {}).items()}
        proc = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c",
             expand(step["run"], step_context)],
            cwd=workspace, env={**env, **step_env}, capture_output=True, text=True,
        )
        runs.append(StepRun(step.get("name", step["run"]), proc.returncode, proc.stdout,
                            proc.stderr))
        if proc.returncode != 0:
            return runs
    return runs


def pr_checkout(repo: RegistryRepo, branch: str, tmp: Path) -> Path:
    """What actions/checkout makes of a pull_request event with fetch-depth 0: a clone with
    every branch and tag, HEAD detached at the merge of the PR branch into main."""
    repo.git("push", "--quiet", "origin", branch)
    repo.git("push", "--quiet", "origin", "--tags")
    workspace = tmp / "workspace"
    subprocess.run(["git", "clone", "--quiet", str(repo.origin), str(workspace)], check=True)
    git(workspace, "checkout", "--quiet", "--detach", "origin/main")
    git(workspace, "merge", "--quiet", "--no-ff", "--no-edit", f"origin/{branch}")
    return workspace


def cache_tokenizer(repo: RegistryRepo) -> None:
    """The tokenizer in the Hugging Face cache, where --strict finds it (CI downloads it)."""
    model = Path(os.environ["HF_HOME"]) / "hub" / "models--BAAI--bge-large-en-v1.5"
    snapshot = model / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "tokenizer.json").write_bytes(repo.tokenizer_file.read_bytes())
    (model / "refs").mkdir()
    (model / "refs" / "main").write_text("0" * 40)


def pr_context(branch: str) -> dict[str, str]:
    return {"github.event_name": "pull_request", "github.base_ref": "main",
            "github.head_ref": branch}


@pytest.mark.slow
def test_validate_workflow_passes_a_good_pr_and_summarises_the_plan(
    registry_repo: RegistryRepo, tmp_path: Path
) -> None:
    v1 = registry_repo.locked()
    tag(Git(registry_repo.path))
    v2 = registry_repo.lock(chunk_size=400)
    cache_tokenizer(registry_repo)
    workspace = pr_checkout(registry_repo, f"lock/{v2}", tmp_path)
    summary = tmp_path / "summary.md"

    runs = run_workflow_steps("validate.yml", workspace, pr_context(f"lock/{v2}"), summary)

    assert [(r.name, r.code) for r in runs] == [
        ("Validate the registry (strict, annotations on the files)", 0),
        ("Offline plan of the merge, into the job summary", 0),
    ], runs[-1].stderr
    assert "::error" not in runs[0].stdout
    text = summary.read_text()
    assert "registry validate passed" in text and "2 configs in the working tree" in text
    plan = text.split("### chunk-registry plan for `HEAD`")[1]
    assert f"| + | CreateTable | `document_chunks_{v2.replace('-', '_')}` |" in plan
    assert "Plan: 1 to create (against a database reconciled to origin/main)." in plan
    assert v1 not in plan


@pytest.mark.slow
def test_validate_workflow_fails_the_check_with_annotations_on_a_tampered_config(
    registry_repo: RegistryRepo, tmp_path: Path
) -> None:
    v1 = registry_repo.locked()
    tag(Git(registry_repo.path))
    cache_tokenizer(registry_repo)
    registry_repo.git("checkout", "--quiet", "-b", "edit-locked", "main")
    path = f"configs/{v1}.yaml"
    registry_repo.write(path, registry_repo.read(path).replace("chunk_size: 450",
                                                               "chunk_size: 2000"), "Bigger chunks")
    workspace = pr_checkout(registry_repo, "edit-locked", tmp_path)
    summary = tmp_path / "summary.md"

    runs = run_workflow_steps("validate.yml", workspace, pr_context("edit-locked"), summary)

    assert [(r.name, r.code) for r in runs] == [
        ("Validate the registry (strict, annotations on the files)", 1),
    ]
    annotations = runs[0].stdout.splitlines()
    assert any(line.startswith(f"::error file={path},line=") and "chunk_size 2000" in line
               for line in annotations), annotations
    assert any("tampering" in line for line in annotations), annotations
    assert "registry validate failed" in summary.read_text()


@pytest.mark.parametrize("name", ["registry-reconcile.yml", "ci.yml"])
def test_the_other_workflows_call_commands_that_exist(name: str) -> None:
    """Each `registry ...` a workflow runs parses against the real CLI (`--help` exits 0)."""
    from tests.helpers import run_cli

    workflow = load(name)
    commands = [line.strip() for job in workflow["jobs"].values() for step in job["steps"]
                for line in step.get("run", "").splitlines() if line.strip().startswith("registry ")]
    if name == "ci.yml":
        assert commands == [] and (ROOT / ".ci" / "run").exists()
        return
    assert commands
    for command in commands:
        argv = command.split(">>")[0].split()[1:]
        result = run_cli(*argv, "--help")
        assert result.code == 0, f"{command}: {result.stderr}"


@pytest.mark.slow
def test_the_pre_commit_hook_runs_registry_validate_on_the_repo(
    registry_repo: RegistryRepo,
) -> None:
    import shlex

    hooks = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    assert [h["id"] for h in hooks] == ["registry-validate"]
    hook = hooks[0]
    assert {"id", "name", "entry", "language"} <= set(hook) and hook["language"] == "python"
    assert hook["pass_filenames"] is False
    files = re.compile(hook["files"])
    assert files.search("configs/2025-09-07-143022-v1.yaml") and files.search("configs/production.yaml")
    assert not files.search("README.md") and not files.search("notes/configs/x.yaml")
    entry = shlex.split(hook["entry"])
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}

    def pre_commit_run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(entry, cwd=registry_repo.path, env=env, capture_output=True,
                              text=True)

    version = registry_repo.locked()
    clean = pre_commit_run()
    assert clean.returncode == 0, clean.stdout + clean.stderr
    path = f"configs/{version}.yaml"
    registry_repo.write(path, registry_repo.read(path).replace("overlap_ratio: 0.1",
                                                               "overlap_ratio: 0.9"))
    broken = pre_commit_run()
    assert broken.returncode == 1
    assert f"{path}:4: overlap_ratio 0.9" in broken.stdout, broken.stdout
