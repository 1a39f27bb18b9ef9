"""Ingest: read a corpus, chunk it exactly as one locked config says, load it with binary COPY.

The source is a directory of .md/.txt files (recursive, hidden directories skipped, other files
ignored) or a JSONL file of `{doc_id, title?, text, kind?}` objects. It is streamed: documents
are read, chunked (in worker processes) and copied batch by batch, with a bounded number of
batches in flight, so memory stays flat however large the corpus is.

Bad input, the rule:
- A document that cannot be used is SKIPPED: an unreadable file, bytes that are not UTF-8, a
  binary file (a NUL byte), an empty document, one larger than `max_document_bytes` (e.g. a
  50 MB single line), and in JSONL a malformed line, a line that is not an object, or one
  without a string `doc_id`/`text`. Each is reported as `path[:line]: what (fix)`, counted in
  the run record (`details.skipped`, first problems in `details.problems`), and the run goes on.
- The run FAILS, writing nothing, when the source itself cannot be read, when no usable
  document is left, when the documents give no chunk at all (an empty run never replaces a
  full one), or (with `strict`) at the first bad document.
- All writes of a run happen in one transaction committed at the very end: a failure at any
  point (bad input under `strict`, a database error, Ctrl-C) leaves the table exactly as it was,
  and re-running an ingest_run_id replaces its rows atomically (readers never see it empty).

The tables readers are served (production's, and a running experiment's candidate's: every
`served_tables` row still open), and the previous production (the rollback target), are not
refilled that way: an ingest into them is refused unless asked for (`into_production`), and
then it is a document-level change. The new rows are staged, each document's content hash (its
chunk ids in order: an id is the hash of the chunk's text under the config) compared with the
rows already there, and only the documents added, changed or removed are written, in the same
one transaction, the counts recorded in the run. A change that would remove or replace more than
`max_change` of the documents (default 25%) is refused: the empty-state guard of GitOps
controllers (Argo CD refuses an automated sync that would prune every resource), applied to
data. A routine refresh touches a few percent; a wrong or truncated source touches most.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import mmap
import multiprocessing
import os
import stat
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np
import numpy.typing as npt
import psycopg
from psycopg import sql

from registry import faults
from registry.config import LockedConfig
from registry.database import bookkeeping
from registry.database.chunk_table import (
    COPY_TYPES,
    EMBEDDING_COLUMN,
    ROW_COLUMNS,
    VECTOR_ON_SEARCH_PATH,
    ChunkTable,
    chunk_table,
    require_table,
)
from registry.database.connection import (
    connect,
    database_error,
    ingest_lock_key,
)
from registry.errors import (
    Busy,
    Refused,
    RegistryError,
    TokenizerUnavailable,
    UsageError,
    storable,
)
from registry.ingest.chunker import (
    EMPTY_SHINGLES,
    MIN_CHUNK_TOKENS,
    Chunk,
    ChunkedDocument,
    Chunker,
    CorpusDeduplicator,
    Document,
    Growing,
    KeyMatrix,
    Shingles,
    ShingleSets,
    spans,
)
from registry.ingest.workers import (
    ChunkerSpec,
    chunk_in_worker,
    init_worker,
    shipped,
    tokenizer_from,
)
from registry.repository.state import RegistryState
from registry.tokenizer import file_hash, resolve

if TYPE_CHECKING:
    from registry.embedding.base import Embedder
    from registry.ingest.vectors import PassageEmbedder

DedupMode = Literal["document", "corpus"]
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024
"""Larger documents are skipped: a worker chunking one of 16 MiB needs up to ~0.6 GB."""
BATCH_BYTES = 512 * 1024
BATCH_DOCUMENTS = 256
PROBLEMS_KEPT = 50
ACCOUNTED_KEPT = 100_000
"""Documents named in a run record's `details.accounted` (each not ingested: skipped, merged
into another, or without a chunk); past this many only the count grows (~100 bytes each)."""
MARKDOWN_SUFFIXES = {".md", ".markdown"}
TEXT_SUFFIXES = {".txt"}
JSONL_READ = 1 << 16
DEFAULT_MAX_CHANGE = 0.25
"""The share of a served table's documents one ingest may remove or replace."""


class IngestFailed(RegistryError):
    """The run wrote nothing: the source, the input or the database stopped it."""


@dataclass(frozen=True)
class SourceProblem:
    """A document that was skipped, and where: `path[:line]: message (fix)`."""

    where: str
    message: str
    fix: str

    def render(self) -> str:
        return f"{self.where}: {self.message} ({self.fix})"


@dataclass
class Progress:
    """How far a run is: what the CLI renders (a bar on a TTY, periodic lines otherwise)."""

    documents: int = 0
    skipped: int = 0
    chunks: int = 0
    bytes: int = 0
    total_bytes: int | None = None
    vectors: int = 0
    """Chunks with their vector written (computed or reused); 0 for a BM25-only config."""
    started: float = field(default_factory=time.monotonic)

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / max(self.seconds, 1e-9)


@dataclass
class IngestReport:
    """What one run did; also what `chunk_registry.ingest_runs` records."""

    chunk_version: str
    ingest_run_id: str
    table: str
    source: str
    dedup: str
    workers: int
    run: int | None = None
    engine: str = "builtin"
    """`builtin` (processes on this machine) or `ray` (Ray actors and tasks, local or a cluster)."""
    ray: dict[str, Any] | None = None
    """With the Ray engine: the cluster's nodes, the shards and where they were chunked."""
    documents: int = 0
    skipped: int = 0
    ignored_files: int = 0
    chunks: int = 0
    duplicates_removed: int = 0
    corpus_duplicates: int = 0
    identical_ids: int = 0
    too_small: int = 0
    header_only: int = 0
    over_budget: int = 0
    tokens: int = 0
    bytes: int = 0
    replaced_rows: int = 0
    into_production: bool = False
    """A document-level change of the table production serves (or rolls back to)."""
    documents_added: int = 0
    documents_changed: int = 0
    documents_removed: int = 0
    documents_unchanged: int = 0
    seconds: float = 0.0
    embedder_fingerprint: str | None = None
    """The fingerprint the vectors were made with (None: a BM25-only config, no vectors)."""
    vectors_computed: int = 0
    vectors_reused: int = 0
    """Vectors embedded by the model in this run, and found in the embedding cache."""
    embed_seconds: float = 0.0
    """Seconds in the model itself: the floor of the run's time."""
    embedding_stage_seconds: float = 0.0
    """Seconds in the embedding stage: the model, and the cache's look-ups and writes."""
    problems: list[SourceProblem] = field(default_factory=list)
    ingested: int = 0
    """Documents with at least one row in the table (under their doc_id)."""
    not_ingested: int = 0
    accounted: list[dict[str, Any]] = field(default_factory=list)
    """Every document of the source that has no row, by name: `{"doc", "outcome": skipped |
    merged | no_chunk, "reason"}`, plus `"into"` (the documents holding its chunks) when
    merged. With the table's doc_ids this names every document of the source."""

    def account(self, doc: str, outcome: str, reason: str, into: list[str] | None = None
                ) -> None:
        self.not_ingested += 1
        if len(self.accounted) < ACCOUNTED_KEPT:
            entry: dict[str, Any] = {"doc": doc, "outcome": outcome, "reason": reason}
            if into is not None:
                entry["into"] = into
            self.accounted.append(entry)

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds else 0.0

    def details(self) -> dict[str, Any]:
        """The run record's `details` column."""
        data = asdict(self)
        for key in ("chunk_version", "ingest_run_id", "source", "documents", "chunks",
                    "duplicates_removed", "over_budget", "run"):
            data.pop(key)
        data["problems"] = [p.render() for p in self.problems[:PROBLEMS_KEPT]]
        data["mb_per_s"] = round(self.mb_per_s, 3)
        data["seconds"] = round(self.seconds, 3)
        if data["ray"] is None:
            data.pop("ray")
        return data

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["problems"] = [p.render() for p in self.problems]
        data["mb_per_s"] = round(self.mb_per_s, 3)
        return data


# ---------------------------------------------------------------------------------------------
# Reading the source


Item = Document | SourceProblem


def read_source(source: Path, *, max_document_bytes: int = MAX_DOCUMENT_BYTES,
                ignored: Callable[[Path], None] | None = None) -> Iterator[Item]:
    """Documents (and the problems of the ones skipped) from a directory or a JSONL file,
    in a deterministic order: sorted paths, or file order."""
    if source.is_dir():
        yield from _read_directory(source, max_document_bytes, ignored)
    elif source.is_file():
        yield from _read_jsonl(source, max_document_bytes)
    else:
        raise IngestFailed(f"source {source} does not exist or is neither a directory nor a file",
                           fix="pass --source with a directory of .md/.txt files or a JSONL file")


def source_bytes(source: Path) -> int | None:
    """The size of a JSONL source (for a progress bar); None for a directory (not walked twice)."""
    return source.stat().st_size if source.is_file() else None


def _read_directory(root: Path, limit: int,
                    ignored: Callable[[Path], None] | None) -> Iterator[Item]:
    for directory, subdirs, files in os.walk(root, onerror=_raise_walk_error):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        for name in sorted(files):
            path = Path(directory) / name
            suffix = path.suffix.lower()
            if suffix not in MARKDOWN_SUFFIXES and suffix not in TEXT_SUFFIXES:
                if ignored is not None:
                    ignored(path)
                continue
            relative = path.relative_to(root).as_posix()
            if not storable(relative):
                yield SourceProblem(repr(relative)[1:-1], "file name is not valid UTF-8",
                                    "rename the file")
                continue
            yield _read_file(path, relative, "markdown" if suffix in MARKDOWN_SUFFIXES else "text",
                             limit)


def _raise_walk_error(err: OSError) -> None:
    raise IngestFailed(f"cannot read directory {err.filename}: {err.strerror}",
                       fix="check that the source directory exists and is readable")


def _read_file(path: Path, relative: str, kind: str, limit: int) -> Item:
    try:
        status = path.stat()
        if not stat.S_ISREG(status.st_mode):
            return SourceProblem(relative, "not a regular file (a FIFO, socket or device)",
                                 "keep only regular files in the source")
        size = status.st_size
        if size > limit:
            return SourceProblem(relative, f"document is {size / 1e6:.1f} MB, above the "
                                 f"{limit / 1e6:.0f} MB limit", "split it into smaller documents")
        with path.open("rb") as handle:
            raw = handle.read(limit + 1)
    except OSError as err:
        return SourceProblem(relative, f"cannot read: {err.strerror or type(err).__name__}",
                             "fix its permissions or remove it from the source")
    text_or_problem = _decode(raw, relative)
    if isinstance(text_or_problem, SourceProblem):
        return text_or_problem
    title = _title(text_or_problem, kind) or path.stem
    return Document(relative, title, text_or_problem, kind)


def _decode(raw: bytes, where: str, line: int = 0) -> str | SourceProblem:
    if b"\x00" in raw:
        offset = raw.index(b"\x00")
        at = line or raw[:offset].count(b"\n") + 1
        return SourceProblem(f"{where}:{at}", "binary content (a NUL byte)",
                             "keep only text files in the source")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        at = line or raw[: err.start].count(b"\n") + 1
        return SourceProblem(f"{where}:{at}", f"not valid UTF-8 (byte {err.start})",
                             "save it as UTF-8")
    text = text.removeprefix("\ufeff")
    if not text.strip():
        return SourceProblem(f"{where}:{line}" if line else where, "empty document",
                             "remove it, or give it text")
    return text


def _title(text: str, kind: str) -> str | None:
    """The first level-1 markdown heading near the top, else None (the file name is used)."""
    if kind != "markdown":
        return None
    for line in text[:4096].splitlines():
        if line.startswith("# "):
            return " ".join(line[2:].strip().rstrip("#").split()) or None
    return None


def _read_jsonl(path: Path, limit: int) -> Iterator[Item]:
    where = path.name
    try:
        handle = path.open("rb")
    except OSError as err:
        raise IngestFailed(f"cannot read {path}: {err.strerror}",
                           fix="check that the JSONL file exists and is readable") from None
    first_line: dict[str, int] = {}
    with handle:
        for number, raw, too_long in _lines(handle, limit):
            if too_long:
                yield SourceProblem(f"{where}:{number}", f"line is longer than the "
                                    f"{limit / 1e6:.0f} MB document limit",
                                    "split the document into smaller ones")
                continue
            if not raw.strip():
                continue
            item = _parse_line(raw, where, number)
            if isinstance(item, Document):
                first = first_line.setdefault(item.doc_id, number)
                if first != number:
                    item = SourceProblem(
                        f"{where}:{number}", f"doc_id {item.doc_id} is already used at line "
                        f"{first}: skipped, the first one is kept",
                        "give every document its own doc_id (rows are keyed by doc_id and "
                        "chunk_index)")
            yield item


def _lines(handle: IO[bytes], limit: int) -> Iterator[tuple[int, bytes, bool]]:
    """(line number, bytes, too long) for every line, never holding more than `limit` bytes."""
    number = 0
    while True:
        line = handle.readline(limit + 1)
        if not line:
            return
        number += 1
        if len(line) > limit and not line.endswith(b"\n"):
            while True:  # skip the rest of the over-long line without keeping it
                rest = handle.readline(JSONL_READ)
                if not rest or rest.endswith(b"\n"):
                    break
            yield number, b"", True
            continue
        yield number, line, False


def _parse_line(raw: bytes, where: str, number: int) -> Item:
    decoded = _decode_line(raw, where, number)
    if isinstance(decoded, SourceProblem):
        return decoded
    try:
        data = json.loads(decoded)
    except json.JSONDecodeError as err:
        return SourceProblem(f"{where}:{number}", f"malformed JSON: {err.msg} at column "
                             f"{err.colno}", 'write one {"doc_id": ..., "text": ...} object per '
                             "line")
    if not isinstance(data, dict):
        return SourceProblem(f"{where}:{number}", f"a JSON {type(data).__name__}, not an object",
                             'write one {"doc_id": ..., "text": ...} object per line')
    doc_id, text = data.get("doc_id"), data.get("text")
    if isinstance(doc_id, int) and not isinstance(doc_id, bool):
        doc_id = str(doc_id)
    if not isinstance(doc_id, str) or not doc_id:
        return SourceProblem(f"{where}:{number}", "doc_id is missing or not a string",
                             'give every line a "doc_id"')
    if not isinstance(text, str):
        return SourceProblem(f"{where}:{number}", "text is missing or not a string",
                             'give every line a "text"')
    if not text.strip():
        return SourceProblem(f"{where}:{number}", f"document {doc_id} is empty",
                             "remove the line, or give it text")
    for name, value in (("doc_id", doc_id), ("text", text), ("title", data.get("title") or "")):
        if isinstance(value, str) and not storable(value):
            return SourceProblem(f"{where}:{number}", f"{name} holds a NUL character or an "
                                 "unpaired surrogate, which PostgreSQL text cannot store",
                                 "remove it from the source")
    kind = data.get("kind", "markdown")
    if kind not in ("markdown", "text"):
        return SourceProblem(f"{where}:{number}", f"kind {kind!r} is not markdown or text",
                             'use "kind": "markdown" or "text", or leave it out')
    title = data.get("title")
    if not isinstance(title, str) or not title.strip():
        title = (_title(text, kind) if kind == "markdown" else None) or doc_id
    return Document(doc_id, title, text, kind)


def _decode_line(raw: bytes, where: str, number: int) -> str | SourceProblem:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return SourceProblem(f"{where}:{number}", f"not valid UTF-8 (byte {err.start} of the "
                             "line)", "save the file as UTF-8")


# ---------------------------------------------------------------------------------------------
# Chunking in worker processes


def batches(items: Iterable[Item], on_problem: Callable[[SourceProblem], None]
            ) -> Iterator[list[Document]]:
    """Documents in batches of BATCH_BYTES or BATCH_DOCUMENTS, what a worker chunks at once
    (the benches race the same batches); a problem goes to `on_problem`."""
    batch: list[Document] = []
    size = 0
    for item in items:
        if isinstance(item, SourceProblem):
            on_problem(item)
            continue
        batch.append(item)
        size += len(item.text)
        if size >= BATCH_BYTES or len(batch) >= BATCH_DOCUMENTS:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


IN_FLIGHT_BATCHES = 8
"""Batches (of at most BATCH_BYTES or BATCH_DOCUMENTS, but one long document makes its own)
chunked or queued per worker, ahead of the first one not yet returned."""


def chunk_corpus(spec: ChunkerSpec, batches: Iterable[list[Document]], workers: int
                 ) -> Iterator[tuple[list[Document], list[ChunkedDocument]]]:
    """(batch, its chunked documents) in source order: 2 x workers batches queued or being
    chunked, and past a slow first one up to IN_FLIGHT_BATCHES x workers held."""
    if workers <= 1:
        chunker = Chunker(spec.config, tokenizer_from(spec), corpus=spec.corpus)
        held: deque[list[Document]] = deque()

        def remember() -> Iterator[list[Document]]:
            for batch in batches:
                held.append(batch)
                yield batch

        results: list[ChunkedDocument] = []
        for chunked in chunker.chunk_stream(remember()):
            results.append(chunked)
            if len(results) == len(held[0]):
                yield held.popleft(), results
                results = []
        return
    import threading

    main_thread = threading.current_thread() is threading.main_thread()
    with shipped(spec) as spec_path:
        yield from _chunk_in_pool(spec_path, batches, workers, main_thread)


def _chunk_in_pool(spec_path: str, batches: Iterable[list[Document]], workers: int,
                   main_thread: bool) -> Iterator[tuple[list[Document], list[ChunkedDocument]]]:
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=init_worker,
                               initargs=(spec_path, os.getpid(), main_thread))
    try:
        pending: deque[tuple[list[Document], Future[list[ChunkedDocument]]]] = deque()
        for batch in batches:
            pending.append((batch, pool.submit(chunk_in_worker, batch)))
            # Wait while the workers have enough queued, for whichever batch ends first, not
            # for the first one: a batch holding a long document keeps one worker for a while,
            # and the others go on with the batches after it (their results held, in order,
            # up to IN_FLIGHT_BATCHES a worker) instead of idling behind it.
            while True:
                while pending and pending[0][1].done():
                    done, future = pending.popleft()
                    yield done, future.result()
                running = [f for _, f in pending if not f.done()]
                if len(running) < 2 * workers and len(pending) < IN_FLIGHT_BATCHES * workers:
                    break
                wait(running, return_when=FIRST_COMPLETED)
        while pending:
            done, future = pending.popleft()
            yield done, future.result()
    finally:  # on failure or Ctrl-C, queued batches are dropped, not chunked for nothing
        pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------------------------------------
# Corpus-wide dedup: shingles of kept chunks spill to a temporary file


class FileShingleStore:
    """Shingle sets appended to an unlinked temporary file and read back through a memory map
    of it; only their offsets stay in memory.

    A batch is written in one call and a batch's candidates are read in one gather from the
    map (the page cache's memory), not one pread each. The file is grown in doubling steps
    (sparse until written), so it is mapped again only when it grows: a few times a run.
    """

    def __init__(self) -> None:
        # lives as long as the store: close() ends it
        self._file = tempfile.TemporaryFile(prefix="registry-shingles-")  # noqa: SIM115
        self._offsets = Growing(np.int64, [0])
        self._capacity = 0
        """The file's size in bytes (written up to offsets' last, zeros past it)."""
        self._map: mmap.mmap | None = None
        self._values: Shingles = EMPTY_SHINGLES
        """The mapped file, as uint64."""

    def extend(self, values: Shingles, lengths: npt.NDArray[np.int64]) -> None:
        start = int(self._offsets.view()[-1]) * 8
        data = np.ascontiguousarray(values, dtype=np.uint64).data.cast("B")
        end = start + len(data)
        if end > self._capacity:
            self._capacity = max(end, 2 * self._capacity, 1 << 20)
            os.ftruncate(self._file.fileno(), self._capacity)
            self._unmap()
        # pwrite may write less than asked (a full disk) and say so only by its count: the
        # rest is written on, or the error it then meets raised
        while data:
            written = os.pwrite(self._file.fileno(), data, start)
            data, start = data[written:], start + written
        self._offsets.extend(end // 8 - int(lengths.sum()) + np.cumsum(lengths))

    def gather(self, indices: npt.NDArray[np.int64]
               ) -> tuple[Shingles, npt.NDArray[np.int64]]:
        positions, lengths = spans(self._offsets.view(), indices)
        if self._map is None and self._capacity:
            self._map = mmap.mmap(self._file.fileno(), self._capacity, access=mmap.ACCESS_READ)
            self._values = np.frombuffer(self._map, dtype=np.uint64)
        values: Shingles = self._values[positions]
        return values, lengths

    def _unmap(self) -> None:
        if self._map is not None:
            self._values = EMPTY_SHINGLES  # the map's only view, released before it closes
            self._map.close()
            self._map = None

    def close(self) -> None:
        self._unmap()
        self._file.close()


# ---------------------------------------------------------------------------------------------
# The run


def load_tokenizer_json(config: LockedConfig, tokenizer_file: Path | None) -> tuple[str, Path]:
    """The tokenizer.json text the config was locked with, resolved as at lock time and
    refused when its hash differs from the config's `tokenizer_hash`."""
    resolved = resolve(config.tokenizer_name, tokenizer_file)
    raw = resolved.path.read_bytes()
    digest = f"sha256:{hashlib.sha256(raw).hexdigest()}"
    if digest != config.tokenizer_hash:
        raise TokenizerUnavailable(
            f"tokenizer at {resolved.path} has hash {digest}, but {config.chunk_version} was "
            f"locked with {config.tokenizer_hash}",
            where="--tokenizer-file" if tokenizer_file else config.tokenizer_name,
            fix="pass --tokenizer-file with the tokenizer.json the config was locked with",
        )
    return raw.decode("utf-8"), resolved.path


def run_ingest(
    target: ChunkTable,
    source: Path,
    dsn: str,
    tokenizer_json: str,
    *,
    dedup: DedupMode = "document",
    workers: int = 1,
    strict: bool = False,
    max_document_bytes: int = MAX_DOCUMENT_BYTES,
    on_progress: Callable[[Progress], None] | None = None,
    on_problem: Callable[[SourceProblem], None] | None = None,
    into_production: bool = False,
    max_change: float = DEFAULT_MAX_CHANGE,
    embedder: Embedder | None = None,
) -> IngestReport:
    """Fill `target` from `source` in one transaction and record the run in ingest_runs; a
    table readers are served or production rolls back to only with `into_production`, document by
    document, refused above `max_change`. A config that pins an embedder needs `embedder`
    (already checked against the lock: `registry.embedding.locked.verified_embedder`)."""
    if target.config.embedder is not None and embedder is None:
        raise UsageError(f"{target.chunk_version} pins an embedder: its ingest needs one",
                         fix="build it with registry.embedding.locked.verified_embedder")
    if target.config.embedder is None:
        embedder = None
    if dedup not in ("document", "corpus"):
        raise UsageError(f"--dedup {dedup} is not document or corpus")
    if not 0 <= max_change <= 1:
        raise UsageError(f"--max-change {max_change} is not a share between 0 and 1")
    config = target.config
    report = IngestReport(config.chunk_version, config.ingest_run_id, target.qualified,
                          str(source), dedup, max(workers, 1))
    progress = Progress(total_bytes=source_bytes(source) if source.exists() else None)
    control = connect(dsn, purpose="ingest")
    cache: psycopg.Connection[Any] | None = None
    try:
        bookkeeping.ensure_schema(control)
        require_managed_table(control, target)
        report.into_production = guard_served(control, target, into_production)
        take_run_lock(control, report)
        report.run = record_start(control, report, target.registries[0])
        faults.point("ingest", "started")
        started = time.monotonic()
        passages = None
        if embedder is not None:
            from registry.ingest.vectors import PassageEmbedder

            # Its own connection: the data connection is busy with the COPY meanwhile, and
            # cached vectors stay useful to a retry even if this run fails.
            cache = connect(dsn, purpose="ingest embedding cache")
            passages = PassageEmbedder(embedder, cache, config.embedder)
            report.embedder_fingerprint = config.embedder.fingerprint if config.embedder else None
        try:
            with connect(dsn, autocommit=False, purpose="ingest copy") as data:
                _load(data, target, source, tokenizer_json, report, progress,
                      strict=strict, max_document_bytes=max_document_bytes,
                      on_progress=on_progress, on_problem=on_problem, passages=passages)
                if report.into_production:
                    apply_document_changes(data, target, report, max_change,
                                            written_columns(passages is not None))
                commit_run(data, report, started)
        except BaseException as err:
            record_failed_run(control, report, started, err)
            if isinstance(err, psycopg.Error):
                raise database_error(err, dsn, f"loading {target.qualified}") from None
            raise
    finally:
        control.close()
        if cache is not None:
            cache.close()
    return report


def written_columns(vectors: bool) -> tuple[str, ...]:
    """The columns an ingest writes: the rows', and the vector when the config has one."""
    return ROW_COLUMNS + ((EMBEDDING_COLUMN,) if vectors else ())


def vector_copy_types(data: psycopg.Connection[Any]) -> list[str]:
    """The COPY types with pgvector's `vector` (its binary dumper registered on `data`)."""
    from registry import extras

    extras.require("pgvector", "an ingest with vectors")
    from pgvector.psycopg import register_vector

    data.execute(VECTOR_ON_SEARCH_PATH)  # the adapter looks the type up through the path
    register_vector(data)
    return [*COPY_TYPES, "vector"]


def _load(data: psycopg.Connection[Any], target: ChunkTable, source: Path, tokenizer_json: str,
          report: IngestReport, progress: Progress, *, strict: bool, max_document_bytes: int,
          on_progress: Callable[[Progress], None] | None,
          on_problem: Callable[[SourceProblem], None] | None,
          passages: PassageEmbedder | None = None) -> None:
    config = target.config
    table: sql.Composable = target.identifier
    columns = written_columns(passages is not None)
    copy_types = vector_copy_types(data) if passages is not None else COPY_TYPES
    if report.into_production:
        data.execute(sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM {} "
                             "WITH NO DATA").format(
            STAGED, sql.SQL(", ").join(map(sql.Identifier, columns)), table))
        table = STAGED
    else:
        # A value as a Literal, not a parameter: psycopg would read a `%` in the table's name
        # as a placeholder if the statement also carried parameters.
        report.replaced_rows = data.execute(
            sql.SQL("DELETE FROM {} WHERE ingest_run_id = {}").format(
                table, sql.Literal(config.ingest_run_id))).rowcount
        faults.point("ingest", "deleted")

    def problem(found: SourceProblem) -> None:
        note_problem(found, report, progress, strict=strict, on_problem=on_problem)

    def ignore(_path: Path) -> None:
        report.ignored_files += 1

    corpus = report.dedup == "corpus"
    spec = ChunkerSpec(config, tokenizer_json, corpus)
    items = read_source(source, max_document_bytes=max_document_bytes, ignored=ignore)
    store = FileShingleStore() if corpus else None
    corpus_pass = CorpusPass(CorpusDeduplicator(config.jaccard_threshold, store)
                             if store else None)
    last_report = 0.0
    copy_sql = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        table, sql.SQL(", ").join(map(sql.Identifier, columns)))

    def chunked_rows() -> Iterator[list[tuple[Any, ...]]]:
        """The kept rows, a batch of documents at a time (or EMBED_BATCH rows with vectors)."""
        for batch, chunked in chunk_corpus(spec, batches(items, problem), report.workers):
            rows = keep_rows(chunked, corpus_pass, report)
            for document, result in zip(batch, chunked, strict=True):
                report.documents += 1
                report.bytes += len(document.text.encode())
                report.tokens += result.tokens
            if passages is None:
                yield rows
                continue
            from registry.ingest.vectors import EMBED_BATCH

            for start in range(0, len(rows), EMBED_BATCH):
                yield rows[start:start + EMBED_BATCH]

    def show(force: bool = False) -> None:
        nonlocal last_report
        progress.documents, progress.chunks = report.documents, report.chunks
        progress.bytes = report.bytes
        if passages is not None:
            progress.vectors = report.vectors_computed + report.vectors_reused
        if on_progress is not None and (force or time.monotonic() - last_report > 0.2):
            on_progress(progress)
            last_report = time.monotonic()

    try:
        with data.cursor() as cursor, cursor.copy(copy_sql) as copy:
            copy.set_types(copy_types)
            if passages is None:
                for rows in chunked_rows():
                    for row in rows:
                        copy.write_row(row)
                    report.chunks += len(rows)
                    faults.point("ingest", "copy_batch")
                    show()
            else:
                from registry.ingest.vectors import pipelined

                def embed(rows: list[tuple[Any, ...]]) -> Any:
                    return passages.vectors([row[3] for row in rows])

                for rows, vectors in pipelined(chunked_rows, embed):
                    for row, vector in zip(rows, vectors, strict=True):
                        copy.write_row((*row, vector))
                    report.chunks += len(rows)
                    counts = passages.counts
                    report.vectors_computed, report.vectors_reused = counts.computed, counts.reused
                    report.embed_seconds = round(counts.model_seconds, 3)
                    report.embedding_stage_seconds = round(counts.stage_seconds, 3)
                    faults.point("ingest", "copy_batch")
                    show()
    finally:
        if store is not None:
            store.close()
    show(force=True)
    check_not_empty(report, source)


def note_problem(found: SourceProblem, report: IngestReport, progress: Progress, *,
                 strict: bool, on_problem: Callable[[SourceProblem], None] | None) -> None:
    """A skipped document, counted and named (or, with `strict`, the end of the run)."""
    if strict:
        raise IngestFailed(f"{found.where}: {found.message} (--strict: nothing was written)",
                           fix=found.fix)
    report.skipped += 1
    progress.skipped += 1
    report.account(found.where, "skipped", found.message)
    if len(report.problems) < PROBLEMS_KEPT:
        report.problems.append(found)
    if on_problem is not None:
        on_problem(found)


def check_not_empty(report: IngestReport, source: Path) -> None:
    """An empty run never replaces a full one."""
    if report.documents == 0:
        raise IngestFailed(f"no usable document in {source} ({report.skipped} skipped, "
                           f"{report.ignored_files} files ignored): nothing was written",
                           fix="point --source at .md/.txt files or a JSONL file of "
                           '{"doc_id", "text"} objects')
    if report.chunks == 0:
        raise IngestFailed(f"{report.documents} documents gave no chunk of at least "
                           f"{MIN_CHUNK_TOKENS} tokens: nothing was written (an empty run never "
                           "replaces a full one)", fix="check the source: are the documents "
                           "empty of text?")


STAGED = sql.Identifier("registry_ingest_staged")
"""The temporary table the rows of a document-level change are copied into first."""


def guard_served(conn: psycopg.Connection[Any], target: ChunkTable, allowed: bool) -> bool:
    """Whether `target` is a table readers are served now (production's, an experiment's
    candidate's: any served_tables row still open) or production rolls back to (then refused
    unless `allowed`): replacing its rows is a change to live traffic no merge reviewed."""
    if bookkeeping.managed_status(conn, target.schema, target.table,
                                  target.registries) == "production":
        role = "production serves"
    elif (target.schema, target.table) in bookkeeping.former_productions(conn, 1,
                                                                        target.registries):
        role = "production rolls back to"
    elif bookkeeping.served_tables_until(conn, target.registries).get(
            (target.schema, target.table), False) is None:
        role = "the served state routes readers to (an experiment's candidate)"
    else:
        return False
    if not allowed:
        raise Refused(f"{target.qualified} is the table {role} ({target.chunk_version}): an "
                      "ingest would replace the rows behind the live view",
                      fix="lock a new version and promote it by PR, or pass --into-production "
                      "for a document-level change (refused above --max-change)")
    return True


def apply_document_changes(data: psycopg.Connection[Any], target: ChunkTable,
                            report: IngestReport, max_change: float,
                            written: Sequence[str] = ROW_COLUMNS) -> None:
    """Write only the documents whose chunks differ from the rows already there (by doc_id
    and content hash), in the ingest's transaction; refused, writing nothing, when it would
    remove or replace more than `max_change` of the documents."""
    table = target.identifier
    digest = "md5(string_agg(id, ',' ORDER BY chunk_index))"
    data.execute(sql.SQL(
        "CREATE TEMP TABLE registry_ingest_changes ON COMMIT DROP AS "
        "SELECT doc_id, CASE WHEN o.h IS NULL THEN 'added' WHEN n.h IS NULL THEN 'removed' "
        "WHEN n.h <> o.h THEN 'changed' ELSE 'unchanged' END AS change "
        "FROM (SELECT doc_id, {d} AS h FROM {staged} GROUP BY doc_id) n "
        "FULL JOIN (SELECT doc_id, {d} AS h FROM {table} GROUP BY doc_id) o USING (doc_id)"
    ).format(d=sql.SQL(digest), staged=STAGED, table=table))
    counts = dict(data.execute(
        "SELECT change, count(*) FROM registry_ingest_changes GROUP BY change").fetchall())
    report.documents_added = int(counts.get("added", 0))
    report.documents_changed = int(counts.get("changed", 0))
    report.documents_removed = int(counts.get("removed", 0))
    report.documents_unchanged = int(counts.get("unchanged", 0))
    before = report.documents_changed + report.documents_removed + report.documents_unchanged
    touched = report.documents_changed + report.documents_removed
    if before and touched / before > max_change:
        raise Refused(f"the ingest would remove or replace {touched} of the {before} documents "
                      f"({touched / before:.0%}) of {target.qualified}, which readers are served: "
                      f"more than --max-change {max_change:g}; nothing was written",
                      fix="check --source (a wrong or truncated corpus?); if intended, raise "
                      "--max-change or lock a new version and promote it by PR")
    report.replaced_rows = data.execute(sql.SQL(
        "DELETE FROM {} t USING registry_ingest_changes c WHERE c.doc_id = t.doc_id "
        "AND c.change IN ('changed', 'removed')").format(table)).rowcount
    columns = sql.SQL(", ").join(map(sql.Identifier, written))
    data.execute(sql.SQL(
        "INSERT INTO {table} ({cols}) SELECT {cols} FROM {staged} s WHERE s.doc_id IN "
        "(SELECT doc_id FROM registry_ingest_changes WHERE change IN ('changed', 'added'))"
    ).format(table=table, cols=columns, staged=STAGED))


class Repeat(NamedTuple):
    """A dropped chunk: the document of the kept chunk it repeats, and whether it was dropped
    as a near-duplicate (corpus dedup) or for an identical id."""

    doc_id: str
    near: bool


class CorpusPass:
    """The corpus pass over chunks in corpus order: a chunk goes if a kept chunk is a
    near-duplicate (with a deduplicator) or has its id; else it is kept and remembered with its
    document. The one place that decides, for the built-in ingest and the Ray ingest's driver
    alike, so both keep the same chunks and name the same documents."""

    def __init__(self, deduplicator: CorpusDeduplicator | None) -> None:
        self.deduplicator = deduplicator
        self._ids: dict[bytes, str] = {}
        self._owners: list[str] = []
        """The document of each kept chunk, by the deduplicator's store index."""

    def decide(self, doc_ids: Sequence[str], chunk_ids: Sequence[str],
               sets: ShingleSets | None = None, keys: KeyMatrix | None = None
               ) -> list[Repeat | None]:
        """What each chunk of a batch (in corpus order) repeats, or None (it is kept); `sets`
        and `keys` (their shingles and MinHash band keys) are needed with a deduplicator."""
        repeats: list[Repeat | None] = [None] * len(chunk_ids)
        if self.deduplicator is not None:
            if sets is None or keys is None:
                raise ValueError("a corpus pass with a deduplicator needs shingles and keys")
            verdicts = self.deduplicator.decide(sets, keys)
            owners = self._owners
            for index, (matched, stored) in enumerate(zip(
                    verdicts.matched.tolist(), verdicts.stored.tolist(), strict=True)):
                if matched >= 0:
                    repeats[index] = Repeat(owners[matched], near=True)
                elif stored >= 0:
                    owners.append(doc_ids[index])
        ids = self._ids
        for index, (doc_id, chunk_id) in enumerate(zip(doc_ids, chunk_ids, strict=True)):
            if repeats[index] is not None:
                continue
            key = bytes.fromhex(chunk_id[:32])
            held = ids.get(key)
            if held is not None:  # same embedding text under the same config: the same chunk
                repeats[index] = Repeat(held, near=False)
            else:
                ids[key] = doc_id
        return repeats


def batch_sets(results: Sequence[ChunkedDocument], bands: int) -> tuple[ShingleSets, KeyMatrix]:
    """The shingle sets and band key matrix of a batch of documents' chunks, in order."""
    shingles = [values for result in results for values in result.shingles]
    lengths = np.fromiter(map(len, shingles), dtype=np.int64, count=len(shingles))
    bounds = np.zeros(len(shingles) + 1, dtype=np.int64)
    np.cumsum(lengths, out=bounds[1:])
    sets = ShingleSets(np.concatenate(shingles) if shingles else EMPTY_SHINGLES, bounds)
    keys: KeyMatrix = np.zeros((len(shingles), bands), dtype=np.uint64)
    keyed = [row for result in results for row in result.band_keys if row]
    if keyed:
        keys[lengths > 0] = keyed
    return sets, keys


def keep_rows(results: Sequence[ChunkedDocument], corpus_pass: CorpusPass,
              report: IngestReport) -> list[tuple[Any, ...]]:
    """The rows of a batch of documents that survive the corpus pass, renumbered; a document
    left without a row is accounted for by name (merged into the documents whose chunks it
    repeats, or without a chunk at all)."""
    doc_ids = [result.doc_id for result in results for _ in result.chunks]
    chunk_ids = [chunk.id for result in results for chunk in result.chunks]
    deduplicator = corpus_pass.deduplicator
    if deduplicator is not None:
        repeats = corpus_pass.decide(doc_ids, chunk_ids,
                                     *batch_sets(results, deduplicator.hasher.bands))
    else:
        repeats = corpus_pass.decide(doc_ids, chunk_ids)
    rows: list[tuple[Any, ...]] = []
    at = 0
    for result in results:
        count_document(result, report)
        kept: list[Chunk] = []
        into: list[str] = []
        for chunk, repeat in zip(result.chunks, repeats[at:at + len(result.chunks)],
                                 strict=True):
            if repeat is None:
                kept.append(chunk)
                continue
            if repeat.near:
                report.corpus_duplicates += 1
            else:
                report.identical_ids += 1
            report.duplicates_removed += 1
            into.append(repeat.doc_id)
        at += len(result.chunks)
        rows.extend(account_document(result, kept, into, report))
    return rows


def account_document(result: ChunkedDocument, kept: list[Chunk], into: list[str],
                     report: IngestReport) -> list[tuple[Any, ...]]:
    """The rows of a document once the corpus pass decided (`kept`, and the documents its
    dropped chunks repeat, `into`), renumbered; a document left without a row is accounted
    for by name. Shared by the built-in and the Ray ingest, so both report alike."""
    if not result.chunks:
        report.account(result.doc_id, "no_chunk", _no_chunk_reason(result))
    elif not kept:
        holders = list(dict.fromkeys(into))
        report.account(result.doc_id, "merged", f"every chunk repeats a chunk of "
                       f"{', '.join(holders[:3])}{' and others' if len(holders) > 3 else ''}",
                       holders[:20])
    else:
        report.ingested += 1
    if len(kept) != len(result.chunks):
        kept = [chunk._replace(chunk_index=i) for i, chunk in enumerate(kept)]
    return [chunk.row() for chunk in kept]


def count_document(result: ChunkedDocument, report: IngestReport) -> None:
    """What the chunker dropped within one document, added to the run's counts."""
    report.duplicates_removed += result.duplicates
    report.too_small += result.too_small
    report.header_only += result.header_only
    report.over_budget += result.over_budget


def _no_chunk_reason(result: ChunkedDocument) -> str:
    reasons = [f"{count} {what}" for count, what in (
        (result.too_small, f"pieces under {MIN_CHUNK_TOKENS} tokens"),
        (result.header_only, "header-only sections"),
        (result.over_budget, "chunks over the token budget"),
        (result.duplicates, "near-duplicates within the document")) if count]
    return "no chunk: " + (", ".join(reasons) if reasons else "no text to chunk")


def require_managed_table(conn: psycopg.Connection[Any], target: ChunkTable) -> None:
    require_table(conn, target)
    status = bookkeeping.managed_status(conn, target.schema, target.table, target.registries)
    if status is None:
        raise Refused(f"table {target.qualified} is not managed by the registry",
                      fix="run `registry reconcile`; ingest only fills tables the registry made")
    if status in ("retired", "dropped"):
        raise Refused(f"table {target.qualified} is {status}",
                      fix="ingest a locked config that is still in the registry")


def take_run_lock(conn: psycopg.Connection[Any], report: IngestReport) -> None:
    """One ingest of a config at a time (held by the control connection until the run ends):
    a second one would redo all the chunking only to fail on the first one's rows."""
    got = conn.execute("SELECT pg_try_advisory_lock(%s)",
                       (ingest_lock_key(report.ingest_run_id),)).fetchone()
    if not (got and got[0]):
        raise Busy(f"another ingest of {report.chunk_version} into {report.table} is running",
                   fix="wait for it to finish, then rerun if needed")


def record_start(conn: psycopg.Connection[Any], report: IngestReport, registry: str) -> int:
    return bookkeeping.start_ingest_run(
        conn, report.ingest_run_id, report.chunk_version, report.source,
        {"dedup": report.dedup, "workers": report.workers, "table": report.table}, registry)


def record_success(conn: psycopg.Connection[Any], report: IngestReport) -> None:
    bookkeeping.finish_ingest_run(
        conn, report.run, documents=report.documents, chunks=report.chunks,
        duplicates_removed=report.duplicates_removed, over_budget=report.over_budget,
        details=report.details())


def record_failure(conn: psycopg.Connection[Any], report: IngestReport, reason: str) -> None:
    bookkeeping.fail_ingest_run(conn, report.run, documents=report.documents,
                                details={**report.details(), "error": reason[:2000]})


def commit_run(data: psycopg.Connection[Any], report: IngestReport, started: float) -> None:
    """Record the run as succeeded and commit it with its rows, in one transaction (between
    the fault points the reliability suite kills the process at)."""
    report.seconds = time.monotonic() - started
    record_success(data, report)
    faults.point("ingest", "before_commit")
    data.commit()
    faults.point("ingest", "committed")


def record_failed_run(control: psycopg.Connection[Any], report: IngestReport, started: float,
                      err: BaseException) -> str:
    """Record the run as failed (on the control connection: the data transaction is gone) and
    return the reason recorded; a database that is itself the failure is not asked twice."""
    report.seconds = time.monotonic() - started
    reason = str(err) if isinstance(err, RegistryError) else error_summary(err)
    with contextlib.suppress(psycopg.Error):
        record_failure(control, report, reason or type(err).__name__)
    return reason


def error_summary(err: BaseException) -> str:
    """What a failed run records of an unexpected error: its type and first line."""
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:300]}" if text else type(err).__name__


# ---------------------------------------------------------------------------------------------
# Entry points: one version, or every shadow table still waiting for its first ingest


def ingest(
    state: RegistryState,
    version: str,
    source: Path,
    dsn: str,
    *,
    tokenizer_file: Path | None = None,
    dedup: DedupMode = "document",
    workers: int | None = None,
    strict: bool = False,
    max_document_bytes: int = MAX_DOCUMENT_BYTES,
    on_progress: Callable[[Progress], None] | None = None,
    on_problem: Callable[[SourceProblem], None] | None = None,
    into_production: bool = False,
    max_change: float | None = None,
    embedder_model: Path | None = None,
    embedder_tokenizer: Path | None = None,
    engine: Engine = "builtin",
    ray_address: str | None = None,
    shard_documents: int = BATCH_DOCUMENTS,
) -> IngestReport:
    """`registry ingest VERSION --source PATH`: the locked config of `state`, its tokenizer
    checked by hash, its embedder (if it pins one) checked by fingerprint, its shadow table
    filled (production's only with `into_production`). Ingest takes the resolved `dsn`, not a
    connection: it opens its own (the run lock on one, the rows in one transaction on another,
    the embedding cache on a third). `engine="ray"` runs it on Ray (ray_engine)."""
    check_engine(engine, ray_address)
    target = chunk_table(state, version)
    embedder, tokenizer_file = locked_embedder(target.config, tokenizer_file, embedder_model,
                                               embedder_tokenizer)
    tokenizer_json, _ = load_tokenizer_json(target.config, tokenizer_file)
    options: dict[str, Any] = {
        "dedup": dedup, "workers": default_workers(workers), "strict": strict,
        "max_document_bytes": max_document_bytes, "on_progress": on_progress,
        "on_problem": on_problem, "into_production": into_production,
        "max_change": DEFAULT_MAX_CHANGE if max_change is None else max_change}
    if engine == "ray":
        from registry.ingest.ray_engine import run_ray_ingest

        return run_ray_ingest(target, source, dsn, tokenizer_json, address=ray_address,
                              shard_documents=shard_documents, embedder=embedder, **options)
    return run_ingest(target, source, dsn, tokenizer_json, embedder=embedder, **options)


Engine = Literal["builtin", "ray"]


def check_engine(engine: str, ray_address: str | None) -> None:
    """`--engine` and `--ray-address` as the CLI and the Python API take them."""
    if engine not in ("builtin", "ray"):
        raise UsageError(f"--engine {engine} is not builtin or ray")
    if ray_address and engine != "ray":
        raise UsageError("--ray-address goes with --engine ray",
                         fix="add --engine ray, or leave --ray-address out")


def locked_embedder(config: LockedConfig, tokenizer_file: Path | None,
                    model_file: Path | None = None, embedder_tokenizer: Path | None = None,
                    ) -> tuple[Embedder | None, Path | None]:
    """The config's embedder, fingerprint checked (None for a BM25-only config), and the
    chunking tokenizer to use: `tokenizer_file`, else the onnx embedder's own tokenizer.json
    when it is the locked one (compatibility makes it so), so no second copy is needed."""
    if config.embedder is None:
        return None, tokenizer_file
    from registry import extras

    extras.require("pgvector", "an ingest with vectors")
    from registry.embedding.locked import installed_files, verified_embedder

    options: dict[str, Any] = {}
    if config.embedder.backend == "onnx":
        extras.require("onnxruntime", "the onnx embedder")
        found_model, found_tokenizer = installed_files(config.embedder)
        options = {"model_file": model_file or found_model,
                   "tokenizer_file": embedder_tokenizer or found_tokenizer}
        tokenizer_file = chunking_tokenizer_file(config, tokenizer_file,
                                                 options["tokenizer_file"])
    return verified_embedder(config, **options), tokenizer_file


def chunking_tokenizer_file(config: LockedConfig, tokenizer_file: Path | None,
                            embedder_tokenizer: Path | None) -> Path | None:
    """`tokenizer_file`, else the embedder's own tokenizer.json when its hash is the config's
    tokenizer_hash: the one rule ingest and tune follow, so neither asks for a second copy."""
    if tokenizer_file is not None or embedder_tokenizer is None:
        return tokenizer_file
    own = Path(embedder_tokenizer)
    return own if file_hash(own) == config.tokenizer_hash else None


def default_workers(workers: int | None) -> int:
    """One worker per CPU this process may run on (its affinity, as `taskset` or a container's
    cpuset leaves it), not per CPU of the machine: more workers than cores only share them."""
    if workers is not None:
        return max(1, workers)
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def pending_versions(conn: psycopg.Connection[Any], state: RegistryState) -> list[str]:
    """Configs whose shadow table exists but has no successful run of their ingest_run_id."""
    versions = bookkeeping.versions_never_ingested(
        conn, state.settings.schema, [c.ingest_run_id for c in state.configs.values()],
        state.settings.identities)
    return sorted(v for v in versions if v in state.configs)


def ingest_pending(
    state: RegistryState,
    conn: psycopg.Connection[Any],
    source: Path,
    dsn: str,
    *,
    tokenizer_files: Sequence[Path] = (),
    dedup: DedupMode = "document",
    workers: int | None = None,
    strict: bool = False,
    on_progress: Callable[[Progress], None] | None = None,
    on_problem: Callable[[SourceProblem], None] | None = None,
    engine: Engine = "builtin",
    ray_address: str | None = None,
) -> list[IngestReport]:
    """`registry reconcile --source PATH`: ingest every shadow table with no successful run.

    Each config's tokenizer is the first of `tokenizer_files` whose hash matches it, else the
    one its name resolves to (local cache). `conn` finds them; each ingest opens its own
    connections to `dsn`."""
    check_engine(engine, ray_address)
    bookkeeping.ensure_schema(conn)
    versions = pending_versions(conn, state)
    by_hash = {file_hash(Path(p)): Path(p) for p in tokenizer_files}
    reports = []
    for version in versions:
        target = chunk_table(state, version)
        embedder, tokenizer_file = locked_embedder(target.config,
                                                   by_hash.get(target.config.tokenizer_hash))
        tokenizer_json, _ = load_tokenizer_json(target.config, tokenizer_file)
        options: dict[str, Any] = {"dedup": dedup, "workers": default_workers(workers),
                                   "strict": strict, "on_progress": on_progress,
                                   "on_problem": on_problem}
        if engine == "ray":
            from registry.ingest.ray_engine import run_ray_ingest

            reports.append(run_ray_ingest(target, source, dsn, tokenizer_json,
                                          address=ray_address, embedder=embedder, **options))
        else:
            reports.append(run_ingest(target, source, dsn, tokenizer_json, embedder=embedder,
                                      **options))
    return reports
