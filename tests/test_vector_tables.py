"""Configs that pin an embedder get `embedding vector(dim)` and an HNSW index (issue 16, item 3);
where pgvector is missing and the role cannot create it, reconcile refuses in one line naming
the admin's statement. The REGISTRY_TEST_DSN server (PostgreSQL 15) has no pgvector: there the
refusal is what is tested, and the vector parts skip saying why."""

from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from registry.database.chunk_table import EMBEDDING_COLUMN, vector_opclass
from registry.embedding.spec import EmbedderSpec
from registry.tokenizer import file_hash
from tests.database import Database, table_of
from tests.helpers import RegistryRepo, run_cli

FINGERPRINT = "sha256:" + "12" * 32


def spec_for(repo: RegistryRepo, *, normalize: bool = True, dimension: int = 8) -> EmbedderSpec:
    """An openai-style pin whose declared tokenizer is the repo's (the reconciler never runs
    the model: the dimension and normalization are all it reads)."""
    return EmbedderSpec(backend="openai", name="test-embedder", dimension=dimension,
                        normalize=normalize, max_tokens=512,
                        tokenizer_hash=file_hash(repo.tokenizer_file), fingerprint=FINGERPRINT)


def has_pgvector(dsn: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT EXISTS (SELECT 1 FROM pg_available_extensions "
                           "WHERE name = 'vector')").fetchone()
    return bool(row and row[0])


def needs_pgvector(dsn: str) -> None:
    if not has_pgvector(dsn):
        pytest.skip("this server has no pgvector (the PostgreSQL 15 at REGISTRY_TEST_DSN): the "
                    "vector column and index need it; the refusal is tested here instead")


def locked_with_embedder(repo: RegistryRepo, spec: EmbedderSpec) -> str:
    return repo.locked(chunk_size=200, embedder_spec=spec)


def vector_shape(db: Database, table: str) -> tuple[str, str, list[str]]:
    column = db.query("SELECT format_type(atttypid, atttypmod), attnotnull::text FROM pg_attribute "
                      "WHERE attrelid = %s::regclass AND attname = %s",
                      (f"public.{table}", EMBEDDING_COLUMN))
    indexes = db.query("SELECT pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = "
                       "%s::regclass AND pg_get_indexdef(indexrelid) LIKE '%%hnsw%%'",
                       (f"public.{table}",))
    return column[0][0], column[0][1], [r[0] for r in indexes]


@pytest.mark.parametrize("normalize", [True, False], ids=["normalized", "raw"])
def test_a_config_with_an_embedder_gets_a_vector_column_and_an_hnsw_index(
        registry_repo: RegistryRepo, dsn: str, normalize: bool) -> None:
    needs_pgvector(dsn)
    spec = spec_for(registry_repo, normalize=normalize)
    version = locked_with_embedder(registry_repo, spec)

    result = run_cli("reconcile", "--repo", registry_repo.path, "--dsn", dsn)

    assert result.code == 0, result.stdout + result.stderr
    db = Database(dsn)
    type_name, not_null, indexes = vector_shape(db, table_of(version))
    assert type_name.endswith("vector(8)") and not_null == "true"
    expected = "vector_ip_ops" if normalize else "vector_cosine_ops"
    assert vector_opclass(spec) == expected
    assert len(indexes) == 1 and "USING hnsw" in indexes[0] and expected in indexes[0]
    plan = run_cli("plan", "--repo", registry_repo.path, "--dsn", dsn, "--detailed-exitcode")
    assert plan.code == 0, plan.stdout


def test_a_format_1_config_gets_no_vector_column(registry_repo: RegistryRepo, dsn: str) -> None:
    version = registry_repo.locked(chunk_size=200)
    assert run_cli("reconcile", "--repo", registry_repo.path, "--dsn", dsn).code == 0
    columns = Database(dsn).query("SELECT attname FROM pg_attribute WHERE attrelid = "
                                  "%s::regclass AND attname = %s",
                                  (f"public.{table_of(version)}", EMBEDDING_COLUMN))
    assert columns == []


@pytest.mark.parametrize("damage", ["DROP INDEX {t}_hnsw",
                                    "ALTER TABLE {t} ALTER COLUMN embedding DROP NOT NULL"])
def test_a_damaged_vector_column_or_index_is_drift(
        registry_repo: RegistryRepo, dsn: str, damage: str) -> None:
    needs_pgvector(dsn)
    version = locked_with_embedder(registry_repo, spec_for(registry_repo))
    assert run_cli("reconcile", "--repo", registry_repo.path, "--dsn", dsn).code == 0
    table = table_of(version)
    Database(dsn).execute(damage.format(t=table))

    plan = run_cli("plan", "--repo", registry_repo.path, "--dsn", dsn, "--detailed-exitcode")

    assert plan.code != 0
    assert "drift" in plan.stdout and table in plan.stdout
    assert "hnsw" in plan.stdout or "embedding" in plan.stdout


def test_without_pgvector_and_the_right_to_create_it_reconcile_refuses_in_one_line(
        registry_repo: RegistryRepo, dsn: str, tmp_path: Path) -> None:
    """A role that is not superuser cannot CREATE EXTENSION vector (not a trusted extension);
    on a server without pgvector nobody can. Either way: one line naming the statement."""
    available = has_pgvector(dsn)
    role = f"r_{uuid.uuid4().hex[:10]}"
    database = conninfo_to_dict(dsn)["dbname"]
    admin = Database(dsn)
    admin.execute(f'CREATE ROLE "{role}" LOGIN PASSWORD \'pw\'')
    admin.execute(f'GRANT CREATE ON DATABASE "{database}" TO "{role}"')
    admin.execute(f'GRANT CREATE ON SCHEMA public TO "{role}"')
    user_dsn = make_conninfo(dsn, user=role, password="pw")
    try:
        version = locked_with_embedder(registry_repo, spec_for(registry_repo))
        bm25_only = registry_repo.locked(chunk_size=150)

        result = run_cli("reconcile", "--repo", registry_repo.path, "--dsn", user_dsn)

        assert result.code == 7  # refused by a safety rule
        refusal = result.stderr.splitlines()
        assert len(refusal) == 1, result.stdout + result.stderr
        assert "`CREATE EXTENSION vector;`" in refusal[0]
        assert f"database {database}" in refusal[0]
        if not available:
            assert "not installed on the server" in refusal[0]
        assert admin.tables() == [table_of(bm25_only)]  # the BM25-only config is not held back
        if available:
            admin.execute("CREATE EXTENSION vector")
            again = run_cli("reconcile", "--repo", registry_repo.path, "--dsn", user_dsn)
            assert again.code == 0, again.stdout + again.stderr
            assert table_of(version) in admin.tables()
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP OWNED BY "{role}"')
        with psycopg.connect(make_conninfo(dsn, dbname="postgres"), autocommit=True) as conn:
            conn.execute(f'DROP ROLE IF EXISTS "{role}"')


def test_the_offline_plan_names_the_vector_column(registry_repo: RegistryRepo) -> None:
    registry_repo.locked(chunk_size=200)
    version = registry_repo.lock(chunk_size=200, embedder_spec=replace(
        spec_for(registry_repo), dimension=16))
    plan = run_cli("plan", "--repo", registry_repo.path, "--base", "main", "--head",
                   f"lock/{version}")
    assert plan.code == 0, plan.stderr
    assert "vector(16)" in plan.stdout and "hnsw" in plan.stdout.lower()


def test_the_served_state_carries_the_whole_embedder_pin(registry_repo: RegistryRepo) -> None:
    from registry.reconciler.served import embedder_spec as served_embedder
    from registry.repository.git import Git
    from registry.repository.state import committed_state

    spec = spec_for(registry_repo, normalize=False)
    version = locked_with_embedder(registry_repo, spec)
    state = committed_state(Git(registry_repo.path), None)

    assert served_embedder(state.config(version)) == spec.to_dict()
    bm25_only = registry_repo.locked(chunk_size=300)
    assert served_embedder(committed_state(Git(registry_repo.path), None).config(bm25_only)) \
        is None
