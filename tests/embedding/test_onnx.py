"""The local ONNX backend on the real int8 all-MiniLM-L6-v2 (and the 3-layer paraphrase MiniLM)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from registry.embedding.base import pin
from registry.embedding.onnx import OnnxEmbedder, installed_model
from registry.embedding.spec import EmbedderSpec
from registry.errors import EmbedderError
from tests.embedding.conftest import needs_minilm, needs_paraphrase

pytestmark = needs_minilm

TEXTS = [
    "How do I roll back a promotion?",
    "Reverting the production view to the previous table undoes a promotion.",
    "Bananas are a good source of potassium.",
]


def test_vectors_have_the_model_dimension_and_unit_norm(minilm: OnnxEmbedder) -> None:
    vectors = minilm.embed_passages(TEXTS)
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_without_normalisation_the_mean_pooled_vectors_keep_their_length() -> None:
    raw = OnnxEmbedder.installed("all-MiniLM-L6-v2-int8", normalize=False).embed_texts(TEXTS)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0, atol=1e-2)


def test_a_question_is_closer_to_its_answer_than_to_an_unrelated_text(minilm: OnnxEmbedder) -> None:
    question, answer, unrelated = minilm.embed_passages(TEXTS)
    assert question @ answer > question @ unrelated + 0.2


def test_batching_and_order_do_not_change_the_vectors(minilm: OnnxEmbedder) -> None:
    small_batches = OnnxEmbedder.installed("all-MiniLM-L6-v2-int8", batch_size=1)
    texts = [*TEXTS, "ok", "A much longer text about locked chunking configurations " * 3]
    np.testing.assert_allclose(small_batches.embed_texts(texts), minilm.embed_texts(texts),
                               atol=1e-5)
    np.testing.assert_allclose(minilm.embed_texts(texts[::-1])[::-1], minilm.embed_texts(texts),
                               atol=1e-5)


def test_text_past_max_tokens_is_truncated() -> None:
    short = OnnxEmbedder.installed("all-MiniLM-L6-v2-int8", max_tokens=16)
    head = "the registry locks every chunking configuration " * 4
    same = short.embed_texts([head, head + "bananas potassium fruit salad"])
    np.testing.assert_allclose(same[0], same[1], atol=1e-6)
    differs = OnnxEmbedder.installed("all-MiniLM-L6-v2-int8", max_tokens=256)
    longer = differs.embed_texts([head, head + "bananas potassium fruit salad"])
    assert not np.allclose(longer[0], longer[1], atol=1e-3)


def test_cls_pooling_is_not_mean_pooling(minilm: OnnxEmbedder) -> None:
    cls = OnnxEmbedder.installed("all-MiniLM-L6-v2-int8", pooling="cls")
    assert not np.allclose(cls.embed_texts(TEXTS), minilm.embed_texts(TEXTS), atol=1e-2)


def test_query_and_passage_prefixes_are_applied(minilm: OnnxEmbedder) -> None:
    e5_style = OnnxEmbedder.installed("all-MiniLM-L6-v2-int8", query_prefix="query: ",
                                      passage_prefix="passage: ")
    np.testing.assert_allclose(e5_style.embed_query("roll back"),
                               minilm.embed_texts(["query: roll back"])[0], atol=1e-6)
    np.testing.assert_allclose(e5_style.embed_passages(["roll back"]),
                               minilm.embed_texts(["passage: roll back"]), atol=1e-6)


def test_the_cpu_provider_is_used_when_no_gpu_is_present(minilm: OnnxEmbedder) -> None:
    assert minilm.providers[-1] == "CPUExecutionProvider"


def test_the_pin_of_an_installed_model_is_a_valid_lock(minilm: OnnxEmbedder) -> None:
    spec = pin(minilm)
    assert EmbedderSpec.from_dict(spec.to_dict()) == spec
    assert spec.model_hash == "sha256:8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
    assert (spec.dimension, spec.pooling, spec.max_tokens) == (384, "mean", 256)


def test_from_spec_rebuilds_the_embedder_from_the_pinned_files(minilm: OnnxEmbedder) -> None:
    model_file, tokenizer_file = installed_model("all-MiniLM-L6-v2-int8")
    rebuilt = OnnxEmbedder.from_spec(pin(minilm), model_file, tokenizer_file)
    np.testing.assert_array_equal(rebuilt.embed_texts(TEXTS), minilm.embed_texts(TEXTS))


@needs_paraphrase
def test_from_spec_refuses_a_model_file_other_than_the_pinned_one(minilm: OnnxEmbedder) -> None:
    other_model, tokenizer_file = installed_model("paraphrase-MiniLM-L3-v2")
    with pytest.raises(EmbedderError) as caught:
        OnnxEmbedder.from_spec(pin(minilm), other_model, tokenizer_file)
    message = str(caught.value)
    assert "paraphrase-MiniLM-L3-v2.onnx has hash sha256:" in message
    assert "but the config was locked with sha256:8199be6f" in message and "\n" not in message


def test_an_unknown_installed_model_is_one_line() -> None:
    with pytest.raises(EmbedderError, match=r"no installed model is named 'gpt'.*use one of"):
        installed_model("gpt")


def test_a_missing_model_file_is_one_line(tmp_path: Path) -> None:
    _, tokenizer_file = installed_model("all-MiniLM-L6-v2-int8")
    with pytest.raises(EmbedderError, match=r"model file .*missing.onnx does not exist"):
        OnnxEmbedder(tmp_path / "missing.onnx", tokenizer_file, name="x")
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    with pytest.raises(EmbedderError, match=r"onnxruntime cannot load .*broken.onnx"):
        OnnxEmbedder(tmp_path / "broken.onnx", tokenizer_file, name="x")
