"""The run cache (registry/ingest/runs.py): for BERT-style WordPiece tokenizers, offsets and
word ids assembled from cached runs must equal `encode_batch`'s exactly, whatever the text
(Unicode whitespace that is not a split point, CJK, accents, control characters, words over
WordPiece's 100 characters, emoji, added tokens in the text); chunks must be byte-identical to
the `encode_batch` path; any other tokenizer takes `encode_batch`."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tokenizers import Tokenizer

from registry.ingest import runs
from registry.ingest.chunker import Chunker, Document
from registry.ingest.runs import RunEncoder, qualifies
from registry.tokenizer import load_tokenizer
from tests.helpers import locked_config, training_text
from tests.test_chunking import PROPERTY, configs, markdown

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tokenizer(tokenizer_file: Path) -> Tokenizer:
    return load_tokenizer(tokenizer_file)


@pytest.fixture(scope="module")
def minilm() -> Tokenizer:
    """The MiniLM tokenizer.json the embedder ships (truncation and padding in its file)."""
    from registry.embedding.onnx import installed_model

    try:
        path = installed_model("all-MiniLM-L6-v2-int8")[1]
    except Exception as err:  # the model package is an extra
        pytest.skip(f"the MiniLM tokenizer is not installed: {err}")
    return load_tokenizer(path)


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(training_text()[:2000], trainers.BpeTrainer(
        vocab_size=2000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tokenizer


def reference(tokenizer: Tokenizer, texts: Sequence[str]
              ) -> list[tuple[np.ndarray[Any, Any], ...]]:
    found = []
    for encoding in tokenizer.encode_batch(list(texts), add_special_tokens=False):
        offsets = np.array(encoding.offsets, dtype=np.int64).reshape(-1, 2)
        words = np.array([-1 if w is None else w for w in encoding.word_ids], dtype=np.int64)
        found.append((offsets[:, 0], offsets[:, 1], words))
    return found


def assert_exact(encoder: RunEncoder, tokenizer: Tokenizer, texts: Sequence[str]) -> None:
    for text, got, want in zip(texts, encoder.encode(texts), reference(tokenizer, texts),
                               strict=True):
        assert got is not None, text
        for column, (mine, theirs) in enumerate(zip(got, want, strict=True)):
            assert np.array_equal(mine, theirs), (column, text)


ODD = ["\u00a0", "\u2003", "\u3000", "\u0085", "\u001c", "\u000b", "\u000c", "\u2028",
       "\u200b", "\u00ad", "\x00", "\x7f", "\ufffd", "\u0301", "e\u0301", "É", "İ", "ß", "ﬁ",
       "日本語", "中", "한국어", "😀", "👩\u200d💻", "naïve", "[SEP]", "[CLS]x", "[UNK]", "[mask]",
       "don't", "x86_64", "C++", "—", "…", "\t", "\r\n", "\r", "\n\n", "  "]
pieces = st.one_of(
    st.sampled_from(ODD),
    st.sampled_from(["the", "token", "tokenization", "of", "a", "run"]),
    st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=6),
    st.text("abcxyz", min_size=95, max_size=140),  # around WordPiece's 100-character limit
    st.text("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~ ab", max_size=8),
)
texts = st.lists(st.lists(st.tuples(pieces, st.sampled_from(["", "", " ", "\n"])),
                          max_size=40).map(lambda p: "".join(a + b for a, b in p)),
                 min_size=1, max_size=6)


# ---------------------------------------------------------------------------------------------
# which tokenizers qualify


def test_bert_style_wordpiece_qualifies(tokenizer: Tokenizer, minilm: Tokenizer) -> None:
    assert qualifies(tokenizer) and qualifies(minilm)


def test_other_pipelines_do_not_qualify(tokenizer: Tokenizer, bpe: Tokenizer) -> None:
    from tokenizers import AddedToken, normalizers, pre_tokenizers

    assert not qualifies(bpe)
    variants: list[Tokenizer] = []
    for change in ("truncation", "padding", "normalizer", "pre_tokenizer", "lstrip",
                   "space"):
        other = Tokenizer.from_str(tokenizer.to_str())
        if change == "truncation":
            other.enable_truncation(512)
        elif change == "padding":
            other.enable_padding()
        elif change == "normalizer":
            other.normalizer = normalizers.Sequence([normalizers.NFKC(),
                                                     normalizers.Lowercase()])
        elif change == "pre_tokenizer":
            other.pre_tokenizer = pre_tokenizers.Metaspace()
        elif change == "lstrip":
            other.add_special_tokens([AddedToken("<mask>", lstrip=True)])
        else:
            other.add_tokens(["new york"])
        variants.append(other)
    assert not any(qualifies(v) for v in variants)


def test_a_byte_level_bpe_takes_encode_batch(bpe: Tokenizer) -> None:
    """The chunker never builds a run encoder for it, and its chunks are the ordinary path's."""
    document = Document("d", "T", "\n\n".join(training_text()[:30]))
    config = locked_config(chunk_size=64, overlap_ratio=0.1)
    with mock.patch.object(RunEncoder, "encode", side_effect=AssertionError("used")):
        chunker = Chunker(config, bpe)
        chunked = chunker.chunk(document)
    assert chunker._run_encoder is None and not chunker._runs
    assert chunked.chunks == Chunker(config, bpe, runs=False).chunk(document).chunks
    assert len(chunked.chunks) > 3


def test_a_bert_tokenizer_is_encoded_through_the_runs(tokenizer: Tokenizer) -> None:
    chunker = Chunker(locked_config(), tokenizer)
    chunker.chunk(Document("d", "T", "Some words here, and more words there."))
    assert chunker._run_encoder is not None and len(chunker._run_encoder._index) > 5


# ---------------------------------------------------------------------------------------------
# exact encodings


@PROPERTY
@given(batch=texts)
def test_runs_encode_exactly_as_encode_batch(tokenizer: Tokenizer, minilm: Tokenizer,
                                             batch: list[str]) -> None:
    for model in (tokenizer, minilm):
        assert_exact(RunEncoder(model), model, batch)


@PROPERTY
@given(batch=texts, slice_chars=st.integers(1, 200), entries=st.integers(1, 50))
def test_large_documents_in_slices_and_a_cache_that_starts_over_are_exact(
        tokenizer: Tokenizer, batch: list[str], slice_chars: int, entries: int) -> None:
    """Slices end at any separator; the cache starting over between batches and slices (a
    tiny bound) changes nothing; a warm cache (the same encoder again) neither."""
    encoder = RunEncoder(tokenizer, max_entries=entries)
    with mock.patch.object(runs, "SLICE_CHARS", slice_chars):
        assert_exact(encoder, tokenizer, batch)
        assert_exact(encoder, tokenizer, batch[::-1])


@PROPERTY
@given(batch=texts, long_run=st.integers(1, 30))
def test_a_run_too_long_to_cache_falls_back(tokenizer: Tokenizer, batch: list[str],
                                            long_run: int) -> None:
    """A text is handed back (None) when one of its runs exceeds LONG_RUN_CHARS (a run of
    whitespace may be cut in two between slices), only then; the others are still exact."""
    encoder = RunEncoder(tokenizer)
    with mock.patch.object(runs, "LONG_RUN_CHARS", long_run), \
            mock.patch.object(runs, "SLICE_CHARS", 64):
        found = encoder.encode(batch)
    for text, got, want in zip(batch, found, reference(tokenizer, batch), strict=True):
        parts = encoder._split(text)
        longest = max(map(len, parts), default=0)
        longest_word = max((len(p) for p in parts if p.strip(" \t\n\r")), default=0)
        assert (got is None) <= (longest > long_run)
        assert (longest_word > long_run) <= (got is None)
        if got is not None:
            assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))


@pytest.mark.parametrize("space", ["\u00a0", "\u2003", "\u3000", "\u0085", "\u001c",
                                   "\u000b", "\u000c", "\u2028", "\u200b", "\x00", "\u0301"])
def test_unicode_whitespace_and_controls_between_letters(tokenizer: Tokenizer, minilm: Tokenizer,
                                                          space: str) -> None:
    """Python's whitespace is not the tokenizer's: BertNormalizer deletes controls (U+0085,
    U+001C, U+000B are Python whitespace) and turns other Unicode spaces into spaces. The
    runs keep them inside, so the real tokenizer decides either way."""
    batch = [f"ab{space}cd", f"x{space}", f"{space}y", f"one{space}{space}two three",
             f"naïve{space}日本{space}😀"]
    for model in (tokenizer, minilm):
        assert_exact(RunEncoder(model), model, batch)


def test_a_word_over_the_wordpiece_limit_is_one_unknown_token(tokenizer: Tokenizer) -> None:
    text = "short " + "x" * 101 + " " + "y" * 100 + ", end"
    encoder = RunEncoder(tokenizer)
    assert_exact(encoder, tokenizer, [text])
    got = encoder.encode([text])[0]
    assert got is not None
    unknown = tokenizer.encode(text, add_special_tokens=False).tokens.index("[UNK]")
    assert (got[0][unknown], got[1][unknown]) == (6, 107)


# ---------------------------------------------------------------------------------------------
# chunks


@PROPERTY
@given(data=st.data(), config=configs)
def test_chunks_are_byte_identical_to_the_encode_batch_path(
        data: st.DataObject, config: Any, tokenizer: Tokenizer) -> None:
    words = ["the", "parser", "reads", "every", "line", "tokenization", "x" * 120, "日本",
             "naïve", "a\u00a0b", "end.", "(see", "it)", "[SEP]", "\u3000"]
    documents = [Document(f"d{i}", "Title", data.draw(markdown(words)),
                          data.draw(st.sampled_from(["markdown", "text"])))
                 for i in range(data.draw(st.integers(1, 4)))]
    assert_same_chunks(config, tokenizer, documents)


def assert_same_chunks(config: Any, tokenizer: Tokenizer, documents: list[Document]) -> None:
    fast = Chunker(config, tokenizer).chunk_many(documents)
    slow = Chunker(config, tokenizer, runs=False).chunk_many(documents)
    assert [[c.row() for c in r.chunks] for r in fast] == [
        [c.row() for c in r.chunks] for r in slow]
    assert [(r.tokens, r.duplicates, r.too_small, r.header_only) for r in fast] == [
        (r.tokens, r.duplicates, r.too_small, r.header_only) for r in slow]


# ---------------------------------------------------------------------------------------------
# the bench sample (marker `bench`: builds the bench corpus once, ~40 s)


@pytest.fixture(scope="module")
def bench_sample() -> tuple[list[Document], Path]:
    sys.path.insert(0, str(ROOT / "bench"))
    sys.path.insert(0, str(ROOT / "bench" / "ingest"))
    import corpus
    import run

    corpus.build()
    return run.mixed_sample(run.load_documents(), 8.0), corpus.tokenizer()


@pytest.mark.bench
@pytest.mark.timeout(900)
def test_the_bench_sample_encodes_exactly(bench_sample: tuple[list[Document], Path],
                                          minilm: Tokenizer) -> None:
    documents, path = bench_sample
    assert any(len(d.text) > runs.SLICE_CHARS for d in documents)
    for model in (load_tokenizer(path), minilm):
        encoder = RunEncoder(model)
        for start in range(0, len(documents), 64):
            assert_exact(encoder, model, [d.text for d in documents[start:start + 64]])


@pytest.mark.bench
@pytest.mark.timeout(900)
@pytest.mark.parametrize("settings", [
    {"chunk_size": 450, "overlap_ratio": 0.1},
    {"chunk_size": 128, "overlap_ratio": 0.25, "prefix_policy": "A"},
    {"chunk_size": 48, "overlap_ratio": 0.0, "jaccard_threshold": 0.5}])
def test_the_bench_sample_chunks_byte_identically(bench_sample: tuple[list[Document], Path],
                                                  settings: dict[str, Any]) -> None:
    documents, path = bench_sample
    tokenizer = load_tokenizer(path)
    config = locked_config(**settings)
    for start in range(0, len(documents), 64):
        assert_same_chunks(config, tokenizer, documents[start:start + 64])


# -- found by a hostile review: tokenizers that qualified but do not split at every run edge ---

def wordpiece(words: Sequence[str], **normalizer: Any) -> Tokenizer:
    """A small WordPiece tokenizer built here (every ASCII punctuation in its vocabulary)."""
    from tokenizers import models, normalizers, pre_tokenizers

    base = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]", *words, *runs.PUNCTUATION]
    vocab = {word: number for number, word in enumerate(dict.fromkeys(base))}
    built = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    built.normalizer = normalizers.BertNormalizer(**normalizer)
    built.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return built


def exact_or_refused(tokenizer: Tokenizer, texts: Sequence[str]) -> None:
    """Either the tokenizer takes encode_batch, or the run cache equals it on `texts`."""
    if qualifies(tokenizer):
        assert_exact(RunEncoder(tokenizer), tokenizer, texts)


def test_a_single_word_added_token_takes_encode_batch() -> None:
    """HF matches a single-word token only between non-word characters, and `_` is a word
    character there but a run edge here: "_foo_" holds no token foo, the run "foo" would."""
    from tokenizers import AddedToken

    tokenizer = wordpiece(["f", "##o", "x", "##x"])
    tokenizer.add_tokens([AddedToken("foo", single_word=True)])
    assert not qualifies(tokenizer)
    exact_or_refused(tokenizer, ["_foo_", "x_foo", "foo_", "-foo-", "foo"])


@pytest.mark.parametrize(("content", "text"), [
    ("x\u037ey", "x;y"), ("a\u1fefb", "a`b"), ("\u2260\u2260", "=="), ("a\u2260b", "a=b"),
    ("\u226e-", "<-")])
def test_punctuation_a_normalized_added_token_holds_after_normalization_is_no_edge(
        content: str, text: str) -> None:
    """With strip_accents (lowercase on), U+037E normalizes to ";" and a normalized added
    token "x\\u037ey" matches the text "x;y" whole: ";" must not end a run."""
    from tokenizers import AddedToken

    tokenizer = wordpiece(["a", "b", "c", "x", "y"], lowercase=True)
    tokenizer.add_tokens([AddedToken(content, normalized=True)])
    exact_or_refused(tokenizer, [text, f"c {text} c", f"{text}.{text}"])


def test_a_post_processor_that_moves_offsets_takes_encode_batch() -> None:
    from tokenizers import processors

    tokenizer = wordpiece(["a", "\u0120a", "\u0120", "##\u0120", "x", "##a", "##x"],
                          lowercase=False, strip_accents=False)
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=True)
    assert not qualifies(tokenizer)
    exact_or_refused(tokenizer, ["x \u0120a", "x.\u0120a", "\u0120a", "x\u0120", "x a\u0120"])


def test_a_text_the_tokenizer_refuses_does_not_poison_later_calls(tokenizer: Tokenizer) -> None:
    encoder = RunEncoder(tokenizer)
    with pytest.raises(Exception):  # noqa: B017 - whatever the tokenizer raises, as encode_batch
        encoder.encode(["a \ud800 b"])
    assert_exact(encoder, tokenizer, ["a b c", "x", "the \ud7ff end"])
