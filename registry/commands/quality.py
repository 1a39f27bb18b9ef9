"""Quality commands: eval (one table, or a shadow against production, and the baseline file
`lock --baseline-metrics` reads), health, watch-promotion (record a fresh health report, then
check), and the dashboard."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from registry.commands.reconcile import translated
from registry.database.connection import resolve_dsn, session
from registry.environments import environment_dsn, select
from registry.errors import UsageError
from registry.extras import require
from registry.quality import dashboard as dashboards
from registry.quality import evaluation, promotion_watch
from registry.quality import health as healths
from registry.quality.retrieval import RetrievalMode
from registry.reconciler import run
from registry.reconciler.status import status
from registry.repository.git import Git
from registry.repository.state import RegistryState, committed_state

if TYPE_CHECKING:
    from registry.quality.reader import ChatReader
    from registry.quality.rerank import CrossEncoder


def _environment_state(git: Git, ref: str | None, environment: str | None) -> RegistryState:
    """The committed state as `environment` sees it (default production)."""
    return select(committed_state(git, ref), environment)


ReaderOptions = tuple[str | None, str | None]
"""(--reader-url, --reader-model)."""


def chat_reader(options: ReaderOptions | None) -> ChatReader | None:
    """The reader when asked for (a URL or model given, or REGISTRY_READER_URL set)."""
    from registry.quality import reader  # the HTTP client needs numpy (extra `ingest`)

    url, model = options or (None, None)
    if url is None and model is None and not os.environ.get(reader.URL_ENV):
        return None
    return reader.ChatReader.from_env(url, model)


RerankOptions = tuple[Path | None, Path | None]
"""(--rerank-model, --rerank-tokenizer)."""


def cross_encoder(options: RerankOptions | None) -> CrossEncoder | None:
    """The cross-encoder when a model file is given (its tokenizer.json is required too)."""
    model, tokenizer = options or (None, None)
    if model is None and tokenizer is None:
        return None
    if model is None or tokenizer is None:
        raise UsageError("--rerank-model and --rerank-tokenizer go together",
                         fix="pass both: the cross-encoder's .onnx file and its tokenizer.json")
    from registry.quality.rerank import CrossEncoder

    return CrossEncoder(model, tokenizer)


def write_baseline(path: Path, result: evaluation.EvalResult) -> None:
    """The metrics file `registry lock --baseline-metrics FILE` reads."""
    path.write_text(json.dumps(
        {"chunk_version": result.chunk_version,
         "metrics": evaluation.baseline_metrics(result)}, indent=2) + "\n")


def evaluate(
    repo: Path | str, version: str, cases_file: Path, *, dsn: str | None = None,
    ref: str | None = None, k: int = evaluation.DEFAULT_K, top: int = evaluation.DEFAULT_TOP,
    match: evaluation.MatchMode = "any", record: bool = True, baseline: Path | None = None,
    environment: str | None = None, retrieval: RetrievalMode | None = None,
    reader: ReaderOptions | None = None, rerank: RerankOptions | None = None,
) -> evaluation.EvalResult:
    """`registry eval VERSION` (and its metrics written to `baseline`)."""
    state = _environment_state(Git(repo), ref, environment)
    reads, reranks = chat_reader(reader), cross_encoder(rerank)
    with session(resolve_dsn(environment_dsn(state, dsn)).value, purpose="eval") as conn:
        result = evaluation.run_eval(state, conn, version, cases_file, k=k, top=top,
                                     match=match, record=record, mode=retrieval, reader=reads,
                                     reranker=reranks)
    if baseline is not None:
        write_baseline(baseline, result)
    return result


def compare(
    repo: Path | str, shadow: str, against: str, cases_file: Path, *, dsn: str | None = None,
    ref: str | None = None, k: int = evaluation.DEFAULT_K, top: int = evaluation.DEFAULT_TOP,
    match: evaluation.MatchMode = "any", record: bool = True, baseline: Path | None = None,
    environment: str | None = None, retrieval: RetrievalMode | None = None,
    reader: ReaderOptions | None = None, rerank: RerankOptions | None = None,
) -> evaluation.Comparison:
    """`registry eval --compare SHADOW --against VERSION` (the shadow's metrics written to
    `baseline`)."""
    state = _environment_state(Git(repo), ref, environment)
    reads, reranks = chat_reader(reader), cross_encoder(rerank)
    with session(resolve_dsn(environment_dsn(state, dsn)).value, purpose="eval") as conn:
        comparison = evaluation.run_compare(state, conn, shadow, against, cases_file, k=k,
                                            top=top, match=match, record=record,
                                            mode=retrieval, reader=reads,
                                            reranker=reranks)
    if baseline is not None:
        write_baseline(baseline, comparison.shadow)
    return comparison


def health(
    repo: Path | str, version: str = "production", *, dsn: str | None = None,
    ref: str | None = None, cases_file: Path | None = None, tokenizer_file: Path | None = None,
    strict: bool = False, record_report: bool = True, k: int | None = None,
    top: int | None = None, sample: int | None = None, environment: str | None = None,
) -> healths.HealthReport:
    git = Git(repo)
    state = _environment_state(git, ref, environment)
    with session(resolve_dsn(environment_dsn(state, dsn)).value, purpose="health") as conn:
        return healths.run_health(git, state, conn, version, cases_file=cases_file,
                                  tokenizer_file=tokenizer_file, strict=strict,
                                  record_report=record_report, k=k, top=top, sample=sample)


def check_promotion(
    repo: Path | str, *, dsn: str | None = None, ref: str | None = None, fetch: bool = True,
    cases_file: Path | None = None, tokenizer_file: Path | None = None,
    environment: str | None = None,
) -> promotion_watch.WatchResult:
    """One watch-promotion pass: with `cases_file` a fresh health report of what the
    environment serves is recorded first, then the promotion in force is judged."""
    git = Git(repo)
    state = run.desired_state(git, ref, fetch=fetch, environment=environment)
    resolved = resolve_dsn(environment_dsn(state, dsn))
    if cases_file is not None:
        with session(resolved.value, purpose="health") as conn:
            healths.run_health(git, state, conn, cases_file=cases_file,
                               tokenizer_file=tokenizer_file)
    with session(resolved.value, purpose="watch-promotion") as conn:
        return promotion_watch.check(git, state, conn)


def follow_promotions(
    repo: Path, *, stop: threading.Event, interval: float,
    on_result: Callable[[promotion_watch.WatchResult], None], dsn: str | None = None,
    ref: str | None = None, fetch: bool = True, cases_file: Path | None = None,
    tokenizer_file: Path | None = None, environment: str | None = None,
) -> int:
    """`watch-promotion --follow`: check every `interval` seconds until `stop` is set."""
    def check_once() -> promotion_watch.WatchResult:
        return check_promotion(repo, dsn=dsn, ref=ref, fetch=fetch, cases_file=cases_file,
                               tokenizer_file=tokenizer_file, environment=environment)

    return promotion_watch.follow(check_once, stop=stop, interval=interval,
                                  on_result=on_result)


def dashboard_data(
    repo: Path | str, *, dsn: str | None = None, ref: str | None = None, fetch: bool = True,
    days: int = dashboards.DEFAULT_DAYS, now: datetime | None = None,
    environment: str | None = None,
) -> dashboards.DashboardData:
    """What the dashboard shows: the state read once, and one session for the status rows and
    the health history."""
    git = Git(repo)
    state = run.desired_state(git, ref, fetch=fetch, environment=environment)
    resolved = resolve_dsn(environment_dsn(state, dsn))
    with session(resolved.value, purpose="dashboard") as conn:
        with translated(resolved, "reading the database"):
            report = status(git, state, conn, target=resolved.redacted)
        with translated(resolved, "reading the health history"):
            name = Path(repo).resolve().name
            if state.environment != "production" or environment is not None:
                name = f"{name} ({state.environment})"
            return dashboards.collect(state, conn, report, registry=name, days=days, now=now)


def dashboard(
    repo: Path | str, out: Path, *, dsn: str | None = None, ref: str | None = None,
    fetch: bool = True, days: int = dashboards.DEFAULT_DAYS, now: datetime | None = None,
    environment: str | None = None,
) -> dashboards.DashboardResult:
    """`registry dashboard --out DIR`: DIR/index.html (plotly checked before any reading)."""
    require("plotly", "the dashboard")
    data = dashboard_data(repo, dsn=dsn, ref=ref, fetch=fetch, days=days, now=now,
                          environment=environment)
    return dashboards.build(data, out)
