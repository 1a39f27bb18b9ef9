"""Plan and apply: PostgreSQL converges to the registry repo.

`read_actual` reads the database in a constant number of queries (the catalog, the bookkeeping
rows, and at most one row-count statement), `make_plan` compares it with the desired state read
from git and returns typed actions plus findings (drift, refusals) without touching anything,
and `apply` runs each action in its own transaction. Printing, applying and testing all read the
same action objects.

Safety rules live in the planner AND are re-checked inside each action's transaction (a Drop
re-reads its bookkeeping row FOR UPDATE), so an action built by hand cannot break them either.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import psycopg
from psycopg import sql

from registry import faults
from registry.config import LockedConfig, ProductionConfig
from registry.database.connection import (
    BOOKKEEPING_SCHEMA,
    RECONCILE_LOCK_KEY,
    first_line,
    timeout_setting,
)
from registry.errors import ReconcileBusy, Refused, RegistryError

if TYPE_CHECKING:
    import threading

    from registry.repository.state import RegistryState

log = logging.getLogger("registry.reconciler.core")

DEFAULT_LOCK_TIMEOUT_MS = 500
"""How long the view swap may wait for readers; new readers queue behind it at most this long."""
SWAP_ATTEMPTS = 6
LOCK_NOT_AVAILABLE = "55P03"

VIEW_COLUMNS = (
    "id",
    "doc_id",
    "chunk_index",
    "embedding_text",
    "bm25_text",
    "embedding_token_count",
    "bm25_token_count",
    "chunk_version",
    "ingest_run_id",
    "created_at",
    "bm25_tsv",
)
"""The columns of the production view, in order: the contract retrieval code reads."""


class ReconcileFailed(RegistryError):
    """An action failed while applying a plan; the run is recorded with its error."""


# ---------------------------------------------------------------------------------------------
# Plans are data


@dataclass(frozen=True)
class CreateTable:
    """Create the shadow table of a locked config (empty: an ingest fills it)."""

    schema: str
    table: str
    chunk_version: str
    config_hash: str
    chunk_size: int
    token_budget: int
    prefix_policy: str
    recreate: bool = False

    @classmethod
    def of(cls, schema: str, table: str, config: LockedConfig, *,
           recreate: bool = False) -> CreateTable:
        return cls(schema, table, config.chunk_version, config.config_hash, config.chunk_size,
                   config.token_budget, config.prefix_policy, recreate=recreate)

    def describe(self) -> str:
        if self.recreate:
            return (f"recreate {self.schema}.{self.table} for {self.chunk_version} (dropped "
                    "outside the registry; it comes back empty and needs an ingest)")
        return f"create {self.schema}.{self.table} for {self.chunk_version}"


@dataclass(frozen=True)
class Unretire:
    """A retired config is back in the repo (a reverted retire): its table is a shadow again."""

    schema: str
    table: str
    chunk_version: str

    def describe(self) -> str:
        return f"unretire {self.schema}.{self.table} ({self.chunk_version} is back in the repo)"


@dataclass(frozen=True)
class SwapProduction:
    """Point the production view at another table (and record it), in one transaction."""

    schema: str
    view: str
    old_table: str | None
    table: str
    chunk_version: str
    reason: str = "promote"

    def describe(self) -> str:
        old = self.old_table or "nothing"
        why = "" if self.reason == "promote" else f" ({self.reason})"
        return f"swap {self.schema}.{self.view}: {old} -> {self.table}{why}"


@dataclass(frozen=True)
class Retire:
    """The config left the repo: mark its table retired; it is dropped after the grace period."""

    schema: str
    table: str
    chunk_version: str
    drop_after: str

    def describe(self) -> str:
        return (f"retire {self.schema}.{self.table} ({self.chunk_version}; "
                f"drop after {self.drop_after})")


@dataclass(frozen=True)
class Drop:
    """Drop a retired table whose grace period is over (never CASCADE)."""

    schema: str
    table: str
    chunk_version: str
    retired_at: str | None
    already_gone: bool = False

    def describe(self) -> str:
        if self.already_gone:
            return (f"record {self.schema}.{self.table} as dropped (it was dropped outside "
                    "the registry)")
        return f"drop {self.schema}.{self.table} ({self.chunk_version}, retired {self.retired_at})"


Action = CreateTable | Unretire | SwapProduction | Retire | Drop
ACTION_ORDER: tuple[type, ...] = (CreateTable, Unretire, SwapProduction, Retire, Drop)
DESTRUCTIVE: tuple[type, ...] = (Drop,)

Severity = Literal["error", "warning", "info"]
VIEW_KINDS = frozenset({"view_elsewhere", "view_missing", "view_replaced"})
"""Finding kinds about the production view (drift of what production reads)."""


@dataclass(frozen=True)
class Finding:
    """Something the plan noticed: drift, a refusal, or why a table is kept.

    `error` findings block: `plan` reports changes pending and `reconcile` exits non-zero.
    """

    kind: str
    table: str | None
    message: str
    fix: str | None = None
    severity: Severity = "warning"

    def render(self) -> str:
        return f"{self.message} ({self.fix})" if self.fix else self.message


def action_dict(action: Action) -> dict[str, Any]:
    return {"action": type(action).__name__, **asdict(action), "description": action.describe()}


@dataclass
class Plan:
    """What reconciling `ref` would do to the database, and what it found there."""

    ref: str
    commit: str | None
    target: str
    actions: list[Action] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    @property
    def blocking(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def in_sync(self) -> bool:
        return not self.actions and not self.blocking

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for action in self.actions:
            out[type(action).__name__] = out.get(type(action).__name__, 0) + 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "commit": self.commit,
            "target": self.target,
            "in_sync": self.in_sync,
            "actions": [action_dict(a) for a in self.actions],
            "findings": [asdict(f) for f in self.findings],
        }


# ---------------------------------------------------------------------------------------------
# The actual state


@dataclass(frozen=True)
class ManagedTable:
    """One row of chunk_registry.managed_tables, and whether its table exists."""

    schema_name: str
    table_name: str
    chunk_version: str
    config_hash: str
    status: str
    created_at: datetime
    created_commit: str | None
    promoted_at: datetime | None
    demoted_at: datetime | None
    retired_at: datetime | None
    dropped_at: datetime | None
    present: bool
    last_compare_passed: bool | None = None
    """Outcome of the newest `registry eval --compare` of this table (None: never compared)."""

    @property
    def key(self) -> tuple[str, str]:
        return (self.schema_name, self.table_name)


@dataclass(frozen=True)
class Relation:
    """A relation in the target schema named like the registry's (the view or a table)."""

    name: str
    kind: str
    reads: tuple[tuple[str, str], ...] = ()

    @property
    def is_view(self) -> bool:
        return self.kind == "v"


@dataclass
class ActualState:
    """What the database holds: bookkeeping rows, look-alike relations, known row counts."""

    schema: str
    base_name: str
    now: datetime
    schema_exists: bool = True
    bookkeeping: bool = True
    managed: list[ManagedTable] = field(default_factory=list)
    relations: dict[str, Relation] = field(default_factory=dict)
    rows: dict[str, int | None] = field(default_factory=dict)
    """table -> row count (or 1/0 for a has-rows probe); None when unknown (offline plan)."""

    @property
    def live(self) -> dict[str, ManagedTable]:
        """Managed rows not yet dropped, by chunk_version (unique by an index)."""
        return {m.chunk_version: m for m in self.managed if m.status != "dropped"}

    @property
    def production(self) -> ManagedTable | None:
        return next((m for m in self.managed if m.status == "production"), None)


_CATALOG = """
SELECT statement_timestamp(),
       EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = %(schema)s),
       to_regclass(%(bookkeeping)s) IS NOT NULL,
       to_regclass(%(evals)s) IS NOT NULL,
       (SELECT coalesce(jsonb_agg(jsonb_build_array(c.relname, c.relkind, (
                SELECT coalesce(jsonb_agg(DISTINCT jsonb_build_array(tn.nspname, t.relname)), '[]')
                FROM pg_rewrite r
                JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid
                                AND d.refclassid = 'pg_class'::regclass
                JOIN pg_class t ON t.oid = d.refobjid
                JOIN pg_namespace tn ON tn.oid = t.relnamespace
                WHERE r.ev_class = c.oid AND d.refobjid <> c.oid))), '[]')
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = %(schema)s AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
          AND (c.relname = %(base)s OR c.relname LIKE %(pattern)s ESCAPE '\\'))
"""

def _like_prefix(text: str) -> str:
    """`text` matched literally by LIKE ... ESCAPE '\\' (its `_`, `%` and `\\` escaped)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


_MANAGED_COLUMNS = tuple(
    f.name for f in fields(ManagedTable) if f.name not in ("present", "last_compare_passed")
)
_LAST_COMPARE = sql.SQL(
    "(SELECT e.passed FROM {s}.eval_runs e WHERE e.chunk_version = m.chunk_version "
    "AND e.kind = 'compare' ORDER BY e.at DESC, e.id DESC LIMIT 1)"
)


def read_actual(conn: psycopg.Connection[Any], settings: ProductionConfig) -> ActualState:
    """The database as the planner needs it, in two queries whatever the number of tables."""
    base = settings.base_name
    row = conn.execute(
        _CATALOG,
        {"schema": settings.schema, "base": base, "pattern": _like_prefix(base) + "\\_%",
         "bookkeeping": f"{BOOKKEEPING_SCHEMA}.managed_tables",
         "evals": f"{BOOKKEEPING_SCHEMA}.eval_runs"},
    ).fetchone()
    assert row is not None
    now, schema_exists, bookkeeping, evals, relations = row
    actual = ActualState(schema=settings.schema, base_name=base, now=now,
                         schema_exists=schema_exists, bookkeeping=bookkeeping)
    for name, kind, reads in relations:
        actual.relations[name] = Relation(name, kind, tuple((s, t) for s, t in reads))
    if bookkeeping:
        schema_id = sql.Identifier(BOOKKEEPING_SCHEMA)
        query = sql.SQL(
            "SELECT {cols}, to_regclass(format('%I.%I', schema_name, table_name)) IS NOT NULL, "
            "{compare} FROM {s}.managed_tables m ORDER BY created_at, table_name"
        ).format(cols=sql.SQL(", ").join(map(sql.Identifier, _MANAGED_COLUMNS)),
                 compare=_LAST_COMPARE.format(s=schema_id) if evals else sql.SQL("NULL"),
                 s=schema_id)
        actual.managed = [ManagedTable(*r) for r in conn.execute(query).fetchall()]
    return actual


_COUNT = sql.SQL("SELECT count(*) FROM {}.{}")
_HAS_ROWS = sql.SQL("SELECT count(*) FROM (SELECT 1 FROM {}.{} LIMIT 1) AS capped")


def row_counts(
    conn: psycopg.Connection[Any], schema: str, tables: Sequence[str], *, exact: bool = True
) -> dict[str, int | None]:
    """Rows of many tables (not `exact`: 1 or 0, "has rows") in one round trip: the counts
    go out as one pipeline with a single sync (a UNION ALL of N arms plans twice as slowly)."""
    if not tables:
        return {}
    template = _COUNT if exact else _HAS_ROWS
    cursors = []
    with conn.pipeline():
        for table in tables:
            cursor = conn.cursor()
            cursor.execute(template.format(sql.Identifier(schema), sql.Identifier(table)))
            cursors.append(cursor)
    counts: dict[str, int | None] = {}
    for table, cursor in zip(tables, cursors, strict=True):
        row = cursor.fetchone()
        counts[table] = int(row[0]) if row else None
    return counts


def synthetic_actual(state: RegistryState) -> ActualState:
    """A database exactly reconciled to `state`, rows unknown: the base of an offline plan."""
    settings = state.settings
    now = datetime.now(UTC)
    actual = ActualState(schema=settings.schema, base_name=settings.base_name, now=now)
    production = settings.production
    for version, config in sorted(state.configs.items()):
        table = settings.table_name(version)
        status = "production" if version == production else "shadow"
        actual.managed.append(ManagedTable(
            settings.schema, table, version, config.config_hash, status, now, state.commit,
            now if status == "production" else None, None, None, None, present=True))
        actual.relations[table] = Relation(table, "r")
        actual.rows[table] = None
    if production:
        actual.relations[settings.base_name] = Relation(
            settings.base_name, "v", ((settings.schema, settings.table_name(production)),))
    return actual


# ---------------------------------------------------------------------------------------------
# Planning


def refuse_empty(state: RegistryState) -> None:
    if not state.configs:
        raise Refused(
            f"the desired state at {state.ref} has no locked configs: refusing to reconcile "
            "(it would retire every managed table)",
            fix="check --ref and the repository; lock a config first",
        )


def swap_target(state: RegistryState) -> str | None:
    """The table production should read, if production.yaml names one."""
    production = state.settings.production
    return state.settings.table_name(production) if production else None


def make_plan(
    state: RegistryState,
    actual: ActualState,
    *,
    target: str = "",
    force: bool = False,
    allow_empty: bool = False,
) -> Plan:
    """The ordered actions that make `actual` match `state`, and what blocks or stays.

    Touches nothing. `force` allows swapping production to an empty table or over a view the
    registry did not create. An empty desired state is refused unless `allow_empty` (status
    shows what it would mean; reconcile never applies it).
    """
    if not allow_empty:
        refuse_empty(state)
    settings = state.settings
    schema, base = settings.schema, settings.base_name
    plan = Plan(ref=state.ref, commit=state.commit, target=target)
    live = actual.live
    managed_names = {m.table_name for m in live.values() if m.schema_name == schema}
    blocked: set[str] = set()

    for version, config in sorted(state.configs.items()):
        table = settings.table_name(version)
        row = live.get(version)
        if row is None:
            if table in actual.relations:
                blocked.add(version)
                plan.findings.append(Finding(
                    "unmanaged", table, f"{schema}.{table} exists but the registry did not create "
                    "it: refusing to adopt it", "rename or drop it yourself, then reconcile",
                    "error"))
                continue
            plan.actions.append(CreateTable.of(schema, table, config))
            continue
        if row.config_hash != config.config_hash:
            blocked.add(version)
            plan.findings.append(Finding(
                "config_changed", row.table_name, f"{row.schema_name}.{row.table_name} was created "
                f"for config hash {row.config_hash[:12]}, but {version} in the repo hashes to "
                f"{config.config_hash[:12]}", "a locked config is immutable: restore it and lock "
                "a new version for the change", "error"))
            continue
        if row.key != (schema, table):
            blocked.add(version)
            plan.findings.append(Finding(
                "moved", row.table_name, f"{version} is managed as {row.schema_name}."
                f"{row.table_name}, but production.yaml now places it at {schema}.{table}",
                "restore tables.schema/base_name in production.yaml; moving tables is not "
                "supported", "error"))
            continue
        if row.status == "retired":
            plan.actions.append(Unretire(schema, table, version))
        if not row.present:
            plan.actions.append(CreateTable.of(schema, table, config, recreate=True))
            plan.findings.append(Finding(
                "missing", table, f"managed table {schema}.{table} was dropped outside the "
                "registry", "reconcile recreates it empty; ingest it again", "warning"))

    swapping_from = _plan_production(plan, state, actual, blocked, force)
    _plan_retirements(plan, state, actual, swapping_from)

    reported = {f.table for f in plan.findings}
    for name, relation in sorted(actual.relations.items()):
        if name == base or name in managed_names or name in reported:
            continue
        kind = "view" if relation.is_view else "table"
        plan.findings.append(Finding(
            "unmanaged", name, f"{schema}.{name} looks like a registry {kind} but is not managed: "
            "left alone", "drop or rename it yourself if it is not needed", "warning"))
    plan.actions.sort(key=lambda a: ACTION_ORDER.index(type(a)))
    return plan


def _plan_production(
    plan: Plan, state: RegistryState, actual: ActualState, blocked: set[str], force: bool
) -> ManagedTable | None:
    """Add the swap (or why there is none); return the row production moves away from."""
    settings = state.settings
    schema, base = settings.schema, settings.base_name
    view = actual.relations.get(base)
    current = actual.production
    wanted = settings.production
    if wanted is None:
        if current is not None:
            plan.findings.append(Finding(
                "no_production", current.table_name, f"production.yaml names no production; "
                f"{schema}.{base} keeps reading {current.table_name}",
                "point production at a config to switch it", "warning"))
        return None
    if wanted in blocked:
        return None
    table = settings.table_name(wanted)
    if view is not None and not view.is_view:
        plan.findings.append(Finding(
            "view_replaced", base, f"{schema}.{base} is a table, not the registry's view: "
            "production cannot be switched", f"rename that table (ALTER TABLE {schema}.{base} "
            "RENAME TO ...) and reconcile to recreate the view", "error"))
        return None
    reads = view.reads if view is not None else ()
    points_right = reads == ((schema, table),)
    marked_right = current is not None and current.key == (schema, table)
    if points_right and marked_right:
        return None
    old = reads[0][1] if len(reads) == 1 else (current.table_name if current else None)
    reason = "promote"
    if view is not None and not points_right and current is None and not force:
        plan.findings.append(Finding(
            "unmanaged", base, f"{schema}.{base} is a view the registry did not create (it reads "
            f"{_names(reads)})", "drop it yourself, or reconcile --force to replace it", "error"))
        return None
    if current is not None and view is None:
        reason = "drift: the view was missing"
        plan.findings.append(Finding(
            "view_missing", base, f"the production view {schema}.{base} is missing",
            "reconcile recreates it", "warning"))
    elif current is not None and reads != ((schema, current.table_name),):
        reason = f"drift: the view read {_names(reads)}"
        plan.findings.append(Finding(
            "view_elsewhere", base, f"{schema}.{base} reads {_names(reads)}, but the registry's "
            f"production is {current.table_name}", "reconcile re-points it", "warning"))
    row = actual.live.get(wanted)
    gate = None if force else _gate_finding(row, state, schema, table, first=current is None)
    if gate is not None:
        plan.findings.append(gate)
        return None
    rows = actual.rows.get(table, 0) if row is not None and row.present else 0
    if rows == 0 and not force:
        new = " (it is created by this run)" if row is None or not row.present else ""
        plan.findings.append(Finding(
            "empty", table, f"refusing to swap production to {schema}.{table}: the table is "
            f"empty{new}", f"ingest {wanted} first, then reconcile; or pass --force", "error"))
        return None
    plan.actions.append(SwapProduction(schema, base, old, table, wanted, reason))
    return current if current is not None and current.key != (schema, table) else None


def _gate_finding(
    row: ManagedTable | None, state: RegistryState, schema: str, table: str, *, first: bool
) -> Finding | None:
    """The promotion gate: a table that was never production needs its last comparison
    against production to have passed (and one to exist with gates.require_eval, unless it
    is the `first` production: there is nothing to compare against). A table that served
    production before (a rollback target) is never held back by it."""
    if row is None or row.promoted_at is not None:
        return None
    version = row.chunk_version
    if row.last_compare_passed is False:
        return Finding(
            "gate", table, f"refusing to swap production to {schema}.{table}: its last "
            "comparison against production failed the gates",
            f"rerun `registry eval --compare {version} --against production`, or pass --force",
            "error")
    if row.last_compare_passed is None and state.settings.require_eval and not first:
        return Finding(
            "gate", table, f"refusing to swap production to {schema}.{table}: gates.require_eval "
            "is set and it was never compared against production",
            f"run `registry eval --compare {version} --against production --cases FILE`", "error")
    return None


def _names(reads: tuple[tuple[str, str], ...]) -> str:
    return ", ".join(f"{s}.{t}" for s, t in reads) or "nothing"


def protected_tables(
    actual: ActualState, keep_previous: int, swapping_from: ManagedTable | None = None
) -> set[tuple[str, str]]:
    """Production and the `keep_previous` most recent former productions (rollback targets),
    as they will be once a planned swap away from `swapping_from` is done."""
    keep = {m.key for m in actual.managed if m.status == "production"}
    former = sorted(
        (m for m in actual.managed if m.status != "dropped" and m.demoted_at is not None
         and m.status != "production"),
        key=lambda m: m.demoted_at or datetime.min.replace(tzinfo=UTC), reverse=True,
    )
    order = ([swapping_from] if swapping_from else []) + [
        m for m in former if swapping_from is None or m.key != swapping_from.key]
    keep.update(m.key for m in order[:keep_previous])
    return keep


def _plan_retirements(
    plan: Plan, state: RegistryState, actual: ActualState, swapping_from: ManagedTable | None
) -> None:
    settings = state.settings
    configs = state.configs
    swap = next((a for a in plan.actions if isinstance(a, SwapProduction)), None)
    protected = protected_tables(actual, settings.keep_previous, swapping_from)
    for version, row in sorted(actual.live.items()):
        if version in configs:
            continue
        name = f"{row.schema_name}.{row.table_name}"
        if row.status in ("shadow", "production"):
            if row.status == "production" and (swap is None or swap.table == row.table_name):
                plan.findings.append(Finding(
                    "kept", row.table_name, f"{name} is still production: it is not retired until "
                    "production moves to another config", "promote another config", "warning"))
                continue
            drop_after = actual.now + settings.grace_period
            plan.actions.append(Retire(row.schema_name, row.table_name, version,
                                       utc_text(drop_after)))
            continue
        retired_at = row.retired_at or actual.now
        if row.key in protected:
            plan.findings.append(Finding(
                "kept", row.table_name, f"{name} is kept: it is the previous production "
                "(the rollback target)", None, "info"))
        elif retired_at + settings.grace_period > actual.now:
            plan.findings.append(Finding(
                "grace", row.table_name, f"{name} is retired; it is dropped after "
                f"{utc_text(retired_at + settings.grace_period)} (grace period "
                f"{_duration(settings.grace_period)})", None, "info"))
        else:
            plan.actions.append(Drop(row.schema_name, row.table_name, version, utc_text(retired_at),
                                     already_gone=not row.present))


def utc_text(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _duration(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds % size == 0 and seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


# ---------------------------------------------------------------------------------------------
# Applying


@dataclass
class ActionResult:
    action: Action
    outcome: Literal["applied", "failed", "skipped"]
    error: str | None = None
    attempts: int = 1
    seconds: float = 0.0


Outcome = Literal["noop", "applied", "refused", "failed"]


@dataclass
class RunResult:
    """One reconcile run: the plan, what each action did, and how the run ended."""

    plan: Plan
    results: list[ActionResult]
    outcome: Outcome
    run_id: int | None = None

    @property
    def failed(self) -> list[ActionResult]:
        return [r for r in self.results if r.outcome == "failed"]

    def raise_for_outcome(self) -> None:
        """Turn a failed or refused run into its RegistryError (after the CLI rendered it)."""
        if self.failed:
            first = self.failed[0]
            more = f"; {len(self.failed) - 1} more failed" if len(self.failed) > 1 else ""
            raise ReconcileFailed(f"{first.action.describe()} failed: {first.error}{more}",
                                  fix="fix the cause and rerun `registry reconcile`")
        if self.outcome == "refused":
            first_finding = self.plan.blocking[0]
            raise Refused(first_finding.message, fix=first_finding.fix)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.plan.to_dict(),
            "run_id": self.run_id,
            "outcome": self.outcome,
            "results": [
                {"action": type(r.action).__name__, "table": r.action.table,
                 "outcome": r.outcome, "error": r.error, "attempts": r.attempts,
                 "seconds": round(r.seconds, 4)}
                for r in self.results
            ],
        }


def _table_ddl(action: CreateTable) -> list[sql.Composed]:
    """The versioned table. `bm25_has_prefix` is computed by PostgreSQL as rows are written,
    and a partial index holds exactly the rows the health check counts as unhealthy (prefix
    leakage, over budget): it is empty while the table is healthy, costs nothing to write,
    and lets the check read only those rows plus a count(*), never the whole heap. The
    CHECKs make rows of another version or ingest run impossible rather than something to
    look for."""
    from registry.config import PREFIX_MARKER, ingest_run_id_for
    from registry.quality.health import unhealthy_rows

    t = sql.SQL("{}.{}").format(sql.Identifier(action.schema), sql.Identifier(action.table))
    return [
        sql.SQL(
            "CREATE TABLE {t} ("
            "chunk_index integer NOT NULL CHECK (chunk_index >= 0), "
            "embedding_token_count integer NOT NULL, "
            "bm25_token_count integer NOT NULL, "
            "created_at timestamptz NOT NULL DEFAULT now(), "
            "bm25_has_prefix boolean GENERATED ALWAYS AS (starts_with(bm25_text, {marker})) "
            "STORED, "
            "id text PRIMARY KEY, "
            "doc_id text NOT NULL, "
            "embedding_text text NOT NULL, "
            "bm25_text text NOT NULL, "
            "chunk_version text NOT NULL CHECK (chunk_version = {version}), "
            "ingest_run_id text NOT NULL CHECK (ingest_run_id = {run}), "
            "bm25_tsv tsvector GENERATED ALWAYS AS (to_tsvector('english', bm25_text)) STORED)"
        ).format(t=t, version=sql.Literal(action.chunk_version),
                 marker=sql.Literal(PREFIX_MARKER),
                 run=sql.Literal(ingest_run_id_for(action.chunk_version, action.config_hash))),
        sql.SQL("CREATE INDEX {} ON {} (doc_id, chunk_index)").format(
            sql.Identifier(f"{action.table}_doc"), t),
        sql.SQL("CREATE INDEX {} ON {} USING gin (bm25_tsv)").format(
            sql.Identifier(f"{action.table}_tsv"), t),
        sql.SQL("CREATE INDEX {} ON {} (chunk_index) WHERE {}").format(
            sql.Identifier(f"{action.table}_bad"), t,
            unhealthy_rows(action.prefix_policy, action.chunk_size, action.token_budget)),
        sql.SQL("COMMENT ON TABLE {} IS {}").format(
            t, sql.Literal(f"chunk-registry: chunks of locked config {action.chunk_version} "
                           f"(config_hash {action.config_hash})")),
    ]


def bookkeeping(name: str) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(BOOKKEEPING_SCHEMA), sql.Identifier(name))


MANAGED = bookkeeping("managed_tables")
RUNS = bookkeeping("reconcile_runs")


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
            failed = failed or result.outcome == "failed"
        return results

    def run(self, action: Action) -> ActionResult:
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

    def _failed(self, action: Action, error: str, attempts: int, started: float) -> ActionResult:
        log.warning("FAILED: %s: %s", action.describe(), error)
        return ActionResult(action, "failed", error, attempts, time.monotonic() - started)

    def _ddl(self, action: Action, statement: sql.Composed) -> None:
        """One DDL statement of `action`, between two crash points."""
        faults.point("apply", type(action).__name__, "ddl")
        self.conn.execute(statement)
        faults.point("apply", type(action).__name__, "ddl_done")

    def _bookkeeping(self, action: Action, statement: sql.Composed, params: Any) -> int:
        """One bookkeeping write of `action` (after its DDL, same transaction): rows changed."""
        faults.point("apply", type(action).__name__, "bookkeeping")
        return self.conn.execute(statement, params).rowcount

    def _do(self, action: Action) -> None:
        if isinstance(action, CreateTable):
            self._create(action)
        elif isinstance(action, Unretire):
            self._update_status(action, "retired", "status = 'shadow', retired_at = NULL")
        elif isinstance(action, SwapProduction):
            self._swap(action)
        elif isinstance(action, Retire):
            self._update_status(action, "shadow", "status = 'retired', retired_at = now()")
        else:
            self._drop(action)

    def _create(self, action: CreateTable) -> None:
        if not self.schema_exists:
            self._ddl(action, sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
                sql.Identifier(action.schema)))
        for statement in _table_ddl(action):
            self._ddl(action, statement)
        self._bookkeeping(
            action,
            sql.SQL(
                "INSERT INTO {m} (schema_name, table_name, chunk_version, config_hash, status, "
                "created_commit) VALUES (%(schema)s, %(table)s, %(version)s, %(hash)s, 'shadow', "
                "%(commit)s) ON CONFLICT (schema_name, table_name) DO UPDATE SET "
                "created_at = now(), created_commit = EXCLUDED.created_commit, "
                "status = CASE WHEN {m}.status = 'dropped' THEN 'shadow' ELSE {m}.status END, "
                "dropped_at = NULL, "
                "retired_at = CASE WHEN {m}.status = 'dropped' THEN NULL ELSE {m}.retired_at END"
            ).format(m=MANAGED),
            {"schema": action.schema, "table": action.table, "version": action.chunk_version,
             "hash": action.config_hash, "commit": self.commit},
        )

    def _update_status(self, action: Unretire | Retire, expected: str, assignment: str) -> None:
        updated = self._bookkeeping(
            action,
            sql.SQL("UPDATE {m} SET {assign} WHERE schema_name = %s AND table_name = %s "
                    "AND status = %s").format(m=MANAGED, assign=sql.SQL(assignment)),
            (action.schema, action.table, expected),
        )
        if updated != 1:
            raise Refused(f"{action.schema}.{action.table} is not a managed {expected} table")

    def _swap(self, action: SwapProduction) -> None:
        """CREATE OR REPLACE VIEW + the bookkeeping update, in the caller's transaction."""
        target = sql.SQL("{}.{}").format(
            sql.Identifier(action.schema), sql.Identifier(action.table))
        row = self.conn.execute(
            sql.SQL("SELECT status FROM {} WHERE schema_name = %s AND table_name = %s "
                    "AND status IN ('shadow', 'production') FOR UPDATE").format(
                MANAGED),
            (action.schema, action.table),
        ).fetchone()
        if row is None:
            raise Refused(f"{action.schema}.{action.table} is not a live managed table: production "
                          "never reads an unmanaged or retired table")
        if not self.force:
            has_rows = self.conn.execute(
                sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(target)).fetchone()
            if not (has_rows and has_rows[0]):
                raise Refused(f"{action.schema}.{action.table} is empty",
                              fix=f"ingest {action.chunk_version} first, or pass --force")
        view = sql.Identifier(action.schema, action.view)
        columns = self.conn.execute(
            "SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_attribute a "
            "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = %s AND c.relkind = 'v' AND a.attnum > 0 "
            "AND NOT a.attisdropped", (action.schema, action.view)).fetchone()
        if columns and columns[0] and tuple(columns[0]) != VIEW_COLUMNS:
            # A view re-pointed by hand with other columns cannot be CREATE OR REPLACEd; it
            # is dropped and recreated in this same transaction (RESTRICT: never a dependent).
            self._ddl(action, sql.SQL("DROP VIEW {}").format(view))
        self._ddl(action, sql.SQL("CREATE OR REPLACE VIEW {} AS SELECT {} FROM {}").format(
            view, sql.SQL(", ").join(map(sql.Identifier, VIEW_COLUMNS)), target))
        self._ddl(action, sql.SQL("COMMENT ON VIEW {}.{} IS {}").format(
            sql.Identifier(action.schema), sql.Identifier(action.view),
            sql.Literal(f"chunk-registry: production reads {action.chunk_version}")))
        # Swapping back to the most recent former production is a rollback: the table it
        # leaves is no rollback target (nothing returns to it), so it gets no demoted_at and a
        # retirement of it is dropped after the grace period, as `registry retire` expects.
        latest = self.conn.execute(
            sql.SQL("SELECT schema_name = %s AND table_name = %s FROM {} WHERE demoted_at IS NOT "
                    "NULL AND status NOT IN ('production', 'dropped') ORDER BY demoted_at DESC "
                    "LIMIT 1").format(MANAGED),
            (action.schema, action.table),
        ).fetchone()
        demoted_at = sql.SQL("NULL" if latest and latest[0] else "now()")
        self._bookkeeping(
            action,
            sql.SQL("UPDATE {} SET status = 'shadow', demoted_at = {} "
                    "WHERE status = 'production' AND NOT (schema_name = %s AND table_name = %s)"
                    ).format(MANAGED, demoted_at),
            (action.schema, action.table),
        )
        # A drift correction re-points the view at the table that is production already: it
        # keeps its promoted_at (when it became production; the regression watch's window).
        self._bookkeeping(
            action,
            sql.SQL("UPDATE {} SET promoted_at = CASE WHEN status = 'production' "
                    "THEN promoted_at ELSE now() END, status = 'production' "
                    "WHERE schema_name = %s AND table_name = %s").format(MANAGED),
            (action.schema, action.table),
        )

    def _drop(self, action: Drop) -> None:
        """Re-check every drop rule against the bookkeeping row, locked, then DROP (RESTRICT)."""
        settings = self.settings
        row = self.conn.execute(
            sql.SQL("SELECT status, retired_at FROM {} WHERE schema_name = %s AND table_name = %s "
                    "FOR UPDATE").format(MANAGED),
            (action.schema, action.table),
        ).fetchone()
        name = f"{action.schema}.{action.table}"
        if row is None:
            raise Refused(f"{name} is not in {BOOKKEEPING_SCHEMA}.managed_tables: the registry "
                          "never drops a table it does not manage")
        status, retired_at = row
        if status != "retired":
            raise Refused(f"{name} is {status}, not retired: only retired tables are dropped")
        if retired_at + settings.grace_period > self.now:
            raise Refused(f"{name} was retired at {utc_text(retired_at)}: the grace period "
                          f"{_duration(settings.grace_period)} is not over")
        former = self.conn.execute(
            sql.SQL("SELECT schema_name, table_name FROM {} WHERE status <> 'dropped' "
                    "AND demoted_at IS NOT NULL AND status <> 'production' "
                    "ORDER BY demoted_at DESC LIMIT %s").format(MANAGED),
            (settings.keep_previous,),
        ).fetchall()
        if (action.schema, action.table) in {tuple(r) for r in former}:
            raise Refused(f"{name} is the previous production (the rollback target): kept")
        self._ddl(action, sql.SQL("DROP TABLE IF EXISTS {}.{} RESTRICT").format(
            sql.Identifier(action.schema), sql.Identifier(action.table)))
        self._bookkeeping(
            action,
            sql.SQL("UPDATE {} SET status = 'dropped', dropped_at = now() "
                    "WHERE schema_name = %s AND table_name = %s").format(MANAGED),
            (action.schema, action.table),
        )


# ---------------------------------------------------------------------------------------------
# Runs: the lock, the record, the whole thing


def acquire_lock(dsn: str, *, wait: float = 0.0) -> psycopg.Connection[Any]:
    """A connection holding the reconcile advisory lock, or ReconcileBusy naming the holder.

    The lock lives as long as the connection, and the run does its work on that same
    connection: if the server drops it, the lock and the work stop together, so a second
    reconciler can never take the lock while the first is still applying. With `wait` > 0 the
    server queues us behind the holder for at most `wait` seconds (a lock_timeout on
    pg_advisory_lock: no polling, first come first served) before ReconcileBusy.
    """
    from registry.database.connection import connect, database_error

    conn = connect(dsn, purpose="reconcile")
    try:
        if _take_lock(conn, wait):
            return conn
        holder = conn.execute(
            "SELECT a.pid, a.application_name, a.client_addr::text, a.backend_start "
            "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.database = "
            "(SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND l.classid = ((%(key)s >> 32) & 4294967295)::bigint::oid "
            "AND l.objid = (%(key)s & 4294967295)::bigint::oid AND l.objsubid = 1",
            {"key": RECONCILE_LOCK_KEY},
        ).fetchone()
    except psycopg.Error as err:
        conn.close()
        raise database_error(err, dsn, "taking the reconcile lock") from None
    except BaseException:
        conn.close()
        raise
    conn.close()
    if holder is None:
        who = "another session (it may have just finished)"
    else:
        pid, app, addr, since = holder
        where = f" from {addr}" if addr else ""
        who = (f"backend pid {pid} ({app or 'no application_name'}{where}, "
               f"connected {utc_text(since)})")
    waited = f" (waited {wait:g}s)" if wait > 0 else ""
    raise ReconcileBusy(f"another reconcile is running: the lock is held by {who}{waited}",
                        fix="wait for it to finish, then rerun, or pass --wait-lock SECONDS")


def _take_lock(conn: psycopg.Connection[Any], wait: float) -> bool:
    if wait <= 0:
        got = conn.execute("SELECT pg_try_advisory_lock(%s)", (RECONCILE_LOCK_KEY,)).fetchone()
        return bool(got and got[0])
    conn.execute(sql.SQL("SET lock_timeout = {}").format(timeout_setting(wait * 1000)))
    try:
        conn.execute("SELECT pg_advisory_lock(%s)", (RECONCILE_LOCK_KEY,))
        return True
    except psycopg.errors.LockNotAvailable:
        return False
    finally:
        conn.execute("RESET lock_timeout")


INTERRUPTED = ("interrupted: the reconciler stopped before it recorded an outcome (process "
               "killed or database connection lost); a later run converged from where it stopped")
_MARK_INTERRUPTED = sql.SQL(
    "WITH interrupted AS (UPDATE {} SET outcome = 'failed', error = %(interrupted)s "
    "WHERE outcome = 'running') ").format(RUNS)
"""Runs still `running` belong to reconcilers that died (killed, or their connection lost):
every run row is written under the lock this run holds. Said once, in the same statement that
records this run (no extra round trip); the new row is not visible to the UPDATE."""


def _record_start(conn: psycopg.Connection[Any], plan: Plan, actor: str) -> int:
    row = conn.execute(
        _MARK_INTERRUPTED + sql.SQL(
            "INSERT INTO {} (git_ref, git_commit, plan, outcome, actor) VALUES (%(ref)s, "
            "%(commit)s, %(plan)s, 'running', %(actor)s) RETURNING id").format(RUNS),
        {"ref": plan.ref, "commit": plan.commit, "actor": actor, "interrupted": INTERRUPTED,
         "plan": json.dumps([action_dict(a) for a in plan.actions])},
    ).fetchone()
    assert row is not None
    return int(row[0])


def _record_finish(
    conn: psycopg.Connection[Any], run_id: int | None, result: RunResult, actor: str
) -> int:
    """Finish the run row (one statement; a no-op run is inserted already finished)."""
    done = [action_dict(r.action) | {"result": r.outcome, "error": r.error, "attempts": r.attempts}
            for r in result.results]
    errors = [f"{r.action.describe()}: {r.error}" for r in result.failed]
    errors += [f.render() for f in result.plan.blocking]
    plan = result.plan
    params = {"ref": plan.ref, "commit": plan.commit, "plan": json.dumps(done),
              "outcome": result.outcome, "error": "; ".join(errors) or None, "actor": actor,
              "id": run_id, "interrupted": INTERRUPTED}
    if run_id is None:
        query = _MARK_INTERRUPTED + sql.SQL(
            "INSERT INTO {} (git_ref, git_commit, plan, outcome, error, actor, finished_at) "
            "VALUES (%(ref)s, %(commit)s, %(plan)s, %(outcome)s, %(error)s, %(actor)s, "
            "clock_timestamp()) RETURNING id").format(RUNS)
    else:
        query = sql.SQL(
            "UPDATE {} SET plan = %(plan)s, outcome = %(outcome)s, error = %(error)s, "
            "finished_at = clock_timestamp() WHERE id = %(id)s RETURNING id").format(RUNS)
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return int(row[0])


def _actor() -> str:
    import getpass
    import os
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()} pid {os.getpid()}"


def desired_state(
    repo: Path | str, ref: str | None = None, *, fetch: bool = True,
    signers: Path | None = None,
) -> RegistryState:
    """The validated desired state: a committed ref, never the working tree, with no locked
    config edited after its tag. With `signers` (an allowed-signers file) the ref's signature
    must verify too."""
    from registry.errors import invalid
    from registry.repository.state import Git, read_state
    from registry.repository.validation import tampering_problems

    git = Git(repo)
    desired = git.desired_ref(ref, fetch=fetch)
    state = read_state(git, desired)
    state.require_valid()
    tampered = tampering_problems(git, state)
    if tampered:
        raise invalid(tampered)
    if signers is not None:
        from registry.repository.trust import verify

        assert state.commit is not None
        verify(git, desired, state.commit, signers)
    return state


def _still_desired(
    repo: Path | str, state: RegistryState, ref: str | None, fetch: bool, signers: Path | None
) -> RegistryState:
    """Under the lock: the ref may have moved while we connected or waited (another reconciler
    may have applied a newer commit meanwhile); never apply a stale commit."""
    from registry.repository.state import Git

    git = Git(repo)
    if git.resolve(git.desired_ref(ref, fetch=fetch)) == state.commit:
        return state
    return desired_state(repo, ref, fetch=False, signers=signers)


def plan(
    repo: Path | str,
    *,
    ref: str | None = None,
    dsn: str | None = None,
    fetch: bool = True,
    force: bool = False,
) -> Plan:
    """What `reconcile` would do now (reads only; creates nothing, not even bookkeeping)."""
    from registry.database.connection import database_error, resolve_dsn, session

    state = desired_state(repo, ref, fetch=fetch)
    resolved = resolve_dsn(dsn)
    with session(resolved.value, purpose="plan") as conn:
        try:
            actual = _read_for_plan(conn, state)
        except psycopg.Error as err:
            raise database_error(err, resolved.value, "reading the database") from None
    return make_plan(state, actual, target=resolved.redacted, force=force)


def _read_for_plan(conn: psycopg.Connection[Any], state: RegistryState) -> ActualState:
    """The actual state, with a has-rows probe of the swap target when a swap may be needed."""
    actual = read_actual(conn, state.settings)
    target = swap_target(state)
    production = actual.production
    view = actual.relations.get(state.settings.base_name)
    settled = (production is not None and production.table_name == target and view is not None
               and view.reads == ((state.settings.schema, target),))
    if target and not settled and target in actual.relations:
        actual.rows.update(row_counts(conn, state.settings.schema, [target], exact=False))
    return actual


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
    wait_lock: float = 0.0,
    require_signed: bool = False,
    allowed_signers: Path | None = None,
) -> RunResult:
    """Read and validate the desired state, lock, read the actual state, plan, apply, record.

    The committed state is read and validated (and its signature verified with
    `require_signed`) BEFORE any connection: an invalid or untrusted commit runs no SQL at all.
    `now` overrides the database clock for the grace period (tests, what-if runs).
    """
    from registry.database.connection import database_error, ensure_schema, resolve_dsn

    signers = None
    if require_signed:
        from registry.repository.state import Git
        from registry.repository.trust import allowed_signers as signers_file

        signers = signers_file(Git(repo), allowed_signers)
    state = desired_state(repo, ref, fetch=fetch, signers=signers)
    resolved = resolve_dsn(dsn)
    conn = acquire_lock(resolved.value, wait=wait_lock)
    try:
        faults.point("reconcile", "locked")
        state = _still_desired(repo, state, ref, fetch, signers)
        ensure_schema(conn)
        actual = _read_for_plan(conn, state)
        if now is not None:
            actual.now = now
        the_plan = make_plan(state, actual, target=resolved.redacted, force=force)
        applier = Applier(conn, state.settings, state.commit, actual.now, force=force,
                          schema_exists=actual.schema_exists, lock_timeout_ms=lock_timeout_ms,
                          attempts=attempts)
        return _apply_and_record(conn, applier, the_plan)
    except psycopg.Error as err:
        raise database_error(err, resolved.value, "reconciling") from None
    finally:
        conn.close()


def _apply_and_record(
    conn: psycopg.Connection[Any], applier: Applier, the_plan: Plan
) -> RunResult:
    """Record the run as `running`, apply, record the outcome (a no-op run: one row, finished)."""
    actor = _actor()
    run_id = _record_start(conn, the_plan, actor) if the_plan.actions else None
    faults.point("reconcile", "recorded")
    results = applier.apply(the_plan)
    outcome: Outcome
    if any(r.outcome == "failed" for r in results):
        outcome = "failed"
    elif the_plan.blocking:
        outcome = "refused"
    else:
        outcome = "applied" if results else "noop"
    result = RunResult(the_plan, results, outcome, run_id)
    faults.point("reconcile", "finishing")
    result.run_id = _record_finish(conn, run_id, result, actor)
    faults.point("reconcile", "finished")
    return result


def offline_plan(repo: Path | str, base: str, head: str) -> Plan:
    """What merging `head` into `base` would make the reconciler do, without a database:
    the plan against a database exactly reconciled to `base` (for PR review in CI)."""
    from registry.repository.state import Git, read_state

    git = Git(repo)
    base_state = read_state(git, base)
    head_state = read_state(git, head)
    head_state.require_valid()
    return make_plan(head_state, synthetic_actual(base_state),
                     target=f"a database reconciled to {base}")


# ---------------------------------------------------------------------------------------------
# Rendering (shared by the CLI and pull-request bodies)

_SYMBOLS = {CreateTable: "+", Unretire: "+", SwapProduction: "~", Retire: "-", Drop: "x"}
_LABELS = {"CreateTable": "to create", "Unretire": "to unretire", "SwapProduction": "to swap",
           "Retire": "to retire", "Drop": "to drop"}


def summary(the_plan: Plan) -> str:
    counts = the_plan.counts()
    text = ", ".join(f"{n} {_LABELS[k]}" for k, n in counts.items()) or "no changes"
    if the_plan.blocking:
        text += f"; {len(the_plan.blocking)} blocked"
    return text


def render_plan(the_plan: Plan, fmt: Literal["text", "markdown"] = "text") -> str:
    commit = (the_plan.commit or "")[:10]
    if fmt == "markdown":
        lines = [f"### chunk-registry plan for `{the_plan.ref}` ({commit})", ""]
        if the_plan.actions:
            lines += ["| | action | table | details |", "|---|---|---|---|"]
            for action in the_plan.actions:
                lines.append(f"| {_SYMBOLS[type(action)]} | {type(action).__name__} | "
                             f"`{action.table}` | {action.describe()} |")
        else:
            lines.append("No changes: the database matches the repository.")
        if the_plan.findings:
            lines += ["", "**Findings**", ""]
            icon = {"error": "🚨", "warning": "⚠️", "info": "ℹ️"}
            lines += [f"- {icon[f.severity]} {f.render()}" for f in the_plan.findings]
        lines += ["", f"Plan: {summary(the_plan)} (against {the_plan.target})."]
        return "\n".join(lines) + "\n"
    lines = [f"Plan for {the_plan.ref} ({commit}) against {the_plan.target}:"]
    lines += [f"  {_SYMBOLS[type(a)]} {a.describe()}" for a in the_plan.actions]
    if not the_plan.actions:
        lines.append("  no changes: the database matches the repository")
    for finding in the_plan.findings:
        prefix = {"error": "blocked", "warning": "drift" if finding.kind in (
            VIEW_KINDS | {"missing"}) else "warning", "info": "note"}[finding.severity]
        lines.append(f"  ! {prefix}: {finding.render()}")
    lines.append(f"Plan: {summary(the_plan)}.")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Watching: reconcile every interval, like Flux


def watch(
    repo: Path | str,
    *,
    stop: threading.Event,
    interval: float = 60.0,
    max_backoff: float = 300.0,
    on_result: Callable[[RunResult], None] | None = None,
    **options: Any,
) -> int:
    """Reconcile every `interval` seconds until `stop` (a threading.Event) is set.

    Database and git outages back off exponentially (capped at `max_backoff`) with one log
    line each; a busy lock, an invalid commit or a refusal wait for the next interval. Returns
    the number of runs that completed.
    """
    from registry.errors import DatabaseUnavailable, GitError

    failures = 0
    runs = 0
    while not stop.is_set():
        delay = interval
        try:
            result = reconcile(repo, **options)
            runs += 1
            failures = 0
            if on_result is not None:
                on_result(result)
        except (DatabaseUnavailable, GitError) as err:
            failures += 1
            delay = min(max(max_backoff, interval), interval * 2 ** (failures - 1))
            log.warning("%s; retrying in %gs (attempt %d)", err, delay, failures + 1)
        except RegistryError as err:
            failures = 0
            log.warning("%s; next run in %gs", err, delay)
        if stop.wait(delay):
            break
    return runs
