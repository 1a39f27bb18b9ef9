"""The embedder pin as a locked config stores it: round trip through YAML, one-line refusals."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import yaml

from registry.embedding.spec import EmbedderSpec
from registry.errors import ConfigInvalid

HASH = "sha256:" + "ab" * 32
ONNX = EmbedderSpec(backend="onnx", name="all-MiniLM-L6-v2-int8", dimension=384, normalize=True,
                    max_tokens=256, pooling="mean", model_hash=HASH, tokenizer_hash=HASH,
                    query_prefix="query: ", passage_prefix="passage: ", fingerprint=HASH)
OPENAI = EmbedderSpec(backend="openai", name="text-embedding-3-small", dimension=1536,
                      normalize=True, max_tokens=8191, fingerprint=HASH)


@pytest.mark.parametrize("spec", [ONNX, OPENAI], ids=["onnx", "openai"])
def test_a_spec_survives_a_yaml_round_trip(spec: EmbedderSpec) -> None:
    text = yaml.safe_dump({"embedder": spec.to_dict()}, sort_keys=False)
    assert EmbedderSpec.from_dict(yaml.safe_load(text)["embedder"]) == spec


def _refusal(data: Any) -> str:
    with pytest.raises(ConfigInvalid) as caught:
        EmbedderSpec.from_dict(data, where="configs/v2.yaml: embedder")
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(("change", "expected"), [
    ({"backend": "torch"}, "embedder.backend: unknown embedder backend 'torch'"),
    ({"dimension": True}, "embedder.dimension: embedder field dimension must be int"),
    ({"dimension": 0}, "embedder dimension 0 is out of range"),
    ({"max_tokens": "512"}, "max_tokens must be int"),
    ({"normalize": "yes"}, "normalize must be bool"),
    ({"pooling": "max"}, "embedder.pooling: unknown pooling 'max'"),
    ({"pooling": None}, "embedder.pooling: an onnx embedder needs pooling"),
    ({"model_hash": None}, "an onnx embedder needs model_hash"),
    ({"tokenizer_hash": "md5:abc"}, "tokenizer_hash 'md5:abc' is not sha256"),
    ({"fingerprint": None}, "embedder.fingerprint: embedder field fingerprint is missing"),
    ({"colour": "blue"}, "embedder.colour: unknown embedder field 'colour'"),
])
def test_a_broken_onnx_pin_is_refused_in_one_line_naming_the_field(
        change: dict[str, Any], expected: str) -> None:
    assert expected in _refusal(ONNX.to_dict() | change)


def test_an_openai_pin_is_its_model_name_not_a_file_hash() -> None:
    assert "identified by its model name" in _refusal(OPENAI.to_dict() | {"model_hash": HASH})
    assert "embedder.name: embedder name is empty" in _refusal(OPENAI.to_dict() | {"name": " "})


def test_the_embedder_must_be_a_mapping() -> None:
    assert "embedder must be a mapping, not list" in _refusal(["onnx"])


def test_an_unpinned_description_validates_but_does_not_parse_as_a_lock() -> None:
    unpinned = replace(ONNX, fingerprint=None)
    unpinned.validate()
    assert "fingerprint is missing" in _refusal(unpinned.to_dict())
