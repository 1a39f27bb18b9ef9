"""The corpus deduplicator's cost per chunk stays flat as buckets grow (issue 20): candidates
ruled out by their sizes are not read, many candidates are verified in one vectorized pass.
Neither may change a decision nor the kept chunk a duplicate is said to repeat: here every
chunk is given the same band keys, so every kept chunk is a candidate of every later one (one
bucket as large as the corpus), and the result must be the exact greedy pass in corpus order."""

from __future__ import annotations

import random

import numpy as np
import pytest

from registry.ingest.chunker import CorpusDeduplicator, MemoryShingleStore, ShingleStore, jaccard

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


def run(sets: list[np.ndarray], store: ShingleStore) -> tuple[list[int | None], int]:
    dedup = CorpusDeduplicator(THRESHOLD, store)
    keys = (1,) * dedup.hasher.bands  # one bucket per band, holding every kept chunk
    found: list[int | None] = []
    for values in sets:
        found.append(dedup.last_index if dedup.is_duplicate(values, keys) else None)
    return found, dedup.candidates


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_bucket_as_large_as_the_corpus_gives_the_exact_greedy_decisions(seed: int) -> None:
    from registry.ingest.pipeline import FileShingleStore

    sets = corpus(seed, 400)
    expected = reference(sets, THRESHOLD)
    assert sum(e is None for e in expected) > 100  # the bucket grows past the vectorized size
    assert any(e is not None and e > 2 for e in expected)  # matches found past the first few
    in_memory, candidates = run(sets, MemoryShingleStore())
    assert in_memory == expected
    file_store = FileShingleStore()
    try:
        assert run(sets, file_store) == (in_memory, candidates)
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
    for first, second in ((larger, subset), (subset, larger)):
        dedup = CorpusDeduplicator(THRESHOLD)
        keys = (7,) * dedup.hasher.bands
        assert not dedup.is_duplicate(first, keys)
        assert dedup.is_duplicate(second, keys) and dedup.last_index == 0
    dedup = CorpusDeduplicator(THRESHOLD)
    keys = (7,) * dedup.hasher.bands
    assert not dedup.is_duplicate(as_set([1, 2, 3, 4, 5, 6]), keys)
    assert not dedup.is_duplicate(subset, keys)  # 4 of 6 < 0.8: ruled out by size, kept
    assert dedup.candidates == 1


def test_jaccard_of_sorted_distinct_sets() -> None:
    rng = np.random.default_rng(5)
    for _ in range(200):
        a = np.unique(rng.integers(0, 60, rng.integers(0, 40), dtype=np.uint64))
        b = np.unique(rng.integers(0, 60, rng.integers(0, 40), dtype=np.uint64))
        sa, sb = set(a.tolist()), set(b.tolist())
        expected = len(sa & sb) / len(sa | sb) if sa and sb else 0.0
        assert jaccard(a, b) == expected


@pytest.mark.parametrize("flush_bytes", [1, 200, 1 << 20])
def test_file_store_reads_back_every_set_pending_or_flushed(flush_bytes: int) -> None:
    """Appends are buffered and written FLUSH_BYTES at a time: every set reads back the same
    whether it is still pending, just flushed or long on file, empty sets included."""
    from registry.ingest.pipeline import FileShingleStore

    rng = np.random.default_rng(flush_bytes)
    store = FileShingleStore()
    store.FLUSH_BYTES = flush_bytes
    appended: list[np.ndarray] = []
    try:
        for _ in range(300):
            values = np.unique(rng.integers(0, 2**64, rng.integers(0, 30), dtype=np.uint64))
            assert store.append(values) == len(appended)
            appended.append(values)
            probe = int(rng.integers(len(appended)))  # reads interleaved with appends
            assert np.array_equal(store.get(probe), appended[probe])
        for index, values in enumerate(appended):
            assert np.array_equal(store.get(index), values)
    finally:
        store.close()


def test_file_store_with_flushes_gives_the_in_memory_decisions() -> None:
    from registry.ingest.pipeline import FileShingleStore

    sets = corpus(4, 400)
    file_store = FileShingleStore()
    file_store.FLUSH_BYTES = 1000  # a flush every few kept chunks
    try:
        assert run(sets, file_store) == run(sets, MemoryShingleStore())
    finally:
        file_store.close()


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
    for _ in sets:
        roll = rng.random()
        if roll < 0.05:
            keys.append(())
        elif roll < 0.5:  # fresh in every band
            keys.append(tuple(rng.randrange(10**9, 2 * 10**9) for _ in range(bands)))
        else:  # shared with others in a few bands
            keys.append(tuple(rng.randrange(2) if rng.random() < 0.6
                              else rng.randrange(10**9, 2 * 10**9) for _ in range(bands)))
    expected, counted = lsh_reference(sets, keys, THRESHOLD)
    assert sum(e is not None for e in expected) > 10
    for store in (MemoryShingleStore(), FileShingleStore()):
        dedup = CorpusDeduplicator(THRESHOLD, store)
        found = [dedup.last_index if dedup.is_duplicate(values, these) else None
                 for values, these in zip(sets, keys, strict=True)]
        assert found == expected
        assert dedup.candidates == counted
        assert dedup.kept == sum(e is None for e in expected)


def test_band_keys_of_the_wrong_length_are_refused() -> None:
    dedup = CorpusDeduplicator(THRESHOLD)
    with pytest.raises(ValueError):
        dedup.is_duplicate(as_set([1, 2, 3]), (1, 2))


SHORT_WRITE = """
import resource, signal
import numpy as np
from registry.ingest.pipeline import FileShingleStore
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit: EFBIG, as a full disk's ENOSPC
store = FileShingleStore()
resource.setrlimit(resource.RLIMIT_FSIZE, (1_500_000, resource.RLIM_INFINITY))
sets = []
try:
    for i in range(3000):
        values = np.arange(i * 100, i * 100 + 100, dtype=np.uint64)
        store.append(values)
        sets.append(values)
except OSError as err:
    print("refused:", err)
else:
    print("wrong:", sum(not np.array_equal(store.get(i), v) for i, v in enumerate(sets)))
"""


def test_file_store_never_loses_a_short_write_silently() -> None:
    """The second 1 MB flush meets the limit halfway: pwrite writes what fits and returns its
    count. Ignored, the rest of the flush was lost and those kept sets read back empty or cut
    (near-duplicates of them then kept); the store must raise the error the next write gets."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", SHORT_WRITE], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert out.startswith("refused: [Errno 27] File too large"), out
