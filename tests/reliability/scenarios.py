"""Scenario builders shared by the reliability tests: a registry whose next commit makes the
reconciler run every kind of action at once, corpora for ingest, and snapshots of what a user
would compare in PostgreSQL."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from registry.commands.reconcile import reconcile
from tests.database import Database, promote, table_of
from tests.helpers import PRODUCTION_YAML, RegistryRepo, training_text

NO_GRACE = PRODUCTION_YAML.replace("grace_period: 48h", "grace_period: 0s")
"""A retired table may be dropped by the very next run: Drop is reachable in one scenario."""


def admin_execute(admin: str, query: sql.Composable) -> None:
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(query)


def clone_database(admin: str, template: str) -> tuple[str, str]:
    """A new database copied from `template` (CREATE DATABASE ... TEMPLATE): (name, dsn)."""
    name = f"r_{uuid.uuid4().hex[:12]}"
    admin_execute(admin, sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
        sql.Identifier(name), sql.Identifier(template)))
    return name, make_conninfo(admin, dbname=name)


def create_database(admin: str) -> tuple[str, str]:
    name = f"r_{uuid.uuid4().hex[:12]}"
    admin_execute(admin, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return name, make_conninfo(admin, dbname=name)


def drop_database(admin: str, name: str) -> None:
    admin_execute(admin, sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
        sql.Identifier(name)))


@dataclass
class EveryAction:
    """A registry and a baseline database such that reconciling `change` runs CreateTable,
    Unretire, SwapProduction, Retire and Drop in one run (and Drop again in the next, the grace
    period being 0s). The baseline database is a template: clone it for each scenario."""

    repo: RegistryRepo
    admin: str
    template: str
    versions: list[str]
    baseline: str
    change: str

    @classmethod
    def build(cls, tmp: Path, tokenizer_file: Path, admin: str) -> EveryAction:
        repo = RegistryRepo.create(tmp, tokenizer_file, NO_GRACE)
        v1, v2, v3, v4, v5 = (repo.locked(chunk_size=size) for size in (100, 120, 140, 160, 180))
        template, dsn = create_database(admin)
        db = Database(dsn)
        reconcile(repo.path, dsn=dsn)
        db.fill(table_of(v1), rows=40)
        db.fill(table_of(v2), rows=25)
        promote(repo, v1)
        reconcile(repo.path, dsn=dsn)
        before_retire = repo.head()
        repo.git("rm", "--quiet", f"configs/{v3}.yaml", f"configs/{v5}.yaml")
        repo.git("commit", "--quiet", "-m", f"Retire {v3} and {v5}")
        repo.git("push", "--quiet", "origin", "main")
        result = reconcile(repo.path, dsn=dsn)
        assert [type(a).__name__ for a in result.plan.actions] == ["Retire", "Retire"]
        baseline = repo.head()
        v6 = repo.locked(chunk_size=200)
        repo.git("checkout", "--quiet", before_retire, "--", f"configs/{v3}.yaml")
        repo.git("rm", "--quiet", f"configs/{v4}.yaml")
        change = promote(repo, v2)
        return cls(repo, admin, template, [v1, v2, v3, v4, v5, v6], baseline, change)

    def clone(self) -> tuple[str, str]:
        return clone_database(self.admin, self.template)

    def close(self) -> None:
        drop_database(self.admin, self.template)


def snapshot(dsn: str, schema: str = "public") -> dict[str, Any]:
    """What must be identical after a crash and a rerun as after a clean run: bookkeeping
    statuses, the tables present, what the view reads, and every table's rows (count, distinct
    chunks, and an order-independent digest of the ids)."""
    db = Database(dsn, schema)
    managed = db.query("SELECT table_name, status FROM chunk_registry.managed_tables "
                       "ORDER BY table_name")
    tables = db.tables()
    rows = {}
    for table in tables:
        rows[table] = db.query(sql.SQL(
            "SELECT count(*), count(DISTINCT (doc_id, chunk_index)), "
            "coalesce(md5(string_agg(id, ',' ORDER BY id)), '') FROM {}.{}").format(
                sql.Identifier(schema), sql.Identifier(table)))[0]
    return {"managed": managed, "tables": tables, "view": db.view_target(), "rows": rows}


def invariants(dsn: str) -> list[str]:
    """Broken promises, in words: a managed table missing, duplicate chunks, an empty or
    missing production view."""
    db = Database(dsn)
    broken = []
    present = set(db.tables())
    for table, status in db.query("SELECT table_name, status FROM chunk_registry.managed_tables"):
        if status != "dropped" and table not in present:
            broken.append(f"managed table {table} ({status}) is missing")
    for table in present:
        total, distinct = db.query(sql.SQL(
            "SELECT count(*), count(DISTINCT (doc_id, chunk_index)) FROM {}").format(
                sql.Identifier(table)))[0]
        if total != distinct:
            broken.append(f"{table} holds {total - distinct} duplicate chunks")
    production = db.query("SELECT table_name FROM chunk_registry.managed_tables "
                          "WHERE status = 'production'")
    view = db.view_target()
    if [r[0] for r in production] != view:
        broken.append(f"the view reads {view}, production is {production}")
    elif view and db.count("document_chunks") == 0:
        broken.append("the production view is empty")
    return broken


def write_corpus(root: Path, documents: int, *, salt: str = "") -> Path:
    """`documents` markdown files of real prose (stdlib docstrings), deterministic per `salt`."""
    texts = [t for t in training_text() if len(t) > 200]
    root.mkdir(parents=True, exist_ok=True)
    for number in range(documents):
        first = texts[number % len(texts)]
        second = texts[(number * 7 + 3) % len(texts)]
        (root / f"doc{number:04}.md").write_text(
            f"# Document {number}{salt}\n\n## Overview\n\n{first}\n\n## Details {salt}\n\n"
            f"{second}\n")
    return root
