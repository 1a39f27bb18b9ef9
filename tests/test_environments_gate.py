"""The promotion path rule on plain values (`gate.judge_path`): what promote, the offline plan
and the reconciler all apply."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from registry.config import Promotion
from registry.quality.gate import SoakEvidence, judge_path, span_text

V = "2025-09-07-143022-v1"
NOW = datetime(2026, 1, 2, 12, 0, tzinfo=UTC)
PATH = Promotion("staging", timedelta(hours=24), require_healthy=True)


def healthy(hours_ago: float) -> tuple[datetime, tuple[str, ...]]:
    return NOW - timedelta(hours=hours_ago), ()


def critical(hours_ago: float) -> tuple[datetime, tuple[str, ...]]:
    return NOW - timedelta(hours=hours_ago), ("prefix leakage in 3 rows",)


def test_a_version_staging_does_not_serve_is_held() -> None:
    verdict = judge_path(V, "production", PATH, "2025-09-08-000000-v1", None, NOW)
    assert verdict.held and "not what staging serves" in verdict.reason
    assert verdict.fix is not None and f"registry promote {V} --environment staging" in verdict.fix


def test_offline_only_the_committed_part_is_checked() -> None:
    assert not judge_path(V, "production", PATH, V, None, NOW).held


def test_not_swapped_in_staging_is_held() -> None:
    verdict = judge_path(V, "production", PATH, V, SoakEvidence(None), NOW)
    assert verdict.held and "does not serve" in verdict.reason


def test_before_the_soak_it_says_how_long_remains() -> None:
    evidence = SoakEvidence(NOW - timedelta(hours=3, minutes=10), (healthy(1),))
    verdict = judge_path(V, "production", PATH, V, evidence, NOW)
    assert verdict.held
    assert "3h 10m of 24h" in verdict.reason and "20h 50m remain" in verdict.reason


def test_after_the_soak_with_a_passing_report_it_passes() -> None:
    evidence = SoakEvidence(NOW - timedelta(hours=25), (healthy(20), healthy(1)))
    assert not judge_path(V, "production", PATH, V, evidence, NOW).held


def test_no_health_report_is_held_when_required_and_not_otherwise() -> None:
    evidence = SoakEvidence(NOW - timedelta(hours=25))
    verdict = judge_path(V, "production", PATH, V, evidence, NOW)
    assert verdict.held and "no passing health report" in verdict.reason
    relaxed = Promotion("staging", timedelta(hours=24), require_healthy=False)
    assert not judge_path(V, "production", relaxed, V, evidence, NOW).held


def test_a_critical_report_restarts_the_soak() -> None:
    evidence = SoakEvidence(NOW - timedelta(hours=30), (healthy(29), critical(5), healthy(1)))
    verdict = judge_path(V, "production", PATH, V, evidence, NOW)
    assert verdict.held and "restarted its soak" in verdict.reason and "19h remain" in verdict.reason


def test_a_rollback_target_is_never_held() -> None:
    assert not judge_path(V, "production", PATH, None, SoakEvidence(None), NOW,
                          served_before=True).held


def test_span_text() -> None:
    assert span_text(timedelta(hours=20, minutes=50)) == "20h 50m"
    assert span_text(timedelta(seconds=70)) == "1m 10s"
    assert span_text(timedelta(days=2, hours=1)) == "2d 1h"
