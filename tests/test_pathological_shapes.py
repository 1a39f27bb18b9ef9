"""Memory bounded by the shape of a document, not only its size: a large document is encoded
in segments that never exceed 2 x SEGMENT_CHARS, even without whitespace, and shingled in
bounded groups; neither changes a chunk. (The peak RSS on the worst shapes is measured by
tests/reliability/test_pathological_memory.py.)"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from tokenizers import Tokenizer

from registry.ingest import chunker
from registry.ingest.chunker import Document, _segment_end, shingle_sets
from registry.tokenizer import load_tokenizer
from tests.helpers import locked_config
from tests.test_chunking import PROPERTY, assert_segmented_like_whole, configs

PUNCTUATION = "!?.,;:()[]{}<>-_/'\"#*"


@pytest.fixture(scope="module")
def tokenizer(tokenizer_file: Path) -> Tokenizer:
    return load_tokenizer(tokenizer_file)


@PROPERTY
@given(text=st.text(min_size=1, max_size=3000), segment=st.integers(1, 300))
def test_every_segment_is_bounded_whatever_the_text(
    tokenizer: Tokenizer, text: str, segment: int
) -> None:
    with mock.patch.object(chunker, "SEGMENT_CHARS", segment):
        position = 0
        while position < len(text):
            end = _segment_end(tokenizer, text, position)
            assert position < end <= min(len(text), position + 2 * segment)
            position = end


no_whitespace = st.lists(
    st.tuples(st.text(string.ascii_letters + string.digits, max_size=12),
              st.text(PUNCTUATION, min_size=1, max_size=60)).map("".join),
    min_size=1, max_size=120).map("".join)
"""Words of at most 12 characters between runs of punctuation, no whitespace at all."""


@PROPERTY
@given(config=configs, text=no_whitespace, repeats=st.integers(1, 6),
       segment_chars=st.integers(20, 200))
@example(config=locked_config(chunk_size=12, overlap_ratio=0.0, jaccard_threshold=0.5,
                              prefix_policy="A"),
         text="_0000000000_000000000:", repeats=1, segment_chars=20)
def test_documents_without_whitespace_chunk_alike_in_bounded_segments(
    config: Any, tokenizer: Tokenizer, text: str, repeats: int, segment_chars: int
) -> None:
    """Without whitespace the segments are cut where the tokenizer starts a new word (`_` is
    punctuation to BERT though a regex `\\w`): the chunks of one whole encoding."""
    document = Document("doc", "Title", text * repeats, "text")
    assert_segmented_like_whole(config, tokenizer, document, segment_chars)


@pytest.mark.parametrize("text", ["_0000000000_000000000:", "aaaaa!aaaaaaaaaa\u00a9bbbbbbbbbb",
                                  "xxxxx!xxxxxxxxxx\u0000yyyyyyyyyy"])
def test_segments_without_whitespace_end_where_the_tokenizer_starts_a_word(
    tokenizer: Tokenizer, text: str
) -> None:
    """A regex guessed word edges the tokenizer does not make (`_`, `©`, a control character)
    and cut a word in two; the cut is now one the whole encoding has (after the `!`)."""
    with mock.patch.object(chunker, "SEGMENT_CHARS", 20):
        end = _segment_end(tokenizer, text, 0)
    whole = tokenizer.encode(text, add_special_tokens=False)
    assert end in {start for start, _ in whole.offsets}
    halves = [tokenizer.encode(part, add_special_tokens=False)
              for part in (text[:end], text[end:])]
    assert [t for half in halves for t in half.tokens] == whole.tokens


@PROPERTY
@given(texts=st.lists(st.one_of(st.text(max_size=200), no_whitespace), max_size=20),
       group=st.integers(1, 400))
def test_shingling_in_groups_gives_the_same_sets(texts: list[str], group: int) -> None:
    whole = shingle_sets(texts)
    with mock.patch.object(chunker, "SHINGLE_GROUP_CHARS", group):
        grouped = shingle_sets(texts)
    assert np.array_equal(grouped.bounds, whole.bounds)
    assert np.array_equal(grouped.values, whole.values)
