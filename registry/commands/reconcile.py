"""The reconciler's commands: plan, reconcile (once, or watching; `--source` is in `data`),
status, and the database in use (db url, db stop).

The desired state is read and validated BEFORE any connection (an invalid or untrusted commit
runs no SQL); a reconcile then works on the one connection that holds the reconcile lock, so
the lock and the work stop together.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

import registry.reconciler.status
from registry.database.connection import (
    Dsn,
    database_error,
    embedded_data_dir,
    resolve_dsn,
    session,
    stop_embedded,
)
from registry.environments import environment_dsn, environments
from registry.reconciler import run
from registry.reconciler.applier import DEFAULT_LOCK_TIMEOUT_MS, SWAP_ATTEMPTS, SWAP_DEADLINE_S
from registry.reconciler.planner import Plan
from registry.repository import trust
from registry.repository.git import Git
from registry.repository.state import committed_state


@contextmanager
def translated(dsn: Dsn, doing: str) -> Iterator[None]:
    """Driver errors while `doing` something as one RegistryError line without the password."""
    try:
        yield
    except psycopg.Error as err:
        raise database_error(err, dsn.value, doing) from None


def plan(repo: Path, *, ref: str | None = None, dsn: str | None = None, fetch: bool = True,
         force: bool = False, environment: str | None = None) -> Plan:
    """What `reconcile` would do now (reads only)."""
    git = Git(repo)
    state = run.desired_state(git, ref, fetch=fetch, environment=environment)
    resolved = resolve_dsn(environment_dsn(state, dsn))
    with session(resolved.value, purpose="plan") as conn, \
            translated(resolved, "reading the database"):
        return run.plan(git, state, conn, target=resolved.redacted, force=force)


def offline_plan(repo: Path, base: str, head: str, environment: str | None = None) -> Plan:
    """`plan --base --head`: what merging would do, without a database."""
    return run.offline_plan(Git(repo), base, head, environment)


def reconcile(
    repo: Path | str,
    *,
    ref: str | None = None,
    dsn: str | None = None,
    force: bool = False,
    fetch: bool = True,
    now: datetime | None = None,
    lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS,
    attempts: int = SWAP_ATTEMPTS,
    swap_deadline: float = SWAP_DEADLINE_S,
    wait_lock: float = 0.0,
    require_signed: bool = False,
    allowed_signers: Path | None = None,
    environment: str | None = None,
) -> run.RunResult:
    """One reconcile of `environment` (default: production): the validated (and, with
    `require_signed`, verified) desired state, then the reconcile lock on its own connection,
    then plan, apply and record on it."""
    return reconcile_with(Git(repo), ref=ref, dsn=dsn, force=force, fetch=fetch, now=now,
                          lock_timeout_ms=lock_timeout_ms, attempts=attempts,
                          swap_deadline=swap_deadline, wait_lock=wait_lock,
                          require_signed=require_signed, allowed_signers=allowed_signers,
                          environment=environment)


def reconcile_with(
    git: Git, *, ref: str | None = None, dsn: str | None = None, force: bool = False,
    fetch: bool = True, now: datetime | None = None,
    lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS, attempts: int = SWAP_ATTEMPTS,
    swap_deadline: float = SWAP_DEADLINE_S, wait_lock: float = 0.0,
    require_signed: bool = False, allowed_signers: Path | None = None,
    environment: str | None = None,
) -> run.RunResult:
    """`reconcile` on a repository already opened (`reconcile --source` runs it twice)."""
    signers = trust.allowed_signers(git, allowed_signers) if require_signed else None
    state = run.desired_state(git, ref, fetch=fetch, signers=signers, environment=environment)
    resolved = resolve_dsn(environment_dsn(state, dsn))
    conn = run.acquire_lock(resolved.value, wait=wait_lock)
    try:
        with translated(resolved, "reconciling"):
            return run.reconcile(git, state, conn, target=resolved.redacted, ref=ref,
                                 fetch=fetch, signers=signers, force=force, now=now,
                                 lock_timeout_ms=lock_timeout_ms, attempts=attempts,
                                 swap_deadline=swap_deadline)
    finally:
        conn.close()


def watch(repo: Path, *, stop: threading.Event, interval: float,
          on_result: Callable[[run.RunResult], None] | None = None, **options: Any) -> int:
    """Reconcile every `interval` seconds until `stop` is set; returns the runs completed."""
    return run.watch(lambda: reconcile(repo, **options), stop=stop, interval=interval,
                     on_result=on_result)


def status(repo: Path | str, *, ref: str | None = None, dsn: str | None = None,
           fetch: bool = True, exact: bool = False, environment: str | None = None,
           ) -> registry.reconciler.status.StatusReport:
    """Rows are the catalog's estimates unless `exact`."""
    git = Git(repo)
    state = run.desired_state(git, ref, fetch=fetch, environment=environment)
    resolved = resolve_dsn(environment_dsn(state, dsn))
    with session(resolved.value, purpose="status") as conn, \
            translated(resolved, "reading the database"):
        return registry.reconciler.status.status(git, state, conn, target=resolved.redacted,
                                                 exact=exact)


def db_url(dsn: str | None) -> Dsn:
    return resolve_dsn(dsn)


def db_stop() -> tuple[bool, Path]:
    """Whether the embedded server was running (and is now stopped), and its data directory."""
    return stop_embedded(), embedded_data_dir()



def environment_rows(repo: Path | str, *, ref: str | None = None, fetch: bool = True
                     ) -> list[dict[str, object]]:
    """`registry environments`: every declared environment of the committed state, in
    promotion order, with what it serves and where (one reconcile job each in CI)."""
    state = committed_state(Git(repo), ref, fetch=fetch)
    state.require_valid()
    return [
        {"name": env.name, "path": env.path, "serves": env.serves,
         "tables": f"{env.settings.schema}.{env.settings.base_name}",
         "registry": env.settings.identity, "dsn_env": env.dsn_env,
         "promotion": None if env.promotion is None else {
             "from": env.promotion.source, "soak": int(env.promotion.soak.total_seconds()),
             "require_healthy": env.promotion.require_healthy}}
        for env in environments(state)
    ]
