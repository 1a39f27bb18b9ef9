"""The corpus dedup split into partitions (registry/ingest/distributed.py, what the Ray ingest
runs) keeps exactly the chunks the one-process greedy pass keeps, and names the same chunk
each dropped one repeats: near-duplicate chains (A~B, B~C, A not ~C), exact copies, sets with
no band key, identical ids, any number of partitions. No Ray here: the records are moved by
hand, as the shuffle moves them."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from registry.ingest.chunker import CorpusDeduplicator, MinHasher, ShingleSets
from registry.ingest.distributed import (
    BandRecord,
    Edge,
    IdRecord,
    partition_of_band,
    partition_of_id,
    resolve,
    verify_partition,
)

THRESHOLD = 0.8


def corpus_of_sets(seed: int, count: int) -> list[np.ndarray]:
    """Shingle sets drawn as chains of small edits from a few bases, plus exact copies and
    empty sets: the shapes where a greedy order matters."""
    rng = random.Random(seed)
    bases = [rng.sample(range(10**6), rng.randint(20, 60)) for _ in range(max(1, count // 8))]
    sets: list[list[int]] = []
    for _ in range(count):
        roll = rng.random()
        if roll < 0.1 and sets:
            sets.append(list(rng.choice(sets)))          # an exact copy
        elif roll < 0.15:
            sets.append([])                              # no band key: always kept
        else:
            chain = list(rng.choice(sets[-5:] if sets and rng.random() < 0.5 else bases))
            for _ in range(rng.randint(0, 4)):           # a few words changed
                if chain:
                    chain[rng.randrange(len(chain))] = rng.randrange(10**6)
            sets.append(chain)
    return [np.unique(np.array(s, dtype=np.uint64)) for s in sets]


def band_keys(sets: list[np.ndarray]) -> list[tuple[int, ...]]:
    sizes = [len(s) for s in sets]
    packed = ShingleSets(np.concatenate(sets) if sets else np.zeros(0, np.uint64),
                         np.concatenate(([0], np.cumsum(sizes))).astype(np.int64))
    return MinHasher(THRESHOLD).band_keys(packed)


def sequential(sets: list[np.ndarray], keys: list[tuple[int, ...]], ids: list[bytes]
               ) -> dict[int, int]:
    """The built-in pass (CorpusDeduplicator, then identical ids): dropped index -> index of
    the chunk it repeats."""
    dedup = CorpusDeduplicator(THRESHOLD)
    owner_of_store: dict[int, int] = {}
    seen: dict[bytes, int] = {}
    dropped: dict[int, int] = {}
    for index, (values, key) in enumerate(zip(sets, keys, strict=True)):
        if dedup.is_duplicate(values, key):
            dropped[index] = owner_of_store[dedup.last_index]
            continue
        if key:
            owner_of_store[dedup.last_index] = index
        if ids[index] in seen:
            dropped[index] = seen[ids[index]]
            continue
        seen[ids[index]] = index
    return dropped


def distributed(sets: list[np.ndarray], keys: list[tuple[int, ...]], ids: list[bytes],
                partitions: int) -> dict[int, int]:
    parts: dict[int, list[BandRecord | IdRecord]] = {p: [] for p in range(partitions)}
    for index, (values, key) in enumerate(zip(sets, keys, strict=True)):
        doc = str(index)
        parts[partition_of_id(ids[index], partitions)].append(IdRecord(ids[index], index, doc))
        digest = hashlib.blake2b(values.tobytes(), digest_size=16).digest()
        for band, band_key in enumerate(key):
            parts[partition_of_band(band, band_key, partitions)].append(
                BandRecord(band, band_key, index, doc, key, digest, values))
    shuffled = list(parts.values())
    random.Random(partitions).shuffle(shuffled)
    edges: list[Edge] = []
    groups = []
    for records in shuffled:
        found = verify_partition(reversed(records), THRESHOLD)
        edges.extend(found.edges)
        groups.extend(found.id_groups)
    decisions = resolve(edges, groups)
    return {order: int(decisions.dropped(order) or -1) for order in range(len(sets))
            if decisions.dropped(order) is not None}


@pytest.mark.parametrize("partitions", [1, 3, 16])
@pytest.mark.parametrize("seed", range(6))
def test_the_partitioned_pass_drops_exactly_what_the_greedy_pass_drops(
    seed: int, partitions: int
) -> None:
    sets = corpus_of_sets(seed, 160)
    keys = band_keys(sets)
    ids = [bytes([i % 7]) * 16 if i % 5 == 0 else i.to_bytes(16, "little")
           for i in range(len(sets))]
    expected = sequential(sets, keys, ids)
    assert len(expected) > 20, "the corpus has duplicates to drop"
    assert distributed(sets, keys, ids, partitions) == expected


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10**6), st.integers(2, 80), st.integers(1, 8))
def test_any_corpus_any_partitioning(seed: int, count: int, partitions: int) -> None:
    sets = corpus_of_sets(seed, count)
    keys = band_keys(sets)
    ids = [i.to_bytes(16, "little") for i in range(len(sets))]
    assert distributed(sets, keys, ids, partitions) == sequential(sets, keys, ids)


def test_a_chain_keeps_its_ends_when_they_are_apart() -> None:
    """A~B and B~C but not A~C: the greedy pass keeps A, drops B, and so keeps C."""
    a = np.arange(0, 100, dtype=np.uint64)
    b = np.unique(np.concatenate([a[:92], np.arange(1000, 1008, dtype=np.uint64)]))
    c = np.unique(np.concatenate([b[:84], b[92:], np.arange(2000, 2008, dtype=np.uint64)]))
    sets = [a, b, c]
    keys = band_keys(sets)
    ids = [bytes([i]) * 16 for i in range(3)]
    assert sequential(sets, keys, ids) == {1: 0}
    assert distributed(sets, keys, ids, 2) == {1: 0}


def test_the_file_shingle_store_reads_back_what_it_just_stored() -> None:
    """The built-in ingest's corpus dedup keeps kept chunks' shingles in a file: a set read
    right after it was stored must be whole (it was read short while still in the write
    buffer, and near-duplicates of recently kept chunks slipped through)."""
    from registry.ingest.pipeline import FileShingleStore

    store = FileShingleStore()
    try:
        sets = corpus_of_sets(3, 50)
        for values in sets:
            index = store.append(values)
            assert np.array_equal(store.get(index), values)
        assert all(np.array_equal(store.get(i), v) for i, v in enumerate(sets))
    finally:
        store.close()
    from registry.ingest.chunker import MemoryShingleStore

    sets = corpus_of_sets(4, 200)
    keys = band_keys(sets)
    on_file = CorpusDeduplicator(THRESHOLD, FileShingleStore())
    in_memory = CorpusDeduplicator(THRESHOLD, MemoryShingleStore())
    assert [on_file.is_duplicate(v, k) for v, k in zip(sets, keys, strict=True)] == [
        in_memory.is_duplicate(v, k) for v, k in zip(sets, keys, strict=True)]
