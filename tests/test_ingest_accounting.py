"""Every document of the source is accounted for: ingested (rows under its doc_id), or named
in the run record's `details.accounted` as skipped (with the reason), merged into another
document (named), or without a chunk. Nothing vanishes behind "near-duplicates removed"."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import run_cli, training_text
from tests.test_ingest import Shadow, shadow  # noqa: F401  (the fixture)


def write_jsonl(path: Path, docs: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(doc) + "\n" for doc in docs))
    return path


def account(target: Shadow, report: Any, names: list[str]) -> dict[str, dict[str, Any]]:
    """Check that every name is ingested xor accounted for, and return the accounted ones."""
    [run] = target.runs()[-1:]
    accounted = {entry["doc"]: entry for entry in run["details"]["accounted"]}
    in_table = {row[0] for row in target.rows("doc_id")}
    assert not in_table & set(accounted), "a document is both ingested and not"
    assert set(names) <= in_table | set(accounted), set(names) - in_table - set(accounted)
    assert report.ingested == len(in_table)
    assert report.ingested + report.not_ingested == len(names)
    assert run["details"]["ingested"] == report.ingested
    return accounted


def prose(number: int, words: int = 80) -> str:
    texts = [t for t in training_text() if len(t.split()) > words]
    return " ".join(texts[number % len(texts)].split()[:words])


@pytest.mark.parametrize("dedup", ["document", "corpus"])
def test_a_document_equal_to_another_is_named_as_merged_into_it(
    shadow: Shadow, tmp_path: Path, dedup: str  # noqa: F811
) -> None:
    docs = [{"doc_id": "original", "title": "T", "text": prose(1)},
            {"doc_id": "copy", "title": "T", "text": prose(1)},
            {"doc_id": "other", "title": "T", "text": prose(2)}]
    report = shadow.ingest(write_jsonl(tmp_path / "d.jsonl", docs), dedup=dedup)
    accounted = account(shadow, report, ["original", "copy", "other"])
    assert accounted["copy"]["outcome"] == "merged"
    assert accounted["copy"]["into"] == ["original"]
    assert "original" in accounted["copy"]["reason"]


def test_a_duplicate_doc_id_is_skipped_with_its_line_and_the_first_kept(
    shadow: Shadow, tmp_path: Path  # noqa: F811
) -> None:
    docs = [{"doc_id": "a", "text": prose(1)}, {"doc_id": "b", "text": prose(2)},
            {"doc_id": "a", "text": prose(3)}, {"doc_id": 7, "text": prose(4)},
            {"doc_id": "7", "text": prose(5)}]
    report = shadow.ingest(write_jsonl(tmp_path / "d.jsonl", docs))
    accounted = account(shadow, report, ["a", "b", "7", "d.jsonl:3", "d.jsonl:5"])
    assert accounted["d.jsonl:3"]["outcome"] == "skipped"
    assert "doc_id a is already used at line 1" in accounted["d.jsonl:3"]["reason"]
    assert "already used at line 4" in accounted["d.jsonl:5"]["reason"]
    rows = shadow.rows("doc_id", "chunk_index")
    assert len(rows) == len(set(rows)), "no colliding (doc_id, chunk_index)"
    first_chunk = next(text for doc, text in shadow.rows("doc_id", "bm25_text") if doc == "a")
    assert " ".join(prose(1).split()[:5]) in first_chunk, "the first line with the id is kept"


def test_documents_without_a_chunk_are_named_with_the_reason(
    shadow: Shadow, tmp_path: Path  # noqa: F811
) -> None:
    docs = [{"doc_id": "tiny", "text": "two words"}, {"doc_id": "heading", "text": "# Title\n"},
            {"doc_id": "real", "text": prose(3)}]
    report = shadow.ingest(write_jsonl(tmp_path / "d.jsonl", docs))
    accounted = account(shadow, report, ["tiny", "heading", "real"])
    assert accounted["tiny"]["outcome"] == accounted["heading"]["outcome"] == "no_chunk"
    assert accounted["tiny"]["reason"].startswith("no chunk: ")


@pytest.mark.slow
def test_a_random_corpus_of_copies_ids_and_scraps_accounts_for_every_document(
    shadow: Shadow, tmp_path: Path  # noqa: F811
) -> None:
    """Seeded: 120 documents drawn from originals, exact copies, re-used ids, scraps too
    small to chunk and malformed lines; under both dedup modes the run names every one."""
    rng = random.Random(15)
    lines: list[str] = []
    names: list[str] = []
    used: list[str] = []
    for number in range(120):
        roll = rng.random()
        doc_id = f"doc{number}"
        if roll < 0.15 and used:
            doc_id = rng.choice(used)  # a re-used id: skipped at this line
        text = prose(rng.randrange(6)) if roll < 0.7 else "scrap" if roll < 0.85 else prose(number)
        if roll > 0.95:
            lines.append('{"doc_id": "broken", "text": ')
        else:
            lines.append(json.dumps({"doc_id": doc_id, "title": "Shared", "text": text}))
        if roll > 0.95 or doc_id in used:
            names.append(f"d.jsonl:{number + 1}")
        else:
            names.append(doc_id)
            used.append(doc_id)
    source = tmp_path / "d.jsonl"
    source.write_text("\n".join(lines) + "\n")
    for dedup in ("document", "corpus"):
        report = shadow.ingest(source, dedup=dedup)
        accounted = account(shadow, report, names)
        outcomes = {entry["outcome"] for entry in accounted.values()}
        assert outcomes == {"skipped", "merged", "no_chunk"}, outcomes
        for entry in accounted.values():
            if entry["outcome"] == "merged":
                assert entry["into"] and "?" not in entry["into"]


def test_cli_names_what_was_not_ingested(shadow: Shadow, tmp_path: Path) -> None:  # noqa: F811
    docs = [{"doc_id": "original", "title": "T", "text": prose(1)},
            {"doc_id": "copy", "title": "T", "text": prose(1)}]
    source = write_jsonl(tmp_path / "d.jsonl", docs)
    result = run_cli("ingest", shadow.version, "--source", source, "--repo", shadow.repo.path,
                     "--dsn", shadow.dsn, "--tokenizer-file", shadow.repo.tokenizer_file,
                     "--workers", "1")
    assert result.code == 0, result.stderr
    assert "not ingested: copy: merged (into original)" in result.stdout
