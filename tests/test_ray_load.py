"""The Ray ingest's load (`ray_engine._copy_shards`, no Ray needed): each shard is COPYed
into the run's staging table after deleting what an earlier attempt left of it. That delete
runs for every shard, so it must not read the whole staging table each time (a corpus of N
shards would read the table N times over: quadratic in the corpus)."""

from __future__ import annotations

import psycopg
from psycopg import sql

from registry.database import bookkeeping
from registry.database.chunk_table import COPY_TYPES, ROW_COLUMNS
from registry.ingest.pipeline import IngestReport
from registry.ingest.ray_engine import DecidedShard, _copy_shards

ROWS_PER_SHARD = 400


def shard(number: int) -> DecidedShard:
    rows = [(number * 40 + i // 10, (f"{number}-{i}", f"doc{number * 40 + i // 10}", i % 10,
                                      "embedding text", "bm25 text", 3, 2, "v1", "run1"))
            for i in range(ROWS_PER_SHARD)]
    return DecidedShard(number, 40, "node", rows, IngestReport("v1", "run1", "t", "s",
                                                               "corpus", 1))


def test_loading_a_shard_does_not_read_every_earlier_shard(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        bookkeeping.ensure_schema(conn)
        conn.execute(sql.SQL("CREATE TABLE public.chunks ({})").format(sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(kind))
            for name, kind in zip(ROW_COLUMNS, COPY_TYPES, strict=True))))
        bookkeeping.create_ingest_staging(conn, 1, sql.Identifier("public", "chunks"),
                                          ROW_COLUMNS)
        staging = f"{bookkeeping.STAGING_PREFIX}1"
        _copy_shards(conn, staging, [shard(n) for n in range(250)], COPY_TYPES, "node")
    with psycopg.connect(dsn) as conn:  # one transaction of a new session: its own statistics
        _copy_shards(conn, staging, [shard(250), shard(3)], COPY_TYPES, "node")  # new; retried
        row = conn.execute("SELECT coalesce(seq_tup_read, 0) FROM pg_stat_xact_user_tables "
                           "WHERE schemaname = %s AND relname = %s",
                           (bookkeeping.BOOKKEEPING_SCHEMA, staging)).fetchone()
        count = conn.execute(sql.SQL("SELECT count(*), count(DISTINCT shard) FROM {}").format(
            bookkeeping.staging_table(1))).fetchone()
        conn.rollback()
    assert count == (251 * ROWS_PER_SHARD, 251), "a retried shard replaces its rows"
    read = row[0] if row else 0
    assert read < 10 * ROWS_PER_SHARD, (
        f"two shard loads read {read} rows of a {251 * ROWS_PER_SHARD}-row staging table")
