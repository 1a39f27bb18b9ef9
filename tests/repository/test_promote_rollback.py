"""promote, retire, rollback: a branch from main with one commit, the checkout untouched, and
the refusals that keep production safe. Rollback is a real `git revert`, whichever way the
promotion reached main."""

from __future__ import annotations

import json

import pytest

from registry.commands import changes
from registry.errors import Refused, UnknownVersion
from registry.repository.git import Git
from registry.repository.history import read_history
from registry.repository.lifecycle import promote, retire, rollback, tag
from registry.repository.state import read_state
from tests.helpers import RegistryRepo, run_cli


def production_on(repo: RegistryRepo, ref: str) -> str | None:
    return read_state(Git(repo.path), ref).settings.production


def promoted(repo: RegistryRepo, version: str, how: str = "merge") -> str:
    """Tag what is on main, then promote `version` and merge the PR `how` GitHub would."""
    tag(Git(repo.path))
    result = promote(Git(repo.path), version)
    return repo.merge(result.branch, how=how)


def test_promote_makes_a_one_line_commit_on_a_branch_and_leaves_the_checkout_alone(
    registry_repo: RegistryRepo,
) -> None:
    v1 = registry_repo.locked()
    tag(Git(registry_repo.path))
    registry_repo.git("checkout", "--quiet", "-b", "my-work")
    registry_repo.write("configs/production.yaml", "production: scribble\n")
    head = registry_repo.head()

    result = promote(Git(registry_repo.path), v1)

    assert registry_repo.git("rev-parse", "--abbrev-ref", "HEAD") == "my-work"
    assert registry_repo.head() == head
    assert registry_repo.read("configs/production.yaml") == "production: scribble\n"
    assert result.branch == f"promote/{v1}" and result.previous is None
    assert registry_repo.git("rev-list", "--count", f"main..{result.branch}") == "1"
    diff = registry_repo.git("diff", "-U0", "main", result.branch)
    changed = [line for line in diff.splitlines() if line[:1] in "+-" and line[:3] not in "+++---"]
    assert changed == ["-production: null", f"+production: {v1}"]
    message = registry_repo.git("log", "-1", "--format=%B", result.branch)
    assert message.startswith(f"Promote chunk config {v1} to production\n")
    assert message.rstrip().endswith(f"Chunk-Version: {v1}")
    assert production_on(registry_repo, result.branch) == v1


def test_promote_refuses_what_is_not_locked_on_main_untagged_or_already_production(
    registry_repo: RegistryRepo,
) -> None:
    unmerged = registry_repo.lock()
    with pytest.raises(UnknownVersion, match=f"cannot promote {unmerged}: it is not a locked "
                       "config"):
        promote(Git(registry_repo.path), unmerged)
    with pytest.raises(UnknownVersion, match="is not a chunk_version"):
        promote(Git(registry_repo.path), "../etc/passwd")

    v1 = registry_repo.locked()
    with pytest.raises(Refused, match=f"{v1} has no lock tag chunk-config/{v1}") as refused:
        promote(Git(registry_repo.path), v1)
    assert refused.value.exit_code == 7

    promoted(registry_repo, v1)
    with pytest.raises(Refused, match=f"{v1} is already production on origin/main"):
        promote(Git(registry_repo.path), v1)
    assert registry_repo.git("branch", "--list", "promote/*").split() == [f"promote/{v1}"]


@pytest.mark.slow
def test_retire_deletes_the_config_but_never_production_or_the_rollback_target(
    registry_repo: RegistryRepo,
) -> None:
    v1, v2, v3 = registry_repo.locked(), registry_repo.locked(), registry_repo.locked()
    promoted(registry_repo, v1)
    promoted(registry_repo, v2)

    with pytest.raises(Refused, match=f"cannot retire {v2}: it is production"):
        retire(Git(registry_repo.path), v2)
    with pytest.raises(Refused, match=f"cannot retire {v1}: it is the previous production"):
        retire(Git(registry_repo.path), v1)

    result = retire(Git(registry_repo.path), v3)
    assert result.branch == f"retire/{v3}"
    assert registry_repo.git("diff", "--name-status", "main", result.branch) == (
        f"D\tconfigs/{v3}.yaml"
    )
    assert f"Chunk-Version: {v3}" in registry_repo.git("log", "-1", "--format=%B", result.branch)
    assert (registry_repo.path / "configs" / f"{v3}.yaml").exists()


@pytest.mark.parametrize("how", ["merge", "squash", "rebase"])
def test_rollback_reverts_the_last_promotion_however_it_was_merged(
    registry_repo: RegistryRepo, how: str
) -> None:
    v1, v2 = registry_repo.locked(), registry_repo.locked()
    promoted(registry_repo, v1)
    promotion = promoted(registry_repo, v2, how=how)
    registry_repo.git("checkout", "--quiet", "-b", "elsewhere")
    registry_repo.write("scratch.txt", "dirty\n")

    result = rollback(Git(registry_repo.path))

    assert registry_repo.git("rev-parse", "--abbrev-ref", "HEAD") == "elsewhere"
    assert registry_repo.git("status", "--porcelain") == "?? scratch.txt"
    assert registry_repo.git("worktree", "list").count("\n") == 0
    assert result.branch == f"rollback/{v1}"
    assert (result.chunk_version, result.previous, result.reverted) == (v1, v2, promotion)
    assert registry_repo.git("rev-parse", f"{result.branch}^") == registry_repo.head("main")
    assert registry_repo.git("diff", "--name-only", "main", result.branch) == (
        "configs/production.yaml"
    )
    assert production_on(registry_repo, result.branch) == v1
    message = registry_repo.git("log", "-1", "--format=%B", result.branch)
    assert f"This reverts commit {promotion}." in message
    assert message.rstrip().endswith(f"Chunk-Version: {v1}")

    registry_repo.merge(result.branch)
    assert production_on(registry_repo, "main") == v1
    with pytest.raises(Refused, match=f"nothing to roll back to: {v1} is the first production"):
        rollback(Git(registry_repo.path))


def test_rollback_refuses_when_there_is_nothing_to_roll_back_to(
    registry_repo: RegistryRepo,
) -> None:
    with pytest.raises(Refused, match="origin/main has no promotion to roll back"):
        rollback(Git(registry_repo.path))
    v1 = registry_repo.locked()
    promoted(registry_repo, v1)
    with pytest.raises(Refused, match="nothing to roll back to"):
        rollback(Git(registry_repo.path))
    assert registry_repo.git("branch", "--list", "rollback/*") == ""


@pytest.mark.slow
def test_rollback_refuses_a_promotion_merge_that_also_changed_something_else(
    registry_repo: RegistryRepo,
) -> None:
    v1, v2 = registry_repo.locked(), registry_repo.locked()
    promoted(registry_repo, v1)
    tag(Git(registry_repo.path))
    branch = promote(Git(registry_repo.path), v2).branch
    registry_repo.git("checkout", "--quiet", branch)
    registry_repo.write("README.md", "notes\n", "Add notes")
    registry_repo.merge(branch)

    only = r"would change README\.md, not just configs/production\.yaml"
    with pytest.raises(Refused, match=only):
        rollback(Git(registry_repo.path))
    assert registry_repo.git("worktree", "list").count("\n") == 0


@pytest.mark.slow
def test_history_reads_locks_promotions_rollbacks_and_retirements_newest_first(
    registry_repo: RegistryRepo,
) -> None:
    v1, v2, v3 = registry_repo.locked(), registry_repo.locked(), registry_repo.locked()
    promoted(registry_repo, v1, how="squash")
    promoted(registry_repo, v2)
    registry_repo.merge(rollback(Git(registry_repo.path)).branch, how="squash")
    registry_repo.merge(retire(Git(registry_repo.path), v3).branch, how="rebase")

    events = read_history(Git(registry_repo.path))

    summary = [(e.kind, e.chunk_version, e.previous, e.merge, e.pr) for e in events]
    assert summary == [
        ("retire", v3, None, "commit", None),
        ("rollback", v1, v2, "squash", 2),
        ("promote", v2, v1, "merge", 1),
        ("promote", v1, None, "squash", 2),
        ("lock", v3, None, "merge", 1),
        ("lock", v2, None, "merge", 1),
        ("lock", v1, None, "merge", 1),
    ]
    tags = {e.tag for e in events if e.kind == "lock"}
    assert tags == {f"chunk-config/{v}" for v in (v1, v2, v3)}
    assert all(e.author == "Test Locker" and e.at for e in events)


def test_history_cli_prints_json_and_text(registry_repo: RegistryRepo) -> None:
    v1 = registry_repo.locked()
    promoted(registry_repo, v1)

    result = run_cli("history", "--repo", registry_repo.path, "--format", "json")
    assert result.code == 0
    data = json.loads(result.stdout)
    assert [(e["kind"], e["chunk_version"]) for e in data] == [("promote", v1), ("lock", v1)]
    text = run_cli("history", "--repo", registry_repo.path, "--limit", "1").stdout
    assert "promote" in text and v1 in text and "lock" not in text


def test_change_commands_report_refusals_as_one_line_with_exit_7(
    registry_repo: RegistryRepo,
) -> None:
    refused = run_cli("rollback", "--repo", registry_repo.path)
    assert refused.code == 7
    assert refused.stderr.startswith("error: origin/main has no promotion to roll back (")
    assert refused.stderr.count("\n") == 1

    v1 = registry_repo.locked()
    tag(Git(registry_repo.path))
    result = run_cli("promote", v1, "--repo", registry_repo.path, "--push", "--format", "json")
    assert result.code == 0
    data = json.loads(result.stdout)
    assert data["branch"] == f"promote/{v1}" and data["pushed"] is True
    assert registry_repo.git("ls-remote", "origin", f"refs/heads/promote/{v1}").startswith(
        data["commit"]
    )


def record_comparison(dsn: str, version: str, against: str, passed: bool) -> None:
    """A row as `registry eval --compare` writes it."""
    import psycopg
    from psycopg.types.json import Jsonb

    from registry.database.bookkeeping import ensure_schema

    regressions = [] if passed else ["oracle_hit_rate drops by 0.050 (0.470 -> 0.420), more than "
                                     "the allowed 0.020"]
    with psycopg.connect(dsn, autocommit=True) as conn:
        ensure_schema(conn)
        conn.execute(
            "INSERT INTO chunk_registry.eval_runs (chunk_version, against_version, kind, cases, "
            "metrics, passed, details, registry) VALUES (%s, %s, 'compare', 40, %s, %s, %s, "
            "'public.document_chunks')",
            (version, against, Jsonb({"oracle_hit_rate": 0.42 if not passed else 0.5}), passed,
             Jsonb({"regressions": regressions})),
        )


@pytest.mark.slow
def test_promote_is_gated_by_the_last_eval_comparison_when_a_database_is_given(
    registry_repo: RegistryRepo, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry_repo.write("configs/production.yaml", registry_repo.read("configs/production.yaml")
                        .replace("filter_hit_rate_max_drop: 0.02}",
                                 "filter_hit_rate_max_drop: 0.02, require_eval: true}"),
                        "Require an eval comparison before a promotion")
    v1, v2, v3 = registry_repo.locked(), registry_repo.locked(), registry_repo.locked()
    tag(Git(registry_repo.path))
    first = changes.promote(registry_repo.path, v1, dsn=dsn).result  # nothing to compare a first one against
    assert "Eval: no comparison" in registry_repo.git("log", "-1", "--format=%B", first.branch)
    registry_repo.merge(first.branch)

    with pytest.raises(Refused, match=f"{v2} has no eval comparison, and production.yaml "
                                      r"requires one \(gates.require_eval\)"):
        changes.promote(registry_repo.path, v2, dsn=dsn)
    record_comparison(dsn, v2, v1, passed=True)
    record_comparison(dsn, v2, v1, passed=False)
    with pytest.raises(Refused, match=f"the last eval comparison of {v2} against {v1} .* failed: "
                                      "oracle_hit_rate drops by 0.050") as refused:
        changes.promote(registry_repo.path, v2, dsn=dsn)
    assert refused.value.exit_code == 7

    forced = changes.promote(registry_repo.path, v2, dsn=dsn, force=True).result
    message = registry_repo.git("log", "-1", "--format=%B", forced.branch)
    assert "Eval: promoted with --force although the last comparison against" in message

    record_comparison(dsn, v3, v1, passed=True)
    monkeypatch.setenv("REGISTRY_DSN", dsn)
    result = run_cli("promote", v3, "--repo", registry_repo.path)
    assert result.code == 0, result.stderr
    message = registry_repo.git("log", "-1", "--format=%B", f"promote/{v3}")
    assert f"Eval: the last comparison against {v1}" in message and "oracle_hit_rate 0.500" in message
    assert message.rstrip().endswith(f"Chunk-Version: {v3}")
