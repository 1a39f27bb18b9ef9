"""The chunker: what a locked config means, token for token. Pure: no I/O, no database.

A document is split on markdown headings (never inside a fenced code block); a section that
fits `chunk_size` tokens is one chunk; a longer one is packed paragraph by paragraph and, where
a paragraph is itself too long, cut into windows. Within a section consecutive chunks share
exactly `overlap` tokens. Every cut falls on a pre-token (word) boundary of the config's
tokenizer, so a chunk's text, sliced from the source by offsets and never decoded, re-tokenizes
to exactly the count stored with it. Each document is encoded once (`encode_batch`, or for a
BERT-style WordPiece tokenizer the same offsets and word ids assembled from cached word runs:
registry.ingest.runs); cuts and counts are read off that one encoding, never by re-encoding
pieces.

Near-duplicates are found on word 5-gram shingles: exactly within a document, and corpus-wide
with MinHash LSH whose candidates are verified exactly (so precision is 1 by construction).
"""

from __future__ import annotations

import bisect
import hashlib
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import chain
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np
import numpy.typing as npt
from tokenizers import PreTokenizedString

from registry.config import PREFIX_MARKER, LockedConfig
from registry.ingest.runs import RunEncoder
from registry.tokenizer import splits_on_whitespace

if TYPE_CHECKING:
    from tokenizers import Tokenizer

MIN_CHUNK_TOKENS = 10
"""Chunks with fewer body tokens carry too little to retrieve; they are dropped."""
SHINGLE_WORDS = 5
KINDS = ("markdown", "text")
ELLIPSIS = "…"

Shingles = npt.NDArray[np.uint64]
EMPTY_SHINGLES: Shingles = np.zeros(0, dtype=np.uint64)


@dataclass(frozen=True, slots=True)
class Document:
    """One source document: `kind` is `markdown` (headings split sections) or `text`."""

    doc_id: str
    title: str
    text: str
    kind: str = "markdown"


class Chunk(NamedTuple):
    """One row of a shadow table (the first nine fields, `chunk_table.ROW_COLUMNS`), plus
    where its body sits in the source. A NamedTuple: a corpus makes millions, and they cross
    processes."""

    id: str
    doc_id: str
    chunk_index: int
    embedding_text: str
    bm25_text: str
    embedding_token_count: int
    bm25_token_count: int
    chunk_version: str
    ingest_run_id: str
    section: str
    start: int
    """Character offset of the body in the document text (body == text[start:end])."""
    end: int
    overlap: int
    """Tokens shared with the previous kept chunk of the same section (0 at a section start)."""

    def row(self) -> tuple[str, str, int, str, str, int, int, str, str]:
        """The values of the table's data columns, in `chunk_table.ROW_COLUMNS` order."""
        return (self.id, self.doc_id, self.chunk_index, self.embedding_text, self.bm25_text,
                self.embedding_token_count, self.bm25_token_count, self.chunk_version,
                self.ingest_run_id)


@dataclass(slots=True)
class ChunkedDocument:
    """The kept chunks of one document, their shingles, and what was dropped and why."""

    doc_id: str
    chunks: list[Chunk]
    shingles: list[Shingles] = field(repr=False)
    band_keys: list[tuple[int, ...]] = field(repr=False)
    tokens: int = 0
    too_small: int = 0
    duplicates: int = 0
    over_budget: int = 0
    header_only: int = 0


# ---------------------------------------------------------------------------------------------
# Markdown layout: sections of blocks (paragraphs, fenced code kept whole)

_HEADING = re.compile(r" {0,3}(#{1,6})(?:[ \t]+(.*?))?[ \t]*$")
_CLOSING_HASHES = re.compile(r"(?:^|[ \t]+)#+$")
_EVENTS = re.compile(r"\n(?:(?P<blank>[ \t]*(?=\n))|(?P<heading> {0,3}#{1,6}(?=[ \t\n]|$))"
                     r"|(?P<fence> {0,3}(?:`{3,}|~{3,})))")
_BLANKS = re.compile(r"\n(?P<blank>[ \t]*(?=\n))")


@dataclass(slots=True)
class Section:
    """A heading's span of the document: its blocks as (start, end) character spans, and the
    character spans of the heading names that make its path (`Guide > Install`)."""

    path: str
    blocks: list[tuple[int, int]]
    names: tuple[tuple[int, int], ...] = ()
    heading_blocks: int = 0
    """How many leading blocks are heading lines (a section made only of them is header-only)."""


def _clean(text: str) -> str:
    return " ".join(text.split())


def split_sections(text: str, kind: str) -> list[Section]:
    """Sections of non-blank blocks. Markdown splits on ATX headings outside code fences; a
    fenced block is one block however many blank lines it holds. Only the lines that matter
    (blank, heading, fence) are visited: the rest are found between them."""
    sections: list[Section] = []
    stack: list[tuple[int, str, tuple[int, int]]] = []
    current = Section("", [])
    cursor = 0
    fence: str | None = None
    fence_start = 0
    length = len(text)
    for match in (_EVENTS if kind == "markdown" else _BLANKS).finditer("\n" + text):
        start = match.start()
        what = match.lastgroup
        if what == "blank":
            if fence is None:
                if start > cursor:
                    current.blocks.append((cursor, start - 1))
                cursor = match.end()
            continue
        end = text.find("\n", start)
        end = length if end < 0 else end
        line = text[start:end].strip()
        marker = line[: len(line) - len(line.lstrip(line[0]))] if what == "fence" else ""
        if fence is not None:
            if marker.startswith(fence) and marker == line:
                current.blocks.append((fence_start, end))
                fence = None
                cursor = end + 1
            continue
        if start > cursor:
            current.blocks.append((cursor, start - 1))
        cursor = end + 1
        if marker:
            fence, fence_start = marker, start
        elif heading := _HEADING.match(text, start, end):
            if current.blocks:
                sections.append(current)
            level = len(heading.group(1))
            stack = [entry for entry in stack if entry[0] < level]
            raw = _CLOSING_HASHES.sub("", heading.group(2) or "").rstrip()
            if raw:
                name_start = heading.start(2)
                stack.append((level, _clean(raw), (name_start, name_start + len(raw))))
            current = Section(" > ".join(name for _, name, _ in stack), [(start, end)],
                              tuple(span for _, _, span in stack), heading_blocks=1)
    if fence is not None:
        current.blocks.append((fence_start, length))
    elif cursor < length:
        current.blocks.append((cursor, length))
    if current.blocks:
        sections.append(current)
    return sections


# ---------------------------------------------------------------------------------------------
# Shingles and exact near-duplicate detection

_WORD = re.compile(r"\w+")
_SHINGLE_MULTIPLIERS = np.array(
    [0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93,
     0xFF51AFD7ED558CCD], dtype=np.uint64,
)
_LONG_RUN = 32
"""Runs of a shingle shared by more chunks than this get their pairs one run at a time."""


def words(text: str) -> list[str]:
    """The words of `text` for dedup: runs of word characters, lowercased."""
    return _WORD.findall(text.lower())


_ASCII_WORDS = bytes(c + 32 if 65 <= c <= 90 else c if chr(c).isalnum() or c == 95 else 32
                     for c in range(128)) + b" " * 128
"""ASCII lowercased, and every byte that is not a word character (`\\w`) made a space."""


def _word_bytes(text: str) -> bytes:
    """The words of `text` (`words`) as their UTF-8, separated by spaces: for an ASCII text one
    bytes.translate (the same runs of [A-Za-z0-9_], lowercased) instead of a regex."""
    if text.isascii():
        return text.encode("ascii").translate(_ASCII_WORDS)
    return " ".join(words(text)).encode()


def _mix(x: Shingles) -> Shingles:
    """splitmix64's finalizer: every input bit reaches every output bit (and it is a bijection,
    so it adds no collision)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


_POSITION_SEED = np.uint64(0x2545F4914F6CDD1D)
_LENGTH_MULTIPLIER = np.uint64(0x9FB21C651E98DF25)
_POSITION_WEIGHTS = _mix(np.arange(1 << 12, dtype=np.uint64) + _POSITION_SEED) | np.uint64(1)
"""The weight of a word's byte at each position (odd, so no single-byte change cancels);
computed alike past the table for longer words."""


def _hash_spans(letters: npt.NDArray[np.uint8], lengths: npt.NDArray[np.int64]) -> Shingles:
    """Stable 64-bit hashes of byte strings laid end to end (`lengths` each, every one >= 1):
    mix(sum of byte x weight of its position + length x a constant), one vectorized pass for
    all of them. No cache: a cache of word hashes grew with the corpus's vocabulary and its
    lookups missed the CPU caches more the larger it grew (shingling cost 27 us per chunk on
    10k chunks, 37 within 1M)."""
    if not len(lengths):
        return EMPTY_SHINGLES
    firsts = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(lengths[:-1], out=firsts[1:])
    positions = np.arange(len(letters), dtype=np.int64) - np.repeat(firsts, lengths)
    if int(lengths.max()) <= len(_POSITION_WEIGHTS):
        weights = _POSITION_WEIGHTS[positions]
    else:
        weights = _mix(positions.astype(np.uint64) + _POSITION_SEED) | np.uint64(1)
    weights *= letters
    sums = np.add.reduceat(weights, firsts)
    sums += lengths.astype(np.uint64) * _LENGTH_MULTIPLIER
    return _mix(sums)


def hash_words(data: bytes) -> tuple[Shingles, npt.NDArray[np.int64]]:
    """The hash of each space-separated word of `data` (see `_hash_spans`), and the offset
    where each word starts."""
    raw = np.frombuffer(data, dtype=np.uint8)
    in_word = np.zeros(len(raw) + 2, dtype=np.int8)
    np.not_equal(raw, 32, out=in_word[1:-1], casting="unsafe")
    edges = np.flatnonzero(np.diff(in_word))
    starts, ends = edges[0::2], edges[1::2]
    return _hash_spans(raw[in_word[1:-1].view(np.bool_)], ends - starts), starts


@dataclass(frozen=True)
class ShingleSets:
    """The shingle sets of many texts in one array: set i is values[bounds[i]:bounds[i+1]],
    sorted and distinct. Built in one vectorized pass, so small texts cost no numpy calls each."""

    values: Shingles
    bounds: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def __getitem__(self, index: int) -> Shingles:
        return self.values[self.bounds[index]: self.bounds[index + 1]]

    @property
    def sizes(self) -> npt.NDArray[np.int64]:
        return np.diff(self.bounds)

    @property
    def owners(self) -> npt.NDArray[np.int64]:
        return np.repeat(np.arange(len(self), dtype=np.int64), self.sizes)


SHINGLE_GROUP_CHARS = 1 << 20
"""Texts are shingled in groups of about this many characters: the words of a group are
Python strings (~60 bytes each with their hashes and arrays), so a batch of one huge
document made of one-letter words would otherwise hold ~100 bytes for each of its characters."""


def shingle_sets(texts: Sequence[str]) -> ShingleSets:
    """Word 5-gram shingles of every text, as 64-bit hashes.

    A text with fewer than five words is one shingle of all its words; a text with no word
    characters is one shingle of its whitespace-normalized self (so identical ones match).
    Shingles never span two texts, so shingling groups of texts apart gives the same sets.
    """
    groups: list[ShingleSets] = []
    first, size = 0, 0
    for index, text in enumerate(texts):
        size += len(text)
        if size >= SHINGLE_GROUP_CHARS:
            groups.append(_shingle_group(texts[first: index + 1]))
            first, size = index + 1, 0
    if first < len(texts) or not groups:
        groups.append(_shingle_group(texts[first:]))
    if len(groups) == 1:
        return groups[0]
    sizes = np.concatenate([group.sizes for group in groups])
    return ShingleSets(np.concatenate([group.values for group in groups]),
                       np.concatenate(([0], np.cumsum(sizes))).astype(np.int64))


def _shingle_group(texts: Sequence[str]) -> ShingleSets:
    pieces = [_word_bytes(text) for text in texts]
    # one buffer, a text's words after the previous text's: where each text starts in it
    # counts the words of each
    hashes, word_starts = hash_words(b" ".join(pieces))
    text_starts = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, pieces), dtype=np.int64, count=len(pieces)) + 1,
              out=text_starts[1:])
    counts = np.diff(np.searchsorted(word_starts, text_starts))
    wordless = np.flatnonzero(counts == 0).tolist()
    if wordless:  # a text without a word is one shingle of its whitespace-normalized self
        normalized = [_clean(texts[index]).encode() for index in wordless]
        filled = [index for index, text in zip(wordless, normalized, strict=True) if text]
        spans = [text for text in normalized if text]
        if filled:
            lengths = np.fromiter(map(len, spans), dtype=np.int64, count=len(spans))
            letters = np.frombuffer(b"".join(spans), dtype=np.uint8)
            at = np.concatenate(([0], np.cumsum(counts)))[filled]
            hashes = np.insert(hashes, at, _hash_spans(letters, lengths))
            counts[filled] = 1
    total = len(hashes)
    owner = np.repeat(np.arange(len(texts), dtype=np.int64), counts)
    parts: list[Shingles] = []
    owners: list[npt.NDArray[np.int64]] = []
    span = SHINGLE_WORDS - 1
    if total > span:
        grams = hashes[: total - span] * _SHINGLE_MULTIPLIERS[0]
        for offset in range(1, SHINGLE_WORDS):
            grams += hashes[offset: total - span + offset] * _SHINGLE_MULTIPLIERS[offset]
        whole = owner[: total - span] == owner[span:]
        parts.append(grams[whole])
        owners.append(owner[: total - span][whole])
    starts = np.concatenate(([0], np.cumsum(counts)))
    for index in np.flatnonzero((counts > 0) & (counts < SHINGLE_WORDS)).tolist():
        few = hashes[starts[index]: starts[index + 1]]
        parts.append(np.array([(few * _SHINGLE_MULTIPLIERS[: len(few)]).sum(dtype=np.uint64)],
                              dtype=np.uint64))
        owners.append(np.array([index], dtype=np.int64))
    values = np.concatenate(parts) if parts else EMPTY_SHINGLES
    owned = np.concatenate(owners) if owners else np.zeros(0, dtype=np.int64)
    order = np.lexsort((values, owned))
    values, owned = values[order], owned[order]
    if len(values):
        distinct = np.ones(len(values), dtype=bool)
        distinct[1:] = (values[1:] != values[:-1]) | (owned[1:] != owned[:-1])
        values, owned = values[distinct], owned[distinct]
    bounds = np.concatenate(([0], np.cumsum(np.bincount(owned, minlength=len(texts)))))
    return ShingleSets(values, bounds.astype(np.int64))


def shingles(text: str) -> Shingles:
    """The shingle set of one text (see `shingle_sets`)."""
    return shingle_sets([text])[0]


def jaccard(a: Shingles, b: Shingles) -> float:
    """Jaccard similarity of two shingle sets (sorted distinct arrays); 0 when either is empty."""
    if not len(a) or not len(b):
        return 0.0
    both = np.concatenate((a, b))  # each distinct, so a value twice is a shared one
    both.sort()
    shared = int(np.count_nonzero(both[1:] == both[:-1]))
    return shared / (len(a) + len(b) - shared)


def dedup_exact(sets: ShingleSets, threshold: float,
                groups: Sequence[int] | None = None) -> list[bool]:
    """Greedy in order: keep a set unless its Jaccard with an already kept set of the same
    group (document) is >= threshold. Exact.

    Pairs that share a shingle are found by sorting every shingle once, so the cost grows with
    the shingles two sets share, not with the square of the number of sets. A group where that
    would mean many pairs (a document repeating one block hundreds of times) is run through
    `_dedup_incremental` instead, whose index holds only kept sets.
    """
    count = len(sets)
    kept = [True] * count
    if count < 2:
        return kept
    owners = sets.owners
    group = (np.asarray(groups, dtype=np.int64)[owners] if groups is not None
             else np.zeros(len(owners), dtype=np.int64))
    order = np.lexsort((sets.values, group))
    values, owners, group = sets.values[order], owners[order], group[order]
    repeated = _continues(values, group)
    if not repeated.any():
        return kept
    in_run = np.zeros(len(values), dtype=bool)
    in_run[1:] |= repeated
    in_run[:-1] |= repeated
    values, owners, group = values[in_run], owners[in_run], group[in_run]
    starts_run = np.ones(len(owners), dtype=bool)
    starts_run[1:] = ~_continues(values, group)
    run_starts = np.flatnonzero(starts_run)
    lengths = np.diff(np.append(run_starts, len(owners)))
    # Runs of two (the overlap of neighbouring chunks) cost one pair each, linear like the sets
    # themselves; only longer runs can multiply pairs, and only they may send a group to the
    # incremental path, whose index of every kept shingle would outweigh the pairs.
    pairs = np.bincount(group[run_starts],
                        weights=np.where(lengths > 2, lengths * (lengths - 1) / 2, 0))
    heavy = np.flatnonzero(pairs > _HEAVY_PAIRS)
    if len(heavy):
        member_groups = (np.asarray(groups, dtype=np.int64) if groups is not None
                         else np.zeros(count, dtype=np.int64))
        for heavy_group in heavy.tolist():
            members = np.flatnonzero(member_groups == heavy_group).tolist()
            for index, keep in zip(members, _dedup_incremental(sets, members, threshold),
                                   strict=True):
                kept[index] = keep
        light = ~np.isin(group[run_starts], heavy)
        run_starts, lengths = run_starts[light], lengths[light]
        if not len(run_starts):
            return kept
    run_end = np.zeros(len(owners), dtype=np.int64)
    run_end[run_starts] = run_starts + lengths
    run_end = np.maximum.accumulate(run_end)
    position = np.arange(len(owners))
    in_light = _mark_runs(len(owners), run_starts, lengths)
    firsts: list[npt.NDArray[np.int64]] = []
    seconds: list[npt.NDArray[np.int64]] = []
    for distance in range(1, min(int(lengths.max()), _LONG_RUN + 1)):
        same = np.flatnonzero(in_light[:-distance]
                              & (position[:-distance] + distance < run_end[:-distance]))
        firsts.append(owners[same])
        seconds.append(owners[same + distance])
    for start, length in zip(run_starts[lengths > _LONG_RUN + 1].tolist(),
                             lengths[lengths > _LONG_RUN + 1].tolist(), strict=True):
        i, j = np.triu_indices(length, k=_LONG_RUN + 1)
        firsts.append(owners[start + i])
        seconds.append(owners[start + j])
    first, second = np.concatenate(firsts), np.concatenate(seconds)
    keys, shared = np.unique(np.minimum(first, second) * count + np.maximum(first, second),
                             return_counts=True)
    left, right = keys // count, keys % count
    sizes = sets.sizes
    close = shared / (sizes[left] + sizes[right] - shared) >= threshold
    earlier: dict[int, list[int]] = {}
    for kept_index, later in zip(left[close].tolist(), right[close].tolist(), strict=True):
        earlier.setdefault(later, []).append(kept_index)
    for later in sorted(earlier):
        if any(kept[i] for i in earlier[later]):
            kept[later] = False
    return kept


_HEAVY_PAIRS = 200_000
"""Above this many shingle-sharing pairs in one group, dedup goes incremental (bounded work)."""


def _mark_runs(size: int, starts: npt.NDArray[np.int64],
               lengths: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
    """A mask of the positions covered by runs [start, start + length)."""
    steps = np.zeros(size + 1, dtype=np.int64)
    np.add.at(steps, starts, 1)
    np.add.at(steps, starts + lengths, -1)
    covered: npt.NDArray[np.bool_] = np.cumsum(steps[:-1]) > 0
    return covered


def _dedup_incremental(sets: ShingleSets, members: list[int], threshold: float) -> list[bool]:
    """The same greedy rule, one set at a time against an index of the KEPT sets only: copies
    of a kept set are never indexed, so heavy repetition costs linear work, not pairs."""
    index: dict[int, list[int]] = {}
    sizes: dict[int, int] = {}
    result = []
    for member in members:
        values = sets[member].tolist()
        shared: dict[int, int] = {}
        for value in values:
            for other in index.get(value, ()):
                shared[other] = shared.get(other, 0) + 1
        size = len(values)
        duplicate = any(common / (size + sizes[other] - common) >= threshold
                        for other, common in shared.items())
        result.append(not duplicate)
        if not duplicate:
            sizes[member] = size
            for value in values:
                index.setdefault(value, []).append(member)
    return result


def _continues(values: Shingles, group: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
    same: npt.NDArray[np.bool_] = (values[1:] == values[:-1]) & (group[1:] == group[:-1])
    return same


# ---------------------------------------------------------------------------------------------
# Corpus-wide near-duplicates: MinHash LSH, candidates verified exactly

PAIR_RECALL = 0.9995
"""Probability that LSH offers a pair at exactly the threshold as a candidate."""


def lsh_shape(threshold: float) -> tuple[int, int]:
    """(bands, rows): rows 3 above 0.7 (2 below), bands so a pair at the threshold is a
    candidate with probability PAIR_RECALL. 0.8 -> 10 x 3 = 30 hashes."""
    rows = 3 if threshold >= 0.7 else 2
    miss = 1.0 - threshold**rows
    bands = 1 if miss <= 0 else math.ceil(math.log(1.0 - PAIR_RECALL) / math.log(miss))
    return max(bands, 1), rows


KeyMatrix = npt.NDArray[np.uint64]
"""MinHash band keys, a row per shingle set and a column per band (a set without a shingle has
a row of zeros, and no key)."""


class MinHasher:
    """MinHash band keys of a shingle set; cheap to build, so every worker process has one."""

    def __init__(self, threshold: float, seed: int = 20250907) -> None:
        self.bands, self.rows = lsh_shape(threshold)
        generator = np.random.default_rng(seed)
        count = self.bands * self.rows
        one = np.uint64(1)
        self._a = generator.integers(1, 2**63, size=count, dtype=np.uint64) * np.uint64(2) + one
        self._b = generator.integers(0, 2**63, size=count, dtype=np.uint64)
        self._band_mult = generator.integers(1, 2**63, size=self.rows, dtype=np.uint64) | one

    def band_keys(self, sets: ShingleSets) -> list[tuple[int, ...]]:
        """`key_matrix` as a tuple per set (empty for a set without a shingle)."""
        keyed = sets.sizes > 0
        return [tuple(row) if filled else () for row, filled in zip(
            self.key_matrix(sets).tolist(), keyed.tolist(), strict=True)]

    def key_matrix(self, sets: ShingleSets) -> KeyMatrix:
        """One key per band per set: `rows` min-wise hashes (multiply-shift) mixed into one.

        One vectorized pass per hash function over all sets at once; a set without a shingle
        has a row of zeros.
        """
        sizes = sets.sizes
        filled = np.flatnonzero(sizes > 0)
        keys: KeyMatrix = np.zeros((len(sets), self.bands), dtype=np.uint64)
        if not len(filled):
            return keys
        starts = sets.bounds[:-1][filled]
        shift = np.uint64(32)
        signature = np.empty((len(filled), len(self._a)), dtype=np.uint64)
        # In blocks of about _MINHASH_BLOCK shingles: each hash function's temporaries then
        # stay in the CPU cache however many sets there are (one pass over 1M sets' 80M
        # shingles made 640 MB temporaries per hash function, and the cost per set grew).
        first = 0
        while first < len(filled):
            low = int(starts[first])
            last = int(np.searchsorted(starts, low + _MINHASH_BLOCK, side="right"))
            last = min(max(last, first + 1), len(filled))
            high = int(sets.bounds[filled[last - 1] + 1])
            block = sets.values[low:high]
            offsets = starts[first:last] - low
            hashed = np.empty(len(block), dtype=np.uint64)
            for column, (a, b) in enumerate(zip(self._a, self._b, strict=True)):
                np.multiply(block, a, out=hashed)
                hashed += b
                hashed >>= shift
                signature[first:last, column] = np.minimum.reduceat(hashed, offsets)
            first = last
        banded = signature.reshape(len(filled), self.bands, self.rows) * self._band_mult
        keys[filled] = _mix(banded.sum(axis=2, dtype=np.uint64))
        return keys


_MINHASH_BLOCK = 1 << 15
"""Shingles hashed per block in `MinHasher.key_matrix` (256 KB of uint64: the L2 cache)."""


class Growing:
    """A numpy array appended to in place, its capacity doubled when it fills."""

    def __init__(self, dtype: type[np.generic], first: Sequence[int] = ()) -> None:
        self._data = np.empty(max(1024, len(first)), dtype=dtype)
        self.size = 0
        self.extend(np.asarray(first, dtype=dtype))

    def extend(self, values: npt.NDArray[Any]) -> None:
        end = self.size + len(values)
        if end > len(self._data):
            grown = np.empty(max(end, 2 * len(self._data)), dtype=self._data.dtype)
            grown[:self.size] = self._data[:self.size]
            self._data = grown
        self._data[self.size:end] = values
        self.size = end

    def view(self) -> npt.NDArray[Any]:
        return self._data[:self.size]


def spans(offsets: npt.NDArray[np.int64], indices: npt.NDArray[np.int64]
          ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Where the sets at `indices` lie (sets i at [offsets[i], offsets[i + 1])), position by
    position, laid end to end; and their lengths."""
    starts = offsets[indices]
    lengths = offsets[indices + 1] - starts
    firsts = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(lengths[:-1], out=firsts[1:])
    positions = np.arange(int(lengths.sum()), dtype=np.int64)
    positions += np.repeat(starts - firsts, lengths)
    return positions, lengths


class ShingleStore(Protocol):
    """Where the corpus deduplicator keeps the shingles of kept chunks (memory, or a file),
    written and read a batch at a time."""

    def extend(self, values: Shingles, lengths: npt.NDArray[np.int64]) -> None:
        """Append sets laid end to end (`lengths` each): they take the next indices."""

    def gather(self, indices: npt.NDArray[np.int64]
               ) -> tuple[Shingles, npt.NDArray[np.int64]]:
        """The sets at `indices` laid end to end, and their lengths."""


class MemoryShingleStore:
    def __init__(self) -> None:
        self._values = Growing(np.uint64)
        self._offsets = Growing(np.int64, [0])

    def extend(self, values: Shingles, lengths: npt.NDArray[np.int64]) -> None:
        self._values.extend(values)
        self._offsets.extend(self._values.size - int(lengths.sum()) + np.cumsum(lengths))

    def gather(self, indices: npt.NDArray[np.int64]
               ) -> tuple[Shingles, npt.NDArray[np.int64]]:
        positions, lengths = spans(self._offsets.view(), indices)
        values: Shingles = self._values.view()[positions]
        return values, lengths


class BandTable:
    """Band key -> the kept chunks that have it: open addressing (linear probing) over numpy
    arrays, looked up and filled a batch of keys at a time, the chunks of a key a linked chain.

    Not a dict per band: at 1M chunks those held ~10M Python ints, each chunk's 10 lookups and
    10 inserts missed the CPU caches one after the other, and the cost per chunk grew with the
    corpus (8.7 us at 10k chunks, 16 at 1M). A batch's lookups here are independent loads the
    CPU overlaps. A slot is 16 bytes, key and chain head side by side (one cache line for
    both), the table at most MAX_LOAD full; an entry is 8 bytes."""

    MAX_LOAD = 0.6
    LIMIT = 2**31 - 1
    """Entries (kept chunks x bands) and chunk indices are int32."""

    def __init__(self) -> None:
        self._slots = np.zeros((1 << 12, 2), dtype=np.uint64)
        """Per slot: the key (0: an empty slot; keys are never 0), its chain's first entry."""
        self._used = 0
        self._members = Growing(np.int32)
        """The kept chunk of each entry."""
        self._next = Growing(np.int32)
        """The entry after each one in its key's chain, or -1."""

    def find(self, keys: Shingles) -> npt.NDArray[np.int64]:
        """The slot of each key, or -1 where a key is absent."""
        mask = len(self._slots) - 1
        table = self._slots[:, 0]
        slots = (keys & np.uint64(mask)).astype(np.int64)
        found = np.full(len(keys), -1, dtype=np.int64)
        pending = np.arange(len(keys), dtype=np.int64)
        while len(pending):
            held = table[slots]
            hit = held == keys[pending]
            found[pending[hit]] = slots[hit]
            going = ~hit & (held != 0)
            pending, slots = pending[going], (slots[going] + 1) & mask
        return found

    def chains(self, slots: npt.NDArray[np.int64]
               ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """(query, member) for every kept chunk in the chain of every slot found (>= 0)."""
        queries = np.flatnonzero(slots >= 0)
        entries = self._slots[slots[queries], 1].astype(np.int64)
        members, following = self._members.view(), self._next.view()
        found_queries: list[npt.NDArray[np.int64]] = []
        found_members: list[npt.NDArray[np.int64]] = []
        while len(queries):
            found_queries.append(queries)
            found_members.append(members[entries].astype(np.int64))
            entries = following[entries].astype(np.int64)
            alive = entries >= 0
            queries, entries = queries[alive], entries[alive]
        if not found_queries:
            none = np.zeros(0, dtype=np.int64)
            return none, none
        return np.concatenate(found_queries), np.concatenate(found_members)

    def add(self, keys: Shingles, members: npt.NDArray[np.int64],
            slots: npt.NDArray[np.int64]) -> None:
        """Each key's chunk added to its chain (keys may repeat); `slots` are the keys' `find`
        since the last `add`."""
        count = len(keys)
        first = self._members.size
        if first + count > self.LIMIT or (len(members) and int(members.max()) > self.LIMIT):
            raise ValueError(f"more than {self.LIMIT} band entries: the corpus is too large "
                             f"for one corpus-wide dedup pass")
        entries = np.arange(first, first + count, dtype=np.int64)
        self._members.extend(members)
        self._next.extend(np.full(count, -1, dtype=np.int32))
        following = self._next.view()
        order = np.argsort(keys, kind="stable")
        ordered, entries, slots = keys[order], entries[order], slots[order]
        starts = np.ones(count, dtype=bool)
        starts[1:] = ordered[1:] != ordered[:-1]
        linked = np.flatnonzero(~starts)  # each entry after its group's first -> the one before
        following[entries[linked]] = entries[linked - 1]
        ends = np.ones(count, dtype=bool)
        ends[:-1] = starts[1:]
        group_keys, group_first, group_last = ordered[starts], entries[starts], entries[ends]
        group_slots = slots[starts]
        held = group_slots >= 0
        following[group_first[held]] = self._slots[group_slots[held], 1]
        self._slots[group_slots[held], 1] = group_last[held]
        new_keys, new_heads = group_keys[~held], group_last[~held]
        if self._used + len(new_keys) > self.MAX_LOAD * len(self._slots):
            self._resize(self._used + len(new_keys))
        self._place(new_keys, new_heads.astype(np.uint64))

    def _place(self, keys: Shingles, heads: Shingles) -> None:
        """Distinct keys, absent from the table, into free slots."""
        mask = len(self._slots) - 1
        table = self._slots[:, 0]
        slots = (keys & np.uint64(mask)).astype(np.int64)
        pending = np.arange(len(keys), dtype=np.int64)
        while len(pending):
            free = np.flatnonzero(table[slots] == 0)
            claimed, claiming = slots[free], keys[pending[free]]
            table[claimed] = claiming  # of keys claiming one slot, the last written wins
            won = free[table[claimed] == claiming]
            self._slots[slots[won], 1] = heads[pending[won]]
            lost = np.ones(len(pending), dtype=bool)
            lost[won] = False
            pending, slots = pending[lost], (slots[lost] + 1) & mask
        self._used += len(keys)

    def _resize(self, needed: int) -> None:
        size = len(self._slots)
        while needed > self.MAX_LOAD * size:
            size *= 2
        held = self._slots[self._slots[:, 0] != 0]
        # Into an empty table, linear probing in order of home slot puts each key at its home
        # or right after the key before it: a running maximum, not a round per probe (placed
        # in rounds, 5M keys took 1 s; at 1M chunks the table is resized past 5M keys)
        homes = (held[:, 0] & np.uint64(size - 1)).astype(np.int64)
        order = np.argsort(homes, kind="stable")
        held, homes = held[order], homes[order]
        steps = np.arange(len(homes), dtype=np.int64)
        positions = steps + np.maximum.accumulate(homes - steps) if len(homes) else homes
        inside = positions < size
        self._slots = np.zeros((size, 2), dtype=np.uint64)
        self._slots[positions[inside]] = held[inside]
        self._used = int(inside.sum())
        wrapped = held[~inside]  # past the last slot: placed from the first on, as inserts are
        self._place(wrapped[:, 0].copy(), wrapped[:, 1].copy())


class Verdicts(NamedTuple):
    """What `CorpusDeduplicator.decide` found for each set of a batch."""

    matched: npt.NDArray[np.int64]
    """The store index of the kept chunk the set near-duplicates, or -1 (kept)."""
    stored: npt.NDArray[np.int64]
    """The store index the set was kept as, or -1 (a near-duplicate, or without a shingle)."""


class CorpusDeduplicator:
    """Greedy corpus-wide near-duplicate filter: LSH proposes, exact Jaccard decides.

    A set is dropped when a kept earlier set shares a band key with it and their Jaccard
    reaches the threshold; the kept set it names is the first such in band order, then corpus
    order (what a check of the candidates in that order meets first). Sets are decided a batch
    at a time (`decide`): the band keys are looked up in one pass (`BandTable`), and every
    candidate from earlier batches is verified in one vectorized pass whose cost per pair is
    the same however large the corpus; only sets sharing a key with an earlier set of the same
    batch are decided one by one, in order.

    Memory grows with the kept chunks: per band an 8-byte entry and, for a new key, a 16-byte
    slot of a table 0.3-0.6 full; a 64-byte sketch and an 8-byte size; and the shingles
    wherever `store` keeps them.
    """

    def __init__(self, threshold: float, store: ShingleStore | None = None) -> None:
        self.threshold = threshold
        self.hasher = MinHasher(threshold)
        self.store: ShingleStore = store or MemoryShingleStore()
        self._table = BandTable()
        self._salts = _mix(np.arange(1, self.hasher.bands + 1, dtype=np.uint64)
                           * np.uint64(0x9E3779B97F4A7C15))
        """Keys are salted by band, so one table holds every band's."""
        self._sizes = Growing(np.int64)
        """The shingle count of each kept chunk, by store index."""
        self._sketches = Growing(np.uint8)
        """A `sketch` of each kept chunk, by store index, SKETCH_BUCKETS bytes each."""
        self.kept = 0
        self.removed = 0
        self.candidates = 0
        """Candidates LSH proposed, counted as a check in order would meet them (up to the
        first near-duplicate)."""

    def is_duplicate(self, values: Shingles, keys: Sequence[int]) -> bool:
        """One set decided (a batch of one): True if a kept set is a near-duplicate, else it
        is kept. `keys` are its band keys (none: kept, and never a candidate)."""
        if not len(keys):
            self.kept += 1
            return False
        matrix = np.array([keys], dtype=np.uint64)
        sets = ShingleSets(values, np.array([0, len(values)], dtype=np.int64))
        return bool(self.decide(sets, matrix).matched[0] >= 0)

    def decide(self, sets: ShingleSets, keys: KeyMatrix) -> Verdicts:
        """Decide a batch of sets in order (each against the kept sets before it, of this
        batch and earlier ones); `keys` are their `MinHasher.key_matrix`."""
        count, bands = len(sets), self.hasher.bands
        if keys.shape != (count, bands):
            raise ValueError(f"band keys of shape {keys.shape} for {count} sets of {bands} "
                             f"bands")
        matched = np.full(count, -1, dtype=np.int64)
        stored = np.full(count, -1, dtype=np.int64)
        rows = np.flatnonzero(sets.sizes > 0)  # a set without a shingle is kept, not stored
        self.kept += count - len(rows)
        if not len(rows):
            return Verdicts(matched, stored)
        salted = keys[rows] ^ self._salts
        salted[salted == 0] = 1
        flat = salted.ravel()
        # Candidates among earlier batches' kept sets: (row, member) pairs, each with the
        # lowest band the two share, ordered by row, band, member; verified all at once
        slots = self._table.find(flat)
        queries, members = self._table.chains(slots)
        pair_rows, pair_bands = queries // bands, queries % bands
        order = np.lexsort((pair_bands, members, pair_rows))
        pair_rows, pair_bands, members = pair_rows[order], pair_bands[order], members[order]
        first = np.ones(len(order), dtype=bool)
        first[1:] = (pair_rows[1:] != pair_rows[:-1]) | (members[1:] != members[:-1])
        pair_rows, pair_bands, members = pair_rows[first], pair_bands[first], members[first]
        order = np.lexsort((members, pair_bands, pair_rows))
        pair_rows, pair_bands, members = pair_rows[order], pair_bands[order], members[order]
        pair_starts = np.searchsorted(pair_rows, np.arange(len(rows) + 1))
        # Rows that share a key with an earlier row of this batch wait for its decision
        by_key = np.argsort(flat, kind="stable")
        repeated = np.flatnonzero(flat[by_key[1:]] == flat[by_key[:-1]])
        waiting = np.zeros(len(rows), dtype=bool)
        waiting[by_key[repeated + 1] // bands] = True
        similar = self._verify(sets, rows, pair_rows, members, waiting)
        # The others are decided by their candidates from earlier batches alone
        hits = np.flatnonzero(similar & ~waiting[pair_rows])
        hit_rows, first_hit = np.unique(pair_rows[hits], return_index=True)
        hits = hits[first_hit]
        matched_rows = np.full(len(rows), -1, dtype=np.int64)
        matched_rows[hit_rows] = members[hits]
        self.candidates += int((hits - pair_starts[hit_rows] + 1).sum())
        missed = np.flatnonzero(~waiting & (matched_rows < 0))
        self.candidates += int((pair_starts[missed + 1] - pair_starts[missed]).sum())
        kept = ~waiting & (matched_rows < 0)
        local = np.full(len(rows), -1, dtype=np.int64)
        """The earlier row of this batch a waiting row near-duplicates."""
        if len(repeated):
            self._decide_waiting(sets, rows, flat, by_key, repeated, pair_starts, pair_bands,
                                 members, similar, waiting, kept, matched_rows, local)
        kept_rows = np.flatnonzero(kept)
        base = self._sizes.size
        indices = base + np.arange(len(kept_rows), dtype=np.int64)
        stored[rows[kept_rows]] = indices
        row_index = np.full(len(rows), -1, dtype=np.int64)
        row_index[kept_rows] = indices
        from_batch = np.flatnonzero(local >= 0)
        matched_rows[from_batch] = row_index[local[from_batch]]
        matched[rows] = matched_rows
        kept_sets = rows[kept_rows]
        positions, lengths = spans(sets.bounds, kept_sets)
        self.store.extend(sets.values[positions], lengths)
        self._sizes.extend(lengths)
        self._sketches.extend(sketch(sets, kept_sets).ravel())
        self._table.add(salted[kept_rows].ravel(), np.repeat(indices, bands),
                        slots.reshape(-1, bands)[kept_rows].ravel())
        self.kept += len(kept_rows)
        self.removed += len(rows) - len(kept_rows)
        return Verdicts(matched, stored)

    def _decide_waiting(self, sets: ShingleSets, rows: npt.NDArray[np.int64],
                        flat: Shingles, by_key: npt.NDArray[np.int64],
                        repeated: npt.NDArray[np.int64], pair_starts: npt.NDArray[np.int64],
                        pair_bands: npt.NDArray[np.int64], members: npt.NDArray[np.int64],
                        similar: npt.NDArray[np.bool_], waiting: npt.NDArray[np.bool_],
                        kept: npt.NDArray[np.bool_], matched_rows: npt.NDArray[np.int64],
                        local: npt.NDArray[np.int64]) -> None:
        """The rows sharing a key with an earlier row of the batch, one by one in order: their
        candidates are the earlier batches' (verified already) and the earlier rows of this
        batch kept so far, in band order, then corpus order."""
        bands = self.hasher.bands
        earlier: dict[int, list[int]] = {}
        """Rows of the batch by key, for the keys that repeat within it."""
        for position in np.unique(np.concatenate((repeated, repeated + 1))).tolist():
            entry = int(by_key[position])
            earlier.setdefault(int(flat[entry]), []).append(entry // bands)
        sizes = sets.sizes
        threshold = self.threshold
        for row in np.flatnonzero(waiting).tolist():
            low, high = int(pair_starts[row]), int(pair_starts[row + 1])
            found: list[tuple[int, int, int, int]] = [
                (band, 0, member, pair) for band, member, pair in zip(
                    pair_bands[low:high].tolist(), members[low:high].tolist(),
                    range(low, high), strict=True)]
            seen: set[int] = set()
            for band in range(bands):
                for other in earlier.get(int(flat[row * bands + band]), ()):
                    if other >= row:
                        break
                    if kept[other] and other not in seen:
                        seen.add(other)
                        found.append((band, 1, other, -1))
            found.sort()
            size = int(sizes[rows[row]])
            values = sets[int(rows[row])]
            for position, (_band, batch, other, pair) in enumerate(found):
                if batch:
                    other_size = int(sizes[rows[other]])
                    close = ((other_size / size if other_size < size else size / other_size)
                             >= threshold
                             and jaccard(values, sets[int(rows[other])]) >= threshold)
                else:
                    close = bool(similar[pair])
                if close:
                    self.candidates += position + 1
                    if batch:
                        local[row] = other
                    else:
                        matched_rows[row] = other
                    break
            else:
                self.candidates += len(found)
                kept[row] = True

    def _verify(self, sets: ShingleSets, rows: npt.NDArray[np.int64],
                pair_rows: npt.NDArray[np.int64], members: npt.NDArray[np.int64],
                waiting: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
        """Whether each candidate pair (in check order, grouped by row) is a near-duplicate,
        for every pair a check in order reaches: a row's first plausible pair first (a chunk
        that repeats a kept one usually meets it first), the rest only for rows it did not
        settle (and for waiting rows, all). Pairs whose sizes alone rule the threshold out
        (Jaccard <= smaller / larger) are never read."""
        similar = np.zeros(len(members), dtype=bool)
        set_rows = rows[pair_rows]
        set_sizes, kept_sizes = sets.sizes[set_rows], self._sizes.view()[members]
        # float division is monotonic: a pair below by a bound is below however it rounds
        plausible = np.flatnonzero(np.minimum(set_sizes, kept_sizes)
                                   / np.maximum(set_sizes, kept_sizes) >= self.threshold)
        if len(plausible):  # then the sketches' bound on the shared shingles
            owners, at = np.unique(set_rows[plausible], return_inverse=True)
            theirs = self._sketches.view().reshape(-1, SKETCH_BUCKETS)[members[plausible]]
            bound = np.minimum(sketch(sets, owners)[at], theirs).sum(axis=1, dtype=np.int64)
            sizes = set_sizes[plausible] + kept_sizes[plausible]
            plausible = plausible[bound / (sizes - bound) >= self.threshold]
        _, first_at = np.unique(pair_rows[plausible], return_index=True)
        firsts = plausible[first_at]
        firsts = firsts[~waiting[pair_rows[firsts]]]
        similar[firsts] = self._similar(sets, rows[pair_rows[firsts]], members[firsts])
        settled = np.zeros(len(rows), dtype=bool)
        settled[pair_rows[firsts[similar[firsts]]]] = True
        checked = np.zeros(len(members), dtype=bool)
        checked[firsts] = True
        rest = plausible[~settled[pair_rows[plausible]] & ~checked[plausible]]
        similar[rest] = self._similar(sets, rows[pair_rows[rest]], members[rest])
        return similar

    def _similar(self, sets: ShingleSets, set_rows: npt.NDArray[np.int64],
                 members: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
        """Whether each (set, kept set) pair's Jaccard reaches the threshold, all pairs in one
        pass: the kept sets' shingles read in one gather, each looked up in a hash table of
        the sets' (set, shingle) pairs, so the cost is per shingle read, with no sort."""
        if not len(members):
            return np.zeros(0, dtype=bool)
        stored, lengths = self.store.gather(members)
        owners = np.unique(set_rows)
        positions, _ = spans(sets.bounds, owners)
        table = _PairTable(np.repeat(owners, sets.sizes[owners]), sets.values[positions])
        found = table.contains(np.repeat(set_rows, lengths), stored)
        shared = np.add.reduceat(found, np.cumsum(lengths) - lengths, dtype=np.int64)
        set_sizes, kept_sizes = sets.sizes[set_rows], self._sizes.view()[members]
        # the float jaccard() computes: shared / (|a| + |b| - shared)
        jaccards = shared / (set_sizes + kept_sizes - shared)
        similar: npt.NDArray[np.bool_] = jaccards >= self.threshold
        return similar


SKETCH_BUCKETS = 64
"""A set's sketch counts its shingles in this many buckets (by their top bits), a byte each."""


def sketch(sets: ShingleSets, indices: npt.NDArray[np.int64]) -> npt.NDArray[np.uint8]:
    """The shingle count of each set in each of SKETCH_BUCKETS buckets: two sets share at most
    the sum over buckets of the smaller count, an exact bound on their Jaccard that rules out
    most LSH candidates (near-misses, Jaccard ~0.5-0.75) without reading their shingles. A set
    with a bucket past 255 gets 255 in every bucket: its bound is then never below the truth."""
    positions, lengths = spans(sets.bounds, indices)
    buckets = (sets.values[positions] >> np.uint64(64 - SKETCH_BUCKETS.bit_length() + 1))
    owner = np.repeat(np.arange(len(indices), dtype=np.int64) * SKETCH_BUCKETS, lengths)
    counts = np.bincount(owner + buckets.astype(np.int64),
                         minlength=len(indices) * SKETCH_BUCKETS).reshape(-1, SKETCH_BUCKETS)
    counts[(counts > 255).any(axis=1)] = 255
    return counts.astype(np.uint8)


class _PairTable:
    """A set of (row, shingle) pairs for membership tests of many pairs at once: open
    addressing over numpy arrays, at most half full, probed in rounds."""

    def __init__(self, rows: npt.NDArray[np.int64], values: Shingles) -> None:
        self._rows, self._values = rows, values
        size = 1 << max(4, (2 * len(rows)).bit_length())
        self._mask = size - 1
        self._slots = np.full(size, -1, dtype=np.int64)
        pending = np.arange(len(rows), dtype=np.int64)
        slots = self._slot(rows, values)
        while len(pending):
            free = np.flatnonzero(self._slots[slots] < 0)
            claimed = slots[free]
            self._slots[claimed] = pending[free]  # of pairs claiming one slot, the last wins
            won = free[self._slots[claimed] == pending[free]]
            lost = np.ones(len(pending), dtype=bool)
            lost[won] = False
            pending, slots = pending[lost], (slots[lost] + 1) & self._mask

    def _slot(self, rows: npt.NDArray[np.int64], values: Shingles) -> npt.NDArray[np.int64]:
        mixed = values + rows.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        return (mixed >> np.uint64(20)).astype(np.int64) & self._mask

    def contains(self, rows: npt.NDArray[np.int64], values: Shingles) -> npt.NDArray[np.bool_]:
        found = np.zeros(len(rows), dtype=bool)
        pending = np.arange(len(rows), dtype=np.int64)
        slots = self._slot(rows, values)
        while len(pending):
            held = self._slots[slots]
            filled = held >= 0
            pending, slots, held = pending[filled], slots[filled], held[filled]
            hit = (self._rows[held] == rows[pending]) & (self._values[held] == values[pending])
            found[pending[hit]] = True
            pending, slots = pending[~hit], (slots[~hit] + 1) & self._mask
        return found


# ---------------------------------------------------------------------------------------------
# The chunker



class _Words:
    """Word (pre-token) boundaries of one section's tokens, asked lazily: cuts need only a few."""

    __slots__ = ("_high", "_low", "_word")

    def __init__(self, encoding: Encoded, low: int, high: int) -> None:
        self._word = encoding.token_to_word
        self._low = low
        self._high = high

    def boundary(self, index: int) -> bool:
        """Whether a cut before token `index` falls between two words (section ends do)."""
        if index <= self._low or index >= self._high:
            return True
        return bool(self._word(index) != self._word(index - 1))


@dataclass(slots=True)
class _Piece:
    """A planned chunk: tokens [start, end) of the document encoding, within one section."""

    section: int
    path: str
    path_count: int
    start: int
    end: int
    body: str = ""
    count: int = 0
    char_start: int = 0
    char_end: int = 0
    kept: bool = True


class Encoded(Protocol):
    """What the chunker reads of an encoding: a tokenizers.Encoding, or a CompactEncoding."""

    def __len__(self) -> int: ...

    def char_to_token(self, position: int, /) -> int | None: ...

    def token_to_chars(self, index: int, /) -> tuple[int, int] | None: ...

    def token_to_word(self, index: int, /) -> int | None: ...


LARGE_DOCUMENT_CHARS = 1 << 18
SEGMENT_CHARS = 1 << 17


class CompactEncoding:
    """Offsets and word ids of a document as numpy arrays (12 or 24 bytes a token), built
    segment by segment for a large document, or from the run cache (registry.ingest.runs),
    with the four Encoding methods the chunker uses.

    Segments end at a blank line (else a line end, else whitespace), where a whitespace-
    splitting tokenizer tokenizes each side alone exactly as in the whole; other tokenizers
    are re-measured chunk by chunk anyway."""

    def __init__(self, starts: npt.NDArray[np.integer[Any]], ends: npt.NDArray[np.integer[Any]],
                 words: npt.NDArray[np.integer[Any]]) -> None:
        self._starts, self._ends, self._words = starts, ends, words

    @classmethod
    def of(cls, tokenizer: Tokenizer, text: str) -> CompactEncoding:
        """Filled in place, a group of segments at a time: arrays sized for one token a
        character (pages never written cost no memory), grown only for a tokenizer that makes
        more. The segments of a group are encoded in one `encode_batch` (the tokenizer's own
        thread pool, in parallel), a group being as many segments as it has threads, so at
        most that many ~540-bytes-a-token encodings are alive at once."""
        dtype: type[np.integer[Any]] = np.int32 if len(text) < 1 << 29 else np.int64
        columns: list[npt.NDArray[np.integer[Any]]] = [
            np.empty(len(text) + 16, dtype=dtype) for _ in range(3)]
        count, word_base = 0, 0
        for group in _segment_groups(tokenizer, text, _encode_threads()):
            encodings = tokenizer.encode_batch([text[a:b] for a, b in group],
                                               add_special_tokens=False)
            for (position, _), encoding in zip(group, encodings, strict=True):
                size = len(encoding)
                offsets = np.fromiter(chain.from_iterable(encoding.offsets), dtype=np.int64,
                                      count=2 * size).reshape(-1, 2) + position
                ids = np.fromiter((-1 if w is None else w for w in encoding.word_ids),
                                  dtype=np.int64, count=size)
                end = count + size
                if end > len(columns[0]):
                    columns = [np.concatenate([c[:count], np.empty(max(end, 2 * len(c)) - count,
                                                                  dtype=dtype)])
                               for c in columns]
                for column, values in zip(columns, (offsets[:, 0], offsets[:, 1],
                                                    ids + word_base), strict=True):
                    column[count:end] = values
                word_base += int(ids.max()) + 1 if size else 0
                count = end
            del encodings  # ~540 bytes a token: freed before the next group is encoded
        return cls(columns[0][:count], columns[1][:count], columns[2][:count])

    def __len__(self) -> int:
        return len(self._starts)

    def offsets(self) -> tuple[npt.NDArray[np.integer[Any]], npt.NDArray[np.integer[Any]]]:
        """Every token's (start, end) character offsets, as two arrays."""
        return self._starts, self._ends

    def char_to_token(self, position: int, /) -> int | None:
        # the position as the array's own dtype: a Python int made numpy cast the whole array
        # (every token, at every call) before searching it
        index = int(self._starts.searchsorted(self._starts.dtype.type(position),
                                              side="right")) - 1
        if index >= 0 and position < self._ends[index]:
            return index
        return None

    def token_to_chars(self, index: int, /) -> tuple[int, int] | None:
        return int(self._starts[index]), int(self._ends[index])

    def token_to_word(self, index: int, /) -> int | None:
        return int(self._words[index])


def _segment_groups(tokenizer: Tokenizer, text: str, size: int
                    ) -> Iterator[list[tuple[int, int]]]:
    """The (start, end) spans of `text`'s segments (`_segment_end`), `size` at a time."""
    group: list[tuple[int, int]] = []
    position = 0
    while position < len(text):
        stop = _segment_end(tokenizer, text, position)
        group.append((position, stop))
        position = stop
        if len(group) >= size:
            yield group
            group = []
    if group:
        yield group


def _encode_threads() -> int:
    """How many threads `encode_batch` runs on here: 1 where the tokenizers' parallelism is
    off (ingest worker processes, whose processes are the parallelism), else its pool's size
    (RAYON_NUM_THREADS, else the CPUs this process may use)."""
    if os.environ.get("TOKENIZERS_PARALLELISM", "").strip().lower() in _OFF:
        return 1
    try:
        threads = int(os.environ.get("RAYON_NUM_THREADS", "0"))
    except ValueError:
        threads = 0
    if threads <= 0:
        threads = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                   else os.cpu_count() or 1)
    return max(1, threads)


_OFF = frozenset({"false", "0", "off", "no", "f", "n"})


def _segment_end(tokenizer: Tokenizer, text: str, start: int) -> int:
    """Where a segment starting at `start` ends: the last blank line (else line end, else
    space) before start + SEGMENT_CHARS, else the first whitespace within SEGMENT_CHARS after
    it. Text without whitespace that far (a pathological document: an encoding holds ~540
    bytes a token, so one 16 MB segment of punctuation took 7 GB) is cut where the tokenizer's
    own normalizer and pre-tokenizer start a new word (`_pre_token_edge`), else at the limit:
    a segment is never longer than 2 x SEGMENT_CHARS, whatever the shape of the text."""
    limit = start + SEGMENT_CHARS
    if limit >= len(text):
        return len(text)
    for separator in ("\n\n", "\n", " "):
        found = text.rfind(separator, start + 1, limit)
        if found > start:
            return found
    after = _WHITESPACE.search(text, limit, limit + SEGMENT_CHARS)
    if after:
        return after.start()
    return _pre_token_edge(tokenizer, text, start, limit) or limit


def _pre_token_edge(tokenizer: Tokenizer, text: str, start: int, limit: int) -> int | None:
    """The last place in (start, limit] where the tokenizer's normalizer and pre-tokenizer
    start a new word, read off a bounded window around `limit` (no model: a few microseconds
    a segment). The model encodes each word alone, so both sides of such a cut tokenize as
    in the whole; a regex's guess of word edges does not (`_` is a word character to a regex
    but punctuation to BERT). Words touching a window end that is not the segment start or the
    text end may be partial and are not trusted as edges."""
    if tokenizer.pre_tokenizer is None:
        return None
    low = max(start, limit - _EDGE_WINDOW)
    high = min(len(text), limit + _EDGE_WINDOW)
    words = PreTokenizedString(text[low:high])
    normalizer = tokenizer.normalizer
    if normalizer is not None:
        words.normalize(normalizer.normalize)
    tokenizer.pre_tokenizer.pre_tokenize(words)
    spans = [span for _, span, _ in words.get_splits(offset_referential="original",
                                                      offset_type="char")]
    best = None
    for index in range(1, len(spans) - (1 if high < len(text) else 0)):
        if index == 1 and low > start:
            continue  # the first word may be the tail of a longer one
        edge = low + spans[index][0]
        if edge > limit:
            break
        if edge > start:
            best = edge
    return best


_WHITESPACE = re.compile(r"\s")
_EDGE_WINDOW = 1024


@dataclass
class SharedLayout:
    """What every config of one tokenizer reads alike, kept across the Chunkers of many configs
    (`registry tune`): the tokenizer's facts (whether it splits on whitespace, the prefix
    skeleton's and the path separator's token counts), title token counts, and each encoded
    document's sections in tokens (keyed by the encoding object, which the owner keeps alive
    as long as this), and the shingle sets of the pieces already cut. Only the windows, the
    dedup decisions and the prefixes are then computed per config."""

    facts: tuple[bool, dict[str, int], int] | None = None
    title_counts: dict[str, int] = field(default_factory=dict)
    sections: dict[int, tuple[list[tuple[str, int, list[int], int]], int]] = field(
        default_factory=dict)
    shingles: dict[tuple[int, int, int], Shingles] = field(default_factory=dict)
    """Shingle sets by (encoding, character span): a piece many configs cut alike (a section
    shorter than their chunk sizes) is shingled once."""
    shingle_values: int = 0


SHARED_SHINGLES_MAX = 20_000_000
"""Shingles kept across configs (8 bytes each); past this the cache starts over."""


class Chunker:
    """Chunks documents exactly as one locked config says, with that config's tokenizer.

    `dedup=False` skips the per-document near-duplicate pass (to measure it); `corpus=True`
    makes every ChunkedDocument carry its chunks' shingles and MinHash band keys, so a
    CorpusDeduplicator can run the corpus-wide pass wherever the chunks are gathered.
    `runs=False` encodes every document with `encode_batch` even where the tokenizer
    qualifies for the run cache (registry.ingest.runs), which gives the same encodings faster.
    """

    def __init__(self, config: LockedConfig, tokenizer: Tokenizer,
                 *, dedup: bool = True, corpus: bool = False,
                 shared: SharedLayout | None = None, runs: bool = True) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.size = config.chunk_size
        self.overlap = config.overlap_tokens
        self.special = int(tokenizer.num_special_tokens_to_add(False))
        self.budget = config.token_budget
        self.policy_b = config.prefix_policy == "B"
        self.threshold = config.jaccard_threshold
        self.dedup = dedup
        self.hasher = MinHasher(config.jaccard_threshold) if corpus else None
        self._config_hash = config.config_hash
        self._version = config.chunk_version
        self._run_id = config.ingest_run_id
        self._shared = shared
        if shared is not None and shared.facts is not None:
            self.additive, self._skeleton, self._separator = shared.facts
        else:
            self.additive = splits_on_whitespace(tokenizer)
            self._skeleton = {kind: self._count(prefix_text("", "", kind)) for kind in KINDS}
            self._separator = self._count(" > ")
            if shared is not None:
                shared.facts = (self.additive, self._skeleton, self._separator)
        self._title_counts: dict[str, int] = shared.title_counts if shared is not None else {}
        self._fitted: dict[tuple[str, str, str, int], tuple[str, int]] = {}
        self._runs = runs
        self._run_encoder: RunEncoder | None = None

    # -- public ---------------------------------------------------------------------------------

    def chunk(self, document: Document) -> ChunkedDocument:
        return self.chunk_many([document])[0]

    def chunk_many(self, documents: Sequence[Document]) -> list[ChunkedDocument]:
        """Chunk a batch of documents with one `encode_batch` call."""
        return self._finish(documents, self._encode(documents))

    def encode(self, documents: Sequence[Document]) -> list[Encoded]:
        """The encodings `chunk_encoded` takes: what depends on the tokenizer alone, so one
        encoding serves every config of that tokenizer (`registry tune` encodes a corpus once
        and re-windows it per trial)."""
        return self._encode(documents)

    def chunk_encoded(self, documents: Sequence[Document],
                      encodings: Sequence[Encoded]) -> list[ChunkedDocument]:
        """Chunk documents already encoded by `encode` (with this tokenizer): the same chunks
        as `chunk_many`, without encoding them again."""
        return self._finish(documents, encodings)

    def chunk_stream(self, batches: Iterable[Sequence[Document]]) -> Iterator[ChunkedDocument]:
        """Chunk batch after batch, encoding the next batch (GIL released) while this one is cut."""
        with ThreadPoolExecutor(max_workers=1) as pool:
            iterator = iter(batches)
            current = next(iterator, None)
            pending = pool.submit(self._encode, current) if current is not None else None
            while current is not None and pending is not None:
                encodings = pending.result()
                upcoming = next(iterator, None)
                pending = pool.submit(self._encode, upcoming) if upcoming is not None else None
                yield from self._finish(current, encodings)
                current = upcoming

    # -- a batch --------------------------------------------------------------------------------

    def _encode(self, documents: Sequence[Document]) -> list[Encoded]:
        """One encoding per document: from the run cache where the tokenizer qualifies
        (`RunEncoder`: the same offsets and word ids, without tokenizing words seen before),
        else `encode_batch` for the batch, and large documents in segments kept as compact
        arrays (an Encoding holds ~540 bytes per token, so a 2 MB document alone would take
        ~450 MB)."""
        found: list[Encoded | None] = [None] * len(documents)
        if self._runs:
            if self._run_encoder is None:
                self._run_encoder = RunEncoder.of(self.tokenizer)
                self._runs = self._run_encoder is not None
            if self._run_encoder is not None:
                arrays = self._run_encoder.encode([d.text for d in documents])
                found = [None if a is None else CompactEncoding(*a) for a in arrays]
        small = [d.text for d, f in zip(documents, found, strict=True)
                 if f is None and len(d.text) <= LARGE_DOCUMENT_CHARS]
        encoded = iter(self.tokenizer.encode_batch(small, add_special_tokens=False)
                       if small else [])
        return [f if f is not None
                else next(encoded) if len(d.text) <= LARGE_DOCUMENT_CHARS
                else CompactEncoding.of(self.tokenizer, d.text)
                for d, f in zip(documents, found, strict=True)]

    def _finish(self, documents: Sequence[Document],
                encodings: Sequence[Encoded]) -> list[ChunkedDocument]:
        """Plan and measure every document, then shingle, dedup and prefix the batch at once."""
        results: list[ChunkedDocument] = []
        planned: list[list[_Piece]] = []
        alive: list[_Piece] = []
        groups: list[int] = []
        for number, (document, encoding) in enumerate(zip(documents, encodings, strict=True)):
            result = ChunkedDocument(document.doc_id, [], [], [], tokens=len(encoding))
            pieces = self._pieces(document, encoding, result)
            for piece in pieces:
                if piece.kept:
                    alive.append(piece)
                    groups.append(number)
            results.append(result)
            planned.append(pieces)
        sets = self._shingle_sets(alive, [encodings[number] for number in groups])
        if self.dedup:
            for piece, keep, number in zip(alive, dedup_exact(sets, self.threshold, groups),
                                           groups, strict=True):
                if not keep:
                    piece.kept = False
                    results[number].duplicates += 1
        keys = self.hasher.band_keys(sets) if self.hasher is not None else None
        kinds = [d.kind if d.kind in KINDS else "text" for d in documents]
        titles = [_clean(d.title) for d in documents]
        self._count_titles({titles[n] for p, n in zip(alive, groups, strict=True) if p.kept})
        position = {id(piece): index for index, piece in enumerate(alive)}
        for number, (document, pieces) in enumerate(zip(documents, planned, strict=True)):
            result = results[number]
            previous: _Piece | None = None
            for piece in pieces:
                if piece.kept:
                    shared = (max(previous.end - piece.start, 0)
                              if previous is not None and previous.section == piece.section else 0)
                    result.chunks.append(self._record(document.doc_id, len(result.chunks),
                                                      titles[number], kinds[number], piece,
                                                      shared, result))
                    if keys is not None:
                        index = position[id(piece)]
                        result.shingles.append(sets[index].copy())
                        result.band_keys.append(keys[index])
                    previous = piece
        if not self.additive:
            for result in results:
                self._remeasure(result)
        return results

    def _shingle_sets(self, alive: list[_Piece], encodings: list[Encoded]) -> ShingleSets:
        """The pieces' shingle sets; with a SharedLayout, a piece already shingled by another
        config (same document, same character span) is not shingled again."""
        if self._shared is None:
            return shingle_sets([piece.body for piece in alive])
        cache = self._shared.shingles
        keys = [(id(encoding), piece.char_start, piece.char_end)
                for piece, encoding in zip(alive, encodings, strict=True)]
        missing = [index for index, key in enumerate(keys) if key not in cache]
        if missing:
            if self._shared.shingle_values > SHARED_SHINGLES_MAX:
                cache.clear()
                self._shared.shingle_values = 0
                missing = list(range(len(keys)))
            fresh = shingle_sets([alive[index].body for index in missing])
            for position, index in enumerate(missing):
                cache[keys[index]] = fresh[position]
            self._shared.shingle_values += len(fresh.values)
        arrays = [cache[key] for key in keys]
        values = np.concatenate(arrays) if arrays else EMPTY_SHINGLES
        bounds = np.concatenate(([0], np.cumsum([len(a) for a in arrays], dtype=np.int64)))
        return ShingleSets(values.astype(np.uint64, copy=False), bounds.astype(np.int64))

    def _pieces(self, document: Document, encoding: Encoded,
                result: ChunkedDocument) -> list[_Piece]:
        """The planned pieces of one document, measured; those under MIN_CHUNK_TOKENS unkept."""
        kind = document.kind if document.kind in KINDS else "text"
        pieces: list[_Piece] = []
        sections: Iterable[tuple[str, int, list[int], int]]
        if self._shared is None:
            sections = self._token_sections(document.text, kind, encoding, result)
        else:
            key = id(encoding)
            if key not in self._shared.sections:
                counted = ChunkedDocument(document.doc_id, [], [], [])
                found = list(self._token_sections(document.text, kind, encoding, counted))
                self._shared.sections[key] = (found, counted.header_only)
            sections, header_only = self._shared.sections[key]
            result.header_only += header_only
        for number, (path, path_count, starts, end) in enumerate(sections):
            pieces.extend(_Piece(number, path, path_count, s, e)
                          for s, e in self._plan(encoding, starts, end))
        for piece in pieces:
            self._measure(document.text, encoding, piece)
            if piece.count < MIN_CHUNK_TOKENS:
                piece.kept = False
                result.too_small += 1
        return pieces

    def _token_sections(self, text: str, kind: str, encoding: Encoded, result: ChunkedDocument
                        ) -> Iterator[tuple[str, int, list[int], int]]:
        """(path, its token count, token starts of the blocks, token end) per section.

        Blocks are separated by blank lines, which hold no tokens, so a block ends where the
        next one starts; a block whose characters all normalize away holds no token and goes.
        A header-only section joins the next one (its heading starts that section's first
        chunk); a header-only section at the end of the document has nothing to join and goes.
        """
        sections = split_sections(text, kind)
        blocks = [(number, index, block) for number, section in enumerate(sections)
                  for index, block in enumerate(section.blocks)]
        firsts = _first_tokens(encoding, [block for _, _, block in blocks])
        spans: list[tuple[int, int, int]] = [  # section index, block index, token start
            (number, index, token)
            for (number, index, _), token in zip(blocks, firsts, strict=True)
            if token is not None]
        pending: list[int] = []
        names: dict[tuple[int, int], int] = {}
        for position, (number, index, token) in enumerate(spans):
            pending.append(token)
            last = position + 1 == len(spans)
            if not last and spans[position + 1][0] == number:
                continue
            section = sections[number]
            if index < section.heading_blocks:
                result.header_only += 1
                if last:
                    return
                continue
            path_count = self._separator * max(len(section.names) - 1, 0)
            for span in section.names:
                if span not in names:
                    names[span] = _tokens_in(encoding, *span)
                path_count += names[span]
            end = len(encoding) if last else spans[position + 1][2]
            yield section.path, path_count, pending, end
            pending = []

    def _plan(self, encoding: Encoded, starts: list[int], end: int) -> list[tuple[int, int]]:
        """(start, end) token ranges of one section's pieces."""
        first = starts[0]
        if end - first <= self.size:
            return [(first, end)]
        words = _Words(encoding, first, end)
        cuts = starts[1:]
        plan = []
        start = first
        while end - start > self.size:
            stop, upcoming = self._next_cut(start, cuts, words)
            plan.append((start, stop))
            start = upcoming
        plan.append((start, end))
        return plan

    def _next_cut(self, start: int, cuts: list[int], words: _Words) -> tuple[int, int]:
        """(end of this piece, start of the next): a paragraph end when one fills at least half
        the chunk, else a window; both ends of the overlap on word boundaries when possible."""
        size, overlap = self.size, self.overlap
        limit = start + size
        low = bisect.bisect_right(cuts, max(start + size // 2, start + overlap))
        for cut in reversed(cuts[low: bisect.bisect_right(cuts, limit)]):
            if words.boundary(cut - overlap):
                return cut, cut - overlap
        for stop in range(limit, start + overlap, -1):
            if words.boundary(stop) and words.boundary(stop - overlap):
                return stop, stop - overlap
        # No word-boundary pair `overlap` apart (every word two tokens and an odd overlap, or a
        # single word longer than the chunk): end on a word boundary if there is one, and
        # start the next piece on the nearest boundary that overlaps at least as much.
        stop = next((i for i in range(limit, start, -1) if words.boundary(i)), limit)
        upcoming = next((i for i in range(stop - overlap, start, -1) if words.boundary(i)), None)
        if upcoming is None:
            low_start = max(stop - overlap + 1, start + 1)
            upcoming = next((i for i in range(low_start, stop) if words.boundary(i)), stop)
        return stop, upcoming

    def _measure(self, text: str, encoding: Encoded, piece: _Piece) -> None:
        """Body text by offsets; its count from the encoding, re-measured only off a word edge."""
        piece.char_start = _chars(encoding, piece.start)[0]
        piece.char_end = _chars(encoding, piece.end - 1)[1]
        piece.body = text[piece.char_start:piece.char_end]
        piece.count = piece.end - piece.start
        if self.additive and _word_edge(encoding, piece.start) and _word_edge(encoding, piece.end):
            return
        while True:  # cut inside a word: the slice may tokenize differently, so count it
            piece.count = len(self.tokenizer.encode(piece.body, add_special_tokens=False))
            if piece.count <= self.size or piece.end - piece.start <= 1:
                return
            piece.end -= 1
            piece.char_end = _chars(encoding, piece.end - 1)[1]
            piece.body = text[piece.char_start:piece.char_end]

    def _record(self, doc_id: str, index: int, title: str, kind: str, piece: _Piece,
                shared: int, result: ChunkedDocument) -> Chunk:
        room = self.budget - self.special - piece.count
        prefix = prefix_text(title, piece.path, kind)
        prefix_count = self._skeleton[kind] + self._title_counts[title] + piece.path_count
        if prefix_count > room:
            prefix, prefix_count = self._fit_prefix(title, piece.path, kind, room)
        embedding_text = prefix + piece.body
        embedding_count = prefix_count + piece.count + self.special
        if embedding_count > self.budget:
            result.over_budget += 1
        if self.policy_b:
            bm25_text, bm25_count = embedding_text, prefix_count + piece.count
        else:
            bm25_text, bm25_count = piece.body, piece.count
        return Chunk(
            id=chunk_id(embedding_text, self._config_hash), doc_id=doc_id, chunk_index=index,
            embedding_text=embedding_text, bm25_text=bm25_text,
            embedding_token_count=embedding_count, bm25_token_count=bm25_count,
            chunk_version=self._version, ingest_run_id=self._run_id, section=piece.path,
            start=piece.char_start, end=piece.char_end, overlap=shared,
        )

    # -- the prefix -----------------------------------------------------------------------------

    def _count_titles(self, titles: set[str]) -> None:
        """Token counts of the titles a batch needs, in one `encode_batch`.

        With a whitespace-splitting tokenizer a prefix counts as its skeleton plus its title
        plus its path (read off the document's own heading tokens), since each sits between
        whitespace; with other tokenizers the chunks are re-measured whole.
        """
        if len(self._title_counts) > 100_000:
            self._title_counts.clear()
        missing = [t for t in titles if t not in self._title_counts]
        if missing:
            encoded = self.tokenizer.encode_batch(missing, add_special_tokens=False)
            self._title_counts.update(zip(missing, map(len, encoded), strict=True))

    def _remeasure(self, result: ChunkedDocument) -> None:
        """Counts from encoding each chunk's own texts: exact for any tokenizer, but slower."""
        if not result.chunks:
            return
        texts = [c.embedding_text for c in result.chunks]
        embedded = self.tokenizer.encode_batch(texts, add_special_tokens=True)
        bm25 = self.tokenizer.encode_batch([c.bm25_text for c in result.chunks],
                                           add_special_tokens=False)
        result.over_budget = 0
        for index, (chunk, with_special, plain) in enumerate(
                zip(result.chunks, embedded, bm25, strict=True)):
            result.chunks[index] = chunk._replace(embedding_token_count=len(with_special),
                                                  bm25_token_count=len(plain))
            if len(with_special) > self.budget:
                result.over_budget += 1

    def _count(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False)) if text else 0

    def _fit_prefix(self, title: str, path: str, kind: str, room: int) -> tuple[str, int]:
        """The prefix shortened to `room` tokens (the body is never cut): the path down to its
        last heading, then the title cut short, then the path cut short, at worst no prefix."""
        key = (title, path, kind, room)
        if key not in self._fitted:
            if len(self._fitted) > 10_000:
                self._fitted.clear()
            self._fitted[key] = self._shortened(title, path, kind, room)
        return self._fitted[key]

    def _shortened(self, title: str, path: str, kind: str, room: int) -> tuple[str, int]:
        parts = path.split(" > ")
        if len(parts) > 1:
            path = f"{ELLIPSIS} > {parts[-1]}"
            text = prefix_text(title, path, kind)
            count = self._count(text)
            if count <= room:
                return text, count
        fitted = self._cut(lambda t: prefix_text(t, path, kind), title, room)
        if fitted is None:
            fitted = self._cut(lambda p: prefix_text("", p, kind), path, room)
        return fitted or ("", 0)

    def _cut(self, render: Callable[[str], str], value: str,
             room: int) -> tuple[str, int] | None:
        """The longest `render(value cut after k tokens + …)` that fits in `room` tokens."""
        offsets = self.tokenizer.encode(value, add_special_tokens=False).offsets
        best: tuple[str, int] | None = None
        low, high = 0, len(offsets) - 1
        while low <= high:
            middle = (low + high) // 2
            text = render(value[: offsets[middle - 1][1]] + ELLIPSIS if middle else "")
            count = self._count(text)
            if count <= room:
                best, low = (text, count), middle + 1
            else:
                high = middle - 1
        return best


def prefix_text(title: str, path: str, kind: str) -> str:
    """`Document: {title}\\nSection: {path}\\nType: {kind}\\n\\n`, the contextual prefix."""
    return f"{PREFIX_MARKER}{title}\nSection: {path}\nType: {kind}\n\n"


def chunk_id(embedding_text: str, config_hash: str) -> str:
    """sha256 of embedding_text + config hash: the same chunk under the same config, same id."""
    return hashlib.sha256((embedding_text + config_hash).encode()).hexdigest()


def _first_token(encoding: Encoded, start: int, end: int) -> int | None:
    """The first token of characters [start, end), None when they all normalize away."""
    for position in range(start, end):
        token = encoding.char_to_token(position)
        if token is not None:
            return int(token)
    return None


MANY_BLOCKS = 256
"""From this many blocks in one document, their first tokens are read off the document's
offsets at once: `Encoding.char_to_token` scans the tokens (~1 ns each, at every call), while
reading every offset out costs ~250 ns a token once."""


def _first_tokens(encoding: Encoded, spans: Sequence[tuple[int, int]]) -> list[int | None]:
    """`_first_token` of every span (sorted, as a document's blocks are): an encoding with many
    blocks and offsets in order is answered from its offsets by binary search (a
    CompactEncoding's arrays as they are, a tokenizers Encoding's read out once), anything
    else one `char_to_token` at a time."""
    if len(spans) >= MANY_BLOCKS:
        if isinstance(encoding, CompactEncoding):
            starts, ends = encoding.offsets()
            found = _first_tokens_by_offsets(starts, ends, spans)
        else:
            offsets = getattr(encoding, "offsets", None)
            found = None
            if offsets is not None:
                size = len(offsets)
                flat = np.fromiter(chain.from_iterable(offsets), dtype=np.int64,
                                   count=2 * size)
                found = _first_tokens_by_offsets(flat[0::2], flat[1::2], spans)
        if found is not None:
            return found
    return [_first_token(encoding, start, end) for start, end in spans]


def _first_tokens_by_offsets(starts: npt.NDArray[np.integer[Any]],
                             ends: npt.NDArray[np.integer[Any]],
                             spans: Sequence[tuple[int, int]]) -> list[int | None] | None:
    """What `char_to_token` (the first token covering a character) gives for the first covered
    character of each span, or None when the offsets are not in order (token starts and ends
    both non-decreasing), where this shortcut would not hold.

    In order, the tokens covering a character p are a run: those with end > p, less those
    starting after p. So the first covered character of [s, e) belongs to the first non-empty
    token j ending after s (empty tokens cover nothing), at max(s, start_j), if that is < e."""
    if not len(starts):
        return [None] * len(spans)
    if (np.any(starts[1:] < starts[:-1]) or np.any(ends[1:] < ends[:-1])
            or np.any(ends < starts)):
        return None
    filled = np.flatnonzero(ends > starts)
    if not len(filled):
        return [None] * len(spans)
    bounds = np.array(spans, dtype=np.int64).reshape(-1, 2)
    found = np.searchsorted(ends[filled], bounds[:, 0], side="right")
    inside = found < len(filled)
    token = filled[np.minimum(found, len(filled) - 1)]
    inside &= np.maximum(bounds[:, 0], starts[token]) < bounds[:, 1]
    return [int(t) if ok else None for t, ok in zip(token.tolist(), inside.tolist(),
                                                     strict=True)]


def _tokens_in(encoding: Encoded, start: int, end: int) -> int:
    """How many tokens characters [start, end) hold (they lie between whitespace)."""
    first = _first_token(encoding, start, end)
    if first is None:
        return 0
    for position in range(end - 1, start - 1, -1):
        last = encoding.char_to_token(position)
        if last is not None:
            return int(last) - first + 1
    return 0


def _word_edge(encoding: Encoded, index: int) -> bool:
    if index <= 0 or index >= len(encoding):
        return True
    return bool(encoding.token_to_word(index) != encoding.token_to_word(index - 1))


def _chars(encoding: Encoded, index: int) -> tuple[int, int]:
    span = encoding.token_to_chars(index)
    if span is None:  # only special tokens lack offsets, and chunking encodes without them
        raise ValueError(f"token {index} has no character offsets")
    return int(span[0]), int(span[1])
