"""Renderings of a plan, shared by the CLI and pull-request bodies."""

from __future__ import annotations

from typing import Literal

from registry.reconciler.planner import ACTION_ORDER, VIEW_KINDS, Plan

_SYMBOLS = dict(zip(ACTION_ORDER, "++~-x", strict=True))
"""create, unretire, swap, retire, drop"""
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
    where = "" if the_plan.environment == "production" else f", {the_plan.environment}"
    if fmt == "markdown":
        lines = [f"### chunk-registry plan for `{the_plan.ref}` ({commit}{where})", ""]
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
    lines = [f"Plan for {the_plan.ref} ({commit}{where}) against {the_plan.target}:"]
    lines += [f"  {_SYMBOLS[type(a)]} {a.describe()}" for a in the_plan.actions]
    if not the_plan.actions:
        lines.append("  no changes: the database matches the repository")
    for finding in the_plan.findings:
        prefix = {"error": "blocked", "warning": "drift" if finding.kind in (
            VIEW_KINDS | {"missing"}) else "warning", "info": "note"}[finding.severity]
        lines.append(f"  ! {prefix}: {finding.render()}")
    lines.append(f"Plan: {summary(the_plan)}.")
    return "\n".join(lines) + "\n"
