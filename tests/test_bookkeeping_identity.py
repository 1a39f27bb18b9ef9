"""Two registries in one database, locking the same version strings: every ingest, evaluation,
health report and rollback record is its registry's, and every read sees only its own (the
bookkeeping is keyed by registry identity, not by chunk_version alone)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from registry.commands.data import ingest, reconcile_and_ingest
from registry.commands.quality import check_promotion, compare, dashboard_data, evaluate, health
from registry.commands.reconcile import reconcile
from registry.database import bookkeeping
from tests.database import Database, promote, table_of
from tests.helpers import RegistryRepo
from tests.test_health_eval import Corpus, write_corpus
from tests.test_production_only_by_merge import with_settings

SAME_MOMENT = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
LATER = datetime(2026, 3, 1, 12, 0, 1, tzinfo=UTC)


@pytest.fixture
def corpus(tmp_path: Path) -> Corpus:
    return write_corpus(tmp_path / "corpus")


def two_registries(tmp_path: Path, tokenizer: Path, dsn: str) -> tuple[RegistryRepo, RegistryRepo]:
    """Legacy identities (no `registry:`): public.document_chunks and team_b.document_chunks."""
    team_a = with_settings(tmp_path, tokenizer, "a")
    team_b = with_settings(tmp_path, tokenizer, "b",
                           tables="tables: {schema: team_b, base_name: document_chunks}")
    Database(dsn).execute("CREATE SCHEMA team_b")
    return team_a, team_b


def fill(repo: RegistryRepo, version: str, dsn: str, source: Path) -> None:
    ingest(repo.path, version, source, dsn=dsn, tokenizer_file=repo.tokenizer_file, workers=1)


@pytest.mark.slow
def test_same_versions_in_two_registries_keep_their_own_ingest_eval_and_health_records(
    tmp_path: Path, tokenizer_file: Path, dsn: str, corpus: Corpus
) -> None:
    team_a, team_b = two_registries(tmp_path, tokenizer_file, dsn)
    version = team_a.locked(now=SAME_MOMENT)
    assert team_b.locked(now=SAME_MOMENT) == version
    shadow = team_a.locked(now=LATER, chunk_size=300)
    assert team_b.locked(now=LATER, chunk_size=300) == shadow
    for repo in (team_a, team_b):
        reconcile(repo.path, dsn=dsn)
    fill(team_b, version, dsn, corpus.path)
    evaluate(team_b.path, version, corpus.cases, dsn=dsn)
    fill(team_a, version, dsn, corpus.path)  # after team_b's eval: stale for team_a only
    fill(team_a, shadow, dsn, corpus.path)
    compare(team_a.path, shadow, version, corpus.cases, dsn=dsn)

    # team_b never ingested its shadow: team_a's run of the same version is not its own.
    both = reconcile_and_ingest(team_b.path, corpus.path, dsn=dsn,
                                tokenizer_files=[tokenizer_file], workers=1)
    assert [r.chunk_version for r in both.ingests] == [shadow]
    assert Database(dsn, "team_b").count(table_of(shadow)) > 0

    # team_b's evaluation of `version` is current for team_b (team_a's later ingest is not
    # its rows), and team_a has no evaluation of `version` at all.
    report_b = health(team_b.path, version, dsn=dsn, tokenizer_file=tokenizer_file)
    assert report_b.retrieval is not None and report_b.stale_eval is None
    assert report_b.table.last_ingest is not None
    assert report_b.table.table == f"team_b.{table_of(version)}"
    report_a = health(team_a.path, version, dsn=dsn, tokenizer_file=tokenizer_file)
    assert report_a.retrieval is None and report_a.stale_eval is None

    # The dashboard of team_b shows its own reports and no comparison (team_a compared).
    data_b = dashboard_data(team_b.path, dsn=dsn, fetch=False)
    assert data_b.comparison is None
    mine = next(c for c in data_b.configs if c.chunk_version == version)
    assert mine.reports == 1 and mine.latest is not None
    assert mine.latest["table"] == f"team_b.{table_of(version)}"
    data_a = dashboard_data(team_a.path, dsn=dsn, fetch=False)
    assert data_a.comparison is not None
    assert next(c for c in data_a.configs if c.chunk_version == version).reports == 1


@pytest.mark.slow
def test_the_promotion_watch_reads_only_its_own_registrys_reports(
    tmp_path: Path, tokenizer_file: Path, dsn: str, corpus: Corpus
) -> None:
    team_a, team_b = two_registries(tmp_path, tokenizer_file, dsn)
    version = team_a.locked(now=SAME_MOMENT)
    assert team_b.locked(now=SAME_MOMENT) == version
    for repo in (team_a, team_b):
        reconcile(repo.path, dsn=dsn)
        fill(repo, version, dsn, corpus.path)
        promote(repo, version)
        reconcile(repo.path, dsn=dsn)
    for _ in range(3):
        health(team_a.path, dsn=dsn, tokenizer_file=tokenizer_file, cases_file=corpus.cases)
    health(team_b.path, dsn=dsn, tokenizer_file=tokenizer_file, cases_file=corpus.cases)

    watched_b = check_promotion(team_b.path, dsn=dsn)
    watched_a = check_promotion(team_a.path, dsn=dsn)

    assert watched_b.promotion is not None and watched_a.promotion is not None
    assert watched_b.promotion.table == f"team_b.{table_of(version)}"
    assert len(watched_b.reports) == 1, watched_b.message
    assert len(watched_a.reports) == 3, watched_a.message


IDENTITY_MIGRATION = 6
"""The migration that gave records their registry (later ones run after it in this test)."""


def test_the_migration_gives_existing_records_the_legacy_identity(dsn: str) -> None:
    """Rows written before the records carried a registry are attributed by their table (the
    legacy identity `schema.base_name`), so an upgraded registry keeps its history."""
    db = Database(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        with conn.transaction():
            for number in range(1, IDENTITY_MIGRATION):
                for statement in bookkeeping.MIGRATIONS[number]():
                    conn.execute(statement)
            conn.execute("INSERT INTO chunk_registry.schema_version (version) VALUES (%s)",
                         (IDENTITY_MIGRATION - 1,))
        table = "document_chunks_2026_03_01_120000_v1"
        conn.execute("INSERT INTO chunk_registry.managed_tables (schema_name, table_name, "
                     "chunk_version, config_hash, status, registry) VALUES ('team_b', %s, "
                     "'2026-03-01-120000-v1', 'h', 'shadow', 'team_b.document_chunks')", (table,))
        conn.execute("INSERT INTO chunk_registry.ingest_runs (ingest_run_id, chunk_version, "
                     "status, details) VALUES ('r', '2026-03-01-120000-v1', 'succeeded', "
                     "jsonb_build_object('table', %s::text))", (f"team_b.{table}",))
        conn.execute("INSERT INTO chunk_registry.health_reports (chunk_version, report) VALUES "
                     "('2026-03-01-120000-v1', jsonb_build_object('table', %s::text))",
                     (f"public.{table}",))
        conn.execute("INSERT INTO chunk_registry.eval_runs (chunk_version, kind, cases, metrics, "
                     "details) VALUES ('2026-03-01-120000-v1', 'eval', 1, '{}', "
                     "jsonb_build_object('table', %s::text))", (f"team_b.{table}",))
        bookkeeping.ensure_schema(conn)
    assert db.query("SELECT registry FROM chunk_registry.ingest_runs") == [
        ("team_b.document_chunks",)]
    assert db.query("SELECT registry FROM chunk_registry.eval_runs") == [
        ("team_b.document_chunks",)]
    assert db.query("SELECT registry FROM chunk_registry.health_reports") == [
        ("public.document_chunks",)]
