"""A corpus tokenized once, re-windowed per trial.

Encoding is what depends on the tokenizer alone, and it is most of the chunker's work: the
token offsets and word ids of each document (`Chunker.encode`). A trial's config changes only
where the windows fall, which near-duplicates go and how the prefix is written, so every trial
re-windows the one shared encoding (`Chunker.chunk_encoded`) and keeps rows by the ingest's own
rule (`pipeline.keep_rows`): the rows are exactly those `registry ingest` would write.

Memory: a document's encoding is kept as the chunker makes it (a tokenizers.Encoding, about
540 bytes a token; a document over 256K characters as a CompactEncoding, 28 bytes a token), so
tuning on a 10 MB sample holds about 1.4 GB: tune on a representative sample, not the corpus.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry.config import LockedConfig
from registry.ingest.chunker import (
    Chunker,
    CorpusDeduplicator,
    Document,
    Encoded,
    SharedLayout,
)
from registry.ingest.pipeline import (
    BATCH_DOCUMENTS,
    MAX_DOCUMENT_BYTES,
    CorpusPass,
    DedupMode,
    IngestFailed,
    IngestReport,
    SourceProblem,
    keep_rows,
    read_source,
)

if TYPE_CHECKING:
    from tokenizers import Tokenizer

Row = tuple[Any, ...]


@dataclass
class TrialRows:
    """The rows of one config over the shared encoding, and what it cost to make them."""

    rows: list[Row]
    documents: int
    tokens: int
    duplicates_removed: int
    too_small: int
    over_budget: int
    seconds: float
    digest: str
    """sha256 of every row's texts in order: two configs with equal digests index the same
    text, so they retrieve alike (a trial with a known digest is not built again)."""
    text_bytes: int = 0

    @property
    def chunks(self) -> int:
        return len(self.rows)


@dataclass
class TokenizedCorpus:
    """The documents of a source and their encodings, made once with one tokenizer."""

    documents: list[Document]
    encodings: list[Encoded]
    tokenizer: Tokenizer
    encode_seconds: float
    problems: list[SourceProblem] = field(default_factory=list)
    layout: SharedLayout = field(default_factory=SharedLayout)
    """What the trials' chunkers share beyond the encodings (sections, title counts)."""

    @property
    def tokens(self) -> int:
        return sum(len(e) for e in self.encodings)

    @property
    def bytes(self) -> int:
        return sum(len(d.text.encode()) for d in self.documents)

    @classmethod
    def build(cls, documents: Sequence[Document], tokenizer_json: str,
              problems: Iterable[SourceProblem] = ()) -> TokenizedCorpus:
        """Encode `documents` once, batch by batch, exactly as the ingest's chunker does."""
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_str(tokenizer_json)
        tokenizer.no_truncation()
        tokenizer.no_padding()
        encoder = Chunker(_placeholder_config(), tokenizer)
        started = time.perf_counter()
        encodings: list[Encoded] = []
        for first in range(0, len(documents), BATCH_DOCUMENTS):
            encodings.extend(encoder.encode(documents[first: first + BATCH_DOCUMENTS]))
        return cls(list(documents), encodings, tokenizer, time.perf_counter() - started,
                   list(problems))

    @classmethod
    def read(cls, source: Path, tokenizer_json: str, *,
             max_document_bytes: int = MAX_DOCUMENT_BYTES) -> TokenizedCorpus:
        """The usable documents of `source` (the ingest's reader and its skip rule), encoded."""
        documents: list[Document] = []
        problems: list[SourceProblem] = []
        for item in read_source(source, max_document_bytes=max_document_bytes):
            if isinstance(item, Document):
                documents.append(item)
            else:
                problems.append(item)
        if not documents:
            raise IngestFailed(f"no usable document in {source} ({len(problems)} skipped)",
                               fix="point --source at .md/.txt files or a JSONL file of "
                               '{"doc_id", "text"} objects')
        return cls.build(documents, tokenizer_json, problems)

    def rows(self, config: LockedConfig, *, dedup: DedupMode = "document") -> TrialRows:
        """The rows `registry ingest` would write for `config`, from the shared encoding."""
        started = time.perf_counter()
        corpus = dedup == "corpus"
        chunker = Chunker(config, self.tokenizer, corpus=corpus, shared=self.layout)
        corpus_pass = CorpusPass(CorpusDeduplicator(config.jaccard_threshold) if corpus
                                 else None)
        report = IngestReport(config.chunk_version, config.ingest_run_id, "", "", dedup, 1)
        rows: list[Row] = []
        digest = hashlib.sha256()
        text_bytes = 0
        for first in range(0, len(self.documents), BATCH_DOCUMENTS):
            last = first + BATCH_DOCUMENTS
            results = list(chunker.chunk_encoded(self.documents[first:last],
                                                 self.encodings[first:last]))
            for row in keep_rows(results, corpus_pass, report):
                rows.append(row)
                embedding, bm25 = row[3].encode(), row[4].encode()
                text_bytes += len(embedding) + len(bm25)
                digest.update(len(embedding).to_bytes(8, "little") + embedding)
                digest.update(len(bm25).to_bytes(8, "little") + bm25)
        return TrialRows(rows, len(self.documents), self.tokens, report.duplicates_removed,
                         report.too_small, report.over_budget, time.perf_counter() - started,
                         digest.hexdigest(), text_bytes)


def _placeholder_config() -> LockedConfig:
    """A config for the encoder: encoding reads only the tokenizer, never the parameters."""
    return LockedConfig(chunk_version="tune-encoder", chunk_size=1, overlap_ratio=0.0,
                        jaccard_threshold=1.0, prefix_policy="A", embedder_name="",
                        embedder_max_tokens=1024, tokenizer_name="", tokenizer_hash="",
                        created_at="", created_by="")
