"""Production guardrails and the health report: every number computed from real data.

`check_table` is one SQL statement over the whole table (no per-row Python): row count, BM25
prefix leakage under policy A (bm25_has_prefix, computed by PostgreSQL from bm25_text as rows
are written), over-budget chunks, the last two read from a partial index that holds only the
flagged rows; the table's CHECKs make rows of another version or ingest run impossible. The
dedup rate comes from the last successful ingest run; retrieval metrics from an evaluation (run
now with `--cases`, or the last one recorded). The report keeps the seed's "Production Metrics"
shape.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from registry.config import (
    LockedConfig,
    ProductionConfig,
    guardrail_violations,
)
from registry.database import bookkeeping
from registry.database.chunk_table import (
    ChunkTable,
    chunk_table,
    over_budget,
    table_exists,
    unhealthy_rows,
)
from registry.database.connection import resolve_dsn, session
from registry.errors import RegistryError, TokenizerUnavailable
from registry.quality.evaluation import (
    DEFAULT_K,
    DEFAULT_TOP,
    evaluate_table,
    load_cases,
    record_eval,
)
from registry.repository.git import Git
from registry.repository.state import committed_state
from registry.tokenizer import resolve, special_token_count

CRITICAL = "critical"
WARNING = "warning"
EXIT_HEALTHY, EXIT_WARNINGS, EXIT_CRITICAL = 0, 1, 2


class ProductionGuardrails:
    """The seed's guardrails for one locked config: hard caps, tokenizer, embedder fit."""

    def __init__(
        self, config: LockedConfig, tokenizer_file: Path | None = None, *, strict: bool = False
    ) -> None:
        self.config = config
        self.tokenizer_file = tokenizer_file
        self.strict = strict

    def validate_config(self) -> dict[str, Any]:
        config = self.config
        issues: list[str] = []
        warnings: list[str] = []
        special = 2
        try:
            resolved = resolve(config.tokenizer_name, self.tokenizer_file,
                               allow_download=self.strict)
        except TokenizerUnavailable as err:
            (issues if self.strict else warnings).append(
                f"tokenizer {config.tokenizer_name} is not available: {err.message}")
        else:
            if resolved.hash != config.tokenizer_hash:
                issues.append(f"tokenizer {config.tokenizer_name} hashes to {resolved.hash}, not "
                              f"the locked {config.tokenizer_hash}")
            else:
                special = special_token_count(resolved.load())
        issues.extend(message for _, message, _ in guardrail_violations(config, special))
        return {"valid": not issues, "issues": issues, "warnings": warnings}


def counts_query(target: ChunkTable) -> sql.Composed:
    """Rows, prefix leakage and over-budget rows of the config's table in one statement:
    count(*) can be an index-only scan and the flagged rows come from the partial index
    (empty while healthy), so the heap need not be read in full."""
    config = target.config
    leak = sql.SQL("bm25_has_prefix" if config.prefix_policy == "A" else "false")
    # Values as Literals (in the predicates), not parameters, next to a composed name (see
    # ingest._load).
    return sql.SQL(
        "SELECT (SELECT count(*) FROM {table}), count(*) FILTER (WHERE {leak}), "
        "count(*) FILTER (WHERE {over}) FROM {table} WHERE {unhealthy}"
    ).format(leak=leak, table=target.identifier,
             over=over_budget(config.chunk_size, config.token_budget),
             unhealthy=unhealthy_rows(config.prefix_policy, config.chunk_size,
                                      config.token_budget))


@dataclass
class TableHealth:
    table: str
    exists: bool
    rows: int = 0
    prefix_leakage: int = 0
    over_budget: int = 0
    dedup_rate: float | None = None
    last_ingest: dict[str, Any] | None = None


def check_table(conn: psycopg.Connection[Any], target: ChunkTable) -> TableHealth:
    """The data guardrails of one table: one statement over the table (`counts_query`), plus
    one bookkeeping query."""
    health = TableHealth(table=target.qualified, exists=False)
    if not table_exists(conn, target.schema, target.table):
        return health
    health.exists = True
    row = conn.execute(counts_query(target)).fetchone()
    assert row is not None
    health.rows, health.prefix_leakage, health.over_budget = int(row[0]), int(row[1]), int(row[2])
    ingest = bookkeeping.last_successful_ingest(conn, target.chunk_version)
    if ingest is not None:
        health.last_ingest = asdict(ingest)
        produced = (ingest.chunks or 0) + (ingest.duplicates_removed or 0)
        health.dedup_rate = (ingest.duplicates_removed or 0) / produced if produced else None
    return health


@dataclass
class Alert:
    level: str
    metric: str
    message: str

    @property
    def icon(self) -> str:
        return "🚨" if self.level == CRITICAL else "⚠️"


@dataclass
class HealthReport:
    config: LockedConfig
    settings: ProductionConfig
    config_health: dict[str, Any]
    table: TableHealth
    retrieval: dict[str, float] | None
    timestamp: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def alerts(self) -> list[Alert]:
        found: list[Alert] = []
        settings, table, retrieval = self.settings, self.table, self.retrieval
        if not self.config_health["valid"]:
            found.append(Alert(CRITICAL, "config", "config invalid: "
                               + "; ".join(self.config_health["issues"])))
        if not table.exists:
            found.append(Alert(CRITICAL, "table", f"table {table.table} does not exist"))
        elif table.rows == 0:
            found.append(Alert(CRITICAL, "rows", f"table {table.table} is empty"))
        if table.prefix_leakage:
            found.append(Alert(CRITICAL, "bm25_prefix_leakage", f"{table.prefix_leakage} rows "
                               "carry the contextual prefix in bm25_text under policy A"))
        if table.over_budget:
            found.append(Alert(CRITICAL, "over_budget_chunks", f"{table.over_budget} chunks "
                               f"exceed {self.config.chunk_size} BM25 tokens or the "
                               f"{self.config.token_budget}-token embedding budget"))
        if retrieval is None:
            found.append(Alert(WARNING, "retrieval", "no evaluation yet: run "
                               f"`registry eval {self.config.chunk_version} --cases FILE`"))
        else:
            low, high = settings.target_snapshot_size
            size = retrieval["avg_snapshot_size"]
            if not low <= size <= high:
                found.append(Alert(WARNING, "avg_snapshot_size", f"average snapshot size "
                                   f"{size:.1f} is outside the target {low:g}-{high:g}"))
            if retrieval["oracle_hit_rate"] < settings.target_oracle_hit_rate:
                found.append(Alert(WARNING, "oracle_hit_rate", f"oracle hit rate "
                                   f"{retrieval['oracle_hit_rate']:.3f} is below the target "
                                   f"{settings.target_oracle_hit_rate:.2f}"))
            if retrieval["filter_hit_rate"] < settings.target_filter_hit_rate:
                found.append(Alert(WARNING, "filter_hit_rate", f"filter hit rate "
                                   f"{retrieval['filter_hit_rate']:.3f} is below the target "
                                   f"{settings.target_filter_hit_rate:.2f}"))
        if table.dedup_rate is not None:
            low, high = settings.target_dedup_rate
            if not low <= table.dedup_rate <= high:
                found.append(Alert(WARNING, "dedup_rate", f"dedup rate {table.dedup_rate:.1%} is "
                                   f"outside the target {low:.0%}-{high:.0%}"))
        elif table.exists:
            found.append(Alert(WARNING, "dedup_rate", "no successful ingest run recorded"))
        return found

    @property
    def exit_code(self) -> int:
        levels = {a.level for a in self.alerts}
        if CRITICAL in levels:
            return EXIT_CRITICAL
        return EXIT_WARNINGS if levels else EXIT_HEALTHY

    def as_dict(self) -> dict[str, Any]:
        """The seed's Production Metrics JSON, extended with the numbers it only promised."""
        alerts = self.alerts
        retrieval = self.retrieval or {}
        critical = [a for a in alerts if a.level == CRITICAL]
        data_ok = self.table.exists and not (self.table.prefix_leakage or self.table.over_budget)
        return {
            "timestamp": self.timestamp.isoformat(timespec="seconds").replace("+00:00", "Z"),
            "config_version": self.config.chunk_version,
            "overall_healthy": not critical and not alerts,
            "config_health": self.config_health,
            "retrieval_health": {
                "healthy": data_ok and not [a for a in alerts if a.metric in (
                    "avg_snapshot_size", "oracle_hit_rate", "filter_hit_rate", "retrieval")],
                "bm25_prefix_leakage": self.table.prefix_leakage,
                "over_budget_chunks": self.table.over_budget,
                "avg_snapshot_size": retrieval.get("avg_snapshot_size"),
            },
            "oracle_hit_rate": retrieval.get("oracle_hit_rate"),
            "filter_hit_rate": retrieval.get("filter_hit_rate"),
            "dedup_rate": self.table.dedup_rate,
            "rows": self.table.rows,
            "table": self.table.table,
            "ingest": self.table.last_ingest,
            "retrieval": self.retrieval,
            "alerts": [asdict(a) | {"icon": a.icon} for a in alerts],
        }


def record(conn: psycopg.Connection[Any], report: HealthReport) -> None:
    """Append the report to chunk_registry.health_reports (the trend the dashboard draws)."""
    bookkeeping.record_health_report(conn, report.timestamp, report.config.chunk_version,
                                     json.loads(json.dumps(report.as_dict(), default=str)))


def render(report: HealthReport, fmt: str) -> str:
    data = report.as_dict()
    if fmt == "json":
        return json.dumps(data, indent=2, default=str) + "\n"
    status = "healthy" if data["overall_healthy"] else (
        "CRITICAL" if report.exit_code == EXIT_CRITICAL else "warnings")

    def number(value: Any, pattern: str) -> str:
        return "n/a" if value is None else format(value, pattern)

    rows = [
        ("config valid", str(data["config_health"]["valid"])),
        ("rows", str(data["rows"])),
        ("bm25 prefix leakage", str(data["retrieval_health"]["bm25_prefix_leakage"])),
        ("over-budget chunks", str(data["retrieval_health"]["over_budget_chunks"])),
        ("avg snapshot size", number(data["retrieval_health"]["avg_snapshot_size"], ".1f")),
        ("oracle hit rate", number(data["oracle_hit_rate"], ".3f")),
        ("filter hit rate", number(data["filter_hit_rate"], ".3f")),
        ("dedup rate", number(data["dedup_rate"], ".1%")),
    ]
    if fmt == "markdown":
        out = [f"### Chunk registry health: {report.config.chunk_version} ({status})", ""]
        out += [f"- {a.icon} {a.message}" for a in report.alerts] or ["- ✅ no alerts"]
        out += ["", "| metric | value |", "| --- | --- |"]
        out += [f"| {k} | {v} |" for k, v in rows]
        return "\n".join(out) + "\n"
    out = [f"{report.config.chunk_version} ({report.config.label()}) on {data['table']}: {status}"]
    out += [f"  {k:<20} {v}" for k, v in rows]
    out += [f"{a.icon} {a.level}: {a.message}" for a in report.alerts]
    return "\n".join(out) + "\n"


def require_table(health: TableHealth) -> None:
    if not health.exists:
        raise RegistryError(f"table {health.table} does not exist",
                            fix="run `registry reconcile` first")


def run_health(
    repo: Path | str,
    version: str = "production",
    *,
    dsn: str | None = None,
    ref: str | None = None,
    cases_file: Path | None = None,
    tokenizer_file: Path | None = None,
    strict: bool = False,
    record_report: bool = True,
    k: int | None = None,
    top: int | None = None,
) -> HealthReport:
    """`registry health`: guardrails on the config and on the data, retrieval metrics (a fresh
    evaluation with `cases_file`, else the last one recorded), alerts; appended to
    health_reports so the dashboard can draw trends."""
    state = committed_state(Git(repo), ref)
    target = chunk_table(state, version)
    config = target.config
    settings = state.settings
    guard = ProductionGuardrails(config, tokenizer_file, strict=strict).validate_config()
    guard["issues"] = guard["issues"] + [
        p.render() for p in state.errors if p.path.endswith(f"{config.chunk_version}.yaml")
    ]
    guard["valid"] = not guard["issues"]
    cases = load_cases(cases_file) if cases_file else None
    with session(resolve_dsn(dsn).value, purpose="health") as conn:
        bookkeeping.ensure_schema(conn)
        table = check_table(conn, target)
        retrieval: dict[str, Any] | None = None
        if cases is not None and table.exists and table.rows:
            result = evaluate_table(conn, target, cases, k=k or DEFAULT_K,
                                    top=top or DEFAULT_TOP)
            record_eval(conn, result)
            retrieval = dict(result.metrics)
        else:
            last = bookkeeping.last_eval(conn, config.chunk_version)
            if last is not None:
                retrieval = dict(last.metrics)
        report = HealthReport(config, settings, guard, table, retrieval)
        if record_report:
            record(conn, report)
            _notify(conn, report)
    return report


def _notify(conn: psycopg.Connection[Any], report: HealthReport) -> None:
    """Tell the configured targets of a critical report, and of its resolution."""
    from registry.notify.dispatch import notify
    from registry.notify.events import health_check

    notify(conn, report.settings.notifications, health_check(report))
