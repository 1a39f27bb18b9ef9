"""Production guardrails and the health report: every number computed from real data.

`check_table` is one SQL statement over the whole table (no per-row Python): row count, BM25
prefix leakage under policy A (bm25_has_prefix, computed by PostgreSQL from bm25_text as rows
are written), over-budget chunks, the last two read from a partial index that holds only the
flagged rows; the table's CHECKs make rows of another version or ingest run impossible. The
dedup rate comes from the last successful ingest run; retrieval metrics from an evaluation (run
now with `--cases`, or the last one recorded). The report keeps the seed's "Production Metrics"
shape.
"""

from __future__ import annotations

import bisect
import itertools
import json
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from registry.config import (
    LockedConfig,
    ProductionConfig,
    guardrail_violations,
)
from registry.database import bookkeeping
from registry.database.chunk_table import (
    ChunkTable,
    chunk_table,
    over_budget,
    prefix_leaks,
    split_prefix,
    table_exists,
    unhealthy_rows,
)
from registry.errors import (
    HEALTH_CRITICAL,
    HEALTH_WARNINGS,
    RegistryError,
    TokenizerUnavailable,
)
from registry.notify.dispatch import notify
from registry.notify.events import health_check
from registry.quality import rerank
from registry.quality import retrieval as retrievals
from registry.quality.evaluation import (
    DEFAULT_K,
    DEFAULT_TOP,
    embedders_for,
    evaluate_table,
    load_cases,
    record_eval,
)
from registry.reconciler.actual import read_actual
from registry.repository.git import Git
from registry.repository.history import read_history
from registry.repository.state import RegistryState
from registry.timestamps import json_default, rfc3339
from registry.tokenizer import resolve, special_token_count, splits_on_whitespace

if TYPE_CHECKING:
    from tokenizers import Tokenizer

CRITICAL = "critical"
WARNING = "warning"
EXIT_HEALTHY, EXIT_WARNINGS, EXIT_CRITICAL = 0, HEALTH_WARNINGS, HEALTH_CRITICAL


class ProductionGuardrails:
    """The seed's guardrails for one locked config: hard caps, tokenizer, embedder fit."""

    def __init__(
        self, config: LockedConfig, tokenizer_file: Path | None = None, *, strict: bool = False,
        repo_root: Path | None = None,
    ) -> None:
        self.config = config
        self.tokenizer_file = tokenizer_file
        self.strict = strict
        self.repo_root = repo_root
        self.tokenizer: Tokenizer | None = None
        """The locked tokenizer once `validate_config` found it with the locked hash."""
        self.tokenizer_missing = "the tokenizer was not checked"

    def validate_config(self) -> dict[str, Any]:
        config = self.config
        issues: list[str] = []
        warnings: list[str] = []
        special = 2
        try:
            resolved = resolve(config.tokenizer_name, self.tokenizer_file,
                               allow_download=self.strict, repo_root=self.repo_root)
        except TokenizerUnavailable as err:
            self.tokenizer_missing = f"tokenizer {config.tokenizer_name} is not available"
            (issues if self.strict else warnings).append(
                f"{self.tokenizer_missing}: {err.message}")
        else:
            if resolved.hash != config.tokenizer_hash:
                self.tokenizer_missing = (f"tokenizer {config.tokenizer_name} hashes to "
                                          f"{resolved.hash}, not the locked "
                                          f"{config.tokenizer_hash}")
                issues.append(self.tokenizer_missing)
            else:
                self.tokenizer = resolved.load()
                special = special_token_count(self.tokenizer)
        issues.extend(message for _, message, _ in guardrail_violations(config, special))
        return {"valid": not issues, "issues": issues, "warnings": warnings}


DEFAULT_SAMPLE = 459
"""Rows re-tokenized per check: 1 - 0.99**459 >= 0.99, so when 1% of the rows store counts
that are not their texts', the sample holds one of them with 99% probability."""
SAMPLE_ROUNDS = 4
EXAMPLES_KEPT = 5


def counts_query(target: ChunkTable) -> sql.Composed:
    """Rows, prefix leakage and over-budget rows of the config's table in one statement:
    count(*) can be an index-only scan and the flagged rows come from the partial index
    (empty while healthy), so the heap need not be read in full."""
    config = target.config
    leak = prefix_leaks() if config.prefix_policy == "A" else sql.SQL("false")
    # Values as Literals (in the predicates), not parameters, next to a composed name (see
    # ingest._load).
    return sql.SQL(
        "SELECT (SELECT count(*) FROM {table}), count(*) FILTER (WHERE {leak}), "
        "count(*) FILTER (WHERE {over}) FROM {table} WHERE {unhealthy}"
    ).format(leak=leak, table=target.identifier,
             over=over_budget(config.prefix_policy, config.chunk_size, config.token_budget),
             unhealthy=unhealthy_rows(config.prefix_policy, config.chunk_size,
                                      config.token_budget))


@dataclass
class SampleCheck:
    """The re-tokenization of a random sample of rows: stored counts against the texts'."""

    size: int
    checked: int = 0
    count_mismatches: int = 0
    over_budget: int = 0
    """Sampled rows over the config's budgets by their re-measured counts (per policy)."""
    examples: list[str] = field(default_factory=list)
    skipped: str | None = None


SampledRow = tuple[str, str, str, int, int]
"""(id, embedding_text, bm25_text, stored embedding count, stored bm25 count)."""
_SAMPLE_COLUMNS = sql.SQL(
    "id, embedding_text, bm25_text, embedding_token_count, bm25_token_count")


def sample_rows(conn: psycopg.Connection[Any], target: ChunkTable, size: int
                ) -> list[SampledRow]:
    """About `size` rows drawn uniformly, each by one primary-key probe at a random point
    drawn by the server (ids are sha256 hex, spread evenly and independent of what a row
    holds): bounded work at any table size, never a scan. A table of at most `size` rows (one
    read of at most size + 1 rows says so) is read whole."""
    head = conn.execute(sql.SQL("SELECT {} FROM {} LIMIT {}").format(
        _SAMPLE_COLUMNS, target.identifier, sql.Literal(size + 1))).fetchall()
    if len(head) <= size:
        return [tuple(r) for r in head]
    found: dict[str, SampledRow] = {}
    for _ in range(SAMPLE_ROUNDS):
        for row in conn.execute(sql.SQL(
                "SELECT s.* FROM (SELECT md5(random()::text) || md5(random()::text) AS point "
                "FROM generate_series(1, {draws})) AS p CROSS JOIN LATERAL "
                "(SELECT {columns} FROM {table} WHERE id >= p.point ORDER BY id LIMIT 1) s"
        ).format(draws=sql.Literal(size - len(found)), columns=_SAMPLE_COLUMNS,
                 table=target.identifier)):
            found.setdefault(row[0], tuple(row))
        if len(found) >= size:
            break
    return list(found.values())


_WORD_ADDITIVE: dict[int, tuple[Tokenizer, bool]] = {}
"""id(tokenizer) -> (it, whether texts count as their words): its JSON read once a process."""
_TO_SPACE = str.maketrans("\t\n\r", "   ")
"""ASCII whitespace as spaces: words are split there (where every such tokenizer splits)."""
_WORD_CHUNKS = 8
"""Strings the distinct words are joined into: encoded in parallel, with no per-word cost."""


def _counts_words(tokenizer: Tokenizer) -> bool:
    """Whether a text's token count is the sum of its words' (split at ASCII whitespace): the
    tokenizer's `splits_on_whitespace` (a whitespace-splitting pre-tokenizer, character-local
    normalizers), and no normalizer that puts text at the start or rewrites whitespace."""
    known = _WORD_ADDITIVE.get(id(tokenizer))
    if known is None or known[0] is not tokenizer:
        if len(_WORD_ADDITIVE) > 16:
            _WORD_ADDITIVE.clear()
        normalizer = json.dumps(json.loads(tokenizer.to_str()).get("normalizer"))
        additive = splits_on_whitespace(tokenizer) and not any(
            f'"type": "{kind}"' in normalizer for kind in ("Replace", "Prepend"))
        known = _WORD_ADDITIVE[id(tokenizer)] = (tokenizer, additive)
    return known[1]


def _word_counts(tokenizer: Tokenizer, texts: list[str]) -> list[int] | None:
    """Token counts (no special tokens) of `texts` as sums of their words' counts, each
    distinct word encoded once, joined into a few strings (offsets tell each token's word);
    None when the tokenizer does not count that way, or when the longest text, encoded whole,
    disagrees."""
    if not texts or not _counts_words(tokenizer):
        return None
    split = [text.translate(_TO_SPACE).split(" ") for text in texts]
    words = sorted(set().union(*split) - {""})
    counts: dict[str, int] = {"": 0}
    size = max(1, -(-len(words) // _WORD_CHUNKS))
    parts = [words[i:i + size] for i in range(0, len(words), size)]
    encodings = tokenizer.encode_batch([" ".join(part) for part in parts],
                                       add_special_tokens=False)
    for part, encoding in zip(parts, encodings, strict=True):
        starts = list(itertools.accumulate((len(w) + 1 for w in part[:-1]), initial=0))
        per_word = [0] * len(part)
        for begin, _ in encoding.offsets:
            per_word[bisect.bisect_right(starts, begin) - 1] += 1
        counts.update(zip(part, per_word, strict=True))
    totals = [sum(map(counts.__getitem__, words_of)) for words_of in split]
    longest = max(range(len(texts)), key=lambda i: len(texts[i]))
    if totals[longest] != len(tokenizer.encode(texts[longest], add_special_tokens=False)):
        return None
    return totals


def _counts(tokenizer: Tokenizer, texts: list[str], *, special: bool) -> list[int]:
    """Token counts of `texts`, each encoded (without offsets when the library can)."""
    if not texts:
        return []
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
    return [len(e) for e in encode(texts, add_special_tokens=special)]


def measure_sample(config: LockedConfig, sampled: list[SampledRow], size: int,
                   tokenizer: Tokenizer) -> SampleCheck:
    """Re-tokenize sampled rows: their stored counts must be their texts' (the writer's word
    is not taken), and their re-measured counts within the budgets per prefix policy (under
    B the body, embedding_text after its own prefix, is what chunk_size bounds).

    With a tokenizer whose counts add up over words (WordPiece/BERT-style; `_counts_words`,
    and checked on the longest text), each distinct word of the sample is tokenized once and
    every text counts as the sum of its words: the same numbers, a fraction of the work
    (459 rows hold some 27,000 words, of which a few thousand distinct). Any other tokenizer
    encodes every text whole, as before."""
    check = SampleCheck(size)
    if not sampled:
        return check
    policy_b = config.prefix_policy == "B"
    special = special_token_count(tokenizer)
    body_texts = [split_prefix(r[1])[1] for r in sampled] if policy_b else []
    rows = len(sampled)
    totals = _word_counts(tokenizer, [r[1] for r in sampled] + [r[2] for r in sampled]
                          + body_texts)
    if totals is not None:
        embedding = [special + count for count in totals[:rows]]
        bm25 = totals[rows:2 * rows]
        bodies = totals[2 * rows:] if policy_b else bm25
    else:
        embedding = _counts(tokenizer, [r[1] for r in sampled], special=True)
        bm25 = _counts(tokenizer, [r[2] for r in sampled], special=False)
        bodies = _counts(tokenizer, body_texts, special=False) if policy_b else bm25
    budget = config.token_budget
    for (row_id, _, _, stored_embedding, stored_bm25), counted, text, body in zip(
            sampled, embedding, bm25, bodies, strict=True):
        check.checked += 1
        if (counted, text) != (stored_embedding, stored_bm25):
            check.count_mismatches += 1
            if len(check.examples) < EXAMPLES_KEPT:
                check.examples.append(
                    f"{row_id[:12]}: stored {stored_embedding}/{stored_bm25}, "
                    f"re-tokenized {counted}/{text}")
        if body > config.chunk_size or counted > budget:
            check.over_budget += 1
    return check


def check_sample(conn: psycopg.Connection[Any], target: ChunkTable, size: int,
                 tokenizer: Tokenizer) -> SampleCheck:
    """Draw the sample and re-tokenize it (`measure_sample`)."""
    return measure_sample(target.config, sample_rows(conn, target, size), size, tokenizer)


@dataclass
class TableHealth:
    table: str
    exists: bool
    rows: int = 0
    prefix_leakage: int = 0
    over_budget: int = 0
    dedup_rate: float | None = None
    last_ingest: dict[str, Any] | None = None
    sample: SampleCheck | None = None


def check_table(conn: psycopg.Connection[Any], target: ChunkTable,
                tokenizer: Tokenizer | None = None, *, sample: int = DEFAULT_SAMPLE,
                tokenizer_missing: str = "no tokenizer was given") -> TableHealth:
    """The data guardrails of one table: one statement over the table (`counts_query`), the
    re-tokenization of a bounded sample (skipped, and said so, without the tokenizer), plus
    one bookkeeping query. The sample is drawn first; its tokenization (which releases the
    GIL) runs in a thread while the server counts the table."""
    health = TableHealth(table=target.qualified, exists=False)
    if not table_exists(conn, target.schema, target.table):
        return health
    health.exists = True
    if sample > 0 and tokenizer is None:
        health.sample = SampleCheck(sample, skipped=tokenizer_missing)
    measuring: Future[SampleCheck] | None = None
    with ThreadPoolExecutor(max_workers=1) as pool:
        if sample > 0 and tokenizer is not None:
            measuring = pool.submit(measure_sample, target.config,
                                    sample_rows(conn, target, sample), sample, tokenizer)
        row = conn.execute(counts_query(target)).fetchone()
        if measuring is not None:
            health.sample = measuring.result()
    assert row is not None
    health.rows, health.prefix_leakage, health.over_budget = int(row[0]), int(row[1]), int(row[2])
    ingest = bookkeeping.last_successful_ingest(conn, target.chunk_version, target.registries)
    if ingest is not None:
        health.last_ingest = asdict(ingest)
        produced = (ingest.chunks or 0) + (ingest.duplicates_removed or 0)
        health.dedup_rate = (ingest.duplicates_removed or 0) / produced if produced else None
    return health


@dataclass
class Alert:
    level: str
    metric: str
    message: str

    @property
    def icon(self) -> str:
        return "🚨" if self.level == CRITICAL else "⚠️"


@dataclass
class HealthReport:
    config: LockedConfig
    settings: ProductionConfig
    config_health: dict[str, Any]
    table: TableHealth
    retrieval: dict[str, float] | None
    timestamp: datetime = field(default_factory=lambda: datetime.now(UTC))
    production_alerts: list[Alert] = field(default_factory=list)
    """Git and the database disagreeing on production: first, since every other figure is of
    the repo's production, which may not be what is served."""
    ce_scores: dict[str, Any] | None = None
    """The latest cross-encoder score quantiles against the baseline's (the first recorded for
    the config with the same model), and how far they drifted; None: never reranked."""
    stale_eval: dict[str, Any] | None = None
    """The last evaluation when it predates the last ingest: measured on rows that are gone,
    so never shown as the current retrieval figures."""

    @property
    def alerts(self) -> list[Alert]:
        found: list[Alert] = list(self.production_alerts)
        settings, table, retrieval = self.settings, self.table, self.retrieval
        if not self.config_health["valid"]:
            found.append(Alert(CRITICAL, "config", "config invalid: "
                               + "; ".join(self.config_health["issues"])))
        if not table.exists:
            found.append(Alert(CRITICAL, "table", f"table {table.table} does not exist"))
        elif table.rows == 0:
            found.append(Alert(CRITICAL, "rows", f"table {table.table} is empty"))
        if table.prefix_leakage:
            found.append(Alert(CRITICAL, "bm25_prefix_leakage", f"{table.prefix_leakage} rows "
                               "carry their own contextual prefix in bm25_text under policy A"))
        sample = table.sample
        over = table.over_budget + (sample.over_budget if sample else 0)
        if over:
            rule = (f"a body over {self.config.chunk_size} tokens or embedding text over the "
                    f"{self.config.token_budget}-token budget")
            where = [f"{table.over_budget} rows by their stored counts"] if table.over_budget \
                else []
            if sample and sample.over_budget:
                where.append(f"{sample.over_budget} of {sample.checked} sampled rows by their "
                             "re-tokenized texts")
            found.append(Alert(CRITICAL, "over_budget_chunks",
                               f"{' and '.join(where)} have {rule}"))
        if sample and sample.count_mismatches:
            found.append(Alert(CRITICAL, "token_counts", f"{sample.count_mismatches} of "
                               f"{sample.checked} sampled rows store token counts that are not "
                               f"their texts' ({'; '.join(sample.examples)}): re-ingest the "
                               "version"))
        if sample and sample.skipped:
            found.append(Alert(WARNING, "token_count_sample", f"the re-tokenization of "
                               f"{sample.size} sampled rows was skipped: {sample.skipped} "
                               "(pass --tokenizer-file)"))
        if retrieval is None and self.stale_eval is not None:
            found.append(Alert(WARNING, "retrieval", f"the last evaluation ("
                               f"{self.stale_eval['at']}) was measured before the ingest of "
                               f"{self.stale_eval['ingested_at']}, on rows since replaced: "
                               f"rerun `registry eval {self.config.chunk_version} --cases FILE`"))
        elif retrieval is None:
            found.append(Alert(WARNING, "retrieval", "no evaluation yet: run "
                               f"`registry eval {self.config.chunk_version} --cases FILE`"))
        else:
            low, high = settings.target_snapshot_size
            size = retrieval["avg_snapshot_size"]
            if not low <= size <= high:
                found.append(Alert(WARNING, "avg_snapshot_size", f"average snapshot size "
                                   f"{size:.1f} is outside the target {low:g}-{high:g}"))
            if retrieval["oracle_hit_rate"] < settings.target_oracle_hit_rate:
                found.append(Alert(WARNING, "oracle_hit_rate", f"oracle hit rate "
                                   f"{retrieval['oracle_hit_rate']:.3f} is below the target "
                                   f"{settings.target_oracle_hit_rate:.2f}"))
            p95 = retrieval.get("p95_latency_ms")
            if p95 is not None and p95 > settings.target_retrieval_p95_ms:
                mode = f" ({retrieval['retrieval']})" if retrieval.get("retrieval") else ""
                found.append(Alert(WARNING, "retrieval_latency", f"retrieval p95 latency "
                                   f"{p95:.1f} ms{mode} is above the target "
                                   f"{settings.target_retrieval_p95_ms:g} ms"))
            if retrieval["filter_hit_rate"] < settings.target_filter_hit_rate:
                found.append(Alert(WARNING, "filter_hit_rate", f"filter hit rate "
                                   f"{retrieval['filter_hit_rate']:.3f} is below the target "
                                   f"{settings.target_filter_hit_rate:.2f}"))
        ce = self.ce_scores
        if ce is not None and ce["drift"] > settings.ce_score_drift:
            base, now = ce["baseline"], ce["current"]
            found.append(Alert(WARNING, "ce_score_drift", f"cross-encoder scores drifted: median "
                               f"{now['q50']:.3f} vs {base['q50']:.3f} at the baseline "
                               f"({ce['baseline_at']}), quantiles moved {ce['drift']:.2f} "
                               f"baseline q10-q90 spreads, more than "
                               f"{settings.ce_score_drift:g} ({ce['model']})"))
        if table.dedup_rate is not None:
            low, high = settings.target_dedup_rate
            if not low <= table.dedup_rate <= high:
                found.append(Alert(WARNING, "dedup_rate", f"dedup rate {table.dedup_rate:.1%} is "
                                   f"outside the target {low:.0%}-{high:.0%}"))
        elif table.exists:
            found.append(Alert(WARNING, "dedup_rate", "no successful ingest run recorded"))
        return found

    @property
    def exit_code(self) -> int:
        levels = {a.level for a in self.alerts}
        if CRITICAL in levels:
            return EXIT_CRITICAL
        return EXIT_WARNINGS if levels else EXIT_HEALTHY

    def as_dict(self) -> dict[str, Any]:
        """The seed's Production Metrics JSON, extended with the numbers it only promised."""
        alerts = self.alerts
        retrieval = self.retrieval or {}
        critical = [a for a in alerts if a.level == CRITICAL]
        data_ok = self.table.exists and not (self.table.prefix_leakage or self.table.over_budget)
        return {
            "timestamp": rfc3339(self.timestamp),
            "chunk_version": self.config.chunk_version,
            "overall_healthy": not critical and not alerts,
            "config_health": self.config_health,
            "retrieval_health": {
                "healthy": data_ok and not [a for a in alerts if a.metric in (
                    "avg_snapshot_size", "oracle_hit_rate", "filter_hit_rate", "retrieval")],
                "bm25_prefix_leakage": self.table.prefix_leakage,
                "over_budget_chunks": self.table.over_budget,
                "avg_snapshot_size": retrieval.get("avg_snapshot_size"),
            },
            "oracle_hit_rate": retrieval.get("oracle_hit_rate"),
            "filter_hit_rate": retrieval.get("filter_hit_rate"),
            "dedup_rate": self.table.dedup_rate,
            "rows": self.table.rows,
            "table": self.table.table,
            "ingest": self.table.last_ingest,
            "retrieval": self.retrieval,
            "ce_scores": self.ce_scores,
            "alerts": [asdict(a) | {"icon": a.icon} for a in alerts],
        }


def record(conn: psycopg.Connection[Any], report: HealthReport) -> None:
    """Append the report to chunk_registry.health_reports (the trend the dashboard draws)."""
    bookkeeping.record_health_report(conn, report.timestamp, report.config.chunk_version,
                                     json.loads(json.dumps(report.as_dict(), default=str)),
                                     report.settings.identity)


def render(report: HealthReport, fmt: str) -> str:
    data = report.as_dict()
    if fmt == "json":
        return json.dumps(data, indent=2, default=json_default) + "\n"
    status = "healthy" if data["overall_healthy"] else (
        "CRITICAL" if report.exit_code == EXIT_CRITICAL else "warnings")

    def number(value: Any, pattern: str) -> str:
        return "n/a" if value is None else format(value, pattern)

    rows = [
        ("config valid", str(data["config_health"]["valid"])),
        ("rows", str(data["rows"])),
        ("bm25 prefix leakage", str(data["retrieval_health"]["bm25_prefix_leakage"])),
        ("over-budget chunks", str(data["retrieval_health"]["over_budget_chunks"])),
        ("avg snapshot size", number(data["retrieval_health"]["avg_snapshot_size"], ".1f")),
        ("oracle hit rate", number(data["oracle_hit_rate"], ".3f")),
        ("filter hit rate", number(data["filter_hit_rate"], ".3f")),
        ("dedup rate", number(data["dedup_rate"], ".1%")),
        ("retrieval p95 ms", number((data["retrieval"] or {}).get("p95_latency_ms"), ".1f")),
        ("ce score median", number(((data["ce_scores"] or {}).get("current") or {}).get("q50"),
                                   ".3f")),
    ]
    if fmt == "markdown":
        out = [f"### Chunk registry health: {report.config.chunk_version} ({status})", ""]
        out += [f"- {a.icon} {a.message}" for a in report.alerts] or ["- ✅ no alerts"]
        out += ["", "| metric | value |", "| --- | --- |"]
        out += [f"| {k} | {v} |" for k, v in rows]
        return "\n".join(out) + "\n"
    out = [f"{report.config.chunk_version} ({report.config.label()}) on {data['table']}: {status}"]
    out += [f"  {k:<20} {v}" for k, v in rows]
    out += [f"{a.icon} {a.level}: {a.message}" for a in report.alerts]
    return "\n".join(out) + "\n"


def require_table(health: TableHealth) -> None:
    if not health.exists:
        raise RegistryError(f"table {health.table} does not exist",
                            fix="run `registry reconcile` first")


def production_alerts(conn: psycopg.Connection[Any], git: Git, state: RegistryState,
                      ref: str) -> list[Alert]:
    """The view serving another table than the repo's production, once a reconcile has run on
    a commit that holds the promotion (it had its chance and the view still points elsewhere:
    a refused swap). Before that the promotion is merely on its way, as after every merge."""
    settings = state.settings
    production = settings.production
    if production is None:
        return []
    view = read_actual(conn, settings).relations.get(settings.base_name)
    reads = [t for s, t in view.reads if s == settings.schema] if view and view.is_view else []
    served = reads[0] if len(reads) == 1 else None
    wanted = settings.table_name(production)
    if served == wanted:
        return []
    served_version = bookkeeping.table_versions(conn, settings.identities).get(
        served or "", served or "nothing")
    view_name = f"{settings.schema}.{settings.base_name}"
    promotion = next((e for e in read_history(git, ref, settings.environment)
                      if e.kind in ("promote", "rollback") and e.chunk_version == production),
                     None)
    run = bookkeeping.last_reconcile_run(conn, settings.identities)
    seen = (run is not None and run.git_commit is not None and (
        promotion is None or git.execute("merge-base", "--is-ancestor", promotion.commit,
                                         run.git_commit)[0] == 0))
    if not seen or run is None:
        return []
    return [Alert(CRITICAL, "production", f"production is {production} in git "
                  f"({promotion.commit[:10] if promotion else ref}) but the view {view_name} "
                  f"serves {served_version} after reconcile run #{run.id} ({run.outcome}"
                  f"{': ' + run.error if run.error else ''}): fix what the reconciler refused, "
                  "or revert the promotion")]


def stale_eval(conn: psycopg.Connection[Any], target: ChunkTable,
               table: TableHealth) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(current retrieval figures, the stale evaluation): the last evaluation counts only when
    it was measured after the last ingest; before, it describes rows since replaced."""
    last = bookkeeping.last_eval(conn, target.chunk_version, target.registries)
    if last is None:
        return None, None
    ingested = (table.last_ingest or {}).get("finished_at")
    if ingested is not None and last.at < ingested:
        return None, {"at": rfc3339(last.at), "ingested_at": rfc3339(ingested),
                      "metrics": dict(last.metrics)}
    return dict(last.metrics), None


def ce_drift(conn: psycopg.Connection[Any], target: ChunkTable) -> dict[str, Any] | None:
    """The latest CE score distribution of a config against its baseline, with the drift."""
    baseline, latest = bookkeeping.ce_distributions(conn, target.chunk_version,
                                                    target.registries)
    if baseline is None or latest is None:
        return None
    return {"model": latest.model_name, "model_hash": latest.model_hash,
            "baseline_at": rfc3339(baseline.at),
            "at": rfc3339(latest.at),
            "baseline": baseline.quantiles, "current": latest.quantiles,
            "drift": round(rerank.drift(latest.quantiles, baseline.quantiles), 4)}


def run_health(
    git: Git,
    state: RegistryState,
    conn: psycopg.Connection[Any],
    version: str = "production",
    *,
    cases_file: Path | None = None,
    tokenizer_file: Path | None = None,
    strict: bool = False,
    record_report: bool = True,
    k: int | None = None,
    top: int | None = None,
    sample: int | None = None,
) -> HealthReport:
    """`registry health`: guardrails on the config and on the data (`sample` rows
    re-tokenized), retrieval metrics (a fresh evaluation with `cases_file`, else the last one
    recorded after the last ingest), whether the view serves the repo's production, alerts;
    appended to health_reports so the dashboard can draw trends."""
    target = chunk_table(state, version)
    config = target.config
    settings = state.settings
    guardrails = ProductionGuardrails(config, tokenizer_file, strict=strict, repo_root=git.root)
    guard = guardrails.validate_config()
    guard["issues"] = guard["issues"] + [
        p.render() for p in state.errors if p.path.endswith(f"{config.chunk_version}.yaml")
    ]
    guard["valid"] = not guard["issues"]
    cases = load_cases(cases_file) if cases_file else None
    bookkeeping.ensure_schema(conn)
    table = check_table(conn, target, guardrails.tokenizer,
                        sample=DEFAULT_SAMPLE if sample is None else sample,
                        tokenizer_missing=guardrails.tokenizer_missing)
    stale: dict[str, Any] | None = None
    if cases is not None and table.exists and table.rows:
        # The retrieval the gate judges a comparison by: hybrid when the table has vectors.
        plan = retrievals.plan(conn, target, None)
        result = evaluate_table(conn, target, cases, k=k or DEFAULT_K,
                                top=top or DEFAULT_TOP, plan=plan,
                                embedder=embedders_for([plan]).get(plan.spec))
        record_eval(conn, result, registry=settings.identity)
        retrieval: dict[str, Any] | None = dict(result.metrics) | {
            "retrieval": result.retrieval}
    else:
        retrieval, stale = stale_eval(conn, target, table)
    report = HealthReport(config, settings, guard, table, retrieval,
                          production_alerts=production_alerts(conn, git, state, state.ref),
                          stale_eval=stale, ce_scores=ce_drift(conn, target))
    if record_report:
        record(conn, report)
        _notify(conn, report)
    return report


def _notify(conn: psycopg.Connection[Any], report: HealthReport) -> None:
    """Tell the configured targets of a critical report, and of its resolution."""
    notify(conn, report.settings.notifications, health_check(report),
           registry=report.settings.identity)
