"""`registry retire` across environments: added, removed, declared again, rolled back; the
refusal is one line with its exit code."""

from __future__ import annotations

import pytest

from registry.config import set_production_pointer
from tests.helpers import RegistryRepo, run_cli
from tests.test_environments_config import STAGING_YAML, with_staging

STAGING = "configs/environments/staging.yaml"


def _serve(repo: RegistryRepo, version: str) -> None:
    raw = (repo.path / STAGING).read_bytes()
    repo.write(STAGING, set_production_pointer(raw, version, "serves").decode(),
               f"Promote {version} to staging")


def test_retire_of_an_unknown_version_is_one_line(registry_repo: RegistryRepo) -> None:
    registry_repo.locked()
    unknown = run_cli("retire", "2020-01-01-000000-v9", "--repo", registry_repo.path)
    bad = run_cli("retire", "nonsense", "--repo", registry_repo.path)
    assert unknown.code not in (0, 1) and "Traceback" not in unknown.stderr
    assert bad.code not in (0, 1) and "Traceback" not in bad.stderr


def test_a_version_served_by_staging_and_production(registry_repo: RegistryRepo) -> None:
    v1 = registry_repo.locked()
    v2 = registry_repo.locked(chunk_size=400)
    assert run_cli("tag", "--repo", registry_repo.path).code == 0
    with_staging(registry_repo, v1)
    raw = (registry_repo.path / "configs/production.yaml").read_bytes()
    registry_repo.write("configs/production.yaml",
                        set_production_pointer(raw, v1, "production").decode(), "prod v1")
    result = run_cli("retire", v1, "--repo", registry_repo.path)
    assert result.code == 7 and "Traceback" not in result.stderr
    _serve(registry_repo, v2)
    result = run_cli("retire", v1, "--repo", registry_repo.path)
    assert result.code == 7


def test_staging_removed_and_declared_again(registry_repo: RegistryRepo) -> None:
    """Staging served v1 then v2, was removed, and is declared again serving v3: its rollback
    has nothing to return to, so nothing of its first life is protected."""
    _, v2, v3 = staging_served_v1_then_v2(registry_repo)
    registry_repo.git("rm", "--quiet", STAGING)
    registry_repo.git("commit", "--quiet", "-m", "Remove staging")
    registry_repo.git("push", "--quiet", "origin", "main")
    registry_repo.write(STAGING, STAGING_YAML.format(version=v3), "Declare staging again")
    rollback = run_cli("rollback", "--environment", "staging", "--repo", registry_repo.path)
    retire = run_cli("retire", v2, "--repo", registry_repo.path)
    assert rollback.code == 7 and "nothing to roll back to" in rollback.stderr
    assert retire.code == 0, retire.stderr


def test_staging_rolled_back_protects_the_new_target(registry_repo: RegistryRepo) -> None:
    v1, v2, v3 = staging_served_v1_then_v2(registry_repo)
    _serve(registry_repo, v3)
    rolled = run_cli("rollback", "--environment", "staging", "--repo", registry_repo.path)
    assert rolled.code == 0, rolled.stderr
    registry_repo.merge(f"rollback/staging/{v2}")
    registry_repo.git("checkout", "--quiet", "main")
    registry_repo.git("pull", "--quiet", "origin", "main")
    # staging serves v2 now; its rollback target is v1
    assert run_cli("retire", v2, "--repo", registry_repo.path).code == 7
    result = run_cli("retire", v1, "--repo", registry_repo.path)
    assert result.code == 7
    assert run_cli("retire", v3, "--repo", registry_repo.path).code == 0


@pytest.mark.parametrize(("path", "content"), [
    (STAGING, "serves: {version}\ntables: [\n"),  # malformed YAML
    (STAGING, "serves: {version}\nno_such_key: 1\n"),  # against the schema
    ("configs/environments/staging.yml", STAGING_YAML),  # misnamed
    ("configs/production.yaml", "production: {version}\ntables: [\n"),
])
def test_retire_refuses_while_an_environment_file_cannot_be_read(
        registry_repo: RegistryRepo, path: str, content: str) -> None:
    """A broken environment file still says what it serves: retiring that version went
    through (exit 0), and repairing the file then left the environment on a deleted config."""
    v1 = registry_repo.locked()
    assert run_cli("tag", "--repo", registry_repo.path).code == 0
    with_staging(registry_repo, "null" if path == "configs/production.yaml" else v1)
    if path.endswith(".yml"):
        registry_repo.git("mv", STAGING, path)
    registry_repo.write(path, content.format(version=v1), "Edit staging")
    result = run_cli("retire", v1, "--repo", registry_repo.path)
    assert result.code == 1, result
    assert result.stderr.startswith(f"error: {path}:"), result.stderr
    assert f"cannot retire {v1} while an environment file cannot be read" in result.stderr
    assert len(result.stderr.splitlines()) == 1


def staging_served_v1_then_v2(registry_repo: RegistryRepo) -> tuple[str, str, str]:
    """Three tagged versions; staging declared serving the first, then promoted to the
    second."""
    v1 = registry_repo.locked()
    v2 = registry_repo.locked(chunk_size=400)
    v3 = registry_repo.locked(chunk_size=350)
    assert run_cli("tag", "--repo", registry_repo.path).code == 0
    with_staging(registry_repo, v1)
    _serve(registry_repo, v2)
    return v1, v2, v3
