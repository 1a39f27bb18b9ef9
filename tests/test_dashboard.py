"""The health dashboard: 90 days of reports for 5 configs on one offline page, and --serve on
the loopback interface only. (Rendering in a real browser: test_dashboard_browser.py.)"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
import yaml
from plotly.offline import get_plotlyjs

from registry.commands.data import ingest
from registry.commands.quality import dashboard_data
from registry.commands.reconcile import reconcile
from registry.quality.dashboard import OUT_OF_BAND, _t, figure, render
from tests.database import Database, promote, table_of
from tests.helpers import RegistryRepo, run_cli
from tests.history import build_history, failed_comparison_then_promotion, young_registry
from tests.test_health_eval import write_corpus
from tests.test_workflows import expand

WORKFLOWS = Path(__file__).resolve().parents[1] / ".github" / "workflows"


def sections(page: str) -> list[str]:
    return re.findall(r'<section class="config" id="config-([^"]+)"', page)


@pytest.mark.slow
def test_ninety_days_of_five_configs_make_one_offline_page(
    registry_repo: RegistryRepo, dsn: str, tmp_path: Path
) -> None:
    history = build_history(registry_repo, dsn, tmp_path)
    out = tmp_path / "site"

    started = time.perf_counter()
    result = run_cli("dashboard", "--out", out, "--repo", registry_repo.path, "--dsn", dsn,
                     "--no-fetch", "--format", "json")
    seconds = time.perf_counter() - started

    assert result.code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["configs"], summary["reports"]) == (5, 5 * history.days)
    assert seconds < 15
    page = (out / "index.html").read_text()
    assert sections(page)[0] == history.production
    assert sorted(sections(page)) == sorted(history.versions)
    table_rows = re.findall(r'<tr data-config="([^"]+)">', page)
    assert sorted(table_rows) == sorted(history.versions)

    # Nothing is fetched: plotly.js is inlined once, the rest of the page names no remote
    # script, style or link, and a CSP forbids any fetch anyway.
    assert page.count(get_plotlyjs()) == 1
    ours = page.replace(get_plotlyjs(), "")
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", ours)
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert summary["bytes"] < 6_000_000 and len(ours.encode()) < 600_000

    # Every production move is a marker on the charts of the configs it touched, with its SHA.
    production_section = page.split(f'id="config-{history.production}"')[1]
    for kind, _version, sha in history.moves[1:]:
        label = f"{'promotion' if kind == 'promote' else 'rollback'} {sha[:7]}"
        assert label in production_section, label

    # The current alerts are those of each config's latest report: the planted critical one
    # first among them, each with its config.
    with psycopg.connect(dsn) as conn:
        latest = dict(conn.execute(
            "SELECT DISTINCT ON (chunk_version) chunk_version, report->'alerts' FROM "
            "chunk_registry.health_reports ORDER BY chunk_version, at DESC").fetchall())
    shown = re.findall(r'<li class="(critical|warning)" data-config="([^"]+)">', page)
    expected = [(a["level"], version) for version, alerts in latest.items() for a in alerts]
    assert sorted(shown) == sorted(expected)
    assert ("critical", history.critical) in shown
    assert "3 rows by their stored counts have a body over 350 tokens" in page
    assert page.index('id="alerts"') < page.index('id="configs"') < page.index('class="config"')


@pytest.mark.slow
def test_serve_binds_the_loopback_interface_and_shows_a_registry_without_reports(
    registry_repo: RegistryRepo, dsn: str, tmp_path: Path
) -> None:
    version = registry_repo.locked()
    promote(registry_repo, version)
    reconcile(registry_repo.path, dsn=dsn, force=True)
    out = tmp_path / "site"

    server = subprocess.Popen(
        [sys.executable, "-m", "registry", "dashboard", "--out", str(out), "--serve", "--port",
         "0", "--repo", str(registry_repo.path), "--dsn", dsn, "--no-fetch"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert server.stderr is not None
        line = server.stderr.readline()
        found = re.match(r"Serving (http://127\.0\.0\.1:([0-9]+)/index\.html)", line)
        assert found, line + (server.stderr.read() if server.poll() is not None else "")
        with urllib.request.urlopen(found.group(1), timeout=10) as response:
            body = response.read().decode()
            assert response.status == 200
    finally:
        server.terminate()
        server.wait(timeout=10)

    assert "Wrote" in (server.stdout.read() if server.stdout else "")
    assert f'data-config="{version}"' in body
    assert "no health report recorded" in body
    assert sections(body) == [version]


@pytest.mark.slow
def test_the_daily_workflow_jobs_record_health_watch_and_publish_the_dashboard(
    registry_repo: RegistryRepo, dsn: str, tmp_path: Path
) -> None:
    """The `watch` and `dashboard` jobs of registry-reconcile.yml (what reconcile.yml and every
    registry repository call), their `run:` steps executed as the runner would (bash -eo
    pipefail, secrets and runner paths filled in) on a checkout of main."""
    corpus = write_corpus(tmp_path / "data")
    version = registry_repo.locked()
    registry_repo.write("eval/cases.jsonl", corpus.cases.read_text(), "Eval cases")
    # Pinned in the repo, as on a runner without the hub: health re-tokenizes its sample.
    registry_repo.write("tokenizers/BAAI/bge-large-en-v1.5/tokenizer.json",
                        registry_repo.tokenizer_file.read_bytes(), "Pin the tokenizer")
    reconcile(registry_repo.path, dsn=dsn)
    ingest(registry_repo.path, version, corpus.path, dsn=dsn,
           tokenizer_file=registry_repo.tokenizer_file, workers=1)
    promote(registry_repo, version)
    reconcile(registry_repo.path, dsn=dsn)
    workspace = tmp_path / "workspace"
    subprocess.run(["git", "clone", "--quiet", str(registry_repo.origin), str(workspace)],
                   check=True)
    runner = tmp_path / "runner"
    runner.mkdir()
    summary, outputs = runner / "summary.md", runner / "output"
    workflow = yaml.safe_load((WORKFLOWS / "registry-reconcile.yml").read_text())
    defaults = {f"inputs.{name}": str(spec.get("default", ""))
                for name, spec in workflow[True]["workflow_call"]["inputs"].items()}  # `on:`
    context = {**defaults, "secrets.REGISTRY_DSN": dsn, "secrets.SOURCE_DSN": "",
               "github.token": "", "runner.temp": str(runner)}

    ran = []
    for job in ("watch", "dashboard"):
        for step in workflow["jobs"][job]["steps"]:
            if "run" not in step or step["name"] == "Install chunk-registry":
                continue
            if "if" in step:
                assert step["if"] == "${{ steps.health.outputs.exit == '19' }}"
                if "exit=19" not in outputs.read_text():
                    continue
            env = {key: expand(str(value), context) for key, value in (step.get("env") or {}).items()}
            proc = subprocess.run(
                ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", expand(step["run"], context)],
                cwd=workspace, capture_output=True, text=True,
                env={**os.environ, **env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                     "RUNNER_TEMP": str(runner), "GITHUB_STEP_SUMMARY": str(summary),
                     "GITHUB_OUTPUT": str(outputs), "GITHUB_ACTIONS": "true"},
            )
            assert proc.returncode == 0, f"{step['name']}: {proc.stdout}{proc.stderr}"
            ran.append(step["name"])

    assert ran == ["Judge the latest promotion, propose its rollback if it regressed",
                   "Record today's health report", "Build the dashboard"]
    assert outputs.read_text().strip() == "exit=0"
    assert f"### Chunk registry health: {version} (healthy)" in summary.read_text()
    with psycopg.connect(dsn) as conn:
        evals = conn.execute("SELECT count(*) FROM chunk_registry.eval_runs").fetchone()
        reports = conn.execute("SELECT count(*) FROM chunk_registry.health_reports").fetchone()
    assert evals == (1,) and reports == (1,)
    upload = next(s for s in workflow["jobs"]["dashboard"]["steps"]
                  if s["name"] == "Publish the dashboard")
    page = Path(expand(upload["with"]["path"], context))
    assert f'data-config="{version}"' in page.read_text()


def _item(page: str, key: str) -> tuple[str, str]:
    """(class, text) of an item of the production panel."""
    found = re.search(rf'<li class="([a-z]+)" id="{key}">(.*?)</li>', page)
    assert found, key
    return found.group(1), re.sub(r"<[^>]+>", "", found.group(2))


@pytest.mark.slow
def test_a_young_registry_fills_the_charts_and_a_refused_promotion_is_on_top(
    registry_repo: RegistryRepo, dsn: str
) -> None:
    first, second = young_registry(registry_repo, dsn)

    # Minutes of data: the charts span them (and a margin), not 90 empty days.
    data = dashboard_data(registry_repo.path, dsn=dsn, fetch=False)
    start, end = data.window()
    points = [p.at for p in data.configs[0].series["oracle_hit_rate"]]
    assert data.since < start < min(points) and max(points) < end
    assert end - start < timedelta(hours=1)
    chart = figure(data, data.configs[0], "#000")
    assert chart["layout"]["xaxis"]["range"] == [_t(start), _t(end)]
    assert "rangeselector" not in chart["layout"]["xaxis"]  # 7d/30d mean nothing here

    # The point outside its band is marked on its own trace, and counted and explained.
    outside = [t for t in chart["data"] if t["name"] == "outside target"]
    assert [(t["yaxis"], t["y"]) for t in outside] == [("y2", [0.2])]
    assert outside[0]["marker"]["color"] == OUT_OF_BAND
    page = render(data)
    assert "1 point outside the target band" in page and "outside its target band" in page
    assert _item(page, "disagreement") == (
        "ok", f"PRODUCTION the view serves {first}, the repo's production")
    assert _item(page, "comparison")[0] == "info"
    assert 'id="refusal"' not in page

    failed_comparison_then_promotion(registry_repo, dsn, first, second)
    pending = render(dashboard_data(registry_repo.path, dsn=dsn, fetch=False))
    level, text = _item(pending, "disagreement")
    assert level == "warning" and "no reconcile has run on this commit" in text

    result = reconcile(registry_repo.path, dsn=dsn)
    assert result.outcome == "refused"
    data = dashboard_data(registry_repo.path, dsn=dsn, fetch=False)
    assert data.disagreement is not None and data.disagreement.served_version == first
    page = render(data)
    level, text = _item(page, "disagreement")
    assert level == "critical" and text.startswith(
        f"PRODUCTION DISAGREEMENT production.yaml names {second} (public.{table_of(second)}), "
        f"but the view public.document_chunks serves {first} (public.{table_of(first)})")
    level, text = _item(page, "refusal")
    assert level == "critical" and text.startswith(
        f"PROMOTION BLOCKED production.yaml promotes {second}, production is still {first}: "
        f"reconcile run #{result.run_id} on {registry_repo.head()[:7]}")
    assert "its last comparison against production failed the gates" in text
    level, text = _item(page, "comparison")
    assert level == "critical" and f"{second} against {first}" in text
    assert "failed (oracle_hit_rate dropped 0.190): oracle hit 0.610 (-0.190)" in text
    assert "the gate holds it back: its last comparison against production failed" in text
    assert page.index('id="production"') < page.index('id="alerts"')

    # Once the first point is nearly --days old, the window is --days again.
    Database(dsn).execute("UPDATE chunk_registry.health_reports SET at = at - interval '85 days'")
    data = dashboard_data(registry_repo.path, dsn=dsn, fetch=False)
    assert data.window() == (data.since, data.generated_at)
    assert figure(data, data.configs[0], "#000")["layout"]["xaxis"]["rangeselector"]
