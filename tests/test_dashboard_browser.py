"""The dashboard in a real headless Chromium: it loads from the file alone (no other request),
without console errors, every chart renders with its series, bands and event markers, and a
full-page screenshot is kept under artifacts/."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry.commands.quality import dashboard
from registry.quality.dashboard import METRICS
from tests.browser import ARTIFACTS, Chromium
from tests.helpers import RegistryRepo
from tests.history import build_history

pytestmark = pytest.mark.browser

CHARTS = """Array.from(document.querySelectorAll('.js-plotly-plot')).map(plot => ({
  id: plot.id,
  subplots: plot.querySelectorAll('.cartesianlayer .subplot').length,
  lines: Array.from(plot.querySelectorAll('.scatterlayer .trace .js-line'))
    .filter(path => (path.getAttribute('d') || '').length > 20).length,
  points: plot.querySelectorAll('.scatterlayer .point').length,
  shapes: plot.querySelectorAll('.shapelayer path').length,
  labels: Array.from(plot.querySelectorAll('.textpoint text')).map(t => t.textContent),
  titles: Array.from(plot.querySelectorAll('.annotation-text')).map(t => t.textContent),
  width: plot.getBoundingClientRect().width,
}))"""


def test_the_dashboard_renders_offline_in_chromium(
    registry_repo: RegistryRepo, dsn: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    history = build_history(registry_repo, dsn, tmp_path)
    result = dashboard(registry_repo.path, tmp_path / "site", dsn=dsn, fetch=False)
    url = result.path.as_uri()

    with Chromium() as browser:
        page = browser.new_page()
        page.goto(url)
        page.wait_for("document.querySelectorAll('.js-plotly-plot .main-svg').length >= 5 && "
                      "document.querySelectorAll('.cartesianlayer .subplot').length >= 40", 90)
        charts = page.evaluate(CHARTS)
        alerts = page.evaluate("Array.from(document.querySelectorAll('#alert-list li'))"
                               ".map(li => [li.className, li.dataset.config])")
        rows = page.evaluate("document.querySelectorAll('#configs-table tbody tr').length")
        name = request.node.callspec.id if hasattr(request.node, "callspec") else "default"
        shot = page.screenshot(ARTIFACTS / f"dashboard-{name}.png")

    assert page.console_errors == []
    assert [r for r in page.requests if r != url and not r.startswith("data:")] == []
    assert charts[0]["id"] == f"chart-{history.production}"
    assert sorted(c["id"] for c in charts) == sorted(f"chart-{v}" for v in history.versions)
    for chart in charts:
        assert chart["subplots"] == len(METRICS) + 1, chart["id"]
        assert chart["lines"] >= 6, chart  # every report series is drawn; ingests are dots
        assert chart["points"] >= 90, chart
        assert chart["shapes"] >= 6, chart  # four bands, two zero lines, then the markers
        assert chart["width"] > 800
        for metric in METRICS:
            assert any(t.startswith(metric.title) for t in chart["titles"]), metric.title
    production = charts[0]
    for kind, _version, sha in history.moves[1:]:
        assert f"{'promotion' if kind == 'promote' else 'rollback'} {sha[:7]}" in (
            production["labels"])
    assert ["critical", history.critical] in alerts
    assert rows == len(history.versions)
    assert shot.stat().st_size > 100_000
