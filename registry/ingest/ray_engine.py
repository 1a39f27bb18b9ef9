"""`registry ingest --engine ray`: the same ingest on Ray, on a laptop or a cluster.

read -> chunk -> dedup -> embed -> load, with the built-in ingest's own code at every step:

- read: the driver reads the source with `read_source` (the same documents, problems and order
  as the built-in ingest) and puts it into the object store shard by shard (`shard_documents`
  documents each, fewer once a shard holds SHARD_BYTES of text; beyond `object_store_memory`
  Ray spills them to disk), keeping only refs.
- chunk: `ChunkShard` actors, one CPU each, `workers` of them, plain Ray actors the driver
  gives one shard at a time (`chunk_shards`; a Ray Data actor pool took seconds longer to
  start them); the config and the tokenizer are put into the object store once and each actor
  builds its `Chunker` from them at start. What they output is columnar (`chunked_table`: the
  rows' fields, band keys and shingle sets as arrow list columns), nothing pickled, and only
  what later stages read.
- dedup, up to DRIVER_DEDUP_BYTES of source: the driver runs the built-in ingest's corpus pass
  (`DriverPass`: `CorpusPass`, a `CorpusDeduplicator`) over the blocks in shard order as they
  are chunked, beside the actors, as the built-in's parent does beside its workers.
- dedup, past it: plain Ray tasks, no Ray Data shuffle (`_dedup`; their task workers start
  during the chunk stage, `warm_task_workers`): every chunk's band keys (and its id)
  travel as numpy records of 24 bytes to partitions by key, so candidates made on different
  nodes meet; each partition keeps the records that meet another, the shingle sets of those
  chunks alone are gathered from their blocks, each partition verifies its pairs exactly
  (`distributed.verify_collisions`) and the driver applies the greedy corpus order to the few
  chunks that have a near-duplicate (`distributed.resolve`). Either way the kept set is the
  built-in ingest's, chunk for chunk.
- embed (a config that pins an embedder): `EmbedShards` actors apply the corpus decisions to
  each shard, embed the kept rows' embedding_text with the passage prefix through the embedding
  cache, as the built-in ingest does, and COPY rows and vectors themselves (a task downstream
  would wait for the CPUs the actors hold). The embedder is shipped once (an onnx pin's model
  and tokenizer bytes, so a node needs no model package; an openai pin's endpoint and token)
  and every actor rebuilds it and checks its files' hashes and its fingerprint before it
  embeds: a node whose runtime answers the probes differently (another GPU provider) fails the
  run, writing nothing. An onnx pin takes one actor per GPU when the cluster has GPUs (at most
  `workers`), else one per worker with one onnxruntime thread each.
- load (no embedder): the chunking actors (`load_blocks`, one block per actor at once) COPY
  each shard into `chunk_registry.ingest_staging_<run>` in one transaction per shard, deleting
  the shard's earlier rows first (a retried call replaces, never doubles). The driver then
  checks every shard is there and moves the run into the shadow table in one transaction,
  which also records the run (its shards listed) and drops the staging table: readers see the
  whole run or none of it. An actor killed mid-run is restarted and its call made again by
  Ray (CHUNK_RETRIES; the embedding actors LOAD_RETRIES); when retries run out the run fails,
  the staging table is dropped and the shadow table is as it was.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import logging
import os
import pickle
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import numpy.typing as npt
import psycopg
from psycopg import sql

from registry import extras, faults
from registry.config import LockedConfig
from registry.database import bookkeeping
from registry.database.chunk_table import COPY_TYPES, ChunkTable
from registry.database.connection import connect, database_error
from registry.errors import EngineUnavailable, RegistryError, UsageError
from registry.ingest import distributed
from registry.ingest.chunker import (
    Chunk,
    ChunkedDocument,
    Chunker,
    CorpusDeduplicator,
    Document,
    KeyMatrix,
    MinHasher,
    ShingleSets,
)
from registry.ingest.pipeline import (
    ACCOUNTED_KEPT,
    BATCH_DOCUMENTS,
    DEFAULT_MAX_CHANGE,
    MAX_DOCUMENT_BYTES,
    STAGED,
    CorpusPass,
    DedupMode,
    FileShingleStore,
    IngestFailed,
    IngestReport,
    Progress,
    SourceProblem,
    account_document,
    apply_document_changes,
    check_not_empty,
    commit_run,
    count_document,
    error_summary,
    guard_served,
    note_problem,
    read_source,
    record_failed_run,
    record_start,
    require_managed_table,
    source_bytes,
    take_run_lock,
    vector_copy_types,
    written_columns,
)
from registry.ingest.workers import ChunkerSpec, tokenizer_from

if TYPE_CHECKING:
    import pyarrow as pa

    from registry.embedding.base import Embedder
    from registry.ingest.vectors import PassageEmbedder

SHARD_BYTES = 8 * 1024 * 1024
"""Characters of text at which a shard closes before `shard_documents` documents. A chunking
actor chunks its whole shard in one `chunk_many` (one encode_batch, every shingle set, the
output table): about 26 MB of memory per MB of text (283 MB for 8 MB), so 256 documents of a
few MB each would take GBs in one actor. Larger than the built-in's BATCH_BYTES: every shard
is a block the dedup shuffle exchanges an object with every partition."""
OBJECT_STORE_BYTES = 1024 * 1024 * 1024
"""A local Ray's object store, whose shared-memory pages are taken as objects are put; past
it objects spill to disk. (At 128 MB a 32 MB corpus's shards and chunked blocks spilled, and
Ray's spill and restore workers took 2.3 s of CPU on a 2-core machine.)"""
CHUNK_RETRIES = 3
"""Times a chunking actor whose process died is restarted over the run (each time its call,
a shard chunked or a block loaded, is made again): a budget per actor, not per call."""
LOAD_RETRIES = 3
"""Times Ray restarts an embedding actor whose process died, before the run fails."""
ACTORS_READY_S = 900
"""How long a stage waits for the first of its actors to start (a cluster that cannot host
them, or is scaling up, fails the run after it); the work itself has no time limit."""
SUMMED = ("duplicates_removed", "corpus_duplicates", "identical_ids", "too_small",
          "header_only", "over_budget", "tokens", "chunks", "ingested", "vectors_computed",
          "vectors_reused")
EMBEDDING_SUMMED = ("embed_seconds", "embedding_stage_seconds")


# ---------------------------------------------------------------------------------------------
# The session: a local Ray of our own, or a cluster joined


IDLE_WORKER_KEEP_MS = 60 * 60 * 1000
"""How long a local Ray of our own keeps an idle task worker (Ray's default, 1 s, kills the
workers started ahead for the dedup steps while the chunk actors hold the CPUs; the session
ends with the run, and every worker with it)."""
STARTUP_TIMEOUT_MS = "180000"
"""How long a raylet waits for its agents at start (Ray's default, 30 s, is short on a busy
machine); only set when the environment does not."""


@contextlib.contextmanager
def ray_session(address: str | None, workers: int) -> Iterator[dict[str, Any]]:
    """Ray, started small on this machine (no dashboard, `workers` CPUs, a small object store)
    or joined at `address`; shut down at the end. A driver already connected (a notebook, a
    test, a RayJob's entrypoint that called ray.init) is used as it is and left connected."""
    extras.require("ray", "--engine ray")
    import ray

    logging.getLogger("ray").setLevel(logging.WARNING)
    started = False
    if not ray.is_initialized():
        options: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
        try:
            if address:
                ray.init(address=address, **options)
            else:
                _start_local(workers, options)
        except Exception as err:  # Ray raises ConnectionError, RuntimeError or bare Exception
            where = f"the Ray cluster at {address}" if address else "a local Ray"
            raise EngineUnavailable(
                f"cannot start or join {where}: {error_summary(err)}",
                fix="check --ray-address (host:6379, or ray://host:10001), or leave it out to "
                "run a local Ray") from None
        started = True
    nodes = [n for n in ray.nodes() if n.get("Alive")]  # type: ignore[no-untyped-call]
    try:
        yield {"address": address or "local", "nodes": len(nodes),
               "cpus": int(sum(n.get("Resources", {}).get("CPU", 0) for n in nodes)),
               "gpus": int(sum(n.get("Resources", {}).get("GPU", 0) for n in nodes))}
    finally:
        if started:
            ray.shutdown()


LOCAL_START_ATTEMPTS = 3


def _start_local(workers: int, options: dict[str, Any]) -> None:
    """A local Ray; a start that missed Ray's fixed 30 s wait for its raylet (a busy machine)
    is tried again, up to LOCAL_START_ATTEMPTS times."""
    import ray

    os.environ.setdefault("RAY_agent_register_timeout_ms", STARTUP_TIMEOUT_MS)
    for attempt in range(1, LOCAL_START_ATTEMPTS + 1):
        try:
            ray.init(address="local", num_cpus=workers, include_dashboard=False,
                     object_store_memory=OBJECT_STORE_BYTES,
                     _system_config={"idle_worker_killing_time_threshold_ms":
                                     IDLE_WORKER_KEEP_MS}, **options)
            return
        except Exception as err:
            ray.shutdown()
            if "timed out during startup" not in str(err) or attempt == LOCAL_START_ATTEMPTS:
                raise


def worker_options() -> dict[str, Any]:
    """Ray remote options of every stage: the workers get the fault-injection variables the
    driver has (as the built-in's processes inherit them) and one tokenizer thread each."""
    env = {name: os.environ[name] for name in
           (faults.FAULT_ENV, faults.TRACE_ENV, faults.ONCE_ENV) if os.environ.get(name)}
    env["TOKENIZERS_PARALLELISM"] = "false"  # the actors are the parallelism
    return {"runtime_env": {"env_vars": env}}


def _warm() -> int:
    """A warm-up task: nothing to do once its worker has started and imported this module
    (Ray imports it to find the function), which is the point; its process id."""
    return os.getpid()


def warm_task_workers(count: int, remote: dict[str, Any]) -> list[Any]:
    """`count` task workers started now, with the stages' runtime env and this module
    imported, taking no CPU slot (the chunk actors hold them): the dedup steps and the loads
    that follow the chunk stage find them started instead of waiting for new processes (about
    7 s on a busy 2-core machine). A local Ray of our own keeps them while idle
    (IDLE_WORKER_KEEP_MS); a joined cluster keeps them as its own settings say. The refs of
    their process ids, which nothing needs to wait for."""
    import ray

    warm = ray.remote(_warm).options(num_cpus=0, **remote)
    return [warm.remote() for _ in range(count)]


# ---------------------------------------------------------------------------------------------
# The stages (run in Ray workers)


class ChunkShard:
    """A chunking actor: the Chunker is built once, from the spec shipped once."""

    def __init__(self, shipped: Any) -> None:
        import ray

        spec: ChunkerSpec = ray.get(shipped) if isinstance(shipped, ray.ObjectRef) else shipped
        self.chunker = Chunker(spec.config, tokenizer_from(spec), corpus=spec.corpus)
        self.node = ray.get_runtime_context().get_node_id()

    def chunk(self, batch: pa.Table) -> pa.Table:
        """One shard's documents, chunked (`chunked_table`)."""
        columns = batch.to_pydict()
        documents = [Document(d, t, x, k) for d, t, x, k in zip(
            columns["doc_id"], columns["title"], columns["text"], columns["kind"], strict=True)]
        chunked = self.chunker.chunk_many(documents)
        if columns["shard"]:
            faults.point("ray", "chunk", "chunked", f"shard{columns['shard'][0]}")
        hasher = self.chunker.hasher
        return chunked_table(columns["shard"], columns["seq"], self.node, chunked,
                             hasher.bands if hasher is not None else 0)

    def load(self, block: pa.Table, **load: Any) -> pa.Table:
        """A chunked block decided and COPYed (`_load_batch`), once the chunking is done."""
        return _load_batch(block, **load)


CHUNK_COLUMNS = ("id", "chunk_index", "embedding_text", "bm25_text", "embedding_tokens",
                 "bm25_tokens")
"""A chunk's row as it travels (a list per document each): the rest of the row (the
document's id, chunk_version, ingest_run_id) is the document's or the run's."""
DOCUMENT_COUNTS = ("tokens", "too_small", "duplicates", "over_budget", "header_only")


def _lists(offsets: npt.NDArray[np.int64], values: pa.Array) -> pa.Array:
    import pyarrow as pa

    return pa.ListArray.from_arrays(pa.array(offsets, pa.int64()).cast(pa.int32()), values)


def chunked_table(shards: Sequence[int], seqs: Sequence[int], node: str,
                  chunked: Sequence[ChunkedDocument], bands: int) -> pa.Table:
    """The chunk stage's output, a row per document, columnar: its rows' fields as lists, and
    (corpus dedup: `bands` > 0) its chunks' band keys (a list of `bands` per chunk, empty for
    a chunk without) and shingle sets as lists of lists of uint64, which the dedup stage reads
    without unpickling anything and gathers for the chunks that collide only. What later
    stages do not need (sections, offsets, overlaps) does not travel."""
    import pyarrow as pa

    chunks = [c for r in chunked for c in r.chunks]
    per_document = np.zeros(len(chunked) + 1, dtype=np.int64)
    np.cumsum([len(r.chunks) for r in chunked], out=per_document[1:])
    table: dict[str, Any] = {"shard": pa.array(shards, pa.int64()),
                             "seq": pa.array(seqs, pa.int64()),
                             "node": pa.array([node] * len(chunked), pa.string()),
                             "doc_id": pa.array([r.doc_id for r in chunked], pa.string())}
    for name in DOCUMENT_COUNTS:
        table[name] = pa.array([getattr(r, name) for r in chunked], pa.int64())
    fields = (("id", pa.string()), ("chunk_index", pa.int32()),
              ("embedding_text", pa.large_string()), ("bm25_text", pa.large_string()),
              ("embedding_token_count", pa.int32()), ("bm25_token_count", pa.int32()))
    for name, (field_name, kind) in zip(CHUNK_COLUMNS, fields, strict=True):
        table[name] = _lists(per_document, pa.array([getattr(c, field_name) for c in chunks],
                                                    kind))
    sets = [s for r in chunked for s in r.shingles] if bands else []
    keys = [k for r in chunked for k in r.band_keys] if bands else []
    set_offsets = np.zeros(len(chunks) + 1, dtype=np.int64)
    key_offsets = np.zeros(len(chunks) + 1, dtype=np.int64)
    if bands:
        np.cumsum([len(v) for v in sets], out=set_offsets[1:])
        np.cumsum([len(k) for k in keys], out=key_offsets[1:])
    values = np.concatenate(sets).astype(np.uint64) if sets else np.empty(0, np.uint64)
    flat_keys = np.fromiter((x for k in keys for x in k), dtype=np.uint64,
                            count=int(key_offsets[-1]))
    table["band_keys"] = _lists(per_document, _lists(key_offsets, pa.array(flat_keys)))
    table["shingles"] = _lists(per_document, _lists(set_offsets, pa.array(values)))
    return pa.table(table)


@dataclass(frozen=True)
class BlockChunks:
    """A chunk-stage block's chunks as the dedup stage reads them (numpy, no Python object
    per chunk but the id)."""

    orders: npt.NDArray[np.int64]
    keys: npt.NDArray[np.uint64]
    has_keys: npt.NDArray[np.bool_]
    chunk_ids: list[str]
    doc_of_chunk: npt.NDArray[np.int64]
    doc_ids: list[str]


def _per_chunk(block: pa.Table, bands: int) -> BlockChunks:
    import pyarrow.compute as pc

    seqs = block.column("seq").to_numpy()
    ids = block.column("id").combine_chunks()
    counts = pc.list_value_length(ids).to_numpy(zero_copy_only=False).astype(np.int64)
    doc_of_chunk = np.repeat(np.arange(len(seqs), dtype=np.int64), counts)
    starts = np.zeros(len(seqs), dtype=np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    numbers = np.arange(len(doc_of_chunk), dtype=np.int64) - starts[doc_of_chunk]
    orders = (seqs.astype(np.int64)[doc_of_chunk] << distributed.DOC_SHIFT) | numbers
    keys = np.empty((0, bands), dtype=np.uint64)
    has_keys = np.zeros(len(orders), dtype=bool)
    if bands:
        per_chunk = block.column("band_keys").combine_chunks().flatten()
        has_keys = pc.list_value_length(per_chunk).to_numpy(zero_copy_only=False) > 0
        keys = per_chunk.flatten().to_numpy(zero_copy_only=False).astype(np.uint64).reshape(
            -1, bands)
    return BlockChunks(orders, keys, has_keys, ids.flatten().to_pylist(), doc_of_chunk,
                       block.column("doc_id").to_pylist())


def _shingle_sets(block: pa.Table) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.int64]]:
    """A block's shingle sets, every chunk's: the values, and the offsets that split them."""
    import pyarrow.compute as pc

    per_chunk = block.column("shingles").combine_chunks().flatten()
    offsets = np.zeros(len(per_chunk) + 1, dtype=np.int64)
    np.cumsum(pc.list_value_length(per_chunk).to_numpy(zero_copy_only=False), out=offsets[1:])
    return per_chunk.flatten().to_numpy(zero_copy_only=False).astype(np.uint64), offsets


def _route_block(block: pa.Table, partitions: int, bands: int) -> tuple[Any, ...]:
    """A dedup task: a block's band and id records, by partition (numpy records, a few dozen
    bytes a chunk), and the block's lowest order (-1 for a block without a chunk)."""
    chunks = _per_chunk(block, bands)
    hi, lo = distributed.id_halves(chunks.chunk_ids)
    if bands:
        values, offsets = _shingle_sets(block)
        keyed = np.flatnonzero(chunks.has_keys)
        set_digests = distributed.digests(values, offsets)[keyed]
    else:
        set_digests = np.empty((0, 2), dtype=np.uint64)
    routed = distributed.route(chunks.orders, chunks.keys, chunks.has_keys, set_digests, hi, lo,
                               partitions)
    return (*routed, int(chunks.orders.min()) if len(chunks.orders) else -1)


def _collide_partition(lows: npt.NDArray[np.int64], blocks: int, *routed: distributed.Routed
                       ) -> tuple[Any, ...]:
    """A dedup task: one partition's records that meet another, and the chunks it needs
    from each block (blocks sorted by their lowest order, `lows`)."""
    collisions = distributed.collide(routed)
    return (*distributed.split_by_block(collisions.wanted(), lows, blocks), collisions)


def _gather_block(block: pa.Table, bands: int, *wanted: npt.NDArray[np.int64]
                  ) -> tuple[Any, ...]:
    """A dedup task: of one block's chunks, the band keys, doc ids and shingle sets of those
    each partition asked for (the chunks that collide there), nothing else."""
    chunks = _per_chunk(block, bands)
    if not any(len(w) for w in wanted) or not bands:
        values = np.empty(0, np.uint64)
        offsets = np.zeros(len(chunks.orders) + 1, dtype=np.int64)
    else:
        values, offsets = _shingle_sets(block)
    doc_ids = [chunks.doc_ids[d] for d in chunks.doc_of_chunk.tolist()]
    return tuple(distributed.gather(chunks.orders, chunks.keys, chunks.has_keys, doc_ids,
                                    values, offsets, bands, wanted))


def _verify_collisions(collisions: distributed.Collisions, threshold: float,
                       *gathered: distributed.Gathered) -> distributed.PartitionResult:
    """A dedup task: one partition's colliding pairs verified exactly."""
    return distributed.verify_collisions(collisions, gathered, threshold)


PARTITION_SOURCE_BYTES = 16 * 1024 * 1024
"""Source bytes per dedup partition. A partition holds its chunks' band records (40 bytes
each) and id records (24), about 0.08 bytes per source byte at 11 bands, shingles never
included, and the shingle sets of its chunks that meet another but are not exact copies (a
colliding set goes to each partition one of its bands falls in, at most 11): a few tens of MB
at most whatever the corpus size, up to MAX_PARTITIONS. The tasks exchange blocks x
partitions small objects."""
MAX_PARTITIONS = 16384


def dedup_partitions(workers: int, source_bytes: int) -> int:
    """Partitions of the band-key shuffle: two per worker at least, more as the corpus grows
    so each stays small (flat memory per task up to 64 GB of source)."""
    return max(2, 2 * workers, min(MAX_PARTITIONS, -(-source_bytes // PARTITION_SOURCE_BYTES)))


@dataclass
class DecidedShard:
    """One shard's kept rows under the corpus decisions, counted as the built-in ingest counts
    (and, with an embedder, their vectors): what a load COPYs."""

    shard: int
    documents: int
    chunked_on: str
    rows: list[tuple[int, tuple[Any, ...]]]
    """(the document's corpus sequence number, the row) for every kept chunk, in order."""
    counts: IngestReport
    vectors: Any = None
    """float32 (rows, dimension) once embedded; None for a BM25-only config."""
    embedded_on: str | None = None


@dataclass
class ShardSummary:
    """What a load reports for one shard (the driver sums these into the run)."""

    shard: int
    rows: int
    documents: int
    chunked_on: str
    loaded_on: str
    counts: IngestReport
    embedded_on: str | None = None


def _decide_shards(batch: pa.Table, run: IngestReport, decided: dict[int, Any]
                   ) -> list[DecidedShard]:
    """The kept rows of each shard in a batch of chunked documents; `decided` holds a ref to
    each shard's own corpus decisions (fetched only for the shards here, so a task's memory
    does not grow with the corpus)."""
    import ray

    columns = batch.select(["shard", "seq", "node", "doc_id", *DOCUMENT_COUNTS,
                            *CHUNK_COLUMNS]).to_pydict()
    by_shard: dict[int, list[tuple[int, ChunkedDocument]]] = defaultdict(list)
    chunked_on: dict[int, str] = {}
    for position, (shard, seq, node) in enumerate(zip(columns["shard"], columns["seq"],
                                                      columns["node"], strict=True)):
        by_shard[shard].append((seq, _document_at(columns, position, run)))
        chunked_on[shard] = node
    shards = []
    for shard, documents in sorted(by_shard.items()):
        decisions: distributed.Decisions = (ray.get(decided[shard]) if shard in decided
                                            else distributed.Decisions())
        counts = IngestReport(run.chunk_version, run.ingest_run_id, run.table, run.source,
                              run.dedup, run.workers)
        rows = [(seq, row) for seq, result in documents
                for row in _decided_rows(seq, result, decisions, counts)]
        shards.append(DecidedShard(shard, len(documents), chunked_on[shard], rows, counts))
    return shards


def _document_at(columns: dict[str, list[Any]], position: int, run: IngestReport
                 ) -> ChunkedDocument:
    """Document `position` of a chunk-stage batch, with what its rows and its accounting need
    (sections and offsets did not travel; shingles are the dedup stage's)."""
    doc_id = columns["doc_id"][position]
    chunks = [Chunk(chunk_id, doc_id, index, embedding_text, bm25_text, embedding_tokens,
                    bm25_tokens, run.chunk_version, run.ingest_run_id, "", 0, 0, 0)
              for chunk_id, index, embedding_text, bm25_text, embedding_tokens, bm25_tokens
              in zip(*(columns[name][position] for name in CHUNK_COLUMNS), strict=True)]
    return ChunkedDocument(doc_id, chunks, [], [],
                           **{name: columns[name][position] for name in DOCUMENT_COUNTS})


def _copy_shards(conn: psycopg.Connection[Any], staging: str, shards: list[DecidedShard],
                 types: Sequence[str], loaded_on: str) -> list[ShardSummary]:
    """Each shard's rows (and vectors) COPYed into the staging table in a transaction of its
    own on `conn` (autocommit), after deleting what an earlier attempt left of the shard: a
    retried load replaces, never doubles. `types` are the COPY types of the written columns
    (`vector_copy_types`, registered once per connection, when the rows carry vectors)."""
    target = sql.Identifier(bookkeeping.BOOKKEEPING_SCHEMA, staging)
    vectors = len(types) > len(COPY_TYPES)
    columns = (*written_columns(vectors), "shard", "doc_seq")
    copy_sql = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        target, sql.SQL(", ").join(map(sql.Identifier, columns)))
    types = [*types, "int4", "int8"]
    summaries = []
    for shard in shards:
        with conn.transaction():
            conn.execute(sql.SQL("DELETE FROM {} WHERE shard = {} AND doc_seq = ANY({})").format(
                target, sql.Literal(shard.shard),
                sql.Literal(sorted({seq for seq, _ in shard.rows}))))
            with conn.cursor() as cursor, cursor.copy(copy_sql) as copy:
                copy.set_types(types)
                if vectors:
                    for (seq, row), vector in zip(shard.rows, shard.vectors, strict=True):
                        copy.write_row((*row, vector, shard.shard, seq))
                else:
                    for seq, row in shard.rows:
                        copy.write_row((*row, shard.shard, seq))
            faults.point("ray", "load", "copied", f"shard{shard.shard}")
        summaries.append(ShardSummary(shard.shard, shard.counts.chunks, shard.documents,
                                      shard.chunked_on, loaded_on, shard.counts,
                                      shard.embedded_on))
    return summaries


def _outcomes(outcomes: Sequence[ShardSummary | RegistryError]) -> pa.Table:
    """A load's result: its shards' summaries, or the RegistryError that refused the work,
    passed on as data to the driver, which raises it (Ray's own exception wrapping loses the
    error's type, and with it the user's one line and exit code)."""
    import pyarrow as pa

    return pa.table({"outcome": [pickle.dumps(o, protocol=5) for o in outcomes]})


def _load_batch(batch: pa.Table, dsn: str, staging: str, run: IngestReport,
                decided: dict[int, Any]) -> pa.Table:
    """The load task of a config without an embedder: the batch's rows decided and COPYed."""
    import ray

    try:
        shards = _decide_shards(batch, run, decided)
        with connect(dsn, purpose="ingest ray load") as conn:
            return _outcomes(_copy_shards(conn, staging, shards, COPY_TYPES,
                                          ray.get_runtime_context().get_node_id()))
    except RegistryError as refused:
        return _outcomes([refused])


@dataclass(frozen=True)
class ShippedEmbedder:
    """What an embedding actor rebuilds the config's embedder from, put into the object store
    once: an onnx pin's model and tokenizer bytes (a node needs no model package, and the
    bytes are checked against the pin's hashes there), or an openai pin's endpoint settings
    (its token travels here, never in Ray's runtime env, which the dashboard shows)."""

    config: LockedConfig
    model: bytes | None = field(default=None, repr=False)
    tokenizer: bytes | None = field(default=None, repr=False)
    settings: dict[str, str] = field(default_factory=dict, repr=False)


def ship_embedder(config: LockedConfig, embedder: Embedder) -> ShippedEmbedder:
    """The shipment of `embedder`, already verified against `config` by the driver."""
    from registry.embedding.onnx import OnnxEmbedder
    from registry.embedding.openai import OpenAIEmbedder

    if isinstance(embedder, OnnxEmbedder) and embedder.spec.backend == "onnx":
        model_file, tokenizer_file = embedder.files
        return ShippedEmbedder(config, model_file.read_bytes(), tokenizer_file.read_bytes())
    if isinstance(embedder, OpenAIEmbedder):
        return ShippedEmbedder(config, settings=embedder.settings())
    raise UsageError(f"--engine ray ships onnx and openai embedders, not "
                     f"{type(embedder).__name__}",
                     fix="ingest with the built-in engine, or pass the config's onnx or "
                     "openai embedder")


def uses_gpus(config: LockedConfig, cluster_gpus: int) -> bool:
    """Whether embedding actors take a GPU each: an onnx pin on a cluster that has GPUs (an
    openai pin's actors only wait on HTTP)."""
    return cluster_gpus > 0 and config.embedder is not None and config.embedder.backend == "onnx"


class EmbedShards:
    """An embedding actor: the embedder rebuilt from its shipment and checked (hashes, then
    fingerprint) at its first batch, then each batch's shards decided, their kept rows
    embedded through the embedding cache and COPYed into the staging table (on the actor's one
    connection), so no task downstream waits for CPUs the actors hold. A refusal is returned as
    data and remembered: the actor refuses every later batch at once."""

    def __init__(self, shipped: Any, dsn: str, staging: str, run: IngestReport,
                 decided: dict[int, Any], gpu: bool) -> None:
        import ray

        self._shipped = shipped
        self._dsn = dsn
        self._staging = staging
        self._run = run
        self._decided = decided
        self._gpu = gpu
        self._passages: PassageEmbedder | None = None
        self._refused: RegistryError | None = None
        self._conn: psycopg.Connection[Any] | None = None
        self._types: list[str] = []
        """The COPY types, pgvector's registered on `_conn` once (at `_build`)."""
        self._node = ray.get_runtime_context().get_node_id()

    def _build(self) -> PassageEmbedder:
        import tempfile

        import ray

        from registry.embedding.locked import verified_embedder
        from registry.errors import EmbedderError
        from registry.ingest.vectors import PassageEmbedder

        recipe: ShippedEmbedder = (ray.get(self._shipped)
                                   if isinstance(self._shipped, ray.ObjectRef) else self._shipped)
        runtime: dict[str, Any] = {"env": recipe.settings}
        with tempfile.TemporaryDirectory(prefix="registry-embedder-") as files:
            if recipe.model is not None and recipe.tokenizer is not None:
                model_file = Path(files, "model.onnx")
                tokenizer_file = Path(files, "tokenizer.json")
                model_file.write_bytes(recipe.model)
                tokenizer_file.write_bytes(recipe.tokenizer)
                # One thread per actor on CPUs: the actors are the parallelism.
                runtime = {"model_file": model_file, "tokenizer_file": tokenizer_file,
                           "threads": None if self._gpu else 1}
            try:
                embedder = verified_embedder(recipe.config, **runtime)
            except EmbedderError as err:
                raise type(err)(f"the embedder shipped to Ray node {self._node}: {err.message}",
                                where=err.where, fix=err.fix) from None
        self._conn = connect(self._dsn, purpose="ingest ray embed and load")
        self._types = vector_copy_types(self._conn)
        return PassageEmbedder(embedder, self._conn, recipe.config.embedder)

    def _embed(self, shards: list[DecidedShard]) -> None:
        import numpy

        from registry.ingest.vectors import EMBED_BATCH

        if self._passages is None:
            self._passages = self._build()
        passages = self._passages
        for shard in shards:
            before = replace(passages.counts)
            texts = [row[3] for _, row in shard.rows]
            parts = [passages.vectors(texts[start:start + EMBED_BATCH])
                     for start in range(0, len(texts), EMBED_BATCH)]
            shard.vectors = (numpy.concatenate(parts) if parts
                             else numpy.empty((0, passages.dimension), numpy.float32))
            after = passages.counts
            shard.counts.vectors_computed = after.computed - before.computed
            shard.counts.vectors_reused = after.reused - before.reused
            shard.counts.embed_seconds = after.model_seconds - before.model_seconds
            shard.counts.embedding_stage_seconds = after.stage_seconds - before.stage_seconds
            shard.embedded_on = self._node

    def load(self, batch: pa.Table) -> pa.Table:
        """A chunked block decided, its kept rows embedded, and COPYed."""
        if self._refused is not None:
            return _outcomes([self._refused])
        try:
            shards = _decide_shards(batch, self._run, self._decided)
            self._embed(shards)
            assert self._conn is not None
            return _outcomes(_copy_shards(self._conn, self._staging, shards, self._types,
                                          self._node))
        except RegistryError as refused:
            self._refused = refused
            return _outcomes([refused])

    def __del__(self) -> None:
        conn = getattr(self, "_conn", None)  # not set on Ray's ActorClass wrapper of this class
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()


def _decided_rows(seq: int, result: ChunkedDocument, decisions: distributed.Decisions,
                  counts: IngestReport) -> list[tuple[Any, ...]]:
    """A document's rows under the corpus decisions, counted as the built-in ingest counts."""
    count_document(result, counts)
    kept: list[Chunk] = []
    into: list[str] = []
    for number, chunk in enumerate(result.chunks):
        order = distributed.order_of(seq, number)
        owner = decisions.near_duplicates.get(order)
        if owner is not None:
            counts.corpus_duplicates += 1
        else:
            owner = decisions.identical.get(order)
            if owner is not None:
                counts.identical_ids += 1
        if owner is not None:
            counts.duplicates_removed += 1
            into.append(owner)
            continue
        kept.append(chunk)
    rows = account_document(result, kept, into, counts)
    counts.chunks += len(rows)
    counts.tokens += result.tokens
    return rows


# ---------------------------------------------------------------------------------------------
# The run


def run_ray_ingest(
    target: ChunkTable,
    source: Path,
    dsn: str,
    tokenizer_json: str,
    *,
    address: str | None = None,
    dedup: DedupMode = "document",
    workers: int = 1,
    strict: bool = False,
    max_document_bytes: int = MAX_DOCUMENT_BYTES,
    shard_documents: int = BATCH_DOCUMENTS,
    on_progress: Callable[[Progress], None] | None = None,
    on_problem: Callable[[SourceProblem], None] | None = None,
    into_production: bool = False,
    max_change: float = DEFAULT_MAX_CHANGE,
    embedder: Embedder | None = None,
) -> IngestReport:
    """`run_ingest` on Ray: the same checks, locks, rows, vectors and run record; see the
    module. A config that pins an embedder needs `embedder`, verified against the lock."""
    if target.config.embedder is not None and embedder is None:
        raise UsageError(f"{target.chunk_version} pins an embedder: its ingest needs one",
                         fix="build it with registry.embedding.locked.verified_embedder")
    if target.config.embedder is None:
        embedder = None
    if dedup not in ("document", "corpus"):
        raise UsageError(f"--dedup {dedup} is not document or corpus")
    if not 0 <= max_change <= 1:
        raise UsageError(f"--max-change {max_change} is not a share between 0 and 1")
    extras.require("ray", "--engine ray")
    config = target.config
    report = IngestReport(config.chunk_version, config.ingest_run_id, target.qualified,
                          str(source), dedup, max(workers, 1), engine="ray")
    progress = Progress(total_bytes=source_bytes(source) if source.exists() else None)
    control = connect(dsn, purpose="ingest")
    try:
        bookkeeping.ensure_schema(control)
        require_managed_table(control, target)
        report.into_production = guard_served(control, target, into_production)
        take_run_lock(control, report)
        report.run = record_start(control, report, target.registries[0])
        bookkeeping.drop_ingest_staging(control, report.ingest_run_id)  # a killed driver's
        vectors = target.config.embedder is not None
        if target.config.embedder is not None:
            report.embedder_fingerprint = target.config.embedder.fingerprint
        staging = bookkeeping.create_ingest_staging(control, report.run, target.identifier,
                                                    written_columns(vectors))
        staging_name = f"{bookkeeping.STAGING_PREFIX}{report.run}"
        started = time.monotonic()
        try:
            with ray_session(address, report.workers) as cluster:
                report.ray = {**cluster, "staging": staging_name,
                              "seconds": {"start": round(time.monotonic() - started, 3)}}
                _pipeline(target, source, dsn, tokenizer_json, report, progress, staging_name,
                          strict=strict, max_document_bytes=max_document_bytes,
                          shard_documents=shard_documents, on_progress=on_progress,
                          on_problem=on_problem, embedder=embedder)
            moving = time.monotonic()
            with connect(dsn, autocommit=False, purpose="ingest move") as data:
                _move(data, target, staging, report, max_change, vectors)
                report.ray["seconds"]["move"] = round(time.monotonic() - moving, 3)
                commit_run(data, report, started)
        except BaseException as err:
            with contextlib.suppress(psycopg.Error):
                bookkeeping.drop_ingest_staging(control, report.ingest_run_id)
            reason = record_failed_run(control, report, started, err)
            if isinstance(err, psycopg.Error):
                raise database_error(err, dsn, f"loading {target.qualified}") from None
            if isinstance(err, RegistryError | KeyboardInterrupt | SystemExit):
                raise
            raise IngestFailed(f"the Ray pipeline failed, nothing was written: {reason}",
                               fix="see the Ray worker logs; rerun (a retried run starts "
                               "over)") from None
    finally:
        control.close()
    return report


def _pipeline(target: ChunkTable, source: Path, dsn: str, tokenizer_json: str,
              report: IngestReport, progress: Progress, staging: str, *, strict: bool,
              max_document_bytes: int, shard_documents: int,
              on_progress: Callable[[Progress], None] | None,
              on_problem: Callable[[SourceProblem], None] | None,
              embedder: Embedder | None) -> None:
    import pyarrow as pa
    import ray

    config = target.config
    corpus = report.dedup == "corpus"

    def ignore(_path: Path) -> None:
        report.ignored_files += 1

    assert report.ray is not None  # run_ray_ingest records the cluster first
    record = report.ray
    seconds = record["seconds"]
    mark = time.monotonic()

    def lap(stage: str) -> None:
        """Where the run's time went, per stage (the run record's `ray.seconds`)."""
        nonlocal mark
        now = time.monotonic()
        seconds[stage] = round(now - mark, 3)
        mark = now

    # read -> chunk: the driver reads the source into the object store a shard at a time as
    # the actors (one per worker, the spec shipped once) ask for work (a shard is released
    # once chunked: only the blocks' refs are kept). Up to
    # DRIVER_DEDUP_BYTES of source the driver runs the built-in's corpus pass over the blocks
    # in shard order as they come (beside the chunking, as the built-in's parent does); past
    # it the dedup steps' task workers start meanwhile, and the shuffle runs as tasks once
    # every shard is chunked.
    sizes: list[int] = []
    """The documents of each shard, by shard number."""

    def shards() -> Iterator[Any]:
        shard: list[Document] = []
        text = 0

        def put() -> Any:
            first = report.documents - len(shard)
            ref = ray.put(pa.table({
                "shard": [len(sizes)] * len(shard),
                "seq": list(range(first, first + len(shard))),
                "doc_id": [d.doc_id for d in shard], "title": [d.title for d in shard],
                "text": [d.text for d in shard], "kind": [d.kind for d in shard]}))
            sizes.append(len(shard))
            shard.clear()
            progress.documents, progress.bytes = report.documents, report.bytes
            if on_progress is not None:
                on_progress(progress)
            return ref

        for item in read_source(source, max_document_bytes=max_document_bytes, ignored=ignore):
            if isinstance(item, SourceProblem):
                note_problem(item, report, progress, strict=strict, on_problem=on_problem)
                continue
            shard.append(item)
            report.documents += 1
            report.bytes += len(item.text.encode())
            text += len(item.text)
            if len(shard) >= shard_documents or text >= SHARD_BYTES:  # an actor's memory
                yield put()
                text = 0
        if shard:
            yield put()

    remote = worker_options()
    bands = MinHasher(config.jaccard_threshold).bands if corpus else 0
    dedup_on = "tasks" if larger_than(source, DRIVER_DEDUP_BYTES) else "driver"
    warming = warm_task_workers(report.workers, remote) if dedup_on == "tasks" else []
    spec = ray.put(ChunkerSpec(config, tokenizer_json, corpus))
    actors = chunk_actors(spec, report.workers, remote)
    try:
        if dedup_on == "driver":
            driver_pass = DriverPass(config.jaccard_threshold if corpus else None, bands)
            try:
                blocks = chunk_shards(actors, shards(), driver_pass.add)
            finally:
                driver_pass.close()
            lap("read_and_chunk")
            partitions, pairs_checked = 0, driver_pass.pairs_checked
            decisions = driver_pass.decisions
        else:
            blocks = chunk_shards(actors, shards())
            lap("read_and_chunk")
            for actor in actors:  # the CPUs they hold go to the dedup tasks
                ray.kill(actor)
            del warming  # started or starting: the dedup tasks take them as they are
            # fixed-width band and id records shuffled by key (numpy, through the object
            # store), the colliding chunks' shingle sets gathered from their blocks, verified
            # per partition, resolved in corpus order
            partitions = dedup_partitions(report.workers, report.bytes)
            results = _dedup(blocks, partitions, bands, config.jaccard_threshold, remote)
            pairs_checked = sum(r.pairs_checked for r in results)
            decisions = distributed.resolve(distributed.merge_partitions(results),
                                            [g for r in results for g in r.id_groups])
        if report.documents == 0:
            check_not_empty(report, source)
        # each shard's first document number (shards close on bytes too, so a shard's number
        # is not a document's number divided by `shard_documents`)
        firsts = list(itertools.accumulate(sizes[:-1], initial=0))

        def shard_of(order: int) -> int:
            return bisect.bisect_right(firsts, order >> distributed.DOC_SHIFT) - 1

        decided = {shard: ray.put(part) for shard, part in decisions.by_shard(shard_of).items()}
        lap("dedup")
        # load: COPY per shard into the staging table, on the chunking actors (started, their
        # module imported); with an embedder, the embedding actors decide, embed (only the
        # kept rows) and COPY
        if embedder is None:
            if dedup_on == "tasks":
                actors = chunk_actors(spec, min(report.workers, len(blocks)), remote)
            outcomes = load_blocks(actors, blocks, dsn=dsn, staging=staging, run=report,
                                   decided=decided)
        else:
            for actor in actors:  # their CPUs go to the embedding actors
                ray.kill(actor)
            gpu = uses_gpus(config, record["gpus"])
            count = min(report.workers, record["gpus"]) if gpu else report.workers
            embed_class: Any = ray.remote(EmbedShards)
            embed_class = embed_class.options(
                max_restarts=LOAD_RETRIES, max_task_retries=LOAD_RETRIES,
                **({"num_gpus": 1} if gpu else {"num_cpus": 1}), **remote)
            shipped = ray.put(ship_embedder(config, embedder))
            actors = [embed_class.remote(shipped, dsn, staging, report, decided, gpu)
                      for _ in range(max(1, count))]
            record["embedding_actors"] = {"count": len(actors), "gpu_each": gpu}
            outcomes = load_blocks(actors, blocks)
    finally:
        for actor in actors:
            ray.kill(actor)
    summaries: list[ShardSummary] = []
    for pickled in outcomes:
        outcome: ShardSummary | RegistryError = pickle.loads(pickled)
        if isinstance(outcome, RegistryError):
            raise outcome  # the first refusal ends the run; nothing is moved
        summaries.append(outcome)
    lap("load" if embedder is None else "embed_and_load")
    summaries.sort(key=lambda s: s.shard)
    for summary in summaries:
        for name in SUMMED:
            setattr(report, name, getattr(report, name) + getattr(summary.counts, name))
        report.not_ingested += summary.counts.not_ingested
        report.accounted.extend(summary.counts.accounted[:max(
            0, ACCOUNTED_KEPT - len(report.accounted))])
    for name in EMBEDDING_SUMMED:  # summed over actors working at once: model time, not wall
        setattr(report, name, round(sum(getattr(s.counts, name) for s in summaries), 3))
    record.update({
        "partitions": partitions, "dedup_on": dedup_on, "pairs_checked": pairs_checked,
        "chunk_nodes": sorted({s.chunked_on for s in summaries}),
        "load_nodes": sorted({s.loaded_on for s in summaries}),
        "embed_nodes": sorted({s.embedded_on for s in summaries if s.embedded_on}),
        "shards": [{"shard": s.shard, "documents": s.documents, "rows": s.rows,
                    "chunked_on": s.chunked_on, "loaded_on": s.loaded_on} for s in summaries]})
    if [s.shard for s in summaries] != list(range(len(sizes))) or any(
            s.documents != n for s, n in zip(summaries, sizes, strict=False)):
        raise IngestFailed(f"the Ray pipeline returned {len(summaries)} shards of "
                           f"{len(sizes)}: nothing was written",
                           fix="rerun; report it if it happens again")
    progress.documents, progress.chunks, progress.bytes = (report.documents, report.chunks,
                                                           report.bytes)
    progress.vectors = report.vectors_computed + report.vectors_reused
    if on_progress is not None:
        on_progress(progress)
    check_not_empty(report, source)



def chunk_actors(spec: Any, workers: int, remote: dict[str, Any]) -> list[Any]:
    """`workers` ChunkShard actors (1 CPU each), plain Ray actors rather than a Ray Data actor
    pool (whose executor took ~6 s more to start two actors on a busy 2-core machine), started
    now (they load the tokenizer while the driver reads). An actor whose process dies is
    restarted and its call made again, up to CHUNK_RETRIES times."""
    import ray

    actor_class: Any = ray.remote(ChunkShard)
    actor_class = actor_class.options(num_cpus=1, max_restarts=CHUNK_RETRIES,
                                      max_task_retries=CHUNK_RETRIES, **remote)
    return [actor_class.remote(spec) for _ in range(max(1, workers))]


def feed(actors: Sequence[Any], method: str, items: Iterable[Any],
         on_result: Callable[[Any], None] | None = None, **arguments: Any) -> list[Any]:
    """Each item through `actors`' `method`, one item at a time per actor as it finishes the
    last (a slow item holds one actor only, and every actor gets an item first: with at least
    as many items as actors, every node works); `items` is drawn as the actors ask for work.
    The refs of the results, in item order; `on_result` is given each result in item order as
    soon as it and those before it are done (the driver works on them while the actors go
    on). When no actor has started within ACTORS_READY_S the run fails (the cluster cannot
    host the actors)."""
    import ray

    results: list[Any] = []
    running: dict[Any, tuple[int, Any]] = {}
    upcoming = iter(items)
    finished: set[int] = set()
    handed = 0

    def give(actor: Any) -> None:
        item = next(upcoming, None)
        if item is not None:
            ref = getattr(actor, method).remote(item, **arguments)
            running[ref] = (len(results), actor)
            results.append(ref)

    started, _ = ray.wait([actor.__ray_ready__.remote() for actor in actors], num_returns=1,
                          timeout=ACTORS_READY_S)
    if not started:
        raise IngestFailed(f"no Ray actor started in {ACTORS_READY_S} s: the cluster cannot "
                           "host the actors", fix="check the cluster's free CPUs (or GPUs), "
                           "or lower --workers")
    for actor in actors:
        give(actor)
    while running:  # no time limit on the work: an 8 MB shard embedded on a CPU takes long
        done, _ = ray.wait(list(running), num_returns=1, fetch_local=on_result is not None)
        position, actor = running.pop(done[0])
        give(actor)  # a failed item fails the step that reads its result
        finished.add(position)
        while on_result is not None and handed in finished:
            on_result(ray.get(results[handed]))
            handed += 1
    return results


def chunk_shards(actors: Sequence[Any], shards: Iterable[Any],
                 on_block: Callable[[pa.Table], None] | None = None) -> list[Any]:
    """The chunk stage: the shards through the ChunkShard actors; the refs of the chunked
    blocks, in shard order (and each block to `on_block`, in shard order, as it is done)."""
    return feed(actors, "chunk", shards, on_block)


def load_blocks(actors: Sequence[Any], blocks: Sequence[Any], **load: Any) -> list[bytes]:
    """The load stage: each chunked block decided and COPYed by `actors`' `load`, at most one
    block per actor at once (each holds a database connection): the chunking actors for a
    config without an embedder (already started with this module imported: new task workers
    took seconds to start on a busy 2-core machine), else the EmbedShards actors. The pickled
    outcomes, block after block."""
    import ray

    outcomes = ray.get(feed(actors, "load", blocks, **load))
    return [o for table in outcomes for o in table.column("outcome").to_pylist()]


def _dedup(blocks: list[Any], partitions: int, bands: int, threshold: float,
           remote: dict[str, Any]) -> list[distributed.PartitionResult]:
    """The dedup stage as plain tasks over the chunk stage's blocks: route (a task per block:
    its records by partition), collide (a task per partition: the records that meet, and the
    chunks it needs from each block), gather (a task per block: those chunks' keys, doc ids and
    shingle sets, by partition), verify (a task per partition). Every task holds one block or
    one partition; only refs pass through the driver, and the blocks' lowest orders."""
    import ray

    route = ray.remote(_route_block).options(num_returns=partitions + 1, **remote)
    # num_returns > 1: each call gives a list of refs (Ray's stubs say one ref)
    routed = [cast(list[Any], route.remote(block, partitions, bands)) for block in blocks]
    lows = np.array(ray.get([refs[-1] for refs in routed]), dtype=np.int64)
    by_low = np.argsort(lows, kind="stable")
    collide = ray.remote(_collide_partition).options(num_returns=len(blocks) + 1, **remote)
    collided = [cast(list[Any], collide.remote(lows[by_low], len(blocks),
                                               *(refs[p] for refs in routed)))
                for p in range(partitions)]
    gather = ray.remote(_gather_block).options(num_returns=partitions, **remote)
    gathered = [cast(list[Any], gather.remote(blocks[b], bands,
                                              *(refs[position] for refs in collided)))
                for position, b in enumerate(by_low.tolist())]
    verify = ray.remote(_verify_collisions).options(**remote)
    return list(ray.get([verify.remote(collided[p][-1], threshold,
                                       *(refs[p] for refs in gathered))
                         for p in range(partitions)]))


DRIVER_DEDUP_BYTES = 1024 * 1024 * 1024
"""Up to this much source (its size on disk, `larger_than`, known before reading) the driver
decides, with the built-in's corpus pass (`DriverPass`), as the chunked blocks come: no Ray
task or object per block and partition (at 32 MB on 2 workers the shuffle's tasks spent ~3 s
of a 4.3 s stage on overhead, and ran after the chunking instead of beside it). The driver
then holds what the built-in's parent holds for the same corpus (a dict entry per band per
kept chunk, a few hundred MB at 1 GB of source; their shingles in a temporary file) and
decides at the built-in's one-core rate; past it the shuffle spreads that work and memory
over the cluster."""


def larger_than(source: Path, limit: int) -> bool:
    """Whether a JSONL source, or the files under a source directory that the reader walks
    (dot-directories skipped, as `read_source` skips them; every file counted, an upper bound),
    hold more than `limit` bytes; the walk stops as soon as they do."""
    if source.is_file():
        return source.stat().st_size > limit
    total = 0
    for directory, subdirs, files in os.walk(source):
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]
        for name in files:
            with contextlib.suppress(OSError):  # gone since, or unreadable: the read says so
                total += (Path(directory) / name).stat().st_size
            if total > limit:
                return True
    return False


class DriverPass:
    """The corpus pass in the driver over the chunked blocks, in shard order: `CorpusPass`
    (the built-in ingest's) on each chunk's shingles, band keys and id as the chunking actors
    computed them, so the decisions are the built-in's by construction."""

    def __init__(self, threshold: float | None, bands: int) -> None:
        self.bands = bands
        self._store = FileShingleStore() if threshold is not None else None
        self._pass = CorpusPass(None if threshold is None or self._store is None
                                else CorpusDeduplicator(threshold, self._store))
        self.decisions = distributed.Decisions()

    @property
    def pairs_checked(self) -> int:
        deduplicator = self._pass.deduplicator
        return deduplicator.candidates if deduplicator is not None else 0

    def add(self, block: pa.Table) -> None:
        """One block's chunks decided (the block after the one given last)."""
        chunks = _per_chunk(block, self.bands)
        doc_ids = [chunks.doc_ids[document] for document in chunks.doc_of_chunk.tolist()]
        if self.bands:
            values, offsets = _shingle_sets(block)
            keys: KeyMatrix = np.zeros((len(chunks.chunk_ids), self.bands), dtype=np.uint64)
            keys[chunks.has_keys] = chunks.keys  # `chunks.keys` has rows for keyed chunks only
            repeats = self._pass.decide(doc_ids, chunks.chunk_ids, ShingleSets(values, offsets),
                                        keys)
        else:
            repeats = self._pass.decide(doc_ids, chunks.chunk_ids)
        for order, repeat in zip(chunks.orders.tolist(), repeats, strict=True):
            if repeat is not None:
                found = (self.decisions.near_duplicates if repeat.near
                         else self.decisions.identical)
                found[order] = repeat.doc_id

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


def _move(data: psycopg.Connection[Any], target: ChunkTable, staging: sql.Composed,
          report: IngestReport, max_change: float, vectors: bool) -> None:
    """The whole run from the staging table into the shadow table, in `data`'s transaction;
    the staging table is dropped in it too."""
    expected = report.chunks
    row = data.execute(sql.SQL("SELECT count(*) FROM {}").format(staging)).fetchone()
    found = int(row[0]) if row else 0
    if found != expected:
        raise IngestFailed(f"the staging table holds {found} rows, the shards reported "
                           f"{expected}: nothing was written", fix="rerun the ingest")
    written = written_columns(vectors)
    columns = sql.SQL(", ").join(map(sql.Identifier, written))
    if report.into_production:
        data.execute(sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM {}").format(
            STAGED, columns, staging))
        apply_document_changes(data, target, report, max_change, written)
    else:
        report.replaced_rows = data.execute(
            sql.SQL("DELETE FROM {} WHERE ingest_run_id = {}").format(
                target.identifier, sql.Literal(target.config.ingest_run_id))).rowcount
        data.execute(sql.SQL("INSERT INTO {t} ({c}) SELECT {c} FROM {s} ORDER BY doc_seq, "
                             "chunk_index").format(t=target.identifier, c=columns, s=staging))
    data.execute(sql.SQL("DROP TABLE {}").format(staging))

