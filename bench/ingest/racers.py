"""The competitors of the ingest races, each in its fastest documented mode.

A racer takes (documents or chunk texts, tokenizer path, pinned cpus), does its setup (loading
the tokenizer, building splitters) off the clock and returns the work to time: a function that
returns how many chunks it made (or, for dedup, the indices it removed). Pools of worker
processes are started inside the timed work, for the project and for the baselines alike.
Everything here runs in a measurement subprocess already pinned by bench/fair.py.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from registry.config import LockedConfig
from registry.ingest import pipeline
from registry.ingest.chunker import (
    Chunker,
    CorpusDeduplicator,
    Document,
    MinHasher,
    jaccard,
    shingle_sets,
)
from registry.tokenizer import file_hash, load_tokenizer

SIZE, RATIO = 450, 0.10
OVERLAP = round(SIZE * RATIO)
THRESHOLD = 0.8
Work = Callable[[], Any]


def config(tokenizer_path: Path, chunk_size: int = SIZE) -> LockedConfig:
    return LockedConfig(
        chunk_version="2025-09-07-143022-v1", chunk_size=chunk_size, overlap_ratio=RATIO,
        jaccard_threshold=THRESHOLD, prefix_policy="A", embedder_name="BAAI/bge-large-en-v1.5",
        embedder_max_tokens=512, tokenizer_name="BAAI/bge-large-en-v1.5",
        tokenizer_hash=file_hash(tokenizer_path), created_at="2025-09-07T14:30:22Z",
        created_by="bench <bench@example.com>")


def read_documents(path: Path) -> list[Document]:
    with path.open() as handle:
        return [Document(**json.loads(line)) for line in handle]


def batches(documents: Sequence[Document]) -> Iterator[list[Document]]:
    """The batches `registry ingest` makes (BATCH_BYTES or BATCH_DOCUMENTS)."""
    return pipeline.batches(documents, _no_problem)


def _no_problem(problem: pipeline.SourceProblem) -> None:
    raise AssertionError(f"the bench sample has a bad document: {problem.render()}")


# -- chunking ---------------------------------------------------------------------------------


def encode_floor(documents: list[Document], tokenizer_path: Path, pinned: list[int]) -> Work:
    """`Tokenizer.encode_batch` alone over the same batches: no chunker can beat it."""
    tokenizer = load_tokenizer(tokenizer_path)
    return lambda: sum(len(e) for batch in batches(documents) for e in tokenizer.encode_batch(
        [d.text for d in batch], add_special_tokens=False))


def ours(documents: list[Document], tokenizer_path: Path, pinned: list[int]) -> Work:
    """What `registry ingest` runs by default: one worker process per core (in-process on one
    core), the corpus-wide dedup keys computed as it does."""
    from registry.ingest.pipeline import chunk_corpus
    from registry.ingest.workers import ChunkerSpec

    spec = ChunkerSpec(config(tokenizer_path), tokenizer_path.read_text(), corpus=False)
    return lambda: sum(len(r.chunks) for _, chunked in chunk_corpus(
        spec, batches(documents), len(pinned)) for r in chunked)


def ours_one_process(documents: list[Document], tokenizer_path: Path,
                     pinned: list[int]) -> Work:
    """The chunker in one process (its encode thread overlapping the cutting)."""
    chunker = Chunker(config(tokenizer_path), load_tokenizer(tokenizer_path))
    return lambda: sum(len(r.chunks) for r in chunker.chunk_stream(batches(documents)))


def chonkie_batch(documents: list[Document], tokenizer_path: Path, pinned: list[int]) -> Work:
    """chonkie's TokenChunker through `chunk_batch` (one encode_batch per batch)."""
    from chonkie import TokenChunker

    chunker = TokenChunker(tokenizer=load_tokenizer(tokenizer_path), chunk_size=SIZE,
                           chunk_overlap=OVERLAP)
    texts = [d.text for d in documents]
    return lambda: sum(len(c) for c in chunker.chunk_batch(
        texts, batch_size=pipeline.BATCH_DOCUMENTS, show_progress_bar=False))


_langchain: dict[str, Any] = {}


def _langchain_init(tokenizer_path: str) -> None:
    from langchain_text_splitters.base import Tokenizer as LangchainTokenizer

    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the processes are the parallelism
    tokenizer = load_tokenizer(Path(tokenizer_path))
    # TokenTextSplitter's constructor takes only tiktoken encodings; its split_text is
    # split_text_on_tokens with the encoding's encode/decode, so we give it ours.
    _langchain["splitter"] = LangchainTokenizer(
        chunk_overlap=OVERLAP, tokens_per_chunk=SIZE, decode=tokenizer.decode,
        encode=lambda text: tokenizer.encode(text, add_special_tokens=False).ids)


def _langchain_split(text: str) -> int:
    from langchain_text_splitters.base import split_text_on_tokens

    return len(split_text_on_tokens(text=text, tokenizer=_langchain["splitter"]))


def langchain_processes(documents: list[Document], tokenizer_path: Path,
                        pinned: list[int]) -> Work:
    """langchain's TokenTextSplitter over a process pool, one document per task."""
    texts = [d.text for d in documents]

    def work() -> int:
        if len(pinned) == 1:
            _langchain_init(str(tokenizer_path))
            return sum(map(_langchain_split, texts))
        context = multiprocessing.get_context("spawn")
        with context.Pool(len(pinned), _langchain_init, (str(tokenizer_path),)) as pool:
            return sum(pool.imap_unordered(_langchain_split, texts, chunksize=4))

    return work


def semchunk_processes(documents: list[Document], tokenizer_path: Path,
                       pinned: list[int]) -> Work:
    """semchunk's chunker on the list of texts with `processes` = the cores."""
    import semchunk

    chunker = semchunk.chunkerify(load_tokenizer(tokenizer_path), SIZE)
    texts = [d.text for d in documents]
    return lambda: sum(len(c) for c in chunker(texts, processes=len(pinned), overlap=OVERLAP))


def semantic_text_splitter(documents: list[Document], tokenizer_path: Path,
                           pinned: list[int]) -> Work:
    """semantic-text-splitter's `chunk_all` (parallel in Rust), markdown and text splitters."""
    from semantic_text_splitter import MarkdownSplitter, TextSplitter

    tokenizer = load_tokenizer(tokenizer_path)
    splitters = {"text": TextSplitter.from_huggingface_tokenizer(tokenizer, SIZE,
                                                                 overlap=OVERLAP),
                 "markdown": MarkdownSplitter.from_huggingface_tokenizer(tokenizer, SIZE,
                                                                         overlap=OVERLAP)}
    texts = {kind: [d.text for d in documents if d.kind == kind] for kind in splitters}
    return lambda: sum(len(c) for kind, splitter in splitters.items()
                       for c in splitter.chunk_all(texts[kind]))


CHUNKERS: dict[str, Callable[[list[Document], Path, list[int]], Work]] = {
    "encode_batch (floor)": encode_floor,
    "ours": ours,
    "ours, one process": ours_one_process,
    "chonkie chunk_batch": chonkie_batch,
    "langchain over processes": langchain_processes,
    "semchunk processes": semchunk_processes,
    "semantic-text-splitter chunk_all": semantic_text_splitter,
}


# -- corpus-wide dedup --------------------------------------------------------------------------


def dedup_ours(texts: list[str]) -> Work:
    """Shingling, MinHash band keys, LSH and exact verification: every stage on the clock, as
    `registry ingest --dedup corpus` runs them: shingles and band keys made a batch of
    BATCH_BYTES of text at a time (what an ingest worker chunks at once), the greedy pass in
    corpus order a batch at a time, the kept chunks' shingles in the temporary file the ingest
    keeps them in.
    (Shingling all texts in one call, as this bench did before, made arrays of the whole
    corpus: 640 MB at 1M chunks, a cost per chunk that grew with the corpus and that no
    ingest pays.)"""

    def work() -> list[int]:
        store = pipeline.FileShingleStore()
        removed: list[int] = []
        try:
            deduplicator = CorpusDeduplicator(THRESHOLD, store)
            for first, last in text_batches(texts):
                sets = shingle_sets(texts[first:last])
                verdicts = deduplicator.decide(sets, deduplicator.hasher.key_matrix(sets))
                removed.extend((first + np.flatnonzero(verdicts.matched >= 0)).tolist())
            return removed
        finally:
            store.close()

    return work


def text_batches(texts: Sequence[str]) -> Iterator[tuple[int, int]]:
    """[first, last) ranges of `texts` of about pipeline.BATCH_BYTES characters each."""
    first, size = 0, 0
    for index, text in enumerate(texts):
        size += len(text)
        if size >= pipeline.BATCH_BYTES:
            yield first, index + 1
            first, size = index + 1, 0
    if first < len(texts):
        yield first, len(texts)


def dedup_datasketch(texts: list[str]) -> Work:
    """datasketch's MinHashLSH with our number of permutations and band shape, MinHash.bulk,
    the bulk `insertion_session`, then the same greedy rule (a chunk goes if a kept earlier
    chunk is a candidate at Jaccard >= 0.8) on the same shingles. The shingles are already
    64-bit hashes, so its `hashfunc` takes their low 32 bits instead of SHA-1 of bytes."""
    from datasketch import MinHash, MinHashLSH

    hasher = MinHasher(THRESHOLD)
    permutations = hasher.bands * hasher.rows

    def low_bits(value: int) -> int:
        return value & 0xFFFFFFFF

    def work() -> list[int]:
        sets = shingle_sets(texts)
        values = [sets[i] for i in range(len(sets))]
        signatures = MinHash.bulk((v.tolist() for v in values), num_perm=permutations,
                                  hashfunc=low_bits)
        lsh = MinHashLSH(threshold=THRESHOLD, num_perm=permutations,
                         params=(hasher.bands, hasher.rows))
        with lsh.insertion_session() as session:
            for index, signature in enumerate(signatures):
                if len(values[index]):
                    session.insert(index, signature, check_duplication=False)
        kept = [True] * len(values)
        for index, signature in enumerate(signatures):
            if not len(values[index]):
                continue
            for other in lsh.query(signature):
                if other < index and kept[other] and jaccard(
                        values[index], values[other]) >= THRESHOLD:
                    kept[index] = False
                    break
        return [i for i, keep in enumerate(kept) if not keep]

    return work


DEDUPERS: dict[str, Callable[[list[str]], Work]] = {
    "ours (shingles + MinHash + LSH + verify)": dedup_ours,
    "datasketch MinHashLSH (bulk)": dedup_datasketch,
}
