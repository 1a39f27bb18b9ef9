"""Quality commands: eval, health, the dashboard, and the watch after a promotion."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from registry.cli.completion import complete_version
from registry.cli.output import (
    CasesOpt,
    DsnOpt,
    EnvironmentOpt,
    FetchOpt,
    FormatOpt,
    RefOpt,
    RepoOpt,
    emit_json,
    print_table,
    say,
    until_signalled,
    usage,
)

KOpt = Annotated[int, typer.Option("--k", min=1, max=1000, help="Candidates retrieved per query "
                                   "(the retrieval snapshot).")]


TopOpt = Annotated[int, typer.Option("--top", min=1, max=1000, help="Chunks a reader gets (the "
                                     "filter hit is judged on these).")]


MatchOpt = Annotated[
    Literal["any", "all"],
    typer.Option("--match", help="any: a chunk may match any query term (BM25-like, default); "
                 "all: every term, as websearch_to_tsquery alone."),
]


RetrievalOpt = Annotated[
    Literal["bm25", "dense", "hybrid"] | None,
    typer.Option("--retrieval", help="bm25 (full-text search), dense (pgvector) or hybrid "
                 "(reciprocal rank fusion of both); default hybrid when the table has vectors, "
                 "bm25 otherwise. A comparison runs the same one on both sides."),
]


def eval_command(
    version: Annotated[
        str | None, typer.Argument(help="A chunk_version, or `production`.",
                                   autocompletion=complete_version)
    ] = None,
    cases: CasesOpt = None,
    compare: Annotated[
        str | None, typer.Option("--compare", help="Compare this shadow version ...")
    ] = None,
    against: Annotated[
        str, typer.Option("--against", help="... against this version (default: production).")
    ] = "production",
    k: KOpt = 50,
    top: TopOpt = 8,
    match: MatchOpt = "any",
    retrieval: RetrievalOpt = None,
    reader_url: Annotated[
        str | None,
        typer.Option("--reader-url", help="Reader gold usage: an OpenAI-compatible API base "
                     "(ending in /v1) whose /chat/completions answers each case from its top "
                     "chunks (default: $REGISTRY_READER_URL; token: $REGISTRY_READER_TOKEN)."),
    ] = None,
    reader_model: Annotated[
        str | None, typer.Option("--reader-model", help="The reader's model name "
                                 "(default: $REGISTRY_READER_MODEL).")
    ] = None,
    rerank_model: Annotated[
        Path | None,
        typer.Option("--rerank-model", help="An ONNX cross-encoder: the k chunks are reranked "
                     "by its scores before the filter hit is judged, and the quantiles of the "
                     "top chunks' scores are recorded (health warns when they drift)."),
    ] = None,
    rerank_tokenizer: Annotated[
        Path | None, typer.Option("--rerank-tokenizer", help="The cross-encoder's "
                                  "tokenizer.json.")
    ] = None,
    record: Annotated[
        bool, typer.Option("--record/--no-record", help="Store the result in eval_runs.")
    ] = True,
    write_baseline: Annotated[
        Path | None,
        typer.Option("--write-baseline", help="Write the measured metrics to FILE for "
                     "`registry lock --baseline-metrics FILE`."),
    ] = None,
    repo: RepoOpt = Path("."),
    ref: RefOpt = None,
    dsn: DsnOpt = None,
    fmt: FormatOpt = "text",
    environment: EnvironmentOpt = None,
) -> None:
    """Retrieval evaluation (BM25, dense or hybrid), or a shadow-vs-production comparison
    (exit 1 when the shadow regresses beyond the gates of production.yaml)."""
    from registry.commands import quality

    if cases is None:
        raise usage("--cases FILE is required")
    if compare is None and version is None:
        raise usage("name a VERSION to evaluate, or --compare SHADOW --against production")
    if compare is not None and version is not None:
        raise usage("give either VERSION or --compare, not both")
    options: dict[str, Any] = {"dsn": dsn, "ref": ref, "k": k, "top": top, "match": match,
                               "record": record, "baseline": write_baseline,
                               "environment": environment,
                               "retrieval": retrieval, "reader": (reader_url, reader_model),
                               "rerank": (rerank_model, rerank_tokenizer)}
    if compare is None:
        assert version is not None
        result = quality.evaluate(repo, version, cases, **options)
        if fmt == "json":
            emit_json(result.as_dict())
            return
        _print_metrics(f"{result.chunk_version} ({result.table}, {result.retrieval}, k={k}, "
                       f"top={top}, match={match})", result.metrics)
        if write_baseline:
            say(f"baseline metrics written to {write_baseline}")
        return
    comparison = quality.compare(repo, compare, against, cases, **options)
    if fmt == "json":
        emit_json(comparison.as_dict())
    else:
        shadow, base = comparison.shadow.metrics, comparison.baseline.metrics
        say(f"retrieval: {comparison.shadow.retrieval} on both sides")
        if comparison.shadow.note:
            say(f"note: {comparison.shadow.note}")
        print_table(["METRIC", comparison.shadow.chunk_version, comparison.baseline.chunk_version,
                "DELTA"],
                    [[name, f"{shadow[name]:.3f}", f"{base[name]:.3f}",
                 f"{comparison.deltas[name]:+.3f}"] for name in comparison.deltas])
        for line in comparison.regressions:
            say(f"regression: {line}")
        say("gate: PASSED" if comparison.passed else "gate: FAILED (reconcile will refuse to "
            "promote it unless --force)")
    if not comparison.passed:
        raise typer.Exit(1)


def _print_metrics(title: str, metrics: dict[str, float]) -> None:
    say(title)
    for name, value in metrics.items():
        shown = f"{value:.0f}" if name == "cases" else f"{value:.3f}"
        say(f"  {name:<20} {shown}")


def health(
    version: Annotated[
        str, typer.Option("--version", help="The config to check (default: production).")
    ] = "production",
    cases: CasesOpt = None,
    tokenizer_file: Annotated[
        Path | None, typer.Option(help="tokenizer.json to check the config's hash against.")
    ] = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="A tokenizer that cannot be checked is critical.")
    ] = False,
    record: Annotated[
        bool, typer.Option("--record/--no-record", help="Append the report to health_reports.")
    ] = True,
    sample: Annotated[
        int | None,
        typer.Option("--sample", min=0, help="Rows to re-tokenize and compare with their stored "
                     "counts (default 459: a 1% corruption caught with 99% probability; 0 "
                     "skips it)."),
    ] = None,
    repo: RepoOpt = Path("."),
    ref: RefOpt = None,
    dsn: DsnOpt = None,
    fmt: Annotated[
        Literal["text", "json", "markdown"], typer.Option("--format", help="Output format.")
    ] = "text",
    environment: EnvironmentOpt = None,
) -> None:
    """Health of a config and its table, computed from the rows: guardrails, prefix leakage,
    over-budget chunks, a re-tokenized sample, dedup rate, retrieval metrics, whether the view
    serves the repo's production, and alerts. Exit 0 healthy, 18 warnings, 19 critical."""
    from registry.commands import quality
    from registry.quality.health import render

    report = quality.health(repo, version, dsn=dsn, ref=ref, cases_file=cases,
                            tokenizer_file=tokenizer_file, strict=strict, record_report=record,
                            sample=sample, environment=environment)
    sys.stdout.write(render(report, fmt))
    if report.exit_code:
        raise typer.Exit(report.exit_code)


def dashboard(
    out: Annotated[Path, typer.Option("--out", help="Directory to write index.html into.")],
    serve: Annotated[
        bool, typer.Option("--serve", help="Then serve it on 127.0.0.1 until interrupted.")
    ] = False,
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, help="Port for --serve (0: any free one).")
    ] = 8000,
    days: Annotated[int, typer.Option("--days", min=1, help="Days of history to draw.")] = 90,
    repo: RepoOpt = Path("."),
    ref: RefOpt = None,
    dsn: DsnOpt = None,
    fetch: FetchOpt = True,
    fmt: FormatOpt = "text",
    environment: EnvironmentOpt = None,
) -> None:
    """A static health dashboard: alerts, configs, and per config the metrics over time with
    their target bands and the promotions, rollbacks and reconciles that touched it."""
    from registry.commands import quality
    from registry.quality.dashboard import server, url_of

    result = quality.dashboard(repo, out, dsn=dsn, ref=ref, fetch=fetch, days=days,
                               environment=environment)
    if fmt == "json":
        emit_json(result.to_dict())
    else:
        say(f"Wrote {result.path} ({result.bytes / 1e6:.1f} MB): {result.configs} configs, "
            f"{result.reports} health reports, {result.markers} events, {result.alerts} "
            "current alerts")
    if not serve:
        return
    http = server(out, port)
    with http:
        sys.stderr.write(f"Serving {url_of(http)} (Ctrl-C stops)\n")
        sys.stderr.flush()
        with contextlib.suppress(KeyboardInterrupt):
            http.serve_forever()


def watch_promotion(
    follow: Annotated[
        bool, typer.Option("--follow", help="Keep checking every --interval until stopped.")
    ] = False,
    interval: Annotated[
        float, typer.Option("--interval", min=1.0, help="Seconds between checks with --follow.")
    ] = 300.0,
    cases: Annotated[
        Path | None,
        typer.Option("--cases", help="Record a fresh health report (an eval on these cases) "
                     "before each check."),
    ] = None,
    tokenizer_file: Annotated[
        Path | None, typer.Option(help="With --cases: tokenizer.json for the health check.")
    ] = None,
    repo: RepoOpt = Path("."),
    ref: RefOpt = None,
    dsn: DsnOpt = None,
    fetch: FetchOpt = True,
    fmt: FormatOpt = "text",
    environment: EnvironmentOpt = None,
) -> None:
    """Within the monitoring window after a promotion, compare each health report with the
    config's baseline and the previous production; on a critical alert or a regression beyond
    the gates, open a rollback pull request (once per promotion). Exit 1 while it regressed."""
    from registry.commands import quality

    options: dict[str, Any] = {"dsn": dsn, "ref": ref, "fetch": fetch, "cases_file": cases,
                               "tokenizer_file": tokenizer_file, "environment": environment}
    if follow:
        _follow_promotions(repo, interval, options)
        return
    result = quality.check_promotion(repo, **options)
    if fmt == "json":
        emit_json(result.to_dict())
    else:
        _print_watch(result)
    if result.exit_code:
        raise typer.Exit(result.exit_code)


def _print_watch(result: Any) -> None:
    promotion = result.promotion
    if promotion is not None:
        say(f"Promotion of {promotion.chunk_version} from {promotion.previous or 'nothing'} "
            f"(commit {promotion.commit[:10]}), served since "
            f"{promotion.to_dict()['promoted_at']}, watched until "
            f"{promotion.to_dict()['window_ends']}: {len(result.reports)} health report(s)")
    for regression in result.regressions:
        say(f"  regression in report #{regression.report}: {regression.message}")
    say(f"{result.outcome}: {result.message}")
    experiment = result.experiment
    if experiment is not None and experiment.outcome not in ("no-experiment",):
        for breach in experiment.breaches:
            say(f"  guardrail broken: {breach}")
        say(f"experiment {experiment.outcome}: {experiment.message}")


def _follow_promotions(repo: Path, interval: float, options: dict[str, Any]) -> None:
    """Check until SIGINT/SIGTERM; a log line whenever the verdict changes."""
    from registry.commands import quality

    log, stop = until_signalled("registry.quality.promotion_watch")
    last: dict[str, Any] = {}

    def on_result(result: Any) -> None:
        verdict = (result.outcome, len(result.regressions), result.message)
        if verdict != last.get("verdict"):
            last["verdict"] = verdict
            for regression in result.regressions:
                log.warning("regression in report #%s: %s", regression.report,
                            regression.message)
            log.info("%s: %s", result.outcome, result.message)

    log.info("watching promotions every %gs", interval)
    checks = quality.follow_promotions(repo, stop=stop, interval=interval, on_result=on_result,
                                       **options)
    log.info("stopped after %d checks", checks)
