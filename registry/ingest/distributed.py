"""Corpus-wide dedup split across workers, keeping exactly what the one-process pass keeps.

The built-in pass (`CorpusDeduplicator`, then identical ids) walks the chunks in corpus order:
a chunk is dropped when an earlier *kept* chunk shares a MinHash band key with it and its exact
shingle Jaccard reaches the threshold; of the chunks that pass, a later one with the same id
(the same embedding text) is dropped too. Whether a chunk is kept depends on earlier decisions,
so the work is split in two:

1. Candidates meet (any number of workers): every chunk's band keys travel as fixed-width
   records, (band, key, order), 24 bytes each, to the partition of their key (`route`), so two
   chunks sharing a key always meet in one partition, whatever node made them; there the
   records that meet another are kept (`collide`) and only those chunks' shingle sets, band
   keys and doc ids are fetched from the blocks that hold them (`gather`). Each pair is then
   verified exactly, once (in the lowest band the two share: `verify_collisions`, through
   `verify_partition`), giving the edges "later chunk i is a near-duplicate of earlier
   chunk j". A later copy (an identical shingle set) takes its original's verified pairs
   instead of computing its own, so a thousand copies cost no Jaccard beyond the first.
   Chunks sharing an id meet the same way (id records: the id's first 128 bits and the order).
2. The greedy order (one place, small input: only chunks that have an edge): in corpus order,
   a chunk is dropped iff one of its edges points to a chunk that is kept (`resolve`). The
   chunk the built-in pass would name as the one it repeats (the first kept candidate in band
   order, then in corpus order) is reproduced from the band each edge was found in.

This module needs only numpy; the Ray pipeline (`ray_engine`) moves its records around.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from registry.ingest.chunker import Shingles, jaccard

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


# ---------------------------------------------------------------------------------------------
# The columnar shuffle: small int records travel, shingles only for the chunks that collide

BAND_RECORD = np.dtype([("band", np.int64), ("key", np.uint64), ("order", np.int64),
                        ("digest_hi", np.uint64), ("digest_lo", np.uint64)])
"""One chunk in one band, as the shuffle moves it: 40 bytes (its shingle set's digest
included, so an exact copy is known as one without its shingles), no shingles."""
ID_RECORD = np.dtype([("hi", np.uint64), ("lo", np.uint64), ("order", np.int64)])
"""One chunk's id (its first 128 bits, the key the built-in pass compares) and its order."""

Orders = npt.NDArray[np.int64]
_BAND_MULT = np.uint64(0x9E3779B97F4A7C15)


def _mix_array(values: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """`_mix`, on a uint64 array (wrapping multiplication, as `_mix` masks to 64 bits)."""
    values = (values ^ (values >> np.uint64(31))) * np.uint64(0x7FB5D329728EA185)
    return values ^ (values >> np.uint64(27))


def partitions_of_bands(band: npt.NDArray[np.int64], key: npt.NDArray[np.uint64],
                        partitions: int) -> npt.NDArray[np.int64]:
    """The partition of every (band, key): its key mixed with its band, so a band's keys
    spread over every partition."""
    mixed = _mix_array(key ^ (band.astype(np.uint64) * _BAND_MULT))
    return (mixed % np.uint64(partitions)).astype(np.int64)


def partitions_of_ids(hi: npt.NDArray[np.uint64], lo: npt.NDArray[np.uint64],
                      partitions: int) -> npt.NDArray[np.int64]:
    return (_mix_array(hi ^ lo) % np.uint64(partitions)).astype(np.int64)


def id_halves(chunk_ids: Sequence[str]) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
    """The two 64-bit halves of each chunk id's first 128 bits (the key the built-in pass
    compares identical ids by), as integers."""
    hi = np.fromiter((int(i[:16], 16) for i in chunk_ids), dtype=np.uint64, count=len(chunk_ids))
    lo = np.fromiter((int(i[16:32], 16) for i in chunk_ids), dtype=np.uint64,
                     count=len(chunk_ids))
    return hi, lo


@dataclass(frozen=True, slots=True)
class Routed:
    """What one block sends one partition: fixed-width records only."""

    bands: npt.NDArray[np.void]
    ids: npt.NDArray[np.void]


def digests(values: Shingles, offsets: Orders) -> npt.NDArray[np.uint64]:
    """Each shingle set's digest (`values` split at `offsets`), as (hi, lo) rows: the
    digest `verify_partition` knows copies by."""
    out = np.empty((len(offsets) - 1, 2), dtype=np.uint64)
    for row, (start, end) in enumerate(itertools.pairwise(offsets.tolist())):
        digest = hashlib.blake2b(values[start:end].tobytes(), digest_size=16).digest()
        out[row] = (int.from_bytes(digest[:8], "big"), int.from_bytes(digest[8:], "big"))
    return out


def route(orders: Orders, keys: npt.NDArray[np.uint64], has_keys: npt.NDArray[np.bool_],
          set_digests: npt.NDArray[np.uint64], id_hi: npt.NDArray[np.uint64],
          id_lo: npt.NDArray[np.uint64], partitions: int) -> list[Routed]:
    """Every chunk's band records (one per band, chunks with band keys only: `keys` holds one
    row of band keys per such chunk, in order, and `set_digests` one row of their shingle
    sets' digests) and its id record, by destination partition."""
    with_keys = orders[has_keys]
    bands = keys.shape[1] if keys.ndim == 2 else 0
    band_records = np.empty(len(with_keys) * bands, dtype=BAND_RECORD)
    band_records["band"] = np.tile(np.arange(bands, dtype=np.int64), len(with_keys))
    band_records["key"] = keys.reshape(-1)
    band_records["order"] = np.repeat(with_keys, bands)
    band_records["digest_hi"] = np.repeat(set_digests[:, 0], bands)
    band_records["digest_lo"] = np.repeat(set_digests[:, 1], bands)
    id_records = np.empty(len(orders), dtype=ID_RECORD)
    id_records["hi"], id_records["lo"], id_records["order"] = id_hi, id_lo, orders
    band_part = partitions_of_bands(band_records["band"], band_records["key"], partitions)
    id_part = partitions_of_ids(id_hi, id_lo, partitions)
    band_sort = np.argsort(band_part, kind="stable")
    id_sort = np.argsort(id_part, kind="stable")
    band_cuts = np.searchsorted(band_part[band_sort], np.arange(partitions + 1))
    id_cuts = np.searchsorted(id_part[id_sort], np.arange(partitions + 1))
    band_records, id_records = band_records[band_sort], id_records[id_sort]
    return [Routed(band_records[band_cuts[p]:band_cuts[p + 1]].copy(),
                   id_records[id_cuts[p]:id_cuts[p + 1]].copy()) for p in range(partitions)]


def _in_runs(*columns: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
    """Of rows sorted by `columns`, those whose values repeat a neighbour's (groups of 2+)."""
    size = len(columns[0])
    member = np.zeros(size, dtype=bool)
    if size < 2:
        return member
    same = np.ones(size - 1, dtype=bool)
    for column in columns:
        same &= column[1:] == column[:-1]
    member[1:] |= same
    member[:-1] |= same
    return member


@dataclass(frozen=True, slots=True)
class Collisions:
    """One partition's records that meet another: the band records of buckets of two or more
    chunks (`copies` flags those whose shingle set an earlier chunk of the bucket has: the
    exact pass needs nothing of them but the record), and the chunks sharing an id
    (`id_orders` split at `id_starts`, each group in corpus order)."""

    bands: npt.NDArray[np.void]
    copies: npt.NDArray[np.bool_]
    originals: Orders
    """Of each band record, the order of the first chunk of its bucket with the same set (its
    own for a chunk that is not a copy)."""
    id_orders: Orders
    id_starts: Orders

    def wanted(self) -> Orders:
        """The chunks whose shingle sets (and doc ids) the exact pass needs, sorted: an exact
        copy's are not (it takes its original's verified pairs)."""
        return np.unique(np.concatenate((self.bands["order"][~self.copies], self.id_orders)))


def collide(routed: Iterable[Routed]) -> Collisions:
    """The records of one partition that meet another record (the rest need nothing more)."""
    parts = list(routed)
    bands = np.concatenate([r.bands for r in parts]) if parts else np.empty(0, BAND_RECORD)
    ids = np.concatenate([r.ids for r in parts]) if parts else np.empty(0, ID_RECORD)
    bands = bands[np.lexsort((bands["order"], bands["key"], bands["band"]))]
    bands = bands[_in_runs(bands["band"], bands["key"])]
    by_set = np.lexsort((bands["order"], bands["digest_lo"], bands["digest_hi"], bands["key"],
                         bands["band"]))
    same_set = np.zeros(len(bands), dtype=bool)
    if len(bands) > 1:
        grouped = bands[by_set]
        same_set[1:] = ((grouped["band"][1:] == grouped["band"][:-1])
                        & (grouped["key"][1:] == grouped["key"][:-1])
                        & (grouped["digest_hi"][1:] == grouped["digest_hi"][:-1])
                        & (grouped["digest_lo"][1:] == grouped["digest_lo"][:-1]))
    copies = np.zeros(len(bands), dtype=bool)
    copies[by_set] = same_set
    originals = np.zeros(len(bands), dtype=np.int64)
    if len(bands):
        firsts = np.flatnonzero(~same_set)
        originals[by_set] = bands["order"][by_set][firsts[np.cumsum(~same_set) - 1]]
    ids = ids[np.lexsort((ids["order"], ids["lo"], ids["hi"]))]
    ids = ids[_in_runs(ids["hi"], ids["lo"])]
    starts = np.flatnonzero(np.concatenate((
        [True], (ids["hi"][1:] != ids["hi"][:-1]) | (ids["lo"][1:] != ids["lo"][:-1]))))
    return Collisions(bands, copies, originals, ids["order"].astype(np.int64),
                      starts.astype(np.int64) if len(ids) else np.empty(0, np.int64))


def split_by_block(wanted: Orders, lows: Orders, partitions_of: int) -> list[Orders]:
    """`wanted` (sorted orders) split among `partitions_of` blocks whose chunks are the
    contiguous order ranges starting at `lows` (sorted)."""
    cuts = np.searchsorted(wanted, lows)
    bounds = [*cuts.tolist(), len(wanted)]
    out = [wanted[bounds[i]:bounds[i + 1]] for i in range(len(lows))]
    return out + [np.empty(0, np.int64)] * (partitions_of - len(out))


@dataclass(frozen=True, slots=True)
class Gathered:
    """What the exact pass needs of some chunks: their band keys (a row each, zeros for a
    chunk without), doc ids and shingle sets (`values` split at `offsets`)."""

    orders: Orders
    keys: npt.NDArray[np.uint64]
    has_keys: npt.NDArray[np.bool_]
    doc_ids: list[str]
    values: Shingles
    offsets: Orders


def gather(orders: Orders, keys: npt.NDArray[np.uint64], has_keys: npt.NDArray[np.bool_],
           doc_ids: Sequence[str], values: Shingles, offsets: Orders, bands: int,
           wanted: Sequence[Orders]) -> list[Gathered]:
    """Of one block's chunks (`keys` a row per chunk with band keys), those each partition
    wants; every wanted chunk must be here."""
    sort = np.argsort(orders, kind="stable")
    key_row = np.cumsum(has_keys) - 1
    out = []
    for asked in wanted:
        where = np.searchsorted(orders[sort], asked)
        if len(asked) and (where.max() >= len(orders) or
                           not np.array_equal(orders[sort[where]], asked)):
            raise RuntimeError("a chunk the dedup pass asked for is not in its block")
        index = sort[where]
        rows = np.zeros((len(index), bands), dtype=np.uint64)
        flagged = has_keys[index]
        rows[flagged] = keys[key_row[index[flagged]]]
        starts, ends = offsets[index], offsets[index + 1]
        sizes = ends - starts
        new_offsets = np.zeros(len(index) + 1, dtype=np.int64)
        np.cumsum(sizes, out=new_offsets[1:])
        picked = (np.concatenate([values[s:e] for s, e in zip(starts.tolist(), ends.tolist(),
                                                              strict=True)])
                  if len(index) else np.empty(0, np.uint64))
        out.append(Gathered(asked, rows, flagged, [doc_ids[i] for i in index.tolist()],
                            picked.astype(np.uint64), new_offsets))
    return out


def verify_collisions(collisions: Collisions, gathered: Iterable[Gathered], threshold: float
                      ) -> PartitionResult:
    """`verify_partition` over one partition's colliding records, their shingle sets and doc
    ids fetched (`gather`) from the blocks that hold them."""
    found: dict[int, tuple[Gathered, int]] = {}
    for part in gathered:
        for position, order in enumerate(part.orders.tolist()):
            found[order] = (part, position)

    def doc_of(order: int) -> str:
        part, at = found[order]
        return part.doc_ids[at]

    def band_record(band: int, key: int, order: int, digest: bytes) -> BandRecord:
        part, at = found[order]
        values = part.values[part.offsets[at]:part.offsets[at + 1]]
        return BandRecord(band, key, order, part.doc_ids[at], tuple(part.keys[at].tolist()),
                          digest, values)

    missing = set(collisions.wanted().tolist()) - found.keys()
    if missing:
        raise RuntimeError(f"{len(missing)} colliding chunks were not gathered")
    # The chunks that are not exact copies of an earlier one of their bucket, verified as the
    # one-process pass verifies them; the copies (often most records) without a Python object
    # each: `verify_partition` would give a copy its original's verified pairs (in that
    # bucket, with chunks before the copy) and, in band 0, the original itself.
    distinct = collisions.bands[~collisions.copies]
    records = [band_record(band, key, order, hi.to_bytes(8, "big") + lo.to_bytes(8, "big"))
               for band, key, order, hi, lo in zip(
                   distinct["band"].tolist(), distinct["key"].tolist(),
                   distinct["order"].tolist(), distinct["digest_hi"].tolist(),
                   distinct["digest_lo"].tolist(), strict=True)]
    result = verify_partition(records, threshold)
    similar: dict[tuple[int, int], list[tuple[int, str]]] = defaultdict(list)
    for edge in result.edges:  # an edge is found in its bucket of the pair's lowest shared band
        similar[(edge.band, edge.later)].append((edge.earlier, edge.earlier_doc))
        similar[(edge.band, edge.earlier)].append((edge.later, doc_of(edge.later)))
    copied = collisions.bands[collisions.copies]
    originals = collisions.originals[collisions.copies]
    first_band = copied["band"] == 0
    result.edges.extend(Edge(copy, original, doc_of(original), 0) for copy, original in zip(
        copied["order"][first_band].tolist(), originals[first_band].tolist(), strict=True))
    if similar:
        paired = np.isin(originals, np.fromiter((o for _, o in similar), dtype=np.int64,
                                                count=len(similar)))
        for band, copy, original in zip(copied["band"][paired].tolist(),
                                        copied["order"][paired].tolist(),
                                        originals[paired].tolist(), strict=True):
            result.edges.extend(Edge(copy, other, doc, band)
                                for other, doc in similar.get((band, original), ())
                                if other < copy)
    bounds = [*collisions.id_starts.tolist(), len(collisions.id_orders)]
    orders = collisions.id_orders.tolist()
    for start, end in itertools.pairwise(bounds):
        result.id_groups.append([(o, found[o][0].doc_ids[found[o][1]])
                                 for o in orders[start:end]])
    return result
