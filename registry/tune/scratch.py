"""Scratch schemas: where the trials of one `registry tune` run are built, and how they go.

A run takes a session advisory lock on its token first, then creates the schema
`registry_tune_<token>_p<pid>_<host>` marked with a COMMENT naming the token, the PID and the
host. Each trial is an UNLOGGED table there (no WAL: it is thrown away), dropped as soon as the
trial is measured; the schema is dropped when the run ends, whether it succeeded, failed or
was interrupted. A run killed outright (SIGKILL, a lost connection) cannot drop anything, but
its session ends with it, and so does its lock: the next run sweeps every marked schema whose
lock it can take. A live run, on this host or another, holds its lock, so its schema is never
swept; an unmarked schema is never touched, whatever its name; and nothing is dropped with
CASCADE, so no object of another schema that depends on a scratch table can go with it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from registry.config import LockedConfig
from registry.database.bookkeeping import BOOKKEEPING_SCHEMA
from registry.database.chunk_table import (
    EMBEDDING_COLUMN,
    ChunkTable,
    VectorColumn,
    hnsw_index_name,
    search_index_ddl,
    table_ddl,
)
from registry.database.connection import tune_lock_key
from registry.errors import Busy

SCRATCH_PREFIX = "registry_tune_"
MARKER_KIND = "chunk-registry tune scratch"


def host_tag() -> str:
    """Six hex characters of the host name: room in a 63-byte name, and the full name is in
    the marker."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]


@dataclass
class ScratchSchema:
    """One run's scratch schema, on the connection that holds its lock (autocommit)."""

    conn: psycopg.Connection[Any]
    token: str
    name: str
    tables: list[str] = field(default_factory=list)
    vector: VectorColumn | None = None
    """The embedding column every trial table gets (a base config that pins an embedder)."""

    @classmethod
    def create(cls, conn: psycopg.Connection[Any], token: str) -> ScratchSchema:
        """Lock `token` on `conn`, then create and mark the schema (lock first: a sweep never
        sees a live run's schema unlocked)."""
        got = conn.execute("SELECT pg_try_advisory_lock(%s)", (tune_lock_key(token),)).fetchone()
        if not (got and got[0]):
            raise Busy(f"another tune run holds the lock of token {token}",
                       fix="rerun: each run draws a new token")
        name = f"{SCRATCH_PREFIX}{token}_p{os.getpid()}_{host_tag()}"
        assert name != BOOKKEEPING_SCHEMA and len(name.encode()) <= 63
        marker = json.dumps({"kind": MARKER_KIND, "token": token, "pid": os.getpid(),
                             "host": socket.gethostname()}, sort_keys=True)
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("COMMENT ON SCHEMA {} IS {}").format(sql.Identifier(name),
                                                                 sql.Literal(marker)))
        return cls(conn, token, name)

    @staticmethod
    def table_name(number: int) -> str:
        return f"trial_{number}"

    def create_table(self, config: LockedConfig, number: int) -> ChunkTable:
        """An empty UNLOGGED chunk table for trial `number` (indexes come after the load)."""
        table = self.table_name(number)
        statements = table_ddl(self.name, table, chunk_version=config.chunk_version,
                               config_hash=config.config_hash,
                               prefix_policy=config.prefix_policy,
                               chunk_size=config.chunk_size, token_budget=config.token_budget,
                               unlogged=True, marker=False, generated_tsv=False,
                               vector=self.vector)
        self.conn.execute(statements[0])
        self.tables.append(table)
        return ChunkTable(config, self.name, table)

    def index(self, target: ChunkTable) -> None:
        """The indexes retrieval reads (the full-text GIN index; the primary key came with the
        table), built over the loaded rows: one sort instead of an insert per row. The
        (doc_id, chunk_index) and flagged-rows indexes of a served table are left out: no
        query of the evaluation reads them."""
        self.conn.execute(search_index_ddl(self.name, target.table))
        if self.vector is not None:  # the HNSW index the dense half of hybrid reads
            self.conn.execute(sql.SQL("CREATE INDEX {} ON {} USING hnsw ({} {}.{})").format(
                sql.Identifier(hnsw_index_name(target.table)), target.identifier,
                sql.Identifier(EMBEDDING_COLUMN), sql.Identifier(self.vector.type_schema),
                sql.Identifier(self.vector.opclass)))

    def no_flush(self) -> None:
        """Within a transaction: commit without waiting for the WAL flush. A scratch table is
        thrown away anyway, so a server crash losing its creation or drop loses nothing; only
        the catalog rows of DDL are WAL-logged here (the tables are UNLOGGED)."""
        self.conn.execute("SET LOCAL synchronous_commit = off")

    def drop_table(self, table: str) -> None:
        with self.conn.transaction():
            self.no_flush()
            self.conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(
                sql.Identifier(self.name, table)))
        if table in self.tables:
            self.tables.remove(table)

    def drop(self) -> None:
        """Drop the schema and its tables (no CASCADE), then release the lock."""
        try:
            _drop_schema(self.conn, self.name)
        finally:
            with contextlib.suppress(psycopg.Error):
                self.conn.execute("SELECT pg_advisory_unlock(%s)", (tune_lock_key(self.token),))


def _drop_schema(conn: psycopg.Connection[Any], name: str) -> None:
    tables = conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relkind IN ('r', 'p') ORDER BY 1", (name,)).fetchall()
    for (table,) in tables:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name, table)))
    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {}").format(sql.Identifier(name)))


@dataclass(frozen=True)
class Sweep:
    """What a run found of dead runs' schemas: removed, or kept with the reason."""

    removed: list[str]
    kept: list[str]


def marker_of(comment: str | None) -> dict[str, Any] | None:
    """The tune marker of a schema comment, None when it carries none."""
    if not comment:
        return None
    try:
        data = json.loads(comment)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("kind") != MARKER_KIND:
        return None
    return data if isinstance(data.get("token"), str) else None


def sweep(conn: psycopg.Connection[Any]) -> Sweep:
    """Drop the scratch schemas of runs that are gone (their lock is free); keep the others."""
    rows = conn.execute(
        "SELECT nspname, obj_description(oid, 'pg_namespace') FROM pg_namespace "
        "WHERE starts_with(nspname, %s) ORDER BY 1", (SCRATCH_PREFIX,)).fetchall()
    removed: list[str] = []
    kept: list[str] = []
    for name, comment in rows:
        marker = marker_of(comment)
        if marker is None or not name.startswith(f"{SCRATCH_PREFIX}{marker['token']}_"):
            continue  # not a scratch schema of ours: never touched
        key = tune_lock_key(marker["token"])
        got = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
        if not (got and got[0]):
            continue  # its run is alive
        try:
            _drop_schema(conn, name)
            removed.append(name)
        except psycopg.Error as err:
            kept.append(f"{name}: {str(err).splitlines()[0][:200]}")
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
    return Sweep(removed, kept)


def run_is_alive(conn: psycopg.Connection[Any], token: str) -> bool:
    """Whether the run of `token` still holds its lock (a dead one's is free)."""
    key = tune_lock_key(token)
    got = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
    if got and got[0]:
        conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
        return False
    return True
