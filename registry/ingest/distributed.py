"""Corpus-wide dedup split across workers, keeping exactly what the one-process pass keeps.

The built-in pass (`CorpusDeduplicator`, then identical ids) walks the chunks in corpus order:
a chunk is dropped when an earlier *kept* chunk shares a MinHash band key with it and its exact
shingle Jaccard reaches the threshold; of the chunks that pass, a later one with the same id
(the same embedding text) is dropped too. Whether a chunk is kept depends on earlier decisions,
so the work is split in two:

1. Candidates meet (any number of workers): every chunk is sent once per band to the
   partition of its band key (`bucket_records`), so two chunks sharing a key always meet in
   one partition, whatever node made them; there each pair is verified exactly, once (in the
   lowest band the two share), giving the edges "later chunk i is a near-duplicate of earlier
   chunk j". A later copy (an identical shingle set) takes its original's verified pairs
   instead of computing its own, so a thousand copies cost no Jaccard beyond the first.
   Chunks sharing an id meet the same way (`id` records).
2. The greedy order (one place, small input: only chunks that have an edge): in corpus order,
   a chunk is dropped iff one of its edges points to a chunk that is kept (`resolve`). The
   chunk the built-in pass would name as the one it repeats (the first kept candidate in band
   order, then in corpus order) is reproduced from the band each edge was found in.

This module needs only numpy; the Ray pipeline (`ray_engine`) moves its records around.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from registry.ingest.chunker import ChunkedDocument, Shingles, jaccard

DOC_SHIFT = 32
"""A chunk's corpus order is `(document number << DOC_SHIFT) | chunk number`."""


def order_of(document: int, chunk: int) -> int:
    if chunk >= 1 << DOC_SHIFT:
        raise ValueError(f"document {document} has more than 2**{DOC_SHIFT} chunks")
    return (document << DOC_SHIFT) | chunk


@dataclass(frozen=True, slots=True)
class BandRecord:
    """One chunk in one band: what a partition needs to verify its candidate pairs."""

    band: int
    key: int
    order: int
    doc_id: str
    keys: tuple[int, ...]
    digest: bytes
    shingles: Shingles


@dataclass(frozen=True, slots=True)
class IdRecord:
    id_key: bytes
    order: int
    doc_id: str


@dataclass(frozen=True, slots=True)
class Edge:
    """Chunk `later` is a near-duplicate of the earlier chunk `earlier` (found in `band`,
    the lowest band they share)."""

    later: int
    earlier: int
    earlier_doc: str
    band: int


def _mix(value: int) -> int:
    value = (value ^ (value >> 31)) * 0x7FB5D329728EA185 & (1 << 64) - 1
    return value ^ (value >> 27)


def partition_of_band(band: int, key: int, partitions: int) -> int:
    return _mix(key ^ (band * 0x9E3779B97F4A7C15) & (1 << 64) - 1) % partitions


def partition_of_id(id_key: bytes, partitions: int) -> int:
    return int.from_bytes(id_key[:8], "little") % partitions


def id_key(chunk_id: str) -> bytes:
    """The key the built-in pass compares identical ids by (the first 128 bits)."""
    return bytes.fromhex(chunk_id[:32])


def bucket_records(first_document: int, chunked: Sequence[ChunkedDocument], partitions: int,
                   corpus: bool) -> dict[int, list[BandRecord | IdRecord]]:
    """The records each partition gets from these documents (numbered from
    `first_document`): every chunk once per band (corpus dedup only) and once by id."""
    out: dict[int, list[BandRecord | IdRecord]] = defaultdict(list)
    for offset, result in enumerate(chunked):
        for number, chunk in enumerate(result.chunks):
            order = order_of(first_document + offset, number)
            key = id_key(chunk.id)
            out[partition_of_id(key, partitions)].append(IdRecord(key, order, result.doc_id))
            keys = result.band_keys[number] if corpus else ()
            if not keys:
                continue
            values = result.shingles[number]
            digest = hashlib.blake2b(np.ascontiguousarray(values).tobytes(),
                                     digest_size=16).digest()
            for band, band_key in enumerate(keys):
                out[partition_of_band(band, band_key, partitions)].append(
                    BandRecord(band, band_key, order, result.doc_id, tuple(keys), digest,
                               values))
    return out


def _first_shared_band(a: Sequence[int], b: Sequence[int]) -> int:
    for band, (x, y) in enumerate(zip(a, b, strict=True)):
        if x == y:
            return band
    return -1


@dataclass
class PartitionResult:
    edges: list[Edge] = field(default_factory=list)
    id_groups: list[list[tuple[int, str]]] = field(default_factory=list)
    """Chunks sharing an id, (order, doc_id) sorted by order: only groups of two or more."""
    pairs_checked: int = 0


def verify_partition(records: Iterable[BandRecord | IdRecord], threshold: float
                     ) -> PartitionResult:
    """The exact pass over one partition: edges between band-sharing chunks whose Jaccard
    reaches `threshold`, each pair reported from its lowest shared band only."""
    result = PartitionResult()
    buckets: dict[tuple[int, int], list[BandRecord]] = defaultdict(list)
    ids: dict[bytes, list[tuple[int, str]]] = defaultdict(list)
    for record in records:
        if isinstance(record, IdRecord):
            ids[record.id_key].append((record.order, record.doc_id))
        else:
            buckets[(record.band, record.key)].append(record)
    for group in ids.values():
        if len(group) > 1:
            result.id_groups.append(sorted(group))
    for (band, _key), members in buckets.items():
        if len(members) < 2:
            continue
        members.sort(key=lambda r: r.order)
        representatives: list[BandRecord] = []
        first_copy: dict[bytes, BandRecord] = {}
        similar: dict[int, list[BandRecord]] = defaultdict(list)
        for record in members:
            original = first_copy.get(record.digest)
            if original is not None:  # a copy: the original's verified pairs, no Jaccard
                if band == 0:  # identical sets share every band: reported once
                    result.edges.append(Edge(record.order, original.order, original.doc_id, 0))
                result.edges.extend(Edge(record.order, other.order, other.doc_id, band)
                                    for other in similar[original.order])
                continue
            first_copy[record.digest] = record
            for earlier in representatives:
                if _first_shared_band(record.keys, earlier.keys) != band:
                    continue
                result.pairs_checked += 1
                if jaccard(record.shingles, earlier.shingles) >= threshold:
                    result.edges.append(Edge(record.order, earlier.order, earlier.doc_id, band))
                    similar[record.order].append(earlier)
                    similar[earlier.order].append(record)
            representatives.append(record)
    return result


@dataclass
class Decisions:
    """Which chunks the corpus pass drops, and the document each one repeats."""

    near_duplicates: dict[int, str] = field(default_factory=dict)
    identical: dict[int, str] = field(default_factory=dict)

    def dropped(self, order: int) -> str | None:
        """The doc_id of the chunk `order` repeats, or None when it is kept."""
        owner = self.near_duplicates.get(order)
        return owner if owner is not None else self.identical.get(order)

    def __len__(self) -> int:
        return len(self.near_duplicates) + len(self.identical)

    def by_shard(self, shard_of: Callable[[int], int]) -> dict[int, Decisions]:
        """The decisions split by the shard each chunk's document is in."""
        split: dict[int, Decisions] = defaultdict(Decisions)
        for order, owner in self.near_duplicates.items():
            split[shard_of(order)].near_duplicates[order] = owner
        for order, owner in self.identical.items():
            split[shard_of(order)].identical[order] = owner
        return dict(split)


def resolve(edges: Iterable[Edge], id_groups: Iterable[Sequence[tuple[int, str]]]) -> Decisions:
    """The built-in pass's greedy decisions from the verified edges, in corpus order."""
    decisions = Decisions()
    by_later: dict[int, list[Edge]] = defaultdict(list)
    for edge in edges:
        by_later[edge.later].append(edge)
    for later in sorted(by_later):
        kept = [e for e in by_later[later] if e.earlier not in decisions.near_duplicates]
        if kept:
            decisions.near_duplicates[later] = min(kept, key=lambda e: (e.band, e.earlier)
                                                   ).earlier_doc
    for group in id_groups:
        passed = [(order, doc) for order, doc in group
                  if order not in decisions.near_duplicates]
        for order, _doc in passed[1:]:
            decisions.identical[order] = passed[0][1]
    return decisions


def merge_partitions(results: Iterable[PartitionResult]) -> Iterator[Edge]:
    for result in results:
        yield from result.edges
