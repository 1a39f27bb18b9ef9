"""What a reconcile run, a health report or a regression check means as incidents.

A `Check` says which incidents are active now and which (kind, subject) scopes the check is
authoritative for: an open incident in a covered scope that is no longer active has resolved.
An incident's identity is (kind, subject, fingerprint); the fingerprint is a hash of the
condition's stable parts (which actions failed, which findings blocked, which alerts are
critical, which promotion regressed), never of error texts or times that change run to run.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from registry.notify.settings import EventKind

if TYPE_CHECKING:
    from registry.quality.health import HealthReport
    from registry.quality.promotion_watch import WatchResult
    from registry.reconciler.run import RunResult

DRIFT_KINDS = frozenset({"view_elsewhere", "view_missing", "view_replaced", "missing"})


@dataclass(frozen=True)
class Event:
    kind: EventKind
    subject: str
    fingerprint: str
    title: str
    body: str
    one_shot: bool = False
    """Told once and never resolved (a promotion applied)."""


@dataclass(frozen=True)
class Check:
    scopes: tuple[tuple[EventKind, str | None], ...]
    """(kind, subject) this check speaks for; subject None: every subject of the kind."""
    events: tuple[Event, ...] = field(default_factory=tuple)
    resolutions: tuple[tuple[str, str], ...] = ()
    """kind -> what the message of a resolved incident says (`{subject}` is filled in)."""

    def covers(self, kind: str, subject: str) -> bool:
        return any(k == kind and s in (None, subject) for k, s in self.scopes)

    def resolution(self, kind: str, subject: str) -> str:
        said = dict(self.resolutions).get(kind) or f"{kind} of {{subject}} has cleared."
        return said.replace("{subject}", subject)


def fingerprint(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(sorted(parts)).encode()).hexdigest()[:16]


def reconcile_check(result: RunResult, view: str) -> Check:
    """Failed or blocked runs and drift, per production view; each promotion applied."""
    plan = result.plan
    where = f"{plan.ref} ({(plan.commit or '')[:10]}) against {plan.target}"
    events: list[Event] = []
    if result.failed:
        events.append(Event(
            "reconcile-failed", view,
            fingerprint(*(r.action.describe() for r in result.failed)),
            f"Reconcile failed: {view}",
            f"Reconciling {where}:\n" + "\n".join(
                f"- {r.action.describe()}: {r.error}" for r in result.failed)))
    if result.outcome == "refused":
        events.append(Event(
            "reconcile-blocked", view,
            fingerprint(*(f"{f.kind}:{f.table}" for f in plan.blocking)),
            f"Reconcile blocked: {view}",
            f"Reconciling {where} was refused:\n" + "\n".join(
                f"- {f.render()}" for f in plan.blocking)))
    drift = [f for f in plan.findings if f.kind in DRIFT_KINDS and f.severity != "info"]
    if drift:
        repaired = result.outcome == "applied"
        events.append(Event(
            "drift", view, fingerprint(*(f"{f.kind}:{f.table}" for f in drift)),
            f"Drift in {view}",
            "The database had drifted from the repository:\n" + "\n".join(
                f"- {f.render()}" for f in drift)
            + ("\nThis reconcile repaired it." if repaired else "")))
    for item in result.results:
        action = item.action
        if (item.outcome == "applied" and type(action).__name__ == "SwapProduction"
                and getattr(action, "reason", "") == "promote"):
            version = getattr(action, "chunk_version", "")
            events.append(Event(
                "promotion", version, fingerprint(plan.commit or "", action.table),
                f"Production now reads {version}",
                f"{action.describe()} ({where}).", one_shot=True))
    scopes: tuple[tuple[EventKind, str | None], ...] = (
        ("reconcile-failed", view), ("reconcile-blocked", view), ("drift", view))
    return Check(scopes, tuple(events), (
        ("reconcile-failed", f"Reconciling {view} succeeds again: {where}."),
        ("reconcile-blocked", f"Reconciling {view} is no longer blocked: {where}."),
        ("drift", f"No drift in {view} any more: {where}.")))


def health_check(report: HealthReport) -> Check:
    """A critical health report of one config; resolved by its next report without one."""
    version = report.config.chunk_version
    critical = [a for a in report.alerts if a.level == "critical"]
    events: tuple[Event, ...] = ()
    if critical:
        events = (Event(
            "health-critical", version, fingerprint(*(a.metric for a in critical)),
            f"Health critical: {version} on {report.table.table}",
            "\n".join(f"- {a.message}" for a in critical)),)
    return Check((("health-critical", version),), events, (
        ("health-critical", f"{version} on {report.table.table} has no critical alert any "
         "more."),))


def watch_check(result: WatchResult) -> Check:
    """A regression of the promotion in force (one incident per promotion), with its rollback
    pull request; resolved when the watch no longer finds one (rolled back, or moved on)."""
    promotion = result.promotion
    events: tuple[Event, ...] = ()
    if promotion is not None and result.regressions:
        proposal = result.proposal
        if proposal is not None:
            action = f"Rollback to {promotion.previous} proposed: {proposal.url or proposal.branch}"
        else:
            action = f"No rollback proposed ({result.message})."
        events = (Event(
            "regression", promotion.chunk_version, promotion.commit[:12],
            f"Regression after promoting {promotion.chunk_version}",
            "\n".join(f"- report #{r.report}: {r.message}" for r in result.regressions)
            + f"\n{action}"),)
    return Check((("regression", None),), events, (
        ("regression", f"The regression of {{subject}} is over ({result.outcome}: "
         f"{result.message})."),))
