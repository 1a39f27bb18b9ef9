"""The fingerprint: stable across runs and backends, and it moves when the model does."""

from __future__ import annotations

import pytest

from registry.embedding.base import check_fingerprint, fingerprint, pin
from registry.embedding.onnx import OnnxEmbedder
from registry.embedding.openai import OpenAIEmbedder
from registry.errors import EmbedderChanged
from tests.embedding.conftest import needs_minilm, needs_paraphrase
from tests.embedding_server import FakeEmbeddings

pytestmark = needs_minilm


@pytest.mark.slow
def test_the_fingerprint_is_stable_across_runs_and_loads(minilm: OnnxEmbedder) -> None:
    again = OnnxEmbedder.installed("all-MiniLM-L6-v2-int8", batch_size=4, normalize=False)
    assert fingerprint(minilm) == fingerprint(minilm) == fingerprint(again)
    assert fingerprint(minilm).startswith("sha256:")


def test_the_fingerprint_is_the_same_through_the_http_backend(minilm: OnnxEmbedder) -> None:
    locked = pin(minilm)
    with FakeEmbeddings(minilm) as server:
        remote = OpenAIEmbedder(server.model, base_url=server.base_url, dimension=384)
        assert fingerprint(remote) == locked.fingerprint
        check_fingerprint(locked, remote)


@needs_paraphrase
def test_a_model_swapped_behind_the_same_name_is_detected(
        minilm: OnnxEmbedder, paraphrase: OnnxEmbedder) -> None:
    with FakeEmbeddings(minilm) as server:
        remote = OpenAIEmbedder(server.model, base_url=server.base_url, dimension=384)
        locked = pin(remote)
        server.swapped = paraphrase
        with pytest.raises(EmbedderChanged) as caught:
            check_fingerprint(locked, remote, where="configs/v2.yaml")
    message = str(caught.value)
    assert message.startswith(f"configs/v2.yaml: embedder minilm (openai) has fingerprint "
                              f"{fingerprint(paraphrase)}, but the config was locked with "
                              f"{locked.fingerprint}")
    assert "\n" not in message


def test_slightly_perturbed_vectors_change_the_fingerprint(minilm: OnnxEmbedder) -> None:
    with FakeEmbeddings(minilm, perturbation=0.01) as server:
        remote = OpenAIEmbedder(server.model, base_url=server.base_url, dimension=384)
        with pytest.raises(EmbedderChanged, match="the model behind it changed"):
            check_fingerprint(pin(minilm), remote)
