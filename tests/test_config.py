"""The config model: derived names and hashes, canonical YAML, the seed's environment."""

from __future__ import annotations

import pytest

from registry.config import (
    ChunkingConfig,
    LockedConfig,
    load_locked,
    load_production,
    overlap_tokens,
    set_production_pointer,
    table_name_for,
)
from registry.errors import ConfigInvalid
from tests.test_bad_input import GOOD, good_text


def seed() -> LockedConfig:
    return LockedConfig.from_mapping(GOOD)


def test_derived_names_follow_the_design() -> None:
    config = seed()
    assert table_name_for(config.chunk_version) == "document_chunks_2025_09_07_143022_v1"
    assert table_name_for(config.chunk_version, "chunks") == "chunks_2025_09_07_143022_v1"
    assert config.ingest_run_id == f"2025-09-07-143022-v1-{config.config_hash[:8]}"
    assert config.overlap_tokens == 45
    assert config.label() == "450/0.10/J=0.8/prefix-A"
    assert config.token_budget == 512


def test_config_hash_covers_exactly_the_chunking_fields() -> None:
    base = seed()
    same = LockedConfig.from_mapping({**GOOD, "created_by": "Other <o@example.com>",
                                      "baseline_metrics": {}})
    changed = [
        LockedConfig.from_mapping({**GOOD, field: value})
        for field, value in [("chunk_size", 400), ("overlap_ratio", 0.2),
                             ("jaccard_threshold", 0.9), ("prefix_policy", "B"),
                             ("embedder_name", "other/model"),
                             ("tokenizer_hash", "sha256:" + "cd" * 32)]
    ]
    assert same.config_hash == base.config_hash
    assert len({c.config_hash for c in changed} | {base.config_hash}) == 7


def test_canonical_dump_round_trips_byte_for_byte() -> None:
    config = seed()
    text = config.dump()
    loaded, _ = load_locked(text.encode(), "configs/x.yaml")
    assert loaded == config
    assert loaded.dump() == text


@pytest.mark.parametrize(("size", "ratio", "expected"), [(450, 0.10, 45), (100, 0.125, 13),
                                                         (10, 0.5, 5), (7, 0.5, 4), (1000, 0.0, 0)])
def test_overlap_rounds_half_up(size: int, ratio: float, expected: int) -> None:
    assert overlap_tokens(size, ratio) == expected


def test_from_env_applies_overrides_within_guardrails() -> None:
    env = ChunkingConfig.from_env({"CHUNK_SIZE": "300", "PREFIX_POLICY": "b",
                                   "EVAL_DISABLE_CACHE": "true"}, base=seed())
    assert (env.chunk_size, env.prefix_policy, env.eval_disable_cache) == (300, "B", True)
    assert env.overlap_ratio == 0.1
    assert env.mismatches(seed()) == ["CHUNK_SIZE=300 (locked: 450)", "PREFIX_POLICY=B (locked: A)"]
    assert ChunkingConfig.from_env({}, base=seed()).mismatches(seed()) == []


@pytest.mark.parametrize(("name", "value", "message"), [
    ("CHUNK_SIZE", "2000", "CHUNK_SIZE=2000 is outside the guardrail [1, 1000]"),
    ("CHUNK_SIZE", "big", "CHUNK_SIZE='big' is not a int"),
    ("OVERLAP_RATIO", "nan", "OVERLAP_RATIO=nan is outside the guardrail"),
    ("JACCARD_THRESHOLD", "0.1", "JACCARD_THRESHOLD=0.1 is outside the guardrail [0.5, 1]"),
    ("PREFIX_POLICY", "Z", "PREFIX_POLICY='Z' is not A or B"),
    ("CHUNK_VERSION", "v1; drop", "CHUNK_VERSION='v1; drop' is not a chunk version"),
])
def test_from_env_refuses_bad_values_with_one_line(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigInvalid) as caught:
        ChunkingConfig.from_env({name: value})
    assert str(caught.value).startswith(f"environment: {message}")


def test_production_defaults_and_pointer_edit_keeps_the_rest() -> None:
    raw = b"# which table production reads\nproduction: null\nretention: {grace_period: 2d}\n"
    settings, _ = load_production(raw, "configs/production.yaml")
    assert settings.production is None and settings.grace_period.days == 2
    assert settings.keep_previous == 1 and settings.target_snapshot_size == (30.0, 60.0)
    edited = set_production_pointer(raw, "2025-09-07-143022-v1")
    assert edited == raw.replace(b"production: null", b"production: 2025-09-07-143022-v1")
    assert load_production(edited, "p")[0].production == "2025-09-07-143022-v1"


def test_load_locked_raises_the_first_problem_as_one_line() -> None:
    with pytest.raises(ConfigInvalid) as caught:
        load_locked(good_text(chunk_size=0, overlap_ratio=0.9).encode(), "configs/x.yaml")
    assert str(caught.value) == ("configs/x.yaml:3: chunk_size 0 is below the hard floor 1 (lock "
                                 "a new version with --chunk-size between 1 and 1000; 1 more: run "
                                 "`registry validate`)")
