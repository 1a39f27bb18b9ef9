"""The corpus deduplicator's cost per chunk stays flat as buckets grow (issue 20): candidates
ruled out by their sizes or sketches are not read, the rest verified in one vectorized pass.
Neither may change a decision nor the kept chunk a duplicate is said to repeat: here every
chunk is given the same band keys, so every kept chunk is a candidate of every later one (one
bucket as large as the corpus), and the result must be the exact greedy pass in corpus order."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from registry.ingest.chunker import (
    CorpusDeduplicator,
    MemoryShingleStore,
    MinHasher,
    ShingleSets,
    ShingleStore,
    jaccard,
)

THRESHOLD = 0.8


def as_set(values: list[int]) -> np.ndarray:
    return np.unique(np.array(values, dtype=np.uint64))


def reference(sets: list[np.ndarray], threshold: float) -> list[int | None]:
    """Exact greedy in order: None when kept, else the position among KEPT chunks (the store
    index) of the first kept chunk at Jaccard >= threshold."""
    kept: list[set[int]] = []
    result: list[int | None] = []
    for values in sets:
        these = set(values.tolist())
        match = next((i for i, other in enumerate(kept)
                      if len(these & other) / len(these | other) >= threshold), None)
        result.append(match)
        if match is None:
            kept.append(these)
    return result


def corpus(seed: int, count: int) -> list[np.ndarray]:
    """Near-misses of a few bases (kept, all alike: the growing bucket), near copies above the
    threshold, exact copies, and sets of very different sizes (ruled out by size alone)."""
    rng = random.Random(seed)
    bases = [rng.sample(range(10**6), 40) for _ in range(3)]
    sets: list[np.ndarray] = []
    for _ in range(count):
        roll = rng.random()
        base = list(rng.choice(bases))
        if roll < 0.1 and sets:
            sets.append(rng.choice(sets).copy())
        elif roll < 0.3:  # 1-4 of 40 replaced: mostly >= 0.8 with the base or a sibling
            for _ in range(rng.randint(1, 4)):
                base[rng.randrange(len(base))] = rng.randrange(10**6, 2 * 10**6)
            sets.append(as_set(base))
        elif roll < 0.45:  # a subset or superset: sizes far apart, or right at the threshold
            cut = rng.choice([10, 20, 32, 36, 40])
            sets.append(as_set(base[:cut] + [rng.randrange(10**6) for _ in range(rng.randint(0, 30))]))
        else:  # a near-miss: 6-12 replaced, below the threshold, kept, shares the keys
            for _ in range(rng.randint(6, 12)):
                base[rng.randrange(len(base))] = rng.randrange(2 * 10**6, 3 * 10**6)
            sets.append(as_set(base))
    return sets


def decide_all(sets: list[np.ndarray], keys: list[tuple[int, ...]], store: ShingleStore,
               batch: int) -> tuple[list[int | None], CorpusDeduplicator]:
    """`CorpusDeduplicator.decide`, `batch` sets at a time: per set, the store index of the
    kept set it repeats, or None."""
    dedup = CorpusDeduplicator(THRESHOLD, store)
    found: list[int | None] = []
    for first in range(0, len(sets), batch):
        chunk = sets[first:first + batch]
        matrix = np.zeros((len(chunk), dedup.hasher.bands), dtype=np.uint64)
        for row, key in enumerate(keys[first:first + batch]):
            if key:
                matrix[row] = key
        bounds = np.concatenate(([0], np.cumsum([len(v) for v in chunk]))).astype(np.int64)
        verdicts = dedup.decide(ShingleSets(np.concatenate(chunk), bounds), matrix)
        found.extend(None if m < 0 else m for m in verdicts.matched.tolist())
    return found, dedup


def run(sets: list[np.ndarray], store: ShingleStore, batch: int = 1
        ) -> tuple[list[int | None], int]:
    bands = CorpusDeduplicator(THRESHOLD).hasher.bands
    keys = [(1,) * bands] * len(sets)  # one bucket per band, holding every kept chunk
    found, dedup = decide_all(sets, keys, store, batch)
    return found, dedup.candidates


@pytest.mark.parametrize(("seed", "batch"), [(1, 1), (2, 7), (3, 400), (4, 64)])
def test_a_bucket_as_large_as_the_corpus_gives_the_exact_greedy_decisions(
        seed: int, batch: int) -> None:
    """Decided a set at a time, or in batches where every set shares its keys with every
    earlier one of its batch (each waits for the one before)."""
    from registry.ingest.pipeline import FileShingleStore

    sets = corpus(seed, 400)
    expected = reference(sets, THRESHOLD)
    assert sum(e is None for e in expected) > 100
    assert any(e is not None and e > 2 for e in expected)  # matches found past the first few
    in_memory, candidates = run(sets, MemoryShingleStore(), batch)
    assert in_memory == expected
    file_store = FileShingleStore()
    try:
        assert run(sets, file_store, batch) == (in_memory, candidates)
    finally:
        file_store.close()
    # counted as a check in order would meet them: up to and including the match
    kept = 0
    counted = 0
    for match in expected:
        counted += kept if match is None else match + 1
        kept += match is None
    assert candidates == counted


def test_a_set_exactly_at_the_threshold_by_its_size_is_still_checked() -> None:
    """Jaccard <= smaller / larger: at 4 of 5 the bound is the threshold itself, and a subset
    reaches it (the size filter must not drop what jaccard() would call a duplicate)."""
    larger = as_set([1, 2, 3, 4, 5])
    subset = as_set([1, 2, 3, 4])
    assert jaccard(larger, subset) == THRESHOLD
    for batch in (1, 2):
        for first, second in ((larger, subset), (subset, larger)):
            found, _ = run([first, second], MemoryShingleStore(), batch)
            assert found == [None, 0]
        found, candidates = run([as_set([1, 2, 3, 4, 5, 6]), subset], MemoryShingleStore(),
                                batch)
        assert found == [None, None]  # 4 of 6 < 0.8: ruled out by size, kept
        assert candidates == 1


def test_jaccard_of_sorted_distinct_sets() -> None:
    rng = np.random.default_rng(5)
    for _ in range(200):
        a = np.unique(rng.integers(0, 60, rng.integers(0, 40), dtype=np.uint64))
        b = np.unique(rng.integers(0, 60, rng.integers(0, 40), dtype=np.uint64))
        sa, sb = set(a.tolist()), set(b.tolist())
        expected = len(sa & sb) / len(sa | sb) if sa and sb else 0.0
        assert jaccard(a, b) == expected


def lsh_reference(sets: list[np.ndarray], keys: list[tuple[int, ...]], threshold: float
                  ) -> tuple[list[int | None], int]:
    """LSH greedy in corpus order, written plainly: a chunk's candidates are the kept chunks
    sharing its key in band 0 (in the order they were kept), then band 1, ...; the first
    distinct one at Jaccard >= threshold names the match (its store index), candidates counted
    up to it."""
    kept: list[int] = []
    result: list[int | None] = []
    counted = 0
    for i, values in enumerate(sets):
        if not keys[i]:
            result.append(None)
            continue
        candidates = list(dict.fromkeys(
            store for band in range(len(keys[i])) for store, j in enumerate(kept)
            if keys[j][band] == keys[i][band]))
        match = next((p for p, store in enumerate(candidates)
                      if jaccard(values, sets[kept[store]]) >= threshold), None)
        if match is None:
            counted += len(candidates)
            result.append(None)
            kept.append(i)
        else:
            counted += match + 1
            result.append(candidates[match])
    return result, counted


@pytest.mark.parametrize("seed", [5, 6])
def test_band_keys_shared_in_some_bands_only_give_the_plain_lsh_greedy_pass(seed: int) -> None:
    """Keys from small per-band pools: most chunks meet no kept chunk in any band (the path
    that only inserts), others meet different kept chunks in different bands, some have no
    keys at all. Decisions, the kept chunk named and the candidate count must all be those
    of the plain pass, on both stores."""
    from registry.ingest.pipeline import FileShingleStore

    rng = random.Random(seed)
    sets = corpus(seed, 300)
    bands = CorpusDeduplicator(THRESHOLD).hasher.bands
    keys: list[tuple[int, ...]] = []
    for index in range(len(sets)):
        roll = rng.random()
        if roll < 0.05:  # a chunk without a shingle has no key
            sets[index] = sets[index][:0]
            keys.append(())
        elif roll < 0.5:  # fresh in every band
            keys.append(tuple(rng.randrange(10**9, 2 * 10**9) for _ in range(bands)))
        else:  # shared with others in a few bands
            keys.append(tuple(rng.randrange(2) if rng.random() < 0.6
                              else rng.randrange(10**9, 2 * 10**9) for _ in range(bands)))
    expected, counted = lsh_reference(sets, keys, THRESHOLD)
    assert sum(e is not None for e in expected) > 10
    for batch in (1, 5, 300):
        for store in (MemoryShingleStore(), FileShingleStore()):
            found, dedup = decide_all(sets, keys, store, batch)
            assert found == expected
            assert dedup.candidates == counted
            assert dedup.kept == sum(e is None for e in expected)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10**6), st.integers(1, 150), st.sampled_from([1, 2, 9, 1000]))
def test_batches_of_any_size_with_real_band_keys_give_the_plain_pass(
        seed: int, count: int, batch: int) -> None:
    """MinHash band keys of the sets themselves (near copies share many bands, near-misses a
    few): any batch size gives the plain pass's decisions, kept chunk named and candidates."""
    from registry.ingest.pipeline import FileShingleStore

    sets = corpus(seed, count)
    bounds = np.concatenate(([0], np.cumsum([len(v) for v in sets]))).astype(np.int64)
    keys = MinHasher(THRESHOLD).band_keys(ShingleSets(np.concatenate(sets), bounds))
    expected, counted = lsh_reference(sets, keys, THRESHOLD)
    for store in (MemoryShingleStore(), FileShingleStore()):
        found, dedup = decide_all(sets, keys, store, batch)
        assert (found, dedup.candidates) == (expected, counted)
        assert dedup.removed == sum(e is not None for e in expected)


def test_band_keys_of_the_wrong_shape_are_refused() -> None:
    dedup = CorpusDeduplicator(THRESHOLD)
    sets = ShingleSets(as_set([1, 2, 3]), np.array([0, 3], dtype=np.int64))
    with pytest.raises(ValueError, match="band keys of shape"):
        dedup.decide(sets, np.ones((1, 2), dtype=np.uint64))


SHORT_WRITE = """
import resource, signal
import numpy as np
from registry.ingest.pipeline import FileShingleStore
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit: EFBIG, as a full disk's ENOSPC
store = FileShingleStore()
resource.setrlimit(resource.RLIMIT_FSIZE, (1_500_000, resource.RLIM_INFINITY))
sets = []
try:
    for i in range(30):
        values = np.arange(i * 10_000, i * 10_000 + 10_000, dtype=np.uint64)
        store.extend(values, np.array([5_000, 5_000]))
        sets.extend([values[:5_000], values[5_000:]])
except OSError as err:
    print("refused:", err)
else:
    found, _ = store.gather(np.arange(len(sets)))
    print("wrong:", not np.array_equal(found, np.concatenate(sets)))
"""


def test_file_store_never_loses_a_short_write_silently() -> None:
    """The file meets its size limit (as a full disk): a write that cannot be made whole is an
    error (a short pwrite is written on until it fails), never kept sets lost or cut (their
    near-duplicates then kept)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", SHORT_WRITE], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert out.startswith("refused: [Errno 27] File too large"), out


def test_the_band_table_finds_every_key_across_resizes_and_wrapped_probes() -> None:
    """Keys crowded onto the last home slots (their probes wrap past the end to the first
    slots), added over many batches with repeats, through several resizes: every key's chain
    holds exactly the members added with it, and absent keys are not found."""
    from registry.ingest.chunker import BandTable

    rng = np.random.default_rng(9)
    table = BandTable()
    added: dict[int, list[int]] = {}
    member = 0
    for _ in range(40):
        # low bits all ones: the home is the last slot whatever the table's size
        crowded = (rng.integers(1, 2**40, 60, dtype=np.int64).astype(np.uint64) << np.uint64(24)
                   ) | np.uint64(2**24 - 1)
        spread = rng.integers(1, 2**63, 200, dtype=np.int64).astype(np.uint64)
        known = np.array(list(added)[:30], dtype=np.uint64)
        keys = np.concatenate([crowded, spread, known, crowded[:5]])
        members = np.arange(member, member + len(keys), dtype=np.int64)
        member += len(keys)
        table.add(keys, members, table.find(keys))
        for key, index in zip(keys.tolist(), members.tolist(), strict=True):
            added.setdefault(key, []).append(index)
        everything = np.array(list(added), dtype=np.uint64)
        queries, found = table.chains(table.find(everything))
        chains: dict[int, list[int]] = {}
        for query, index in zip(queries.tolist(), found.tolist(), strict=True):
            chains.setdefault(int(everything[query]), []).append(index)
        assert {key: sorted(v) for key, v in chains.items()} == added
    absent = rng.integers(1, 2**63, 500, dtype=np.int64).astype(np.uint64)
    assert (table.find(absent[~np.isin(absent, list(added))]) == -1).all()
