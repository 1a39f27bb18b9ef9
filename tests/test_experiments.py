"""A/B experiments end to end on real git (a bare origin, changes merged as pull requests through
the local GitHub API) and real PostgreSQL: started by a PR, materialized by the reconciler into
the served state and the candidate's view, traffic split over 100k keys, keys stable as the
share grows, outcomes recorded and judged, the guardrail stop's PR, and the served grace."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from registry.commands import experiment as experiment_commands
from registry.commands.reconcile import reconcile
from registry.config import Guardrails
from registry.errors import (
    ConfigInvalid,
    DatabaseUnavailable,
    Refused,
    ServedStateUnavailable,
    UnknownVersion,
    UsageError,
)
from registry.quality.experiment import ArmStats, judge, two_proportion_z, wilson
from registry.repository.git import Git
from registry.repository.lifecycle import experiment_end, experiment_set_share, experiment_start
from registry.routing import POINT_SQL, point
from registry.serving import Router
from tests.database import Database, retire, table_of
from tests.github_server import FakeGitHub, acme_origin
from tests.helpers import RegistryRepo, run_cli
from tests.repository.test_promote_rollback import promoted
from tests.test_environments_e2e import staging_dsn, two_environments  # noqa: F401 - fixtures

TOKEN = "ghp_Exper0123456789abcdefABCDEF0123456789ab"
KEYS = [f"user-{i}" for i in range(100_000)]


@pytest.fixture
def github(registry_repo: RegistryRepo, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeGitHub]:
    with acme_origin(registry_repo, monkeypatch, TOKEN) as server:
        yield server


@dataclass
class Running:
    repo: RegistryRepo
    db: Database
    control: str
    candidate: str

    def reconcile(self, now: datetime | None = None) -> object:
        return reconcile(self.repo.path, dsn=self.db.dsn, fetch=False, now=now)

    def router(self) -> Router:
        """A router that refreshes only when told (`refresh`), as if every check were due."""
        return Router(self.db.dsn, clock=lambda: 0.0)

    def served(self) -> tuple[int, dict[str, object]]:
        rows = self.db.query("SELECT version, state FROM chunk_registry.served_state")
        assert len(rows) == 1
        return int(rows[0][0]), rows[0][1]


def start_experiment(repo: RegistryRepo, dsn: str, github: FakeGitHub, *, share: float = 0.1,
                     guardrails: Guardrails | None = None) -> Running:
    """v1 production, v2 filled; `registry experiment start --pr` merged and reconciled."""
    db = Database(dsn)
    v1, v2 = repo.locked(), repo.locked(chunk_size=300)
    reconcile(repo.path, dsn=dsn, fetch=False)
    db.fill(table_of(v1), 3)
    db.fill(table_of(v2), 5)
    promoted(repo, v1)
    running = Running(repo, db, v1, v2)
    running.reconcile()
    change = experiment_commands.start(repo.path, "smaller-chunks", v2, share=share, ends="14d",
                                       salt="s1", guardrails=guardrails, pr=True)
    assert change.proposal is not None and change.proposal.number == 1
    posts = [r for r in github.received if r.method == "POST"]
    assert [(p.body["head"], p.body["base"]) for p in posts] == [
        ("experiment/smaller-chunks-start", "main")]
    assert "## Plan" in posts[0].body["body"] and v2 in posts[0].body["body"]
    assert f"experiment smaller-chunks starts: {share:.0%} of request keys" in posts[0].body["body"]
    repo.merge("experiment/smaller-chunks-start")
    running.reconcile()
    return running


def share_of(router: Router, keys: list[str]) -> tuple[float, set[str]]:
    """The share of `keys` routed to the candidate's table, and those keys."""
    table = router.refresh().candidate_table
    assert table is not None
    candidate = {k for k in keys if router.table(key=k) == table}
    return len(candidate) / len(keys), candidate


@pytest.mark.slow
def test_an_experiment_started_by_pr_splits_traffic_and_keys_stay_as_the_share_grows(
    registry_repo: RegistryRepo, dsn: str, github: FakeGitHub
) -> None:
    s = start_experiment(registry_repo, dsn, github)
    version, state = s.served()
    experiment = state["experiment"]
    assert isinstance(experiment, dict)
    assert experiment["candidate"]["table"] == f"public.{table_of(s.candidate)}"
    assert state["production"]["table"] == f"public.{table_of(s.control)}"  # type: ignore[index]
    assert experiment["view"] == "public.document_chunks_candidate"
    # SQL clients route without Python: the candidate's view, and the same point in SQL.
    assert s.db.view_target("document_chunks_candidate") == [table_of(s.candidate)]
    assert s.db.count("document_chunks_candidate") == 5
    assert s.db.view_target() == [table_of(s.control)]
    for key in ("user-1", "user-2", "ключ-3"):
        in_sql = s.db.query("SELECT " + POINT_SQL.format(salt="%s", key="%s"), ("s1", key))
        assert in_sql[0][0] == point("s1", key)

    router = s.router()
    share, at_ten = share_of(router, KEYS)
    tolerance = 4.5 * math.sqrt(0.1 * 0.9 / len(KEYS))  # 4.5 sigma: a flake is ~1 in 150,000
    assert abs(share - 0.1) < tolerance, share
    assert {router.table(key=k) for k in KEYS} == {f"public.{table_of(s.control)}",
                                                   f"public.{table_of(s.candidate)}"}
    assert router.table() == f"public.{table_of(s.control)}"

    # A reconcile with nothing new keeps the version; growing the share bumps it.
    s.reconcile()
    assert s.served()[0] == version
    grown = experiment_set_share(Git(registry_repo.path), 0.5)
    assert grown.branch == "experiment/smaller-chunks-share-50"
    registry_repo.merge(grown.branch)
    s.reconcile()
    assert s.served()[0] == version + 1
    share, at_fifty = share_of(router, KEYS)
    assert abs(share - 0.5) < 4.5 * math.sqrt(0.25 / len(KEYS)), share
    assert at_ten <= at_fifty  # every key in the candidate at 10% is still there at 50%

    # Ending it (a PR like the others): every key reads production, the view goes.
    ended = experiment_end(Git(registry_repo.path), reason="enough data")
    registry_repo.merge(ended.branch)
    s.reconcile()
    assert s.served()[1]["experiment"] is None
    router.refresh()
    assert {router.table(key=k) for k in KEYS[:1000]} == {f"public.{table_of(s.control)}"}
    assert s.db.relkind("document_chunks_candidate") is None


def planted(router: Router, metric: str, control_rate: float, candidate_rate: float,
            keys: int, seed: int) -> None:
    rng = random.Random(seed)
    for i in range(keys):
        key = f"{metric}-{i}"
        rate = candidate_rate if router.arm(key) == "candidate" else control_rate
        assert router.record_outcome(key, rng.random() < rate, metric=metric) is not None


@pytest.mark.slow
def test_outcomes_are_recorded_per_arm_and_the_report_finds_a_planted_effect_only(
    registry_repo: RegistryRepo, dsn: str, github: FakeGitHub
) -> None:
    s = start_experiment(registry_repo, dsn, github, share=0.5)
    router = s.router()
    planted(router, "better", 0.50, 0.55, 4000, seed=1)
    planted(router, "equal", 0.50, 0.50, 4000, seed=2)
    arms = dict(s.db.query("SELECT arm, count(*) FROM chunk_registry.experiment_outcomes "
                           "WHERE metric = 'better' GROUP BY arm"))
    assert sum(arms.values()) == 4000 and abs(arms["candidate"] - 2000) < 200
    versions = dict(s.db.query("SELECT DISTINCT arm, chunk_version FROM "
                               "chunk_registry.experiment_outcomes"))
    assert versions == {"control": s.control, "candidate": s.candidate}

    def report(metric: str) -> dict[str, object]:
        result = run_cli("experiment", "report", "--metric", metric, "--repo", registry_repo.path,
                         "--dsn", dsn, "--no-fetch", "--format", "json")
        assert result.code == 0, result.stderr
        return json.loads(result.stdout)  # type: ignore[no-any-return]

    better, equal = report("better"), report("equal")
    assert better["verdict"] == "candidate better", better
    assert 0.02 < better["difference"] < 0.08  # type: ignore[operator]
    low, high = better["difference_ci95"]  # type: ignore[misc]
    assert 0 < low < 0.05 < high
    assert equal["verdict"] == "no significant difference", equal
    text = run_cli("experiment", "report", "--metric", "better", "--repo", registry_repo.path,
                   "--dsn", dsn, "--no-fetch")
    assert "candidate better" in text.stdout and "two-proportion z-test" in text.stdout


@pytest.mark.slow
def test_a_candidate_that_breaks_a_guardrail_gets_one_pr_ending_the_experiment(
    registry_repo: RegistryRepo, dsn: str, github: FakeGitHub
) -> None:
    rails = Guardrails(success_rate_max_drop=0.05, min_outcomes=200)
    s = start_experiment(registry_repo, dsn, github, share=0.5, guardrails=rails)
    router = s.router()

    def watch() -> tuple[int, dict[str, object]]:
        result = run_cli("watch-promotion", "--repo", registry_repo.path, "--dsn", dsn,
                         "--no-fetch", "--format", "json")
        assert result.code in (0, 1), result.stderr
        return result.code, json.loads(result.stdout)["experiment"]

    planted(router, "success", 0.60, 0.58, 600, seed=3)  # within the guardrail
    code, within = watch()
    assert (code, within["outcome"]) == (0, "within"), within
    planted(router, "success", 0.60, 0.30, 1200, seed=4)
    code, stopped = watch()
    assert (code, stopped["outcome"]) == (1, "proposed"), stopped
    posts = [r for r in github.received if r.method == "POST"]
    assert len(posts) == 2 and posts[1].body["head"] == "experiment/smaller-chunks-stop"
    assert "## Guardrail stop: experiment `smaller-chunks`" in posts[1].body["body"]
    assert "below the control's" in posts[1].body["body"]
    code, again = watch()
    assert (code, again["outcome"]) == (1, "already-proposed")
    assert [r.method for r in github.received].count("POST") == 2

    registry_repo.merge("experiment/smaller-chunks-stop")
    s.reconcile()
    assert s.served()[1]["experiment"] is None
    code, after = watch()
    assert (code, after["outcome"]) == (0, "no-experiment")


def test_a_table_served_moments_ago_is_kept_past_the_grace_period(
    registry_repo: RegistryRepo, dsn: str, github: FakeGitHub
) -> None:
    s = start_experiment(registry_repo, dsn, github)
    retirement = registry_repo.read("configs/production.yaml").replace(
        "grace_period: 48h", "grace_period: 0s")
    registry_repo.write("configs/production.yaml", retirement, "Retain nothing")
    with pytest.raises(ConfigInvalid, match=r"candidate .* is not a locked config"):
        retire(registry_repo, s.candidate)
        s.reconcile()
    registry_repo.git("reset", "--quiet", "--hard", "HEAD~1")
    registry_repo.git("push", "--quiet", "--force", "origin", "main")
    registry_repo.merge(experiment_end(Git(registry_repo.path)).branch)
    retire(registry_repo, s.candidate)
    s.reconcile()  # the experiment ends (served_until set) and the config is retired
    table = table_of(s.candidate)
    kept = s.reconcile()
    assert [type(a).__name__ for a in kept.plan.actions] == []  # type: ignore[attr-defined]
    served = [f for f in kept.plan.findings if f.kind == "served"]  # type: ignore[attr-defined]
    assert [f.table for f in served] == [table]
    now = s.db.query("SELECT now()")[0][0]
    dropped = s.reconcile(now=now + timedelta(seconds=61))
    assert [type(a).__name__ for a in dropped.plan.actions] == ["Drop"]  # type: ignore[attr-defined]
    assert table not in s.db.tables()


@pytest.mark.slow
def test_an_experiment_is_checked_before_it_is_proposed(registry_repo: RegistryRepo) -> None:
    v1, v2 = registry_repo.locked(), registry_repo.locked(chunk_size=300)
    git = Git(registry_repo.path)
    ends = datetime.now(UTC) + timedelta(days=7)
    with pytest.raises(Refused, match="production serves no config"):
        experiment_start(git, "e", v2, share=0.1, ends=ends)
    promoted(registry_repo, v1)
    with pytest.raises(Refused, match="is what production serves already"):
        experiment_start(git, "e", v1, share=0.1, ends=ends)
    with pytest.raises(UsageError, match="outside"):
        experiment_start(git, "e", v2, share=1.0, ends=ends)
    with pytest.raises(UsageError, match="not in the future"):
        experiment_start(git, "e", v2, share=0.1, ends=datetime.now(UTC) - timedelta(days=1))
    with pytest.raises(UnknownVersion, match="not a locked config"):
        experiment_start(git, "e", "2020-01-01-000000-v1", share=0.1, ends=ends)
    registry_repo.merge(experiment_start(git, "e", v2, share=0.1, ends=ends).branch)
    with pytest.raises(Refused, match="already declared"):
        experiment_start(git, "f", v2, share=0.1, ends=ends)
    with pytest.raises(UsageError, match="neither"):
        experiment_commands.parse_ends("next week")
    broken = registry_repo.read("configs/production.yaml").replace("share: 0.1", "share: 1.5")
    registry_repo.write("configs/production.yaml", broken, "Too much")
    result = run_cli("validate", "--repo", registry_repo.path)
    assert result.code != 0 and "experiment.share" in result.stdout + result.stderr


def test_the_statistics_match_known_values() -> None:
    low, high = wilson(0, 10)
    assert low == 0 and abs(high - 0.2775) < 1e-4
    low, high = wilson(50, 100)
    assert abs(low - 0.4038) < 1e-4 and abs(high - 0.5962) < 1e-4
    z, p = two_proportion_z(550, 1000, 500, 1000)
    assert abs(z - 2.2389) < 1e-3 and abs(p - 0.0252) < 2e-4
    report = judge("e", "success", ArmStats("control", "a", 1000, 500),
                   ArmStats("candidate", "b", 1000, 550))
    assert report.verdict == "candidate better"
    assert judge("e", "success", ArmStats("control", "a", 0, 0),
                 ArmStats("candidate", "b", 5, 5)).verdict == "no data"


def test_assignment_is_uniform_deterministic_and_monotone_in_the_share() -> None:
    points = [point("salt", k) for k in KEYS[:20_000]]
    assert all(0 <= p < 1 for p in points)
    assert points == [point("salt", k) for k in KEYS[:20_000]]
    deciles = [sum(1 for p in points if i / 10 <= p < (i + 1) / 10) for i in range(10)]
    assert all(abs(d - 2000) < 4.5 * math.sqrt(2000 * 0.9) for d in deciles), deciles
    assert points != [point("other", k) for k in KEYS[:20_000]]


def test_the_router_reads_once_per_version_and_fails_in_one_line_without_a_served_state(
    dsn: str,
) -> None:
    router = Router(dsn, clock=lambda: 0.0)
    with pytest.raises(ServedStateUnavailable, match="has no served state"):
        router.table(key="k")
    with psycopg.connect(dsn) as conn:
        from registry.database import bookkeeping

        bookkeeping.ensure_schema(conn)
        with conn.transaction():
            bookkeeping.publish_served_state(
                conn, "r", "production", {"view": "public.v", "production":
                                          {"version": "x", "table": "public.t1"},
                                          "experiment": None}, None, [("public", "t1")])
    assert Router(dsn).table(key="k") == "public.t1"
    with pytest.raises(ServedStateUnavailable, match="no served state for registry other"):
        Router(dsn, registry="other").table()
    cached = Router(dsn, clock=lambda: 0.0)
    assert cached.table() == "public.t1" and cached.refreshes == 1
    for _ in range(1000):
        cached.table(key="k")
    assert cached.refreshes == 1


@pytest.mark.slow
def test_an_experiment_runs_in_the_environment_that_declares_it(
    two_environments: RegistryRepo,  # noqa: F811 - the fixture imported above
    dsn: str,
    staging_dsn: str,  # noqa: F811
) -> None:
    repo = two_environments
    production_yaml = repo.read("configs/production.yaml")
    v1, v2 = repo.locked(), repo.locked(chunk_size=300)

    def cli(*args: str) -> str:
        result = run_cli(*args, "--repo", str(repo.path))
        assert result.code == 0, result.stdout + result.stderr
        return result.stdout

    cli("tag")
    cli("promote", v1, "--environment", "staging")
    repo.merge(f"promote/staging/{v1}")
    cli("reconcile", "--environment", "staging", "--force")
    staging = Database(staging_dsn, schema="staging")
    staging.fill(table_of(v1), 3)
    staging.fill(table_of(v2), 4)
    cli("reconcile", "--environment", "staging")
    cli("experiment", "start", "bigger-overlap", "--candidate", v2, "--share", "0.2", "--ends",
        "7d", "--environment", "staging")
    repo.merge("experiment/staging/bigger-overlap-start")
    assert repo.read("configs/production.yaml") == production_yaml
    assert f"candidate: {v2}" in repo.read("configs/environments/staging.yaml")
    out = cli("reconcile", "--environment", "staging")
    assert (f"experiment bigger-overlap: 0.2 of keys read staging.{table_of(v2)}" in out), out
    assert "Served state version" not in cli("reconcile", "--environment", "staging")

    rows = staging.query("SELECT registry, environment, state FROM chunk_registry.served_state")
    assert [(r[0], r[1]) for r in rows] == [("acme-staging", "staging")]
    assert rows[0][2]["experiment"]["candidate"]["table"] == f"staging.{table_of(v2)}"
    assert staging.view_target("document_chunks_candidate") == [table_of(v2)]
    router = Router(staging_dsn, environment="staging")
    tables = {router.table(key=f"k{i}") for i in range(2000)}
    assert tables == {f"staging.{table_of(v1)}", f"staging.{table_of(v2)}"}
    # Production's database knows nothing of it.
    assert Database(dsn).query("SELECT to_regnamespace('chunk_registry')") == [(None,)]


def test_a_router_serves_its_cache_through_a_short_outage_and_then_says_so(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        from registry.database import bookkeeping

        bookkeeping.ensure_schema(conn)
        conn.execute("LISTEN chunk_registry_served")
        with conn.transaction():
            bookkeeping.publish_served_state(
                conn, "r", "production", {"view": "public.v", "experiment": None,
                                          "production": {"version": "x", "table": "public.t1"}},
                None, [("public", "t1")])
        heard = list(conn.notifies(timeout=10, stop_after=1))
        assert [n.payload for n in heard] == ["r/production"]
    now = [0.0]
    router = Router(dsn, check_interval=2.0, clock=lambda: now[0])
    assert router.table(key="k") == "public.t1"
    router.dsn = "postgresql://nobody@127.0.0.1:9/none?connect_timeout=2"  # nothing listens
    router.close()
    now[0] = 10.0
    assert router.table(key="k") == "public.t1"  # 10 s stale: still served
    now[0] = 45.0
    with pytest.raises(DatabaseUnavailable, match="reading the served state"):
        router.table(key="k")  # beyond half the served grace: never a table that may be gone


@pytest.mark.slow
def test_a_name_started_again_is_a_new_run_and_a_new_control_starts_its_own_count(
    registry_repo: RegistryRepo, dsn: str, github: FakeGitHub
) -> None:
    rails = Guardrails(success_rate_max_drop=0.05, min_outcomes=50)
    s = start_experiment(registry_repo, dsn, github, share=0.5, guardrails=rails)
    router = s.router()

    def watch() -> dict[str, object]:
        result = run_cli("watch-promotion", "--repo", registry_repo.path, "--dsn", dsn,
                         "--no-fetch", "--format", "json")
        assert result.code in (0, 1), result.stderr
        return json.loads(result.stdout)["experiment"]  # type: ignore[no-any-return]

    def report() -> dict[str, object]:
        result = run_cli("experiment", "report", "--repo", registry_repo.path, "--dsn", dsn,
                         "--no-fetch", "--format", "json")
        assert result.code == 0, result.stderr
        return json.loads(result.stdout)  # type: ignore[no-any-return]

    def arms() -> dict[str, tuple[object, object]]:
        found = report()["arms"]
        assert isinstance(found, list)
        return {a["arm"]: (a["chunk_version"], a["outcomes"]) for a in found}

    planted(router, "success", 0.9, 0.1, 400, seed=5)  # the first run: a bad candidate
    assert watch()["outcome"] == "proposed"
    registry_repo.merge("experiment/smaller-chunks-stop")
    for pull in (p for pulls in github.pulls.values() for p in pulls):
        pull["state"] = "closed"  # merged, as GitHub would mark them
    s.reconcile()

    v3 = registry_repo.locked(chunk_size=200)
    s.reconcile()
    s.db.fill(table_of(v3), 4)
    assert run_cli("tag", "--repo", registry_repo.path, "--push").code == 0
    experiment_commands.start(registry_repo.path, "smaller-chunks", v3, share=0.5, ends="7d",
                              salt="s2", guardrails=rails, pr=True)
    registry_repo.merge("experiment/smaller-chunks-start")
    for pull in (p for pulls in github.pulls.values() for p in pulls):
        pull["state"] = "closed"
    s.reconcile()
    router.refresh()
    # The first run's 400 outcomes are not this run's: no data yet, and no stop yet either.
    assert report()["verdict"] == "no data"
    assert watch()["outcome"] == "within"
    planted(router, "success", 0.9, 0.1, 400, seed=6)
    second = watch()
    assert second["outcome"] == "proposed", second  # not silenced by the first run's stop
    counts = arms()
    assert counts["candidate"][0] == v3 and counts["control"][0] == s.control
    assert sum(int(n) for _, n in counts.values()) == 400  # type: ignore[call-overload]

    # A new control promoted mid-run starts its own count: the old control's outcomes
    # measured another table.
    v4 = registry_repo.locked(chunk_size=250)
    s.reconcile()
    s.db.fill(table_of(v4), 4)
    promoted(registry_repo, v4)
    s.reconcile()
    router.refresh()
    assert arms()["control"] == (v4, 0)
    planted(router, "success", 0.9, 0.9, 100, seed=7)
    control_version, control_outcomes = arms()["control"]
    assert control_version == v4 and 0 < int(control_outcomes) < 100  # type: ignore[call-overload]


def test_publishing_under_a_new_name_retires_the_former_identitys_served_state(dsn: str) -> None:
    """One statement: the former identity's state for this environment is removed and its
    tables stop being served; another environment's and another registry's stay untouched."""
    from registry.database import bookkeeping

    def state(table: str) -> dict[str, object]:
        return {"view": "public.v", "experiment": None,
                "production": {"version": "x", "table": f"public.{table}"}}

    with psycopg.connect(dsn, autocommit=True) as conn:
        bookkeeping.ensure_schema(conn)
        for registry, environment, table in (("public.v", "production", "t1"),
                                             ("public.v", "staging", "s1"),
                                             ("other", "production", "o1")):
            with conn.transaction():
                bookkeeping.publish_served_state(conn, registry, environment, state(table),
                                                 None, [("public", table)])
        with pytest.raises(ServedStateUnavailable, match="several registries"):
            Router(dsn, registry=None).table()
        with conn.transaction():
            bookkeeping.publish_served_state(conn, "acme", "production", state("t1"), None,
                                             [("public", "t1")], former=["public.v"])
        served = conn.execute("SELECT registry, environment FROM chunk_registry.served_state "
                              "ORDER BY 1, 2").fetchall()
        open_rows = conn.execute(
            "SELECT registry, environment, table_name FROM chunk_registry.served_tables "
            "WHERE served_until IS NULL ORDER BY 1, 2").fetchall()
        until = bookkeeping.served_tables_until(conn, ["acme", "public.v"])

    assert served == [("acme", "production"), ("other", "production"), ("public.v", "staging")]
    assert open_rows == [("acme", "production", "t1"), ("other", "production", "o1"),
                         ("public.v", "staging", "s1")]
    assert until[("public", "t1")] is None and until[("public", "s1")] is None
    assert Router(dsn, registry="acme").table() == "public.t1"
