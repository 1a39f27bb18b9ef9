"""The chunker, property by property, against a real offline WordPiece tokenizer.

Every property is checked with an independent reference: counts by re-encoding the stored
text, Jaccard with Python sets of word 5-gram tuples, word boundaries from a fresh encoding.
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from registry.ingest.chunker import (
    MIN_CHUNK_TOKENS,
    Chunk,
    Chunker,
    CorpusDeduplicator,
    Document,
    ShingleSets,
    dedup_exact,
    prefix_text,
    shingle_sets,
    split_sections,
)
from registry.tokenizer import load_tokenizer, splits_on_whitespace
from tests.helpers import locked_config

PROPERTY = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])
PREFIX_RE = re.compile(r"Document: [^\n]*\nSection: [^\n]*\nType: (markdown|text)\n\n")
ODD_WORDS = ["naïve", "日本語", "😀", "x86_64", "don't", "e.g.", "foo_bar", "3.14", "(see", "it)",
             "—", "a\u0301b", "\u200bzero", "C++"]


@pytest.fixture(scope="module")
def tokenizer(tokenizer_file: Path) -> Tokenizer:
    return load_tokenizer(tokenizer_file)


@pytest.fixture(scope="module")
def single_token_words(tokenizer: Tokenizer) -> list[str]:
    """Vocabulary words that encode as exactly one token: every gap between them is a cut."""
    vocab = sorted(w for w in tokenizer.get_vocab() if w.isascii() and w.isalpha() and len(w) > 1)
    return [w for w in vocab if len(tokenizer.encode(w, add_special_tokens=False).ids) == 1]


# ---------------------------------------------------------------------------------------------
# references


def count(tokenizer: Tokenizer, text: str, special: bool = False) -> int:
    return len(tokenizer.encode(text, add_special_tokens=special).ids)


def reference_shingles(text: str) -> set[Any]:
    found = re.findall(r"\w+", text.lower())
    if not found:
        normalized = " ".join(text.split())
        return {normalized} if normalized else set()
    if len(found) < 5:
        return {tuple(found)}
    return {tuple(found[i:i + 5]) for i in range(len(found) - 4)}


def reference_jaccard(a: set[Any], b: set[Any]) -> float:
    return len(a & b) / len(a | b) if a and b else 0.0


def reference_greedy(texts: Sequence[str], threshold: float) -> list[int]:
    kept: list[int] = []
    sets = [reference_shingles(t) for t in texts]
    for index, shingle_set in enumerate(sets):
        if all(reference_jaccard(sets[k], shingle_set) < threshold for k in kept):
            kept.append(index)
    return kept


def body_of(document: Document, chunk: Chunk) -> str:
    return document.text[chunk.start:chunk.end]


# ---------------------------------------------------------------------------------------------
# generated markdown


@st.composite
def markdown(draw: st.DrawFn, words: list[str], odd: bool = True) -> str:
    pool = st.sampled_from(words + (ODD_WORDS if odd else []))
    paragraph = st.lists(pool, min_size=1, max_size=40).map(" ".join)
    heading = st.tuples(st.integers(1, 4), st.lists(pool, min_size=1, max_size=4)).map(
        lambda t: "#" * t[0] + " " + " ".join(t[1]))
    fence = st.lists(st.one_of(paragraph, st.just(""), st.just("# not a heading")),
                     max_size=4).map(lambda lines: "```\n" + "\n".join(lines) + "\n```")
    blocks = draw(st.lists(st.one_of(paragraph, paragraph, heading, fence), min_size=1,
                           max_size=10))
    repeats = draw(st.lists(st.integers(0, len(blocks) - 1), max_size=3))
    blocks += [blocks[i] for i in repeats]
    separators = draw(st.lists(st.sampled_from(["\n\n", "\n\n", "\n", "\n\n\n"]),
                               min_size=len(blocks), max_size=len(blocks)))
    return "".join(b + s for b, s in zip(blocks, separators, strict=True))


configs = st.builds(
    lambda size, ratio, jaccard, policy: locked_config(
        chunk_size=size, overlap_ratio=ratio, jaccard_threshold=jaccard, prefix_policy=policy),
    st.sampled_from([12, 24, 48, 100]), st.sampled_from([0.0, 0.1, 0.25, 0.5]),
    st.sampled_from([0.5, 0.8, 1.0]), st.sampled_from(["A", "B"]),
)


# ---------------------------------------------------------------------------------------------
# properties


@PROPERTY
@given(data=st.data(), config=configs)
def test_every_chunk_is_an_exact_slice_within_its_budgets(
    data: st.DataObject, config: Any, tokenizer: Tokenizer, single_token_words: list[str]
) -> None:
    text = data.draw(markdown([*single_token_words[:300], "tokenization", "preprocessing"]))
    document = Document("doc", data.draw(st.sampled_from(["Guide", "A title, with words"])),
                        text)
    chunks = Chunker(config, tokenizer).chunk(document).chunks
    for chunk in chunks:
        body = body_of(document, chunk)
        assert body and body.strip() == body
        prefix = chunk.embedding_text[: len(chunk.embedding_text) - len(body)]
        assert chunk.embedding_text.endswith(body)
        assert prefix == "" or PREFIX_RE.fullmatch(prefix)
        assert MIN_CHUNK_TOKENS <= count(tokenizer, body) <= config.chunk_size
        assert chunk.embedding_token_count == count(tokenizer, chunk.embedding_text, special=True)
        assert chunk.bm25_token_count == count(tokenizer, chunk.bm25_text)
        assert chunk.embedding_token_count <= config.token_budget
        if config.prefix_policy == "A":
            assert chunk.bm25_text == body
            assert not prefix or prefix not in chunk.bm25_text
        else:
            assert chunk.bm25_text == chunk.embedding_text
        assert (chunk.chunk_version, chunk.ingest_run_id) == (config.chunk_version,
                                                               config.ingest_run_id)
    assert [c.chunk_index for c in chunks] == list(range(len(chunks)))
    assert len({c.id for c in chunks}) == len(chunks)
    again = Chunker(config, tokenizer).chunk(document).chunks
    assert again == chunks


@PROPERTY
@given(data=st.data(), size=st.sampled_from([24, 48, 100]),
       ratio=st.sampled_from([0.1, 0.25, 0.5]))
def test_windows_of_a_long_paragraph_share_exactly_the_overlap(
    data: st.DataObject, size: int, ratio: float, tokenizer: Tokenizer,
    single_token_words: list[str],
) -> None:
    text = " ".join(data.draw(st.lists(st.sampled_from(single_token_words), min_size=size + 1,
                                       max_size=6 * size)))
    config = locked_config(chunk_size=size, overlap_ratio=ratio)
    overlap = config.overlap_tokens
    document = Document("doc", "T", text, "text")
    chunks = Chunker(config, tokenizer, dedup=False).chunk(document).chunks
    assert chunks[0].start == 0 and chunks[0].overlap == 0
    for before, after in itertools.pairwise(chunks):
        assert after.overlap == overlap
        shared = tokenizer.encode(text[after.start:before.end], add_special_tokens=False).ids
        assert len(shared) == overlap
        assert tokenizer.encode(body_of(document, before), add_special_tokens=False).ids[
            -overlap:] == shared
        assert tokenizer.encode(body_of(document, after), add_special_tokens=False).ids[
            :overlap] == shared
    tail = text[chunks[-1].end:]
    assert not tail or count(tokenizer, tail) + overlap < MIN_CHUNK_TOKENS


@PROPERTY
@given(data=st.data(), size=st.sampled_from([24, 48]), ratio=st.sampled_from([0.1, 0.25]))
def test_overlap_is_exact_unless_no_word_boundaries_allow_it(
    data: st.DataObject, size: int, ratio: float, tokenizer: Tokenizer,
) -> None:
    letters = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=14)
    text = data.draw(markdown(data.draw(st.lists(letters, min_size=5, max_size=30)), odd=False))
    config = locked_config(chunk_size=size, overlap_ratio=ratio)
    overlap = config.overlap_tokens
    document = Document("doc", "T", text)
    encoding = tokenizer.encode(text, add_special_tokens=False)
    word = encoding.word_ids
    result = Chunker(config, tokenizer, dedup=False).chunk(document)
    chunks = result.chunks
    for before, after in itertools.pairwise(chunks):
        if not after.overlap:
            assert after.start >= before.end
            continue
        shared = text[after.start:before.end]
        assert count(tokenizer, shared) == after.overlap
        if after.overlap != overlap and not result.too_small:  # consecutive planned pieces
            start = encoding.char_to_token(before.start)
            assert not any(word[e] != word[e - 1] and word[e - overlap] != word[e - overlap - 1]
                           for e in range(start + overlap + 1, start + size + 1))


@PROPERTY
@given(data=st.data(), threshold=st.sampled_from([0.5, 0.8, 1.0]))
def test_near_duplicates_follow_the_greedy_rule_exactly(
    data: st.DataObject, threshold: float, tokenizer: Tokenizer, single_token_words: list[str],
) -> None:
    text = data.draw(markdown(single_token_words[:60]))
    config = locked_config(chunk_size=24, overlap_ratio=0.1, jaccard_threshold=threshold)
    document = Document("doc", "T", text)
    everything = Chunker(config, tokenizer, dedup=False).chunk(document).chunks
    result = Chunker(config, tokenizer).chunk(document)
    bodies = [body_of(document, c) for c in everything]
    expected = [(everything[i].start, everything[i].end)
                for i in reference_greedy(bodies, threshold)]
    assert [(c.start, c.end) for c in result.chunks] == expected
    assert result.duplicates == len(everything) - len(expected)
    kept = [reference_shingles(body_of(document, c)) for c in result.chunks]
    for i, first in enumerate(kept):
        for second in kept[i + 1:]:
            assert reference_jaccard(first, second) < threshold


@settings(max_examples=80, deadline=None)
@given(sets=st.lists(st.sets(st.integers(0, 40), max_size=12), max_size=80),
       groups=st.integers(1, 4), threshold=st.sampled_from([0.5, 0.8, 1.0]),
       incremental=st.booleans())
def test_exact_dedup_matches_pairwise_greedy(sets: list[set[int]], groups: int,
                                             threshold: float, incremental: bool) -> None:
    """Both ways of computing it (pairs by sorting, or incremental for heavy groups)."""
    from unittest import mock

    from registry.ingest import chunker

    with mock.patch.object(chunker, "_HEAVY_PAIRS", 0 if incremental else 200_000):
        check_exact_dedup(sets, groups, threshold)


def test_a_block_repeated_hundreds_of_times_is_deduplicated_in_bounded_work() -> None:
    """A licence file repeating one block 900 times: every copy after the first goes, and the
    pair enumeration (900 x 899 / 2 per shared shingle) is never built."""
    block = " ".join(f"word{i}" for i in range(120))
    texts = [block] * 900 + [block.replace("word7 ", "other ")] + [
        " ".join(f"distinct{i}x{j}" for j in range(60)) for i in range(50)]
    packed = shingle_sets(texts)
    kept = dedup_exact(packed, 0.8, [0] * len(texts))
    assert [i for i, keep in enumerate(kept) if keep] == [0, *range(901, 951)]


def check_exact_dedup(sets: list[set[int]], groups: int, threshold: float) -> None:
    group_of = sorted(i % groups for i in range(len(sets)))
    arrays = [np.array(sorted(s), dtype=np.uint64) for s in sets]
    bounds = np.concatenate(([0], np.cumsum([len(a) for a in arrays]))).astype(np.int64)
    packed = ShingleSets(np.concatenate(arrays) if arrays else np.zeros(0, np.uint64), bounds)
    kept: list[int] = []
    for index, current in enumerate(sets):
        if all(group_of[k] != group_of[index] or reference_jaccard(sets[k], current) < threshold
               for k in kept):
            kept.append(index)
    result = dedup_exact(packed, threshold, group_of)
    assert [i for i, keep in enumerate(result) if keep] == kept


@settings(max_examples=60, deadline=None)
@given(texts=st.lists(st.text(max_size=80), max_size=12))
def test_shingle_sets_count_distinct_word_five_grams(texts: list[str]) -> None:
    packed = shingle_sets(texts)
    for index, text in enumerate(texts):
        assert len(packed[index]) == len(reference_shingles(text))
        assert np.all(np.diff(packed[index].astype(np.float64)) > 0) or len(packed[index]) < 2


@settings(max_examples=200, deadline=None)
@given(text=st.text(st.characters(max_codepoint=127), max_size=120))
def test_ascii_words_are_the_regex_words(text: str) -> None:
    """ASCII texts are split by bytes.translate, not the regex: the same words."""
    from registry.ingest.chunker import _word_bytes, words

    assert _word_bytes(text).split() == [w.encode() for w in words(text)]


_MASK = (1 << 64) - 1


def _scalar_mix(x: int) -> int:
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & _MASK
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def _scalar_word_hash(word: bytes) -> int:
    """The word hash as defined, one Python int at a time: mix(sum of byte x odd weight of its
    position + length x a constant)."""
    from registry.ingest.chunker import _LENGTH_MULTIPLIER, _POSITION_SEED

    total = sum(byte * (_scalar_mix((position + int(_POSITION_SEED)) & _MASK) | 1)
                for position, byte in enumerate(word))
    return _scalar_mix((total + len(word) * int(_LENGTH_MULTIPLIER)) & _MASK)


def _scalar_shingles(text: str) -> set[int]:
    from registry.ingest.chunker import _SHINGLE_MULTIPLIERS

    found = [w.encode() for w in re.findall(r"\w+", text.lower())]
    if not found:
        normalized = " ".join(text.split()).encode()
        found = [normalized] if normalized else []
    hashes = [_scalar_word_hash(word) for word in found]
    multipliers = [int(m) for m in _SHINGLE_MULTIPLIERS]
    if len(hashes) < 5:
        return {sum(h * m for h, m in zip(hashes, multipliers[:len(hashes)], strict=True)) & _MASK} if hashes else set()
    return {sum(hashes[i + k] * multipliers[k] for k in range(5)) & _MASK
            for i in range(len(hashes) - 4)}


@settings(max_examples=150, deadline=None)
@given(texts=st.lists(st.one_of(st.text(max_size=60), st.text("ab \n!.", max_size=40),
                                st.text(st.characters(max_codepoint=127), max_size=80)),
                      max_size=10))
def test_shingle_values_are_the_scalar_definition(texts: list[str]) -> None:
    """The vectorized word hashing of a whole group (words of every text in one buffer, texts
    without a word as their normalized selves) gives each text exactly the shingle values the
    one-word-at-a-time definition gives, whatever the mix of ASCII, other scripts and
    wordless texts around it."""
    packed = shingle_sets(texts)
    for index, text in enumerate(texts):
        assert set(packed[index].tolist()) == _scalar_shingles(text), text


def test_word_hashes_past_the_position_table_follow_the_definition() -> None:
    """A word longer than the precomputed position weights (4096 bytes) is weighted by the
    same formula; a change in any one byte changes its hash."""
    from registry.ingest.chunker import hash_words

    long_word = bytes(range(97, 123)) * 400
    changed = long_word[:-1] + b"y"
    hashes, starts = hash_words(b"  " + long_word + b" x " + changed)
    assert starts.tolist() == [2, 3 + len(long_word), 5 + len(long_word)]
    assert hashes.tolist() == [_scalar_word_hash(long_word), _scalar_word_hash(b"x"),
                               _scalar_word_hash(changed)]
    assert hashes[0] != hashes[2]


class _Offsets:
    """An encoding made of offsets alone, answering char_to_token as tokenizers does (the
    first token covering the character, found by scanning)."""

    def __init__(self, offsets: list[tuple[int, int]]) -> None:
        self.offsets = offsets

    def __len__(self) -> int:
        return len(self.offsets)

    def char_to_token(self, position: int) -> int | None:
        return next((i for i, (a, b) in enumerate(self.offsets) if a <= position < b), None)


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 4)), max_size=40),
       cuts=st.lists(st.integers(0, 200), max_size=300))
def test_first_tokens_by_offsets_are_char_to_tokens(
        steps: list[tuple[int, int]], cuts: list[int]) -> None:
    """Many blocks are looked up in the offsets at once: the first token of every block, as
    the character-by-character `char_to_token` scan finds it, empty and shared spans included."""
    from registry.ingest.chunker import MANY_BLOCKS, _first_token, _first_tokens

    offsets, position = [], 0
    for gap, width in steps:  # in order; gap 0 and width 0 make shared and empty spans
        position += gap
        offsets.append((position, position + width))
        position += width if gap else 0
    encoding = _Offsets(offsets)
    edges = sorted(set(cuts))
    spans = list(itertools.pairwise(edges)) * (MANY_BLOCKS // max(len(edges), 1) + 1)
    spans.sort()
    assert _first_tokens(encoding, spans) == [_first_token(encoding, a, b) for a, b in spans]


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.lists(st.sampled_from(list("ab .\n#") + ODD_WORDS), min_size=1,
                     max_size=200).map("".join),
       cuts=st.lists(st.integers(0, 600), min_size=2, max_size=300))
def test_first_tokens_of_a_real_encoding(tokenizer: Tokenizer, text: str,
                                         cuts: list[int]) -> None:
    from registry.ingest.chunker import MANY_BLOCKS, _first_token, _first_tokens

    encoding = tokenizer.encode(text, add_special_tokens=False)
    edges = sorted({min(c, len(text)) for c in cuts})
    spans = sorted(list(itertools.pairwise(edges)) * (MANY_BLOCKS // len(edges) + 1))
    assert _first_tokens(encoding, spans) == [_first_token(encoding, a, b) for a, b in spans]


# ---------------------------------------------------------------------------------------------
# scenarios


@PROPERTY
@given(data=st.data(), config=configs)
@pytest.mark.slow
def test_large_documents_encoded_in_segments_chunk_exactly_alike(
    data: st.DataObject, config: Any, tokenizer: Tokenizer, single_token_words: list[str]
) -> None:
    """Documents above LARGE_DOCUMENT_CHARS are encoded segment by segment into compact
    arrays (bounded memory); the chunks must be exactly those of one whole encoding."""
    text = "\n\n".join(data.draw(st.lists(markdown(single_token_words[:200]), min_size=1,
                                         max_size=4)))
    document = Document("doc", "Title", text, data.draw(st.sampled_from(["markdown", "text"])))
    assert_segmented_like_whole(config, tokenizer, document, data.draw(st.integers(20, 400)))


def assert_segmented_like_whole(config: Any, tokenizer: Tokenizer, document: Document,
                                segment_chars: int) -> None:
    """Encoding `document` in segments of `segment_chars` (as a large one is, without the run
    cache) yields exactly the chunks and counts of one whole encoding; so does the run cache
    (registry.ingest.runs) where the tokenizer qualifies for it."""
    from unittest import mock

    from registry.ingest import chunker

    whole = Chunker(config, tokenizer, runs=False).chunk(document)
    with mock.patch.object(chunker, "LARGE_DOCUMENT_CHARS", 0), \
            mock.patch.object(chunker, "SEGMENT_CHARS", segment_chars):
        segmented = Chunker(config, tokenizer, runs=False).chunk(document)
    cached = Chunker(config, tokenizer).chunk(document)
    for other in (segmented, cached):
        assert other.chunks == whole.chunks
        assert (other.tokens, other.duplicates, other.too_small) == (
            whole.tokens, whole.duplicates, whole.too_small)


def test_headings_inside_code_fences_do_not_start_sections() -> None:
    text = ("# Real\n\nSome words here.\n\n```bash\n# not a heading\n\nmake all\n```\n\n"
            "~~~\n## still code\n~~~\n")
    sections = split_sections(text, "markdown")
    assert [s.path for s in sections] == ["Real"]
    assert text[slice(*sections[0].blocks[2])] == "```bash\n# not a heading\n\nmake all\n```"
    assert [s.path for s in split_sections(text, "text")] == [""]


def test_header_only_sections_merge_into_the_next_chunk(tokenizer: Tokenizer) -> None:
    text = ("# Guide\n## Install\n\nRun the installer and follow every step that the "
            "installer shows on the screen until it is done.\n\n# Trailing heading\n")
    result = Chunker(locked_config(), tokenizer).chunk(Document("d", "Manual", text))
    assert len(result.chunks) == 1
    chunk = result.chunks[0]
    assert chunk.section == "Guide > Install"
    assert chunk.bm25_text.startswith("# Guide\n## Install\n\nRun the installer")
    assert "Trailing heading" not in chunk.bm25_text
    assert result.header_only == 2
    assert chunk.embedding_text == prefix_text("Manual", "Guide > Install", "markdown") + \
        chunk.bm25_text


def test_sections_that_fit_stay_whole_and_tiny_ones_are_dropped(tokenizer: Tokenizer) -> None:
    long_section = " ".join(["the parser reads every line of the file"] * 8)
    text = f"# One\n\n{long_section}\n\nsecond paragraph of one.\n\n# Two\n\nok.\n"
    result = Chunker(locked_config(), tokenizer).chunk(Document("d", "T", text))
    assert [c.section for c in result.chunks] == ["One"]
    assert result.chunks[0].bm25_text == text[: text.index("\n\n# Two")]
    assert result.too_small == 1


def test_a_long_title_is_shortened_but_the_body_never(tokenizer: Tokenizer) -> None:
    config = locked_config(chunk_size=40, overlap_ratio=0.1, embedder_max_tokens=64)
    title = " ".join(["an extraordinarily verbose document title"] * 12)
    body = " ".join(["the parser reads every line"] * 20)
    document = Document("d", title, f"# Deep\n## Deeper\n### Deepest\n\n{body}\n")
    chunks = Chunker(config, tokenizer).chunk(document).chunks
    assert len(chunks) > 1
    for chunk in chunks:
        assert chunk.embedding_token_count <= 64
        assert chunk.embedding_token_count == count(tokenizer, chunk.embedding_text, special=True)
        assert chunk.embedding_text.endswith(body_of(document, chunk))
        assert chunk.embedding_text.startswith("Document: an extraordinarily")
        assert "…\nSection: … > Deepest\n" in chunk.embedding_text


def test_ids_are_sha256_of_embedding_text_and_config_hash(tokenizer: Tokenizer) -> None:
    import hashlib

    config = locked_config()
    text = "A paragraph long enough to make one chunk of more than ten tokens for sure."
    chunk = Chunker(config, tokenizer).chunk(Document("d", "T", text, "text")).chunks[0]
    expected = hashlib.sha256((chunk.embedding_text + config.config_hash).encode()).hexdigest()
    assert chunk.id == expected
    other = Chunker(locked_config(chunk_size=400), tokenizer).chunk(
        Document("d", "T", text, "text")).chunks[0]
    assert other.id != chunk.id and other.embedding_text == chunk.embedding_text


def test_byte_level_bpe_is_measured_chunk_by_chunk(tmp_path: Path) -> None:
    """A tokenizer that keeps whitespace in its tokens cannot be counted piecewise: the chunker
    notices and re-measures, so stored counts stay exact."""
    from tokenizers import decoders, models, pre_tokenizers, trainers

    from tests.helpers import training_text

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(training_text()[:2000], trainers.BpeTrainer(
        vocab_size=2000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    assert not splits_on_whitespace(bpe)
    text = "\n\n".join(training_text()[:40])
    config = locked_config(chunk_size=64, overlap_ratio=0.1)
    chunks = Chunker(config, bpe).chunk(Document("d", "T", text)).chunks
    assert len(chunks) > 5
    for chunk in chunks:
        assert chunk.embedding_token_count == count(bpe, chunk.embedding_text, special=True)
        assert chunk.bm25_token_count == count(bpe, chunk.bm25_text) <= 64


def test_bert_wordpiece_is_counted_piecewise(tokenizer: Tokenizer) -> None:
    assert splits_on_whitespace(tokenizer)


@pytest.mark.slow
def test_corpus_dedup_finds_what_the_exact_pass_finds() -> None:
    """Planted near-duplicates (a few words changed) among distinct texts: LSH with exact
    verification removes only true near-duplicates and at least 99% of what exact greedy does."""
    generator = random.Random(7)
    vocabulary = [f"w{i}" for i in range(3000)]
    bases = [[generator.choice(vocabulary) for _ in range(150)] for _ in range(400)]
    texts = []
    for base in bases:
        texts.append(" ".join(base))
        for _ in range(generator.randint(0, 2)):
            variant = list(base)
            for _ in range(generator.randint(1, 6)):
                variant[generator.randrange(len(variant))] = generator.choice(vocabulary)
            texts.append(" ".join(variant))
    generator.shuffle(texts)
    threshold = 0.8
    expected_removed = set(range(len(texts))) - set(reference_greedy(texts, threshold))
    assert len(expected_removed) > 150
    dedup = CorpusDeduplicator(threshold)
    sets = shingle_sets(texts)
    keys = dedup.hasher.band_keys(sets)
    removed = {i for i in range(len(texts)) if dedup.is_duplicate(sets[i], keys[i])}
    kept_sets = [reference_shingles(texts[i]) for i in range(len(texts)) if i not in removed]
    for index in removed:
        assert max(reference_jaccard(reference_shingles(texts[index]), k)
                   for k in kept_sets) >= threshold
    recall = len(removed & expected_removed) / len(expected_removed)
    assert recall >= 0.99, recall
