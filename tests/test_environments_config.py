"""Environments declared in the repo (issue 17 item 1): configs/environments/<name>.yaml next
to production.yaml, read from a committed state into one list; a registry with only
production.yaml has one environment, production, exactly as before."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from registry.config import set_production_pointer
from registry.environments import environment_names, environments, select
from registry.errors import UsageError
from registry.repository.git import Git
from registry.repository.state import committed_state, read_state
from tests.helpers import PRODUCTION_YAML, RegistryRepo, run_cli

STAGING_YAML = """\
serves: {version}
tables: {{schema: staging, base_name: document_chunks}}
retention: {{grace_period: 1h, keep_previous: 1}}
dsn_env: STAGING_DSN
"""


def with_staging(repo: RegistryRepo, version: str = "null", *, soak: str = "24h") -> None:
    production = PRODUCTION_YAML.replace(
        "production: null", "registry: acme\nproduction: null\ndsn_env: PRODUCTION_DSN\n"
        f"promotion: {{from: staging, soak: {soak}, require_healthy: true}}")
    repo.write("configs/production.yaml", production)
    repo.write("configs/environments/staging.yaml", STAGING_YAML.format(version=version),
               "Declare staging and production")


def test_a_registry_with_only_production_yaml_has_one_environment(
    registry_repo: RegistryRepo,
) -> None:
    state = committed_state(Git(registry_repo.path))
    assert environment_names(state) == ["production"]
    [production] = environments(state)
    assert production.name == "production" and production.path == "configs/production.yaml"
    assert production.settings is state.settings
    assert production.dsn_env is None and production.promotion is None


def test_environment_files_are_read_into_one_list(registry_repo: RegistryRepo) -> None:
    version = registry_repo.locked()
    with_staging(registry_repo, version)
    state = committed_state(Git(registry_repo.path))
    assert state.errors == []
    assert environment_names(state) == ["staging", "production"]
    staging = select(state, "staging")
    assert staging.settings.production == version
    assert staging.settings.environment == "staging"
    assert (staging.settings.schema, staging.settings.grace_period) == ("staging", timedelta(hours=1))
    assert staging.settings.identity == "acme-staging"
    assert state.settings.identity == "acme"
    assert staging.is_production(version) and not state.is_production(version)
    envs = {e.name: e for e in environments(state)}
    assert envs["staging"].dsn_env == "STAGING_DSN"
    assert envs["staging"].path == "configs/environments/staging.yaml"
    promotion = envs["production"].promotion
    assert promotion is not None
    assert (promotion.source, promotion.soak, promotion.require_healthy) == (
        "staging", timedelta(hours=24), True)
    # The working tree reads the same.
    assert environment_names(read_state(Git(registry_repo.path))) == ["staging", "production"]


def test_an_unknown_environment_is_a_usage_error(registry_repo: RegistryRepo) -> None:
    state = committed_state(Git(registry_repo.path))
    with pytest.raises(UsageError, match="no environment qa"):
        select(state, "qa")


@pytest.mark.parametrize(("staging", "production_extra", "expected"), [
    ("serves: 2025-01-01-000000-v9\n", "", "serves names 2025-01-01-000000-v9"),
    ("serves: null\nbogus: 1\n", "", "unknown field bogus"),
    ("serves: null\n", "promotion: {from: qa, soak: 24h}\n", "promotion.from names qa"),
    ("serves: null\npromotion: {from: staging, soak: 1h}\n", "",
     "promotion.from names staging itself"),
    ("serves: null\ntables: {schema: stg, base_name: document_chunks}\nregistry: acme\n",
     "registry: acme\n", "the same registry identity acme"),
    ("serves: null\ntables: {schema: public, base_name: document_chunks}\nregistry: stg\n",
     "registry: acme\n", "both use tables public.document_chunks"),
    ("serves: null\ndsn_env: postgres://u:p@h/db\n", "", "dsn_env"),
])
def test_bad_environment_files_are_problems_with_path_and_line(
    registry_repo: RegistryRepo, staging: str, production_extra: str, expected: str
) -> None:
    registry_repo.write("configs/production.yaml", PRODUCTION_YAML + production_extra)
    registry_repo.write("configs/environments/staging.yaml", staging, "Add staging")
    result = run_cli("validate", "--repo", registry_repo.path, "--ref", "main")
    assert result.code == 1, result.stdout + result.stderr
    assert expected in result.stdout + result.stderr
    assert "configs/" in result.stdout + result.stderr


SAME_TABLES = "tables: {schema: public, base_name: document_chunks}\n"


@pytest.mark.parametrize(("production_extra", "staging_extra", "shared"), [
    ("", "", True),
    ("", "registry: stg\n", True),
    ("registry: acme\n", "registry: acme-stg\n", True),
    ("dsn_env: PROD_DSN\n", "dsn_env: PROD_DSN\n", True),
    ("", "dsn_env: STAGING_DSN\n", True),
    ("dsn_env: PROD_DSN\n", "dsn_env: STAGING_DSN\nregistry: stg\n", False),
], ids=["unnamed", "staging-named", "both-named", "same-dsn-env", "one-dsn-env",
        "own-databases"])
def test_environments_that_can_share_a_database_never_share_tables(
    registry_repo: RegistryRepo, production_extra: str, staging_extra: str, shared: bool
) -> None:
    """A `registry:` name never keeps two environments' tables apart (reviewer's t3: a named
    staging swapped production's view); only their own databases or tables do."""
    registry_repo.write("configs/production.yaml", PRODUCTION_YAML + production_extra)
    registry_repo.write("configs/environments/staging.yaml",
                        "serves: null\n" + SAME_TABLES + staging_extra, "Add staging")

    result = run_cli("validate", "--repo", registry_repo.path, "--ref", "main")

    out = result.stdout + result.stderr
    if shared:
        assert result.code == 1, out
        assert "configs/environments/staging.yaml:2: environments production and staging both "\
            "use tables public.document_chunks" in out
        assert "own tables.schema or tables.base_name" in out
        assert "registry:` name" not in out
    else:
        assert result.code == 0, out
        assert "both use tables" not in out


def test_a_bad_environment_file_name_is_a_problem(registry_repo: RegistryRepo) -> None:
    registry_repo.write("configs/environments/Prod_2.yaml", "serves: null\n", "Add an env")
    result = run_cli("validate", "--repo", registry_repo.path, "--ref", "main")
    assert result.code == 1
    assert "configs/environments/Prod_2.yaml" in result.stdout + result.stderr


def test_validate_accepts_staging_and_production(registry_repo: RegistryRepo) -> None:
    version = registry_repo.locked()
    with_staging(registry_repo, version)
    result = run_cli("validate", "--repo", registry_repo.path, "--ref", "main")
    assert result.code == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_rollbacks_per_environment_and_the_path_never_holds_a_rollback_back(
    registry_repo: RegistryRepo,
) -> None:
    from registry.config import set_production_pointer

    v1 = registry_repo.locked()
    v2 = registry_repo.locked(chunk_size=400)
    assert run_cli("tag", "--repo", registry_repo.path).code == 0
    with_staging(registry_repo, v1)
    staging_path = "configs/environments/staging.yaml"
    production_path = "configs/production.yaml"

    def point(path: str, version: str, key: str) -> None:
        raw = (registry_repo.path / path).read_bytes()
        registry_repo.write(path, set_production_pointer(raw, version, key).decode(),
                            f"Point {path} at {version}")

    point(production_path, v1, "production")
    point(staging_path, v2, "serves")
    point(production_path, v2, "production")

    result = run_cli("rollback", "--repo", registry_repo.path)
    assert result.code == 0, result.stderr
    plan = run_cli("plan", "--repo", registry_repo.path, "--base", "main", "--head",
                   f"rollback/{v1}")
    assert plan.code == 0, plan.stdout + plan.stderr
    assert "not what staging serves" not in plan.stdout

    result = run_cli("rollback", "--repo", registry_repo.path, "--environment", "staging")
    assert result.code == 0, result.stderr
    branch = f"rollback/staging/{v1}"
    assert registry_repo.git("diff", "--name-only", "main", branch) == staging_path
    staged = select(read_state(Git(registry_repo.path), branch), "staging")
    assert staged.settings.production == v1
    plan = run_cli("plan", "--repo", registry_repo.path, "--base", "main", "--head", branch,
                   "--environment", "staging")
    assert plan.code == 0, plan.stdout + plan.stderr
    assert ", staging)" in plan.stdout


BROKEN_STAGING = {
    "malformed YAML": ("serves: null\ntables: {schema: staging, base_name: document_chunks}\n"
                       "retention: {grace_period: 6h\n", 4, "malformed YAML"),
    "against the schema": ("serves: null\ntables: {schema: staging, base_name: "
                           "document_chunks}\nbogus: 1\n", 3, "unknown field bogus"),
}


def environment_commands() -> list[str]:
    """Every command taking --environment (walking the typer app: a new one is covered)."""
    from tests.test_exit_codes import leaf_commands

    return sorted(path for path, command in leaf_commands().items()
                  if any(p.name == "environment" for p in command.params))


@pytest.mark.parametrize("broken", sorted(BROKEN_STAGING))
@pytest.mark.slow
def test_an_invalid_environment_file_is_its_problem_for_every_command(
    registry_repo: RegistryRepo, dsn: str, tmp_path: Path, broken: str
) -> None:
    """--environment staging with a staging.yaml that is there but invalid: that file's
    problem (exit 1, path:line), never `no environment staging` (exit 2), in every command."""
    text, line, message = BROKEN_STAGING[broken]
    version = registry_repo.locked()
    registry_repo.write("configs/environments/staging.yaml", text, "Declare staging, broken")
    repo, db = ["--repo", str(registry_repo.path)], ["--dsn", dsn]
    cases = tmp_path / "cases.jsonl"
    cases.write_text('{"query_id": "q1", "query": "what", "gt_answer": "that"}\n')
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.md").write_text("# A\n\nSome text.\n")
    arguments = {
        "promote": [version, *repo, *db], "rollback": repo, "plan": [*repo, *db],
        "reconcile": [*repo, *db], "status": [*repo, *db],
        "eval": [version, "--cases", str(cases), *repo, *db], "health": [*repo, *db, "--no-record"],
        "ingest": [version, "--source", str(corpus), "--tokenizer-file",
                   str(registry_repo.tokenizer_file), *repo, *db],
        "dashboard": ["--out", str(tmp_path / "dash"), *repo, *db],
        "watch-promotion": [*repo, *db],
        "experiment start": ["e", "--candidate", version, "--share", "0.1", "--ends", "7d",
                             *repo],
        "experiment set-share": ["0.5", *repo], "experiment end": repo,
        "experiment report": [*repo, *db],
    }
    assert environment_commands() == sorted(arguments), "a command taking --environment here"
    runs = [[*path.split(), "--environment", "staging", *args]
            for path, args in arguments.items()]
    runs.append(["plan", "--base", "main", "--head", "main", "--environment", "staging", *repo])
    wrong = []
    for argv in runs:
        result = run_cli(*argv)
        err = result.stderr.strip()
        if (result.code != 1 or len(err.splitlines()) != 1 or not err.startswith(
                f"error: configs/environments/staging.yaml:{line}: {message}")):
            wrong.append(f"registry {' '.join(argv[:2])}: exit {result.code}: {err[:300]}")
    assert not wrong, "\n".join(wrong)


def test_an_invalid_environment_file_on_base_does_not_hide_a_pr_that_fixes_it(
    registry_repo: RegistryRepo,
) -> None:
    """The offline plan of a PR repairing staging.yaml plans staging from nothing, as for a
    PR declaring it (base's broken file was never applied), instead of refusing base's file."""
    registry_repo.locked()
    text, _, _ = BROKEN_STAGING["against the schema"]
    registry_repo.write("configs/environments/staging.yaml", text, "Declare staging, broken")
    registry_repo.git("checkout", "--quiet", "-b", "fix-staging")
    registry_repo.write("configs/environments/staging.yaml", STAGING_YAML.format(
        version="null"), "Fix staging")
    result = run_cli("plan", "--base", "main", "--head", "fix-staging", "--environment",
                     "staging", "--repo", registry_repo.path)
    assert result.code == 0, result.stdout + result.stderr


def test_an_environment_file_misnamed_yml_is_its_problem(registry_repo: RegistryRepo) -> None:
    registry_repo.write("configs/environments/staging.yml", "serves: null\n", "Add staging")
    result = run_cli("status", "--environment", "staging", "--repo", registry_repo.path)
    assert result.code == 1, result.stderr
    assert result.stderr.startswith("error: configs/environments/staging.yml:1: "), result.stderr


def test_rollback_names_the_environment_in_use(registry_repo: RegistryRepo) -> None:
    """Every refusal of `rollback --environment staging` names staging, and its fix is a
    command for staging."""
    version = registry_repo.locked()
    with_staging(registry_repo)
    never = run_cli("rollback", "--environment", "staging", "--repo", registry_repo.path)
    assert never.code == 7, never.stderr
    assert "production" not in never.stderr, never.stderr
    assert "staging has never moved" in never.stderr
    assert "`registry promote VERSION --environment staging`" in never.stderr
    raw = (registry_repo.path / "configs/environments/staging.yaml").read_bytes()
    registry_repo.write("configs/environments/staging.yaml",
                        set_production_pointer(raw, version, "serves").decode(),
                        f"Promote {version} to staging")
    first = run_cli("rollback", "--environment", "staging", "--repo", registry_repo.path)
    assert first.code == 7, first.stderr
    assert f"{version} is the first staging version" in first.stderr
    assert "production" not in first.stderr, first.stderr


def test_retire_refuses_what_any_environment_serves_or_rolls_back_to(
    registry_repo: RegistryRepo,
) -> None:
    """A config is repo-wide: retiring what staging serves, or staging's rollback target,
    would leave staging pointing at a deleted config (its PR then fails validation)."""
    v1 = registry_repo.locked()
    v2 = registry_repo.locked(chunk_size=400)
    v3 = registry_repo.locked(chunk_size=350)
    assert run_cli("tag", "--repo", registry_repo.path).code == 0
    with_staging(registry_repo, v1)
    staging_path = "configs/environments/staging.yaml"

    def serve(version: str) -> None:
        raw = (registry_repo.path / staging_path).read_bytes()
        registry_repo.write(staging_path, set_production_pointer(raw, version, "serves").decode(),
                            f"Promote {version} to staging")

    serve(v2)
    served = run_cli("retire", v2, "--repo", registry_repo.path)
    assert served.code == 7, served.stderr
    assert f"cannot retire {v2}: it is what staging serves" in served.stderr
    assert "promote another version --environment staging first" in served.stderr
    previous = run_cli("retire", v1, "--repo", registry_repo.path)
    assert previous.code == 7, previous.stderr
    assert (f"cannot retire {v1}: it is the previous version of staging, what `registry "
            "rollback --environment staging` returns to") in previous.stderr

    serve(v3)  # keep_previous 1: v2 is now the rollback target, v1 nobody's
    assert run_cli("retire", v1, "--repo", registry_repo.path).code == 0
    assert run_cli("retire", v2, "--repo", registry_repo.path).code == 7
