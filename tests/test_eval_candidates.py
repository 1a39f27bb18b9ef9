"""`registry eval` ranks a bounded set of candidates (issue 20, item 6: p95 <= 200 ms at 1M
rows): the rows matching the most query terms, level by level, at most k x
CANDIDATES_PER_RESULT of them; while the query matches no more rows than that, the result is
exactly ts_rank_cd over every match, as before."""

from __future__ import annotations

import json
from typing import Any

import psycopg
from psycopg import sql

from registry.database.chunk_table import table_ddl
from registry.quality.evaluation import (
    CANDIDATES_PER_RESULT,
    candidate_levels,
    relax_to_any,
    retrieval_statement,
)

TABLE = sql.Identifier("public", "document_chunks_2025_01_01_000000_v1")


def make_table(conn: psycopg.Connection[Any], common: int, best: int) -> None:
    """`common` rows holding one query term once, `best` rows holding all three, some rows
    holding none."""
    for statement in table_ddl("public", "document_chunks_2025_01_01_000000_v1",
                               chunk_version="2025-01-01-000000-v1", config_hash="0" * 64,
                               prefix_policy="A", chunk_size=400, token_budget=512,
                               registry="public.document_chunks"):
        conn.execute(statement)
    run = conn.execute("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = "
                       "%s::regclass AND pg_get_constraintdef(oid) LIKE '%%ingest_run_id%%'",
                       ("public.document_chunks_2025_01_01_000000_v1",)).fetchone()
    assert run is not None
    run_id = run[0].split("'")[1]
    texts = ([f"alpha meadow filler number {i}" for i in range(common)]
             + [f"alpha beta gamma orchard {i}" for i in range(best)]
             + [f"unrelated words {i}" for i in range(20)])
    with conn.cursor().copy(sql.SQL(
            "COPY {} (id, doc_id, chunk_index, embedding_text, bm25_text, embedding_token_count, "
            "bm25_token_count, chunk_version, ingest_run_id) FROM STDIN").format(TABLE)) as copy:
        for i, text in enumerate(texts):
            copy.write_row((f"{i:064x}", f"doc{i}", 0, text, text, 8, 6,
                            "2025-01-01-000000-v1", run_id))
    conn.execute(sql.SQL("ANALYZE {}").format(TABLE))


def ranked_rows(conn: psycopg.Connection[Any], statement: sql.Composed) -> int:
    """Rows the statement's largest sort (the ranking) read, from EXPLAIN ANALYZE."""
    plan = conn.execute(sql.SQL("EXPLAIN (ANALYZE, FORMAT JSON) {}").format(statement)
                        ).fetchone()
    assert plan is not None
    data = plan[0] if isinstance(plan[0], list) else json.loads(plan[0])

    def sort_inputs(node: dict[str, Any]) -> list[int]:
        own = [sum(int(child["Actual Rows"]) * int(child.get("Actual Loops", 1))
                   for child in node["Plans"])] if node["Node Type"] == "Sort" else []
        return own + [n for child in node.get("Plans", []) for n in sort_inputs(child)]

    found = sort_inputs(data[0]["Plan"])
    assert found
    return max(found)


def tsquery(conn: psycopg.Connection[Any], text: str) -> str:
    row = conn.execute("SELECT websearch_to_tsquery('english', %s)::text", (text,)).fetchone()
    assert row is not None
    return str(row[0])


def test_a_common_term_ranks_a_bounded_candidate_set_holding_every_all_terms_match(
    dsn: str
) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        make_table(conn, common=400, best=6)
        query = tsquery(conn, "alpha beta gamma")
        statement = retrieval_statement(TABLE, query, 5, "any")
        rows = [r[1] for r in conn.execute(statement).fetchall()]
        ranked = ranked_rows(conn, statement)

    assert ranked <= 5 * CANDIDATES_PER_RESULT, ranked
    assert len(rows) == 5 and all(r.startswith("alpha beta gamma") for r in rows), rows


def test_while_the_matches_fit_the_candidates_the_ranking_is_the_full_one(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        make_table(conn, common=300, best=6)
        query = tsquery(conn, "gamma meadow -orchard")
        full = conn.execute(sql.SQL(
            "SELECT bm25_text FROM {t} WHERE bm25_tsv @@ {q}::tsquery "
            "ORDER BY ts_rank_cd(bm25_tsv, {q}::tsquery) DESC, id LIMIT 50").format(
                t=TABLE, q=sql.Literal(relax_to_any(query)))).fetchall()
        ours = [(r[1],) for r in conn.execute(retrieval_statement(TABLE, query, 50, "any"))]

    assert len(full) == 50 and ours == full


def test_levels_go_from_every_term_down_to_any_term_keeping_exclusions() -> None:
    levels = candidate_levels("'a' & 'b' & 'c' & !'d'", "any")

    assert levels == [
        "( ( 'a' & 'b' & 'c' ) ) & !'d'",
        "( ( 'a' & 'b' ) | ( 'a' & 'c' ) | ( 'b' & 'c' ) ) & !'d'",
        "( 'a' | 'b' | 'c' ) & !'d'",
    ]
    assert candidate_levels("'a' & 'b'", "all") == ["'a' & 'b'"]
    many = candidate_levels(" & ".join(f"'t{i}'" for i in range(12)), "any")
    assert len(many) < 12 and many[-1].startswith("( 't0' | ")
