"""The dashboard in a real headless Chromium: it loads from the file alone (no other request),
without console errors, every chart renders with its series, bands, event markers and the
points outside their band; a young registry's points spread over the chart and its blocked
promotion shows above the fold; full-page screenshots are kept under artifacts/."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry.quality.dashboard import METRICS, OUT_OF_BAND, build
from registry.reconciler.run import reconcile
from tests.browser import ARTIFACTS, Chromium
from tests.helpers import RegistryRepo
from tests.history import build_history, failed_comparison_then_promotion, young_registry

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
  outside: plot._fullData.filter(t => t.name === 'outside target').map(t =>
    Array.from(plot.querySelectorAll(`.trace${t.uid} .point`)).map(p => p.style.fill)),
}))"""
SPREAD = """(() => {
  const plot = document.querySelector('.js-plotly-plot');
  const width = plot._fullLayout.xaxis2._length;
  return Array.from(plot.querySelectorAll('.subplot.x2y2 .scatterlayer .point')).map(p =>
    Number(/translate\\(([-0-9.e]+)/.exec(p.getAttribute('transform'))[1]) / Number(width));
})()"""
PANEL = """Array.from(document.querySelectorAll('#production-list li')).map(li => [li.id,
  li.className, li.textContent, li.getBoundingClientRect().bottom <= window.innerHeight])"""


def test_the_dashboard_renders_offline_in_chromium(
    registry_repo: RegistryRepo, dsn: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    history = build_history(registry_repo, dsn, tmp_path)
    result = build(registry_repo.path, tmp_path / "site", dsn=dsn, fetch=False)
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
    # The rolled-back config's bad week: its leakage and lost hits are drawn as red crosses.
    rolled_back = next(c for c in charts if c["id"] == f"chart-{history.rolled_back}")
    assert sum(len(points) for points in rolled_back["outside"]) >= 6
    assert {fill for points in rolled_back["outside"] for fill in points} == {
        "rgb(207, 34, 46)"}


def test_a_young_registry_with_a_blocked_promotion_reads_at_a_glance(
    registry_repo: RegistryRepo, dsn: str, tmp_path: Path
) -> None:
    first, second = young_registry(registry_repo, dsn)
    failed_comparison_then_promotion(registry_repo, dsn, first, second)
    assert reconcile(registry_repo.path, dsn=dsn).outcome == "refused"
    result = build(registry_repo.path, tmp_path / "site", dsn=dsn, fetch=False)

    with Chromium() as browser:
        page = browser.new_page()
        page.goto(result.path.as_uri())
        page.wait_for("document.querySelectorAll('.js-plotly-plot .main-svg').length >= 2", 60)
        panel = page.evaluate(PANEL)
        charts = page.evaluate(CHARTS)
        spread = page.evaluate(SPREAD)
        shot = page.screenshot(ARTIFACTS / "dashboard-young-blocked.png")

    assert page.console_errors == []
    # What needs a decision is the first thing on the page, in red, without scrolling.
    assert [(key, level, visible) for key, level, _text, visible in panel] == [
        ("disagreement", "critical", True), ("refusal", "critical", True),
        ("comparison", "critical", True)]
    assert panel[1][2].startswith(f"PROMOTION BLOCKED production.yaml promotes {second}")
    # Two reports made just now (the low one drawn twice: a dot and a red cross) sit inside
    # the chart, not pinned to the right edge of 90 days.
    assert len(spread) == 3 and all(0.05 < x < 0.95 for x in spread), spread
    assert charts[0]["outside"] == [["rgb(207, 34, 46)"]]
    assert OUT_OF_BAND == "#cf222e"
    assert shot.stat().st_size > 50_000
