"""The runbook and `registry env` of a config that pins an embedder carry the pin and the
retrieval it implies; a BM25-only config says bm25."""

from __future__ import annotations

import shlex

import yaml

from registry.config import ProductionConfig, load_locked
from registry.repository.runbook import environment, export_lines, render
from tests.embedding.test_locked_embedder import V2
from tests.embedding.test_spec import ONNX
from tests.test_bad_input import GOOD


def test_a_format_2_runbook_carries_the_embedder_pin() -> None:
    config, _ = load_locked(yaml.safe_dump(V2, sort_keys=False).encode(), "configs/x.yaml")
    env = environment(config)
    assert env["RETRIEVAL"] == "hybrid"
    assert env["EMBEDDER_NAME"] == ONNX.name and env["EMBEDDER_BACKEND"] == ONNX.backend
    assert env["EMBEDDER_DIMENSION"] == str(ONNX.dimension)
    assert env["EMBEDDER_QUERY_PREFIX"] == ONNX.query_prefix
    assert env["EMBEDDER_PASSAGE_PREFIX"] == ONNX.passage_prefix
    assert env["EMBEDDER_FINGERPRINT"] == ONNX.fingerprint
    # what `eval "$(registry env VERSION)"` sets, prefixes with their spaces included
    exported = dict(line.removeprefix("export ").split("=", 1)
                    for line in export_lines(config).splitlines())
    assert shlex.split(exported["EMBEDDER_QUERY_PREFIX"]) == ["query: "]
    book = render(config, ProductionConfig(production=None), "text")
    assert "every chunk has its vector" in book and "embedding IS NULL" in book
    assert "(hybrid, as production would serve it)" in book


def test_a_format_1_runbook_says_bm25() -> None:
    config, _ = load_locked(yaml.safe_dump(GOOD, sort_keys=False).encode(), "configs/x.yaml")
    env = environment(config)
    assert env["RETRIEVAL"] == "bm25"
    assert not [key for key in env if key.startswith("EMBEDDER_")]
    assert "embedding IS NULL" not in render(config, ProductionConfig(production=None), "text")
