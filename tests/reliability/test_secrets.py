"""Secrets: a DSN password (checked for real: the role logs in with scram-sha-256), a
GITHUB_TOKEN, a token in the remote's URL and an Authorization header in git's config go through
the whole lifecycle, failing paths included, and appear nowhere: not in any stdout or stderr,
not in `--watch` logs, not in any bookkeeping row, not in an exception's text or traceback, not
in the server's log, not in the registry's cache files."""

from __future__ import annotations

import signal
import time
import traceback
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from registry.errors import RegistryError
from tests.database import promote
from tests.github_server import FakeGitHub
from tests.helpers import RegistryRepo
from tests.reliability.conftest import PrivateServer, run_registry, start_registry
from tests.reliability.scenarios import write_corpus

pytestmark = pytest.mark.reliability
ROLE = "registry_secret_role"
DATABASE = "secrets_db"
PASSWORD = "S3cr3t p@ss:w/rd%'x"
WRONG = "Wr0ng-Pa55word-Fragment"
TOKEN = "ghp_FAKEtoken0123456789abcdefghijklmnopq"
HEADER_TOKEN = "ghs_HEADERtoken9876543210zyxwvutsrq"
SECRETS = [PASSWORD, urllib.parse.quote(PASSWORD, safe=""), "S3cr3t", "p@ss:w/rd", WRONG,
           TOKEN, HEADER_TOKEN]


@dataclass
class Login:
    url: str
    keywords: str
    wrong: str
    malformed: str


@pytest.fixture
def login(private_server: PrivateServer) -> Iterator[Login]:
    """A role that must give its password (scram-sha-256 in pg_hba.conf for everyone but the
    admin), and the DSNs that carry it."""
    private_server.ensure_running()
    hba = private_server.data / "pg_hba.conf"
    original = hba.read_text()
    with psycopg.connect(private_server.admin, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(ROLE), sql.Literal(PASSWORD)))
        admin.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
            sql.Identifier(DATABASE), sql.Identifier(ROLE)))
    hba.write_text("local all postgres trust\nlocal all all scram-sha-256\n")
    private_server.set()
    socket = private_server.socket_dir
    quoted = PASSWORD.replace("\\", "\\\\").replace("'", "\\'")
    yield Login(
        url=f"postgresql://{ROLE}:{urllib.parse.quote(PASSWORD, safe='')}@/{DATABASE}"
            f"?host={urllib.parse.quote(socket, safe='')}",
        keywords=f"host={socket} user={ROLE} password='{quoted}' dbname={DATABASE}",
        wrong=f"postgresql://{ROLE}:{WRONG}@/{DATABASE}?host={urllib.parse.quote(socket)}",
        malformed=f"host={socket} user={ROLE} password='{PASSWORD} dbname={DATABASE}",
    )
    hba.write_text(original)
    private_server.set()
    private_server.drop_database(DATABASE)
    with psycopg.connect(private_server.admin, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(ROLE)))


@dataclass
class EchoingGitHub(FakeGitHub):
    """A misbehaving API (or proxy) that echoes the request's Authorization header back in its
    error messages."""

    status: int = 403

    def answer(self, request: Any, path: str, query: dict[str, str], body: Any
               ) -> tuple[int, Any, dict[str, str]]:
        echoed = f"denied for {request.headers.get('Authorization', '')}"
        errors = [{"message": f"head invalid ({echoed})"}] if self.status == 422 else []
        return self.status, {"message": echoed, "errors": errors}, {}


@dataclass
class Evidence:
    """Everything the runs produced, by where it came from."""

    texts: dict[str, str] = field(default_factory=dict)

    def add(self, where: str, text: str) -> None:
        self.texts[where] = self.texts.get(where, "") + text

    def leaks(self) -> list[str]:
        return [f"{secret!r} in {where}" for where, text in self.texts.items()
                for secret in SECRETS if secret in text]


def test_no_password_or_token_appears_anywhere_the_lifecycle_writes(
    registry_repo: RegistryRepo, private_server: PrivateServer, login: Login, tmp_path: Path,
    figures: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
    monkeypatch.setenv("GH_TOKEN", TOKEN)
    evidence = Evidence()
    codes: dict[str, int] = {}
    log_offset = private_server.log_size()
    repo = str(registry_repo.path)
    corpus = write_corpus(tmp_path / "corpus", 20)
    cases = tmp_path / "cases.jsonl"
    cases.write_text('{"query_id": "q1", "query": "module documentation", "gt_answer": "module"}\n')
    token = str(registry_repo.tokenizer_file)

    def run(name: str, *args: str, env: dict[str, str] | None = None) -> Any:
        proc = run_registry(*args, env=env)
        codes[name] = proc.returncode
        evidence.add(f"{name} output", proc.stdout + proc.stderr)
        return proc

    version = registry_repo.locked(chunk_size=120)
    run("validate", "validate", "--repo", repo)
    run("plan", "plan", "--repo", repo, "--dsn", login.url)
    run("reconcile (REGISTRY_DSN)", "reconcile", "--repo", repo, env={"REGISTRY_DSN":
                                                                       login.keywords})
    run("ingest", "ingest", version, "--repo", repo, "--dsn", login.url, "--source", str(corpus),
        "--tokenizer-file", token, "--workers", "1")
    run("eval", "eval", version, "--cases", str(cases), "--repo", repo, "--dsn", login.url)
    run("health", "health", "--version", version, "--repo", repo, "--dsn", login.keywords,
        "--tokenizer-file", token)
    promote(registry_repo, version)
    run("reconcile json", "reconcile", "--repo", repo, "--dsn", login.url, "--format", "json")
    run("status", "status", "--repo", repo, "--dsn", login.url)
    run("status json", "status", "--repo", repo, "--format", "json",
        env={"DATABASE_URL": login.url})
    run("db url", "db", "url", "--dsn", login.url)
    run("db url json", "db", "url", "--format", "json", env={"REGISTRY_DSN": login.keywords})
    watcher = start_registry("reconcile", "--watch", "--interval", "0.3", "--repo", repo,
                             "--dsn", login.url)
    deadline = time.monotonic() + 30
    with psycopg.connect(private_server.admin, autocommit=True) as admin:
        while time.monotonic() < deadline:  # what a DBA sees while the watcher runs
            names = admin.execute("SELECT string_agg(application_name, ' ') FROM "
                                  "pg_stat_activity").fetchone()
            evidence.add("pg_stat_activity", str(names))
            if "chunk-registry reconcile" in str(names):
                break
            time.sleep(0.02)
    watcher.send_signal(signal.SIGTERM)
    out, err = watcher.communicate(timeout=30)
    codes["watch"] = watcher.returncode
    evidence.add("watch log", out + err)

    # Pull requests over the GitHub API: one that works, then servers that echo the token
    registry_repo.git("remote", "set-url", "origin", "https://github.com/acme/chunk-configs.git")
    registry_repo.git("remote", "set-url", "--push", "origin", str(registry_repo.origin))
    lock = ["lock", "--repo", repo, "--tokenizer-file", token, "--pr"]
    with FakeGitHub(TOKEN, {"acme/chunk-configs": registry_repo.origin}) as github:
        run("lock --pr", *lock, "--chunk-size", "140", env={"GITHUB_API_URL": github.url})
    sent = {r.headers.get("authorization") for r in github.received}
    for size, status in ((150, 401), (160, 403), (170, 422), (180, 500)):
        with EchoingGitHub(TOKEN, {}, status=status) as echo:
            run(f"lock --pr, API answers {status} with the token", *lock, "--chunk-size",
                str(size), env={"GITHUB_API_URL": echo.url})
    registry_repo.git("remote", "set-url", "origin", str(registry_repo.origin))
    registry_repo.git("config", "--unset", "remote.origin.pushurl")

    # Failing paths
    run("wrong password", "plan", "--repo", repo, "--dsn", login.wrong)
    run("malformed dsn", "reconcile", "--repo", repo, "--dsn", login.malformed)
    run("missing source", "ingest", version, "--repo", repo, "--dsn", login.url, "--source",
        str(tmp_path / "nowhere"), "--tokenizer-file", token, "--into-production")
    run("unknown version", "eval", "2030-01-01-000000-v9", "--cases", str(cases), "--repo", repo,
        "--dsn", login.url)
    run("debug, server unreachable", "--debug", "status", "--repo", repo, "--dsn",
        login.url.replace(urllib.parse.quote(private_server.socket_dir, safe=""), "%2Fnowhere"))
    registry_repo.git("remote", "set-url", "origin",
                      f"https://x-access-token:{TOKEN}@127.0.0.1:1/owner/registry.git")
    registry_repo.git("config", "http.extraHeader", f"AUTHORIZATION: bearer {HEADER_TOKEN}")
    run("fetch with a token in the remote", "reconcile", "--repo", repo, "--dsn", login.url)
    for name, dsn in (("library, wrong password", login.wrong),
                      ("library, malformed", login.malformed)):
        from registry.commands.reconcile import reconcile

        try:
            reconcile(repo, dsn=dsn, fetch=False)
        except RegistryError as err:
            evidence.add(name, str(err) + repr(err) + "".join(traceback.format_exception(err)))

    with psycopg.connect(private_server.dsn(DATABASE), autocommit=True) as conn:
        for table in conn.execute("SELECT table_name FROM information_schema.tables WHERE "
                                  "table_schema = 'chunk_registry'").fetchall():
            rows = conn.execute(sql.SQL("SELECT string_agg(t::text, ' ') FROM {}.{} t").format(
                sql.Identifier("chunk_registry"), sql.Identifier(table[0]))).fetchone()
            evidence.add(f"chunk_registry.{table[0]}", str(rows))
    evidence.add("server log", private_server.log_since(log_offset))
    for path in (registry_repo.path / ".git" / "chunk-registry").glob("*"):
        evidence.add(f"cache {path.name}", path.read_text(errors="replace"))

    assert codes == {
        "validate": 0, "plan": 0, "reconcile (REGISTRY_DSN)": 0, "ingest": 0, "eval": 0,
        "health": codes["health"], "reconcile json": 0, "status": 0, "status json": 0,
        "db url": 0, "db url json": 0, "watch": 0, "wrong password": 5, "malformed dsn": 2,
        "missing source": 1, "unknown version": 16, "debug, server unreachable": 5,
        "fetch with a token in the remote": 6, "lock --pr": 0,
        **{f"lock --pr, API answers {s} with the token": 9 for s in (401, 403, 422, 500)}}, codes
    assert sent == {f"Bearer {TOKEN}"}, "the token did go to the API, in the header only"
    assert "Bearer ***" in evidence.texts["lock --pr, API answers 403 with the token output"]
    assert "password authentication failed" in evidence.texts["wrong password output"]
    assert "***" in evidence.texts["db url output"]
    assert len(evidence.texts["chunk_registry.reconcile_runs"]) > 100
    assert "chunk-registry reconcile" in evidence.texts["pg_stat_activity"]
    leaks = evidence.leaks()
    figures["secrets"] = {"commands": len(codes) + 2, "places searched": len(evidence.texts),
                          "secrets searched": len(SECRETS), "leaked": len(leaks)}
    assert leaks == []
