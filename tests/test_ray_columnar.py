"""The Ray ingest's columnar chunk output and its dedup tasks, run in this process (no Ray):
what the chunk stage writes reads back as the chunks it was made from, and the four dedup
tasks over arrow blocks (route, collide, gather, verify) keep exactly the chunks the
one-process pass keeps, blocks sliced as Ray Data may slice them."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")

from registry.ingest import distributed  # noqa: E402
from registry.ingest.chunker import Chunk, ChunkedDocument  # noqa: E402
from registry.ingest.pipeline import IngestReport  # noqa: E402
from registry.ingest.ray_engine import (  # noqa: E402
    _collide_partition,
    _document_at,
    _gather_block,
    _per_chunk,
    _route_block,
    _verify_collisions,
    chunked_table,
)
from tests.test_distributed_dedup import (  # noqa: E402
    BANDS,
    THRESHOLD,
    band_keys,
    corpus_of_sets,
    sequential,
)

RUN = IngestReport("v1", "run1", "t", "s", "corpus", 1)


def documents(sets: list[np.ndarray], ids: list[bytes], per_document: int
              ) -> list[ChunkedDocument]:
    keys = band_keys(sets)
    out = []
    for first in range(0, len(sets), per_document):
        doc_id = f"doc{first // per_document}"
        members = range(first, min(first + per_document, len(sets)))
        chunks = [Chunk(ids[i].hex() + "0" * 32, doc_id, n, f"text {i}", f"bm25 {i}", i % 50,
                        i % 40, "v1", "run1", "", 0, 0, 0) for n, i in enumerate(members)]
        out.append(ChunkedDocument(doc_id, chunks, [sets[i] for i in members],
                                   [keys[i] for i in members], tokens=len(chunks) * 7,
                                   too_small=first % 3, duplicates=first % 2))
    return out


def test_the_chunk_stage_output_reads_back_as_its_chunks() -> None:
    sets = corpus_of_sets(1, 40)
    ids = [i.to_bytes(16, "little") for i in range(len(sets))]
    chunked = [*documents(sets, ids, 3), ChunkedDocument("empty", [], [], [], too_small=2)]
    seqs = list(range(10, 10 + len(chunked)))
    table = chunked_table([0] * len(chunked), seqs, "node", chunked, BANDS)
    columns = table.to_pydict()
    for position, result in enumerate(chunked):
        back = _document_at(columns, position, RUN)
        assert [c.row() for c in back.chunks] == [c.row() for c in result.chunks]
        assert (back.tokens, back.too_small, back.duplicates) == (
            result.tokens, result.too_small, result.duplicates)
    read = _per_chunk(table, BANDS)
    expected = [(distributed.order_of(seq, n), keys) for seq, r in zip(seqs, chunked, strict=True)
                for n, keys in enumerate(r.band_keys)]
    assert read.orders.tolist() == [order for order, _ in expected]
    assert [tuple(row) for row in read.keys.tolist()] == [k for _, k in expected if k]
    assert read.has_keys.tolist() == [bool(k) for _, k in expected]
    wanted = np.array([expected[3][0], expected[7][0]], dtype=np.int64)
    (part,) = _gather_block(table, BANDS, wanted)
    assert np.array_equal(part.values[part.offsets[0]:part.offsets[1]], sets[3])
    assert np.array_equal(part.values[part.offsets[1]:part.offsets[2]], sets[7])
    assert part.doc_ids == ["doc1", "doc2"]


def run_tasks(blocks: list[pa.Table], partitions: int) -> distributed.Decisions:
    """`ray_engine._dedup`, each task called in this process."""
    routed = [_route_block(block, partitions, BANDS) for block in blocks]
    lows = np.array([r[-1] for r in routed], dtype=np.int64)
    by_low = np.argsort(lows, kind="stable")
    collided = [_collide_partition(lows[by_low], len(blocks), *(r[p] for r in routed))
                for p in range(partitions)]
    gathered = [_gather_block(blocks[b], BANDS, *(c[position] for c in collided))
                for position, b in enumerate(by_low.tolist())]
    results = [_verify_collisions(collided[p][-1], THRESHOLD, *(g[p] for g in gathered))
               for p in range(partitions)]
    return distributed.resolve(distributed.merge_partitions(results),
                               [g for r in results for g in r.id_groups])


@pytest.mark.parametrize("partitions", [2, 5])
@pytest.mark.parametrize("seed", range(4))
def test_the_dedup_tasks_over_arrow_blocks_keep_what_the_greedy_pass_keeps(
    seed: int, partitions: int
) -> None:
    sets = corpus_of_sets(seed, 180)
    ids = [bytes([i % 7]) * 16 if i % 5 == 0 else i.to_bytes(16, "little")
           for i in range(len(sets))]
    expected = sequential(sets, band_keys(sets), ids)
    chunked = documents(sets, ids, 3)
    table = chunked_table([0] * len(chunked), list(range(len(chunked))), "n", chunked, BANDS)
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(chunked)), 6))
    blocks = [table.slice(a, b - a) for a, b in zip([0, *cuts], [*cuts, len(chunked)],
                                                    strict=True)]
    blocks.append(table.slice(len(chunked), 0))  # an empty block
    rng.shuffle(blocks)
    decisions = run_tasks(blocks, partitions)
    order_to_index = {distributed.order_of(i // 3, i % 3): i for i in range(len(sets))}
    got = {order_to_index[o]: owner for o in order_to_index
           if (owner := decisions.dropped(o)) is not None}
    assert {i: int(owner[3:]) for i, owner in got.items()} == {
        i: owner // 3 for i, owner in expected.items()}
    assert len(got) > 20


@pytest.mark.parametrize("per_block", [1, 4, 1000])
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("dedup", ["corpus", "document"])
def test_the_drivers_pass_over_blocks_keeps_what_the_builtin_keeps(
    dedup: str, seed: int, per_block: int
) -> None:
    """`DriverPass` over the chunk stage's blocks against `keep_rows` (the built-in ingest) on
    the same documents: chunks with no band keys (empty shingle sets) among keyed ones, ids
    repeated across documents, documents without a chunk, any block size. (A block's `keys`
    has rows for its keyed chunks only; reading them by chunk position crashed or read another
    chunk's keys.)"""
    from registry.ingest.chunker import CorpusDeduplicator
    from registry.ingest.pipeline import CorpusPass, FileShingleStore, keep_rows
    from registry.ingest.ray_engine import DriverPass, _decided_rows

    sets = corpus_of_sets(seed, 150)
    assert any(len(s) == 0 for s in sets) and any(len(s) for s in sets)
    ids = [bytes([i % 7]) * 16 if i % 5 == 0 else i.to_bytes(16, "little")
           for i in range(len(sets))]
    chunked = documents(sets, ids, 3)
    chunked.insert(5, ChunkedDocument("no-chunk", [], [], [], too_small=1))
    corpus = dedup == "corpus"
    builtin = IngestReport("v1", "run1", "t", "s", dedup, 1)
    store = FileShingleStore() if corpus else None
    try:
        corpus_pass = CorpusPass(CorpusDeduplicator(THRESHOLD, store) if store else None)
        expected = [[row[0] for row in keep_rows([result], corpus_pass, builtin)]
                    for result in chunked]
    finally:
        if store is not None:
            store.close()
    bands = BANDS if corpus else 0
    driver = DriverPass(THRESHOLD if corpus else None, bands)
    try:
        for first in range(0, len(chunked), per_block):
            part = chunked[first:first + per_block]
            driver.add(chunked_table([0] * len(part), list(range(first, first + len(part))),
                                     "node", part, bands))
    finally:
        driver.close()
    on_ray = IngestReport("v1", "run1", "t", "s", dedup, 1)
    kept = [[row[0] for row in _decided_rows(seq, result, driver.decisions, on_ray)]
            for seq, result in enumerate(chunked)]
    assert kept == expected
    assert (on_ray.corpus_duplicates, on_ray.identical_ids) == (builtin.corpus_duplicates,
                                                                builtin.identical_ids)
    assert on_ray.accounted == builtin.accounted
    assert builtin.identical_ids > 0 and (builtin.corpus_duplicates > 0) == corpus


def test_the_dedup_way_follows_the_size_the_reader_walks(tmp_path: Path) -> None:
    """`larger_than` decides driver or shuffle: dot-directories (a .git) are not the corpus,
    and a file source is its size."""
    from registry.ingest.ray_engine import larger_than

    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("x" * 600)
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "pack").write_bytes(b"\0" * 5000)
    assert not larger_than(tmp_path, 1000)
    assert larger_than(tmp_path, 500)
    (tmp_path / "docs" / "b.txt").write_text("y" * 600)
    assert larger_than(tmp_path, 1000)
    single = tmp_path / "corpus.jsonl"
    single.write_text("z" * 100)
    assert larger_than(single, 99) and not larger_than(single, 100)
