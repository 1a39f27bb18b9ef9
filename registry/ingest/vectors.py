"""The embedding stage of an ingest: passages embedded through a content-addressed cache, in a
thread of its own so the model runs while the next documents are chunked and the previous
vectors are copied.

The embedder is the slow part by two orders of magnitude (a 256-token chunk takes ~0.25 s on a
CPU core; chunking and COPY take microseconds), so the pipeline's job is to keep the model
busy: a producer thread reads and chunks (in worker processes with --workers), this stage embeds,
the caller's thread writes the COPY. Queues between them are bounded (a few batches), so memory
stays flat whatever the corpus size. onnxruntime and the HTTP backend release the GIL while
they work, so the threads really overlap.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
import psycopg

from registry.database import bookkeeping
from registry.embedding.base import Embedder, Vectors
from registry.embedding.spec import EmbedderSpec

T = TypeVar("T")
U = TypeVar("U")

EMBED_BATCH = 64
"""Chunks per embedding call: small enough for steady progress, big enough to batch well."""
QUEUE_DEPTH = 2
"""Batches waiting between two stages: enough to keep the model busy, bounded for memory."""
_DONE = object()


@dataclass
class EmbeddingCounts:
    """What the stage did: vectors computed by the model, reused from the cache, and the
    seconds spent in the model (the floor of an ingest's time)."""

    computed: int = 0
    reused: int = 0
    model_seconds: float = 0.0
    stage_seconds: float = 0.0
    """The whole stage: cache look-ups and writes, and the model."""


def text_key(text: str) -> bytes:
    """The cache key of the exact text embedded (prefix included): its sha256."""
    return hashlib.sha256(text.encode("utf-8")).digest()


class PassageEmbedder:
    """Vectors for embedding_texts: the passage prefix applied, each distinct text looked up in
    the cache first, only the misses embedded (and added to the cache)."""

    def __init__(self, embedder: Embedder, cache: psycopg.Connection[Any] | None,
                 locked: EmbedderSpec | None = None) -> None:
        """`locked`: the config's pin (the fingerprint keys the cache); default the
        embedder's own spec, which must then be pinned."""
        spec = locked or embedder.spec
        if spec.fingerprint is None:
            raise ValueError("the embedder's spec has no fingerprint: pin it first")
        self._embedder = embedder
        self._cache = cache
        self._fingerprint = spec.fingerprint
        self._normalized = spec.normalize
        self._prefix = spec.passage_prefix
        self.dimension = spec.dimension
        self.counts = EmbeddingCounts()

    def vectors(self, embedding_texts: list[str]) -> Vectors:
        """One row per text, in order."""
        began = time.monotonic()
        texts = [self._prefix + text for text in embedding_texts]
        keys = [text_key(text) for text in texts]
        distinct = list(dict.fromkeys(keys))
        found: dict[bytes, Any] = {}
        if self._cache is not None:
            found = bookkeeping.cached_embeddings(self._cache, self._fingerprint,
                                                  self._normalized, distinct, self.dimension)
        missing = [key for key in distinct if key not in found]
        if missing:
            first_text = {key: text for key, text in zip(keys, texts, strict=True)}
            started = time.monotonic()
            computed = self._embedder.embed_texts([first_text[key] for key in missing])
            self.counts.model_seconds += time.monotonic() - started
            found.update(zip(missing, computed, strict=True))
            if self._cache is not None:
                bookkeeping.store_embeddings(self._cache, self._fingerprint, self._normalized,
                                             missing, computed)
        computed_keys = set(missing)
        for key in keys:
            if key in computed_keys:
                computed_keys.discard(key)  # a repeat within the batch is a reuse
                self.counts.computed += 1
            else:
                self.counts.reused += 1
        out: Vectors = np.stack([found[key] for key in keys]).astype(np.float32)
        self.counts.stage_seconds += time.monotonic() - began
        return out


class _Stage(Generic[T]):
    """A thread that puts what `make()` yields into a bounded queue; an exception is handed
    on, and `stop` ends it at the next item."""

    def __init__(self, name: str, make: Callable[[], Iterator[T]], stop: threading.Event) -> None:
        self.queue: queue.Queue[Any] = queue.Queue(QUEUE_DEPTH)
        self._make = make
        self._stop = stop
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        items = self._make()
        try:
            for item in items:
                if not self._put(item):
                    return
            self._put(_DONE)
        except BaseException as err:  # handed to the consumer, which raises it
            self._put(_Failure(err))
        finally:  # in this thread: the producer's own cleanup (its worker pool) runs here
            close = getattr(items, "close", None)
            if close is not None:
                close()

    def items(self) -> Iterator[T]:
        while True:
            try:
                item = self.queue.get(timeout=0.1)
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item


@dataclass
class _Failure:
    error: BaseException


def pipelined(produce: Callable[[], Iterator[T]], transform: Callable[[T], U]
              ) -> Iterator[tuple[T, U]]:
    """(item, transform(item)) for every item `produce()` yields, in order: `produce` runs in
    one thread, `transform` in another, the caller consumes; each stage at most QUEUE_DEPTH
    items ahead. Closing the iterator (or an exception anywhere) stops both threads."""
    stop = threading.Event()
    source = _Stage("ingest-chunk", produce, stop)

    def transformed() -> Iterator[tuple[T, U]]:
        for item in source.items():
            yield item, transform(item)

    stage = _Stage("ingest-embed", transformed, stop)
    try:
        yield from stage.items()
    finally:
        stop.set()
        for thread in (stage.thread, source.thread):
            thread.join()
