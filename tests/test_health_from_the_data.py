"""Every alert tells the truth: health is computed from the rows themselves (never from the
counts the writer stored), per prefix policy, and the table's whole shape is compared with
what the reconciler creates (issue 13)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.database import Database, promote, table_of
from tests.helpers import RegistryRepo, run_cli
from tests.test_health_eval import Corpus


def served(registry_repo: RegistryRepo, dsn: str, source: Path, **lock: object) -> str:
    """A config locked, reconciled, ingested from `source` and promoted."""
    version = registry_repo.locked(**lock)
    result = run_cli("reconcile", "--repo", registry_repo.path, "--dsn", dsn, "--source", source,
                     "--tokenizer-file", registry_repo.tokenizer_file)
    assert result.code == 0, result.stdout + result.stderr
    promote(registry_repo, version)
    assert run_cli("reconcile", "--repo", registry_repo.path, "--dsn", dsn).code == 0
    return version


def data_alerts(registry_repo: RegistryRepo, dsn: str) -> list[str]:
    """The critical alerts of production's health report (retrieval left out: no cases)."""
    result = run_cli("health", "--repo", registry_repo.path, "--dsn", dsn, "--format", "json",
                     "--no-record", "--tokenizer-file", registry_repo.tokenizer_file)
    report = json.loads(result.stdout)
    return sorted(a["metric"] for a in report["alerts"] if a["level"] == "critical")


def test_a_clean_policy_b_ingest_is_healthy(
    registry_repo: RegistryRepo, dsn: str, corpus: Corpus
) -> None:
    served(registry_repo, dsn, corpus.path, prefix_policy="B", chunk_size=120)

    assert data_alerts(registry_repo, dsn) == []


def test_a_document_that_begins_with_the_marker_text_is_not_a_leak(
    registry_repo: RegistryRepo, dsn: str, tmp_path: Path
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "plan.md").write_text("Document: the quarterly plan for the registry team.\n\n"
                                  + "The plan covers rivers and stones. " * 20)
    (docs / "notes.md").write_text("Notes about the registry and its meadows. " * 20)

    served(registry_repo, dsn, docs)

    assert data_alerts(registry_repo, dsn) == []


@pytest.mark.parametrize("where", ["middle", "after_first_line"])
def test_a_rows_own_prefix_anywhere_in_bm25_text_is_a_leak_under_policy_a(
    registry_repo: RegistryRepo, dsn: str, corpus: Corpus, where: str
) -> None:
    version = served(registry_repo, dsn, corpus.path)
    table = table_of(version)
    db = Database(dsn)
    prefix = db.query(f"SELECT substr(embedding_text, 1, strpos(embedding_text, bm25_text) - 1) "
                      f"FROM {table} WHERE doc_id = 'doc0.md' AND chunk_index = 0")[0][0]
    assert prefix.strip(), "policy A puts the prefix in embedding_text"
    joined = ("split_part(bm25_text, ' ', 1) || ' ' || %s || substr(bm25_text, "
              "length(split_part(bm25_text, ' ', 1)) + 2)" if where == "middle"
              else "'An opening line' || chr(10) || %s || bm25_text")
    db.execute(f"UPDATE {table} SET bm25_text = {joined} "
               "WHERE doc_id = 'doc0.md' AND chunk_index = 0", (prefix,))

    # The UPDATE left the stored bm25 count behind: the re-tokenized sample says so as well.
    assert data_alerts(registry_repo, dsn) == ["bm25_prefix_leakage", "token_counts"]


def test_a_row_whose_stored_count_lies_is_flagged(
    registry_repo: RegistryRepo, dsn: str, corpus: Corpus
) -> None:
    version = served(registry_repo, dsn, corpus.path)
    long_text = " ".join(["registry"] * 1200)
    Database(dsn).execute(
        f"UPDATE {table_of(version)} SET bm25_text = %s, embedding_text = %s "
        "WHERE doc_id = 'doc1.md' AND chunk_index = 1", (long_text, long_text))

    assert "over_budget_chunks" in data_alerts(registry_repo, dsn)
