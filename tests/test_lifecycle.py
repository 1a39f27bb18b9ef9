"""The whole lifecycle, end to end, as a team runs it: every step a `registry` or `git` command,
real git (a bare origin, PR branches, merges with --no-ff, a squash merge, a revert) and real
PostgreSQL, with the bundled demo corpus and eval cases."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from registry.commands.reconcile import reconcile
from registry.errors import Refused
from tests.database import Database, table_of
from tests.helpers import RegistryRepo, run_cli

DEMO = Path(__file__).resolve().parent.parent / "registry" / "cli" / "demo_data"


@pytest.fixture(scope="module")
def demo_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's tokenizer, built deterministically from the corpus: the same chunks and so
    the same eval metrics on every run (the comparison below must pass every time)."""
    from registry.cli.demo import train_tokenizer

    texts = [p.read_text("utf-8") for p in sorted((DEMO / "corpus").glob("*.md"))]
    return train_tokenizer(texts, tmp_path_factory.mktemp("demo-tokenizer") / "tokenizer.json")


def registry(repo: RegistryRepo, *args: str | Path) -> Any:
    """`registry ARGS --repo REPO --format json`, which must succeed; its JSON output."""
    result = run_cli(*args, "--repo", repo.path, "--format", "json")
    assert result.code == 0, f"registry {' '.join(map(str, args))}: {result.stderr}"
    return json.loads(result.stdout) if result.stdout.strip().startswith(("{", "[")) else None


@pytest.mark.slow
def test_lock_merge_tag_reconcile_ingest_eval_promote_rollback_retire(
    registry_repo: RegistryRepo, dsn: str, demo_tokenizer: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REGISTRY_DSN", dsn)
    db = Database(dsn)
    tokenizer = ("--tokenizer-file", demo_tokenizer)
    corpus, cases = DEMO / "corpus", DEMO / "cases.jsonl"

    # Lock v1 on a PR branch, merge it with --no-ff, tag it, reconcile: the shadow table.
    v1 = registry(registry_repo, "lock", *tokenizer)["chunk_version"]
    registry_repo.merge(f"lock/{v1}", how="merge")
    assert registry(registry_repo, "tag", "--push")["created"] == [f"chunk-config/{v1}"]
    registry(registry_repo, "reconcile")
    assert db.managed() == {table_of(v1): "shadow"}

    # Ingest the corpus, evaluate the shadow, promote it (a squash merge), reconcile: served.
    ingested = registry(registry_repo, "ingest", v1, "--source", corpus, *tokenizer)
    assert ingested["documents"] == 32 and db.count(table_of(v1)) == ingested["chunks"] > 0
    registry(registry_repo, "eval", v1, "--cases", cases)
    registry(registry_repo, "promote", v1)
    registry_repo.merge(f"promote/{v1}", how="squash")
    registry(registry_repo, "reconcile")
    assert db.view_target() == [table_of(v1)]

    # A second config through the same gate: lock, merge, reconcile, ingest, compare, promote.
    v2 = registry(registry_repo, "lock", "--chunk-size", "300", *tokenizer)["chunk_version"]
    registry_repo.merge(f"lock/{v2}", how="merge")
    registry(registry_repo, "tag", "--push")
    registry(registry_repo, "reconcile")
    registry(registry_repo, "ingest", v2, "--source", corpus, *tokenizer)
    comparison = registry(registry_repo, "eval", "--compare", v2, "--against", "production",
                          "--cases", cases)
    assert comparison["passed"] is True and comparison["regressions"] == []
    promoted = registry(registry_repo, "promote", v2)
    message = registry_repo.git("log", "-1", "--format=%B", promoted["branch"])
    assert f"Eval: the last comparison against {v1}" in message and "passed" in message
    assert "bm25 on both sides" in message
    rows_v1 = db.count(table_of(v1))
    promotion = registry_repo.merge(f"promote/{v2}", how="merge")
    registry(registry_repo, "reconcile")
    assert db.view_target() == [table_of(v2)]

    # Roll back: a git revert of the promotion merge; the view reads v1 again, no re-ingest.
    rolled = registry(registry_repo, "rollback")
    assert (rolled["chunk_version"], rolled["reverted"]) == (v1, promotion)
    registry_repo.merge(rolled["branch"], how="merge")
    registry(registry_repo, "reconcile")
    assert db.view_target() == [table_of(v1)]
    assert db.count(table_of(v1)) == rows_v1
    assert registry_repo.git("log", "-1", "--format=%s", "HEAD^2").startswith(
        f"Roll back production to {v1}")

    # Retire v2: marked retired, kept through the grace period, then dropped.
    registry(registry_repo, "retire", v2)
    registry_repo.merge(f"retire/{v2}", how="merge")
    registry(registry_repo, "reconcile")
    assert db.managed()[table_of(v2)] == "retired" and table_of(v2) in db.tables()
    now = db.query("SELECT now()")[0][0]
    reconcile(registry_repo.path, dsn=dsn, now=now + timedelta(hours=49))
    assert db.managed()[table_of(v2)] == "dropped"
    assert db.tables() == [table_of(v1)]

    events = registry(registry_repo, "history")
    assert [(e["kind"], e["chunk_version"], e["merge"]) for e in events] == [
        ("retire", v2, "merge"),
        ("rollback", v1, "merge"),
        ("promote", v2, "merge"),
        ("lock", v2, "merge"),
        ("promote", v1, "squash"),
        ("lock", v1, "merge"),
    ]


@pytest.mark.slow
def test_the_config_production_was_rolled_back_from_is_no_rollback_target(
    registry_repo: RegistryRepo, dsn: str
) -> None:
    """After v1 -> v2 -> rollback to v1, `registry rollback` can never return to v2, so the
    reconciler must not keep v2 as "the previous production": retired, it is dropped."""
    from registry.repository.git import Git
    from registry.repository.lifecycle import promote, retire, rollback, tag

    db = Database(dsn)
    v0, v1, v2 = (registry_repo.locked(chunk_size=s) for s in (400, 300, 200))
    tag(Git(registry_repo.path))
    reconcile(registry_repo.path, dsn=dsn)
    for version in (v0, v1, v2):
        db.fill(table_of(version))
        registry_repo.merge(promote(Git(registry_repo.path), version).branch)
        reconcile(registry_repo.path, dsn=dsn)
    registry_repo.merge(rollback(Git(registry_repo.path)).branch)
    reconcile(registry_repo.path, dsn=dsn)
    assert db.view_target() == [table_of(v1)]

    with pytest.raises(Refused, match=f"cannot retire {v0}: it is the previous production"):
        retire(Git(registry_repo.path), v0)
    registry_repo.merge(retire(Git(registry_repo.path), v2).branch)
    now = db.query("SELECT now()")[0][0]
    reconcile(registry_repo.path, dsn=dsn)
    reconcile(registry_repo.path, dsn=dsn, now=now + timedelta(hours=49))

    assert db.managed() == {table_of(v0): "shadow", table_of(v1): "production",
                            table_of(v2): "dropped"}
