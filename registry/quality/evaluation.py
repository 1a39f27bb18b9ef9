"""Retrieval evaluation: PostgreSQL full-text search over one chunk table, oracle and filter
hits per case, and the comparison of a shadow table against production that gates promotion.

Retrieval parses each query with `websearch_to_tsquery('english', q)` (quotes, `-term`, `or`)
and ranks with `ts_rank_cd`. In the default `any` match mode the query's top-level AND is
relaxed to OR (phrases and `-exclusions` kept), as BM25 retrieval does: under strict AND a
natural-language question matches a handful of chunks, so the retrieval snapshot could never
reach its 30-60 target (the flaw of the system this replaces). `--match all` keeps plain AND.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import psycopg
from psycopg import sql

from registry.database import bookkeeping
from registry.database.chunk_table import ChunkTable, chunk_table, has_rows, require_table
from registry.errors import ConfigInvalid, Refused, UsageError, storable
from registry.quality import retrieval
from registry.repository.state import RegistryState

if TYPE_CHECKING:
    from registry.embedding.base import Embedder
    from registry.embedding.spec import EmbedderSpec
    from registry.quality.reader import ChatReader
    from registry.quality.rerank import CrossEncoder

MatchMode = Literal["any", "all"]
TOKEN_RE = re.compile(r"[a-z0-9]+")
ORACLE_JACCARD = 0.28
DEFAULT_K = 50
DEFAULT_TOP = 8
MAX_CASES = 100_000


@dataclass(frozen=True)
class Case:
    query_id: str
    query: str
    gt_answer: str


def load_cases(path: Path) -> list[Case]:
    """Cases from JSONL (`{query_id, query, gt_answer}` per line) or a JSON array."""
    where = str(path)
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        raise UsageError(f"cases file {path} does not exist", fix="pass --cases FILE") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"cannot read cases file {path}: {err}",
                         fix="pass a UTF-8 JSONL file") from None
    stripped = text.lstrip()
    records: list[tuple[int, Any]] = []
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigInvalid(f"malformed JSON: {err.msg}", where=f"{where}:{err.lineno}",
                                fix="fix the JSON array of cases") from None
        records = [(1, item) for item in data]
    else:
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append((number, json.loads(line)))
            except json.JSONDecodeError as err:
                raise ConfigInvalid(f"malformed JSON line: {err.msg}", where=f"{where}:{number}",
                                    fix="one JSON object per line") from None
    cases = []
    seen: set[str] = set()
    for number, item in records:
        case = _case(item, f"{where}:{number}")
        if case.query_id in seen:
            raise ConfigInvalid(f"duplicate query_id {case.query_id!r}", where=f"{where}:{number}",
                                fix="give every case its own query_id")
        seen.add(case.query_id)
        cases.append(case)
    if not cases:
        raise ConfigInvalid("no cases", where=where, fix="add {query_id, query, gt_answer} lines")
    if len(cases) > MAX_CASES:
        raise ConfigInvalid(f"{len(cases)} cases is more than {MAX_CASES}", where=where,
                            fix="split the file")
    return cases


def _case(item: Any, where: str) -> Case:
    if not isinstance(item, dict):
        raise ConfigInvalid("a case must be a JSON object", where=where,
                            fix='write {"query_id": ..., "query": ..., "gt_answer": ...}')
    values = {}
    for key in ("query_id", "query", "gt_answer"):
        value = item.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and key == "query_id":
            value = str(value)
        if not isinstance(value, str) or not value.strip():
            raise ConfigInvalid(f"case field {key} is missing or not a non-empty string",
                                where=where, fix=f"add {key}")
        if not storable(value):
            raise ConfigInvalid(f"case field {key} holds a NUL character or an unpaired "
                                "surrogate, which PostgreSQL text cannot store", where=where,
                                fix=f"remove it from {key}")
        values[key] = value
    return Case(**values)


# ---------------------------------------------------------------------------------------------
# Hits


def tokens(text: str) -> frozenset[str]:
    return frozenset(TOKEN_RE.findall(text.lower()))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a and not b:
        return 0.0
    return len(a & b) / len(a | b)


def is_hit(chunk_text: str, gt_answer: str) -> bool:
    """A chunk answers the case: it contains gt_answer (case-insensitively), or its word set
    has Jaccard >= 0.28 with gt_answer's."""
    if gt_answer.lower() in chunk_text.lower():
        return True
    return jaccard(tokens(chunk_text), tokens(gt_answer)) >= ORACLE_JACCARD


# ---------------------------------------------------------------------------------------------
# Retrieval


def relax_to_any(tsquery: str) -> str:
    """`'a' & 'b' <-> 'c' & !'d' | 'e'` -> `( 'a' | 'b' <-> 'c' | 'e' ) & !'d'`: any
    top-level term may match (phrases and parenthesised groups stay whole), none excluded."""
    positives, negatives = top_level_atoms(tsquery)
    if not positives:
        return tsquery
    relaxed = positives[0] if len(positives) == 1 else "( " + " | ".join(positives) + " )"
    return " & ".join([relaxed, *negatives])


def top_level_atoms(tsquery: str) -> tuple[list[str], list[str]]:
    """(terms, exclusions) at the top level of a tsquery's text: its operands of `&` and `|`
    outside quotes and parentheses, the `!` ones apart."""
    atoms: list[str] = []
    depth = 0
    in_quote = False
    start = 0
    index = 0
    while index < len(tsquery):
        char = tsquery[index]
        if char == "'":
            if in_quote and tsquery.startswith("''", index):
                index += 2
                continue
            in_quote = not in_quote
        elif not in_quote and char == "(":
            depth += 1
        elif not in_quote and char == ")":
            depth -= 1
        elif not in_quote and depth == 0 and tsquery.startswith((" & ", " | "), index):
            atoms.append(tsquery[start:index].strip())
            index += 3
            start = index
            continue
        index += 1
    atoms.append(tsquery[start:].strip())
    positives = [a for a in atoms if a and not a.startswith("!")]
    negatives = [a for a in atoms if a.startswith("!")]
    return positives, negatives


CANDIDATES_PER_RESULT = 20
"""Rows ranked per result wanted: k=50 ranks at most 1,000 rows."""
MAX_COMBINATIONS = 64
"""A level "at least m of the n terms" is one tsquery of C(n, m) conjunctions; levels that
would need more are folded into the next lower one."""


def candidate_levels(tsquery: str, match: MatchMode) -> list[str]:
    """The tsqueries "at least m of the query's terms", m from all of them down to one (the
    relaxed query itself), exclusions kept in each; `--match all`: the query alone."""
    terms, negatives = top_level_atoms(tsquery)
    positives = list(dict.fromkeys(terms))
    if match == "all" or len(positives) <= 1:
        return [tsquery]
    levels = []
    for m in range(len(positives), 1, -1):
        if math.comb(len(positives), m) > MAX_COMBINATIONS:
            continue
        either = " | ".join("( " + " & ".join(group) + " )"
                            for group in itertools.combinations(positives, m))
        levels.append(" & ".join([f"( {either} )", *negatives]))
    return [*levels, relax_to_any(tsquery)]


def retrieval_statement(table: sql.Composable, tsquery: str, k: int,
                        match: MatchMode) -> sql.Composed:
    """The k best rows, (id, bm25_text, rank), by ts_rank_cd among at most
    k * CANDIDATES_PER_RESULT candidates, taken level by level: the rows matching every term,
    then those matching all but one, and so on down to one term (disjoint levels, each
    through the GIN index; PostgreSQL stops reading levels once it holds enough). While the
    query matches no more rows than that, the candidates are every match and the ranking is
    exactly ts_rank_cd over all of them; beyond, the rows matching the most terms are ranked,
    never an arbitrary share of one-term matches before them (ranking every match of a common
    word cost ~2 s at 1M rows)."""
    query = tsquery if match == "all" else relax_to_any(tsquery)
    levels = candidate_levels(tsquery, match)
    cap = sql.Literal(k * CANDIDATES_PER_RESULT)
    branches = []
    for index, level in enumerate(levels):
        above = (sql.SQL(" AND NOT bm25_tsv @@ {}::tsquery").format(sql.Literal(levels[index - 1]))
                 if index else sql.SQL(""))
        branches.append(sql.SQL(
            "(SELECT id, bm25_text, bm25_tsv FROM {table} WHERE bm25_tsv @@ {level}::tsquery"
            "{above} LIMIT {cap})").format(table=table, level=sql.Literal(level), above=above,
                                           cap=cap))
    # Values as Literals, not parameters, next to a composed name (see ingest._load).
    return sql.SQL(
        "SELECT id, bm25_text, row_number() OVER (ORDER BY score DESC, id) AS rank FROM ("
        "SELECT id, bm25_text, ts_rank_cd(bm25_tsv, {q}::tsquery) AS score FROM "
        "(SELECT * FROM ({branches}) AS levels LIMIT {cap}) AS candidates "
        "ORDER BY score DESC, id LIMIT {k}) AS ranked"
    ).format(branches=sql.SQL(" UNION ALL ").join(branches), cap=cap, q=sql.Literal(query),
             k=sql.Literal(k))


@dataclass
class CaseResult:
    query_id: str
    snapshot_size: int
    oracle_hit: bool
    filter_hit: bool
    latency_ms: float
    first_hit_rank: int | None = None
    gold_used: bool | None = None
    """The reader's answer from the top chunks matched the gold (None: no reader)."""


@dataclass
class EvalResult:
    chunk_version: str
    table: str
    k: int
    top: int
    match: str
    cases: list[CaseResult] = field(default_factory=list)
    retrieval: str = "bm25"
    note: str | None = None
    """Why the retrieval is not the one asked for (a comparison's common fallback)."""
    ce_scores: list[float] = field(default_factory=list)
    """Cross-encoder scores of every case's top chunks after the rerank (empty: no rerank)."""
    ce_model: tuple[str, str] | None = None
    """(file name, sha256) of the cross-encoder that reranked."""

    @property
    def ce_distribution(self) -> dict[str, float]:
        from registry.quality.rerank import quantiles

        return quantiles(self.ce_scores)

    @property
    def metrics(self) -> dict[str, float]:
        latencies = sorted(c.latency_ms for c in self.cases)
        count = len(self.cases) or 1
        read = [c.gold_used for c in self.cases if c.gold_used is not None]
        reader = {"reader_gold_usage": sum(read) / len(read)} if read else {}
        return {
            "cases": len(self.cases),
            "oracle_hit_rate": sum(c.oracle_hit for c in self.cases) / count,
            "filter_hit_rate": sum(c.filter_hit for c in self.cases) / count,
            "avg_snapshot_size": sum(c.snapshot_size for c in self.cases) / count,
            "p50_latency_ms": _percentile(latencies, 0.50),
            "p95_latency_ms": _percentile(latencies, 0.95),
        } | reader

    def summary(self) -> dict[str, Any]:
        """Which table was measured and its metrics (one side of a comparison)."""
        return {"chunk_version": self.chunk_version, "table": self.table,
                "metrics": self.metrics}

    def as_dict(self) -> dict[str, Any]:
        return {
            "chunk_version": self.chunk_version, "table": self.table, "k": self.k,
            "top": self.top, "match": self.match, "retrieval": self.retrieval,
            "note": self.note, "metrics": self.metrics,
            "rerank": None if self.ce_model is None else {
                "model": self.ce_model[0], "model_hash": self.ce_model[1],
                "ce_scores": self.ce_distribution},
            "cases": [asdict(c) for c in self.cases],
        }


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    if len(sorted_values) == 1:
        return sorted_values[0]
    return statistics.quantiles(sorted_values, n=100, method="inclusive")[round(q * 100) - 1]


def _tsqueries(conn: psycopg.Connection[Any], queries: Iterable[str]) -> list[str]:
    """The websearch_to_tsquery text of every query, in one round trip."""
    rows = conn.execute(
        "SELECT websearch_to_tsquery('english', q)::text FROM unnest(%s::text[]) "
        "WITH ORDINALITY AS t(q, n) ORDER BY n",
        (list(queries),),
    ).fetchall()
    return [row[0] for row in rows]


def evaluate_table(
    conn: psycopg.Connection[Any],
    target: ChunkTable,
    cases: Sequence[Case],
    *,
    k: int = DEFAULT_K,
    top: int = DEFAULT_TOP,
    match: MatchMode = "any",
    plan: retrieval.Plan | None = None,
    embedder: Embedder | None = None,
    reader: ChatReader | None = None,
    reranker: CrossEncoder | None = None,
) -> EvalResult:
    """Run every case against one table: snapshot = the k best chunks by the plan's retrieval
    (bm25 unless told), filter = the top ones. Latency is per query, the query's embedding
    included (what an application waits for). With a `reader`, the top chunks go to it and
    its answer is judged against the gold (reader gold usage). With a `reranker`, the k chunks
    are reordered by cross-encoder score before the filter hit is judged (rerank time is not
    retrieval latency); the scores of the top chunks are kept for the CE distribution."""
    if not 1 <= top <= k:
        raise UsageError(f"--top {top} must be between 1 and --k {k}", fix="use --top <= --k")
    plan = plan or retrieval.Plan("bm25")
    if plan.mode != "bm25" and embedder is None:
        raise UsageError(f"{plan.mode} retrieval needs the embedder", fix="use bm25")
    parsed = _tsqueries(conn, (c.query for c in cases))
    if plan.mode != "bm25":
        retrieval.prepare_vector_reads(conn, k)
    name = target.identifier
    result = EvalResult(target.chunk_version, target.qualified, k, top, match,
                        retrieval=plan.mode, note=plan.note,
                        ce_model=None if reranker is None else (reranker.name,
                                                                 reranker.model_hash))
    for case, tsquery in zip(cases, parsed, strict=True):
        start = time.perf_counter()
        if plan.mode == "bm25":
            rows = conn.execute(retrieval_statement(name, tsquery, k, match)).fetchall() \
                if tsquery else []
        else:
            assert embedder is not None
            vector = retrieval.vector_literal(embedder.embed_query(case.query).tolist())
            query_text = relax_to_any(tsquery) if match == "any" else tsquery
            # Values as Literals, not parameters, next to a composed name (see ingest._load).
            rows = conn.execute(retrieval.statement(
                plan.mode, name, plan.spec, sql.Literal(query_text), sql.Literal(vector),
                sql.Literal(k))).fetchall()
        latency = (time.perf_counter() - start) * 1000
        if reranker is not None and rows:
            scores = reranker.score(case.query, [text for _, text, _ in rows])
            order = sorted(range(len(rows)), key=lambda i: (-scores[i], i))
            rows = [rows[i] for i in order]
            result.ce_scores.extend(scores[i] for i in order[:top])
        first = next((rank for rank, (_, text, _) in enumerate(rows, 1)
                      if is_hit(text, case.gt_answer)), None)
        used = None
        if reader is not None:
            from registry.quality.reader import gold_used

            answer = reader.answer(case.query, [text for _, text, _ in rows[:top]])
            used = gold_used(answer, case.gt_answer)
        result.cases.append(CaseResult(
            query_id=case.query_id,
            snapshot_size=len(rows),
            oracle_hit=first is not None,
            filter_hit=first is not None and first <= top,
            latency_ms=round(latency, 3),
            first_hit_rank=first,
            gold_used=used,
        ))
    return result


# ---------------------------------------------------------------------------------------------
# Comparison (the promotion gate)


@dataclass
class Comparison:
    shadow: EvalResult
    baseline: EvalResult
    max_drops: dict[str, float]

    @property
    def deltas(self) -> dict[str, float]:
        shadow, baseline = self.shadow.metrics, self.baseline.metrics
        return {name: shadow[name] - baseline[name] for name in shadow if name != "cases"}

    @property
    def regressions(self) -> list[str]:
        found = []
        for metric, max_drop in self.max_drops.items():
            drop = self.baseline.metrics[metric] - self.shadow.metrics[metric]
            if drop > max_drop + 1e-12:
                found.append(f"{metric} drops by {drop:.3f} ({self.baseline.metrics[metric]:.3f} "
                             f"-> {self.shadow.metrics[metric]:.3f}), more than the allowed "
                             f"{max_drop:.3f}")
        return found

    @property
    def passed(self) -> bool:
        return not self.regressions

    def as_dict(self) -> dict[str, Any]:
        return {
            "shadow": self.shadow.summary(), "against": self.baseline.summary(),
            "retrieval": self.shadow.retrieval, "note": self.shadow.note,
            "passed": self.passed, "regressions": self.regressions,
            "max_drops": self.max_drops, "deltas": self.deltas,
        }


# ---------------------------------------------------------------------------------------------
# Running against the registry, and the record the gate reads


def _require_rows(conn: psycopg.Connection[Any], target: ChunkTable) -> None:
    require_table(conn, target)
    if not has_rows(conn, target.schema, target.table):
        raise Refused(f"table {target.qualified} is empty",
                      fix=f"run `registry ingest {target.chunk_version} --source PATH` first")


def record_eval(
    conn: psycopg.Connection[Any], result: EvalResult, comparison: Comparison | None = None,
    *, registry: str,
) -> None:
    """Append to chunk_registry.eval_runs (health reads the last eval, the gate the last
    comparison), and a rerank's CE score quantiles to ce_score_distributions."""
    details = {"table": result.table, "k": result.k, "top": result.top, "match": result.match,
               "retrieval": result.retrieval, "note": result.note}
    if comparison is None:
        run_id = bookkeeping.record_eval_run(conn, result.chunk_version, registry=registry,
                                             cases=len(result.cases), metrics=result.metrics,
                                             details=details)
    else:
        run_id = bookkeeping.record_eval_run(
            conn, result.chunk_version, registry=registry, cases=len(result.cases),
            metrics=result.metrics,
            against=comparison.baseline.chunk_version, passed=comparison.passed,
            details=details | {"against_metrics": comparison.baseline.metrics,
                               "deltas": comparison.deltas,
                               "regressions": comparison.regressions,
                               "max_drops": comparison.max_drops})
    if result.ce_model is not None and result.ce_scores:
        bookkeeping.record_ce_distribution(
            conn, run_id, result.chunk_version, model_name=result.ce_model[0],
            model_hash=result.ce_model[1], quantiles=result.ce_distribution)


def run_eval(
    state: RegistryState,
    conn: psycopg.Connection[Any],
    version: str,
    cases_file: Path,
    *,
    k: int = DEFAULT_K,
    top: int = DEFAULT_TOP,
    match: MatchMode = "any",
    record: bool = True,
    mode: retrieval.RetrievalMode | None = None,
    reader: ChatReader | None = None,
    reranker: CrossEncoder | None = None,
) -> EvalResult:
    """`registry eval VERSION`: evaluate one table on the cases (and record it), by `mode`
    (default: hybrid when the table has vectors, bm25 else)."""
    cases = load_cases(cases_file)
    target = chunk_table(state, version)
    _require_rows(conn, target)
    plan = retrieval.plan(conn, target, mode)
    result = evaluate_table(conn, target, cases, k=k, top=top, match=match, plan=plan,
                            embedder=embedders_for([plan]).get(plan.spec), reader=reader,
                            reranker=reranker)
    if record:
        bookkeeping.ensure_schema(conn)
        record_eval(conn, result, registry=state.settings.identity)
    return result


def run_compare(
    state: RegistryState,
    conn: psycopg.Connection[Any],
    shadow: str,
    against: str,
    cases_file: Path,
    *,
    k: int = DEFAULT_K,
    top: int = DEFAULT_TOP,
    match: MatchMode = "any",
    record: bool = True,
    mode: retrieval.RetrievalMode | None = None,
    reader: ChatReader | None = None,
    reranker: CrossEncoder | None = None,
) -> Comparison:
    """`registry eval --compare SHADOW --against production`: both tables on the same cases,
    judged by the gates of production.yaml; the outcome is what reconcile's gate reads."""
    cases = load_cases(cases_file)
    settings = state.settings
    shadow_target = chunk_table(state, shadow)
    against_target = chunk_table(state, against)
    if shadow_target == against_target:
        raise UsageError(f"--compare and --against both name {shadow_target.chunk_version}",
                         fix="compare a shadow version against production")
    _require_rows(conn, shadow_target)
    _require_rows(conn, against_target)
    plans = retrieval.plan_pair(conn, shadow_target, against_target, mode)
    embedders = embedders_for(plans)
    results = [evaluate_table(conn, t, cases, k=k, top=top, match=match, plan=p,
                              embedder=embedders.get(p.spec), reader=reader,
                              reranker=reranker)
               for t, p in zip((shadow_target, against_target), plans, strict=True)]
    comparison = Comparison(results[0], results[1], {
        "oracle_hit_rate": settings.oracle_hit_rate_max_drop,
        "filter_hit_rate": settings.filter_hit_rate_max_drop,
    })
    if record:
        bookkeeping.ensure_schema(conn)
        record_eval(conn, results[0], comparison, registry=settings.identity)
    return comparison


def embedders_for(plans: Iterable[retrieval.Plan]) -> dict[EmbedderSpec | None, Embedder]:
    """One checked embedder per distinct spec the plans need (loaded once, fingerprint
    checked once)."""
    loaded: dict[EmbedderSpec | None, Embedder] = {}
    for plan in plans:
        if plan.spec is not None and plan.spec not in loaded:
            loaded[plan.spec] = retrieval.load_embedder(plan.spec)
    return loaded


def baseline_metrics(result: EvalResult) -> dict[str, float]:
    """What `registry lock --baseline-metrics` records: the rates and the snapshot size."""
    metrics = result.metrics
    return {name: round(metrics[name], 4)
            for name in ("oracle_hit_rate", "filter_hit_rate", "avg_snapshot_size")}
