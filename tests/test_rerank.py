"""Cross-encoder rerank in eval, its score distribution in the bookkeeping, its drift in health
and its chart in the dashboard. The cross-encoder is a tiny ONNX graph that computes a real
relevance function (tests/cross_encoder_model.py): no ONNX cross-encoder installs offline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import psycopg
import pytest
from psycopg import sql

from registry.commands.quality import dashboard_data
from registry.database.chunk_table import chunk_table
from registry.embedding.onnx import installed_model
from registry.errors import EmbedderError
from registry.quality import retrieval
from registry.quality.rerank import CrossEncoder, drift, quantiles
from registry.repository.git import Git
from registry.repository.state import committed_state
from tests.cross_encoder_model import write_overlap_cross_encoder
from tests.embedding.conftest import needs_minilm
from tests.helpers import RegistryRepo, run_cli
from tests.test_hybrid_retrieval import CASES, ingested, promote_first


def test_quantiles_and_drift_in_baseline_spreads() -> None:
    found = quantiles([float(x) for x in range(11)])
    assert (found["q10"], found["q50"], found["q90"], found["count"]) == (1.0, 5.0, 9.0, 11.0)
    assert drift(found, found) == 0
    moved = {**found, "q50": 7.0}
    assert drift(moved, found) == pytest.approx(2 / 8)
    assert quantiles([]) == {}


@pytest.fixture
def cross_encoder(tmp_path: Path) -> tuple[Path, Path]:
    _, tokenizer = installed_model("all-MiniLM-L6-v2-int8")
    return write_overlap_cross_encoder(tmp_path / "ce.onnx"), tokenizer


@needs_minilm
def test_rerank_orders_by_ce_records_its_distribution_and_health_warns_of_drift(
    registry_repo: RegistryRepo, dsn: str, tmp_path: Path, cross_encoder: tuple[Path, Path]
) -> None:
    version, cases = ingested(registry_repo, dsn, tmp_path)
    promote_first(registry_repo, dsn)
    model, tokenizer = cross_encoder
    rerank = ("--rerank-model", model, "--rerank-tokenizer", tokenizer)
    common = ("--repo", registry_repo.path, "--dsn", dsn)
    k, top = 6, 2

    first = run_cli("eval", version, "--cases", cases, "--k", str(k), "--top", str(top),
                    *rerank, *common, "--format", "json")
    assert first.code == 0, first.stderr
    data = json.loads(first.stdout)

    # Independently: the BM25 rows of each case, scored by the cross-encoder, reordered.
    encoder = CrossEncoder(model, tokenizer)
    target = chunk_table(committed_state(Git(registry_repo.path)), version)
    top_scores: list[float] = []
    with psycopg.connect(dsn) as conn:
        for case, measured in zip(CASES, data["cases"], strict=True):
            tsquery = conn.execute("SELECT websearch_to_tsquery('english', %s)::text",
                                   (case["query"],)).fetchone()
            assert tsquery is not None
            relaxed = tsquery[0].replace(" & ", " | ")
            rows = conn.execute(retrieval.bm25_statement(
                target.identifier, sql.Literal(relaxed), sql.Literal(k))).fetchall()
            texts = [r[1] for r in rows]
            scores = encoder.score(case["query"], texts) if texts else []
            order = sorted(range(len(texts)), key=lambda i: (-scores[i], i))
            top_scores += [scores[i] for i in order[:top]]
            expected = next((rank for rank, i in enumerate(order, 1)
                             if case["gt_answer"].lower() in texts[i].lower()), None)
            assert measured["first_hit_rank"] == expected, case["query_id"]
        stored = conn.execute("SELECT d.quantiles, d.model_name, e.chunk_version FROM "
                              "chunk_registry.ce_score_distributions d JOIN "
                              "chunk_registry.eval_runs e ON e.id = d.eval_run_id").fetchall()
    assert data["rerank"]["model"] == "ce.onnx"
    assert len(stored) == 1 and stored[0][1:] == ("ce.onnx", version)
    assert stored[0][0] == pytest.approx(quantiles(top_scores))
    assert float(np.median(top_scores)) == pytest.approx(stored[0][0]["q50"])

    health = ("health", *common, "--format", "json", "--sample", "0")
    calm = json.loads(run_cli(*health).stdout)
    assert calm["ce_scores"]["drift"] == 0
    assert "ce_score_drift" not in {a["metric"] for a in calm["alerts"]}

    # The same model on questions the chunks barely answer: the scores fall, health warns.
    drifted = tmp_path / "drifted.jsonl"
    drifted.write_text("".join(json.dumps({**c, "query": c["query"] + " zebra quokka yak "
                                           "narwhal axolotl"}) + "\n" for c in CASES))
    assert run_cli("eval", version, "--cases", drifted, "--k", str(k), "--top", str(top),
                   *rerank, *common).code == 0
    warned = json.loads(run_cli(*health).stdout)
    alerts = [a for a in warned["alerts"] if a["metric"] == "ce_score_drift"]
    assert len(alerts) == 1 and "ce.onnx" in alerts[0]["message"]
    assert warned["ce_scores"]["current"]["q50"] < warned["ce_scores"]["baseline"]["q50"]

    charted = dashboard_data(registry_repo.path, dsn=dsn, fetch=False)
    production = next(c for c in charted.configs if c.chunk_version == version)
    assert len(production.series["ce_score_q50"]) == 2
    assert production.series["retrieval_p95_ms"]


def test_rerank_options_go_together(registry_repo: RegistryRepo, tmp_path: Path) -> None:
    cases = tmp_path / "c.jsonl"
    cases.write_text(json.dumps(CASES[0]) + "\n")
    result = run_cli("eval", "production", "--cases", cases, "--repo", registry_repo.path,
                     "--rerank-model", tmp_path / "ce.onnx")
    assert result.code == 2 and "--rerank-model and --rerank-tokenizer go together" in \
        result.stderr


@needs_minilm
def test_an_embedding_model_given_as_the_cross_encoder_is_refused_in_one_line(
    registry_repo: RegistryRepo, dsn: str, tmp_path: Path
) -> None:
    """An embedding model loads as an ONNX session with the same inputs; its token vectors
    once read as scores (the last unit of the last token) and silently reordered the chunks."""
    model, tokenizer = installed_model("all-MiniLM-L6-v2-int8")
    with pytest.raises(EmbedderError, match="not one relevance logit"):
        CrossEncoder(model, tokenizer)
    version, cases = ingested(registry_repo, dsn, tmp_path)
    result = run_cli("eval", version, "--cases", cases, "--rerank-model", model,
                     "--rerank-tokenizer", tokenizer, "--repo", registry_repo.path, "--dsn", dsn)
    assert result.code == 12 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "is not a cross-encoder" in result.stderr
