"""The health dashboard: one static HTML page per registry, drawn from the bookkeeping tables.

`collect` reads chunk_registry.health_reports, ingest_runs, reconcile_runs, eval_runs and
managed_tables and the view's target (a fixed number of queries, whatever the number of reports)
plus `registry status`; `render` turns that into a page with what needs a decision on top (the
view serving another table than the repo's production, a promotion the reconciler refused, the
latest eval comparison and its gate verdict), then the current alerts, a table of configs, and
per config one plotly figure of nine stacked time series sharing their time axis: the target
band of production.yaml on each with the points outside it marked, and a vertical marker at
every promotion, rollback and reconcile that touched the config, labelled with its commit. The
time axis spans --days, or less when the data is younger, so a new registry's points are not
squeezed against the right edge.

Plotly, because it draws bands and event markers as layout shapes, lets a reader zoom into and
hover over 90 days of points (and toggle 7d/30d/all), and ships plotly.js inside the Python
wheel: the page inlines it once (no CDN, nothing fetched when the page opens; a
Content-Security-Policy forbids it). The figures are written as plotly.js JSON directly.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import psycopg

from registry.config import ProductionConfig
from registry.database import bookkeeping
from registry.database.bookkeeping import ComparisonRecord, ProposedRollback, TuneRunRecord
from registry.errors import UsageError
from registry.quality import gate
from registry.quality.gate import GateVerdict
from registry.reconciler.actual import read_actual
from registry.reconciler.status import StatusReport, StatusRow
from registry.repository.state import RegistryState

if TYPE_CHECKING:
    from http.server import ThreadingHTTPServer

DEFAULT_DAYS = 90
PAGE_NAME = "index.html"
STALE_AFTER = timedelta(hours=36)
"""A production report older than this is itself an alert: the daily health run stopped."""
WINDOW_MARGIN = 0.1
MIN_WINDOW_MARGIN = timedelta(seconds=30)
"""Young data is framed from its first point less a tenth of its age (at least this) to now
plus as much."""

MarkerKind = Literal["promotion", "rollback", "drift", "reconcile", "failed"]


@dataclass(frozen=True)
class Metric:
    key: str
    title: str
    hover: str
    unit: str = ""


METRICS = (
    Metric("oracle_hit_rate", "Oracle hit rate", ".3f"),
    Metric("filter_hit_rate", "Filter hit rate", ".3f"),
    Metric("avg_snapshot_size", "Avg snapshot size", ".1f", "chunks"),
    Metric("dedup_rate", "Dedup rate", ".1%"),
    Metric("bm25_prefix_leakage", "BM25 prefix leakage", ",d", "rows"),
    Metric("over_budget_chunks", "Over-budget chunks", ",d", "chunks"),
    Metric("ingest_mb_per_s", "Ingest throughput", ".2f", "MB/s"),
    Metric("retrieval_p95_ms", "Retrieval p95 latency", ".1f", "ms"),
    Metric("ce_score_q50", "Cross-encoder score median", ".3f"),
)
REPORT_METRICS = {
    "oracle_hit_rate": ("oracle_hit_rate",),
    "filter_hit_rate": ("filter_hit_rate",),
    "avg_snapshot_size": ("retrieval_health", "avg_snapshot_size"),
    "dedup_rate": ("dedup_rate",),
    "bm25_prefix_leakage": ("retrieval_health", "bm25_prefix_leakage"),
    "over_budget_chunks": ("retrieval_health", "over_budget_chunks"),
    "retrieval_p95_ms": ("retrieval", "p95_latency_ms"),
}
"""Where each charted number sits in a stored report (HealthReport.as_dict)."""

MARKER_STYLE: dict[str, tuple[str, str]] = {
    "promotion": ("#1a7f37", "solid"),
    "rollback": ("#cf222e", "solid"),
    "drift": ("#9a6700", "dash"),
    "reconcile": ("#6e7781", "dot"),
    "failed": ("#cf222e", "dot"),
}
PALETTE = ("#0969da", "#8250df", "#bf3989", "#1b7c83", "#953800", "#57606a")
OUT_OF_BAND = "#cf222e"


# ---------------------------------------------------------------------------------------------
# The data


@dataclass(frozen=True)
class Point:
    at: datetime
    value: float
    note: str = ""


@dataclass(frozen=True)
class Marker:
    """A reconcile run that changed something for a config (or failed to)."""

    at: datetime
    kind: MarkerKind
    run_id: int
    commit: str | None
    description: str

    @property
    def label(self) -> str:
        sha = (self.commit or "no commit")[:7]
        return f"{self.kind} {sha}"


@dataclass
class ConfigData:
    chunk_version: str
    params: str | None
    status: str
    production: bool
    table: str | None
    rows: int | None
    series: dict[str, list[Point]] = field(default_factory=dict)
    markers: list[Marker] = field(default_factory=list)
    latest: dict[str, Any] | None = None
    latest_at: datetime | None = None
    reports: int = 0
    ingested_at: datetime | None = None

    @property
    def stale(self) -> bool:
        """The latest report predates the last ingest: its figures describe replaced rows."""
        return (self.latest_at is not None and self.ingested_at is not None
                and self.latest_at < self.ingested_at)


@dataclass(frozen=True)
class ProductionDisagreement:
    """The view serving another table than the one of the repo's production."""

    committed: str
    committed_table: str
    view: str
    served_table: str | None
    """schema.table the view reads; None: no view, or not exactly one table."""
    served_version: str | None

    @property
    def message(self) -> str:
        served = ("nothing (the view is missing or reads several tables)"
                  if self.served_table is None
                  else f"{self.served_version or 'an unmanaged table'} ({self.served_table})")
        return (f"production.yaml names {self.committed} ({self.committed_table}), but the view "
                f"{self.view} serves {served}")


def production_disagreement(
    conn: psycopg.Connection[Any], settings: ProductionConfig
) -> ProductionDisagreement | None:
    """Whether the view serves the repo's production, read as the reconciler reads it (None:
    it does, or the repo names no production)."""
    if settings.production is None:
        return None
    wanted = settings.table_name(settings.production)
    view = read_actual(conn, settings).relations.get(settings.base_name)
    reads = view.reads if view is not None and view.is_view else ()
    if reads == ((settings.schema, wanted),):
        return None
    served = reads[0] if len(reads) == 1 else None
    served_version = (bookkeeping.table_versions(conn, settings.identities).get(served[1])
                      if served else None)
    return ProductionDisagreement(
        settings.production, f"{settings.schema}.{wanted}",
        f"{settings.schema}.{settings.base_name}", ".".join(served) if served else None,
        served_version)


@dataclass(frozen=True)
class ReconcileRefusal:
    """The last reconcile run refused to apply: a promotion on main whose swap it would not
    make (the gate, an empty table) or another blocking finding."""

    run_id: int
    commit: str | None
    at: str
    reasons: str
    wanted: str | None
    """production.yaml's production."""
    served: str | None
    """The registry's production in the database."""

    @property
    def blocks_promotion(self) -> bool:
        return self.wanted is not None and self.wanted != self.served


@dataclass(frozen=True)
class GatedComparison:
    """The newest eval comparison and what the promotion gate makes of it now."""

    record: ComparisonRecord
    verdict: GateVerdict


@dataclass
class DashboardData:
    registry: str
    generated_at: datetime
    since: datetime
    settings: ProductionConfig
    production: str | None
    configs: list[ConfigData]
    proposals: list[ProposedRollback] = field(default_factory=list)
    comparison: GatedComparison | None = None
    refusal: ReconcileRefusal | None = None
    disagreement: ProductionDisagreement | None = None
    reconciled_commit: bool = False
    """The last reconcile run was on the commit the page was built from."""
    tuning: TuneRunRecord | None = None
    """The latest successful `registry tune` run, charted as its Pareto front."""

    @property
    def reports(self) -> int:
        return sum(c.reports for c in self.configs)

    def window(self) -> tuple[datetime, datetime]:
        """The charts' time range: --days back from now, or, when every point is younger,
        from the first point to now with a margin either side."""
        moments = [p.at for c in self.configs for points in c.series.values() for p in points]
        moments += [m.at for c in self.configs for m in c.markers]
        if not moments:
            return self.since, self.generated_at
        first = min(moments)
        margin = max((self.generated_at - first) * WINDOW_MARGIN, MIN_WINDOW_MARGIN)
        if first - margin <= self.since:
            return self.since, self.generated_at
        return first - margin, max(self.generated_at, max(moments)) + margin

    def alerts(self) -> list[tuple[str, str, str, datetime | None]]:
        """(level, config, message, report time) of the latest report of every live config,
        production first, plus a stale or missing production report."""
        found: list[tuple[str, str, str, datetime | None]] = []
        now = self.generated_at
        for config in self.configs:
            if config.status == "Retired":
                continue
            if config.production:
                if config.latest_at is None:
                    found.append(("warning", config.chunk_version, "no health report recorded: "
                                  "run `registry health` (the daily workflow does)", None))
                elif now - config.latest_at > STALE_AFTER:
                    hours = (now - config.latest_at).total_seconds() / 3600
                    found.append(("warning", config.chunk_version, f"the last health report is "
                                  f"{hours:.0f} hours old: is the daily health run failing?",
                                  config.latest_at))
            if config.stale:
                found.append(("warning", config.chunk_version, f"the latest health report "
                              f"({_when(config.latest_at)}) predates the ingest of "
                              f"{_when(config.ingested_at)}: its figures describe replaced "
                              "rows (run `registry health` and `registry eval`)",
                              config.latest_at))
            for alert in (config.latest or {}).get("alerts") or []:
                if alert.get("metric") == "production":
                    continue  # checked now, not as of the report: the production panel
                level = "critical" if alert.get("level") == "critical" else "warning"
                found.append((level, config.chunk_version, str(alert.get("message", "")),
                              config.latest_at))
        order = {"critical": 0, "warning": 1}
        production_first = {c.chunk_version: not c.production for c in self.configs}
        return sorted(found, key=lambda a: (production_first.get(a[1], True), order[a[0]]))


def _read_markers(
    conn: psycopg.Connection[Any], registries: tuple[str, ...]
) -> dict[str, list[Marker]]:
    """version -> the reconcile runs that changed (or failed to change) its table.

    Every production swap is replayed oldest first, as `registry history` replays git: a swap
    that undoes the swap still standing before it is a rollback, any other a promotion.
    """
    tables = bookkeeping.table_versions(conn, registries)
    runs = bookkeeping.changing_runs(conn, registries)
    markers: dict[str, list[Marker]] = {}
    standing: list[tuple[str | None, str]] = []
    for run_id, at, commit, _outcome, actions in runs:
        touched: dict[str, tuple[MarkerKind, list[str]]] = {}

        def touch(version: str | None, kind: MarkerKind, text: str,
                  touched: dict[str, tuple[MarkerKind, list[str]]] = touched) -> None:
            if not version:
                return
            rank = ("reconcile", "failed", "drift", "promotion", "rollback")
            old_kind, texts = touched.get(version, ("reconcile", []))
            best = kind if rank.index(kind) > rank.index(old_kind) else old_kind
            touched[version] = (best, [*texts, text])

        for action in actions:
            if not isinstance(action, dict):
                continue
            result = action.get("result")
            text = str(action.get("description") or action.get("action"))
            version = action.get("chunk_version")
            if result not in ("applied", "failed"):
                continue
            if result == "failed":
                touch(version, "failed", f"FAILED: {text}")
                continue
            if action.get("action") != "SwapProduction":
                touch(version, "reconcile", text)
                continue
            old, new = action.get("old_table"), str(action.get("table"))
            kind: MarkerKind
            if not str(action.get("reason", "promote")).startswith("promote"):
                kind = "drift"
            elif standing and standing[-1] == (new, old):
                standing.pop()
                kind = "rollback"
            else:
                standing.append((old, new))
                kind = "promotion"
            touch(version, kind, text)
            touch(tables.get(old) if old else None, kind, text)
        for version, (kind, texts) in touched.items():
            markers.setdefault(version, []).append(
                Marker(at, kind, int(run_id), commit, "; ".join(texts)))
    return markers


def collect(
    state: RegistryState,
    conn: psycopg.Connection[Any],
    report: StatusReport,
    *,
    registry: str,
    days: int = DEFAULT_DAYS,
    now: datetime | None = None,
) -> DashboardData:
    """Everything the page shows, read in a fixed number of queries: `report` is `status` of
    the same state and connection; `registry` names the repository on the page."""
    if days < 1:
        raise UsageError(f"--days {days} must be at least 1")
    bookkeeping.ensure_schema(conn)
    clock = conn.execute("SELECT statement_timestamp()").fetchone()
    assert clock is not None
    generated = now or clock[0]
    since = generated - timedelta(days=days)
    mine = state.settings.identities
    series: dict[str, dict[str, list[Point]]] = {}
    counts: dict[str, int] = {}
    for version, at, values, alerts, critical in bookkeeping.health_series(
            conn, since, REPORT_METRICS, mine):
        counts[version] = counts.get(version, 0) + 1
        note = (f"{critical} critical, {alerts - critical} warnings" if alerts
                else "no alerts")
        per = series.setdefault(version, {})
        for key, value in values.items():
            if value is not None:
                per.setdefault(key, []).append(Point(at, value, note))
    for version, at, found, model in bookkeeping.ce_series(conn, since, mine):
        spread = f"q10 {found.get('q10', 0):.3f}, q90 {found.get('q90', 0):.3f}"
        series.setdefault(version, {}).setdefault("ce_score_q50", []).append(
            Point(at, found.get("q50", 0.0), f"{model}: {spread}, {found.get('count', 0):.0f} "
                  "scores"))
    for version, at, rate, docs, chunks in bookkeeping.ingest_throughput(conn, since, mine):
        series.setdefault(version, {}).setdefault("ingest_mb_per_s", []).append(
            Point(at, rate, f"{docs or 0:,} documents, {chunks or 0:,} chunks"))
    latest = bookkeeping.latest_health_reports(conn, mine)
    ingested = bookkeeping.last_ingest_times(conn, mine)
    markers = _read_markers(conn, mine)
    proposals = bookkeeping.rollback_proposals_since(conn, since, mine)
    comparison = _gated_comparison(conn, state.settings)
    disagreement = production_disagreement(conn, state.settings)
    rows: dict[str, StatusRow | None] = {r.chunk_version: r for r in report.rows}
    for version in series:
        rows.setdefault(version, None)
    configs = []
    for version, row in rows.items():
        config = ConfigData(
            chunk_version=version,
            params=row.params if row else None,
            status=row.status if row else "Dropped",
            production=bool(row and row.production),
            table=row.table if row else None,
            rows=row.rows if row else None,
            series=series.get(version, {}),
            markers=[m for m in markers.get(version, []) if m.at >= since],
            reports=counts.get(version, 0),
            ingested_at=ingested.get(version),
        )
        if version in latest:
            config.latest_at, config.latest = latest[version].at, latest[version].report
        configs.append(config)
    production_first = [c for c in configs if c.production]
    others = sorted((c for c in configs if not c.production),
                    key=lambda c: (c.status in ("Retired", "Dropped"), _desc(c.chunk_version)))
    last_run = report.last_run or {}
    return DashboardData(
        registry=registry,
        generated_at=generated,
        since=since,
        settings=state.settings,
        production=state.settings.production,
        configs=production_first + others,
        proposals=proposals,
        comparison=comparison,
        refusal=_refusal(last_run, state.settings.production, report.rows),
        disagreement=disagreement,
        reconciled_commit=bool(last_run) and last_run.get("git_commit") == state.commit,
        tuning=bookkeeping.latest_tune_run(conn, state.settings.identities),
    )


def _gated_comparison(
    conn: psycopg.Connection[Any], settings: ProductionConfig
) -> GatedComparison | None:
    record = bookkeeping.newest_comparison(conn, settings.identities)
    if record is None:
        return None
    verdict = gate.judge(record.chunk_version, record.passed,
                         served_before=bookkeeping.served_production(conn, record.chunk_version,
                                                                   settings.identities),
                         require_eval=settings.require_eval)
    return GatedComparison(record, verdict)


def _refusal(
    last_run: dict[str, Any], wanted: str | None, rows: list[StatusRow]
) -> ReconcileRefusal | None:
    """The last run (as `registry status` reports it), when it was refused."""
    if last_run.get("outcome") != "refused":
        return None
    served = next((r.chunk_version for r in rows if r.production), None)
    return ReconcileRefusal(int(last_run["id"]), last_run.get("git_commit"),
                            str(last_run.get("finished_at") or last_run.get("started_at")),
                            str(last_run.get("error") or "no reason recorded"), wanted, served)


def _desc(version: str) -> tuple[int, ...]:
    """Newest version first."""
    return tuple(-ord(c) for c in version)


# ---------------------------------------------------------------------------------------------
# The page


def bands(settings: ProductionConfig) -> dict[str, tuple[float, float, str]]:
    """metric -> (low, high, label) of its target from production.yaml (or the hard rule)."""
    snap_low, snap_high = settings.target_snapshot_size
    dedup_low, dedup_high = settings.target_dedup_rate
    return {
        "oracle_hit_rate": (settings.target_oracle_hit_rate, 1.0,
                            f"target >= {settings.target_oracle_hit_rate:g}"),
        "filter_hit_rate": (settings.target_filter_hit_rate, 1.0,
                            f"target >= {settings.target_filter_hit_rate:g}"),
        "avg_snapshot_size": (snap_low, snap_high, f"target {snap_low:g}-{snap_high:g}"),
        "dedup_rate": (dedup_low, dedup_high, f"target {dedup_low:.0%}-{dedup_high:.0%}"),
        "bm25_prefix_leakage": (0.0, 0.0, "must be 0"),
        "over_budget_chunks": (0.0, 0.0, "must be 0"),
        "retrieval_p95_ms": (0.0, settings.target_retrieval_p95_ms,
                             f"target <= {settings.target_retrieval_p95_ms:g} ms"),
    }


EVENTS_TITLE = "Promotions, rollbacks and reconciles"
ROW_HEIGHTS = (0.45,) + (1.0,) * len(METRICS)
ROW_GAP = 0.03
BAND_FONT = {"size": 10, "color": "#1a7f37"}
MUTED = {"size": 10, "color": "#6e7781"}
TICK_FORMATS = [
    {"dtickrange": [None, 60_000], "value": "%H:%M:%S"},
    {"dtickrange": [60_000, 86_400_000], "value": "%b %d %H:%M"},
    {"dtickrange": [86_400_000, None], "value": "%b %d"},
]
"""One-line tick labels at every zoom (plotly's default adds a second line of date, which
runs into the title of the row below)."""


def _t(moment: datetime) -> str:
    """plotly.js dates carry no zone: every time on the page is UTC."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _domains() -> list[tuple[float, float]]:
    """(bottom, top) of each row in paper coordinates, row 1 on top."""
    usable = 1 - ROW_GAP * (len(ROW_HEIGHTS) - 1)
    total = sum(ROW_HEIGHTS)
    domains, top = [], 1.0
    for height in ROW_HEIGHTS:
        bottom = top - usable * height / total
        domains.append((max(bottom, 0.0), top))
        top = bottom - ROW_GAP
    return domains


def figure(data: DashboardData, config: ConfigData, color: str) -> dict[str, Any]:
    """One plotly.js figure per config: an events row, then the nine series, all sharing one
    time axis. Built as plain JSON: plotly's Python figure objects validate every property
    and took seconds for a page of five configs."""
    targets = bands(data.settings)
    first, last = data.window()
    start, end = _t(first), _t(last)
    traces: list[dict[str, Any]] = []
    shapes: list[dict[str, Any]] = []
    notes: list[dict[str, Any]] = []
    layout: dict[str, Any] = {
        "height": 180 * len(METRICS) + 160, "margin": {"l": 60, "r": 20, "t": 60, "b": 30},
        "template": {"layout": {"paper_bgcolor": "#fff", "plot_bgcolor": "#fff"}},
        "hovermode": "closest", "showlegend": False,
        "font": {"family": "system-ui, sans-serif", "size": 12, "color": "#1f2328"},
    }
    titles = [EVENTS_TITLE] + [f"{m.title} ({m.unit})" if m.unit else m.title for m in METRICS]
    for row, ((bottom, top), title) in enumerate(zip(_domains(), titles, strict=True), start=1):
        suffix = "" if row == 1 else str(row)
        layout[f"xaxis{suffix}"] = {
            "domain": [0, 1], "anchor": f"y{suffix}", "type": "date", "range": [start, end],
            "tickformatstops": TICK_FORMATS, "gridcolor": "#eaeef2", "showline": False,
            **({} if row == 1 else {"matches": "x"}),
        }
        layout[f"yaxis{suffix}"] = {"domain": [bottom, top], "anchor": f"x{suffix}",
                                    "gridcolor": "#eaeef2", "zeroline": False}
        notes.append({"text": title, "x": 0, "y": top, "xref": "paper", "yref": "paper",
                      "xanchor": "left", "yanchor": "bottom", "showarrow": False,
                      "font": {"size": 13}})
    _events(config.markers, traces, layout, notes)
    for row, metric in enumerate(METRICS, start=2):
        x, y = f"x{row}", f"y{row}"
        axis = layout[f"yaxis{row}"]
        points = config.series.get(metric.key, [])
        traces.append({
            "type": "scatter", "xaxis": x, "yaxis": y, "name": metric.title,
            "x": [_t(p.at) for p in points], "y": [p.value for p in points],
            "customdata": [p.note for p in points], "mode": _mode(metric, len(points)),
            "line": {"color": color, "width": 1.6}, "marker": {"size": 4, "color": color},
            "hovertemplate": f"%{{x|%Y-%m-%d %H:%M}} UTC<br>{metric.title}: "
                             f"%{{y:{metric.hover}}}<br>%{{customdata}}<extra></extra>",
        })
        if metric.unit:
            axis["title"] = {"text": metric.unit}
        if metric.key.endswith("hit_rate"):
            axis["range"] = [0, 1.02]
        elif metric.key == "dedup_rate":
            axis["tickformat"] = ".0%"
        else:
            axis["rangemode"] = "nonnegative"
        if not points:
            notes.append({"text": "no data in this period", "showarrow": False,
                          "xref": f"{x} domain", "yref": f"{y} domain", "x": 0.5, "y": 0.5,
                          "font": MUTED})
        band = targets.get(metric.key)
        if band is None:
            notes.append({"text": "no target in production.yaml", "showarrow": False,
                          "xref": f"{x} domain", "yref": f"{y} domain", "x": 1, "y": 1,
                          "xanchor": "right", "yanchor": "bottom", "font": MUTED})
            continue
        low, high, label = band
        outside = [p for p in points if is_outside(p.value, band)]
        if outside:
            traces.append({
                "type": "scatter", "xaxis": x, "yaxis": y, "name": "outside target",
                "x": [_t(p.at) for p in outside], "y": [p.value for p in outside],
                "customdata": [p.note for p in outside], "mode": "markers",
                "marker": {"symbol": "x", "size": 9, "color": OUT_OF_BAND},
                "hovertemplate": f"%{{x|%Y-%m-%d %H:%M}} UTC<br><b>{metric.title}: "
                                 f"%{{y:{metric.hover}}}, outside its {label}</b><br>"
                                 "%{customdata}<extra></extra>",
            })
        if high > low:
            shapes.append({"type": "rect", "xref": f"{x} domain", "yref": y, "x0": 0, "x1": 1,
                           "y0": low, "y1": high, "fillcolor": "#2da44e", "opacity": 0.12,
                           "line": {"width": 0}, "layer": "below"})
        else:
            shapes.append({"type": "line", "xref": f"{x} domain", "yref": y, "x0": 0, "x1": 1,
                           "y0": low, "y1": low, "layer": "below",
                           "line": {"color": "#2da44e", "width": 1, "dash": "dash"}})
        notes.append({"text": label, "showarrow": False, "xref": f"{x} domain", "yref": y,
                      "x": 0, "y": high, "xanchor": "left",
                      "yanchor": "top" if high > low else "bottom", "font": BAND_FONT})
    for marker in config.markers:
        line_color, dash = MARKER_STYLE[marker.kind]
        shapes.append({"type": "line", "xref": "x", "yref": "paper", "x0": _t(marker.at),
                       "x1": _t(marker.at), "y0": 0, "y1": 1, "layer": "below",
                       "line": {"color": line_color, "width": 1.2, "dash": dash}})
    days = [d for d in (7, 30) if timedelta(days=d) < last - first]
    if days:
        layout["xaxis"]["rangeselector"] = {
            "buttons": [{"count": d, "label": f"{d}d", "step": "day", "stepmode": "backward"}
                        for d in days] + [{"step": "all", "label": "all"}],
            "x": 0.5, "xanchor": "center", "y": 1.02}
    layout["shapes"], layout["annotations"] = shapes, notes
    return {"data": traces, "layout": layout}


def is_outside(value: float, band: tuple[float, float, str]) -> bool:
    low, high, _label = band
    return value < low or value > high


def outside_count(data: DashboardData, config: ConfigData) -> int:
    """How many charted points of a config lie outside their target band."""
    targets = bands(data.settings)
    return sum(1 for key, points in config.series.items() if key in targets
               for p in points if is_outside(p.value, targets[key]))


def _mode(metric: Metric, points: int) -> str:
    """Ingest runs are sparse events (no line implied between them); dense series drop dots."""
    if metric.key == "ingest_mb_per_s":
        return "markers"
    return "lines" if points > 120 else "lines+markers"


def _events(markers: list[Marker], traces: list[dict[str, Any]], layout: dict[str, Any],
            notes: list[dict[str, Any]]) -> None:
    """Row 1: a labelled triangle per event, on three staggered lanes so close labels do not
    overlap (hover: kind, run, commit, what it did)."""
    lanes = 3
    colors = [MARKER_STYLE[m.kind][0] for m in markers]
    traces.append({
        "type": "scatter", "xaxis": "x", "yaxis": "y", "name": "events",
        "x": [_t(m.at) for m in markers],
        "y": [lanes - 0.5 - (i % lanes) for i in range(len(markers))],
        "mode": "markers+text", "text": [m.label for m in markers],
        "textposition": "middle right", "textfont": {"size": 10, "color": colors},
        "marker": {"symbol": "triangle-down", "size": 10, "color": colors},
        "customdata": [[m.kind, m.commit or "no commit", m.run_id, m.description]
                       for m in markers],
        "hovertemplate": "%{x|%Y-%m-%d %H:%M} UTC<br><b>%{customdata[0]}</b> (reconcile run "
                         "#%{customdata[2]}, commit %{customdata[1]})<br>%{customdata[3]}"
                         "<extra></extra>",
    })
    layout["yaxis"].update({"range": [0, lanes], "visible": False, "fixedrange": True})
    if not markers:
        notes.append({"text": "none in this period", "showarrow": False, "xref": "x domain",
                      "yref": "y domain", "x": 0.5, "y": 0.5, "font": MUTED})


_CSP = ("default-src 'none'; script-src 'unsafe-inline'; "
        "style-src 'unsafe-inline'; img-src data:; font-src data:")
_STYLE = """
body{font-family:system-ui,sans-serif;margin:0;color:#1f2328;background:#f6f8fa}
header,section{max-width:1280px;margin:0 auto;padding:12px 24px}
header{padding-top:20px}h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:8px 0}
.meta{color:#59636e;font-size:13px}
.card{background:#fff;border:1px solid #d1d9e0;border-radius:6px;padding:12px 16px;
margin:10px 0}
ul.alerts{list-style:none;padding:0;margin:0}ul.alerts li{padding:6px 8px;border-radius:4px;
margin:4px 0;font-size:14px}li.critical{background:#ffebe9;border-left:4px solid #cf222e}
li.warning{background:#fff8c5;border-left:4px solid #9a6700}
li.ok{background:#dafbe1;border-left:4px solid #1a7f37}
li.proposal{background:#ddf4ff;border-left:4px solid #0969da}
li.info{background:#f6f8fa;border-left:4px solid #6e7781}
.outside{color:#cf222e;font-weight:600}
table{border-collapse:collapse;width:100%;font-size:13px}th,td{text-align:left;
padding:6px 8px;border-bottom:1px solid #d1d9e0}th{background:#f6f8fa}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;padding:1px 7px;border-radius:10px;font-size:12px;
background:#eaeef2}.badge.prod{background:#1a7f37;color:#fff}
.legend span{margin-right:14px;font-size:12px}.legend i{display:inline-block;width:18px;
height:0;border-top-width:2px;vertical-align:middle;margin-right:4px}
code{font-size:12px}.level{font-size:11px;font-weight:600;letter-spacing:.04em}
"""


def _script_json(value: Any) -> str:
    """JSON safe inside a <script> element: no `<` can close it."""
    return json.dumps(value, separators=(",", ":")).replace("<", "\\u003c")


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _when(moment: datetime | None) -> str:
    return "never" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _fmt(value: Any, pattern: str) -> str:
    return "–" if not isinstance(value, int | float) else format(value, pattern)


def _alerts_html(data: DashboardData) -> str:
    items = []
    for proposal in data.proposals:
        link = (f'<a href="{_esc(proposal.url)}">{_esc(proposal.url)}</a>' if proposal.url
                else "no pull request recorded")
        number = f" #{proposal.number}" if proposal.number else ""
        items.append('<li class="proposal"><span class="level">ROLLBACK PROPOSED</span> '
                     f"<b>{_esc(proposal.chunk_version)}</b> "
                     f"back to {_esc(proposal.target_version)}{number} at "
                     f"{_esc(_when(proposal.proposed_at))}: {link}</li>")
    for level, version, message, at in data.alerts():
        items.append(f'<li class="{level}" data-config="{_esc(version)}">'
                     f'<span class="level">{level.upper()}</span> '
                     f"<b>{_esc(version)}</b>: {_esc(message)} "
                     f'<span class="meta">({_esc(_when(at))})</span></li>')
    if not items:
        items.append('<li class="ok">No alerts in the latest health reports.</li>')
    return f'<ul class="alerts" id="alert-list">{"".join(items)}</ul>'


def _li(level: str, key: str, title: str, text: str) -> str:
    return (f'<li class="{level}" id="{key}"><span class="level">{_esc(title)}</span> '
            f"{text}</li>")


COMPARED = (("oracle_hit_rate", "oracle hit", ".3f"), ("filter_hit_rate", "filter hit", ".3f"),
            ("avg_snapshot_size", "snapshot", ".1f"))


def _production_html(data: DashboardData) -> str:
    """What needs a decision: the view against the repo, a refused reconcile, the gate."""
    items = []
    disagreement = data.disagreement
    if disagreement is not None and data.reconciled_commit:
        items.append(_li("critical", "disagreement", "PRODUCTION DISAGREEMENT",
                         f"{_esc(disagreement.message)}, after a reconcile of this commit: fix "
                         "what the reconciler refused, or revert the promotion"))
    elif disagreement is not None:
        items.append(_li("warning", "disagreement", "PRODUCTION PENDING",
                         f"{_esc(disagreement.message)}: no reconcile has run on this commit "
                         "yet (run `registry reconcile`)"))
    elif data.production is not None:
        items.append(_li("ok", "disagreement", "PRODUCTION",
                         f"the view serves <b>{_esc(data.production)}</b>, the repo's "
                         "production"))
    else:
        items.append(_li("info", "disagreement", "PRODUCTION",
                         "production.yaml names no production yet"))
    refusal = data.refusal
    if refusal is not None:
        commit = (refusal.commit or "no commit")[:7]
        what = (f"production.yaml promotes <b>{_esc(refusal.wanted)}</b>, production is still "
                f"{_esc(refusal.served or 'none')}: " if refusal.blocks_promotion else "")
        items.append(_li("critical", "refusal", "PROMOTION BLOCKED" if refusal.blocks_promotion
                         else "RECONCILE REFUSED",
                         f"{what}reconcile run #{refusal.run_id} on <code>{_esc(commit)}</code> "
                         f"({_esc(refusal.at)}) refused: {_esc(refusal.reasons)}"))
    compared = data.comparison
    if compared is None:
        items.append(_li("info", "comparison", "EVAL COMPARISON",
                         "none recorded (`registry eval --compare VERSION --against production "
                         "--cases FILE` before a promotion)"))
        return f'<ul class="alerts" id="production-list">{"".join(items)}</ul>'
    record, verdict = compared.record, compared.verdict
    figures = ", ".join(
        f"{name} {format(record.metrics[key], pattern)}"
        + (f" ({record.deltas[key]:+{pattern}})" if key in record.deltas else "")
        for key, name, pattern in COMPARED if isinstance(record.metrics.get(key), int | float))
    result = ("passed" if record.passed
              else f"failed ({_esc('; '.join(record.regressions) or 'it regressed')})")
    verdict_text = (f"the gate holds it back: {_esc(verdict.reason)}"
                    + (f" ({_esc(verdict.fix)})" if verdict.fix else "") if verdict.held
                    else f"the gate lets it through: {_esc(verdict.reason)}")
    level = "critical" if verdict.held else ("ok" if record.passed else "warning")
    items.append(_li(level, "comparison", "EVAL COMPARISON",
                     f"<b>{_esc(record.chunk_version)}</b> against {_esc(record.against)} "
                     f"({_esc(_when(record.at))}) {result}: {_esc(figures)}; {verdict_text}"))
    return f'<ul class="alerts" id="production-list">{"".join(items)}</ul>'


def _configs_table(data: DashboardData) -> str:
    head = ("<tr><th>Version</th><th>Params</th><th>Status</th><th class=num>Rows</th>"
            "<th>Last report</th><th class=num>Oracle hit</th><th class=num>Filter hit</th>"
            "<th class=num>Alerts</th><th class=num>Reports</th></tr>")
    body = []
    for config in data.configs:
        latest = config.latest or {}
        alerts = latest.get("alerts") or []
        critical = sum(1 for a in alerts if isinstance(a, dict) and a.get("level") == "critical")
        badge = ('<span class="badge prod">production</span> ' if config.production else "")
        alert_text = (f"{critical} critical, {len(alerts) - critical} warnings" if alerts
                      else ("none" if config.latest else "–"))
        rates = ("<td class=num>stale</td><td class=num>stale</td>" if config.stale else
                 f"<td class=num>{_fmt(latest.get('oracle_hit_rate'), '.3f')}</td>"
                 f"<td class=num>{_fmt(latest.get('filter_hit_rate'), '.3f')}</td>")
        body.append(
            f'<tr data-config="{_esc(config.chunk_version)}"><td><a href="#config-'
            f'{_esc(config.chunk_version)}"><code>{_esc(config.chunk_version)}</code></a></td>'
            f"<td>{_esc(config.params or '(not in the repo)')}</td>"
            f'<td>{badge}<span class="badge">{_esc(config.status)}</span></td>'
            f"<td class=num>{_fmt(config.rows, ',d')}</td><td>{_esc(_when(config.latest_at))}"
            f"</td>{rates}<td class=num>{alert_text}</td><td class=num>{config.reports}</td></tr>")
    return f'<table id="configs-table"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table>'


def _legend() -> str:
    css = {"solid": "solid", "dash": "dashed", "dot": "dotted"}
    parts = [f'<span><i style="border-top:2px {css[dash]} {color}"></i>{kind}</span>'
             for kind, (color, dash) in MARKER_STYLE.items()]
    parts.append('<span><i style="border-top:8px solid #2da44e33"></i>target band '
                 "(production.yaml)</span>")
    parts.append(f'<span><b style="color:{OUT_OF_BAND}">&#x2715;</b> outside its target '
                 "band</span>")
    return f'<div class="legend meta">{"".join(parts)}</div>'


TUNING_PANELS = (("oracle_hit_rate", "Oracle hit rate"), ("filter_hit_rate", "Filter hit rate"))
FRONT_COLOR = "#0969da"
OTHER_COLOR = "#8c959f"


def tuning_figure(run: TuneRunRecord) -> dict[str, Any]:
    """The latest tuning run: each hit rate against the index size (MB), one point per trial;
    the Pareto front (over all the run's objectives) in blue and joined by a line, the other
    complete trials grey, pruned trials as hollow circles (their first-stage figures)."""
    traces: list[dict[str, Any]] = []
    layout: dict[str, Any] = {
        "height": 380, "margin": {"l": 60, "r": 20, "t": 40, "b": 50}, "showlegend": True,
        "legend": {"orientation": "h", "y": -0.2},
        "template": {"layout": {"paper_bgcolor": "#fff", "plot_bgcolor": "#fff"}},
        "hovermode": "closest",
        "font": {"family": "system-ui, sans-serif", "size": 12, "color": "#1f2328"},
        "annotations": [],
    }
    groups = (("Pareto front", [t for t in run.trials if t.pareto], FRONT_COLOR, "circle"),
              ("other trials", [t for t in run.trials if t.state == "complete" and not t.pareto],
               OTHER_COLOR, "circle"),
              ("pruned (first stage)", [t for t in run.trials if t.state == "pruned"],
               OTHER_COLOR, "circle-open"))
    for column, (key, title) in enumerate(TUNING_PANELS, start=1):
        suffix = "" if column == 1 else str(column)
        left = (column - 1) / len(TUNING_PANELS)
        layout[f"xaxis{suffix}"] = {"domain": [left + 0.04, left + 0.46], "anchor": f"y{suffix}",
                                    "title": {"text": "index size (MB)"}, "gridcolor": "#eaeef2",
                                    "rangemode": "tozero"}
        layout[f"yaxis{suffix}"] = {"domain": [0, 0.9], "anchor": f"x{suffix}", "range": [0, 1.02],
                                    "title": {"text": title}, "gridcolor": "#eaeef2"}
        layout["annotations"].append({
            "text": title, "x": left + 0.04, "y": 1.0, "xref": "paper", "yref": "paper",
            "xanchor": "left", "yanchor": "bottom", "showarrow": False, "font": {"size": 13}})
        for name, trials, color, symbol in groups:
            points = sorted((t for t in trials if key in t.metrics and "index_bytes" in t.metrics),
                            key=lambda t: t.metrics["index_bytes"])
            front = name == "Pareto front"
            traces.append({
                "type": "scatter", "xaxis": f"x{suffix}", "yaxis": f"y{suffix}", "name": name,
                "legendgroup": name, "showlegend": column == 1,
                "mode": "lines+markers" if front else "markers",
                "x": [round(t.metrics["index_bytes"] / 1e6, 4) for t in points],
                "y": [t.metrics[key] for t in points],
                "customdata": [_trial_note(t) for t in points],
                "marker": {"size": 9 if front else 7, "color": color, "symbol": symbol},
                "line": {"color": color, "width": 1.2, "shape": "hv"},
                "hovertemplate": "%{customdata}<extra></extra>",
            })
    return {"data": traces, "layout": layout}


def _trial_note(trial: Any) -> str:
    p, m = trial.params, trial.metrics
    return (f"trial #{trial.number}: {p.get('chunk_size')}/{p.get('overlap_ratio', 0):.2f}/"
            f"J={p.get('jaccard_threshold')}/prefix-{p.get('prefix_policy')}<br>"
            f"oracle {m.get('oracle_hit_rate', 0):.3f}, filter {m.get('filter_hit_rate', 0):.3f}"
            f"<br>{m.get('rows', 0):,.0f} rows, {m.get('index_bytes', 0) / 1e6:.2f} MB, "
            f"p50 {m.get('p50_latency_ms', 0):.2f} ms ({trial.state})")


def _tuning_html(run: TuneRunRecord | None, plot_config: dict[str, Any]) -> str:
    if run is None:
        return ""
    fig = tuning_figure(run)
    args = ", ".join(_script_json(v) for v in ("chart-tuning", fig["data"], fig["layout"],
                                                plot_config))
    front = [t for t in run.trials if t.pareto]
    best = next((t for t in run.trials if t.number == run.best_trial), None)
    chosen = (f" · chosen (prefer {_esc(run.prefer)}): trial #{best.number} "
              f"<code>{_esc(_trial_note(best).split('<br>')[0].split(': ', 1)[1])}</code>"
              if best else "")
    locked = (f" · locked as <code>{_esc(run.locked.get('chunk_version'))}</code>"
              if run.locked else "")
    return (f'<section id="tuning"><div class="card"><h2>Tuning: Pareto front of tuning run '
            f"{run.run_id}</h2><div class=\"meta\">{len(run.trials)} trials, {len(front)} on "
            f"the front (objectives {_esc(', '.join(run.objectives))}), "
            f"{_esc(_when(run.finished_at or run.started_at))}{chosen}{locked}</div>"
            f'<div id="chart-tuning" class="chart"></div>'
            f"<script>Plotly.newPlot({args});</script></div></section>")


def render(data: DashboardData) -> str:
    """The whole page: plotly.js inlined once, then one figure per config."""
    from plotly.offline import get_plotlyjs

    sections = []
    plot_config = {"displaylogo": False, "responsive": True}
    for index, config in enumerate(data.configs):
        fig = figure(data, config, PALETTE[index % len(PALETTE)])
        div_id = f"chart-{config.chunk_version}"
        args = ", ".join(_script_json(v) for v in (div_id, fig["data"], fig["layout"],
                                                    plot_config))
        badge = ' <span class="badge prod">production</span>' if config.production else ""
        outside = outside_count(data, config)
        outside_text = (f' · <span class="outside">{outside} '
                        f"{'point' if outside == 1 else 'points'} outside the target "
                        "band</span>" if outside else "")
        sections.append(
            f'<section class="config" id="config-{_esc(config.chunk_version)}" '
            f'data-config="{_esc(config.chunk_version)}"><div class="card">'
            f"<h2><code>{_esc(config.chunk_version)}</code>{badge}</h2>"
            f'<div class="meta">{_esc(config.params or "(not in the repo)")} · '
            f"{_esc(config.table or '')} · {config.reports} reports, {len(config.markers)} "
            f"events in the period{outside_text}</div>"
            f'<div id="{_esc(div_id)}" class="chart"></div>'
            f"<script>Plotly.newPlot({args});</script></div></section>")
    title = f"chunk-registry health: {data.registry}"
    production = data.production or "none"
    summary = (f"Production: <code>{_esc(production)}</code> · {len(data.configs)} configs · "
               f"{data.reports} health reports from {_esc(_when(data.window()[0]))} to "
               f"{_esc(_when(data.generated_at))} · generated {_esc(_when(data.generated_at))}")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_esc(title)}</title><style>{_STYLE}</style>"
        f"<script>{get_plotlyjs()}</script></head><body>"
        f'<header><h1>{_esc(title)}</h1><div class="meta">{summary}</div></header>'
        f'<section id="production"><div class="card"><h2>Production and promotions</h2>'
        f"{_production_html(data)}</div></section>"
        f'<section id="alerts"><div class="card"><h2>Current alerts</h2>{_alerts_html(data)}'
        "</div></section>"
        f'<section id="configs"><div class="card"><h2>Configs</h2>{_configs_table(data)}'
        f"{_legend()}</div></section>"
        + _tuning_html(data.tuning, plot_config)
        + "".join(sections)
        + "</body></html>\n"
    )


# ---------------------------------------------------------------------------------------------
# Writing and serving


@dataclass(frozen=True)
class DashboardResult:
    path: Path
    bytes: int
    configs: int
    reports: int
    markers: int
    alerts: int

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "bytes": self.bytes, "configs": self.configs,
                "reports": self.reports, "markers": self.markers, "alerts": self.alerts}


def build(data: DashboardData, out: Path) -> DashboardResult:
    """`registry dashboard --out DIR`: write DIR/index.html (written whole, then renamed).
    Needs plotly (`registry.extras.require` it before reading the data)."""
    page = render(data).encode()
    out.mkdir(parents=True, exist_ok=True)
    target = out / PAGE_NAME
    partial = out / f".{PAGE_NAME}.partial"
    partial.write_bytes(page)
    partial.replace(target)
    return DashboardResult(target, len(page), len(data.configs), data.reports,
                           sum(len(c.markers) for c in data.configs), len(data.alerts()))


def server(directory: Path, port: int = 8000) -> ThreadingHTTPServer:
    """An HTTP server of the page in `directory`, bound to 127.0.0.1 only (never all
    interfaces): the caller runs `serve_forever`. Port 0 picks a free port.

    It answers GET/HEAD of `/` and `/index.html` and nothing else: no other file under the
    directory, no listing, no symlink followed; and only to a Host of 127.0.0.1:PORT or
    localhost:PORT, so a page on another site cannot reach it through DNS rebinding."""
    import os
    from http import HTTPStatus
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    page = directory / PAGE_NAME

    class PageOnly(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._answer(body=True)

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def _answer(self, *, body: bool) -> None:
            bound = getattr(self.server, "server_port", None)
            if self.headers.get("Host", "") not in (f"127.0.0.1:{bound}", f"localhost:{bound}"):
                return self._refuse(HTTPStatus.MISDIRECTED_REQUEST, body=body)
            if self.path.split("?", 1)[0] not in ("/", f"/{PAGE_NAME}"):
                return self._refuse(HTTPStatus.NOT_FOUND, body=body)
            try:
                fd = os.open(page, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
                with os.fdopen(fd, "rb") as file:
                    content = file.read()
            except OSError:
                return self._refuse(HTTPStatus.NOT_FOUND, body=body)
            self._send(HTTPStatus.OK, content, "text/html; charset=utf-8", body=body)

        def _refuse(self, status: HTTPStatus, *, body: bool) -> None:
            self._send(status, status.phrase.encode(), "text/plain; charset=utf-8", body=body)

        def _send(self, status: HTTPStatus, content: bytes, kind: str, *, body: bool) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(content)))
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if body:
                self.wfile.write(content)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    try:
        return ThreadingHTTPServer(("127.0.0.1", port), PageOnly)
    except OSError as err:
        raise UsageError(f"cannot listen on 127.0.0.1:{port}: {err.strerror}",
                         fix="pick another --port (0 picks a free one)") from None


def url_of(http: ThreadingHTTPServer) -> str:
    host, port = http.server_address[:2]
    return f"http://{host!s}:{port}/{PAGE_NAME}"
