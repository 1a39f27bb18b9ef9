"""Production changes only by a merge (issue 13): an ingest never replaces the rows production
serves unless asked for, a set-but-empty DSN never falls back to a throwaway database, and
health says so when git and the view disagree on production. Real git and PostgreSQL."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from tests.database import Database, promote, table_of
from tests.helpers import RegistryRepo, run_cli
from tests.test_health_eval import Corpus, write_corpus


def reconcile(repo: RegistryRepo, dsn: str, *args: str) -> tuple[int, str]:
    result = run_cli("reconcile", "--repo", repo.path, "--dsn", dsn, *args)
    return result.code, result.stdout + result.stderr


@pytest.fixture
def corpus(tmp_path: Path) -> Corpus:
    return write_corpus(tmp_path / "corpus")


@pytest.mark.slow
def test_ingest_into_the_served_table_is_refused_unless_asked_for(
    registry_repo: RegistryRepo, dsn: str, corpus: Corpus, tmp_path: Path
) -> None:
    version = registry_repo.locked()
    tokenizer = ("--tokenizer-file", str(registry_repo.tokenizer_file))
    assert reconcile(registry_repo, dsn, "--source", str(corpus.path), *tokenizer)[0] == 0
    promote(registry_repo, version)
    assert reconcile(registry_repo, dsn)[0] == 0
    before = Database(dsn).count(table_of(version))
    other = write_corpus(tmp_path / "other", seed=99)

    refused = run_cli("ingest", version, "--repo", registry_repo.path, "--dsn", dsn,
                      "--source", other.path, *tokenizer)

    assert refused.code not in (0, 3), refused.stdout + refused.stderr
    assert "production" in refused.stderr
    assert Database(dsn).count(table_of(version)) == before


@pytest.mark.parametrize("value", ["", "   "])
def test_a_set_but_empty_dsn_is_an_error_never_the_embedded_fallback(
    registry_repo: RegistryRepo, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    registry_repo.locked()
    monkeypatch.setenv("REGISTRY_DSN", value)

    result = run_cli("reconcile", "--repo", registry_repo.path)

    assert result.code not in (0, 3)
    assert "REGISTRY_DSN" in result.stderr and "empty" in result.stderr
    assert "embedded" not in result.stdout


def test_in_ci_the_embedded_fallback_is_refused_unless_asked_for(
    registry_repo: RegistryRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry_repo.locked()
    monkeypatch.setenv("CI", "true")

    result = run_cli("reconcile", "--repo", registry_repo.path)

    assert result.code not in (0, 3)
    assert "REGISTRY_DSN" in result.stderr


@pytest.mark.slow
def test_production_that_git_and_the_view_disagree_on_is_a_critical_alert(
    registry_repo: RegistryRepo, dsn: str, corpus: Corpus, tmp_path: Path
) -> None:
    """A promotion the reconciler refuses (an empty table) leaves the view on the old table:
    health says so as a critical alert naming both, instead of reporting on the repo's idea."""
    tokenizer = ("--tokenizer-file", str(registry_repo.tokenizer_file))
    v1 = registry_repo.locked()
    assert reconcile(registry_repo, dsn, "--source", str(corpus.path), *tokenizer)[0] == 0
    promote(registry_repo, v1)
    assert reconcile(registry_repo, dsn)[0] == 0
    v2 = registry_repo.locked(chunk_size=300)
    promote(registry_repo, v2)
    refused, _ = reconcile(registry_repo, dsn)
    assert refused != 0
    assert Database(dsn).view_target() == [table_of(v1)]

    health = run_cli("health", "--repo", registry_repo.path, "--dsn", dsn, "--format", "json",
                     "--no-record", *tokenizer)

    alerts = json.loads(health.stdout)["alerts"]
    assert health.code != 0
    assert any(a["level"] == "critical" and v1 in a["message"] and v2 in a["message"]
               for a in alerts), alerts

    out = tmp_path / "site"
    built = run_cli("dashboard", "--out", out, "--repo", registry_repo.path, "--dsn", dsn,
                    "--no-fetch")
    assert built.code == 0, built.stderr
    page = (out / "index.html").read_text()
    shown = re.search(r'<li class="(\w+)" id="disagreement">(.*?)</li>', page)
    assert shown is not None
    assert shown.group(1) == "critical" and v1 in shown.group(2) and v2 in shown.group(2)
    assert page.index('id="production"') < page.index('id="alerts"')


@pytest.mark.slow
def test_an_ingest_into_production_when_asked_for_is_a_document_level_change(
    registry_repo: RegistryRepo, dsn: str, corpus: Corpus, tmp_path: Path
) -> None:
    """--into-production writes only what changed (one edited, one new document), records
    it, makes the evaluation measured before it stale, and refuses a change above
    --max-change, writing nothing."""
    version = registry_repo.locked()
    tokenizer = ("--tokenizer-file", str(registry_repo.tokenizer_file))
    assert reconcile(registry_repo, dsn, "--source", str(corpus.path), *tokenizer)[0] == 0
    promote(registry_repo, version)
    assert reconcile(registry_repo, dsn)[0] == 0
    table = table_of(version)
    db = Database(dsn)
    untouched = db.query(f"SELECT id, created_at FROM {table} WHERE doc_id = 'doc0.md' "
                         "ORDER BY chunk_index")
    assert run_cli("eval", version, "--repo", registry_repo.path, "--dsn", dsn, "--cases",
                   corpus.cases).code == 0
    edited = tmp_path / "edited"
    shutil.copytree(corpus.path, edited)
    (edited / "doc1.md").write_text((edited / "doc1.md").read_text()
                                    + "\n## Errata\n\n" + "The registry keeps rivers. " * 30)
    (edited / "new.md").write_text("# New\n\n" + "A new registry document about stones. " * 30)

    applied = run_cli("ingest", version, "--repo", registry_repo.path, "--dsn", dsn,
                      "--source", edited, "--into-production", "--format", "json", *tokenizer)

    assert applied.code == 0, applied.stdout + applied.stderr
    report = json.loads(applied.stdout)
    assert (report["documents_added"], report["documents_changed"],
            report["documents_removed"], report["documents_unchanged"]) == (1, 1, 0, 7)
    assert db.query(f"SELECT id, created_at FROM {table} WHERE doc_id = 'doc0.md' "
                    "ORDER BY chunk_index") == untouched
    assert db.query(f"SELECT count(DISTINCT doc_id) FROM {table}") == [(9,)]
    recorded = db.query("SELECT details->>'documents_changed' FROM chunk_registry.ingest_runs "
                        "WHERE status = 'succeeded' ORDER BY id DESC LIMIT 1")
    assert recorded == [("1",)]
    health = json.loads(run_cli("health", "--repo", registry_repo.path, "--dsn", dsn,
                                "--format", "json", "--no-record", *tokenizer).stdout)
    assert health["oracle_hit_rate"] is None
    assert any(a["metric"] == "retrieval" and "before the ingest" in a["message"]
               for a in health["alerts"]), health["alerts"]

    truncated = tmp_path / "truncated"
    shutil.copytree(edited, truncated)
    for name in ("doc2.md", "doc3.md", "doc4.md"):
        (truncated / name).unlink()
    rows = db.count(table)
    refused = run_cli("ingest", version, "--repo", registry_repo.path, "--dsn", dsn,
                      "--source", truncated, "--into-production", *tokenizer)

    assert refused.code not in (0, 3), refused.stdout
    assert "--max-change" in refused.stderr and "3 of the 9 documents" in refused.stderr
    assert db.count(table) == rows
