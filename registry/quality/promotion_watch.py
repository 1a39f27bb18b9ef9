"""The regression watch after a promotion: propose the rollback, never perform it.

For the monitoring window of production.yaml (default 48h) after the view was swapped to a
promoted config, every health report of that config is compared with the config's locked
baseline_metrics and with the last report of the production it replaced. A critical alert the
previous production did not have, or a gated metric (oracle and filter hit rate) dropping by
more than its gate, makes the watch open a rollback pull request through the GitOps flow
(`registry rollback --pr`: a `git revert` of the promotion) with the evidence in its body. The
merge decides; the reconciler then points the view back.

Exactly once per promotion (a promotion = the config and the commit on main that promoted it;
its window starts when the view was swapped to it): the proposal is recorded in
chunk_registry.rollback_proposals, and before opening one the watch asks GitHub for an open
rollback pull request and adopts it instead (so a crash between opening and recording, or a
rollback someone opened by hand, never leads to a second one). An advisory lock keeps two
watchers from racing.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import psycopg

from registry.config import ProductionConfig
from registry.database import bookkeeping
from registry.database.bookkeeping import RollbackProposal
from registry.database.connection import WATCH_LOCK_KEY
from registry.errors import Refused, RegistryError, WatchBusy
from registry.notify.dispatch import notify
from registry.notify.events import watch_check
from registry.repository.git import Git
from registry.repository.github import GitHubClient, origin_repo, propose, token_from
from registry.repository.history import read_history
from registry.repository.lifecycle import describe_change, rollback
from registry.repository.state import RegistryState

if TYPE_CHECKING:
    import threading

log = logging.getLogger("registry.quality.promotion_watch")

Outcome = Literal["no-production", "pending", "rolled-back", "waiting", "healthy", "regressed",
                  "proposed", "already-proposed", "window-closed"]
GATED = ("oracle_hit_rate", "filter_hit_rate")
EVIDENCE_METRICS = (
    ("oracle_hit_rate", ("oracle_hit_rate",), ".3f"),
    ("filter_hit_rate", ("filter_hit_rate",), ".3f"),
    ("avg_snapshot_size", ("retrieval_health", "avg_snapshot_size"), ".1f"),
    ("dedup_rate", ("dedup_rate",), ".3f"),
    ("bm25_prefix_leakage", ("retrieval_health", "bm25_prefix_leakage"), "g"),
    ("over_budget_chunks", ("retrieval_health", "over_budget_chunks"), "g"),
)


@dataclass(frozen=True)
class Promotion:
    """The production change being watched: what the database serves and what main says."""

    chunk_version: str
    table: str
    promoted_at: datetime
    previous: str | None
    commit: str
    window_ends: datetime

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "promoted_at": _iso(self.promoted_at),
                "window_ends": _iso(self.window_ends)}


@dataclass(frozen=True)
class Report:
    id: int
    at: datetime
    data: dict[str, Any]

    def metric(self, path: tuple[str, ...]) -> float | None:
        value: Any = self.data
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return float(value) if math.isfinite(value) else None

    def critical(self) -> dict[str, str]:
        """metric -> message of every critical alert in the report."""
        return {str(a.get("metric")): str(a.get("message"))
                for a in self.data.get("alerts") or []
                if isinstance(a, dict) and a.get("level") == "critical"}

    def summary(self) -> dict[str, Any]:
        return {"id": self.id, "at": _iso(self.at),
                **{name: self.metric(path) for name, path, _ in EVIDENCE_METRICS},
                "alerts": [a for a in self.data.get("alerts") or [] if isinstance(a, dict)]}


@dataclass(frozen=True)
class Regression:
    """One reason to roll back, found in one report."""

    report: int
    at: datetime
    kind: Literal["alert", "baseline", "previous"]
    metric: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "at": _iso(self.at)}


@dataclass
class WatchResult:
    outcome: Outcome
    message: str
    promotion: Promotion | None = None
    reports: list[Report] = field(default_factory=list)
    regressions: list[Regression] = field(default_factory=list)
    baseline: dict[str, float] = field(default_factory=dict)
    before: Report | None = None
    proposal: RollbackProposal | None = None

    @property
    def exit_code(self) -> int:
        """1 while the watched promotion has regressed (proposed or not), else 0."""
        return 1 if self.regressions and self.outcome != "window-closed" else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "message": self.message,
            "promotion": self.promotion.to_dict() if self.promotion else None,
            "reports_checked": len(self.reports),
            "regressions": [r.to_dict() for r in self.regressions],
            "baseline_metrics": self.baseline,
            "previous_production_report": self.before.summary() if self.before else None,
            "latest_report": self.reports[-1].summary() if self.reports else None,
            "proposal": self.proposal.to_dict() if self.proposal else None,
        }


def _reports_text(count: int) -> str:
    return f"{count} health report{'' if count == 1 else 's'}"


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------------------------
# Judging reports


def judge(
    reports: list[Report], baseline: Mapping[str, float], before: Report | None,
    settings: ProductionConfig, previous: str | None,
) -> list[Regression]:
    """Every regression in `reports`: a critical alert `before` did not have, or a gated metric
    below the promoted config's baseline or the previous production's last report by more than
    its gate."""
    gates = {"oracle_hit_rate": settings.oracle_hit_rate_max_drop,
             "filter_hit_rate": settings.filter_hit_rate_max_drop}
    known = before.critical() if before else {}
    found: list[Regression] = []
    for report in reports:
        for metric, message in report.critical().items():
            if metric not in known:
                found.append(Regression(report.id, report.at, "alert", metric,
                                        f"critical alert: {message}"))
        for metric in GATED:
            value = report.metric((metric,))
            if value is None:
                continue
            references: tuple[tuple[Literal["baseline", "previous"], float | None, str], ...] = (
                ("baseline", baseline.get(metric), "the locked baseline"),
                ("previous", before.metric((metric,)) if before else None,
                 f"{previous}'s last report"),
            )
            for kind, reference, source in references:
                if reference is None or reference - value <= gates[metric] + 1e-12:
                    continue
                found.append(Regression(
                    report.id, report.at, kind, metric,
                    f"{metric} {value:.3f} is {reference - value:.3f} below {source} "
                    f"{reference:.3f} (the gate allows {gates[metric]:.3f})"))
    return found


# ---------------------------------------------------------------------------------------------
# Reading the database


def _report(stored: bookkeeping.StoredHealthReport) -> Report:
    return Report(stored.id, stored.at, stored.report)


# ---------------------------------------------------------------------------------------------
# The watch


def check(
    git: Git,
    state: RegistryState,
    conn: psycopg.Connection[Any],
    *,
    env: Mapping[str, str] | None = None,
) -> WatchResult:
    """One pass of the watch: find the promotion in force, judge its reports, and propose the
    rollback once when it regressed inside the monitoring window. The watch lock is taken on
    `conn` and lasts as long as it."""
    env = os.environ if env is None else env
    settings = state.settings
    result = _check_locked(conn, git, state, env)
    _notify(conn, settings, result, env)
    return result


def _check_locked(conn: psycopg.Connection[Any], git: Git, state: RegistryState,
                  env: Mapping[str, str]) -> WatchResult:
    """The watch under its advisory lock (taken here, released with the session)."""
    settings = state.settings
    bookkeeping.ensure_schema(conn)
    got = conn.execute("SELECT pg_try_advisory_lock(%s)", (WATCH_LOCK_KEY,)).fetchone()
    if not (got and got[0]):
        raise WatchBusy("another `registry watch-promotion` is running against this database",
                        fix="let it finish; it proposes the rollback at most once anyway")
    clock = conn.execute("SELECT statement_timestamp()").fetchone()
    assert clock is not None
    now: datetime = clock[0]
    served = bookkeeping.production_row(conn, settings.identities)
    if served is None or served[2] is None:
        return WatchResult("no-production", "no production table yet: nothing to watch")
    version, table, promoted_at = served[0], served[1], served[2]
    move = next((e for e in read_history(git, state.ref)
                 if e.kind in ("promote", "rollback")), None)
    if move is None or move.chunk_version != version:
        said = move.chunk_version if move else settings.production
        return WatchResult("pending", f"the database serves {version} but {state.ref} "
                           f"says {said}: run `registry reconcile` first")
    if move.kind == "rollback":
        return WatchResult("rolled-back", f"the last production change was a rollback to "
                           f"{version} ({move.commit[:10]}): nothing to watch")
    promotion = Promotion(version, table, promoted_at, move.previous, move.commit,
                          promoted_at + settings.monitoring_window)
    config = state.configs.get(version)
    result = WatchResult("waiting", "", promotion,
                         baseline=dict(config.baseline_metrics) if config else {})
    result.reports = [_report(r) for r in bookkeeping.health_reports_between(
        conn, version, promoted_at, min(now, promotion.window_ends), settings.identities)]
    if promotion.previous:
        before = bookkeeping.last_health_report(conn, promotion.previous, promoted_at,
                                                settings.identities)
        result.before = _report(before) if before else None
    result.regressions = judge(result.reports, result.baseline, result.before, settings,
                               promotion.previous)
    result.proposal = bookkeeping.rollback_proposal(conn, version, promotion.commit,
                                                    settings.identity)
    window = f"window until {_iso(promotion.window_ends)}"
    if result.proposal is not None:
        result.outcome = "already-proposed"
        result.message = (f"the rollback of {version} was proposed at "
                          f"{_iso(result.proposal.proposed_at)}: "
                          f"{result.proposal.url or result.proposal.branch}")
    elif now > promotion.window_ends:
        result.outcome = "window-closed"
        result.message = (f"the monitoring window of {version} closed at "
                          f"{_iso(promotion.window_ends)}")
    elif not result.reports:
        result.message = (f"no health report of {version} since its promotion at "
                          f"{_iso(promoted_at)} ({window})")
    elif not result.regressions:
        result.outcome = "healthy"
        result.message = (f"{_reports_text(len(result.reports))} of {version} since its "
                          f"promotion: no regression ({window})")
    elif promotion.previous is None:
        result.outcome = "regressed"
        result.message = (f"{version} regressed, but it is the first production: there is "
                          "nothing to roll back to")
    else:
        result.proposal = _propose(conn, git, promotion, result, env, settings.identity)
        result.outcome = "proposed" if not result.proposal.adopted else "already-proposed"
        how = ("adopted the rollback pull request already open" if result.proposal.adopted
               else f"proposed rolling back to {promotion.previous}")
        result.message = (f"{version} regressed: {how}: "
                          f"{result.proposal.url or result.proposal.branch}")
    return result


def _notify(conn: psycopg.Connection[Any], settings: ProductionConfig, result: WatchResult,
            env: Mapping[str, str]) -> None:
    """Tell the configured targets of a regression and its rollback PR, and when it is over."""
    notify(conn, settings.notifications, watch_check(result), env=env,
           registry=settings.identity)


def watch_branch(promotion: Promotion) -> str:
    """The watch's own branch per promotion (a stale `rollback/<v>` of an earlier cycle can
    never block it, and it is never someone else's branch to overwrite)."""
    return f"rollback/{promotion.previous}-undo-{promotion.commit[:10]}"


def _propose(conn: psycopg.Connection[Any], git: Git, promotion: Promotion, result: WatchResult,
             env: Mapping[str, str], registry: str) -> RollbackProposal:
    assert promotion.previous is not None
    evidence = result.to_dict()
    base = git.branch_of(git.desired_ref(fetch=False))
    client: GitHubClient | None = None
    token = token_from(env)
    if token is not None:
        github = origin_repo(git)
        client = GitHubClient(github.api_url(env), token, github)
        open_rollbacks = [(head, pull) for head, pull in client.open_pulls(base)
                          if head.startswith("rollback/")]
        if open_rollbacks:
            head, pull = open_rollbacks[0]
            log.info("rollback pull request #%s (%s) is already open: adopted", pull.number, head)
            return _record(conn, promotion, RollbackProposal(
                promotion.previous, promotion.promoted_at, head, None, pull.number, pull.url,
                adopted=True), evidence, registry)
    branch = watch_branch(promotion)
    if git.resolve(f"refs/heads/{branch}"):
        git.run("branch", "-D", branch)  # left by a run interrupted before it was proposed
    change = rollback(git, branch=branch)
    if change.reverted != promotion.commit:
        git.run("branch", "-D", branch)
        raise Refused(
            f"{base} would revert {(change.reverted or '')[:10]}, not the watched promotion "
            f"{promotion.commit[:10]} of {promotion.chunk_version}",
            fix=f"bring {base} up to date with the reconciled ref (`git pull`), then rerun")
    git.push(f"+refs/heads/{branch}:refs/heads/{branch}")
    title, body = describe_change(git, branch, change.base)
    made = propose(git, branch, base, title, evidence_markdown(result) + "\n" + body, env)
    proposal = RollbackProposal(promotion.previous, promotion.promoted_at, branch, change.commit,
                                made.number, made.url, adopted=False, created=made.created)
    recorded = _record(conn, promotion, proposal, evidence, registry)
    return RollbackProposal(**{**asdict(recorded), "created": made.created})


def _record(conn: psycopg.Connection[Any], promotion: Promotion, proposal: RollbackProposal,
            evidence: dict[str, Any], registry: str) -> RollbackProposal:
    return bookkeeping.record_rollback_proposal(conn, promotion.chunk_version,
                                                promotion.promoted_at, promotion.commit,
                                                proposal, evidence, registry)


def evidence_markdown(result: WatchResult) -> str:
    """The why of the rollback pull request: what regressed, before and after, the alerts."""
    promotion = result.promotion
    assert promotion is not None
    version, previous = promotion.chunk_version, promotion.previous
    hours = (promotion.window_ends - promotion.promoted_at).total_seconds() / 3600
    lines = [
        f"## Regression watch: roll back `{version}`", "",
        f"Production moved from `{previous}` to `{version}` at {_iso(promotion.promoted_at)} "
        f"(commit {promotion.commit[:10]}). Within its {hours:g}h monitoring window, "
        f"`registry watch-promotion` compared {_reports_text(len(result.reports))} with the "
        f"locked baseline of `{version}` and the last report of `{previous}`, and found:", "",
    ]
    lines += [f"- report #{r.report} ({_iso(r.at)}): {r.message}" for r in result.regressions]
    first = next((r for r in result.reports if r.id == result.regressions[0].report), None)
    latest = result.reports[-1] if result.reports else None
    columns: list[tuple[str, Report | None, Mapping[str, float] | None]] = [
        (f"baseline of `{version}`", None, result.baseline),
        (f"`{previous}` before" + (f" (#{result.before.id})" if result.before else ""),
         result.before, None),
        (f"first regressed (#{first.id})" if first else "first regressed", first, None),
        (f"latest (#{latest.id})" if latest else "latest", latest, None),
    ]
    lines += ["", "| metric | " + " | ".join(c[0] for c in columns) + " |",
              "|---|" + "---:|" * len(columns)]
    for name, path, pattern in EVIDENCE_METRICS:
        cells = []
        for _, report, metrics in columns:
            value = metrics.get(name) if metrics is not None else (
                report.metric(path) if report else None)
            cells.append("–" if value is None else format(value, pattern))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if latest is not None:
        alerts = [a for a in latest.data.get("alerts") or [] if isinstance(a, dict)]
        lines += ["", f"Alerts in the latest report (#{latest.id}, {_iso(latest.at)}):", ""]
        lines += [f"- {'🚨' if a.get('level') == 'critical' else '⚠️'} {a.get('message')}"
                  for a in alerts] or ["- none"]
    lines += ["", f"Merging this pull request reverts the promotion; the reconciler then points "
              f"the view back at `{previous}`'s table (no re-ingest). Closing it keeps `{version}`:"
              " the watch proposes a rollback once per promotion.", ""]
    return "\n".join(lines)


def follow(
    check_once: Callable[[], WatchResult],
    *,
    stop: threading.Event,
    interval: float,
    on_result: Callable[[WatchResult], None],
) -> int:
    """Call `check_once` (one whole `check`) every `interval` seconds until `stop` is set;
    errors are logged and retried."""
    checks = 0
    while not stop.is_set():
        try:
            on_result(check_once())
        except WatchBusy as err:
            log.info("%s", err)
        except RegistryError as err:
            log.warning("check failed: %s", err)
        checks += 1
        stop.wait(interval)
    return checks
