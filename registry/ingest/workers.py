"""What a chunking worker process runs. Kept apart from the pipeline so that a spawned worker
imports the chunker alone (numpy, tokenizers, the config), not the pipeline's psycopg, git and
bookkeeping: a third of a second of CPU per worker at every ingest's start, on the same cores
the chunking needs."""

from __future__ import annotations

import contextlib
import os
import pickle
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from registry.config import LockedConfig
from registry.ingest.chunker import ChunkedDocument, Chunker, Document

if TYPE_CHECKING:
    from tokenizers import Tokenizer


@dataclass(frozen=True)
class ChunkerSpec:
    """All a worker needs to build the same Chunker: the config and the tokenizer's JSON."""

    config: LockedConfig
    tokenizer_json: str
    corpus: bool


_worker: dict[str, Chunker] = {}


def tokenizer_from(spec: ChunkerSpec) -> Tokenizer:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(spec.tokenizer_json)
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


@contextlib.contextmanager
def shipped(spec: ChunkerSpec) -> Iterator[str]:
    """`spec` pickled in a private temporary file, the path for the workers to read it from as
    they start. Passed in a spawned worker's arguments, the tokenizer's JSON (~700 KB) went down
    a pipe the parent writes whole: each worker's start held the ingest until that worker had
    imported everything and read it (0.3-0.4 s a worker, one after the other), where a path
    lets the parent go on and the workers start side by side."""
    with tempfile.NamedTemporaryFile(prefix="registry-chunker-", suffix=".pickle") as file:
        pickle.dump(spec, file, protocol=pickle.HIGHEST_PROTOCOL)
        file.flush()
        yield file.name


def init_worker(spec_path: str, parent: int, main_thread: bool) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the processes are the parallelism
    _die_with(parent, main_thread)
    with open(spec_path, "rb") as file:  # written by this ingest, readable by its user only
        spec: ChunkerSpec = pickle.load(file)
    _worker["chunker"] = Chunker(spec.config, tokenizer_from(spec), corpus=spec.corpus)


PARENT_POLL_S = 0.5


def _die_with(parent: int, main_thread: bool) -> None:
    """A worker must not outlive the ingest that started it: after a SIGKILL (or a SIGTERM) of
    the parent, orphans would chunk for nobody and hold the resource tracker alive. On Linux
    the kernel kills the worker as the parent dies (PR_SET_PDEATHSIG; only when the pool was
    started from the main thread, since the signal fires when the starting *thread* ends); a
    thread that watches the parent covers other systems and a parent that died before it."""
    import signal
    import sys
    import threading

    if main_thread and sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PDEATHSIG

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def chunk_in_worker(documents: list[Document]) -> list[ChunkedDocument]:
    return _worker["chunker"].chunk_many(documents)
