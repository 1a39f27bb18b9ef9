"""`registry status`: every config and managed table as `kubectl get` would show it.

Built on the same plan `reconcile` would apply (so "OutOfSync" means exactly "reconcile has an
action for it"), plus rows and the last reconcile run that touched each table, in a constant
number of queries. Rows are catalog estimates unless exact counts are asked for: estimates lock
no table and read no heap, so status costs the same at 10 or 10,000 configs, whatever their rows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

import psycopg

from registry.database import bookkeeping
from registry.reconciler.actual import ActualState, row_counts, row_estimates
from registry.reconciler.planner import VIEW_KINDS, Action, Finding, Plan, owned, utc_text
from registry.reconciler.run import _read_for_plan, plan_honouring_force

if TYPE_CHECKING:
    from registry.repository.git import Git
    from registry.repository.state import RegistryState


StatusName = Literal["Synced", "OutOfSync", "Missing", "Retired", "Drifted"]
DRIFT_KINDS = frozenset({"config_changed", "moved", "unmanaged"})


@dataclass(frozen=True)
class StatusRow:
    """One config (or retired table) as `registry status` shows it."""

    chunk_version: str
    params: str | None
    table: str
    rows: int | None
    rows_estimated: bool
    """`rows` is an estimate (pg_class.reltuples / the statistics collector), not a count."""
    status: StatusName
    production: bool
    desired_production: bool
    created_commit: str | None
    last_run: int | None
    last_run_commit: str | None
    note: str


@dataclass
class StatusReport:
    plan: Plan
    rows: list[StatusRow]
    last_run: dict[str, Any] | None
    exact: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "ref": self.plan.ref,
            "commit": self.plan.commit,
            "target": self.plan.target,
            "in_sync": self.plan.in_sync,
            "row_counts": "exact" if self.exact else "estimated",
            "configs": [asdict(r) for r in self.rows],
            "last_run": self.last_run,
            "findings": [self.plan.finding_dict(f) for f in self.plan.findings],
        }


def status(
    git: Git, state: RegistryState, conn: psycopg.Connection[Any], *, target: str,
    exact: bool = False,
) -> StatusReport:
    """Every config and managed table: rows (estimated, or counted with `exact`), sync status,
    production, last run that touched it. `target` names the database (its redacted DSN)."""
    settings = state.settings
    schema = settings.schema
    actual = _read_for_plan(conn, state)
    names = [settings.table_name(v) for v in state.configs]
    names += [m.table_name for m in actual.live.values() if m.schema_name == schema]
    tables = [n for n in dict.fromkeys(names) if n in actual.relations]
    shown = (row_counts(conn, schema, tables) if exact
             else row_estimates(conn, schema, tables))
    runs, last = (_last_runs(conn, settings.identities) if actual.bookkeeping
                  else ({}, None))
    # The plan keeps the swap target's has-rows probe: emptiness is never judged on an estimate.
    the_plan = plan_honouring_force(git, state, actual, target=target, allow_empty=True)
    actual.rows = shown
    return StatusReport(the_plan, status_rows(state, actual, the_plan, runs, estimated=not exact),
                        last, exact)


def _last_runs(
    conn: psycopg.Connection[Any], registries: tuple[str, ...],
) -> tuple[dict[str, tuple[int, str | None]], dict[str, Any] | None]:
    """table -> (run id, commit) of the last run that applied an action to it; the last run."""
    last = bookkeeping.last_reconcile_run(conn, registries)
    last_run = None
    if last is not None:
        last_run = asdict(last)
        for key in ("started_at", "finished_at"):
            if last_run[key] is not None:
                last_run[key] = utc_text(last_run[key])
    return bookkeeping.last_applied_by_table(conn, registries), last_run


def status_rows(
    state: RegistryState,
    actual: ActualState,
    the_plan: Plan,
    runs: dict[str, tuple[int, str | None]],
    *,
    estimated: bool = False,
) -> list[StatusRow]:
    settings = state.settings
    configs = state.configs
    mine = [m for m in actual.managed if owned(settings, actual, m, configs)]
    live = {m.chunk_version: m for m in mine if m.status != "dropped"}
    current = next((m for m in mine if m.status == "production"), None)
    versions = sorted(set(configs) | set(live), reverse=True)
    by_table: dict[str | None, list[Finding]] = {}
    for finding in the_plan.findings:
        by_table.setdefault(finding.table, []).append(finding)
    view_findings = [f for f in the_plan.findings if f.kind in VIEW_KINDS]
    pending_by_table: dict[str, list[Action]] = {}
    for action in the_plan.actions:
        pending_by_table.setdefault(action.table, []).append(action)
    rows = []
    for version in versions:
        config = configs.get(version)
        row = live.get(version)
        table = row.table_name if row is not None else settings.table_name(version)
        schema = row.schema_name if row is not None else settings.schema
        findings = list(by_table.get(table, []))
        is_production = current is not None and current.table_name == table
        if is_production:
            findings += view_findings
        pending = pending_by_table.get(table, [])
        kinds = {f.kind for f in findings}
        name: StatusName
        if "missing" in kinds:
            name = "Missing"
        elif kinds & (DRIFT_KINDS | VIEW_KINDS):
            name = "Drifted"
        elif row is not None and row.status == "retired" and config is None:
            name = "Retired"
        elif pending or row is None or config is None or "empty" in kinds:
            name = "OutOfSync"
        else:
            name = "Synced"
        notes = [a.describe() for a in pending] + [f.message for f in findings]
        last = runs.get(table)
        rows.append(StatusRow(
            chunk_version=version,
            params=config.label() if config else None,
            table=f"{schema}.{table}",
            rows=actual.rows.get(table),
            rows_estimated=estimated and actual.rows.get(table) is not None,
            status=name,
            production=is_production,
            desired_production=settings.production == version,
            created_commit=row.created_commit if row else None,
            last_run=last[0] if last else None,
            last_run_commit=last[1] if last else None,
            note="; ".join(notes),
        ))
    return rows
