"""The promotion gate: one rule, used by `registry promote` and by the reconciler's swap.

The rule: a config that never served production may become production only if its newest
recorded comparison against production (`registry eval --compare`) passed; with
gates.require_eval a comparison must also exist, except for the first production (there is
nothing to compare against). A config that served production before (a former production, the
rollback target) is never held back: a rollback is always possible. `--force` overrides the
gate, in both commands.

The promotion path (`judge_path`): an environment with `promotion: {from: staging, soak: 24h}`
takes a version only after staging served it for the soak with passing health reports; the
same rule in `registry promote --environment`, the offline PR plan (the committed part) and the
reconciler (the evidence in staging's database).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import psycopg

from registry.config import duration_text
from registry.database import bookkeeping
from registry.errors import Refused
from registry.timestamps import rfc3339

if TYPE_CHECKING:
    from registry.config import ProductionConfig, Promotion


@dataclass(frozen=True)
class GateVerdict:
    """Whether the gate holds a config back from production, and why."""

    held: bool
    reason: str
    fix: str | None = None


def judge(
    chunk_version: str, last_passed: bool | None, *, served_before: bool, require_eval: bool
) -> GateVerdict:
    """The rule, on plain values: `last_passed` is the outcome of the newest comparison (None:
    never compared), `require_eval` is gates.require_eval unless this is the first production."""
    if served_before:
        return GateVerdict(False, f"{chunk_version} served production before (a rollback "
                           "target): the gate never holds it back")
    if last_passed is False:
        return GateVerdict(
            True, "its last comparison against production failed the gates",
            f"rerun `registry eval --compare {chunk_version} --against production`, or pass "
            "--force")
    if last_passed is None and require_eval:
        return GateVerdict(
            True, "gates.require_eval is set and it was never compared against production",
            f"run `registry eval --compare {chunk_version} --against production --cases FILE`")
    return GateVerdict(False, "its last comparison passed" if last_passed
                       else "it was never compared against production")


def promotion_note(
    conn: psycopg.Connection[Any], chunk_version: str, *, require_eval: bool, force: bool,
    registries: Sequence[str],
) -> str:
    """The gate of `registry promote` on what the database recorded: a line for the commit
    message, or Refused (unless `force`)."""
    last = bookkeeping.last_comparison(conn, chunk_version, registries)
    served = (bookkeeping.exists(conn, "managed_tables")
              and bookkeeping.served_production(conn, chunk_version, registries))
    verdict = judge(chunk_version, last.passed if last else None, served_before=served,
                    require_eval=require_eval)
    if served:
        return f"Eval: {verdict.reason}."
    if last is None:
        if verdict.held and not force:
            raise Refused(f"{chunk_version} has no eval comparison, and production.yaml requires "
                          "one (gates.require_eval)",
                          fix=f"run `registry eval --compare {chunk_version} --against "
                              "production --cases FILE`, or promote anyway with --force")
        return f"Eval: no comparison of {chunk_version} recorded{' (forced)' if force else ''}."
    when = f"{last.at:%Y-%m-%d %H:%M UTC}"
    metrics = ", ".join(f"{k} {v:.3f}" for k, v in sorted(last.metrics.items())
                        if k.endswith("_hit_rate") and isinstance(v, int | float))
    if not verdict.held:
        return (f"Eval: the last comparison against {last.against} ({when}, {last.retrieval} on "
                f"both sides) passed: {metrics}.")
    why = "; ".join(last.regressions) or "it regressed"
    if not force:
        raise Refused(f"the last eval comparison of {chunk_version} against {last.against} "
                      f"({when}) failed: {why}",
                      fix="lock a better config, re-run `registry eval --compare`, or promote "
                          "anyway with --force")
    return (f"Eval: promoted with --force although the last comparison against "
            f"{last.against} ({when}, {last.retrieval} on both sides) failed: {why}.")


# ---------------------------------------------------------------------------------------------
# The promotion path: staging, then production (issue 17)


@dataclass(frozen=True)
class SoakEvidence:
    """What the source environment's database recorded about a version: since when its
    reconciler serves it (None: it does not), and its health reports since then as
    (when, critical alerts) in time order."""

    serving_since: datetime | None
    reports: tuple[tuple[datetime, tuple[str, ...]], ...] = ()


def judge_path(
    chunk_version: str, environment: str, promotion: Promotion, source_serves: str | None,
    evidence: SoakEvidence | None, now: datetime, *, served_before: bool = False,
) -> GateVerdict:
    """The path rule, on plain values: a version reaches `environment` only if the environment
    it is promoted from (`promotion.source`) serves it in the same committed state, served it
    for `promotion.soak` (its database's evidence), and, with `require_healthy`, had at least
    one health report there and no critical one in the soak (a critical report restarts it).
    `evidence` None: offline (a PR plan), only the committed part is checked. A version the
    environment served before (a rollback target) is never held back."""
    source = promotion.source
    if served_before:
        return GateVerdict(False, f"{chunk_version} served {environment} before (a rollback "
                           "target): the promotion path never holds it back")
    if source_serves != chunk_version:
        return GateVerdict(
            True, f"{chunk_version} is not what {source} serves ({source_serves or 'nothing'}): "
            f"a version reaches {environment} only through {source}",
            f"promote it to {source} first (`registry promote {chunk_version} --environment "
            f"{source}`) and let it soak {duration_text(promotion.soak)}")
    if evidence is None:
        return GateVerdict(False, f"{source} serves {chunk_version} in this commit; its "
                           f"{duration_text(promotion.soak)} soak is checked online")
    if evidence.serving_since is None:
        return GateVerdict(
            True, f"{source}'s database does not serve {chunk_version} yet (no reconcile of "
            f"{source} swapped to it)",
            f"run `registry reconcile --environment {source}`, then let it soak "
            f"{duration_text(promotion.soak)}")
    start = evidence.serving_since
    restarted = None
    if promotion.require_healthy:
        critical = [(at, alerts) for at, alerts in evidence.reports if alerts and at >= start]
        if critical:
            restarted = critical[-1]
            start = restarted[0]
    soaked = now - start
    if soaked < promotion.soak:
        remain = promotion.soak - soaked
        why = (f"a critical health report at {rfc3339(start)} ({restarted[1][0]}) restarted "
               "its soak" if restarted else f"served since {rfc3339(start)}")
        return GateVerdict(
            True, f"{chunk_version} has soaked in {source} for {span_text(soaked)} of "
            f"{duration_text(promotion.soak)} ({why}): {span_text(remain)} remain",
            f"promote it after {rfc3339(start + promotion.soak)}")
    passing = [at for at, alerts in evidence.reports
               if not alerts and (at > start if restarted else at >= start)]
    if promotion.require_healthy and not passing:
        return GateVerdict(
            True, f"{chunk_version} has no passing health report in {source} since "
            f"{rfc3339(start)} (promotion.require_healthy)",
            f"run `registry health --environment {source}`, then promote")
    return GateVerdict(False, f"{chunk_version} soaked in {source} for {span_text(soaked)} "
                       f"(>= {duration_text(promotion.soak)}) with passing health reports"
                       if promotion.require_healthy else
                       f"{chunk_version} soaked in {source} for {span_text(soaked)}")


def span_text(delta: timedelta) -> str:
    """`20h 50m`, `3m 10s`: how long, for a person."""
    seconds = max(int(delta.total_seconds()), 0)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{days}d"] if days else []
    if hours:
        parts.append(f"{hours}h")
    if minutes and not days:
        parts.append(f"{minutes}m")
    if not (days or hours):
        parts.append(f"{secs}s")
    return " ".join(parts[:2])


def soak_evidence(
    conn: psycopg.Connection[Any], chunk_version: str, source: ProductionConfig
) -> SoakEvidence:
    """What the source environment's database (`conn`) recorded about `chunk_version`: its
    production row and its health reports of that very table since it became production, both
    keyed by the source environment's identity."""
    if not bookkeeping.exists(conn, "managed_tables"):
        return SoakEvidence(None)
    table = source.table_name(chunk_version)
    since = bookkeeping.serving_since(conn, chunk_version, source.schema, table,
                                      source.identities)
    if since is None:
        return SoakEvidence(None)
    qualified = f"{source.schema}.{table}"
    reports = tuple(
        (stored.at, tuple(str(a.get("message", "critical")) for a in stored.report.get("alerts", [])
                          if isinstance(a, dict) and a.get("level") == "critical"))
        for stored in bookkeeping.health_reports_between(
            conn, chunk_version, since, bookkeeping.database_now(conn), source.identities)
        if stored.report.get("table") == qualified)
    return SoakEvidence(since, reports)
