"""Database faults: the server restarted in the middle of an ingest and of a reconcile, the
registry's connection terminated mid-transaction, a statement_timeout hit, the server down at
start, and `reconcile --watch` across a 30 s outage. Each ends in one clear line (exit 5 when
the database is unavailable) or a retried success, and never in a half state: the next run
converges.

The restarts use a PostgreSQL the suite owns (`private_server`); the rest run on every server
under test. A process is held at an exact point with `REGISTRY_FAULT=<point>:stop` (it stops
itself) while the test breaks the database, then resumed with SIGCONT.
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
from psycopg import sql

from registry.commands.reconcile import reconcile
from registry.faults import FAULT_ENV
from tests.database import Database, promote, table_of
from tests.helpers import RegistryRepo, StderrLines
from tests.reliability.conftest import (
    PrivateServer,
    finish,
    run_registry,
    start_registry,
    wait_stopped,
)
from tests.reliability.scenarios import (
    EveryAction,
    drop_database,
    invariants,
    write_corpus,
)

pytestmark = pytest.mark.reliability
UNAVAILABLE = 5
T = TypeVar("T")


def one_clear_line(err: str, pattern: str) -> None:
    """stderr holds one error line matching `pattern` (besides ingest's progress lines)."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if not line.startswith("ingest: ")]
    assert len(lines) == 1, err
    assert re.match(pattern, lines[0]), err


def reconcile_cli(repo: RegistryRepo, dsn: str, *extra: str) -> list[str]:
    return ["reconcile", "--repo", str(repo.path), "--dsn", dsn, *extra]


def converge(repo: RegistryRepo, dsn: str) -> None:
    for _ in range(4):
        proc = run_registry(*reconcile_cli(repo, dsn), "--format", "json")
        assert proc.returncode == 0, proc.stderr
        if '"outcome": "noop"' in proc.stdout:
            assert invariants(dsn) == []
            return
    raise AssertionError("no convergence after 4 runs")


def survived(figures: dict[str, Any], fault: str) -> None:
    """Called last in a test: every assertion about `fault` held."""
    figures.setdefault("database faults survived", []).append(fault)


def terminate_backends(admin: str, dsn: str, purpose: str) -> list[int]:
    """Terminate the registry's connections for `purpose` in `dsn`'s database; their pids."""
    dbname = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    with psycopg.connect(admin, autocommit=True) as conn:
        rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s AND "
                            "application_name LIKE %s", (dbname, f"chunk-registry {purpose} (%"))
        pids = [r[0] for r in rows.fetchall()]
        for pid in pids:
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
    return pids


def while_stopped_at(point: str, args: Sequence[str | Path], action: Callable[[], T]
                     ) -> tuple[T, int, str]:
    """Run `registry args` until it stops itself at fault `point`, break the database with
    `action` meanwhile, then let it finish: (what `action` returned, exit code, stderr)."""
    proc = start_registry(*args, env={FAULT_ENV: f"{point}:stop"})
    try:
        wait_stopped(proc)
        done = action()
    finally:
        code, _, err = finish(proc)
    return done, code, err


@pytest.fixture
def shadow_filled(registry_repo: RegistryRepo, tmp_path: Path) -> Any:
    """A function(dsn) -> (version, corpus, rows): a shadow table filled by a real ingest, and
    a second, larger corpus to refill it from."""
    def build(dsn: str) -> tuple[str, Path, int]:
        version = registry_repo.locked(chunk_size=120)
        reconcile(registry_repo.path, dsn=dsn)
        first = ingest_cli(registry_repo, dsn, version, write_corpus(tmp_path / "a", 30))
        assert first.returncode == 0, first.stderr
        return version, write_corpus(tmp_path / "b", 600, salt=" v2"), Database(dsn).count(
            table_of(version))
    return build


def ingest_cli(repo: RegistryRepo, dsn: str, version: str, source: Path,
               env: dict[str, str] | None = None) -> Any:
    return run_registry("ingest", version, "--repo", repo.path, "--dsn", dsn, "--source", source,
                        "--tokenizer-file", repo.tokenizer_file, "--workers", "1", env=env)


def ingest_args(repo: RegistryRepo, dsn: str, version: str, source: Path) -> list[str]:
    return ["ingest", version, "--repo", str(repo.path), "--dsn", dsn, "--source", str(source),
            "--tokenizer-file", str(repo.tokenizer_file), "--workers", "1"]


def ingest_statuses(dsn: str) -> list[str]:
    return [r[0] for r in Database(dsn).query(
        "SELECT status FROM chunk_registry.ingest_runs ORDER BY id")]


# ---------------------------------------------------------------------------------------------
# The server down at start


def test_the_server_down_at_start_is_one_line_exit_5_and_nothing_half_done(
    registry_repo: RegistryRepo, private_server: PrivateServer, private_db: str,
    tmp_path: Path, figures: dict[str, Any]
) -> None:
    version = registry_repo.locked()
    corpus = write_corpus(tmp_path / "corpus", 5)
    private_server.stop()
    try:
        commands = {
            "reconcile": reconcile_cli(registry_repo, private_db),
            "plan": ["plan", "--repo", str(registry_repo.path), "--dsn", private_db],
            "status": ["status", "--repo", str(registry_repo.path), "--dsn", private_db],
            "ingest": ingest_args(registry_repo, private_db, version, corpus),
            "health": ["health", "--repo", str(registry_repo.path), "--dsn", private_db,
                       "--version", version, "--no-record"],
        }
        results = {name: run_registry(*args, timeout=60) for name, args in commands.items()}
    finally:
        private_server.start()

    for result in results.values():
        assert result.returncode == UNAVAILABLE, (result.args, result.stderr)
        one_clear_line(result.stderr, r"^error: cannot connect to .*: connection to server on socket .* failed: No such file or directory \(check that the server is up")
    assert Database(private_db).query("SELECT to_regnamespace('chunk_registry')") == [(None,)]
    recovered = run_registry(*reconcile_cli(registry_repo, private_db))
    assert recovered.returncode == 0, recovered.stderr
    assert Database(private_db).tables() == [table_of(version)]
    figures["server down at start"] = {"commands": len(results), "exit 5": sum(
        r.returncode == UNAVAILABLE for r in results.values())}
    survived(figures, "server down at start")


# ---------------------------------------------------------------------------------------------
# Restarts in the middle of work


def test_a_restart_in_the_middle_of_an_ingest_fails_cleanly_and_the_rerun_loads(
    registry_repo: RegistryRepo, private_server: PrivateServer, private_db: str,
    shadow_filled: Any, figures: dict[str, Any]
) -> None:
    version, corpus, before = shadow_filled(private_db)
    _, code, err = while_stopped_at("ingest.copy_batch#1",
                                    ingest_args(registry_repo, private_db, version, corpus),
                                    private_server.restart)

    assert code == UNAVAILABLE
    one_clear_line(err, r"^error: lost the database while loading public\.document_chunks_")
    assert Database(private_db).count(table_of(version)) == before
    assert ingest_statuses(private_db) == ["succeeded", "running"]
    rerun = ingest_cli(registry_repo, private_db, version, corpus)
    assert rerun.returncode == 0, rerun.stderr
    assert ingest_statuses(private_db) == ["succeeded", "failed", "succeeded"]
    assert Database(private_db).count(table_of(version)) > before
    assert invariants(private_db) == []
    survived(figures, "restart mid-ingest")


def test_a_restart_in_the_middle_of_a_view_swap_leaves_the_old_production_serving(
    tmp_path: Path, tokenizer_file: Path, private_server: PrivateServer, figures: dict[str, Any]
) -> None:
    scene = EveryAction.build(tmp_path, tokenizer_file, private_server.admin)
    name, dsn = scene.clone()
    v1, v2 = scene.versions[:2]
    try:
        _, code, err = while_stopped_at(
            "apply.SwapProduction.before_commit",
            ["reconcile", "--repo", scene.repo.path, "--dsn", dsn, "--ref", scene.change],
            private_server.restart)
        db = Database(dsn)
        view_after_restart = db.view_target()
        runs = db.runs()
        converge(scene.repo, dsn)
        view_after_rerun = db.view_target()
        final_runs = db.runs()
    finally:
        private_server.ensure_running()
        drop_database(private_server.admin, name)
        scene.close()

    assert code == UNAVAILABLE
    one_clear_line(err, r"^error: lost the database while reconciling: ")
    assert view_after_restart == [table_of(v1)]
    assert runs[-1]["outcome"] == "running"
    assert view_after_rerun == [table_of(v2)]
    interrupted = next(r for r in final_runs if r["id"] == runs[-1]["id"])
    assert interrupted["outcome"] == "failed" and interrupted["error"].startswith("interrupted")
    survived(figures, "restart mid-swap")


# ---------------------------------------------------------------------------------------------
# The registry's connection terminated mid-transaction (every server under test)


def test_a_terminated_connection_mid_create_rolls_back_and_the_rerun_converges(
    registry_repo: RegistryRepo, dsn: str, pg_server: str, figures: dict[str, Any]
) -> None:
    version = registry_repo.locked()
    pids, code, err = while_stopped_at(
        "apply.CreateTable.ddl_done#2", reconcile_cli(registry_repo, dsn),
        lambda: terminate_backends(pg_server, dsn, "reconcile"))
    db = Database(dsn)
    tables, managed = db.tables(), db.managed()
    converge(registry_repo, dsn)

    assert len(pids) == 1, "the lock and the work share one connection"
    assert code == UNAVAILABLE
    one_clear_line(err, r"^error: lost the database while reconciling: terminating connection")
    assert tables == [] and managed == {}
    assert db.tables() == [table_of(version)]
    survived(figures, "terminate mid-create")


def test_a_terminated_copy_connection_fails_the_ingest_and_keeps_the_old_rows(
    registry_repo: RegistryRepo, dsn: str, pg_server: str, shadow_filled: Any, figures: dict[str, Any]
) -> None:
    version, corpus, before = shadow_filled(dsn)
    pids, code, err = while_stopped_at(
        "ingest.copy_batch#1", ingest_args(registry_repo, dsn, version, corpus),
        lambda: terminate_backends(pg_server, dsn, "ingest copy"))
    rows_after = Database(dsn).count(table_of(version))
    statuses = ingest_statuses(dsn)
    rerun = ingest_cli(registry_repo, dsn, version, corpus)

    assert len(pids) == 1
    assert code == UNAVAILABLE
    one_clear_line(err, r"^error: lost the database while loading public\.document_chunks_.*"
                   r"(terminating connection|server closed the connection)")
    assert rows_after == before
    assert statuses == ["succeeded", "failed"], "the control connection recorded the failure"
    assert rerun.returncode == 0, rerun.stderr
    assert Database(dsn).count(table_of(version)) > before and invariants(dsn) == []
    survived(figures, "terminate mid-COPY")


# ---------------------------------------------------------------------------------------------
# statement_timeout


def set_statement_timeout(admin: str, dsn: str, value: str | None) -> None:
    dbname = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    with psycopg.connect(admin, autocommit=True) as conn:
        if value is None:
            conn.execute(sql.SQL("ALTER DATABASE {} RESET statement_timeout").format(
                sql.Identifier(dbname)))
        else:
            conn.execute(sql.SQL("ALTER DATABASE {} SET statement_timeout = {}").format(
                sql.Identifier(dbname), sql.Literal(value)))


def test_a_long_reader_under_a_short_statement_timeout_leaves_the_swap_pending_and_recorded(
    registry_repo: RegistryRepo, dsn: str, pg_server: str, figures: dict[str, Any]
) -> None:
    """A swap never queues its exclusive lock behind a reader (issue 20): with a long read
    holding the view and a 300 ms statement_timeout, no statement of the swap waits long
    enough to be canceled; the swap is left pending, the run recorded as refused, and the
    next run applies it."""
    v1, v2 = registry_repo.locked(), registry_repo.locked(chunk_size=300)
    db = Database(dsn)
    reconcile(registry_repo.path, dsn=dsn)
    db.fill(table_of(v1))
    db.fill(table_of(v2))
    promote(registry_repo, v1)
    reconcile(registry_repo.path, dsn=dsn)
    promote(registry_repo, v2)
    set_statement_timeout(pg_server, dsn, "300ms")
    try:
        with psycopg.connect(dsn) as reader:  # a long read holds the view
            reader.execute("SET statement_timeout = 0")
            reader.execute("SELECT count(*) FROM document_chunks")
            pending = run_registry(*reconcile_cli(registry_repo, dsn), "--lock-timeout", "5000")
    finally:
        set_statement_timeout(pg_server, dsn, None)
    view, runs = db.view_target(), db.runs()
    rerun = run_registry(*reconcile_cli(registry_repo, dsn))

    assert pending.returncode == 7, pending.stderr
    one_clear_line(pending.stderr, r"^error: .*still reads public\.document_chunks_")
    assert "statement timeout" not in pending.stderr
    assert view == [table_of(v1)]
    assert runs[-1]["outcome"] == "refused" and "pending" in runs[-1]["error"]
    assert rerun.returncode == 0, rerun.stderr
    assert db.view_target() == [table_of(v2)] and invariants(dsn) == []
    survived(figures, "long reader + statement_timeout in swap")


def test_a_statement_timeout_during_an_ingest_writes_nothing(
    registry_repo: RegistryRepo, dsn: str, pg_server: str, shadow_filled: Any, figures: dict[str, Any]
) -> None:
    version, corpus, before = shadow_filled(dsn)
    set_statement_timeout(pg_server, dsn, "500ms")
    try:
        with psycopg.connect(dsn) as blocker:  # holds the table against the ingest's DELETE
            blocker.execute("SET statement_timeout = 0")
            blocker.execute(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(
                sql.Identifier(table_of(version))))
            failed = ingest_cli(registry_repo, dsn, version, corpus)
    finally:
        set_statement_timeout(pg_server, dsn, None)
    rows_after, statuses = Database(dsn).count(table_of(version)), ingest_statuses(dsn)
    rerun = ingest_cli(registry_repo, dsn, version, corpus)

    assert failed.returncode == 1
    one_clear_line(failed.stderr, r"^error: database error while loading public\.document_chunks"
                   r"_.*: canceling statement due to statement timeout")
    assert rows_after == before and statuses == ["succeeded", "failed"]
    assert rerun.returncode == 0, rerun.stderr
    assert Database(dsn).count(table_of(version)) > before
    survived(figures, "statement_timeout in ingest")


# ---------------------------------------------------------------------------------------------
# --watch across a 30 s outage

OUTAGE_S = 30.0


def test_watch_keeps_running_across_a_30s_outage_and_resumes(
    registry_repo: RegistryRepo, private_server: PrivateServer, private_db: str,
    figures: dict[str, Any]
) -> None:
    v1 = registry_repo.locked()
    proc = start_registry(*reconcile_cli(registry_repo, private_db), "--watch", "--interval",
                          "1")
    lines = StderrLines(proc)
    try:
        lines.wait_for("applied, 1 to create", 60)
        private_server.stop()
        down = time.monotonic()
        v2 = registry_repo.locked(chunk_size=300)
        retries = 0
        while time.monotonic() - down < OUTAGE_S:
            assert proc.poll() is None, "the watcher died during the outage"
            line = lines.next(0.5)
            retries += line is not None and "retrying in" in line
        private_server.start()
        up = time.monotonic()
        lines.wait_for("applied, 1 to create", 120)
        resumed = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        private_server.ensure_running()

    assert code == 0
    assert retries >= 3, lines.seen
    assert all("Traceback" not in line for line in lines.seen)
    assert Database(private_db).tables() == sorted([table_of(v1), table_of(v2)])
    figures["watch outage"] = {"outage_s": OUTAGE_S, "retries_logged": retries,
                               "resumed_s_after_restart": round(resumed - up, 1)}
    survived(figures, "30 s outage under --watch")
