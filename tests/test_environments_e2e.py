"""Staging, then production (issue 17 item 1), end to end on real git and PostgreSQL: two
environments with two databases, each DSN from its own variable; a version reaches production
only after staging served it for the soak with a passing health report, and the rule holds in
`registry promote`, in the offline PR plan and in the reconciler. Time is simulated through
the recorded timestamps (staging's promoted_at moved back), never by sleeping."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from registry.config import set_production_pointer
from tests.database import Database, promote, table_of
from tests.helpers import PRODUCTION_YAML, RegistryRepo, run_cli
from tests.test_health_eval import Corpus, write_corpus

STAGING_YAML = """\
serves: null
tables: {schema: staging, base_name: document_chunks}
retention: {grace_period: 1h, keep_previous: 1}
dsn_env: STAGING_DSN
"""


@pytest.fixture
def staging_dsn(pg_server: str) -> Iterator[str]:
    """A second fresh database on the same server: staging's."""
    name = f"s_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield make_conninfo(pg_server, dbname=name)
    with psycopg.connect(pg_server, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                      (name,))
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')


@pytest.fixture
def corpus(tmp_path: Path) -> Corpus:
    return write_corpus(tmp_path / "corpus")


@pytest.fixture
def two_environments(
    registry_repo: RegistryRepo, dsn: str, staging_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> RegistryRepo:
    """staging (its own database and schema) and production, which takes versions from
    staging after a 24h soak with passing health."""
    monkeypatch.setenv("STAGING_DSN", staging_dsn)
    monkeypatch.setenv("PRODUCTION_DSN", dsn)
    monkeypatch.delenv("REGISTRY_DSN", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    production = PRODUCTION_YAML.replace(
        "production: null", "registry: acme\nproduction: null\ndsn_env: PRODUCTION_DSN\n"
        "promotion: {from: staging, soak: 24h, require_healthy: true}")
    registry_repo.write("configs/production.yaml", production)
    registry_repo.write("configs/environments/staging.yaml", STAGING_YAML,
                        "Declare staging and production")
    return registry_repo


def cli(repo: RegistryRepo, *args: str) -> tuple[int, str]:
    result = run_cli(*args, "--repo", str(repo.path))
    return result.code, result.stdout + result.stderr


def promote_and_merge(repo: RegistryRepo, version: str, *env: str) -> None:
    code, out = cli(repo, "promote", version, *env)
    assert code == 0, out
    branch = f"promote/{env[-1]}/{version}" if env else f"promote/{version}"
    repo.merge(branch)


def soak(staging_dsn: str, version: str, hours: float) -> None:
    """Pretend staging has served `version` for `hours` more: its promoted_at moved back."""
    Database(staging_dsn).execute(
        "UPDATE chunk_registry.managed_tables SET promoted_at = promoted_at - make_interval("
        "secs => %s) WHERE chunk_version = %s AND status = 'production'", (hours * 3600, version))


@pytest.mark.slow
def test_staging_then_production_after_the_soak(
    two_environments: RegistryRepo, dsn: str, staging_dsn: str, corpus: Corpus
) -> None:
    repo = two_environments
    version = repo.locked()
    assert cli(repo, "tag")[0] == 0
    tokenizer = ("--tokenizer-file", str(repo.tokenizer_file))

    code, out = cli(repo, "environments", "--format", "json")
    assert code == 0, out
    listed = json.loads(out)
    assert [e["name"] for e in listed] == ["staging", "production"]
    assert listed[1]["promotion"] == {"from": "staging", "soak": 86400, "require_healthy": True}

    # Production cannot take a version staging never served.
    code, out = cli(repo, "promote", version)
    assert code == 7, out
    assert "not what staging serves (nothing)" in out
    assert f"registry promote {version} --environment staging" in out

    promote_and_merge(repo, version, "--environment", "staging")
    code, out = cli(repo, "reconcile", "--environment", "staging", "--source",
                    str(corpus.path), *tokenizer)
    assert code == 0, out
    staging = Database(staging_dsn, schema="staging")
    assert staging.view_target() == [table_of(version)]
    assert staging.query("SELECT registry FROM chunk_registry.managed_tables") == [
        ("acme-staging",)]
    # Production's database is untouched by staging's reconcile.
    assert Database(dsn).query("SELECT to_regnamespace('chunk_registry')") == [(None,)]

    code, out = cli(repo, "status", "--environment", "staging", "--format", "json")
    assert code == 0, out
    row = next(r for r in json.loads(out)["configs"] if r["chunk_version"] == version)
    assert row["production"] and row["status"] == "Synced"

    # Before the soak: refused in one line that says how long remains.
    soak(staging_dsn, version, 3)
    code, out = cli(repo, "promote", version)
    assert code == 7, out
    error = [line for line in out.splitlines() if line.strip()]
    assert len(error) == 1, out
    assert "has soaked in staging for 3h" in out, out
    assert "of 24h" in out and ("20h 59m remain" in out or "21h remain" in out), out

    # After the soak, still no health report: refused (require_healthy).
    soak(staging_dsn, version, 22)
    code, out = cli(repo, "promote", version)
    assert code == 7 and "no passing health report" in out, out

    code, out = cli(repo, "health", "--environment", "staging", *tokenizer)
    assert code in (0, 18), out  # warnings (no eval cases) pass; critical (19) would not
    code, out = cli(repo, "watch-promotion", "--environment", "staging", "--format", "json")
    assert code == 0, out
    assert json.loads(out)["outcome"] != "pending", out  # staging's database serves main's
    code, out = cli(repo, "dashboard", "--environment", "staging", "--out",
                    str(corpus.path.parent / "dashboard"), "--format", "json")
    assert code == 0, out
    page = (corpus.path.parent / "dashboard" / "index.html").read_text()
    assert "(staging)" in page and table_of(version) in page
    code, out = cli(repo, "promote", version)
    assert code == 0, out
    message = repo.git("log", "-1", "--format=%B", f"promote/{version}")
    assert "Promotion path:" in message and "soaked in staging" in message
    repo.merge(f"promote/{version}")

    code, out = cli(repo, "reconcile", "--source", str(corpus.path), *tokenizer)
    assert code == 0, out
    assert Database(dsn).view_target() == [table_of(version)]
    assert Database(dsn).query("SELECT registry FROM chunk_registry.managed_tables") == [
        ("acme",)]


@pytest.mark.slow
def test_the_reconciler_and_the_pr_plan_hold_a_merged_promotion_back(
    two_environments: RegistryRepo, dsn: str, staging_dsn: str, corpus: Corpus
) -> None:
    repo = two_environments
    version = repo.locked()
    assert cli(repo, "tag")[0] == 0
    tokenizer = ("--tokenizer-file", str(repo.tokenizer_file))

    # A PR pointing production at a version staging does not serve fails its plan check.
    repo.git("checkout", "--quiet", "-b", "sneak")
    raw = (repo.path / "configs" / "production.yaml").read_bytes()
    repo.write("configs/production.yaml", set_production_pointer(raw, version).decode(),
               f"Promote {version} straight to production")
    code, out = cli(repo, "plan", "--base", "main", "--head", "sneak")
    assert code == 7, out
    assert "not what staging serves" in out

    # Through staging, the same PR passes the offline check (the soak is checked online).
    repo.git("checkout", "--quiet", "main")
    promote_and_merge(repo, version, "--environment", "staging")
    repo.git("checkout", "--quiet", "sneak")
    repo.git("merge", "--quiet", "main", "-m", "Merge main")
    code, out = cli(repo, "plan", "--base", "main", "--head", "sneak")
    assert code == 0, out
    assert "checks the 24h soak and health in staging's database" in out
    code, out = cli(repo, "plan", "--base", "main", "--head", "sneak", "--environment", "staging")
    assert code == 0, out

    assert cli(repo, "reconcile", "--environment", "staging", "--source", str(corpus.path),
               *tokenizer)[0] == 0
    repo.merge("sneak")

    # Merged before the soak: the reconciler creates the table but refuses the swap.
    code, out = cli(repo, "reconcile", "--source", str(corpus.path), *tokenizer)
    assert code == 7, out
    assert "soaked in staging for 0s of 24h" in out or "soaked in staging for" in out
    assert "remain" in out
    production = Database(dsn)
    assert production.relkind("document_chunks") is None
    code, out = cli(repo, "plan", "--detailed-exitcode")
    assert code == 17 and "remain" in out, out

    soak(staging_dsn, version, 25)
    assert cli(repo, "health", "--environment", "staging", *tokenizer)[0] in (0, 18)
    code, out = cli(repo, "reconcile")
    assert code == 0, out
    assert production.view_target() == [table_of(version)]


@pytest.mark.slow
def test_a_missing_environment_dsn_is_one_line(
    two_environments: RegistryRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STAGING_DSN")
    code, out = cli(two_environments, "status", "--environment", "staging")
    assert code == 2, out
    assert "environment staging reads its database from STAGING_DSN, which is not set" in out
    code, out = cli(two_environments, "status", "--environment", "qa")
    assert code == 2 and "no environment qa" in out, out


@pytest.mark.parametrize("staging_name", ["", "registry: stg\n"], ids=["unnamed", "named"])
def test_a_staging_on_productions_tables_never_reaches_the_database(
    registry_repo: RegistryRepo, dsn: str, staging_name: str
) -> None:
    """Reviewer's t3: staging with production's tables (named as the old advice said) had its
    reconcile swap production's view. Now both environments' reconciles refuse before any SQL
    (exit 1), and production's view and tables are as they were."""
    repo = registry_repo
    v1, v2 = repo.locked(), repo.locked(chunk_size=300)
    assert run_cli("reconcile", "--repo", repo.path, "--dsn", dsn).code == 0
    db = Database(dsn)
    db.fill(table_of(v1))
    db.fill(table_of(v2))
    promote(repo, v1)
    assert run_cli("reconcile", "--repo", repo.path, "--dsn", dsn).code == 0
    repo.write("configs/environments/staging.yaml", f"{staging_name}serves: {v2}\n"
               "tables: {schema: public, base_name: document_chunks}\n", "staging")
    rows = "SELECT registry, table_name, status FROM chunk_registry.managed_tables ORDER BY 2"
    before = db.query(rows)

    for environment in ("staging", "production"):
        result = run_cli("reconcile", "--repo", repo.path, "--dsn", dsn,
                         "--environment", environment)
        assert result.code == 1, result.stdout + result.stderr
        assert "both use tables public.document_chunks" in result.stderr + result.stdout

    assert db.view_target() == [table_of(v1)]
    assert db.query(rows) == before
