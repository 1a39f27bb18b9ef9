"""`registry plan / reconcile / status / db` as a user runs them: exit codes, formats, the
embedded default, passwords kept out of output, two reconcilers at once, --watch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from registry.cli.app import main
from tests.database import Database, promote, table_of
from tests.helpers import RegistryRepo, StderrLines


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out, err = capsys.readouterr()
    code = exit_info.value.code
    return (code if isinstance(code, int) else 0), out, err


def test_plan_detailed_exitcode_and_formats(
    registry_repo: RegistryRepo, dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    v1 = registry_repo.locked()
    repo = str(registry_repo.path)

    pending, text, _ = cli(capsys, "plan", "--repo", repo, "--dsn", dsn, "--detailed-exitcode")
    code_json, raw, _ = cli(capsys, "plan", "--repo", repo, "--dsn", dsn, "--format", "json")
    _, markdown, _ = cli(capsys, "plan", "--repo", repo, "--dsn", dsn, "--format", "markdown")
    untouched = Database(dsn).query("SELECT to_regnamespace('chunk_registry')")
    applied, _, _ = cli(capsys, "reconcile", "--repo", repo, "--dsn", dsn)
    in_sync, after, _ = cli(capsys, "plan", "--repo", repo, "--dsn", dsn, "--detailed-exitcode")

    assert pending == 17
    assert untouched == [(None,)], "plan wrote to the database"
    assert f"+ create public.{table_of(v1)} for {v1}" in text
    assert code_json == 0
    data = json.loads(raw)
    assert [a["action"] for a in data["actions"]] == ["CreateTable"]
    assert data["actions"][0]["table"] == f"public.{table_of(v1)}" and data["in_sync"] is False
    assert "| + | CreateTable |" in markdown
    assert applied == 0
    assert in_sync == 0 and "Plan: no changes." in after


def test_plan_detailed_exitcode_keeps_the_error_code(
    registry_repo: RegistryRepo, capsys: pytest.CaptureFixture[str]
) -> None:
    registry_repo.locked()
    dead = "postgresql://postgres@127.0.0.1:1/nowhere"

    code, _, err = cli(capsys, "plan", "--repo", str(registry_repo.path), "--dsn", dead,
                       "--detailed-exitcode")
    plain, _, _ = cli(capsys, "plan", "--repo", str(registry_repo.path), "--dsn", dead)

    assert code == 5 and err.startswith("error: cannot connect to")
    assert plain == 5


def test_offline_plan_says_what_merging_a_branch_would_change(
    registry_repo: RegistryRepo, capsys: pytest.CaptureFixture[str], isolated: Path
) -> None:
    v1 = registry_repo.locked()
    registry_repo.git("checkout", "--quiet", "-b", "promote")
    promote(registry_repo, v1)
    v2 = registry_repo.lock(chunk_size=300)
    repo = str(registry_repo.path)

    _, lock_plan, _ = cli(capsys, "plan", "--repo", repo, "--base", "main", "--head",
                          f"lock/{v2}", "--format", "json")
    code, promote_plan, _ = cli(capsys, "plan", "--repo", repo, "--base", "main", "--head",
                                "promote", "--detailed-exitcode")

    assert [a["action"] for a in json.loads(lock_plan)["actions"]] == ["CreateTable"]
    assert code == 17
    assert f"~ swap public.document_chunks: nothing -> {table_of(v1)}" in promote_plan
    assert not (isolated / "registry-home").exists(), "the offline plan started a database"


def test_reconcile_refusal_is_one_line_and_exit_7(
    registry_repo: RegistryRepo, dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    v1 = registry_repo.locked()
    promote(registry_repo, v1)

    code, out, err = cli(capsys, "reconcile", "--repo", str(registry_repo.path), "--dsn", dsn)

    assert code == 7
    assert f"applied: create public.{table_of(v1)}" in out
    assert err.count("\n") == 1
    assert err.startswith(f"error: refusing to swap production to public.{table_of(v1)}")
    assert "--force" in err


def test_status_reads_like_a_table(
    registry_repo: RegistryRepo, dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    v1, v2 = registry_repo.locked(), registry_repo.locked(chunk_size=300)
    repo = str(registry_repo.path)
    cli(capsys, "reconcile", "--repo", repo, "--dsn", dsn)
    Database(dsn).fill(table_of(v1))
    promote(registry_repo, v1)
    cli(capsys, "reconcile", "--repo", repo, "--dsn", dsn)

    code, out, _ = cli(capsys, "status", "--repo", repo, "--dsn", dsn)
    _, raw, _ = cli(capsys, "status", "--repo", repo, "--dsn", dsn, "--format", "json")
    _, counted, _ = cli(capsys, "status", "--repo", repo, "--dsn", dsn, "--exact")

    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("Last reconcile: #2 applied at ")
    assert lines[1].split() == ["VERSION", "PARAMS", "TABLE", "ROWS", "STATUS", "LAST", "RUN"]
    assert lines[2].split()[:5] == [v2, "300/0.10/J=0.8/prefix-A", f"public.{table_of(v2)}",
                                    "~0", "Synced"]
    assert lines[3].split()[:6] == ["*", v1, "450/0.10/J=0.8/prefix-A",
                                    f"public.{table_of(v1)}", "~3", "Synced"]
    assert "~ rows estimated" in lines[-1]
    exact_lines = counted.splitlines()
    assert exact_lines[3].split()[4] == "3" and "estimated" not in exact_lines[-1]
    data = json.loads(raw)
    assert [c["status"] for c in data["configs"]] == ["Synced", "Synced"]
    assert data["row_counts"] == "estimated"
    assert [(c["rows"], c["rows_estimated"]) for c in data["configs"]] == [(0, True), (3, True)]
    assert data["in_sync"] is True


def test_a_dsn_password_never_reaches_the_output(
    registry_repo: RegistryRepo, capsys: pytest.CaptureFixture[str]
) -> None:
    registry_repo.locked()
    url = "postgresql://postgres:s3cret-pw@127.0.0.1:1/nowhere"
    keywords = "host=127.0.0.1 port=1 user=postgres password='s3cret pw' dbname=x"

    outputs = [
        cli(capsys, "plan", "--repo", str(registry_repo.path), "--dsn", url),
        cli(capsys, "reconcile", "--repo", str(registry_repo.path), "--dsn", keywords),
        cli(capsys, "status", "--repo", str(registry_repo.path), "--dsn", url),
        cli(capsys, "db", "url", "--dsn", url),
        cli(capsys, "db", "url", "--dsn", keywords, "--format", "json"),
    ]

    assert [code for code, _, _ in outputs] == [5, 5, 5, 0, 0]
    for _, out, err in outputs:
        assert "s3cret" not in out + err
        assert "***" in out + err
    assert outputs[3][1].strip() == "postgresql://postgres:***@127.0.0.1:1/nowhere"


@pytest.mark.slow
def test_the_embedded_server_is_the_default_and_is_reused_until_stopped(
    registry_repo: RegistryRepo, capsys: pytest.CaptureFixture[str], isolated: Path
) -> None:
    from registry.database.connection import stop_embedded

    v1 = registry_repo.locked()
    try:
        code, url, _ = cli(capsys, "db", "url", "--format", "json")
        reconciled, _, _ = cli(capsys, "reconcile", "--repo", str(registry_repo.path))
        _, again, _ = cli(capsys, "db", "url")
        with psycopg.connect(json.loads(url)["dsn"]) as conn:
            tables = conn.execute("SELECT tablename FROM pg_tables WHERE tablename LIKE "
                                  "'document_chunks%'").fetchall()
        stopped, out, _ = cli(capsys, "db", "stop")
        not_running, out2, _ = cli(capsys, "db", "stop", "--format", "json")
    finally:
        stop_embedded()

    assert code == 0 and json.loads(url)["source"] == "embedded"
    assert str(isolated / "registry-home") in json.loads(url)["dsn"]
    assert reconciled == 0 and tables == [(table_of(v1),)]
    assert again.strip() == json.loads(url)["dsn"]
    assert stopped == 0 and out.startswith("stopped the embedded PostgreSQL")
    assert not_running == 0 and json.loads(out2)["stopped"] is False


def test_precedence_of_dsn_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    from registry.database.connection import Dsn, resolve_dsn

    monkeypatch.setenv("DATABASE_URL", "postgresql://a/x")
    assert resolve_dsn() == Dsn("postgresql://a/x", "DATABASE_URL")
    monkeypatch.setenv("REGISTRY_DSN", "postgresql://b/x")
    assert resolve_dsn() == Dsn("postgresql://b/x", "REGISTRY_DSN")
    assert resolve_dsn("postgresql://c/x") == Dsn("postgresql://c/x", "--dsn")


# ---------------------------------------------------------------------------------------------
# Processes: two reconcilers at once, --watch


def _registry(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "registry", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_concurrent_reconcilers_one_applies_the_other_exits_4(
    registry_repo: RegistryRepo, dsn: str
) -> None:
    v1, v2 = registry_repo.locked(), registry_repo.locked(chunk_size=300)
    repo = str(registry_repo.path)
    db = Database(dsn)
    reconcile = [sys.executable, "-m", "registry", "reconcile", "--repo", repo, "--dsn", dsn]
    subprocess.run(reconcile, check=True, capture_output=True)
    db.fill(table_of(v1))
    promote(registry_repo, v1)
    subprocess.run(reconcile, check=True, capture_output=True)
    db.fill(table_of(v2))
    promote(registry_repo, v2)
    with psycopg.connect(dsn) as reader:
        reader.execute("SELECT count(*) FROM document_chunks")  # a long read holds the view
        first = _registry(*reconcile[3:], "--lock-timeout", "1000")
        deadline = time.monotonic() + 20
        while not db.query("SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND "
                           "database = (SELECT oid FROM pg_database "
                           "WHERE datname = current_database())"):
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.05)
        second = subprocess.run(reconcile, capture_output=True, text=True, timeout=60)
    _, err = first.communicate(timeout=60)

    assert second.returncode == 4, second.stderr
    assert f"chunk-registry reconcile (pid {first.pid})" in second.stderr
    assert first.returncode == 0, err
    assert db.view_target() == [table_of(v2)]


@pytest.fixture
def later_database(pg_server: str) -> Iterator[str]:
    """The DSN of a database that does not exist yet (an outage); created by `.create()`."""
    name = f"t_later_{os.getpid()}_{time.monotonic_ns() % 10**8}"
    yield make_conninfo(pg_server, dbname=name)
    with psycopg.connect(pg_server, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE datname = %s", (name,))
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')


@pytest.mark.slow
def test_watch_survives_an_outage_follows_new_commits_and_stops_on_sigterm(
    registry_repo: RegistryRepo, pg_server: str, later_database: str
) -> None:
    v1 = registry_repo.locked()
    proc = _registry("reconcile", "--watch", "--interval", "0.5", "--repo",
                     str(registry_repo.path), "--dsn", later_database)
    lines = StderrLines(proc)
    try:
        outage = lines.wait_for("retrying in")
        with psycopg.connect(pg_server, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{conninfo_to_dict(later_database)["dbname"]}"')
        lines.wait_for("applied, 1 to create")
        v2 = registry_repo.locked(chunk_size=300)
        lines.wait_for("applied, 1 to create")
        lines.wait_for("noop, no changes")
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        lines.wait_for("stopped after")
    finally:
        if proc.poll() is None:
            proc.kill()

    assert code == 0
    assert "cannot connect to" in outage and "does not exist" in outage
    assert Database(later_database).tables() == sorted([table_of(v1), table_of(v2)])
