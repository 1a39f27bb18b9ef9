"""The application API: retrieval code asks the registry which table to read."""

from __future__ import annotations

import pytest

import registry
from registry.errors import ConfigInvalid
from tests.database import promote, table_of
from tests.helpers import RegistryRepo


def test_production_reads_the_view_and_a_shadow_reads_its_table(
    registry_repo: RegistryRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    v1, v2 = registry_repo.locked(), registry_repo.locked(chunk_size=300)
    promote(registry_repo, v1)
    monkeypatch.setenv("REGISTRY_REPO", str(registry_repo.path))

    assert registry.retrieval_table() == "public.document_chunks"
    assert registry.retrieval_table(version=v2) == f"public.{table_of(v2)}"
    monkeypatch.setenv("CHUNK_VERSION", v2)
    assert registry.retrieval_table(use_shadow=True) == f"public.{table_of(v2)}"
    assert registry.active_config().chunk_version == v1
    assert registry.active_config().chunk_size == 450


def test_unknown_versions_and_missing_production_are_clear_errors(
    registry_repo: RegistryRepo,
) -> None:
    registry_repo.locked()

    with pytest.raises(ConfigInvalid, match="no locked config 2020-01-01-000000-v1"):
        registry.retrieval_table(version="2020-01-01-000000-v1", repo=registry_repo.path)
    with pytest.raises(ConfigInvalid, match="no shadow version"):
        registry.retrieval_table(use_shadow=True, repo=registry_repo.path)
    with pytest.raises(ConfigInvalid, match="names no production config"):
        registry.active_config(repo=registry_repo.path)
