"""`registry demo`, the README's first command: the whole lifecycle, printed step by step, on a
database of its own that it removes afterwards."""

from __future__ import annotations

import re
from pathlib import Path

import psycopg
import pytest

from tests.helpers import run_cli


@pytest.mark.slow
def test_demo_runs_the_lifecycle_and_cleans_up(embedded_server: str) -> None:
    result = run_cli("demo", "--dsn", embedded_server)

    assert result.code == 0, result.stdout[-3000:] + result.stderr
    out = result.stdout
    first, second, third = sorted(set(re.findall(r"Locked (\S+) \(", out)))
    table_1 = f"document_chunks_{first.replace('-', '_')}"
    table_2 = f"document_chunks_{second.replace('-', '_')}"
    commands = [line[2:] for line in out.splitlines() if line.startswith("$ registry ")]
    assert commands[0].startswith("registry lock --chunk-size 450 --overlap-ratio 0.10 "
                                  "--jaccard-threshold 0.8 --prefix-policy A")
    assert "registry rollback" in commands and f"registry retire {second}" in commands
    swaps = re.findall(r"^applied: swap public\.document_chunks: (\S+) -> (\S+)$", out, re.M)
    assert swaps == [("nothing", table_1), (table_1, table_2), (table_2, table_1)]
    assert re.search(rf"^Ingested {first} into public\.{table_1}: \d+ chunks from 32 documents",
                     out, re.M)
    assert f"on public.{table_1}: healthy" in out
    assert "gate: PASSED" in out
    assert re.search(rf"- retire public\.{table_2} .*drop after", out)
    assert re.search(rf"rollback +{first} +{second} +Demo User", out)
    assert re.search(r"^Demo finished in \d+\.\d s\.$", out, re.M)
    # The config pinning the offline embedder: vectors ingested, BM25 and hybrid side by side.
    assert "registry lock --chunk-size 200 --overlap-ratio 0.10 --jaccard-threshold 0.8 " \
        "--prefix-policy A --embedder-onnx all-MiniLM-L6-v2-int8" in commands
    assert f"registry eval {third} --cases ../cases-vectors.jsonl --k 10 --top 3 " \
        "--retrieval bm25" in commands
    side = re.search(r"^METRIC +bm25 +hybrid\n((?:\w+ +[\d.]+ +[\d.]+\n){5})", out, re.M)
    assert side is not None, out[-2000:]
    rates = {line.split()[0]: (float(line.split()[1]), float(line.split()[2]))
             for line in side.group(1).splitlines()}
    assert set(rates) >= {"oracle_hit_rate", "filter_hit_rate"}
    assert all(0 <= bm25 <= 1 and 0 <= hybrid <= 1 for name, (bm25, hybrid) in rates.items()
               if name.endswith("hit_rate"))

    workdir = Path(re.findall(r"^# A registry repo with a bare origin, in (\S+)$", out, re.M)[0])
    assert not workdir.exists()
    with psycopg.connect(embedded_server) as conn:
        left = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'registry_demo%'")
        assert left.fetchall() == []
