"""An exact, faster encoding for BERT-style WordPiece tokenizers: word runs looked up, not
re-tokenized.

With a BertNormalizer (character by character), a BertPreTokenizer (drops whitespace, isolates
punctuation) and a WordPiece model (each pre-token alone), and no special tokens added, every
ASCII space, tab, line feed and carriage return, and every ASCII punctuation character no
added token holds, is a hard boundary: the text between two of them (a run) tokenizes alone
exactly as within the whole text, at the same offsets (shifted) and with its own word
(pre-token) numbering (shifted by the words before it). Natural text repeats its words, so
each distinct run (and separator) is encoded once (misses batched through the real tokenizer,
joined by spaces) and the document's offsets and word ids are assembled from the cache with
numpy. Other Unicode whitespace is never a split point here (Python's and Rust's notions of
whitespace differ, and BertNormalizer deletes controls Python calls space, U+001C or U+0085):
it stays inside its run and the real tokenizer decides.

Tokenizers that do not qualify (`RunEncoder.of` returns None) take `encode_batch`.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Sequence
from itertools import chain
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from tokenizers import Tokenizer

LONG_RUN_CHARS = 1 << 12
"""A run longer than this (no ASCII whitespace or punctuation for 4K characters: base64, a
long CJK line) is not cached; a document holding one is encoded by `encode_batch` (or in
segments) instead."""
SLICE_CHARS = 1 << 18
"""A longer document is split into runs this many characters at a time (bounded
temporaries: a list entry and a few int64s a run)."""
MAX_ENTRIES = 1 << 18
"""Distinct runs kept; past this (checked between batches) the cache starts over."""
JOIN_CHARS = 1 << 16
"""Missed runs are encoded joined by spaces, about this many characters per string."""


class _Index(dict[str, int]):
    """Run -> entry id; a miss gets the next id and is queued for encoding."""

    __slots__ = ("pending", "size")

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[str] = []
        self.size = 0

    def __missing__(self, run: str) -> int:
        entry = self.size + len(self.pending)
        self.pending.append(run)
        self[run] = entry
        return entry


def qualifies(tokenizer: Tokenizer) -> bool:
    """Whether `tokenizer` is BertNormalizer (or none) + BertPreTokenizer + WordPiece, with
    truncation and padding off, a post-processor that only adds special tokens (none here),
    and no added token that holds whitespace, strips it or matches only as a single word: the
    pipeline in which runs between ASCII whitespace and punctuation tokenize alone. (A
    single-word token counts `_` as a word character, which is a run edge here; a ByteLevel
    post-processor trims offsets by position.)"""
    if tokenizer.truncation is not None or tokenizer.padding is not None:
        return False
    spec: dict[str, Any] = json.loads(tokenizer.to_str())
    normalizer = spec.get("normalizer")
    if normalizer is not None and normalizer.get("type") != "BertNormalizer":
        return False
    if (spec.get("pre_tokenizer") or {}).get("type") != "BertPreTokenizer":
        return False
    if (spec.get("model") or {}).get("type") != "WordPiece":
        return False
    post_processor = spec.get("post_processor")
    if post_processor is not None and post_processor.get("type") not in _ADDS_SPECIALS_ONLY:
        return False
    for added in spec.get("added_tokens") or []:
        content = str(added.get("content", ""))
        if (not content or added.get("lstrip") or added.get("rstrip")
                or added.get("single_word")
                or any(c.isspace() or c in " \t\n\r" for c in content)):
            return False
    return True


_ADDS_SPECIALS_ONLY = {"TemplateProcessing", "BertProcessing"}
"""Post-processors that leave the offsets of an encoding without special tokens alone."""


class RunEncoder:
    """Offsets and word ids of documents for a qualifying tokenizer (`qualifies`), as the
    (starts, ends, words) arrays of a CompactEncoding, equal to `encode_batch(...,
    add_special_tokens=False)`'s offsets and word ids."""

    def __init__(self, tokenizer: Tokenizer, max_entries: int = MAX_ENTRIES) -> None:
        self.tokenizer = tokenizer
        self.max_entries = max_entries
        self._lock = threading.Lock()
        punctuation = _punctuation(tokenizer)
        self._split = re.compile(f"([ \\t\\n\\r]+|[{punctuation}])" if punctuation
                                 else r"([ \t\n\r]+)").split
        self._edge = re.compile(f"[ \\t\\n\\r{punctuation}]")
        self._reset()

    @classmethod
    def of(cls, tokenizer: Tokenizer) -> RunEncoder | None:
        return cls(tokenizer) if qualifies(tokenizer) else None

    def _reset(self) -> None:
        self._index = _Index()
        self._index[""] = 0  # the empty run before leading / after trailing whitespace
        self._index.size = 1
        self._offset = np.zeros(1024, dtype=np.int64)  # entry -> its first token in the pool
        self._count = np.zeros(1024, dtype=np.int64)  # entry -> tokens
        self._words = np.zeros(1024, dtype=np.int64)  # entry -> words (pre-tokens)
        self._starts = np.zeros(4096, dtype=np.int32)  # pool: token start within its run
        self._ends = np.zeros(4096, dtype=np.int32)
        self._word = np.zeros(4096, dtype=np.int32)  # pool: token's word within its run
        self._tokens = 0

    def encode(self, texts: Sequence[str]) -> list[Arrays | None]:
        """(starts, ends, word ids) of each text, or None for a text holding a run longer
        than LONG_RUN_CHARS (the caller encodes it the ordinary way). A text over SLICE_CHARS
        is encoded slice by slice into its arrays (bounded temporaries; the cache may start
        over between slices); the others together, their missed runs in one pass."""
        with self._lock:
            try:
                return self._encode(texts)
            except BaseException:
                # A text the tokenizer refuses (a lone surrogate) leaves its runs queued and
                # indexed: start over, so the next call does not fail on them too.
                self._reset()
                raise

    def _encode(self, texts: Sequence[str]) -> list[Arrays | None]:
        found: list[Arrays | None] = [None] * len(texts)
        for number, text in enumerate(texts):
            if len(text) > SLICE_CHARS:
                found[number] = self._encode_large(text)
        if len(self._index) > self.max_entries:
            self._reset()
        located = [(number, self._locate(text, 0, len(text)))
                   for number, text in enumerate(texts) if len(text) <= SLICE_CHARS]
        self._resolve()
        for number, runs in located:
            if runs is not None:
                output = _Output(len(texts[number]), 0)
                self._fill(output, *runs)
                found[number] = output.arrays()
        return found

    def _encode_large(self, text: str) -> Arrays | None:
        output = _Output(len(text), len(text) + 16)
        position = 0
        while position < len(text):
            if len(self._index) > self.max_entries:
                self._reset()
            stop = _slice_end(self._edge, text, position)
            runs = None if stop is None else self._locate(text, position, stop)
            if stop is None or runs is None:
                return None
            self._resolve()
            self._fill(output, *runs)
            position = stop
        return output.arrays()

    def _locate(self, text: str, start: int, stop: int
                ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]] | None:
        """The entry id and start of every run of text[start:stop] (entries missed are
        queued), or None if one is longer than LONG_RUN_CHARS."""
        parts = self._split(text[start:stop])
        lengths = np.fromiter(map(len, parts), dtype=np.int64, count=len(parts))
        if len(lengths) and int(lengths.max()) > LONG_RUN_CHARS:
            return None
        ids = np.fromiter(map(self._index.__getitem__, parts), dtype=np.int64,
                          count=len(parts))
        return ids, np.cumsum(lengths) - lengths + start

    def _resolve(self) -> None:
        """Encode the queued runs (joined by spaces, a few strings at a time) into the pool."""
        pending = self._index.pending
        if not pending:
            return
        groups: list[list[str]] = [[]]
        size = 0
        for run in pending:
            if size >= JOIN_CHARS:
                groups.append([])
                size = 0
            groups[-1].append(run)
            size += len(run) + 1
        encodings = self.tokenizer.encode_batch([" ".join(g) for g in groups],
                                                add_special_tokens=False)
        counts: list[npt.NDArray[np.int64]] = []
        words: list[npt.NDArray[np.int64]] = []
        pools: list[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64],
                          npt.NDArray[np.int64]]] = []
        for group, encoding in zip(groups, encodings, strict=True):
            lengths = np.fromiter(map(len, group), dtype=np.int64, count=len(group)) + 1
            run_starts = np.cumsum(lengths) - lengths
            size = len(encoding)
            offsets = np.fromiter(chain.from_iterable(encoding.offsets), dtype=np.int64,
                                  count=2 * size).reshape(-1, 2)
            word = np.fromiter((-1 if w is None else w for w in encoding.word_ids),
                               dtype=np.int64, count=size)
            if size and int(word.min()) < 0:
                raise ValueError("a token without a word id in a run encoding")
            owner = np.searchsorted(run_starts, offsets[:, 0], side="right") - 1
            first = np.searchsorted(owner, np.arange(len(group)), side="left")
            count = np.bincount(owner, minlength=len(group)).astype(np.int64)
            first_word = word[np.minimum(first, max(size - 1, 0))] if size else first
            relative = word - first_word[owner] if size else word
            last = np.zeros(len(group), dtype=np.int64)
            np.maximum.at(last, owner, relative + 1)
            counts.append(count)
            words.append(last)
            pools.append((offsets[:, 0] - run_starts[owner], offsets[:, 1] - run_starts[owner],
                          relative))
        self._append(np.concatenate(counts), np.concatenate(words),
                     *(np.concatenate(column) for column in zip(*pools, strict=True)))
        self._index.size += len(pending)
        self._index.pending = []

    def _append(self, counts: npt.NDArray[np.int64], words: npt.NDArray[np.int64],
                starts: npt.NDArray[np.int64], ends: npt.NDArray[np.int64],
                word: npt.NDArray[np.int64]) -> None:
        low, high = self._index.size, self._index.size + len(counts)
        if high > len(self._count):
            capacity = max(high, 2 * len(self._count))
            self._offset, self._count, self._words = (
                _grown(a, capacity) for a in (self._offset, self._count, self._words))
        self._offset[low:high] = np.cumsum(counts) - counts + self._tokens
        self._count[low:high] = counts
        self._words[low:high] = words
        end = self._tokens + len(starts)
        if end > len(self._starts):
            capacity = max(end, 2 * len(self._starts))
            self._starts, self._ends, self._word = (
                _grown(a, capacity) for a in (self._starts, self._ends, self._word))
        self._starts[self._tokens:end] = starts
        self._ends[self._tokens:end] = ends
        self._word[self._tokens:end] = word
        self._tokens = end

    def _fill(self, output: _Output, ids: npt.NDArray[np.int64],
              starts: npt.NDArray[np.int64]) -> None:
        """Append the tokens of runs `ids` (at character `starts`) to `output`."""
        counts = self._count[ids]
        total = int(counts.sum())
        words = self._words[ids]
        if total:
            run = np.repeat(np.arange(len(ids)), counts)
            first = np.cumsum(counts) - counts
            token = self._offset[ids][run] + (np.arange(total) - first[run])
            shift = starts[run]
            base = (np.cumsum(words) - words)[run] + output.words
            output.append(self._starts[token] + shift, self._ends[token] + shift,
                          self._word[token] + base)
        output.words += int(words.sum())


Arrays = tuple[npt.NDArray[np.integer[Any]], npt.NDArray[np.integer[Any]],
               npt.NDArray[np.integer[Any]]]


class _Output:
    """A document's (starts, ends, word ids) columns, filled run block by run block."""

    __slots__ = ("columns", "count", "words")

    def __init__(self, length: int, capacity: int) -> None:
        dtype: type[np.integer[Any]] = np.int32 if length < 1 << 29 else np.int64
        self.columns = [np.empty(capacity, dtype=dtype) for _ in range(3)]
        self.count = 0
        self.words = 0

    def append(self, *values: npt.NDArray[np.int64]) -> None:
        end = self.count + len(values[0])
        if end > len(self.columns[0]):
            self.columns = [_grown(c[:self.count], max(end, 2 * len(c))) for c in self.columns]
        for column, value in zip(self.columns, values, strict=True):
            column[self.count:end] = value
        self.count = end

    def arrays(self) -> Arrays:
        starts, ends, words = (c[:self.count] for c in self.columns)
        return starts, ends, words


def _punctuation(tokenizer: Tokenizer) -> str:
    """The ASCII punctuation that ends runs, escaped for a regex character class: every
    character BertPreTokenizer isolates, except those an added token holds (the tokenizer
    matches added tokens before pre-tokenizing). With ASCII whitespace runs these are the
    separators: a run never holds one, and a separator's tokens are cached like a run's."""
    held: set[str] = set()
    for added in json.loads(tokenizer.to_str()).get("added_tokens") or []:
        content = str(added.get("content", ""))
        held.update(content)
        if added.get("normalized") and tokenizer.normalizer is not None:
            # matched after normalization: "x\u037ey" is "x;y" then, so ";" must not split
            held.update(tokenizer.normalizer.normalize_str(content))
    return "".join(re.escape(c) for c in PUNCTUATION if c not in held)


PUNCTUATION = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"


def _grown(array: npt.NDArray[Any], capacity: int) -> npt.NDArray[Any]:
    grown = np.empty(capacity, dtype=array.dtype)
    grown[:len(array)] = array
    return grown


def _slice_end(edge: re.Pattern[str], text: str, start: int) -> int | None:
    """Where a slice starting at `start` ends: at the first run edge (`edge`: a separator
    character, before which a run always ends) at or after start + SLICE_CHARS, or the text's
    end; None when neither is within LONG_RUN_CHARS of it (a run too long to cache)."""
    limit = start + SLICE_CHARS
    if limit >= len(text):
        return len(text)
    found = edge.search(text, limit, limit + LONG_RUN_CHARS + 1)
    if found:
        return found.start()
    return len(text) if len(text) <= limit + LONG_RUN_CHARS else None
