"""The regression watch after a promotion, end to end: real git (a bare origin, promotions merged
as pull requests), real PostgreSQL with tables filled by the real ingest and health reports
recorded by `registry health`, and the local GitHub REST server. One rollback PR for a
regression, none for a healthy promotion, still one after restarts."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from registry.commands.data import ingest
from registry.commands.quality import dashboard, evaluate, health
from registry.commands.reconcile import reconcile
from registry.config import ProductionConfig
from registry.database.chunk_table import VIEW_COLUMNS
from registry.quality.evaluation import baseline_metrics
from registry.quality.promotion_watch import Report, judge
from tests.github_server import FakeGitHub, acme_origin
from tests.helpers import RegistryRepo, run_cli
from tests.repository.test_promote_rollback import promoted
from tests.test_health_eval import Corpus, write_corpus

TOKEN = "ghp_Watch0123456789abcdefABCDEF0123456789ab"
PULLS = "/repos/acme/chunk-configs/pulls"


@pytest.fixture
def github(registry_repo: RegistryRepo, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeGitHub]:
    """See `acme_origin` (the API knows TOKEN)."""
    with acme_origin(registry_repo, monkeypatch, TOKEN) as server:
        yield server


@dataclass
class Scenario:
    repo: RegistryRepo
    dsn: str
    corpus: Corpus
    previous: str
    promoted: str
    promotion: str

    def watch(self, *args: str) -> tuple[int, dict[str, object]]:
        result = run_cli("watch-promotion", "--repo", self.repo.path, "--dsn", self.dsn,
                         "--no-fetch", "--format", "json", *args)
        assert result.code in (0, 1), result.stderr
        return result.code, json.loads(result.stdout)

    def health(self) -> None:
        """What the scheduled workflow does: record a health report of production."""
        health(self.repo.path, dsn=self.dsn, cases_file=self.corpus.cases,
                   tokenizer_file=self.repo.tokenizer_file)

    def sql(self, query: str, params: object = None) -> list[tuple[object, ...]]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            cursor = conn.execute(query, params)  # type: ignore[arg-type]
            return cursor.fetchall() if cursor.description else []


def promote_with_health(repo: RegistryRepo, dsn: str, tmp: Path, *, worse: bool) -> Scenario:
    """v1 in production with a health report; v2 locked with the baseline measured on v1's
    corpus, filled from the same corpus (or, when `worse`, one with 3 of 7 answers gone),
    promoted by a merged pull request and reconciled: the promotion the watch looks at."""
    corpus = write_corpus(tmp / "corpus")
    served = write_corpus(tmp / "worse", drop_answers=3) if worse else corpus
    v1 = repo.locked()
    reconcile(repo.path, dsn=dsn, fetch=False)
    ingest(repo.path, v1, corpus.path, dsn=dsn, tokenizer_file=repo.tokenizer_file, workers=1)
    measured = baseline_metrics(evaluate(repo.path, v1, corpus.cases, dsn=dsn))
    baseline = tmp / "baseline.json"
    baseline.write_text(json.dumps({"metrics": measured}))
    v2 = repo.locked(chunk_size=300, baseline_metrics=baseline)
    reconcile(repo.path, dsn=dsn, fetch=False)
    ingest(repo.path, v2, served.path, dsn=dsn, tokenizer_file=repo.tokenizer_file, workers=1)
    promoted(repo, v1)
    reconcile(repo.path, dsn=dsn, fetch=False)
    scenario = Scenario(repo, dsn, corpus, v1, v2, "")
    scenario.health()
    scenario.promotion = promoted(repo, v2)
    reconcile(repo.path, dsn=dsn, fetch=False)
    scenario.health()
    return scenario


@pytest.mark.slow
def test_a_regression_opens_one_rollback_pr_with_the_evidence_and_restarts_keep_it_one(
    registry_repo: RegistryRepo, dsn: str, tmp_path: Path, github: FakeGitHub
) -> None:
    s = promote_with_health(registry_repo, dsn, tmp_path, worse=True)

    code, first = s.watch()

    assert code == 1 and first["outcome"] == "proposed", first
    regressions = {(r["kind"], r["metric"]) for r in first["regressions"]}  # type: ignore[attr-defined]
    assert regressions == {("baseline", "oracle_hit_rate"), ("previous", "oracle_hit_rate"),
                           ("baseline", "filter_hit_rate"), ("previous", "filter_hit_rate")}
    posts = [r for r in github.received if r.method == "POST"]
    assert len(posts) == 1
    pull = posts[0].body
    branch = f"rollback/{s.previous}-undo-{s.promotion[:10]}"
    assert (pull["head"], pull["base"]) == (branch, "main")
    assert pull["title"] == f"Roll back production to {s.previous}"
    body = pull["body"]
    assert f"## Regression watch: roll back `{s.promoted}`" in body
    assert "oracle_hit_rate 0.400 is 0.300 below the locked baseline 0.700" in body
    assert f"oracle_hit_rate 0.400 is 0.300 below {s.previous}'s last report 0.700" in body
    assert "| oracle_hit_rate | 0.700 | 0.700 | 0.400 | 0.400 |" in body
    assert f"This reverts commit {s.promotion}." in body
    assert "## Plan" in body and TOKEN not in body
    production_on_branch = registry_repo.git("--git-dir", str(registry_repo.origin), "show",
                                             f"{branch}:configs/production.yaml")
    assert production_on_branch.startswith(f"production: {s.previous}")
    assert first["proposal"]["number"] == 1  # type: ignore[index]

    # A rerun, the view re-pointed by hand and corrected by the reconciler, a restart in a new
    # process, and a crash between opening the PR and recording it: still one pull request.
    code, again = s.watch()
    assert (code, again["outcome"]) == (1, "already-proposed")
    view = "public.document_chunks"
    s.sql(f"CREATE OR REPLACE VIEW {view} AS SELECT {', '.join(VIEW_COLUMNS)} FROM "
          "document_chunks_" + s.previous.replace("-", "_"))
    swapped = reconcile(registry_repo.path, dsn=dsn, fetch=False)
    assert [type(a).__name__ for a in swapped.plan.actions] == ["SwapProduction"]
    code, again = s.watch()
    assert (code, again["outcome"]) == (1, "already-proposed")
    s.sql("DELETE FROM chunk_registry.rollback_proposals")
    code, adopted = s.watch()
    assert (code, adopted["outcome"]) == (1, "already-proposed")
    assert adopted["proposal"]["adopted"] is True and adopted["proposal"]["number"] == 1  # type: ignore[index]
    follower = subprocess.Popen(
        [sys.executable, "-m", "registry", "watch-promotion", "--follow", "--interval", "1",
         "--repo", str(registry_repo.path), "--dsn", dsn, "--no-fetch"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert follower.stderr is not None
        lines = []
        deadline = time.monotonic() + 60
        while not any("already-proposed" in line for line in lines):
            assert time.monotonic() < deadline and follower.poll() is None, lines
            lines.append(follower.stderr.readline())
    finally:
        follower.send_signal(signal.SIGTERM)
        follower.wait(timeout=30)
    assert follower.returncode == 0
    assert [r.method for r in github.received].count("POST") == 1
    assert len(github.pulls["acme/chunk-configs"]) == 1
    assert s.sql("SELECT chunk_version, target_version, pr_number FROM "
                 "chunk_registry.rollback_proposals") == [(s.promoted, s.previous, 1)]

    # The dashboard shows the proposal on top.
    page = dashboard(registry_repo.path, tmp_path / "site", dsn=dsn, fetch=False).path.read_text()
    shown = page.split('<li class="proposal">')[1].split("</li>")[0]
    assert s.promoted in shown and "https://github.com/acme/chunk-configs/pull/1" in shown

    # Merging the proposal rolls production back; nothing is left to watch.
    registry_repo.merge(branch)
    reconcile(registry_repo.path, dsn=dsn, fetch=False)
    code, after = s.watch()
    assert (code, after["outcome"]) == (0, "rolled-back")


@pytest.mark.slow
def test_a_healthy_promotion_gets_no_pr_and_the_window_bounds_the_watch(
    registry_repo: RegistryRepo, dsn: str, tmp_path: Path, github: FakeGitHub
) -> None:
    s = promote_with_health(registry_repo, dsn, tmp_path, worse=False)

    code, healthy = s.watch()
    assert (code, healthy["outcome"], healthy["regressions"]) == (0, "healthy", [])
    assert healthy["reports_checked"] == 1
    assert github.received == []

    # 49 hours later the 48h window is over: a report with a planted fault is not acted on.
    s.sql("UPDATE chunk_registry.managed_tables SET promoted_at = promoted_at - interval "
          "'49 hours' WHERE status = 'production'")
    table = "document_chunks_" + s.promoted.replace("-", "_")
    s.sql(f"UPDATE {table} SET bm25_text = embedding_text, "
          "bm25_token_count = embedding_token_count - 2 WHERE chunk_index = 0")
    s.health()
    code, closed = s.watch()
    assert (code, closed["outcome"]) == (0, "window-closed")
    assert github.received == []
    assert s.sql("SELECT count(*) FROM chunk_registry.rollback_proposals") == [(0,)]


@pytest.mark.slow
def test_a_critical_alert_adopts_an_open_rollback_pr_instead_of_opening_a_second(
    registry_repo: RegistryRepo, dsn: str, tmp_path: Path, github: FakeGitHub
) -> None:
    s = promote_with_health(registry_repo, dsn, tmp_path, worse=False)
    table = "document_chunks_" + s.promoted.replace("-", "_")
    s.sql(f"UPDATE {table} SET bm25_text = embedding_text, "
          "bm25_token_count = embedding_token_count - 2 "
          "WHERE chunk_index = 0 AND doc_id IN ('doc0.md', 'doc1.md')")
    s.health()
    manual = run_cli("rollback", "--pr", "--repo", registry_repo.path)
    assert manual.code == 0, manual.stderr

    code, result = s.watch()

    assert code == 1 and result["outcome"] == "already-proposed", result
    assert [(r["kind"], r["metric"]) for r in result["regressions"]] == [  # type: ignore[attr-defined]
        ("alert", "bm25_prefix_leakage")]
    assert "2 rows carry their own contextual prefix" in result["regressions"][0]["message"]  # type: ignore[index]
    assert result["proposal"]["branch"] == f"rollback/{s.previous}"  # type: ignore[index]
    assert [r.method for r in github.received].count("POST") == 1


def report(report_id: int, oracle: float, alerts: list[str] | None = None) -> Report:
    return Report(report_id, datetime(2026, 1, 1, tzinfo=UTC) + timedelta(hours=report_id), {
        "oracle_hit_rate": oracle, "filter_hit_rate": 0.3,
        "alerts": [{"level": "critical", "metric": m, "message": m} for m in alerts or []]})


def test_a_drop_exactly_at_the_gate_passes_and_an_alert_the_old_production_had_is_not_new() -> None:
    settings = ProductionConfig(production=None)
    before = report(1, 0.70, ["config"])
    at_gate = judge([report(2, 0.68, ["config"])], {"oracle_hit_rate": 0.70}, before, settings,
                    "v1")
    beyond = judge([report(3, 0.6799, ["config", "over_budget_chunks"])], {}, before, settings,
                   "v1")
    assert at_gate == []
    assert [(r.kind, r.metric) for r in beyond] == [("alert", "over_budget_chunks"),
                                                    ("previous", "oracle_hit_rate")]
