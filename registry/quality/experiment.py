"""Experiment outcomes: per-arm rates, the verdict, and the guardrail stop.

The statistics are a two-proportion z-test on the arms' success rates, with Wilson score
intervals per arm and Newcombe's hybrid score interval for the difference. Outcomes are binary
and independent per request, and experiments gather hundreds to millions of them: the normal
approximation the z-test rests on holds, it is closed-form (the same verdict on every run and in
CI, where a bootstrap's resampling would move with its seed and cost a pass over every outcome
per resample), and Wilson intervals stay inside [0, 1] and keep their coverage at small n and
rates near 0 or 1, where the textbook Wald interval does not.

The promotion watch calls `check_guardrails`: when the candidate breaks a guardrail of
production.yaml's `experiment.guardrails` (its success rate below the control's by more than
`success_rate_max_drop` once both arms have `min_outcomes`, or its latest health report under
an oracle/filter hit rate floor), it opens a pull request that ends the experiment
(`registry experiment end`'s change), once per experiment (recorded in
`chunk_registry.experiment_stops`; an open `experiment/` pull request is adopted).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import psycopg

from registry.config import PRODUCTION_ENVIRONMENT, ExperimentConfig, ProductionConfig, rfc3339
from registry.database import bookkeeping
from registry.database.bookkeeping import ExperimentStop
from registry.errors import Refused
from registry.repository.git import Git
from registry.repository.github import GitHubClient, origin_repo, propose, token_from
from registry.repository.lifecycle import describe_change, experiment_end
from registry.repository.state import RegistryState

log = logging.getLogger("registry.quality.experiment")

Z_95 = 1.959963984540054
ALPHA = 0.05
Verdict = Literal["candidate better", "candidate worse", "no significant difference", "no data"]


def wilson(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ((0, 1) with no outcomes)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def two_proportion_z(k1: int, n1: int, k2: int, n2: int) -> tuple[float, float]:
    """(z, two-sided p) of H0: p1 == p2, with the pooled standard error."""
    if n1 == 0 or n2 == 0:
        return (0.0, 1.0)
    pooled = (k1 + k2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return (0.0, 1.0)
    z = (k1 / n1 - k2 / n2) / se
    return (z, math.erfc(abs(z) / math.sqrt(2)))


def newcombe(k1: int, n1: int, k2: int, n2: int) -> tuple[float, float]:
    """Newcombe's hybrid score interval of p1 - p2 (from the two Wilson intervals)."""
    p1, p2 = (k1 / n1 if n1 else 0.0), (k2 / n2 if n2 else 0.0)
    l1, u1 = wilson(k1, n1)
    l2, u2 = wilson(k2, n2)
    d = p1 - p2
    return (d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2),
            d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2))


@dataclass(frozen=True)
class ArmStats:
    arm: str
    chunk_version: str | None
    outcomes: int
    successes: int

    @property
    def rate(self) -> float | None:
        return self.successes / self.outcomes if self.outcomes else None

    @property
    def interval(self) -> tuple[float, float]:
        return wilson(self.successes, self.outcomes)

    def to_dict(self) -> dict[str, Any]:
        low, high = self.interval
        return {**asdict(self), "rate": self.rate, "ci95": [low, high]}


@dataclass(frozen=True)
class ExperimentReport:
    """Per-arm rates of one metric, the difference (candidate - control) and the verdict."""

    experiment: str
    metric: str
    control: ArmStats
    candidate: ArmStats
    difference: float | None
    difference_ci95: tuple[float, float]
    z: float
    p_value: float
    verdict: Verdict
    method: str = "two-proportion z-test (pooled), Wilson 95% intervals, Newcombe difference CI"

    def to_dict(self) -> dict[str, Any]:
        return {"experiment": self.experiment, "metric": self.metric,
                "arms": [self.control.to_dict(), self.candidate.to_dict()],
                "difference": self.difference, "difference_ci95": list(self.difference_ci95),
                "z": self.z, "p_value": self.p_value, "alpha": ALPHA, "verdict": self.verdict,
                "method": self.method}


def judge(experiment: str, metric: str, control: ArmStats, candidate: ArmStats
          ) -> ExperimentReport:
    """The report of two arms' counts (pure: what `report` and the tests judge)."""
    kc, nc, kt, nt = candidate.successes, candidate.outcomes, control.successes, control.outcomes
    z, p = two_proportion_z(kc, nc, kt, nt)
    verdict: Verdict
    if nc == 0 or nt == 0:
        verdict = "no data"
    elif p < ALPHA:
        verdict = "candidate better" if z > 0 else "candidate worse"
    else:
        verdict = "no significant difference"
    difference = (kc / nc - kt / nt) if nc and nt else None
    return ExperimentReport(experiment, metric, control, candidate, difference,
                            newcombe(kc, nc, kt, nt), z, p, verdict)


def report(conn: psycopg.Connection[Any], settings: ProductionConfig, experiment: str,
           *, metric: str = "success") -> ExperimentReport:
    """The report of one run of `experiment` in this registry and environment: the declared
    run (its control what the environment serves now) when `experiment` is the one declared,
    else the run of its newest outcome (each arm's version that of its newest outcome).

    Outcomes of an earlier run of the name, or of a control version promoted away from, are
    not counted: they measured something else."""
    declared = settings.experiment
    ident, environment = settings.identity, settings.environment
    if declared is not None and declared.name == experiment:
        run: str | None = declared.run
        versions = {"candidate": declared.candidate}
        if settings.production is not None:
            versions["control"] = settings.production
    else:
        run = bookkeeping.newest_run(conn, ident, environment, experiment)[1]
        versions = bookkeeping.outcome_versions(conn, ident, environment, experiment, run)
    counts = bookkeeping.outcome_counts(conn, ident, environment, experiment, run, versions,
                                        metric)
    arms = [ArmStats(arm, versions.get(arm), *counts.get(arm, (0, 0)))
            for arm in ("control", "candidate")]
    return judge(experiment, metric, arms[0], arms[1])


# ---------------------------------------------------------------------------------------------
# Guardrails


@dataclass
class GuardrailResult:
    outcome: Literal["no-experiment", "ended", "within", "breached", "proposed",
                     "already-proposed"]
    message: str
    experiment: str | None = None
    breaches: list[str] = field(default_factory=list)
    report: ExperimentReport | None = None
    stop: ExperimentStop | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "message": self.message, "experiment": self.experiment,
                "breaches": self.breaches,
                "report": self.report.to_dict() if self.report else None,
                "stop": self.stop.to_dict() if self.stop else None}


def breaches(conn: psycopg.Connection[Any], settings: ProductionConfig,
             experiment: ExperimentConfig, result: ExperimentReport) -> list[str]:
    """Every guardrail of `experiment` the candidate breaks now."""
    rails = experiment.guardrails
    found = []
    control, candidate = result.control, result.candidate
    if (rails.success_rate_max_drop is not None and control.rate is not None
            and candidate.rate is not None and min(control.outcomes, candidate.outcomes)
            >= rails.min_outcomes):
        drop = control.rate - candidate.rate
        if drop > rails.success_rate_max_drop + 1e-12:
            found.append(f"{result.metric} rate {candidate.rate:.3f} of the candidate is "
                         f"{drop:.3f} below the control's {control.rate:.3f} (the guardrail "
                         f"allows {rails.success_rate_max_drop:.3f}; {candidate.outcomes} and "
                         f"{control.outcomes} outcomes, p={result.p_value:.3g})")
    floors = (("oracle_hit_rate", rails.oracle_hit_rate_min),
              ("filter_hit_rate", rails.filter_hit_rate_min))
    if any(floor is not None for _, floor in floors):
        stored = bookkeeping.last_health_report(conn, experiment.candidate, datetime.now(UTC),
                                                settings.identities)
        data = stored.report if stored is not None else {}
        for metric, floor in floors:
            value = data.get(metric) if isinstance(data, dict) else None
            if (floor is not None and isinstance(value, int | float)
                    and not isinstance(value, bool) and value < floor - 1e-12):
                assert stored is not None
                found.append(f"{metric} {value:.3f} of {experiment.candidate} (health report "
                             f"#{stored.id}) is below the guardrail's floor {floor:.3f}")
    return found


def check_guardrails(
    git: Git, state: RegistryState, conn: psycopg.Connection[Any],
    env: Mapping[str, str] | None = None, *, now: datetime | None = None,
) -> GuardrailResult:
    """Judge the declared experiment's guardrails; on a breach propose ending it, once."""
    env = os.environ if env is None else env
    settings = state.settings
    experiment = settings.experiment
    if experiment is None:
        return GuardrailResult("no-experiment", "no experiment is declared")
    moment = now or datetime.now(UTC)
    if not experiment.running(moment):
        return GuardrailResult("ended", f"experiment {experiment.name} ended at "
                               f"{rfc3339(experiment.ends)}", experiment.name)
    result = report(conn, settings, experiment.name)
    found = breaches(conn, settings, experiment, result)
    stop = bookkeeping.experiment_stop(conn, settings.identity, settings.environment,
                                       experiment.name, experiment.run)
    out = GuardrailResult("within", "", experiment.name, found, result, stop)
    if stop is not None:
        out.outcome = "already-proposed"
        out.message = (f"ending experiment {experiment.name} was proposed at "
                       f"{stop.to_dict()['proposed_at']}: {stop.url or stop.branch}")
    elif not found:
        out.message = (f"experiment {experiment.name}: the candidate is within its guardrails "
                       f"({result.verdict})")
    else:
        out.stop = _propose_stop(conn, git, state, experiment, out, env)
        out.outcome = "already-proposed" if out.stop.adopted else "proposed"
        out.message = (f"experiment {experiment.name} broke a guardrail: proposed ending it: "
                       f"{out.stop.url or out.stop.branch}")
    return out


def stop_branch(experiment: ExperimentConfig, environment: str) -> str:
    where = "" if environment == PRODUCTION_ENVIRONMENT else f"{environment}/"
    return f"experiment/{where}{experiment.name}-stop"


def _propose_stop(conn: psycopg.Connection[Any], git: Git, state: RegistryState,
                  experiment: ExperimentConfig, result: GuardrailResult,
                  env: Mapping[str, str]) -> ExperimentStop:
    settings = state.settings
    base = git.branch_of(git.desired_ref(fetch=False))
    evidence = result.to_dict()
    token = token_from(env)
    now = datetime.now(UTC)
    if token is not None:
        github = origin_repo(git)
        client = GitHubClient(github.api_url(env), token, github)
        prefix = stop_branch(experiment, settings.environment).removesuffix("stop")
        open_stops = [(head, pull) for head, pull in client.open_pulls(base)
                      if head in (f"{prefix}end", f"{prefix}stop")]
        if open_stops:
            head, pull = open_stops[0]
            return bookkeeping.record_experiment_stop(
                conn, settings.identity, settings.environment, experiment.run, ExperimentStop(
                    experiment.name, experiment.candidate, now, head, None, pull.number,
                    pull.url, adopted=True), evidence)
    branch = stop_branch(experiment, settings.environment)
    if git.resolve(f"refs/heads/{branch}"):
        git.run("branch", "-D", branch)  # left by a run interrupted before it was proposed
    reason = "The promotion watch ends it: the candidate broke a guardrail.\n\n" + "\n".join(
        f"- {text}" for text in result.breaches)
    change = experiment_end(git, reason=reason, branch=branch,
                            environment=settings.environment)
    if change.chunk_version != experiment.candidate:
        raise Refused(f"{base} declares another experiment than the one watched",
                      fix="bring it up to date with the reconciled ref, then rerun")
    git.push(f"+refs/heads/{branch}:refs/heads/{branch}")
    title, body = describe_change(git, branch, change.base)
    made = propose(git, branch, base, title, evidence_markdown(result) + "\n" + body, env)
    return bookkeeping.record_experiment_stop(
        conn, settings.identity, settings.environment, experiment.run, ExperimentStop(
            experiment.name, experiment.candidate, now, branch, change.commit, made.number,
            made.url, adopted=False), evidence)


def evidence_markdown(result: GuardrailResult) -> str:
    """Why the experiment is ended: the breaches and the per-arm table."""
    lines = [f"## Guardrail stop: experiment `{result.experiment}`", "",
             "`registry watch-promotion` found the candidate outside its guardrails:", ""]
    lines += [f"- {text}" for text in result.breaches]
    if result.report is not None:
        lines += ["", render_report(result.report, "markdown")]
    return "\n".join(lines) + "\n"


def render_report(result: ExperimentReport, fmt: Literal["text", "markdown"] = "text") -> str:
    """The per-arm table and the verdict."""
    def rate(arm: ArmStats) -> str:
        low, high = arm.interval
        shown = "–" if arm.rate is None else f"{arm.rate:.4f}"
        return f"{shown} [{low:.4f}, {high:.4f}]"

    rows = [(arm.arm, arm.chunk_version or "–", str(arm.outcomes), str(arm.successes), rate(arm))
            for arm in (result.control, result.candidate)]
    diff = "–" if result.difference is None else f"{result.difference:+.4f}"
    low, high = result.difference_ci95
    summary = (f"difference (candidate - control) {diff} [{low:+.4f}, {high:+.4f}], "
               f"z={result.z:.2f}, p={result.p_value:.3g}: {result.verdict} "
               f"(alpha {ALPHA}; {result.method})")
    if fmt == "markdown":
        table = ["| arm | version | outcomes | successes | rate [95% CI] |",
                 "|---|---|---:|---:|---|"] + ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(table) + f"\n\n{summary}"
    width = max(len(r[1]) for r in rows)
    lines = [f"experiment {result.experiment}, metric {result.metric}"]
    lines += [f"  {a:<9} {v:<{width}} {n:>9} outcomes {k:>9} successes  rate {r}"
              for a, v, n, k, r in rows]
    return "\n".join([*lines, summary])
