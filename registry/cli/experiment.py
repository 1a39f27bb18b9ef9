"""`registry experiment ...`: start, set-share and end an A/B experiment (pull requests, like
promote), and report its outcomes per arm."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from registry.cli.changes import _report_change
from registry.cli.completion import complete_version
from registry.cli.output import (
    DsnOpt,
    EnvironmentOpt,
    FetchOpt,
    FormatOpt,
    PrOpt,
    PushOpt,
    RefOpt,
    RepoOpt,
    emit_json,
    say,
)

experiment_app = typer.Typer(
    help="A/B experiments: a candidate locked version gets a share of the requests "
    "(docs/experiments.md).", no_args_is_help=True)

@experiment_app.command("start")
def start(
    name: Annotated[str, typer.Argument(help="The experiment's name, e.g. smaller-chunks.")],
    candidate: Annotated[str, typer.Option("--candidate", help="The locked version to test.",
                                           autocompletion=complete_version)],
    share: Annotated[float, typer.Option("--share", help="Its share of requests, in (0, 1).")],
    ends: Annotated[str, typer.Option("--ends", help="When it ends: RFC 3339 or a duration "
                                      "from now (14d).")],
    salt: Annotated[str | None, typer.Option("--salt", help="Assignment salt (default: the "
                                             "name).")] = None,
    success_rate_max_drop: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="Guardrail: stop when the "
                                   "candidate's success rate is this far below the control's.")
    ] = None,
    min_outcomes: Annotated[int, typer.Option(min=1, help="Outcomes per arm before the success "
                                              "guardrail judges.")] = 200,
    oracle_hit_rate_min: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="Guardrail: floor of the candidate's "
                                   "oracle hit rate (its latest health report).")] = None,
    filter_hit_rate_min: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="Guardrail: floor of its filter hit "
                                   "rate.")] = None,
    push: PushOpt = False,
    pr: PrOpt = False,
    repo: RepoOpt = Path("."),
    fmt: FormatOpt = "text",
    environment: EnvironmentOpt = None,
) -> None:
    """Start an experiment: branch experiment/<name>-start adding `experiment:` to
    production.yaml."""
    from registry.commands import experiment
    from registry.config import Guardrails

    rails = Guardrails(success_rate_max_drop, min_outcomes, oracle_hit_rate_min,
                       filter_hit_rate_min)
    _report_change(experiment.start(repo, name, candidate, share=share, ends=ends, salt=salt,
                                    guardrails=rails, push=push, pr=pr,
                                    environment=environment), fmt)


@experiment_app.command("set-share")
def set_share(
    share: Annotated[float, typer.Argument(help="The candidate's new share, in (0, 1).")],
    push: PushOpt = False,
    pr: PrOpt = False,
    repo: RepoOpt = Path("."),
    fmt: FormatOpt = "text",
    environment: EnvironmentOpt = None,
) -> None:
    """Change the candidate's share: branch experiment/<name>-share-<percent>."""
    from registry.commands import experiment

    _report_change(experiment.set_share(repo, share, push=push, pr=pr,
                                        environment=environment), fmt)


@experiment_app.command("end")
def end(
    reason: Annotated[str | None, typer.Option("--reason", help="Why, for the commit.")] = None,
    push: PushOpt = False,
    pr: PrOpt = False,
    repo: RepoOpt = Path("."),
    fmt: FormatOpt = "text",
    environment: EnvironmentOpt = None,
) -> None:
    """End the experiment: branch experiment/<name>-end removing `experiment:`."""
    from registry.commands import experiment

    _report_change(experiment.end(repo, reason=reason, push=push, pr=pr,
                                  environment=environment), fmt)


@experiment_app.command("report")
def report(
    name: Annotated[str | None, typer.Option("--name", help="An experiment other than the "
                                             "declared one (e.g. one that ended).")] = None,
    metric: Annotated[str, typer.Option("--metric", help="The outcome metric.")] = "success",
    repo: RepoOpt = Path("."),
    ref: RefOpt = None,
    dsn: DsnOpt = None,
    fetch: FetchOpt = True,
    fmt: FormatOpt = "text",
    environment: EnvironmentOpt = None,
) -> None:
    """Per-arm success rates with Wilson 95% intervals and the verdict of a two-proportion
    z-test (candidate vs control)."""
    from registry.commands import experiment
    from registry.quality.experiment import render_report

    result = experiment.report(repo, name=name, metric=metric, dsn=dsn, ref=ref, fetch=fetch,
                               environment=environment)
    if fmt == "json":
        emit_json(result.to_dict())
        return
    say(render_report(result))
