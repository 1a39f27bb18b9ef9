"""Least privilege: the whole lifecycle (reconcile, ingest, eval, promote, rollback, retire,
drop, health, status) as a role that is not a superuser and holds exactly one grant, CREATE on
its database; it creates and so owns `chunk_registry` and the target schema. Applications read
production through a role granted SELECT on the view alone: the grant survives every swap, and
that role cannot read the versioned tables themselves."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.database import Database, promote, retire, table_of
from tests.helpers import RegistryRepo, run_cli
from tests.reliability.scenarios import NO_GRACE, write_corpus

pytestmark = pytest.mark.reliability
SCHEMA = "rag"


@dataclass
class Roles:
    registry: str
    reader: str
    registry_dsn: str
    reader_dsn: str


@pytest.fixture
def roles(dsn: str, pg_server: str) -> Iterator[Roles]:
    suffix = uuid.uuid4().hex[:8]
    registry, reader = f"registry_{suffix}", f"reader_{suffix}"
    dbname = conninfo_to_dict(dsn)["dbname"]
    with psycopg.connect(pg_server, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE "
                              "NOREPLICATION NOBYPASSRLS").format(sql.Identifier(registry)))
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER").format(sql.Identifier(reader)))
        admin.execute(sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
            sql.Identifier(dbname), sql.Identifier(registry)))
    yield Roles(registry, reader, make_conninfo(dsn, user=registry), make_conninfo(dsn, user=reader))
    with psycopg.connect(dsn, autocommit=True) as admin:
        for role in (reader, registry):
            admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
    with psycopg.connect(pg_server, autocommit=True) as admin:
        for role in (reader, registry):
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def read_production(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}.document_chunks").format(
            sql.Identifier(SCHEMA))).fetchone()
        return int(row[0]) if row else -1


def test_the_whole_lifecycle_runs_as_a_role_with_only_create_on_its_database(
    tmp_path: Any, tokenizer_file: Any, roles: Roles, figures: dict[str, Any]
) -> None:
    repo = RegistryRepo.create(tmp_path, tokenizer_file,
                               NO_GRACE.replace("schema: public", f"schema: {SCHEMA}"))
    path, dsn = str(repo.path), roles.registry_dsn
    corpus = write_corpus(tmp_path / "corpus", 20)
    cases = tmp_path / "cases.jsonl"
    cases.write_text('{"query_id": "q1", "query": "module documentation", "gt_answer": "module"}\n')
    steps: dict[str, int] = {}

    def step(name: str, *args: Any) -> Any:
        result = run_cli(*args)
        steps[name] = result.code
        assert result.code == 0, (name, result.stdout, result.stderr)
        return result

    def reconcile(name: str) -> Any:
        return step(name, "reconcile", "--repo", path, "--dsn", dsn)

    v1, v2, v3 = (repo.locked(chunk_size=size) for size in (100, 120, 140))
    reconcile("create tables (and the schemas)")
    for version in (v1, v2):
        step(f"ingest {version}", "ingest", version, "--repo", path, "--dsn", dsn, "--source",
             corpus, "--tokenizer-file", tokenizer_file, "--workers", "1")
    promote(repo, v1)
    reconcile("first promotion (creates the view)")
    with psycopg.connect(dsn, autocommit=True) as conn:  # the owner lets applications read
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(
            sql.Identifier(SCHEMA), sql.Identifier(roles.reader)))
        conn.execute(sql.SQL("GRANT SELECT ON {}.document_chunks TO {}").format(
            sql.Identifier(SCHEMA), sql.Identifier(roles.reader)))
    first = read_production(roles.reader_dsn)
    step("eval --compare", "eval", "--compare", v2, "--against", "production", "--cases", cases,
         "--repo", path, "--dsn", dsn)
    promote(repo, v2)
    reconcile("promotion (view swap)")
    second = read_production(roles.reader_dsn)
    repo.git("revert", "--no-edit", "HEAD")
    repo.git("push", "--quiet", "origin", "main")
    reconcile("rollback (swap back)")
    third = read_production(roles.reader_dsn)
    retire(repo, v3)
    reconcile("retire")
    reconcile("drop after the grace period")
    health = run_cli("health", "--repo", path, "--dsn", dsn, "--tokenizer-file", tokenizer_file)
    step("status", "status", "--repo", path, "--dsn", dsn)

    db = Database(dsn, SCHEMA)
    with psycopg.connect(dsn, autocommit=True) as conn:
        superuser = conn.execute("SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles "
                                 "WHERE rolname = current_user").fetchone()
        owners = conn.execute(
            "SELECT DISTINCT pg_get_userbyid(c.relowner) FROM pg_class c JOIN pg_namespace n ON "
            "n.oid = c.relnamespace WHERE n.nspname IN ('rag', 'chunk_registry')").fetchall()
    with psycopg.connect(roles.reader_dsn, autocommit=True) as conn, pytest.raises(
            psycopg.errors.InsufficientPrivilege):
        conn.execute(sql.SQL("SELECT count(*) FROM {}.{}").format(
            sql.Identifier(SCHEMA), sql.Identifier(table_of(v1))))

    assert superuser == (False, False, False)
    assert owners == [(roles.registry,)]
    assert db.view_target() == [table_of(v1)]
    assert db.managed() == {table_of(v1): "production", table_of(v2): "shadow",
                            table_of(v3): "dropped"}
    assert db.tables() == sorted([table_of(v1), table_of(v2)])
    assert first > 0 and second > 0 and third == first
    assert health.code in (0, 18), health.stderr
    figures["least privilege"] = {"role": "LOGIN, not superuser, CREATE on its database",
                                  "steps": len(steps) + 1, "passed": len(steps) + 1}
