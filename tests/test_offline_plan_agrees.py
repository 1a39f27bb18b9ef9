"""The offline PR plan (`plan --base main --head BRANCH`, the PR check) says what the merge
does: for forced and unforced promotions, under the promotion path gate (staging's soak) and
the eval gate, its verdict is what `reconcile` does once the branch is merged. What only the
database knows (the soak's clock, an eval comparison), the offline plan names as the
reconciler's check instead of guessing: a guess failed the PR check of promotions the
reconciler then applied (reviewer defect 8: every `promote --force` past the path gate)."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry.config import set_production_pointer
from tests.database import Database, promote, table_of
from tests.helpers import PRODUCTION_YAML, RegistryRepo, run_cli
from tests.test_health_eval import Corpus

PATH_YAML = PRODUCTION_YAML.replace(
    "production: null", "registry: acme\nproduction: null\n"
    "promotion: {from: staging, soak: 24h, require_healthy: false}")
STAGING_YAML = "serves: null\ntables: {schema: staging, base_name: document_chunks}\n"
EVAL_YAML = PRODUCTION_YAML.replace("max_drop: 0.02}", "max_drop: 0.02, require_eval: true}")


def cli(repo: RegistryRepo, *args: str | Path) -> tuple[int, str]:
    result = run_cli(*args, "--repo", str(repo.path))
    return result.code, result.stdout + result.stderr


def hand_promotion(repo: RegistryRepo, version: str) -> str:
    """A PR moving production to `version` by hand (no `registry promote`, no gate asked)."""
    branch = f"hand/{version}"
    repo.git("checkout", "--quiet", "-b", branch, "main")
    raw = (repo.path / "configs" / "production.yaml").read_bytes()
    repo.write("configs/production.yaml", set_production_pointer(raw, version).decode(),
               f"Promote {version} by hand")
    repo.git("checkout", "--quiet", "main")
    return branch


def offline_then_merged(repo: RegistryRepo, dsn: str, branch: str
                        ) -> tuple[tuple[int, str], tuple[int, str]]:
    """The PR check's answer for `branch`, then the reconciler's once it is merged."""
    offline = cli(repo, "plan", "--base", "main", "--head", branch)
    repo.merge(branch)
    return offline, cli(repo, "reconcile", "--dsn", dsn)


@pytest.fixture
def path_gated(registry_repo: RegistryRepo, dsn: str) -> tuple[RegistryRepo, str]:
    """production takes versions from staging after a 24h soak; v1 locked, tagged, its
    production table created and filled; staging serves nothing."""
    repo = registry_repo
    repo.write("configs/production.yaml", PATH_YAML)
    repo.write("configs/environments/staging.yaml", STAGING_YAML, "Declare staging")
    version = repo.locked()
    assert cli(repo, "tag", "--push")[0] == 0
    assert cli(repo, "reconcile", "--dsn", dsn)[0] == 0
    Database(dsn).fill(table_of(version))
    return repo, version


@pytest.mark.parametrize("forced", [True, False])
@pytest.mark.slow
def test_the_path_gate_offline_is_what_the_reconciler_does(
    path_gated: tuple[RegistryRepo, str], dsn: str, forced: bool
) -> None:
    """A version staging does not serve: forced, the PR check passes and the merge swaps;
    unforced (a hand-made PR), both refuse."""
    repo, version = path_gated
    if forced:
        code, out = cli(repo, "promote", version, "--force", "--dsn", dsn)
        assert code == 0, out
        branch = f"promote/{version}"
    else:
        branch = hand_promotion(repo, version)

    (offline, offline_out), (merged, merged_out) = offline_then_merged(repo, dsn, branch)

    assert (offline, merged) == ((0, 0) if forced else (7, 7)), offline_out + merged_out
    assert "not what staging serves" in offline_out and "not what staging serves" in merged_out
    if forced:
        assert "promoted with --force" in offline_out and "promoted with --force" in merged_out
        assert "checks the 24h soak" not in offline_out, offline_out
        assert Database(dsn).view_target() == [table_of(version)]
    else:
        assert Database(dsn).relkind("document_chunks") is None


@pytest.mark.slow
def test_a_soaked_promotion_passes_offline_and_is_applied(
    path_gated: tuple[RegistryRepo, str], dsn: str
) -> None:
    repo, version = path_gated
    code, out = cli(repo, "promote", version, "--environment", "staging")
    assert code == 0, out
    repo.merge(f"promote/staging/{version}")
    code, out = cli(repo, "reconcile", "--environment", "staging", "--dsn", dsn)
    assert code == 7 and "refusing to swap staging to staging." in out, out
    assert "the table is empty" in out, out
    staging = Database(dsn)
    staging.schema = "staging"
    staging.fill(table_of(version))
    assert cli(repo, "reconcile", "--environment", "staging", "--dsn", dsn)[0] == 0
    staging.execute("UPDATE chunk_registry.managed_tables SET promoted_at = promoted_at - "
                    "interval '25 hours' WHERE schema_name = 'staging' AND status = 'production'")
    code, out = cli(repo, "promote", version, "--dsn", dsn)
    assert code == 0, out

    (offline, offline_out), (merged, merged_out) = offline_then_merged(
        repo, dsn, f"promote/{version}")

    assert (offline, merged) == (0, 0), offline_out + merged_out
    assert "checks the 24h soak in staging's database" in offline_out
    assert Database(dsn).view_target() == [table_of(version)]


@pytest.fixture
def eval_gated(registry_repo: RegistryRepo, dsn: str, corpus: Corpus
               ) -> tuple[RegistryRepo, str]:
    """gates.require_eval; v1 production (ingested), v2 locked (same chunking), ingested and
    tagged: the swap to v2 waits for a comparison against production."""
    repo = registry_repo
    repo.write("configs/production.yaml", EVAL_YAML, "Require an eval comparison")
    tokenizer = ("--tokenizer-file", str(repo.tokenizer_file))
    v1 = repo.locked()
    promote(repo, v1)
    assert cli(repo, "reconcile", "--dsn", dsn, "--source", corpus.path, *tokenizer)[0] == 0
    v2 = repo.locked(description="the same chunking, locked again")
    assert cli(repo, "reconcile", "--dsn", dsn, "--source", corpus.path, *tokenizer)[0] == 0
    assert cli(repo, "tag", "--push")[0] == 0
    return repo, v2


@pytest.mark.parametrize("how", ["forced", "compared", "never compared"])
@pytest.mark.slow
def test_the_eval_gate_offline_is_what_the_reconciler_does(
    eval_gated: tuple[RegistryRepo, str], dsn: str, corpus: Corpus, how: str
) -> None:
    """Forced, or compared and passed: the PR check passes and the merge swaps (the offline
    plan used to block both with "never compared", which it cannot know). Never compared:
    the PR check names the comparison the reconciler then refuses the swap for."""
    repo, version = eval_gated
    if how == "compared":
        code, out = cli(repo, "eval", "--compare", version, "--against", "production",
                        "--cases", corpus.cases, "--dsn", dsn)
        assert code == 0, out
    promote_args = ("--force", "--dsn", dsn) if how == "forced" else ()
    code, out = cli(repo, "promote", version, *promote_args)
    assert code == 0, out

    (offline, offline_out), (merged, merged_out) = offline_then_merged(
        repo, dsn, f"promote/{version}")

    assert offline == 0, offline_out
    if how == "never compared":
        assert merged == 7, merged_out
        assert (f"the reconciler checks {version}'s last comparison against production "
                "(gates.require_eval") in offline_out
        assert "never compared" in merged_out
        return
    assert merged == 0, merged_out
    assert Database(dsn).view_target() == [table_of(version)]
    if how == "forced":
        assert "promoted with --force" in offline_out, offline_out
