"""What a user would check in PostgreSQL: the view's target, tables, bookkeeping rows; and a
stand-in for an ingest (real rows through a real INSERT) so promotions have data to serve."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from registry.config import ingest_run_id_for, set_production_pointer
from tests.helpers import RegistryRepo


@dataclass
class Database:
    dsn: str
    schema: str = "public"

    def query(self, query: str | sql.Composed, params: Any = None) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            return conn.execute(query, params).fetchall()

    def execute(self, query: str | sql.Composed, params: Any = None) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(query, params)

    def view_target(self, view: str = "document_chunks") -> list[str]:
        """The tables the view reads (one when the registry made it)."""
        rows = self.query(
            "SELECT DISTINCT t.relname FROM pg_rewrite r JOIN pg_depend d ON d.objid = r.oid "
            "AND d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass "
            "JOIN pg_class t ON t.oid = d.refobjid WHERE r.ev_class = to_regclass(%s) "
            "AND d.refobjid <> r.ev_class", (f"{self.schema}.{view}",))
        return sorted(r[0] for r in rows)

    def relkind(self, name: str) -> str | None:
        rows = self.query("SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)",
                          (f"{self.schema}.{name}",))
        return str(rows[0][0]) if rows else None

    def tables(self) -> list[str]:
        rows = self.query("SELECT tablename FROM pg_tables WHERE schemaname = %s "
                          "AND tablename LIKE 'document\\_chunks\\_%%' ORDER BY 1", (self.schema,))
        return [r[0] for r in rows]

    def managed(self) -> dict[str, str]:
        """table -> status in chunk_registry.managed_tables."""
        rows = self.query("SELECT table_name, status FROM chunk_registry.managed_tables")
        return dict(rows)  # type: ignore[arg-type]

    def runs(self) -> list[dict[str, Any]]:
        rows = self.query("SELECT id, outcome, git_commit, plan, error FROM "
                          "chunk_registry.reconcile_runs ORDER BY id")
        return [dict(zip(("id", "outcome", "commit", "plan", "error"), r, strict=True))
                for r in rows]

    def fill(self, table: str, rows: int = 3, *, version: str | None = None) -> None:
        """Real rows in a shadow table, as an ingest would leave them."""
        chunk_version, config_hash = self.query(
            "SELECT chunk_version, config_hash FROM chunk_registry.managed_tables "
            "WHERE table_name = %s AND schema_name = %s", (table, self.schema))[0]
        chunk_version = version or chunk_version
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            for i in range(rows):
                conn.execute(
                    sql.SQL("INSERT INTO {}.{} (id, doc_id, chunk_index, embedding_text, "
                            "bm25_text, embedding_token_count, bm25_token_count, chunk_version, "
                            "ingest_run_id) VALUES (%s, %s, %s, %s, %s, 10, 8, %s, %s)").format(
                        sql.Identifier(self.schema), sql.Identifier(table)),
                    (f"{table}-{i}", "doc-1", i, f"Document: d\n\nchunk {i} of {table}",
                     f"chunk {i} of {table}", chunk_version,
                     ingest_run_id_for(chunk_version, config_hash)),
                )

    def count(self, relation: str) -> int:
        return int(self.query(sql.SQL("SELECT count(*) FROM {}.{}").format(
            sql.Identifier(self.schema), sql.Identifier(relation)))[0][0])


def table_of(version: str) -> str:
    return "document_chunks_" + version.replace("-", "_")


def promote(repo: RegistryRepo, version: str) -> str:
    """A promotion merged on main: production.yaml's pointer edited and pushed."""
    raw = (repo.path / "configs" / "production.yaml").read_bytes()
    return repo.write("configs/production.yaml", set_production_pointer(raw, version).decode(),
                      f"Promote {version}")


def retire(repo: RegistryRepo, version: str) -> str:
    """A retirement merged on main: the config file deleted and pushed."""
    repo.git("rm", "--quiet", f"configs/{version}.yaml")
    repo.git("commit", "--quiet", "-m", f"Retire {version}")
    repo.git("push", "--quiet", "origin", "main")
    return repo.head()
