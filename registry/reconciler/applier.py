"""The applier: runs a plan's actions against one connection, each in its own transaction,
re-checking the planner's safety rules under row locks, with a crash point (registry.faults)
around every DDL statement and bookkeeping write."""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import psycopg
from psycopg import sql

from registry import faults
from registry.config import ProductionConfig, duration_text
from registry.database import bookkeeping
from registry.database.bookkeeping import BOOKKEEPING_SCHEMA
from registry.database.chunk_table import (
    VECTOR_EXTENSION,
    VIEW_COLUMNS,
    Marker,
    VectorColumn,
    has_rows,
    marker_ddl,
    relation_exists,
    relation_marker,
    table_ddl,
    view_ddl,
)
from registry.database.connection import first_line, timeout_setting
from registry.errors import Refused, RegistryError
from registry.reconciler.planner import (
    DESTRUCTIVE,
    Action,
    CreateTable,
    Drop,
    Plan,
    Retire,
    SwapProduction,
    Unretire,
    utc_text,
)
from registry.reconciler.served import SERVED_GRACE

log = logging.getLogger("registry.reconciler.applier")

DEFAULT_LOCK_TIMEOUT_MS = 500
"""How long an action's DDL may queue for a lock before it retries (the swap: at most
SWAP_STALL_MS / 4 per attempt)."""
SWAP_ATTEMPTS = 6
SWAP_STALL_MS = 100
"""The most a swap may stall new readers in total: every attempt that queues its exclusive lock
behind a holder blocks the readers that arrive meanwhile for up to its lock_timeout."""
SWAP_DEADLINE_S = 60.0
"""How long a swap waits for the view's lock holders to finish before it is left pending."""


class _ViewBusy(Exception):
    """Another session holds or awaits a lock on the view: the swap waits without queuing."""

    def __init__(self, holders: int) -> None:
        super().__init__(f"{holders} locks on the view are held or awaited by other sessions")
        self.holders = holders


_VIEW_HOLDERS = """
SELECT count(*) FROM pg_locks
WHERE locktype = 'relation' AND relation = to_regclass(%s)
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND pid IS DISTINCT FROM pg_backend_pid()
"""


@dataclass
class ActionResult:
    """What applying one action did."""

    action: Action
    outcome: Literal["applied", "failed", "skipped", "pending"]
    error: str | None = None
    attempts: int = 1
    seconds: float = 0.0


@dataclass
class Applier:
    """Runs actions against one connection, each in its own transaction."""

    conn: psycopg.Connection[Any]
    settings: ProductionConfig
    commit: str | None
    now: datetime
    force: bool = False
    schema_exists: bool = True
    lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS
    attempts: int = SWAP_ATTEMPTS
    swap_deadline: float = SWAP_DEADLINE_S
    swap_stall_ms: int = SWAP_STALL_MS

    def apply(self, plan: Plan) -> list[ActionResult]:
        """Every action in order; after a failure no destructive action runs."""
        results: list[ActionResult] = []
        failed = False
        for action in plan.actions:
            if failed and isinstance(action, DESTRUCTIVE):
                results.append(ActionResult(action, "skipped",
                                            "an earlier action failed", attempts=0))
                log.info("skipped %s: an earlier action failed", action.describe())
                continue
            result = self.run(action)
            results.append(result)
            failed = failed or result.outcome in ("failed", "pending")
        return results

    def run(self, action: Action) -> ActionResult:
        if isinstance(action, SwapProduction):
            return self._run_swap(action)
        started = time.monotonic()
        name = type(action).__name__
        attempt = 0
        while True:
            attempt += 1
            faults.point("apply", name, "begin")
            try:
                with self.conn.transaction():
                    self.conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(
                        timeout_setting(self.lock_timeout_ms)))
                    self._do(action)
                    faults.point("apply", name, "before_commit")
            except psycopg.errors.LockNotAvailable as err:
                if attempt < self.attempts:
                    delay = min(2.0, 0.1 * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
                    log.info("%s: lock_timeout after %dms, retry %d in %.2fs", action.describe(),
                             self.lock_timeout_ms, attempt, delay)
                    time.sleep(delay)
                    continue
                return self._failed(action, f"{first_line(err)} ({attempt} attempts: a reader "
                                    "holds a lock on it; retry when it is done)", attempt, started)
            except psycopg.Error as err:
                if isinstance(err, psycopg.OperationalError) and self.conn.closed:
                    raise
                return self._failed(action, first_line(err), attempt, started)
            except RegistryError as err:
                return self._failed(action, str(err), attempt, started)
            faults.point("apply", name, "committed")
            log.info("applied: %s", action.describe())
            return ActionResult(action, "applied", attempts=attempt,
                                seconds=time.monotonic() - started)

    def _run_swap(self, action: SwapProduction) -> ActionResult:
        """The swap, stalling readers at most `swap_stall_ms` in total: while anyone holds or
        awaits a lock on the view it waits (jittered backoff) without queuing behind them;
        then it attempts with a lock_timeout of a quarter of the budget (a reader may arrive
        between the check and the DDL), and after `swap_deadline` or a spent budget it leaves
        the swap pending for the next run."""
        started = time.monotonic()
        attempt_ms = max(1, min(self.lock_timeout_ms, self.swap_stall_ms // 4))
        stalled_ms = 0
        attempt = 0
        delay = 0.02
        while True:
            attempt += 1
            outcome = self._attempt(action, attempt_ms)
            if outcome is None:
                log.info("applied: %s", action.describe())
                return ActionResult(action, "applied", attempts=attempt,
                                    seconds=time.monotonic() - started)
            if isinstance(outcome, ActionResult):
                return outcome if outcome.outcome != "failed" else self._failed(
                    action, outcome.error or "", attempt, started)
            if isinstance(outcome, psycopg.errors.LockNotAvailable):
                stalled_ms += attempt_ms
            waited = time.monotonic() - started
            if waited + delay > self.swap_deadline or stalled_ms + attempt_ms > self.swap_stall_ms:
                why = (str(outcome) if isinstance(outcome, _ViewBusy)
                       else f"{attempt} attempts timed out ({stalled_ms} ms of reader stall)")
                error = (f"pending: {why} after {waited:.1f}s; production still reads "
                         f"{action.schema}.{action.old_table or action.view}")
                log.warning("PENDING: %s: %s", action.describe(), error)
                return ActionResult(action, "pending", error, attempt, waited)
            log.info("%s: %s, retry %d in %.2fs", action.describe(), outcome, attempt, delay)
            time.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(0.5, delay * 1.5)

    def _attempt(
        self, action: SwapProduction, lock_timeout_ms: int
    ) -> ActionResult | _ViewBusy | psycopg.errors.LockNotAvailable | None:
        """One swap transaction: None when it committed, else why not (a result when final)."""
        name = type(action).__name__
        faults.point("apply", name, "begin")
        try:
            with self.conn.transaction():
                self.conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(
                    sql.Literal(f"{lock_timeout_ms}ms")))
                self._swap(action)
                faults.point("apply", name, "before_commit")
        except _ViewBusy as busy:
            return busy
        except psycopg.errors.LockNotAvailable as err:
            return err
        except psycopg.Error as err:
            if isinstance(err, psycopg.OperationalError) and self.conn.closed:
                raise
            return ActionResult(action, "failed", first_line(err))
        except RegistryError as err:
            return ActionResult(action, "failed", str(err))
        faults.point("apply", name, "committed")
        return None

    def _failed(self, action: Action, error: str, attempts: int, started: float) -> ActionResult:
        log.warning("FAILED: %s: %s", action.describe(), error)
        return ActionResult(action, "failed", error, attempts, time.monotonic() - started)

    def _ddl(self, action: Action, statement: sql.Composed) -> None:
        """One DDL statement of `action`, between two crash points."""
        faults.point("apply", type(action).__name__, "ddl")
        self.conn.execute(statement)
        faults.point("apply", type(action).__name__, "ddl_done")

    def _bookkeeping(self, action: Action) -> None:
        """The crash point before each bookkeeping write of `action` (after its DDL, in the
        same transaction)."""
        faults.point("apply", type(action).__name__, "bookkeeping")

    def _do(self, action: Action) -> None:
        if isinstance(action, CreateTable):
            self._create(action)
        elif isinstance(action, SwapProduction):
            self._swap(action)
        elif isinstance(action, Retire | Unretire):
            retire = isinstance(action, Retire)
            self._bookkeeping(action)
            if not bookkeeping.set_retired(self.conn, action.schema, action.table, retire,
                                           self.settings.identities):
                expected = "shadow" if retire else "retired"
                raise Refused(f"{action.schema}.{action.table} is not a managed {expected} table")
        else:
            self._drop(action)

    def _create(self, action: CreateTable) -> None:
        if not self.schema_exists:
            self._ddl(action, sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
                sql.Identifier(action.schema)))
        vector = None
        if action.embedding_dimension is not None:
            vector = VectorColumn(action.embedding_dimension, action.embedding_normalized,
                                  self._vector_schema(action))
        for statement in table_ddl(
            action.schema, action.table, chunk_version=action.chunk_version,
            config_hash=action.config_hash, prefix_policy=action.prefix_policy,
            chunk_size=action.chunk_size, token_budget=action.token_budget,
            registry=self.settings.identity, vector=vector,
        ):
            self._ddl(action, statement)
        self._bookkeeping(action)
        bookkeeping.record_created(self.conn, action.schema, action.table, action.chunk_version,
                                   action.config_hash, self.commit, self.settings.identity)

    def _vector_schema(self, action: CreateTable) -> str:
        """Where pgvector's type lives, creating the extension (in the tables' schema) when
        the plan found it missing; re-read, since another session may have created it."""
        if action.create_extension:
            self._ddl(action, sql.SQL("CREATE EXTENSION IF NOT EXISTS {} SCHEMA {}").format(
                sql.Identifier(VECTOR_EXTENSION), sql.Identifier(action.schema)))
        row = self.conn.execute(
            "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
            "WHERE e.extname = %s", (VECTOR_EXTENSION,)).fetchone()
        if row is None:
            raise Refused(f"the pgvector extension is not created in this database, needed by "
                          f"{action.chunk_version}'s embedding column",
                          fix=f"an admin runs `CREATE EXTENSION {VECTOR_EXTENSION};` in it")
        return str(row[0])

    def _swap(self, action: SwapProduction) -> None:
        """CREATE OR REPLACE VIEW + the bookkeeping update, in the caller's transaction."""
        registries = self.settings.identities
        if bookkeeping.lock_live(self.conn, action.schema, action.table, registries) is None:
            raise Refused(f"{action.schema}.{action.table} is not a live managed table: production "
                          "never reads an unmanaged or retired table")
        if not self.force and not has_rows(self.conn, action.schema, action.table):
            raise Refused(f"{action.schema}.{action.table} is empty",
                          fix=f"ingest {action.chunk_version} first, or pass --force")
        columns = self.conn.execute(
            "SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_attribute a "
            "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = %s AND c.relkind = 'v' AND a.attnum > 0 "
            "AND NOT a.attisdropped", (action.schema, action.view)).fetchone()
        holders = self.conn.execute(
            _VIEW_HOLDERS, (sql.Identifier(action.schema, action.view).as_string(self.conn),)
        ).fetchone()
        if holders and holders[0]:
            raise _ViewBusy(int(holders[0]))
        if columns and columns[0] and tuple(columns[0]) != VIEW_COLUMNS:
            # A view re-pointed by hand with other columns cannot be CREATE OR REPLACEd; it
            # is dropped and recreated in this same transaction (RESTRICT: never a dependent).
            self._ddl(action, sql.SQL("DROP VIEW {}").format(
                sql.Identifier(action.schema, action.view)))
        self._ddl(action, view_ddl(action.schema, action.view, action.table))
        self._ddl(action, marker_ddl("VIEW", action.schema, action.view,
                                     Marker(self.settings.identity, action.chunk_version)))
        # Swapping back to the most recent former production is a rollback: the table it
        # leaves is no rollback target (nothing returns to it), so it gets no demoted_at and a
        # retirement of it is dropped after the grace period, as `registry retire` expects.
        rollback = (bookkeeping.former_productions(self.conn, 1, registries)
                    == [(action.schema, action.table)])
        self._bookkeeping(action)
        bookkeeping.set_demoted(self.conn, action.schema, action.table, rollback=rollback,
                                registries=registries)
        # A drift correction re-points the view at the table that is production already: it
        # keeps its promoted_at (when it became production; the regression watch's window).
        self._bookkeeping(action)
        bookkeeping.set_production(self.conn, action.schema, action.table)

    def _exists(self, action: Drop) -> bool:
        return relation_exists(self.conn, action.schema, action.table)

    def _drop(self, action: Drop) -> None:
        """Re-check every drop rule against the bookkeeping row, locked, then DROP (RESTRICT)."""
        settings = self.settings
        registries = settings.identities
        row = bookkeeping.lock_row(self.conn, action.schema, action.table, registries)
        name = f"{action.schema}.{action.table}"
        if row is None:
            raise Refused(f"{name} is not in {BOOKKEEPING_SCHEMA}.managed_tables as a table of "
                          f"registry {settings.identity}: the registry never drops a table it "
                          "does not manage")
        status, retired_at = row
        if status != "retired" or retired_at is None:
            raise Refused(f"{name} is {status}, not retired: only retired tables are dropped")
        if retired_at + settings.grace_period > self.now:
            raise Refused(f"{name} was retired at {utc_text(retired_at)}: the grace period "
                          f"{duration_text(settings.grace_period)} is not over")
        if bookkeeping.served_within(self.conn, action.schema, action.table, registries,
                                     SERVED_GRACE.total_seconds(), self.now):
            raise Refused(f"{name} was served to applications less than "
                          f"{duration_text(SERVED_GRACE)} ago: a reader's cache may name it")
        former = bookkeeping.former_productions(self.conn, settings.keep_previous, registries)
        if (action.schema, action.table) in former:
            raise Refused(f"{name} is the previous production (the rollback target): kept")
        marker = relation_marker(self.conn, action.schema, action.table)
        if self._exists(action) and (
                marker is None or marker.chunk_version is None
                or not settings.owns(marker.registry) or action.schema != settings.schema
                or action.table != settings.table_name(marker.chunk_version)):
            raise Refused(f"{name} does not carry registry {settings.identity}'s marker for "
                          "a table of its own: the registry never drops it")
        self._ddl(action, sql.SQL("DROP TABLE IF EXISTS {}.{} RESTRICT").format(
            sql.Identifier(action.schema), sql.Identifier(action.table)))
        self._bookkeeping(action)
        bookkeeping.mark_dropped(self.conn, action.schema, action.table)
