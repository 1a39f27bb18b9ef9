"""Crash anywhere: the real CLI is SIGKILLed at every crash point a reconcile or an ingest passes
through (REGISTRY_FAULT), then rerun without the fault. Every time, the database converges to
exactly what a clean run produces, production answers with rows throughout (reader loops run
during the whole scenario), no managed table is lost, no chunk is duplicated, and the run
records show the interrupted run and a later converged one.

The points are not listed by hand: a clean run with REGISTRY_FAULT_TRACE lists every point it
reaches (with its occurrence), and the test kills at each one, so a new point is tested as soon
as it is added.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from registry.commands.reconcile import reconcile
from registry.faults import FAULT_ENV, TRACE_ENV
from tests.database import Database, promote, table_of
from tests.helpers import RegistryRepo, run_cli
from tests.reliability.conftest import Readers, run_registry
from tests.reliability.scenarios import (
    NO_GRACE,
    EveryAction,
    clone_database,
    create_database,
    drop_database,
    invariants,
    snapshot,
    write_corpus,
)

pytestmark = pytest.mark.reliability
KILLED = -signal.SIGKILL
MAX_RERUNS = 4


def traced_points(trace: Path) -> list[str]:
    points = trace.read_text().split()
    assert len(points) == len(set(points)), "a point was reported twice with the same count"
    return points


def reconcile_until_in_sync(repo: RegistryRepo, dsn: str, ref: str) -> list[dict[str, Any]]:
    """Rerun `registry reconcile` (in this process: the kill was the subprocess's) until a run
    has nothing to do; every run must succeed."""
    runs = []
    for _ in range(MAX_RERUNS):
        proc = run_cli("reconcile", "--repo", repo.path, "--dsn", dsn, "--ref", ref,
                       "--format", "json")
        assert proc.code == 0, proc.stderr
        result = json.loads(proc.stdout)
        runs.append(result)
        if result["outcome"] == "noop":
            return runs
    raise AssertionError(f"no convergence after {MAX_RERUNS} runs: {runs}")


def test_a_crash_at_any_point_of_a_reconcile_converges_on_rerun(
    tmp_path: Path, tokenizer_file: Path, pg_server: str, figures: dict[str, Any]
) -> None:
    scene = EveryAction.build(tmp_path, tokenizer_file, pg_server)
    try:
        name, dsn = scene.clone()
        reference_runs = reconcile_until_in_sync(scene.repo, dsn, scene.change)
        reference = snapshot(dsn)
        drop_database(pg_server, name)
        assert [a["action"] for a in reference_runs[0]["actions"]] == [
            "CreateTable", "Unretire", "SwapProduction", "Retire", "Drop"]

        name, dsn = scene.clone()
        trace = tmp_path / "trace"
        clean = run_registry("reconcile", "--repo", scene.repo.path, "--dsn", dsn, "--ref",
                             scene.change, env={TRACE_ENV: str(trace)})
        assert clean.returncode == 0, clean.stderr
        drop_database(pg_server, name)
        points = traced_points(trace)
        for action in ("CreateTable", "Unretire", "SwapProduction", "Retire", "Drop"):
            for stage in ("begin", "bookkeeping", "before_commit", "committed"):
                assert f"apply.{action}.{stage}#1" in points, (action, stage, points)
        recorded = points.index("reconcile.recorded#1")
        finished = points.index("reconcile.finished#1")

        failures: dict[str, str] = {}
        for position, point in enumerate(points):
            problem = _crash_and_recover(scene, point, recorded <= position < finished,
                                         reference)
            if problem:
                failures[point] = problem
    finally:
        scene.close()

    figures["reconcile crash points"] = {"tested": len(points),
                                         "converged": len(points) - len(failures)}
    assert not failures, failures


def _crash_and_recover(scene: EveryAction, point: str, leaves_a_running_run: bool,
                       reference: dict[str, Any]) -> str | None:
    name, dsn = scene.clone()
    db = Database(dsn)
    try:
        with Readers(dsn) as readers:
            crashed = run_registry("reconcile", "--repo", scene.repo.path, "--dsn", dsn, "--ref",
                                   scene.change, env={FAULT_ENV: point})
            if crashed.returncode != KILLED:
                return f"not killed: exit {crashed.returncode} {crashed.stderr}"
            running = [r["id"] for r in db.runs() if r["outcome"] == "running"]
            if len(running) != int(leaves_a_running_run):
                return f"runs after the crash: {db.runs()}"
            runs = reconcile_until_in_sync(scene.repo, dsn, scene.change)
        readers.check()
        broken = invariants(dsn)
        if broken:
            return "; ".join(broken)
        if snapshot(dsn) != reference:
            return f"diverged: {snapshot(dsn)} != {reference}"
        after = db.runs()
        for run_id in running:
            record = next(r for r in after if r["id"] == run_id)
            if record["outcome"] != "failed" or not record["error"].startswith("interrupted"):
                return f"the interrupted run #{run_id} reads {record}"
        if runs[-1]["outcome"] != "noop" or after[-1]["outcome"] != "noop":
            return f"the last run is not in sync: {after[-1]}"
        return None
    except AssertionError as err:
        return str(err)[:500]
    finally:
        drop_database(scene.admin, name)


# ---------------------------------------------------------------------------------------------
# Ingest: a shadow table refilled from another corpus, killed at every point


def test_a_crash_at_any_point_of_an_ingest_leaves_the_old_rows_or_the_new_ones(
    tmp_path: Path, tokenizer_file: Path, pg_server: str, figures: dict[str, Any]
) -> None:
    repo = RegistryRepo.create(tmp_path, tokenizer_file, NO_GRACE)
    v1, v2 = repo.locked(chunk_size=100), repo.locked(chunk_size=120)
    old_corpus = write_corpus(tmp_path / "old", 40)
    new_corpus = write_corpus(tmp_path / "new", 600, salt=" (revised)")
    template, dsn = create_database(pg_server)
    try:
        reconcile(repo.path, dsn=dsn)
        for version in (v1, v2):
            ingested = _ingest(repo, dsn, version, old_corpus)
            assert ingested.returncode == 0, ingested.stderr
        promote(repo, v1)
        reconcile(repo.path, dsn=dsn)
        old_rows = Database(dsn).count(table_of(v2))

        name, dsn = clone_database(pg_server, template)
        trace = tmp_path / "trace"
        clean = _ingest(repo, dsn, v2, new_corpus, env={TRACE_ENV: str(trace)})
        assert clean.returncode == 0, clean.stderr
        reference = snapshot(dsn)
        new_rows = Database(dsn).count(table_of(v2))
        drop_database(pg_server, name)
        points = traced_points(trace)
        assert {"ingest.started#1", "ingest.deleted#1", "ingest.copy_batch#2",
                "ingest.before_commit#1", "ingest.committed#1"} <= set(points), points
        assert new_rows != old_rows

        failures: dict[str, str] = {}
        for point in points:
            problem = _kill_ingest(repo, pg_server, template, v2, new_corpus, point, reference,
                                   allowed=frozenset({old_rows, new_rows}))
            if problem:
                failures[point] = problem
    finally:
        drop_database(pg_server, template)

    figures["ingest crash points"] = {"tested": len(points),
                                      "converged": len(points) - len(failures)}
    assert not failures, failures


def _ingest(repo: RegistryRepo, dsn: str, version: str, source: Path,
            env: dict[str, str] | None = None) -> Any:
    return run_registry("ingest", version, "--repo", repo.path, "--dsn", dsn, "--source", source,
                        "--tokenizer-file", repo.tokenizer_file, "--workers", "1", "--format",
                        "json", env=env)


def _kill_ingest(repo: RegistryRepo, admin: str, template: str, version: str, source: Path,
                 point: str, reference: dict[str, Any], allowed: frozenset[int]) -> str | None:
    name, dsn = clone_database(admin, template)
    db = Database(dsn)
    shadow = f"SELECT count(*) FROM public.{table_of(version)}"
    try:
        with Readers(dsn) as production, Readers(dsn, shadow, threads=1,
                                                   allowed=allowed) as readers:
            killed = _ingest(repo, dsn, version, source, env={FAULT_ENV: point})
            if killed.returncode != KILLED:
                return f"not killed: exit {killed.returncode} {killed.stderr}"
            statuses = [r[0] for r in db.query(
                "SELECT status FROM chunk_registry.ingest_runs ORDER BY id")]
            rerun = _ingest(repo, dsn, version, source)
            time.sleep(0.05)
        production.check()
        readers.check()
        if rerun.returncode != 0:
            return f"the rerun failed: {rerun.stderr}"
        broken = invariants(dsn)
        if broken:
            return "; ".join(broken)
        if snapshot(dsn) != reference:
            return f"diverged: {snapshot(dsn)['rows']} != {reference['rows']}"
        expected = "succeeded" if point == "ingest.committed#1" else "running"
        if statuses[-1] != expected:
            return f"the killed run reads {statuses[-1]}, not {expected}"
        final = db.query("SELECT status, details->>'error' FROM chunk_registry.ingest_runs "
                         "ORDER BY id")
        if final[-1][0] != "succeeded" or len(final) != len(statuses) + 1:
            return f"runs after the rerun: {final}"
        killed = final[-2]
        if expected == "running" and not (killed[0] == "failed"
                                          and (killed[1] or "").startswith("interrupted")):
            return f"the killed run was not marked interrupted: {killed}"
        return None
    except AssertionError as err:
        return str(err)[:500]
    finally:
        drop_database(admin, name)
