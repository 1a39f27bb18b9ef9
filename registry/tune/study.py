"""`registry tune`: Optuna's TPE sampler over the chunking parameters, every trial built in a
scratch schema from one shared tokenization and evaluated with the gate's retrieval.

Objectives (`--objectives`, default all four): oracle and filter hit rates (maximized), the
trial table's size on disk with its indexes (`index_bytes`, minimized) and the median query
latency (`p50_latency_ms`, minimized); `rows` and `p95_latency_ms` may be chosen too. With more
than one objective the study is multi-objective (TPE's MOTPE) and the result is a Pareto front;
`--prefer METRIC` picks one trial of it (best on METRIC, ties broken by the objectives in
order).

Hopeless trials are cut after a first stage: every trial is evaluated on a fixed subset of the
cases first (30%, at least 5; only with 10 cases or more). With one objective, the subset's
value is reported to Optuna (`trial.report`) and the median pruner decides (`should_prune`:
below the median of earlier trials at that stage). Optuna has no pruner for several
objectives, so the rule is ours: a trial is cut when an earlier complete trial beat it on the
subset by a clear margin on every hit rate being optimized (max(0.10, two cases)) and was at
least as good on every other objective measured so far (size, rows: exact before any query;
latency: the subset's median). Such a trial is dominated on what was measured, so it could
only reach the front by gaining back a margin on the remaining cases. Pruned trials are told
to the sampler as PRUNED, and recorded with their subset metrics.

Two configs whose rows have the same texts (a Jaccard threshold that removes nothing more, two
overlap ratios that round to the same tokens) retrieve alike: the second is not built again, it
takes the first one's metrics and is marked `identical_to`, and stays off the front.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, Protocol

import psycopg
from psycopg import sql

from registry import faults
from registry.config import LockedConfig
from registry.database import bookkeeping
from registry.database.chunk_table import (
    EMBEDDING_COLUMN,
    ROW_COLUMNS,
    VECTOR_EXTENSION,
    ChunkTable,
    VectorColumn,
)
from registry.database.connection import connect, database_error
from registry.embedding.base import Embedder
from registry.embedding.spec import EmbedderSpec
from registry.errors import Refused, UsageError
from registry.extras import require
from registry.ingest.pipeline import DedupMode
from registry.ingest.vectors import PassageEmbedder
from registry.quality import retrieval as retrieval_modes
from registry.quality.evaluation import (
    DEFAULT_K,
    DEFAULT_TOP,
    Case,
    EvalResult,
    MatchMode,
    evaluate_table,
)
from registry.tune.corpus import TokenizedCorpus, TrialRows
from registry.tune.scratch import ScratchSchema, Sweep, run_is_alive, sweep
from registry.tune.space import RATIO_DECIMALS, SearchSpace

if TYPE_CHECKING:
    import optuna

Direction = Literal["maximize", "minimize"]
OBJECTIVES: dict[str, Direction] = {
    "oracle_hit_rate": "maximize",
    "filter_hit_rate": "maximize",
    "index_bytes": "minimize",
    "rows": "minimize",
    "p50_latency_ms": "minimize",
    "p95_latency_ms": "minimize",
}
"""Every metric a study may optimize, and its direction."""
DEFAULT_OBJECTIVES = ("oracle_hit_rate", "filter_hit_rate", "index_bytes", "p50_latency_ms")
HIT_RATES = ("oracle_hit_rate", "filter_hit_rate")
EXACT_BEFORE_QUERIES = ("index_bytes", "rows")
SUBSET_SHARE = 0.3
MIN_SUBSET = 5
MIN_CASES_TO_STAGE = 10
PRUNE_MARGIN = 0.10
PARAMETERS = ("chunk_size", "overlap_ratio", "jaccard_threshold", "prefix_policy")


@dataclass(frozen=True)
class TuneSettings:
    """How a study runs (everything but the space, the corpus and the cases)."""

    trials: int = 30
    timeout: float | None = None
    seed: int | None = None
    objectives: tuple[str, ...] = DEFAULT_OBJECTIVES
    prefer: str = "oracle_hit_rate"
    dedup: DedupMode = "document"
    k: int = DEFAULT_K
    top: int = DEFAULT_TOP
    match: MatchMode = "any"

    def check(self) -> None:
        """Refuse settings no study can run as a usage error (exit 2), before any work."""
        if not self.objectives:
            raise UsageError("--objectives names no metric",
                             fix=f"choose among {', '.join(OBJECTIVES)}")
        unknown = [o for o in self.objectives if o not in OBJECTIVES]
        if unknown:
            raise UsageError(f"--objectives {','.join(self.objectives)}: unknown "
                             f"{', '.join(unknown)}", fix=f"choose among {', '.join(OBJECTIVES)}")
        if len(set(self.objectives)) != len(self.objectives):
            raise UsageError("--objectives names a metric twice")
        if self.prefer not in self.objectives:
            raise UsageError(f"--prefer {self.prefer} is not one of the objectives "
                             f"({', '.join(self.objectives)})",
                             fix="prefer one of the objectives, or add it to --objectives")
        if self.trials < 1:
            raise UsageError(f"--trials {self.trials} must be at least 1")
        if self.timeout is not None and not (math.isfinite(self.timeout) and self.timeout >= 0):
            raise UsageError(f"--timeout {self.timeout:g} is not a number of seconds",
                             fix="give a finite number of seconds, or leave --timeout out")
        if not 1 <= self.top <= self.k:
            raise UsageError(f"--top {self.top} must be between 1 and --k {self.k}")


@dataclass
class TrialOutcome:
    """One trial: its parameters, state, metrics and where its time went."""

    number: int
    params: dict[str, Any]
    state: str = "complete"
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        p = self.params
        return (f"{p['chunk_size']}/{p['overlap_ratio']:.2f}/J={p['jaccard_threshold']:g}/"
                f"prefix-{p['prefix_policy']}")

    def to_dict(self) -> dict[str, Any]:
        return {"number": self.number, "state": self.state, "params": self.params,
                "label": self.label, "metrics": self.metrics, "seconds": round(self.seconds, 4),
                "details": self.details}


@dataclass
class TuneResult:
    """What a run did: the corpus, the trials, the front and the chosen trial."""

    run_id: int
    scratch_schema: str
    space: SearchSpace
    settings: TuneSettings
    documents: int
    tokens: int
    skipped: int
    encode_seconds: float
    cases: int
    subset: int
    notes: list[str] = field(default_factory=list)
    swept: list[str] = field(default_factory=list)
    sweep_kept: list[str] = field(default_factory=list)
    interrupted_runs: list[int] = field(default_factory=list)
    trials: list[TrialOutcome] = field(default_factory=list)
    pareto: list[int] = field(default_factory=list)
    best: TrialOutcome | None = None
    seconds: float = 0.0
    locked: dict[str, Any] | None = None
    lock_command: list[str] | None = None
    """`registry lock` argv that locks the chosen trial with every pin of the base (None:
    it cannot be written as options; `--lock-best` can still lock it)."""

    def front(self) -> list[TrialOutcome]:
        by_number = {t.number: t for t in self.trials}
        return [by_number[n] for n in self.pareto]

    def timing(self) -> dict[str, float]:
        """The first trial's build (with the one tokenization) against the median build of
        the later ones: what sharing the tokenization saves."""
        built = [t for t in self.trials if "build_s" in t.details]
        if not built:
            return {}
        first = self.encode_seconds + built[0].details["build_s"]
        later = sorted(t.details["build_s"] for t in built[1:])
        timing = {"encode_s": round(self.encode_seconds, 4), "first_build_s": round(first, 4)}
        if later:
            timing["later_build_median_s"] = round(later[len(later) // 2], 4)
        return timing

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "scratch_schema": self.scratch_schema,
            "space": self.space.to_dict(), "objectives": list(self.settings.objectives),
            "prefer": self.settings.prefer, "documents": self.documents, "tokens": self.tokens,
            "skipped_documents": self.skipped, "cases": self.cases, "subset_cases": self.subset,
            "notes": self.notes, "swept": self.swept, "sweep_kept": self.sweep_kept,
            "interrupted_runs": self.interrupted_runs,
            "trials": [t.to_dict() for t in self.trials],
            "pareto": [t.to_dict() for t in self.front()],
            "best": self.best.to_dict() if self.best else None,
            "seconds": round(self.seconds, 3), "timing": self.timing(), "locked": self.locked,
            "lock_command": self.lock_command,
        }


class TrialRetrieval(Protocol):
    """How a trial table is evaluated: the gate's retrieval."""

    def evaluate(self, conn: psycopg.Connection[Any], target: ChunkTable,
                 cases: Sequence[Case]) -> EvalResult: ...


@dataclass(frozen=True)
class Bm25Retrieval:
    """The gate's retrieval (`evaluation.evaluate_table`: full-text search ranked by
    ts_rank_cd, `--match any` by default), with the gate's k and top."""

    k: int = DEFAULT_K
    top: int = DEFAULT_TOP
    match: MatchMode = "any"

    def evaluate(self, conn: psycopg.Connection[Any], target: ChunkTable,
                 cases: Sequence[Case]) -> EvalResult:
        return evaluate_table(conn, target, cases, k=self.k, top=self.top, match=self.match)


@dataclass(frozen=True)
class HybridRetrieval:
    """The gate's retrieval for a table with vectors (`retrieval.plan` with no mode asked for:
    hybrid, reciprocal rank fusion of BM25 and the HNSW nearest neighbours), each query
    embedded with the pin's query prefix. `passages` embeds the trial rows' embedding_texts
    through the content-addressed cache, so a text any earlier trial or ingest embedded with
    the same pin is read, not computed."""

    embedder: Embedder
    spec: EmbedderSpec
    k: int = DEFAULT_K
    top: int = DEFAULT_TOP
    match: MatchMode = "any"

    def evaluate(self, conn: psycopg.Connection[Any], target: ChunkTable,
                 cases: Sequence[Case]) -> EvalResult:
        chosen = retrieval_modes.plan(conn, target, None)
        return evaluate_table(conn, target, cases, k=self.k, top=self.top, match=self.match,
                              plan=chosen, embedder=self.embedder)

    def passages(self, conn: psycopg.Connection[Any]) -> PassageEmbedder:
        return PassageEmbedder(self.embedder, conn, self.spec)


def retrieval_for(base: LockedConfig, settings: TuneSettings,
                  embedder: Embedder | None = None) -> TrialRetrieval:
    """The retrieval the gate uses for tables of configs like `base`: hybrid when it pins an
    embedder (`embedder`, else the pin's loaded as ingest loads it, fingerprint checked),
    BM25 else."""
    if base.embedder is None:
        return Bm25Retrieval(settings.k, settings.top, settings.match)
    if embedder is None:
        from registry.ingest.pipeline import locked_embedder

        embedder, _ = locked_embedder(base, None)
    assert embedder is not None
    return HybridRetrieval(embedder, base.embedder, settings.k, settings.top, settings.match)


def vector_column(conn: psycopg.Connection[Any], spec: EmbedderSpec) -> VectorColumn:
    """The trial tables' embedding column: pgvector created in this database if it is not yet
    and this role may (as `registry reconcile` does), refused in one line otherwise."""
    from registry.reconciler.actual import read_vector_support

    support = read_vector_support(conn)
    if support.type_schema is None:
        if not support.usable:
            message, fix = support.refusal()
            raise Refused(f"registry tune: {message}", fix=fix)
        conn.execute(sql.SQL("CREATE EXTENSION IF NOT EXISTS {}").format(
            sql.Identifier(VECTOR_EXTENSION)))
        support = read_vector_support(conn)
    assert support.type_schema is not None
    return VectorColumn(spec.dimension, spec.normalize, support.type_schema)


# ---------------------------------------------------------------------------------------------
# The run


def trial_config(base: LockedConfig, params: dict[str, Any], run_id: int,
                 number: int) -> LockedConfig:
    """`base` (embedder, tokenizer) with the trial's chunking parameters."""
    return replace(base, chunk_version=f"tune-{run_id}-{number}", chunk_size=params["chunk_size"],
                   overlap_ratio=params["overlap_ratio"],
                   jaccard_threshold=params["jaccard_threshold"],
                   prefix_policy=params["prefix_policy"], baseline_metrics={},
                   description=None)


def suggest(trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
    """The trial's parameters; a range of one value is fixed, not sampled."""
    step = 10 ** -RATIO_DECIMALS

    def ratio(name: str, bounds: tuple[float, float]) -> float:
        if bounds[0] == bounds[1]:
            return bounds[0]
        return round(trial.suggest_float(name, bounds[0], bounds[1], step=step), RATIO_DECIMALS)

    low, high = space.chunk_size
    return {
        "chunk_size": low if low == high else trial.suggest_int("chunk_size", low, high),
        "overlap_ratio": ratio("overlap_ratio", space.overlap_ratio),
        "jaccard_threshold": ratio("jaccard_threshold", space.jaccard_threshold),
        "prefix_policy": space.prefix_policies[0] if len(space.prefix_policies) == 1
        else trial.suggest_categorical("prefix_policy", list(space.prefix_policies)),
    }


def dominates(a: dict[str, float], b: dict[str, float], objectives: Sequence[str]) -> bool:
    """Whether `a` is at least as good as `b` on every objective and better on one."""
    better = False
    for name in objectives:
        sign = 1 if OBJECTIVES[name] == "maximize" else -1
        if sign * (a[name] - b[name]) < 0:
            return False
        better = better or sign * (a[name] - b[name]) > 0
    return better


def pareto_front(trials: Sequence[TrialOutcome], objectives: Sequence[str]) -> list[int]:
    """Numbers of the complete trials no other complete trial dominates (twins excluded)."""
    candidates = [t for t in trials if t.state == "complete" and "identical_to" not in t.details]
    return [t.number for t in candidates
            if not any(dominates(o.metrics, t.metrics, objectives) for o in candidates)]


def choose(front: Sequence[TrialOutcome], settings: TuneSettings) -> TrialOutcome | None:
    """The trial of the front that is best on `prefer`, ties broken by the objectives in
    order, then by the earlier trial."""
    if not front:
        return None

    def key(trial: TrialOutcome) -> tuple[float, ...]:
        names = [settings.prefer, *(o for o in settings.objectives if o != settings.prefer)]
        return (*(-trial.metrics[n] if OBJECTIVES[n] == "maximize" else trial.metrics[n]
                  for n in names), trial.number)

    return min(front, key=key)


def staged(cases: Sequence[Case], seed: int | None) -> tuple[list[Case], list[Case]]:
    """(first stage, the rest): a fixed random subset of the cases, the same for every trial."""
    if len(cases) < MIN_CASES_TO_STAGE:
        return list(cases), []
    order = list(cases)
    random.Random(seed or 0).shuffle(order)
    size = max(MIN_SUBSET, math.ceil(len(order) * SUBSET_SHARE))
    return order[:size], order[size:]


def hopeless(subset: dict[str, float], done: Sequence[TrialOutcome], objectives: Sequence[str],
             margin: float) -> TrialOutcome | None:
    """The earlier complete trial that beat this one on the subset by `margin` on every hit
    rate optimized and matched it on every other objective measured so far; None if none."""
    hits = [o for o in objectives if o in HIT_RATES]
    if not hits:
        return None
    for other in done:
        seen = other.details.get("subset_metrics")
        if other.state != "complete" or not seen:
            continue
        if not all(seen[h] >= subset[h] + margin for h in hits):
            continue
        rest = [o for o in objectives if o not in HIT_RATES]
        if all((seen[o] <= subset[o]) for o in rest):
            return other
    return None


def _stage_metrics(result: EvalResult, rows: TrialRows, index_bytes: int) -> dict[str, float]:
    metrics = result.metrics
    return {
        "oracle_hit_rate": metrics["oracle_hit_rate"],
        "filter_hit_rate": metrics["filter_hit_rate"],
        "avg_snapshot_size": metrics["avg_snapshot_size"],
        "p50_latency_ms": metrics["p50_latency_ms"],
        "p95_latency_ms": metrics["p95_latency_ms"],
        "rows": rows.chunks,
        "index_bytes": index_bytes,
        "text_bytes": rows.text_bytes,
        "duplicates_removed": rows.duplicates_removed,
    }


class TsvCache:
    """`to_tsvector('english', bm25_text)` of every distinct text a run has loaded, as the
    server prints it: most chunks of one config recur in the next (a section shorter than both
    chunk sizes is the same chunk; 78-95% of the demo corpus's texts between sizes 250 and
    478), so the server stems each text once per run and later trials COPY the stored value,
    which the server only parses. The values are the server's own, so retrieval is the
    generated column's."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}
        self.computed = 0

    def fill(self, conn: psycopg.Connection[Any], texts: Sequence[str]) -> None:
        missing = list(dict.fromkeys(t for t in texts if t not in self.values))
        if not missing:
            return
        rows = conn.execute(
            "SELECT to_tsvector('english', t)::text FROM unnest(%s::text[]) WITH ORDINALITY "
            "AS u(t, n) ORDER BY n", (missing,)).fetchall()
        self.values.update(zip(missing, (r[0] for r in rows), strict=True))
        self.computed += len(missing)


def _load(conn: psycopg.Connection[Any], target: ChunkTable, rows: TrialRows,
          tsv: TsvCache, vectors: Sequence[str] | None = None) -> None:
    """COPY the trial's rows, bm25_tsv from the run's cache (the texts it lacks computed by the
    server first), and with `vectors` each row's embedding (pgvector's text form)."""
    tsv.fill(conn, [row[4] for row in rows.rows])
    columns = [*ROW_COLUMNS, "bm25_tsv", *([EMBEDDING_COLUMN] if vectors is not None else [])]
    copy_sql = sql.SQL("COPY {} ({}) FROM STDIN").format(
        target.identifier, sql.SQL(", ").join(map(sql.Identifier, columns)))
    values = tsv.values
    with conn.cursor() as cursor, cursor.copy(copy_sql) as copy:
        for n, row in enumerate(rows.rows):
            extra = (vectors[n],) if vectors is not None else ()
            copy.write_row((*row, values[row[4]], *extra))


def _embed(conn: psycopg.Connection[Any], evaluation: HybridRetrieval, rows: TrialRows,
           outcome: TrialOutcome) -> list[str]:
    """The rows' passage vectors, through the embedding cache (its writes committed before
    the trial's table, so a later trial reuses them even if this one fails); computed vs
    reused and the seconds recorded in the trial's details."""
    passages = evaluation.passages(conn)
    vectors = passages.vectors([row[3] for row in rows.rows])
    counts = passages.counts
    outcome.details.update({"vectors_computed": counts.computed,
                            "vectors_reused": counts.reused,
                            "embed_s": round(counts.stage_seconds, 4),
                            "model_s": round(counts.model_seconds, 4)})
    return [retrieval_modes.vector_literal(vector.tolist()) for vector in vectors]


def _size(conn: psycopg.Connection[Any], target: ChunkTable) -> int:
    row = conn.execute("SELECT pg_total_relation_size(format('%%I.%%I', %s::text, "
                       "%s::text)::regclass)", (target.schema, target.table)).fetchone()
    return int(row[0]) if row else 0


def _study(settings: TuneSettings, trials: int) -> optuna.Study:
    require("optuna", "registry tune")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # multivariate TPE is marked experimental
        sampler = optuna.samplers.TPESampler(
            seed=settings.seed, multivariate=True,
            n_startup_trials=max(3, min(10, trials // 3)))
    single = len(settings.objectives) == 1
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0) if single
              else optuna.pruners.NopPruner())
    return optuna.create_study(directions=[OBJECTIVES[o] for o in settings.objectives],
                               sampler=sampler, pruner=pruner)


def run_tune(
    dsn: str,
    base: LockedConfig,
    corpus: TokenizedCorpus,
    cases: Sequence[Case],
    space: SearchSpace,
    settings: TuneSettings,
    *,
    source: str,
    cases_file: str,
    registry: str,
    notes: Sequence[str] = (),
    embedder: Embedder | None = None,
    on_start: Callable[[TuneResult], None] | None = None,
    on_trial: Callable[[TrialOutcome], None] | None = None,
    on_trial_loaded: Callable[[int], None] | None = None,
) -> TuneResult:
    """Sweep what dead runs left, then run the study in a fresh scratch schema, dropped
    whatever happens; every trial and the outcome recorded in the bookkeeping schema.
    `embedder`: the base's pinned embedder, already loaded and verified (else loaded here)."""
    settings.check()
    study = _study(settings, settings.trials)
    from optuna.trial import TrialState

    evaluation = retrieval_for(base, settings, embedder)
    first, rest = staged(cases, settings.seed)
    margin = max(PRUNE_MARGIN, 2 / len(first)) if rest else 0.0
    conn = connect(dsn, purpose="tune")
    try:
        bookkeeping.ensure_schema(conn)
        interrupted = [run_id for run_id, token in bookkeeping.running_tune_runs(conn)
                       if not run_is_alive(conn, token)]
        for run_id in interrupted:
            bookkeeping.mark_tune_run_interrupted(conn, run_id)
        swept: Sweep = sweep(conn)
        token = uuid.uuid4().hex[:12]
        scratch = ScratchSchema.create(conn, token)
        try:
            if isinstance(evaluation, HybridRetrieval):
                scratch.vector = vector_column(conn, evaluation.spec)
                conn.execute("SELECT set_config('search_path', %s, false)",
                             (sql.SQL(", ").join(map(sql.Identifier, dict.fromkeys(
                                 (scratch.name, scratch.vector.type_schema)))).as_string(conn),))
            run_id = bookkeeping.start_tune_run(
                conn, token, registry=registry, source=source, cases_file=cases_file,
                cases=len(cases),
                base_version=base.chunk_version, space=space.to_dict(),
                objectives=settings.objectives, prefer=settings.prefer,
                scratch_schema=scratch.name,
                details={"trials": settings.trials, "seed": settings.seed,
                         "dedup": settings.dedup, "k": settings.k, "top": settings.top,
                         "match": settings.match, "documents": len(corpus.documents),
                         "tokens": corpus.tokens, "notes": list(notes)})
            result = TuneResult(run_id, scratch.name, space, settings, len(corpus.documents),
                                corpus.tokens, len(corpus.problems), corpus.encode_seconds,
                                len(cases), len(first) if rest else len(cases), list(notes),
                                swept.removed, swept.kept, interrupted)
            if on_start is not None:
                on_start(result)
            started = time.monotonic()
            try:
                _trials(conn, study, TrialState, scratch, evaluation, base, corpus, first, rest,
                        margin, settings, result, on_trial, on_trial_loaded, started)
            except BaseException as err:
                status = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
                reason = str(err).splitlines()[0][:500] if str(err) else type(err).__name__
                with contextlib.suppress(psycopg.Error):
                    bookkeeping.finish_tune_run(conn, run_id, status, error=reason)
                raise
            result.seconds = time.monotonic() - started
            result.pareto = pareto_front(result.trials, settings.objectives)
            result.best = choose(result.front(), settings)
            bookkeeping.finish_tune_run(
                conn, run_id, "succeeded", best_trial=result.best.number if result.best else None,
                pareto=result.pareto, details={"timing": result.timing(),
                                               "seconds": round(result.seconds, 3)})
            return result
        finally:
            with contextlib.suppress(psycopg.Error):
                scratch.drop()
    except psycopg.Error as err:
        raise database_error(err, dsn, "tuning") from None
    finally:
        conn.close()


def _trials(conn: psycopg.Connection[Any], study: optuna.Study, states: Any,
            scratch: ScratchSchema, retrieval: TrialRetrieval, base: LockedConfig,
            corpus: TokenizedCorpus, first: list[Case], rest: list[Case], margin: float,
            settings: TuneSettings, result: TuneResult,
            on_trial: Callable[[TrialOutcome], None] | None,
            on_trial_loaded: Callable[[int], None] | None, started: float) -> None:
    by_digest: dict[str, TrialOutcome] = {}
    tsv = TsvCache()
    single = len(settings.objectives) == 1
    for number in range(settings.trials):
        if settings.timeout is not None and time.monotonic() - started >= settings.timeout:
            result.notes.append(f"--timeout {settings.timeout:g} s reached after {number} trials")
            break
        trial = study.ask()
        params = suggest(trial, space=result.space)
        clock = time.perf_counter()
        config = trial_config(base, params, result.run_id, number)
        rows = corpus.rows(config, dedup=settings.dedup)
        outcome = TrialOutcome(number, params, details={"rewindow_s": round(rows.seconds, 4)})
        twin = by_digest.get(rows.digest)
        if twin is not None:
            outcome.metrics = dict(twin.metrics)
            outcome.state = twin.state
            outcome.details["identical_to"] = twin.number
        elif not rows.rows:
            outcome.state = "failed"
            outcome.details["reason"] = "no chunk of at least the minimum size"
        else:
            _build_and_measure(conn, scratch, retrieval, config, rows, tsv, number, first,
                               rest, margin, settings, result, trial, single, outcome,
                               on_trial_loaded)
            by_digest[rows.digest] = outcome
        outcome.seconds = time.perf_counter() - clock
        if outcome.state == "complete":
            study.tell(trial, [outcome.metrics[o] for o in settings.objectives])
        else:
            study.tell(trial, state=states.PRUNED if outcome.state == "pruned"
                       else states.FAIL)
        bookkeeping.record_tune_trial(conn, result.run_id, number, state=outcome.state,
                                      params=params, metrics=outcome.metrics,
                                      seconds=outcome.seconds, details=outcome.details)
        result.trials.append(outcome)
        if on_trial is not None:
            on_trial(outcome)


def _build_and_measure(conn: psycopg.Connection[Any], scratch: ScratchSchema,
                       retrieval: TrialRetrieval, config: LockedConfig, rows: TrialRows,
                       tsv: TsvCache, number: int, first: list[Case], rest: list[Case],
                       margin: float, settings: TuneSettings, result: TuneResult,
                       trial: optuna.Trial, single: bool, outcome: TrialOutcome,
                       on_trial_loaded: Callable[[int], None] | None) -> None:
    """Load the trial's rows into its scratch table, evaluate in two stages (pruning after the
    first), and drop the table."""
    vectors = _embed(conn, retrieval, rows, outcome) \
        if isinstance(retrieval, HybridRetrieval) else None
    clock = time.perf_counter()
    try:
        with conn.transaction():  # one commit for the table, its rows and its indexes
            scratch.no_flush()
            target = scratch.create_table(config, number)
            _load(conn, target, rows, tsv, vectors)
            scratch.index(target)
        index_bytes = _size(conn, target)
        outcome.details["load_s"] = round(time.perf_counter() - clock, 4)
        outcome.details["build_s"] = round(rows.seconds + outcome.details.get("embed_s", 0.0)
                                           + time.perf_counter() - clock, 4)
        faults.point("tune", "trial", "loaded")
        if on_trial_loaded is not None:
            on_trial_loaded(number)
        clock = time.perf_counter()
        early = retrieval.evaluate(conn, target, first)
        outcome.details["retrieval"] = early.retrieval
        subset = _stage_metrics(early, rows, index_bytes)
        if rest:
            outcome.details["subset_metrics"] = subset
            if single and settings.objectives[0] in subset:
                trial.report(subset[settings.objectives[0]], step=0)
                if trial.should_prune():
                    outcome.state = "pruned"
                    outcome.details["pruned"] = "below the median of earlier trials on the subset"
            elif not single:
                done = [t for t in result.trials if t.state == "complete"]
                beaten_by = hopeless(subset, done, settings.objectives, margin)
                if beaten_by is not None:
                    outcome.state = "pruned"
                    outcome.details["pruned"] = (f"dominated on the first {len(first)} cases by "
                                                 f"trial {beaten_by.number}")
        if outcome.state == "pruned":
            outcome.metrics = subset
        else:
            full = early
            if rest:
                later = retrieval.evaluate(conn, target, rest)
                full = EvalResult(early.chunk_version, early.table, early.k, early.top,
                                  early.match, early.cases + later.cases)
            outcome.metrics = _stage_metrics(full, rows, index_bytes)
        outcome.details["eval_s"] = round(time.perf_counter() - clock, 4)
    finally:
        scratch.drop_table(scratch.table_name(number))
