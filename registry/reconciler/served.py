"""What applications read: the served state, materialized by the reconciler after each run.

Per registry and environment, `chunk_registry.served_state` holds the production version and
table, the running experiment and its candidate arm, and the embedder spec when a config pins
one; its version is bumped on every change (and `NOTIFY chunk_registry_served` sent), so the
Python API (`registry.serving`) re-reads it only when it moved. The state describes what the
database serves (the bookkeeping's production, a candidate table that exists and has rows),
never what git merely wants. The candidate's view (`<base>_candidate`) is made or dropped here
too, so SQL clients can route without Python.

A reader's cache may name a table for up to `serving.CHECK_INTERVAL_S` after it stopped being
served (a little more with a slow query): `SERVED_GRACE` (that interval plus a wide margin) is
how long the planner and the applier keep a table after it left the served state.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from registry.config import LockedConfig, ProductionConfig
from registry.database import bookkeeping
from registry.database.chunk_table import (
    Marker,
    has_rows,
    marker_ddl,
    relation_exists,
    relation_marker,
    table_exists,
    view_ddl,
)
from registry.database.connection import first_line
from registry.repository.state import RegistryState

log = logging.getLogger("registry.reconciler.served")

CHECK_INTERVAL_S = 2.0
"""How often a reader checks the served-state version at most (`serving.Router` default)."""
SERVED_GRACE = timedelta(seconds=60)
"""A table that left the served state is kept at least this long: the readers' check interval
plus a margin of 58 s for a slow refresh, a paused process or clock skew."""
VIEW_LOCK_TIMEOUT = "500ms"


@dataclass
class Served:
    """One materialization: the state stored, its version, and why an arm was left out."""

    version: int
    changed: bool
    state: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def embedder_spec(config: LockedConfig) -> dict[str, Any] | None:
    """The embedder a config pins (format 2), for applications that embed queries: the whole
    pin, so the application embeds with the same model, prefix and normalization the rows
    were embedded with. None: a BM25-only config."""
    return config.embedder.to_dict() if config.embedder is not None else None


def _arm(settings: ProductionConfig, config: LockedConfig | None, version: str,
         table: str) -> dict[str, Any]:
    return {"version": version, "table": f"{settings.schema}.{table}",
            "embedder_name": config.embedder_name if config else None,
            "embedder": embedder_spec(config) if config else None}


def output_state(state: dict[str, Any]) -> dict[str, Any]:
    """The served state as `--format json` prints it: each arm names its config
    `chunk_version` (the stored state keeps `version`, which applications' snapshots read)."""
    def arm(value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        return {("chunk_version" if k == "version" else k): v for k, v in value.items()}

    out = {**state, "production": arm(state.get("production"))}
    experiment = state.get("experiment")
    if isinstance(experiment, dict):
        out["experiment"] = {**experiment, "candidate": arm(experiment.get("candidate"))}
    return out


def served_state(
    conn: psycopg.Connection[Any], state: RegistryState, now: datetime
) -> tuple[dict[str, Any], list[tuple[str, str]], list[str]]:
    """(the served state, the tables it serves, notes) as the database serves it now."""
    settings = state.settings
    rows = [m for m in bookkeeping.managed_tables(conn, with_last_compare=False,
                                                  registries=settings.identities)
            if settings.owns(m.registry) and m.schema_name == settings.schema]
    production = next((m for m in rows if m.status == "production"), None)
    notes: list[str] = []
    served: dict[str, Any] = {
        "registry": settings.identity, "environment": settings.environment,
        "view": f"{settings.schema}.{settings.base_name}",
        "production": None, "experiment": None,
    }
    tables: list[tuple[str, str]] = []
    if production is not None:
        served["production"] = _arm(settings, state.configs.get(production.chunk_version),
                                    production.chunk_version, production.table_name)
        tables.append(production.key)
    experiment = settings.experiment
    if experiment is None:
        return served, tables, notes
    table = settings.table_name(experiment.candidate)
    row = next((m for m in rows if m.table_name == table and m.status in ("shadow", "production")),
               None)
    why = None
    if not experiment.running(now):
        why = f"it ended at {experiment.to_dict()['ends']}"
    elif production is None:
        why = "there is no production to compare with"
    elif row is None or not table_exists(conn, settings.schema, table):
        why = f"{settings.schema}.{table} is not a live managed table yet"
    elif not has_rows(conn, settings.schema, table):
        why = f"{settings.schema}.{table} is empty (ingest {experiment.candidate})"
    if why is not None:
        notes.append(f"experiment {experiment.name} is not routed: {why}")
        return served, tables, notes
    served["experiment"] = {
        **{k: v for k, v in experiment.to_dict().items() if k != "guardrails"},
        "view": f"{settings.schema}.{settings.candidate_view}",
        "candidate": _arm(settings, state.configs.get(experiment.candidate),
                          experiment.candidate, table),
    }
    tables.append((settings.schema, table))
    return served, tables, notes


def materialize(
    conn: psycopg.Connection[Any], state: RegistryState, now: datetime
) -> Served:
    """Bring the candidate view and the served state in line with what the database serves."""
    settings = state.settings
    served, tables, notes = served_state(conn, state, now)
    note = _candidate_view(conn, settings, served["experiment"])
    if note:
        notes.append(note)
    with conn.transaction():
        version, changed = bookkeeping.publish_served_state(
            conn, settings.identity, settings.environment, served, state.commit, tables,
            former=[i for i in settings.identities if i != settings.identity])
    for text in notes:
        log.info("%s", text)
    return Served(version, changed, served, notes)


def _candidate_view(conn: psycopg.Connection[Any], settings: ProductionConfig,
                    experiment: dict[str, Any] | None) -> str | None:
    """Point `<base>_candidate` at the candidate's table, or drop it when no experiment is
    routed (only when it carries this registry's marker); a note when it could not."""
    schema, view = settings.schema, settings.candidate_view
    try:
        if experiment is None and not relation_exists(conn, schema, view):
            return None  # the common case, no experiment and no view: one query
        with conn.transaction():
            conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(
                sql.Literal(VIEW_LOCK_TIMEOUT)))
            marker = relation_marker(conn, schema, view)
            exists = relation_exists(conn, schema, view)
            if exists and (marker is None or not settings.owns(marker.registry)):
                return (f"{schema}.{view} exists but is not this registry's view: left alone "
                        "(drop or rename it so the candidate view can be made)")
            if experiment is None:
                if exists:
                    conn.execute(sql.SQL("DROP VIEW {} RESTRICT").format(
                        sql.Identifier(schema, view)))
                return None
            table = experiment["candidate"]["table"].split(".", 1)[1]
            conn.execute(view_ddl(schema, view, table))
            conn.execute(marker_ddl("VIEW", schema, view, Marker(
                settings.identity, experiment["candidate"]["version"])))
    except psycopg.Error as err:
        if isinstance(err, psycopg.OperationalError) and conn.closed:
            raise
        return f"the candidate view {schema}.{view} was not updated: {first_line(err)}"
    return None

