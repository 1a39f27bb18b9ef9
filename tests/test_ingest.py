"""Ingest, as a user runs it: lock a config, reconcile (the table appears), ingest a corpus,
then check the table, the run record and what happened to bad input. Real git, real
PostgreSQL (embedded, and REGISTRY_TEST_DSN when set), a real offline tokenizer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from registry.commands.data import ingest
from registry.commands.reconcile import reconcile
from registry.errors import Refused, TokenizerUnavailable
from registry.ingest.chunker import Document
from registry.ingest.pipeline import IngestFailed, Progress, SourceProblem, read_source
from registry.tokenizer import load_tokenizer
from tests.database import Database, promote, table_of
from tests.helpers import RegistryRepo, build_tokenizer, run_cli, training_text


@dataclass
class Shadow:
    repo: RegistryRepo
    version: str
    dsn: str

    @property
    def table(self) -> str:
        return "document_chunks_" + self.version.replace("-", "_")

    def query(self, query: str | sql.Composed, params: Any = None) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            return conn.execute(query, params).fetchall()

    def rows(self, *columns: str) -> list[tuple[Any, ...]]:
        return self.query(sql.SQL("SELECT {} FROM {} ORDER BY doc_id, chunk_index").format(
            sql.SQL(", ").join(map(sql.Identifier, columns)), sql.Identifier(self.table)))

    def runs(self) -> list[dict[str, Any]]:
        keys = ("status", "documents", "chunks", "duplicates_removed", "over_budget", "source",
                "details", "ingest_run_id")
        found = self.query(sql.SQL("SELECT {} FROM chunk_registry.ingest_runs ORDER BY id").format(
            sql.SQL(", ").join(map(sql.Identifier, keys))))
        return [dict(zip(keys, row, strict=True)) for row in found]

    def ingest(self, source: Path, **options: Any) -> Any:
        options.setdefault("workers", 1)
        return ingest(self.repo.path, self.version, source, dsn=self.dsn,
                      tokenizer_file=self.repo.tokenizer_file, **options)


@pytest.fixture
def shadow(registry_repo: RegistryRepo, dsn: str) -> Shadow:
    """A locked config merged on main and reconciled: its empty shadow table exists."""
    version = registry_repo.locked(chunk_size=120, overlap_ratio=0.1)
    reconcile(registry_repo.path, dsn=dsn)
    return Shadow(registry_repo, version, dsn)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """Real English prose (stdlib docstrings) as markdown and text files, nested, plus files
    an ingest must ignore."""
    root = tmp_path / "corpus"
    texts = [t for t in training_text() if len(t) > 300][:60]
    for number in range(12):
        part = texts[number * 5: number * 5 + 5]
        folder = root / ("guides" if number % 2 else "reference")
        folder.mkdir(parents=True, exist_ok=True)
        body = "\n\n".join(f"## Part {i}\n\n{text}" for i, text in enumerate(part))
        (folder / f"doc{number:02}.md").write_text(f"# Document {number}\n\n{body}\n")
    (root / "notes.txt").write_text("\n\n".join(texts[:3]))
    (root / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    (root / ".git").mkdir()
    (root / ".git" / "HEAD.md").write_text("# not part of the corpus\n\nref: main\n")
    return root


def count_tokens(tokenizer: Any, text: str, special: bool) -> int:
    return len(tokenizer.encode(text, add_special_tokens=special).ids)


# ---------------------------------------------------------------------------------------------
# the happy path


def test_ingest_fills_the_shadow_table_with_rows_that_recount_exactly(
    shadow: Shadow, corpus: Path
) -> None:
    report = shadow.ingest(corpus)

    rows = shadow.rows("doc_id", "chunk_index", "embedding_text", "bm25_text",
                       "embedding_token_count", "bm25_token_count", "chunk_version",
                       "ingest_run_id")
    assert report.documents == 13 and report.chunks == len(rows) > 30
    assert report.ignored_files == 1 and report.skipped == 0
    assert {r[0] for r in rows} == {f"{d}/doc{n:02}.md" for n in range(12)
                                    for d in ("guides" if n % 2 else "reference",)} | {"notes.txt"}
    tokenizer = load_tokenizer(shadow.repo.tokenizer_file)
    config_run_id = shadow.runs()[0]["ingest_run_id"]
    for _doc, _index, embedding, bm25, embedding_count, bm25_count, version, run_id in rows:
        assert embedding_count == count_tokens(tokenizer, embedding, special=True) <= 512
        assert bm25_count == count_tokens(tokenizer, bm25, special=False) <= 120
        assert embedding.startswith("Document: ") and embedding.endswith(bm25)
        assert not bm25.startswith("Document: ")
        assert (version, run_id) == (shadow.version, config_run_id)
    by_doc: dict[str, list[int]] = {}
    for doc, index, *_ in rows:
        by_doc.setdefault(doc, []).append(index)
    assert all(indexes == list(range(len(indexes))) for indexes in by_doc.values())
    assert shadow.query(sql.SQL("SELECT count(*) FROM {} WHERE bm25_tsv @@ "
                                "to_tsquery('english', 'return')").format(
                                    sql.Identifier(shadow.table)))[0][0] > 0
    [run] = shadow.runs()
    assert run["status"] == "succeeded"
    assert (run["documents"], run["chunks"]) == (13, len(rows))
    assert run["source"] == str(corpus)
    assert run["details"]["skipped"] == 0 and run["details"]["tokens"] > 0
    assert run["details"]["dedup"] == "document"
    assert shadow.query("SELECT to_regclass('public.document_chunks')")[0][0] is None


def test_rerunning_replaces_the_run_atomically_and_readers_never_see_it_empty(
    shadow: Shadow, corpus: Path
) -> None:
    first = shadow.ingest(corpus)
    first_ids = {r[0] for r in shadow.rows("id")}
    seen_mid_run: list[int] = []

    def look(_progress: Progress) -> None:
        seen_mid_run.append(shadow.query(sql.SQL("SELECT count(*) FROM {}").format(
            sql.Identifier(shadow.table)))[0][0])

    second = shadow.ingest(corpus, on_progress=look)

    assert seen_mid_run and set(seen_mid_run) == {first.chunks}
    assert second.replaced_rows == first.chunks
    assert {r[0] for r in shadow.rows("id")} == first_ids
    assert [r["status"] for r in shadow.runs()] == ["succeeded", "succeeded"]


def test_workers_and_corpus_dedup_agree_with_one_process(shadow: Shadow, tmp_path: Path) -> None:
    """Two documents with the same text under different titles: per document both stay,
    corpus-wide the second goes; two worker processes give exactly the rows one process does."""
    texts = [t for t in training_text() if len(t) > 400][:30]
    source = tmp_path / "corpus.jsonl"
    lines = [{"doc_id": f"d{i}", "title": f"Doc {i}", "text": text} for i, text in enumerate(texts)]
    lines.append({"doc_id": "copy", "title": "A copy", "text": texts[3]})
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))

    per_document = shadow.ingest(source, dedup="document")
    assert "copy" in {r[0] for r in shadow.rows("doc_id")}
    one = shadow.ingest(source, dedup="corpus")
    one_rows = shadow.rows("id", "doc_id", "chunk_index")
    two = shadow.ingest(source, dedup="corpus", workers=2)

    assert shadow.rows("id", "doc_id", "chunk_index") == one_rows
    assert "copy" not in {r[1] for r in one_rows}
    assert one.corpus_duplicates == two.corpus_duplicates >= 1
    assert one.chunks == two.chunks == per_document.chunks - one.corpus_duplicates
    assert shadow.runs()[-1]["details"]["workers"] == 2


def test_identical_chunks_of_two_documents_become_one_row(shadow: Shadow, tmp_path: Path) -> None:
    text = " ".join(training_text()[5].split()[:60])
    source = tmp_path / "twins.jsonl"
    source.write_text("".join(json.dumps({"doc_id": d, "title": "Same", "text": text}) + "\n"
                              for d in ("a", "b")))
    report = shadow.ingest(source)
    assert report.identical_ids == report.chunks >= 1
    assert {r[0] for r in shadow.rows("doc_id")} == {"a"}


# ---------------------------------------------------------------------------------------------
# bad input: the documented rule


def bad_directory(root: Path) -> Path:
    root.mkdir()
    (root / "good.md").write_text("# Good\n\n" + training_text()[0])
    (root / "latin1.md").write_bytes("caf\xe9 au lait, line one\nline two\n".encode("latin-1"))
    (root / "binary.txt").write_bytes(b"text\nthen\x00\x01\x02 binary")
    (root / "empty.md").write_text("  \n\n\t\n")
    (root / "folder.md").mkdir()
    os.mkfifo(root / "pipe.md")
    (root / os.fsdecode(b"bad-\xff-name.md")).write_text("# Bad name\n\nwords and words\n")
    (root / "gone.md").symlink_to(root / "does-not-exist.md")
    (root / "one-line.txt").write_text("word " * 1200)
    return root


def test_bad_files_are_skipped_with_their_path_and_line(tmp_path: Path) -> None:
    items = list(read_source(bad_directory(tmp_path / "src"), max_document_bytes=4096))
    problems = {p.where.split(":")[0]: p for p in items if isinstance(p, SourceProblem)}
    documents = [d for d in items if isinstance(d, Document)]
    assert [d.doc_id for d in documents] == ["good.md"]
    assert documents[0].title == "Good" and documents[0].kind == "markdown"
    assert problems["latin1.md"].where == "latin1.md:1"
    assert "not valid UTF-8" in problems["latin1.md"].message
    assert problems["binary.txt"].where == "binary.txt:2"
    assert "NUL" in problems["binary.txt"].message
    assert problems["empty.md"].message == "empty document"
    assert "not a regular file" in problems["pipe.md"].message
    assert "cannot read" in problems["gone.md"].message
    assert "above the 0 MB limit" in problems["one-line.txt"].message or \
        "MB limit" in problems["one-line.txt"].message
    assert problems["bad-\\udcff-name.md"].message == "file name is not valid UTF-8"
    assert len(problems) == 7


def test_bad_jsonl_lines_are_skipped_with_their_line_numbers(tmp_path: Path) -> None:
    source = tmp_path / "docs.jsonl"
    with source.open("wb") as out:
        out.write(b'{"doc_id": "a", "text": "first document"}\n')
        out.write(b'{"doc_id": "b", "text": \n')
        out.write(b'["not", "an", "object"]\n')
        out.write(b'{"doc_id": "c"}\n')
        out.write(b'{"doc_id": "d", "text": "caf\xe9"}\n')
        out.write(b"\n")
        out.write(b'{"doc_id": "huge", "text": "' + b"x" * (50 * 1024 * 1024) + b'"}\n')
        out.write(b'{"doc_id": "e", "text": "lone \\ud800 surrogate"}\n')
        out.write(b'{"doc_id": "f\\u0000", "text": "nul in the id"}\n')
        out.write(b'{"doc_id": 7, "title": "Seven", "text": "last", "kind": "text"}\n')
    items = list(read_source(source))
    assert [(d.doc_id, d.title, d.kind) for d in items if isinstance(d, Document)] == [
        ("a", "a", "markdown"), ("7", "Seven", "text")]
    problems = [(p.where, p.message) for p in items if isinstance(p, SourceProblem)]
    assert [where for where, _ in problems] == [f"docs.jsonl:{n}" for n in (2, 3, 4, 5, 7, 8, 9)]
    assert problems[0][1].startswith("malformed JSON")
    assert "not an object" in problems[1][1]
    assert "text is missing" in problems[2][1]
    assert "UTF-8" in problems[3][1]
    assert "longer than the 17 MB document limit" in problems[4][1]
    assert "unpaired surrogate" in problems[5][1] and problems[6][1].startswith("doc_id holds")


def test_a_run_skips_bad_documents_and_records_them(shadow: Shadow, tmp_path: Path) -> None:
    report = shadow.ingest(bad_directory(tmp_path / "src"), max_document_bytes=4096)
    assert (report.documents, report.skipped) == (1, 7)
    [run] = shadow.runs()
    assert run["status"] == "succeeded"
    assert run["details"]["skipped"] == 7
    assert any(p.startswith("latin1.md:1: not valid UTF-8") for p in run["details"]["problems"])
    assert {r[0] for r in shadow.rows("doc_id")} == {"good.md"}


def test_strict_fails_the_run_and_leaves_the_previous_rows(
    shadow: Shadow, corpus: Path, tmp_path: Path
) -> None:
    shadow.ingest(corpus)
    before = shadow.rows("id")
    with pytest.raises(IngestFailed, match=r"udcff-name.md: file name is not valid UTF-8.*nothing was written"):
        shadow.ingest(bad_directory(tmp_path / "src"), strict=True)
    assert shadow.rows("id") == before
    assert [r["status"] for r in shadow.runs()] == ["succeeded", "failed"]
    assert "file name is not valid UTF-8" in shadow.runs()[-1]["details"]["error"]


def test_a_source_without_usable_documents_fails_and_writes_nothing(
    shadow: Shadow, tmp_path: Path
) -> None:
    source = tmp_path / "images"
    source.mkdir()
    (source / "a.png").write_bytes(b"\x89PNG")
    (source / "b.txt").write_bytes(b"\x00\x01")
    with pytest.raises(IngestFailed, match="no usable document"):
        shadow.ingest(source)
    with pytest.raises(IngestFailed, match="does not exist"):
        shadow.ingest(tmp_path / "missing")
    tiny = tmp_path / "tiny.jsonl"
    tiny.write_text('{"doc_id": "t", "text": "too short"}\n')
    with pytest.raises(IngestFailed, match="gave no chunk"):
        shadow.ingest(tiny)
    assert shadow.rows("id") == []
    assert [r["status"] for r in shadow.runs()] == ["failed", "failed", "failed"]


# ---------------------------------------------------------------------------------------------
# refusals, the CLI, reconcile --source


def test_a_tokenizer_other_than_the_locked_one_is_refused(
    registry_repo: RegistryRepo, tmp_path: Path, corpus: Path
) -> None:
    version = registry_repo.locked()
    other = build_tokenizer(tmp_path / "other" / "tokenizer.json", vocab_size=3000)
    with pytest.raises(TokenizerUnavailable, match="was locked with sha256:"):
        ingest(registry_repo.path, version, corpus, dsn="postgresql://unused",
               tokenizer_file=other)
    result = run_cli("ingest", version, "--source", corpus, "--repo", registry_repo.path,
                     "--tokenizer-file", other, "--dsn", "postgresql://unused")
    assert result.code == TokenizerUnavailable.exit_code
    assert result.stderr.startswith("error: --tokenizer-file: tokenizer at ")
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_locked_config_without_its_table_is_refused(
    registry_repo: RegistryRepo, dsn: str, corpus: Path
) -> None:
    version = registry_repo.locked()
    with pytest.raises(Refused, match=r"does not exist.*registry reconcile"):
        ingest(registry_repo.path, version, corpus, dsn=dsn,
               tokenizer_file=registry_repo.tokenizer_file, workers=1)


def test_cli_ingest_reports_json_and_warns_about_skipped_files(
    shadow: Shadow, tmp_path: Path
) -> None:
    source = bad_directory(tmp_path / "src")
    result = run_cli("ingest", shadow.version, "--source", source, "--repo", shadow.repo.path,
                     "--dsn", shadow.dsn, "--tokenizer-file", shadow.repo.tokenizer_file,
                     "--workers", "1", "--max-document-mb", "0.004", "--format", "json")
    assert result.code == 0, result.stderr
    data = json.loads(result.stdout)
    assert (data["documents"], data["skipped"], data["table"]) == (
        1, 7, f"public.{shadow.table}")
    assert "warning: skipped latin1.md:1: not valid UTF-8 (byte 3) (save it as UTF-8)" in \
        result.stderr
    text = run_cli("ingest", shadow.version, "--source", source, "--repo", shadow.repo.path,
                   "--dsn", shadow.dsn, "--tokenizer-file", shadow.repo.tokenizer_file,
                   "--workers", "1", "--strict")
    assert text.code == IngestFailed.exit_code
    assert text.stderr.splitlines()[-1].startswith("error: ")


def test_reconcile_source_ingests_every_shadow_table_without_a_successful_run(
    registry_repo: RegistryRepo, dsn: str, corpus: Path
) -> None:
    """Lock two configs and promote one, then one command: tables created, both filled, and
    production swapped to the promoted one (the swap waits for its rows)."""
    first = registry_repo.locked(chunk_size=200)
    second = registry_repo.locked(chunk_size=300, prefix_policy="B")
    promote(registry_repo, first)
    args = ("reconcile", "--repo", registry_repo.path, "--dsn", dsn, "--source", corpus,
            "--tokenizer-file", registry_repo.tokenizer_file, "--workers", "1")

    result = run_cli(*args, "--format", "json")

    assert result.code == 0, result.stderr
    data = json.loads(result.stdout)
    assert sorted(r["chunk_version"] for r in data["ingests"]) == sorted([first, second])
    assert all(r["chunks"] > 0 for r in data["ingests"])
    assert Database(dsn).view_target() == [table_of(first)]
    again = run_cli(*args)
    assert again.code == 0
    assert "Every shadow table already has a successful ingest." in again.stdout


@pytest.fixture(autouse=True)
def _no_stray_tokenizer_env() -> Iterator[None]:
    """Worker processes must not inherit a parallelism setting from an earlier test."""
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    yield
    if before is None:
        os.environ.pop("TOKENIZERS_PARALLELISM", None)
    else:
        os.environ["TOKENIZERS_PARALLELISM"] = before


def test_a_chunking_worker_imports_the_chunker_not_the_pipeline() -> None:
    """A spawned worker unpickles `init_worker` and imports its module first thing, on the
    cores the chunking needs: psycopg, git and the bookkeeping (a third of a second of CPU per
    worker) stay in the parent."""
    probe = ("import sys\n"
             "from registry.ingest.workers import init_worker\n"
             "heavy = sorted(m for m in ('psycopg', 'git', 'jsonschema', 'registry.ingest.pipeline',"
             " 'registry.database.bookkeeping') if m in sys.modules)\n"
             "print(','.join(heavy))\n")
    found = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                           check=True, timeout=60)
    assert found.stdout.strip() == ""


def test_workers_read_the_chunker_from_a_private_file_gone_after_the_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The spec (config and tokenizer JSON) reaches spawned workers through a file only its
    user can read, not down the spawn pipe (which held the ingest until each worker had read
    it); two workers chunk as one process does, and the file is gone after the run."""
    import pickle
    import stat

    from registry.ingest.pipeline import chunk_corpus
    from registry.ingest.workers import ChunkerSpec, shipped
    from tests.helpers import locked_config

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # TMPDIR is read again
    tokenizer_json = build_tokenizer(tmp_path / "tokenizer.json").read_text()
    spec = ChunkerSpec(locked_config(chunk_size=120), tokenizer_json, corpus=True)
    with shipped(spec) as path:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        with open(path, "rb") as file:
            assert pickle.load(file) == spec
    documents = [Document(f"d{n}", f"T{n}", text, "text")
                 for n, text in enumerate(training_text()[:12])]
    batches = [documents[:4], documents[4:9], documents[9:]]

    def chunked(workers: int) -> list[list[str]]:
        return [[c.id for r in results for c in r.chunks]
                for _, results in chunk_corpus(spec, iter(batches), workers)]

    assert chunked(2) == chunked(1)
    assert sum(map(len, chunked(1))) > 20
    assert not list(tmp_path.glob("registry-chunker-*"))


FULL_DISK = """
import resource, signal, sys
from registry.cli.app import main
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (16384, 16384))
main(sys.argv[1:])
"""


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_full_disk_is_one_line_and_its_own_exit_code_never_unexpected(
        shadow: Shadow, corpus: Path, workers: str) -> None:
    """A write that cannot be made (a full disk, a quota, a file size limit; here the limit)
    is the machine's state, not a bug: one line naming TMPDIR, exit 22, and the run written
    nowhere. With two workers the chunker's spec file meets it first, with one the corpus
    dedup's shingle file."""
    found = subprocess.run(
        [sys.executable, "-c", FULL_DISK, "ingest", shadow.version, "--source", str(corpus),
         "--repo", str(shadow.repo.path), "--dsn", shadow.dsn, "--tokenizer-file",
         str(shadow.repo.tokenizer_file), "--dedup", "corpus", "--workers", workers],
        capture_output=True, text=True, timeout=120)
    assert found.returncode == 22, found.stderr
    lines = found.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot write"), found.stderr
    assert "TMPDIR" in lines[0] and "Traceback" not in found.stderr
    assert shadow.rows("id") == []


def test_the_database_server_out_of_disk_space_is_the_same_exit_code() -> None:
    """PostgreSQL's disk_full (SQLSTATE 53100), escaped from any command, is the machine's
    state as a local full disk is: exit 22, not an unexpected error."""
    from psycopg import errors as pg_errors

    from registry.database.connection import explain
    from registry.errors import OutOfSpace

    known = explain(pg_errors.DiskFull("could not extend file \"base/5/16384\": No space left"))
    assert isinstance(known, OutOfSpace) and known.exit_code == 22
    assert "out of disk space" in str(known)
