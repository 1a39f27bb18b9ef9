"""Evaluation and health on tables filled by the real ingest: metrics known by construction,
each planted fault making exactly its alert fire, and the promotion gate."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from registry.commands.data import ingest
from registry.commands.quality import compare, evaluate, health
from registry.commands.reconcile import reconcile
from registry.quality.evaluation import load_cases, relax_to_any
from registry.repository.git import Git
from tests.helpers import RegistryRepo, run_cli

WORDS = ["river", "stone", "window", "garden", "letter", "market", "silver", "engine", "harbor", "candle", "meadow", "pencil", "orchard", "lantern", "valley", "copper", "thunder", "ribbon", "falcon", "marble", "compass", "velvet", "glacier", "saddle", "timber", "beacon", "quarry", "meadowlark", "pebble", "cobalt", "saffron", "harvest", "pilgrim", "anchor", "basket", "cellar", "chimney", "desert", "ember", "fountain", "granite", "hollow", "island", "jasmine", "kettle", "ladder", "mirror", "nectar", "oyster", "parcel", "quiver", "raven", "summit", "tunnel", "umbrella", "violet", "walnut", "yarrow", "bramble", "canyon", "dagger", "feather", "gravel", "hammock", "indigo", "jungle", "kernel", "lichen", "mosaic", "nugget", "pepper", "quartz", "rustle", "sparrow", "thistle", "utensil", "vessel", "wander", "zenith", "blossom", "crystal"]
ANSWERED = 7
UNANSWERED = 3
DOCS, SECTIONS = 8, 5


@dataclass
class Corpus:
    path: Path
    cases: Path
    chunks: int
    duplicates: int


def write_corpus(root: Path, *, drop_answers: int = 0, seed: int = 7) -> Corpus:
    """DOCS markdown docs of SECTIONS distinct sections plus one verbatim repeat each (a
    near-duplicate the per-document dedup removes). Every section mentions `registry`, so
    any query naming it retrieves every chunk; section answers carry a unique keyword."""
    rng = random.Random(seed)
    docs = root / "corpus"
    docs.mkdir(parents=True)
    cases = []
    for d in range(DOCS):
        parts = [f"# Document {d}\n"]
        first_body = ""
        for s in range(SECTIONS):
            body = " ".join(rng.choice(WORDS) for _ in range(60))
            index = d * SECTIONS + s
            if index < ANSWERED + UNANSWERED:
                keyword = f"keyword{index:02d}"
                answer = f"the answer to case {index} is {WORDS[index]} {WORDS[index + 1]}"
                if index < ANSWERED and index >= drop_answers:
                    body = f"{body} {keyword} {answer} registry."
                else:
                    body = f"{body} {keyword} registry."
                if index >= ANSWERED:
                    answer = f"unfindable {WORDS[-index]} {WORDS[-index - 1]} phrase {index}"
                cases.append({"query_id": f"q{index:02d}", "query": f"registry {keyword}",
                              "gt_answer": answer})
            else:
                body = f"{body} registry."
            parts.append(f"## Section {s}\n\n{body}\n")
            first_body = first_body or body
        parts.append(f"## Appendix\n\n{first_body}\n")
        (docs / f"doc{d}.md").write_text("\n".join(parts))
    cases_file = root / "cases.jsonl"
    cases_file.write_text("".join(json.dumps(c) + "\n" for c in cases))
    return Corpus(docs, cases_file, DOCS * SECTIONS, DOCS)


@pytest.fixture
def corpus(tmp_path: Path) -> Corpus:
    return write_corpus(tmp_path / "full")


def promote(registry_repo: RegistryRepo, version: str) -> None:
    text = registry_repo.read("configs/production.yaml")
    lines = [f"production: {version}" if line.startswith("production:") else line
             for line in text.splitlines()]
    registry_repo.write("configs/production.yaml", "\n".join(lines) + "\n",
                        message=f"Promote {version}")


def set_targets(registry_repo: RegistryRepo, targets: str) -> None:
    text = registry_repo.read("configs/production.yaml")
    lines = [targets if line.startswith("targets:") else line for line in text.splitlines()]
    registry_repo.write("configs/production.yaml", "\n".join(lines) + "\n",
                        message="Targets for the fixture corpus")


def filled(registry_repo: RegistryRepo, dsn: str, source: Path, **lock: object) -> str:
    version = registry_repo.locked(**lock)
    reconcile(registry_repo.path, dsn=dsn)
    ingest(registry_repo.path, version, source, dsn=dsn, tokenizer_file=registry_repo.tokenizer_file,
           workers=1)
    return version


def serving_and_shadow(registry_repo: RegistryRepo, dsn: str, production_source: Path,
                       shadow_source: Path) -> tuple[str, str]:
    """A config filled from `production_source` serving production, and a shadow (chunk_size
    300) filled from `shadow_source`."""
    production = filled(registry_repo, dsn, production_source)
    promote(registry_repo, production)
    reconcile(registry_repo.path, dsn=dsn)
    return production, filled(registry_repo, dsn, shadow_source, chunk_size=300)


def test_eval_metrics_are_the_ones_built_into_the_corpus(
    registry_repo: RegistryRepo, dsn: str, corpus: Corpus
) -> None:
    version = filled(registry_repo, dsn, corpus.path)

    result = evaluate(registry_repo.path, version, corpus.cases, dsn=dsn)

    metrics = result.metrics
    assert metrics["cases"] == ANSWERED + UNANSWERED
    assert metrics["oracle_hit_rate"] == pytest.approx(ANSWERED / (ANSWERED + UNANSWERED))
    assert metrics["filter_hit_rate"] == pytest.approx(ANSWERED / (ANSWERED + UNANSWERED))
    assert metrics["avg_snapshot_size"] == corpus.chunks
    assert all(c.first_hit_rank == 1 for c in result.cases if c.oracle_hit)
    strict = evaluate(registry_repo.path, version, corpus.cases, dsn=dsn, match="all")
    assert strict.metrics["avg_snapshot_size"] == 1
    assert metrics["p95_latency_ms"] >= metrics["p50_latency_ms"] > 0


def test_a_healthy_table_has_no_alerts_and_each_planted_fault_fires_exactly_its_alert(
    registry_repo: RegistryRepo, dsn: str, corpus: Corpus
) -> None:
    version = filled(registry_repo, dsn, corpus.path)
    promote(registry_repo, version)
    table = "document_chunks_" + version.replace("-", "_")

    def alerts(**options: object) -> tuple[list[str], int]:
        report = health(registry_repo.path, dsn=dsn, cases_file=corpus.cases,
                            tokenizer_file=registry_repo.tokenizer_file, **options)  # type: ignore[arg-type]
        return [a.metric for a in report.alerts], report.exit_code

    healthy, code = alerts()
    assert (healthy, code) == ([], 0)

    with psycopg.connect(dsn, autocommit=True) as conn:
        # The incident: bm25_text written as embedding_text (the row's own prefix leaked), its
        # count with it (embedding less [CLS] and [SEP]), so only the leak is wrong.
        conn.execute(f"CREATE TEMP TABLE saved AS SELECT id, bm25_text, bm25_token_count "
                     f"FROM {table}")
        conn.execute(f"UPDATE {table} SET bm25_text = embedding_text, bm25_token_count = "
                     "embedding_token_count - 2 WHERE chunk_index = 0 "
                     "AND doc_id IN ('doc0.md', 'doc1.md', 'doc2.md')")
        assert alerts() == (["bm25_prefix_leakage"], 19)
        restore = (f"UPDATE {table} t SET bm25_text = s.bm25_text, bm25_token_count = "
                   "s.bm25_token_count FROM saved s WHERE s.id = t.id")
        conn.execute(restore)
        assert alerts() == ([], 0)

        # A stored count over chunk_size: over budget, and not the text's count either.
        conn.execute(f"UPDATE {table} SET bm25_token_count = 451 WHERE chunk_index = 1 "
                     "AND doc_id = 'doc3.md'")
        assert alerts() == (["over_budget_chunks", "token_counts"], 19)
        conn.execute(restore)

        conn.execute("UPDATE chunk_registry.ingest_runs SET duplicates_removed = 0")
        assert alerts() == (["dedup_rate"], 18)


@pytest.mark.parametrize("policy", ["A", "B"])
def test_the_health_counts_read_the_partial_index_of_flagged_rows_not_the_heap(
    registry_repo: RegistryRepo, dsn: str, policy: str
) -> None:
    """The table's partial index and the check's WHERE are one predicate: if they ever drift
    apart PostgreSQL can no longer use the index and the check reads the whole table."""
    from registry.database.chunk_table import chunk_table
    from registry.quality.health import counts_query
    from registry.repository.state import committed_state

    version = registry_repo.locked(prefix_policy=policy)
    reconcile(registry_repo.path, dsn=dsn)
    state = committed_state(Git(registry_repo.path), "main")
    target = chunk_table(state, version)
    with psycopg.connect(dsn) as conn:
        conn.execute("SET LOCAL enable_seqscan = off")
        plan = "\n".join(row[0] for row in conn.execute(
            psycopg.sql.SQL("EXPLAIN {}").format(counts_query(target))))
    assert f"{target.table}_bad" in plan, plan


def test_health_reports_the_seed_metrics_and_records_each_report(
    registry_repo: RegistryRepo, dsn: str, corpus: Corpus
) -> None:
    version = filled(registry_repo, dsn, corpus.path)
    promote(registry_repo, version)

    result = run_cli("health", "--repo", registry_repo.path, "--dsn", dsn, "--cases",
                     corpus.cases, "--tokenizer-file", registry_repo.tokenizer_file,
                     "--format", "json")
    run_cli("health", "--repo", registry_repo.path, "--dsn", dsn, "--format", "markdown")

    data = json.loads(result.stdout)
    assert result.code == 0, result.stdout
    assert data["chunk_version"] == version and data["overall_healthy"] is True
    assert data["config_health"] == {"valid": True, "issues": [], "warnings": []}
    assert data["retrieval_health"]["bm25_prefix_leakage"] == 0
    assert data["retrieval_health"]["over_budget_chunks"] == 0
    assert data["retrieval_health"]["avg_snapshot_size"] == corpus.chunks
    assert data["rows"] == corpus.chunks
    assert data["dedup_rate"] == pytest.approx(corpus.duplicates / (corpus.chunks + corpus.duplicates))
    with psycopg.connect(dsn) as conn:
        stored = conn.execute("SELECT chunk_version, report->>'oracle_hit_rate' "
                              "FROM chunk_registry.health_reports ORDER BY at").fetchall()
    assert stored == [(version, "0.7"), (version, "0.7")]


def test_config_and_retrieval_alerts(registry_repo: RegistryRepo, dsn: str, corpus: Corpus,
                                     tmp_path_factory: pytest.TempPathFactory) -> None:
    from tests.helpers import build_tokenizer

    version = filled(registry_repo, dsn, corpus.path)
    promote(registry_repo, version)
    other = build_tokenizer(tmp_path_factory.mktemp("other") / "tokenizer.json", vocab_size=3000)

    mismatch = health(registry_repo.path, dsn=dsn, tokenizer_file=other)
    assert "config" in [a.metric for a in mismatch.alerts] and mismatch.exit_code == 19

    evaluate(registry_repo.path, version, corpus.cases, dsn=dsn, k=20)
    small = health(registry_repo.path, dsn=dsn, tokenizer_file=registry_repo.tokenizer_file)
    assert [a.metric for a in small.alerts] == ["avg_snapshot_size"]

    set_targets(registry_repo, "targets: {oracle_hit_rate: 0.9, filter_hit_rate: 0.8}")
    high = health(registry_repo.path, dsn=dsn, cases_file=corpus.cases,
                      tokenizer_file=registry_repo.tokenizer_file)
    assert [a.metric for a in high.alerts] == ["oracle_hit_rate", "filter_hit_rate"]
    assert high.exit_code == 18


def test_compare_gates_promotion_of_a_regressing_shadow(
    registry_repo: RegistryRepo, dsn: str, corpus: Corpus, tmp_path: Path
) -> None:
    worse = write_corpus(tmp_path / "worse", drop_answers=3)
    production, shadow = serving_and_shadow(registry_repo, dsn, corpus.path, worse.path)

    result = run_cli("eval", "--compare", shadow, "--against", "production", "--cases",
                     corpus.cases, "--repo", registry_repo.path, "--dsn", dsn)

    assert result.code == 1
    assert "regression: oracle_hit_rate drops by 0.300 (0.700 -> 0.400)" in result.stdout
    promote(registry_repo, shadow)
    refused = reconcile(registry_repo.path, dsn=dsn)
    assert [f.kind for f in refused.plan.blocking] == ["gate"]
    assert _view_target(dsn) == "document_chunks_" + production.replace("-", "_")
    forced = reconcile(registry_repo.path, dsn=dsn, force=True)
    assert [type(a).__name__ for a in forced.plan.actions] == ["SwapProduction"]


def test_compare_lets_an_improving_shadow_through_and_rollback_is_never_gated(
    registry_repo: RegistryRepo, dsn: str, corpus: Corpus, tmp_path: Path
) -> None:
    worse = write_corpus(tmp_path / "worse", drop_answers=3)
    production, shadow = serving_and_shadow(registry_repo, dsn, worse.path, corpus.path)

    comparison = compare(registry_repo.path, shadow, "production", corpus.cases, dsn=dsn)
    assert comparison.passed and comparison.deltas["oracle_hit_rate"] == pytest.approx(0.3)

    promote(registry_repo, shadow)
    reconcile(registry_repo.path, dsn=dsn)
    assert _view_target(dsn) == "document_chunks_" + shadow.replace("-", "_")
    old = compare(registry_repo.path, production, "production", corpus.cases, dsn=dsn)
    assert not old.passed
    promote(registry_repo, production)
    reconcile(registry_repo.path, dsn=dsn)
    assert _view_target(dsn) == "document_chunks_" + production.replace("-", "_")


def test_write_baseline_feeds_the_next_lock(registry_repo: RegistryRepo, dsn: str,
                                            corpus: Corpus, tmp_path: Path) -> None:
    version = filled(registry_repo, dsn, corpus.path)
    baseline = tmp_path / "baseline.json"

    assert run_cli("eval", version, "--cases", corpus.cases, "--write-baseline", baseline,
                   "--repo", registry_repo.path, "--dsn", dsn).code == 0
    locked = run_cli("lock", "--repo", registry_repo.path, "--tokenizer-file",
                     registry_repo.tokenizer_file, "--baseline-metrics", baseline,
                     "--format", "json")

    new = json.loads(locked.stdout)["chunk_version"]
    text = registry_repo.git("show", f"lock/{new}:configs/{new}.yaml")
    assert "oracle_hit_rate: 0.7" in text and "avg_snapshot_size: 40.0" in text


def test_cases_files_are_checked_line_by_line(tmp_path: Path) -> None:
    from registry.errors import ConfigInvalid

    good = tmp_path / "cases.json"
    good.write_text(json.dumps([{"query_id": 1, "query": "a", "gt_answer": "b"}]))
    assert load_cases(good)[0].query_id == "1"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query_id": "a", "query": "q", "gt_answer": "x"}\n{"query_id": "b"\n')
    with pytest.raises(ConfigInvalid, match=r"bad.jsonl:2: malformed JSON line"):
        load_cases(bad)
    bad.write_text('{"query_id": "a", "query": "q"}\n')
    with pytest.raises(ConfigInvalid, match=r"bad.jsonl:1: case field gt_answer is missing"):
        load_cases(bad)


@pytest.mark.parametrize(("tsquery", "relaxed"), [
    ("'a' & 'b'", "( 'a' | 'b' )"),
    ("'a' <-> 'b' & 'c' & !'d'", "( 'a' <-> 'b' | 'c' ) & !'d'"),
    ("'a' & !'b' | 'c'", "( 'a' | 'c' ) & !'b'"),
    ("'it''s' & 'x'", "( 'it''s' | 'x' )"),
    ("'a' & ( 'b' | 'c' )", "( 'a' | ( 'b' | 'c' ) )"),
    ("!'a'", "!'a'"),
])
def test_any_match_relaxes_only_the_top_level_and(tsquery: str, relaxed: str) -> None:
    assert relax_to_any(tsquery) == relaxed


def _view_target(dsn: str) -> str:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT DISTINCT t.relname FROM pg_rewrite r JOIN pg_depend d ON d.objid = r.oid "
            "JOIN pg_class t ON t.oid = d.refobjid WHERE r.ev_class = 'public.document_chunks'"
            "::regclass AND t.relname <> 'document_chunks'").fetchone()
    assert row is not None
    return str(row[0])
