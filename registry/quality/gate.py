"""The promotion gate: one rule, used by `registry promote` and by the reconciler's swap.

The rule: a config that never served production may become production only if its newest
recorded comparison against production (`registry eval --compare`) passed; with
gates.require_eval a comparison must also exist, except for the first production (there is
nothing to compare against). A config that served production before (a former production, the
rollback target) is never held back: a rollback is always possible. `--force` overrides the
gate, in both commands.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from registry.database import bookkeeping
from registry.errors import Refused


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
