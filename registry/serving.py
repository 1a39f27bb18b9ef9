"""The Python API for applications: which table to read, and which config production uses.

`retrieval_table(key=...)` is what an application calls per request: it reads the served
state the reconciler materialized in the database (`chunk_registry.served_state`), never git,
through a `Router` that caches it in-process and re-reads it only when its version moved
(checked at most every `CHECK_INTERVAL_S`, one query per check), so a warm call is a clock
read, a hash and a comparison. With an experiment running, the key's arm decides the table
(`registry.routing`); `record_outcome(key, success)` reports how the request went.

Without `key` or a database, `retrieval_table()` keeps its first meaning: it reads the
committed main branch of the registry repo (the view, or with `use_shadow`/`version` one
locked config's table), which evaluation scripts and start-up code can afford.

`embedder_spec()` and `retrieval_query()` give what a hybrid query needs: the embedder to embed
the question with, and the statement.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from registry.config import LockedConfig, experiment_run, parse_rfc3339
from registry.database import bookkeeping
from registry.database.connection import first_line, scrub
from registry.embedding.spec import EmbedderSpec
from registry.errors import ConfigInvalid, DatabaseUnavailable, ServedStateUnavailable, UsageError
from registry.quality import retrieval
from registry.quality.evaluation import relax_to_any
from registry.reconciler.served import CHECK_INTERVAL_S, SERVED_GRACE
from registry.repository.git import Git
from registry.repository.state import RegistryState, committed_state
from registry.routing import Arm, point
from registry.secrets import register_dsn

REPO_ENV = "REGISTRY_REPO"
NAME_ENV = "REGISTRY_NAME"
ENVIRONMENT_ENV = "REGISTRY_ENVIRONMENT"
DSN_ENVS = ("REGISTRY_DSN", "DATABASE_URL")
MAX_STALE_S = SERVED_GRACE.total_seconds() / 2
"""How long a cache that cannot be refreshed (database down) is still served: half the time
the reconciler keeps a table that left the served state, so it never names a dropped one."""

MAX_CHECK_INTERVAL_S = MAX_STALE_S
"""The longest `check_interval` a Router accepts: a cache may name a table for one interval
after it left the served state, and the reconciler keeps such a table only `SERVED_GRACE`;
half of it leaves the same margin as the stale cache has."""

log = logging.getLogger("registry.serving")


@dataclass(frozen=True)
class Snapshot:
    """One served state, flattened for the hot path."""

    version: int
    registry: str
    view: str
    production_version: str | None
    production_table: str | None
    experiment: str | None = None
    salt: str = ""
    share: float = 0.0
    ends: float = 0.0
    """The experiment's end as a Unix time: routing stops then without waiting for a refresh."""
    candidate_version: str | None = None
    candidate_table: str | None = None
    state: Mapping[str, Any] | None = None
    run: str = ""
    """The experiment's run (`config.experiment_run`), which its outcomes are recorded under."""

    @classmethod
    def of(cls, registry: str, version: int, state: Mapping[str, Any]) -> Snapshot:
        production = state.get("production") or {}
        experiment = state.get("experiment")
        base = cls(version, registry, str(state["view"]), production.get("version"),
                   production.get("table"), state=state)
        if not experiment:
            return base
        ends = parse_rfc3339(str(experiment["ends"]))
        candidate = str(experiment["candidate"]["version"])
        return cls(version, registry, base.view, base.production_version, base.production_table,
                   str(experiment["name"]), str(experiment["salt"]), float(experiment["share"]),
                   ends.timestamp(), candidate, str(experiment["candidate"]["table"]), state,
                   experiment_run(candidate, str(experiment["salt"]), ends))


class Router:
    """The served state of one registry and environment, cached in-process.

    Thread-safe: readers share one immutable snapshot; one thread at a time refreshes it on
    the router's own connection (autocommit, opened lazily, reopened after a failure).
    """

    def __init__(
        self, dsn: str | None = None, *, registry: str | None = None,
        environment: str | None = None, check_interval: float = CHECK_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.dsn = dsn or next((os.environ[n] for n in DSN_ENVS if os.environ.get(n)), None)
        if not self.dsn:
            raise UsageError("no database to read the served state from",
                             where="registry.serving",
                             fix="pass dsn=... or set REGISTRY_DSN (or DATABASE_URL)")
        register_dsn(self.dsn)
        self.registry = registry or os.environ.get(NAME_ENV) or None
        self.environment = environment or os.environ.get(ENVIRONMENT_ENV) or "production"
        self.check_interval = _check_interval(check_interval)
        self.clock = clock
        self.refreshes = 0
        self._snapshot: Snapshot | None = None
        self._next_check = 0.0
        self._checked_at = 0.0
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()

    # -- the hot path

    def snapshot(self) -> Snapshot:
        """The current served state: the cached one until the next check is due."""
        snapshot = self._snapshot
        if snapshot is not None and self.clock() < self._next_check:
            return snapshot
        return self._refresh()

    def arm(self, key: str) -> Arm | None:
        """The arm of `key` in the running experiment, None when none is running."""
        snapshot = self.snapshot()
        if snapshot.experiment is None or time.time() >= snapshot.ends:
            return None
        return "candidate" if point(snapshot.salt, key) < snapshot.share else "control"

    def table(self, key: str | None = None) -> str:
        """The qualified table to read for this request: the candidate's for a key in the
        candidate arm, else production's."""
        snapshot = self.snapshot()
        if (key is not None and snapshot.experiment is not None and time.time() < snapshot.ends
                and point(snapshot.salt, key) < snapshot.share):
            return snapshot.candidate_table  # type: ignore[return-value]
        if snapshot.production_table is None:
            raise ServedStateUnavailable(
                f"registry {snapshot.registry} serves no production in {self.environment} yet",
                where="registry.serving", fix="promote a config and reconcile")
        return snapshot.production_table

    # -- outcomes

    def record_outcome(self, key: str, success: bool, *, metric: str = "success",
                       details: Mapping[str, Any] | None = None) -> Arm | None:
        """Record how the request of `key` went, in its arm of the running experiment; the arm
        (None, and nothing recorded, when no experiment is running)."""
        snapshot = self.snapshot()  # one snapshot: the arm, version and run agree
        if snapshot.experiment is None or time.time() >= snapshot.ends:
            return None
        arm: Arm = "candidate" if point(snapshot.salt, key) < snapshot.share else "control"
        version = snapshot.candidate_version if arm == "candidate" else (
            snapshot.production_version)
        assert version is not None
        with self._lock:
            try:
                bookkeeping.record_outcome(self._connection(), snapshot.registry,
                                           self.environment, snapshot.experiment,
                                           snapshot.run, arm, version,
                                           key, success, metric, details)
            except psycopg.Error as err:
                self._close()
                raise self._unavailable(err, "recording an outcome") from None
        return arm

    # -- refreshing

    def refresh(self) -> Snapshot:
        """Check the served-state version now (e.g. on a NOTIFY chunk_registry_served)."""
        return self._refresh(force=True)

    def _refresh(self, *, force: bool = False) -> Snapshot:
        with self._lock:
            now = self.clock()
            snapshot = self._snapshot
            if snapshot is not None and now < self._next_check and not force:
                return snapshot  # another thread refreshed it meanwhile
            try:
                fresh = self._read(snapshot)
            except psycopg.errors.UndefinedTable:
                self._close()
                raise ServedStateUnavailable(
                    "this database has no served state (chunk_registry.served_state is "
                    "missing)", where="registry.serving",
                    fix="run `registry reconcile` against it with this chunk-registry "
                    "release") from None
            except psycopg.Error as err:
                self._close()
                if snapshot is not None and now - self._checked_at < MAX_STALE_S:
                    log.warning("served state not refreshed (%s): serving version %d for now",
                                scrub(first_line(err), self.dsn or ""),
                                snapshot.version)
                    self._next_check = now + min(self.check_interval, 0.5)
                    return snapshot
                raise self._unavailable(err, "reading the served state") from None
            self.refreshes += 1
            self._snapshot = fresh
            self._checked_at = now
            self._next_check = now + self.check_interval
            return fresh

    def _read(self, known: Snapshot | None) -> Snapshot:
        """One query: the version, and the state only when it moved."""
        version = known.version if known is not None else -1
        known_registry = known.registry if known is not None else None
        rows = self._connection().execute(
            bookkeeping.READ_SERVED,
            (version, known_registry, self.environment, self.registry, self.registry)).fetchall()
        if not rows:
            raise ServedStateUnavailable(
                f"no served state for registry {self.registry or '(any)'} in environment "
                f"{self.environment} in this database", where="registry.serving",
                fix="run `registry reconcile` against it (it materializes the served state), "
                "and check REGISTRY_NAME / registry=")
        if len(rows) > 1:
            raise ServedStateUnavailable(
                f"several registries serve environment {self.environment} in this database",
                where="registry.serving", fix="pass registry=... or set REGISTRY_NAME")
        registry, found, state = rows[0]
        if state is None and known is not None:
            return known
        return Snapshot.of(str(registry), int(found), state)

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            assert self.dsn is not None
            self._conn = psycopg.connect(self.dsn, autocommit=True,
                                         application_name="chunk-registry serving")
            # An outcome is a statistic, not a record of truth: a crash may lose the last few
            # hundred milliseconds of them, and a request never waits for a WAL flush.
            self._conn.execute("SET synchronous_commit = off")
        return self._conn

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None

    def _unavailable(self, err: psycopg.Error, doing: str) -> DatabaseUnavailable:
        reason = scrub(first_line(err), self.dsn or "")
        return DatabaseUnavailable(f"lost the database while {doing}: {reason}",
                                   where="registry.serving", fix="check the server")

    def close(self) -> None:
        with self._lock:
            self._close()


def _check_interval(seconds: float) -> float:
    """`seconds`, when a cache checked that rarely never names a table the reconciler may
    have dropped (see `MAX_CHECK_INTERVAL_S`)."""
    if not 0 <= seconds <= MAX_CHECK_INTERVAL_S:  # NaN fails both comparisons too
        raise UsageError(
            f"check_interval={seconds!r} is not between 0 and {MAX_CHECK_INTERVAL_S:g} s",
            where="registry.serving",
            fix=f"a served table is dropped {SERVED_GRACE.total_seconds():g} s after it left "
            "the served state: use at most half of that, or refresh() on NOTIFY")
    return float(seconds)


_routers: dict[tuple[str | None, str | None, str | None], Router] = {}
_routers_lock = threading.Lock()


def router(dsn: str | None = None, *, registry: str | None = None,
           environment: str | None = None) -> Router:
    """The process-wide router for (dsn, registry, environment), made on first use."""
    key = (dsn, registry, environment)
    found = _routers.get(key)
    if found is not None:
        return found
    with _routers_lock:
        return _routers.setdefault(key, Router(dsn, registry=registry, environment=environment))


def _state(repo: Path | str | None) -> RegistryState:
    path = repo if repo is not None else os.environ.get(REPO_ENV, ".")
    return committed_state(Git(path))


def retrieval_table(
    use_shadow: bool = False, version: str | None = None, *, repo: Path | str | None = None,
    key: str | None = None, dsn: str | None = None, registry: str | None = None,
    environment: str | None = None,
) -> str:
    """The qualified name to read.

    With `key` (a request key: a user or session id) or `dsn`: the table the database serves
    this request (the candidate's table for a key in an experiment's candidate arm, else
    production's), from the cached served state (`Router`). Otherwise, from git:
    `public.document_chunks` (the production view), or with `use_shadow` the table of
    `version` (default: CHUNK_VERSION, as `registry env VERSION` exports it).

    The schema bounds both parts to `[a-z_][a-z0-9_]*`, so the name is usable as is; pass it
    to `psycopg.sql.Identifier` when building SQL."""
    if key is not None or dsn is not None:
        return router(dsn, registry=registry, environment=environment).table(key)
    state = _state(repo)
    settings = state.settings
    if not use_shadow and version is None:
        return _qualified(settings.schema, settings.base_name)
    chosen = version or os.environ.get("CHUNK_VERSION", "").strip()
    if not chosen:
        raise ConfigInvalid(
            "no shadow version to read", where="retrieval_table",
            fix='pass version="..." or export CHUNK_VERSION (eval "$(registry env VERSION)")',
        )
    config = state.config(chosen)
    return _qualified(settings.schema, settings.table_name(config.chunk_version))


def record_outcome(
    key: str, success: bool, *, metric: str = "success",
    details: Mapping[str, Any] | None = None, dsn: str | None = None,
    registry: str | None = None, environment: str | None = None,
) -> Arm | None:
    """Report how the request of `key` went (a hit, a click, a thumbs-up: `success`) into
    `chunk_registry.experiment_outcomes`, in the key's arm; returns the arm, None (nothing
    recorded) when no experiment is running."""
    return router(dsn, registry=registry, environment=environment).record_outcome(
        key, success, metric=metric, details=details)


def active_config(*, repo: Path | str | None = None) -> LockedConfig:
    """The production LockedConfig on the main branch (ConfigInvalid when there is none)."""
    return _state(repo).config("production")


def _qualified(schema: str, name: str) -> str:
    return f"{schema}.{name}"


def embedder_spec(version: str | None = None, *, repo: Path | str | None = None
                  ) -> EmbedderSpec | None:
    """The embedder production's config (or `version`'s) pins: what the application must
    embed its queries with (`query_prefix` prepended), or None for a BM25-only config."""
    return retrieval.embedder_spec(_state(repo).config(version or "production"))


@dataclass(frozen=True)
class RetrievalQuery:
    """One retrieval statement for an application: run `settings` (SET statements) on the
    connection, then `statement` with `parameters(conn, question, vector)`. Rows: (id,
    bm25_text, rank), best first. `registry eval` measures this same statement for dense and
    hybrid retrieval; for bm25 alone it ranks a bounded candidate set (the rows matching the
    most query terms, at most 20 x k: `evaluation.retrieval_statement`), which equals this
    statement's ranking whenever the question matches no more rows than that."""

    mode: retrieval.RetrievalMode
    statement: sql.Composed
    settings: tuple[sql.Composed, ...]
    spec: EmbedderSpec | None

    def as_string(self, context: Any = None) -> str:
        return self.statement.as_string(context)

    def parameters(self, conn: psycopg.Connection[Any], question: str,
                   vector: Sequence[float] | None = None, *, match: str = "any"
                   ) -> dict[str, str]:
        """The statement's parameters for a question: its tsquery as eval builds it
        (websearch_to_tsquery, top-level AND relaxed to OR with match="any") and, unless
        bm25, the query's vector (embedded with `spec.query_prefix` first) as pgvector text."""
        row = conn.execute("SELECT websearch_to_tsquery('english', %s)::text",
                           (question,)).fetchone()
        tsquery = str(row[0]) if row else ""
        values = {"tsquery": relax_to_any(tsquery) if match == "any" else tsquery}
        if self.mode != "bm25":
            if vector is None:
                raise ConfigInvalid(f"{self.mode} retrieval needs the query's vector",
                                    where="RetrievalQuery.parameters",
                                    fix="embed the question (with spec.query_prefix) first")
            values["embedding"] = retrieval.vector_literal(vector)
        return values


def retrieval_query(
    version: str | None = None, *, mode: retrieval.RetrievalMode | None = None, k: int = 50,
    repo: Path | str | None = None,
) -> RetrievalQuery:
    """The SQL (composed with psycopg.sql) of a hybrid query over production (its view for
    bm25, its table when vectors are read), or over the table of `version`: reciprocal rank
    fusion (k=60) of BM25 (`websearch_to_tsquery`,
    ranked by ts_rank_cd) and dense (the HNSW index's operator) lists of `k` each. `mode`
    defaults to hybrid when the config pins an embedder, bm25 otherwise."""
    state = _state(repo)
    settings = state.settings
    config = state.config(version or "production")
    spec = retrieval.embedder_spec(config)
    chosen: retrieval.RetrievalMode = mode or ("hybrid" if spec is not None else "bm25")
    if chosen != "bm25" and spec is None:
        raise ConfigInvalid(f"{config.chunk_version} pins no embedder, so it has no vectors for "
                            f"{chosen} retrieval", where="retrieval_query",
                            fix='use mode="bm25", or lock a config that pins an embedder')
    # The production view exposes VIEW_COLUMNS, which hold no vector column: a dense or hybrid
    # query reads production's table itself (re-read the registry after a promotion; the
    # previous table stays through the grace period, so a reader that lags keeps working).
    through_view = version is None and chosen == "bm25"
    name = settings.base_name if through_view else settings.table_name(config.chunk_version)
    # The schema bounds both name parts to [a-z_][a-z0-9_]*: no `%` a parameter could clash with.
    statement = retrieval.statement(
        chosen, sql.Identifier(settings.schema, name), spec,
        sql.Placeholder("tsquery"), sql.Placeholder("embedding"), sql.Literal(k))
    settings_sql = retrieval.vector_settings(k) if chosen != "bm25" else ()
    return RetrievalQuery(chosen, statement, settings_sql, spec)
