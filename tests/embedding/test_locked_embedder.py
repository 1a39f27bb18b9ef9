"""The embedder in the lock: format 2 configs carry `embedder`, format 1 stays valid (BM25 only),
`registry lock` pins an embedder (fingerprint measured), validate checks compatibility."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from registry.config import LockedConfig, guardrail_violations, load_locked
from registry.embedding.base import fingerprint, pin
from registry.embedding.onnx import OnnxEmbedder, installed_model
from registry.errors import ConfigInvalid, EmbedderChanged
from registry.tokenizer import file_hash
from tests.embedding.conftest import needs_minilm
from tests.embedding.test_spec import HASH, ONNX
from tests.embedding_server import FakeEmbeddings
from tests.helpers import RegistryRepo, run_cli
from tests.test_bad_input import GOOD

V2: dict[str, Any] = {**GOOD, "schema_version": 2, "chunk_size": 200,
                      "embedder_name": ONNX.name, "embedder_max_tokens": ONNX.max_tokens,
                      "tokenizer_hash": HASH, "embedder": ONNX.to_dict()}


def _text(data: dict[str, Any]) -> bytes:
    return yaml.safe_dump(data, sort_keys=False).encode()


def _refused(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigInvalid) as caught:
        load_locked(_text(data), "configs/2025-09-07-143022-v1.yaml")
    return str(caught.value)


def test_a_format_2_config_carries_its_embedder_and_round_trips() -> None:
    config, _ = load_locked(_text(V2), "configs/x.yaml")
    assert config.embedder == ONNX
    assert config.schema_version == 2
    text = config.dump()
    again, _ = load_locked(text.encode(), "configs/x.yaml")
    assert again == config and again.dump() == text
    assert "embedder:\n  backend: onnx\n" in text


def test_a_format_1_config_is_still_valid_and_means_bm25_only() -> None:
    config, _ = load_locked(_text(GOOD), "configs/x.yaml")
    assert config.embedder is None
    assert "embedder:" not in config.dump()


@pytest.mark.parametrize(("change", "expected"), [
    ({"schema_version": 2, "embedder": None}, "embedder"),
    ({"schema_version": 1}, "embedder"),
    ({"schema_version": 3}, "schema_version 3 is not one of 1, 2"),
    ({"embedder": {**ONNX.to_dict(), "fingerprint": None}}, "embedder.fingerprint"),
    ({"embedder": {**ONNX.to_dict(), "dimension": "384"}}, "embedder.dimension"),
    ({"embedder": {**ONNX.to_dict(), "colour": "red"}}, "unknown field colour"),
    ({"embedder": {**ONNX.to_dict(), "model_hash": None}}, "an onnx embedder needs model_hash"),
])
def test_the_schema_ties_the_embedder_to_format_2(change: dict[str, Any], expected: str) -> None:
    data = {**V2, **change}
    if change.get("embedder", 1) is None:
        del data["embedder"]
    message = _refused(data)
    assert expected in message
    assert ":" in message.split()[0]  # path:line first


@pytest.mark.parametrize(("change", "expected"), [
    ({"tokenizer_hash": "sha256:" + "cd" * 32}, "the embedder's tokenizer"),
    ({"embedder_name": "other-model"}, "embedder_name other-model is not embedder.name"),
    ({"embedder_max_tokens": 512}, "embedder_max_tokens 512 is not embedder.max_tokens 256"),
    ({"chunk_size": 221}, "passage prefix"),
    ({"embedder": {**ONNX.to_dict(), "dimension": 3072}}, "above 2000"),
])
def test_embedder_compatibility_is_checked_offline(change: dict[str, Any], expected: str) -> None:
    config, _ = load_locked(_text({**V2, **change}), "configs/x.yaml")
    found = guardrail_violations(config)
    assert any(expected in message for _, message, _ in found), found
    assert not guardrail_violations(LockedConfig.from_mapping(V2))


def test_the_config_hash_covers_the_embedder_of_a_format_2_config() -> None:
    config = LockedConfig.from_mapping(V2)
    other = LockedConfig.from_mapping({**V2, "embedder": {**ONNX.to_dict(),
                                                          "fingerprint": "sha256:" + "ef" * 32}})
    assert config.config_hash != other.config_hash
    v1 = LockedConfig.from_mapping(GOOD)
    assert v1.config_hash == LockedConfig.from_mapping({**GOOD}).config_hash


def test_passage_prefix_tokens_count_against_the_budget() -> None:
    config = LockedConfig.from_mapping({**V2, "chunk_size": 220})
    assert not guardrail_violations(config, passage_prefix_tokens=2)
    assert guardrail_violations(config, passage_prefix_tokens=4)


@needs_minilm
def test_lock_pins_an_installed_onnx_embedder(registry_repo: RegistryRepo,
                                              minilm: OnnxEmbedder) -> None:
    result = run_cli("lock", "--repo", registry_repo.path, "--chunk-size", "200",
                     "--embedder-onnx", "all-MiniLM-L6-v2-int8",
                     "--embedder-passage-prefix", "passage: ",
                     "--embedder-query-prefix", "query: ", "--format", "json")
    assert result.code == 0, result.stderr
    version = yaml.safe_load(result.stdout)["chunk_version"]
    registry_repo.merge(f"lock/{version}")
    config, _ = load_locked((registry_repo.path / f"configs/{version}.yaml").read_bytes(), "x")
    spec = config.embedder
    assert spec is not None and config.schema_version == 2
    assert spec.fingerprint == fingerprint(minilm)
    assert (spec.dimension, spec.max_tokens, spec.pooling) == (384, 256, "mean")
    model_file, tokenizer_file = installed_model("all-MiniLM-L6-v2-int8")
    assert spec.model_hash == file_hash(model_file)
    assert config.tokenizer_hash == spec.tokenizer_hash == file_hash(tokenizer_file)
    assert spec.passage_prefix == "passage: " and spec.query_prefix == "query: "
    assert config.embedder_name == spec.name and config.embedder_max_tokens == 256
    show = run_cli("show", version, "--repo", registry_repo.path)
    assert "onnx all-MiniLM-L6-v2-int8, dimension 384, normalized" in show.stdout
    listed = run_cli("list", "--repo", registry_repo.path)
    assert "all-MiniLM-L6-v2-int8 (onnx, 384d)" in listed.stdout
    validate = run_cli("validate", "--repo", registry_repo.path, "--tokenizer-file",
                       f"{config.tokenizer_name}={tokenizer_file}")
    assert validate.code == 0, validate.stdout + validate.stderr


@needs_minilm
def test_lock_refuses_a_chunk_size_the_embedder_cannot_read(registry_repo: RegistryRepo) -> None:
    result = run_cli("lock", "--repo", registry_repo.path, "--chunk-size", "450",
                     "--embedder-onnx", "all-MiniLM-L6-v2-int8")
    assert result.code == 1
    assert result.stderr.count("\n") == 1
    assert "token budget 256" in result.stderr


@needs_minilm
def test_lock_refuses_a_tokenizer_other_than_the_embedders(registry_repo: RegistryRepo) -> None:
    result = run_cli("lock", "--repo", registry_repo.path, "--chunk-size", "200",
                     "--embedder-onnx", "all-MiniLM-L6-v2-int8",
                     "--tokenizer-file", registry_repo.tokenizer_file)
    assert result.code == 1
    assert "the embedder's tokenizer" in result.stderr


@needs_minilm
def test_lock_pins_an_openai_compatible_embedder(
        registry_repo: RegistryRepo, minilm: OnnxEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeEmbeddings(minilm, token="s3cret") as server:
        monkeypatch.setenv("REGISTRY_EMBEDDING_URL", server.base_url)
        monkeypatch.setenv("REGISTRY_EMBEDDING_TOKEN", "s3cret")
        result = run_cli("lock", "--repo", registry_repo.path, "--chunk-size", "200",
                         "--embedder-openai", server.model, "--embedder-max-tokens", "256",
                         "--tokenizer-file", registry_repo.tokenizer_file, "--format", "json")
    assert result.code == 0, result.stderr
    assert "s3cret" not in result.stdout + result.stderr
    version = yaml.safe_load(result.stdout)["chunk_version"]
    registry_repo.git("checkout", "--quiet", f"lock/{version}")
    config, _ = load_locked((registry_repo.path / f"configs/{version}.yaml").read_bytes(), "x")
    assert config.embedder is not None
    assert config.embedder.backend == "openai" and config.embedder.dimension == 384
    assert config.embedder.fingerprint == fingerprint(minilm)
    assert config.embedder.tokenizer_hash is None


@needs_minilm
def test_the_embedder_check_for_ingest_eval_and_health(minilm: OnnxEmbedder) -> None:
    from registry.embedding.locked import check_embedder

    locked = pin(minilm)
    config = LockedConfig.from_mapping({**V2, "tokenizer_hash": locked.tokenizer_hash,
                                        "embedder": locked.to_dict()})
    check_embedder(config, minilm)
    moved = LockedConfig.from_mapping({**V2, "tokenizer_hash": locked.tokenizer_hash,
                                       "embedder": replace(locked, fingerprint=HASH).to_dict()})
    with pytest.raises(EmbedderChanged) as caught:
        check_embedder(moved, minilm)
    assert moved.chunk_version in str(caught.value)


@needs_minilm
def test_the_locked_onnx_embedder_is_found_from_the_installed_packages(
        minilm: OnnxEmbedder) -> None:
    from registry.embedding.locked import embedder_for

    locked = pin(minilm)
    config = LockedConfig.from_mapping({**V2, "tokenizer_hash": locked.tokenizer_hash,
                                        "embedder": locked.to_dict()})
    built = embedder_for(config)
    assert built.spec.model_hash == locked.model_hash


def test_an_onnx_embedder_whose_files_are_missing_is_one_line(tmp_path: Path) -> None:
    from registry.embedding.locked import embedder_for
    from registry.errors import EmbedderError

    config = LockedConfig.from_mapping(V2)
    with pytest.raises(EmbedderError) as caught:
        embedder_for(config, model_file=tmp_path / "none.onnx")
    assert "\n" not in str(caught.value)


def test_validate_reports_an_embedder_rule_at_its_line(registry_repo: RegistryRepo) -> None:
    version = "2025-09-07-143022-v1"
    data = {**V2, "chunk_version": version,
            "embedder": {**ONNX.to_dict(), "model_hash": None}}
    registry_repo.write(f"configs/{version}.yaml", _text(data).decode())
    result = run_cli("validate", "--repo", registry_repo.path)
    assert result.code == 1
    line = next(line for line in result.stdout.splitlines() if "model_hash" in line)
    assert f"configs/{version}.yaml:" in line and "an onnx embedder needs model_hash" in line
