"""What an experiment must not break, on real git and real PostgreSQL: a router whose cache
could outlive the served grace is refused; a time that is not a real one is an invalid config
or a usage error, never a crash."""

from __future__ import annotations

import math
from pathlib import Path

import psycopg
import pytest
from psycopg.types.json import Jsonb

from registry.config import config_path, experiment_run, parse_rfc3339
from registry.database import bookkeeping
from registry.errors import Refused, UsageError
from registry.reconciler.served import SERVED_GRACE
from registry.repository.git import Git
from registry.repository.lifecycle import require_no_new_errors
from registry.serving import MAX_CHECK_INTERVAL_S, MAX_STALE_S, Router
from tests.database import Database, promote, table_of
from tests.helpers import RegistryRepo, run_cli
from tests.repository.test_promote_rollback import promoted
from tests.test_environments_e2e import staging_dsn, two_environments  # noqa: F401 - fixtures
from tests.test_health_eval import write_corpus

IMPOSSIBLE_TIMES = ("2026-02-30T00:00:00Z", "9999-12-31T23:59:59-01:00",
                    "0001-01-01T00:30:00+01:00")


def publish(dsn: str, table: str) -> None:
    with psycopg.connect(dsn) as conn:
        bookkeeping.ensure_schema(conn)
        with conn.transaction():
            bookkeeping.publish_served_state(
                conn, "r", "production", {"view": "public.v", "experiment": None,
                                          "production": {"version": "x", "table": table}},
                None, [("public", table.split(".")[1])])


def test_a_router_never_checks_less_often_than_the_served_grace_allows(dsn: str) -> None:
    # A cache names a table for up to one check interval (or the stale limit) after it left the
    # served state; the reconciler drops it SERVED_GRACE later.
    assert max(MAX_CHECK_INTERVAL_S, MAX_STALE_S) < SERVED_GRACE.total_seconds()
    for bad in (120.0, MAX_CHECK_INTERVAL_S + 0.001, -1.0, math.nan, math.inf):
        with pytest.raises(UsageError, match="check_interval") as caught:
            Router(dsn, check_interval=bad)
        assert "\n" not in str(caught.value)
    publish(dsn, "public.t1")
    now = [0.0]
    router = Router(dsn, check_interval=MAX_CHECK_INTERVAL_S, clock=lambda: now[0])
    assert router.table() == "public.t1"
    publish(dsn, "public.t2")  # t1 left the served state now: droppable after SERVED_GRACE
    now[0] = MAX_CHECK_INTERVAL_S
    assert router.table() == "public.t2"  # well within the grace
    assert Router(dsn, check_interval=0).table() == "public.t2"


@pytest.mark.parametrize("ends", IMPOSSIBLE_TIMES)
def test_a_committed_end_that_is_not_a_real_time_is_an_invalid_config(
    registry_repo: RegistryRepo, dsn: str, ends: str
) -> None:
    v1, v2 = registry_repo.locked(), registry_repo.locked(chunk_size=300)
    promoted(registry_repo, v1)
    base = registry_repo.read("configs/production.yaml")
    registry_repo.write("configs/production.yaml", base + (
        f"experiment:\n  name: x\n  candidate: {v2}\n  share: 0.1\n  salt: x\n"
        f"  ends: '{ends}'\n"), f"experiment ending {ends}")
    line = 1 + (base + "experiment:\n").count("\n") + 4
    for command in (("validate",), ("reconcile", "--no-fetch", "--dsn", dsn)):
        result = run_cli(*command, "--repo", registry_repo.path)
        out = result.stdout + result.stderr
        assert result.code == 1, (command, out)
        assert f"configs/production.yaml:{line}: experiment.ends" in out, out
        assert "unexpected" not in out and "Traceback" not in out
    listed = run_cli("list", "--repo", registry_repo.path)  # lists configs, whatever production
    assert listed.code == 0 and v2 in listed.stdout, listed.stderr


@pytest.mark.parametrize("ends", IMPOSSIBLE_TIMES)
def test_an_ends_option_that_is_not_a_real_time_is_a_usage_error(
    registry_repo: RegistryRepo, ends: str
) -> None:
    v1, v2 = registry_repo.locked(), registry_repo.locked(chunk_size=300)
    promoted(registry_repo, v1)
    run_cli("tag", "--repo", registry_repo.path, "--push")
    result = run_cli("experiment", "start", "x", "--candidate", v2, "--share", "0.1", "--ends",
                     ends, "--repo", registry_repo.path)
    assert result.code == 2, result.stdout + result.stderr
    assert "is not a real time" in result.stderr and len(result.stderr.splitlines()) == 1


@pytest.mark.slow
def test_promoting_or_retiring_a_running_candidate_is_refused_and_the_control_may_change(
    registry_repo: RegistryRepo,
) -> None:
    v1, v2, v3 = (registry_repo.locked(), registry_repo.locked(chunk_size=300),
                  registry_repo.locked(chunk_size=200))
    promoted(registry_repo, v1)

    def cli(*args: str) -> tuple[int, str]:
        result = run_cli(*args, "--repo", registry_repo.path)
        return result.code, result.stdout + result.stderr

    assert cli("tag", "--push")[0] == 0
    assert cli("experiment", "start", "exp", "--candidate", v2, "--share", "0.5", "--ends",
               "14d")[0] == 0
    registry_repo.merge("experiment/exp-start")
    for action in ("retire", "promote"):
        code, out = cli(action, v2)
        assert code == 7, out
        assert "it is the candidate of experiment exp in production" in out, out
        assert "end experiment exp first" in out and len(out.splitlines()) == 1
        assert f"{action}/{v2}" not in registry_repo.git("branch", "--list", f"{action}/*")
    code, out = cli("promote", v3)  # a new control mid-experiment is allowed
    assert code == 0, out
    assert cli("validate", "--ref", f"promote/{v3}")[0] == 0


@pytest.mark.slow
def test_every_change_command_refuses_a_commit_that_would_not_validate(
    two_environments: RegistryRepo,  # noqa: F811 - the fixture imported above
) -> None:
    repo = two_environments
    v1 = repo.locked()

    def cli(*args: str) -> tuple[int, str]:
        result = run_cli(*args, "--repo", str(repo.path))
        return result.code, result.stdout + result.stderr

    assert cli("tag")[0] == 0
    assert cli("promote", v1, "--environment", "staging")[0] == 0
    repo.merge(f"promote/staging/{v1}")
    # Retiring what staging serves (production serves nothing) would leave staging serving a
    # config that is gone: retire's own rule names it first.
    code, out = cli("retire", v1)
    assert code == 7, out
    assert f"cannot retire {v1}: it is what staging serves" in out, out
    assert len(out.splitlines()) == 1
    assert repo.git("branch", "--list", "retire/*") == ""
    # Behind each command's own rules, every change command validates the commit it wrote
    # before a branch names it: the same deletion, written without retire's rule, is refused.
    git = Git(repo.path)
    base = git.desired_ref(fetch=False)
    commit = git.commit_files(base, {config_path(v1): None}, f"Delete {v1}")
    with pytest.raises(Refused, match=rf"retire {v1} would not validate: "
                                      r"configs/environments/staging\.yaml"):
        require_no_new_errors(git, base, commit, f"retire {v1}")


@pytest.mark.slow
def test_an_ingest_into_the_running_candidates_table_is_guarded_like_productions(
    registry_repo: RegistryRepo, dsn: str, tmp_path: Path
) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    v1, v2 = registry_repo.locked(), registry_repo.locked(chunk_size=300)
    tokenizer = ("--tokenizer-file", str(registry_repo.tokenizer_file))

    def cli(*args: str | Path) -> tuple[int, str]:
        result = run_cli(*args, "--repo", registry_repo.path)
        return result.code, result.stdout + result.stderr

    assert cli("reconcile", "--dsn", dsn, "--source", corpus.path, *tokenizer)[0] == 0
    promote(registry_repo, v1)
    assert cli("reconcile", "--dsn", dsn)[0] == 0
    assert cli("tag", "--push")[0] == 0
    assert cli("experiment", "start", "exp", "--candidate", v2, "--share", "0.5", "--ends",
               "14d")[0] == 0
    registry_repo.merge("experiment/exp-start")
    code, out = cli("reconcile", "--dsn", dsn)
    assert code == 0 and f"read public.{table_of(v2)}" in out, out
    db = Database(dsn)
    before = db.count(table_of(v2))
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / "only.md").write_text("# Only\n\n" + "One registry document left. " * 30)

    code, out = cli("ingest", v2, "--dsn", dsn, "--source", truncated, *tokenizer)
    assert code == 7, out
    assert "routes readers to (an experiment's candidate)" in out, out
    assert db.count(table_of(v2)) == before
    code, out = cli("ingest", v2, "--dsn", dsn, "--source", truncated, "--into-production",
                    *tokenizer)
    assert code == 7 and "--max-change" in out, out
    assert db.count(table_of(v2)) == before

    # Ended, the candidate's table is a shadow again: refilled like any other.
    assert cli("experiment", "end")[0] == 0
    registry_repo.merge("experiment/exp-end")
    assert cli("reconcile", "--dsn", dsn)[0] == 0
    code, out = cli("ingest", v2, "--dsn", dsn, "--source", truncated, *tokenizer)
    assert code == 0, out
    assert db.count(table_of(v2)) < before


def test_outcomes_and_stops_of_a_version_11_database_are_given_the_served_run(dsn: str) -> None:
    """Migration 12: the running experiment's earlier outcomes and stop keep counting for it;
    an older run's rows keep no run, so they never count for the running one."""
    ends = "2030-01-01T00:00:00Z"
    with psycopg.connect(dsn, autocommit=True) as conn:
        for version in range(1, 12):
            for statement in bookkeeping.MIGRATIONS[version]():
                conn.execute(statement)
        conn.execute("INSERT INTO chunk_registry.schema_version (version) VALUES (11)")
        conn.execute(
            "INSERT INTO chunk_registry.served_state (registry, environment, state) VALUES "
            "('r', 'production', %s)", (Jsonb({
                "view": "public.v", "production": {"version": "v1", "table": "public.t1"},
                "experiment": {"name": "exp", "share": 0.5, "salt": "s", "ends": ends,
                               "candidate": {"version": "v2", "table": "public.t2"}}}),))
        for experiment in ("exp", "older"):
            conn.execute(
                "INSERT INTO chunk_registry.experiment_outcomes (registry, environment, "
                "experiment, arm, chunk_version, request_key, success) VALUES "
                "('r', 'production', %s, 'candidate', 'v2', 'k', true)", (experiment,))
        conn.execute("INSERT INTO chunk_registry.experiment_stops (registry, environment, "
                     "experiment, candidate) VALUES ('r', 'production', 'exp', 'v2')")

        assert bookkeeping.ensure_schema(conn) == bookkeeping.BOOKKEEPING_VERSION == 12

        run = experiment_run("v2", "s", parse_rfc3339(ends))
        assert conn.execute("SELECT experiment, run FROM chunk_registry.experiment_outcomes "
                            "ORDER BY experiment").fetchall() == [("exp", run), ("older", None)]
        assert bookkeeping.experiment_stop(conn, "r", "production", "exp", run) is not None
        assert bookkeeping.experiment_stop(conn, "r", "production", "exp", "v3:s:" + ends) is None
