"""Injection: even with validation bypassed, no statement interpolates a name.

1. A static scan of `registry/` (sqlscan.py) finds no SQL built by f-string, `%`, `str.format`
   or `+`, and no statement that composes a variable name and also passes client-side
   parameters (psycopg does not escape `%` inside identifiers). The scan is first shown to
   catch each of those on a planted sample.
2. Hostile schema, view, table and version names go straight to every SQL helper (table
   creation, ingest's COPY, the view swap, retire, drop, the planner's catalog read, row counts,
   the health scan and the evaluation query): the catalog then holds exactly the quoted names,
   a canary table is untouched and nothing else changed.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from registry.config import ProductionConfig, table_name_for
from registry.database.bookkeeping import ensure_schema
from registry.database.chunk_table import ChunkTable
from registry.database.connection import connect
from registry.ingest.pipeline import run_ingest
from registry.quality.evaluation import Case, evaluate_table
from registry.quality.health import check_table
from registry.reconciler.actual import read_actual, row_counts
from registry.reconciler.applier import Applier
from registry.reconciler.planner import CreateTable, Drop, Plan, Retire, SwapProduction
from tests.helpers import locked_config
from tests.reliability.scenarios import write_corpus
from tests.reliability.sqlscan import scan_package, scan_source

pytestmark = pytest.mark.reliability
PACKAGE = Path(__file__).parents[2] / "registry"

PLANTED = '''
from psycopg import sql
TABLE = "chunks"
BUILT = f"SELECT * FROM {TABLE}"

def bad(conn, name, value):
    conn.execute(f"SELECT * FROM {name}")                                   # line 7
    conn.execute("SELECT * FROM %s" % name)                                 # line 8
    conn.execute("SELECT * FROM {}".format(name))                           # line 9
    conn.execute("SELECT * FROM " + name)                                   # line 10
    query = f"DROP TABLE {name}"
    conn.execute(query)                                                     # line 12
    conn.execute(sql.SQL(f"SELECT * FROM {name}"))                          # line 13
    conn.execute(BUILT)                                                     # line 14
    conn.execute(sql.SQL("SELECT {} = %s").format(sql.Identifier(name)), (value,))  # line 15
    cursor = conn.cursor()
    cursor.copy("COPY " + name + " FROM STDIN")                             # line 17

def good(conn, name, value):
    conn.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(name)))
    conn.execute("SELECT * FROM t WHERE a = %s", (value,))
    conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(f"{value}ms")))
    conn.execute(sql.SQL("SELECT {} = %s").format(sql.Identifier(TABLE)), (value,))
    conn.execute("SELECT 1 " "FROM t")
'''


def test_the_scan_catches_every_planted_kind_of_formatted_sql() -> None:
    found = scan_source(PLANTED, "planted.py")
    lines = sorted({f.line for f in found.findings})
    assert lines == [7, 8, 9, 10, 12, 13, 14, 15, 17], [f.render() for f in found.findings]
    assert found.statements == 14


def test_no_statement_in_the_package_is_built_by_string_formatting(
    figures: dict[str, Any]
) -> None:
    scan = scan_package(PACKAGE)
    figures["sql statements scanned"] = {"statements": scan.statements,
                                         "formatted": len(scan.findings)}
    assert scan.statements >= 40
    assert not scan.findings, "\n".join(f.render() for f in scan.findings)


# ---------------------------------------------------------------------------------------------
# Hostile identifiers straight to the SQL layer

HOSTILE = [
    ('we"ird; DROP TABLE canary; --', "dc'); DROP TABLE canary; --", 'v%(q)s %s {} $1"x'),
    ("Schema With Spaces", "ünïcödé таблица", "２０２５‐v１"),
    ("a.b", 'x"; DROP TABLE public.canary; --', "../../etc\\passwd"),
]


def catalog(conn: psycopg.Connection[Any]) -> set[tuple[str, str, str]]:
    rows = conn.execute(
        "SELECT n.nspname, c.relname, c.relkind::text FROM pg_class c JOIN pg_namespace n ON "
        "n.oid = c.relnamespace WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', "
        "'pg_toast') AND n.nspname NOT LIKE 'pg\\_temp%' AND n.nspname NOT LIKE "
        "'pg\\_toast\\_temp%'").fetchall()
    return {(r[0], r[1], r[2]) for r in rows}


def objects_of(schema: str, table: str) -> set[tuple[str, str, str]]:
    return {(schema, table, "r"), (schema, f"{table}_pkey", "i"), (schema, f"{table}_doc", "i"),
            (schema, f"{table}_tsv", "i"), (schema, f"{table}_bad", "i")}


@pytest.mark.parametrize("names", HOSTILE, ids=["quotes-semicolons", "spaces-unicode", "dots"])
def test_hostile_names_given_to_every_sql_helper_land_in_the_catalog_exactly_quoted(
    names: tuple[str, str, str], dsn: str, tokenizer_file: Path, tmp_path: Path,
    figures: dict[str, Any]
) -> None:
    import hashlib

    schema, base, version = names
    settings = ProductionConfig(production=version, schema=schema, base_name=base,
                                grace_period=timedelta(0), keep_previous=1)
    hashed = "sha256:" + hashlib.sha256(tokenizer_file.read_bytes()).hexdigest()
    served, retired = (locked_config(chunk_version=v, tokenizer_hash=hashed, chunk_size=100)
                       for v in (version, version + "'2"))
    table, other = (table_name_for(c.chunk_version, base) for c in (served, retired))
    target = ChunkTable(served, schema, table, settings.identities)
    assert all(len(name.encode()) + 5 <= 63 for name in (table, other, schema, base))
    conn = connect(dsn)
    try:
        conn.execute("CREATE TABLE public.canary (x int)")
        ensure_schema(conn)
        before = catalog(conn)
        now = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
        applier = Applier(conn, settings, "deadbeef", now, schema_exists=False)
        created = applier.apply(Plan("test", None, "", [
            CreateTable.of(schema, table, served), CreateTable.of(schema, other, retired)]))
        report = run_ingest(target, write_corpus(tmp_path / "c", 8), dsn,
                            tokenizer_file.read_text(), workers=1)
        swapped = applier.apply(Plan("test", None, "", [
            SwapProduction(schema, base, None, table, version)]))
        actual = read_actual(conn, settings)
        counted = row_counts(conn, schema, [table, other])
        health = check_table(conn, target)
        evaluation = evaluate_table(conn, target, [
            Case("q1", "module documentation", "module")], k=5, top=2)
        later = Applier(conn, settings, "deadbeef", now + timedelta(hours=1))
        retired_result = later.apply(Plan("test", None, "", [
            Retire(schema, other, retired.chunk_version, "now")]))
        dropped = Applier(conn, settings, "deadbeef", now + timedelta(hours=2)).apply(
            Plan("test", None, "", [Drop(schema, other, retired.chunk_version, "now")]))
        after = catalog(conn)
        managed = conn.execute("SELECT schema_name, table_name, status FROM "
                               "chunk_registry.managed_tables ORDER BY table_name").fetchall()
        view_reads = conn.execute(
            "SELECT DISTINCT tn.nspname, t.relname FROM pg_rewrite r JOIN pg_depend d ON "
            "d.objid = r.oid AND d.classid = 'pg_rewrite'::regclass JOIN pg_class t ON t.oid = "
            "d.refobjid JOIN pg_namespace tn ON tn.oid = t.relnamespace WHERE r.ev_class = "
            "to_regclass(%s) AND d.refobjid <> r.ev_class",
            (sql.Identifier(schema, base).as_string(conn),)).fetchall()
        stored = conn.execute(sql.SQL("SELECT DISTINCT chunk_version, ingest_run_id FROM {}")
                              .format(sql.Identifier(schema, table))).fetchall()
    finally:
        conn.close()

    assert [r.outcome for r in created + swapped + retired_result + dropped] == ["applied"] * 5, [
        r.error for r in created + swapped + retired_result + dropped]
    assert after - before == objects_of(schema, table) | {(schema, base, "v")}
    assert before - after == set(), "something outside the hostile names changed"
    assert ("public", "canary", "r") in after
    assert set(managed) == {(schema, table, "production"), (schema, other, "dropped")}
    assert view_reads == [(schema, table)]
    assert stored == [(version, served.ingest_run_id)]
    assert report.chunks > 0 and counted == {table: report.chunks, other: 0}
    assert set(actual.relations) == {base, table, other}
    assert health.exists and health.rows == report.chunks and health.prefix_leakage == 0
    assert evaluation.table == f"{schema}.{table}" and len(evaluation.cases) == 1
    figures.setdefault("hostile identifiers", {"name sets": 0, "helpers": 10})
    figures["hostile identifiers"]["name sets"] += 1
