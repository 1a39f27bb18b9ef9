"""What an experiment must not break, on real git and real PostgreSQL: a router whose cache
could outlive the served grace is refused; a time that is not a real one is an invalid config
or a usage error, never a crash."""

from __future__ import annotations

import math

import psycopg
import pytest

from registry.database import bookkeeping
from registry.errors import UsageError
from registry.reconciler.served import SERVED_GRACE
from registry.serving import MAX_CHECK_INTERVAL_S, MAX_STALE_S, Router
from tests.helpers import RegistryRepo, run_cli
from tests.repository.test_promote_rollback import promoted

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
