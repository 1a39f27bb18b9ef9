"""Production changes only by a merge: what is not this registry's merged, locked config never
reaches the database, and what belongs to another registry is never touched. Every case is a
user's command line against real git and PostgreSQL (issue 13)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from registry.commands.reconcile import reconcile as reconcile_api
from registry.serving import Router
from tests.database import Database, promote, retire, table_of
from tests.helpers import PRODUCTION_YAML, RegistryRepo, run_cli
from tests.test_health_eval import Corpus, write_corpus

FAST_RETENTION = "retention: {grace_period: 1s, keep_previous: 1}"


def reconcile(repo: RegistryRepo, dsn: str, *args: str) -> tuple[int, str]:
    result = run_cli("reconcile", "--repo", repo.path, "--dsn", dsn, *args)
    return result.code, result.stdout + result.stderr


def with_settings(tmp: Path, tokenizer: Path, name: str, **lines: str) -> RegistryRepo:
    """A registry whose production.yaml has some lines replaced (key -> whole line)."""
    text = "\n".join(lines.get(line.split(":", 1)[0], line) for line in PRODUCTION_YAML.splitlines())
    extra = [line for key, line in lines.items() if f"\n{key}:" not in "\n" + PRODUCTION_YAML]
    (tmp / name).mkdir()
    return RegistryRepo.create(tmp / name, tokenizer, "\n".join([text, *extra]) + "\n")


def test_a_moved_tag_over_an_edited_config_is_refused_before_any_sql(
    registry_repo: RegistryRepo, dsn: str
) -> None:
    version = registry_repo.locked()
    assert run_cli("tag", "--repo", registry_repo.path).code == 0
    path = f"configs/{version}.yaml"
    edited = registry_repo.read(path).replace("chunk_size: 450", "chunk_size: 300")
    registry_repo.write(path, edited, f"Edit {version} in place")
    registry_repo.git("tag", "-f", "-a", f"chunk-config/{version}", "-m", "moved", "HEAD")

    code, out = reconcile(registry_repo, dsn)

    assert code != 0, out
    assert version in out and "tag" in out
    assert Database(dsn).query("SELECT to_regnamespace('chunk_registry')") == [(None,)]
    assert Database(dsn).tables() == []


@pytest.mark.slow
def test_two_registries_share_a_database_and_never_touch_each_others_tables(
    tmp_path: Path, tokenizer_file: Path, dsn: str
) -> None:
    team_a = with_settings(tmp_path, tokenizer_file, "a", registry="registry: team-a",
                           tables="tables: {schema: public, base_name: document_chunks}",
                           retention=FAST_RETENTION)
    team_b = with_settings(tmp_path, tokenizer_file, "b", registry="registry: team-b",
                           tables="tables: {schema: team_b, base_name: document_chunks}",
                           retention=FAST_RETENTION)
    db = Database(dsn)
    db.execute("CREATE SCHEMA team_b")
    a1, b1 = team_a.locked(), team_b.locked(chunk_size=300)
    assert reconcile(team_a, dsn)[0] == 0
    assert reconcile(team_b, dsn)[0] == 0
    db.fill(table_of(a1))
    Database(dsn, "team_b").fill(table_of(b1))
    promote(team_a, a1)
    promote(team_b, b1)

    for _ in range(2):
        assert reconcile(team_a, dsn)[0] == 0
        assert reconcile(team_b, dsn)[0] == 0

    assert db.view_target() == [table_of(a1)]
    assert Database(dsn, "team_b").view_target() == [table_of(b1)]
    assert db.count(table_of(a1)) == 3
    assert Database(dsn, "team_b").count(table_of(b1)) == 3


@pytest.mark.slow
def test_a_reconcile_from_the_wrong_repository_changes_nothing_and_says_why(
    tmp_path: Path, tokenizer_file: Path, dsn: str
) -> None:
    ours = with_settings(tmp_path, tokenizer_file, "ours", registry="registry: ours")
    theirs = with_settings(tmp_path, tokenizer_file, "theirs", registry="registry: theirs")
    v1 = ours.locked()
    assert reconcile(ours, dsn)[0] == 0
    Database(dsn).fill(table_of(v1))
    promote(ours, v1)
    assert reconcile(ours, dsn)[0] == 0
    theirs.locked(chunk_size=200)
    other = theirs.locked(chunk_size=300)  # a second lock: never ours' version, even in its second
    assert table_of(other) != table_of(v1)
    promote(theirs, other)

    code, out = reconcile(theirs, dsn)

    assert code != 0
    assert "ours" in out and "theirs" in out
    assert Database(dsn).view_target() == [table_of(v1)]
    assert table_of(other) not in Database(dsn).tables()


@pytest.mark.slow
def test_a_forged_bookkeeping_row_never_gets_a_table_dropped(
    tmp_path: Path, tokenizer_file: Path, dsn: str
) -> None:
    repo = with_settings(tmp_path, tokenizer_file, "r", retention=FAST_RETENTION)
    repo.locked()
    assert reconcile(repo, dsn)[0] == 0
    db = Database(dsn)
    db.execute("CREATE SCHEMA billing")
    db.execute("CREATE TABLE billing.invoices (id int)")
    db.execute("INSERT INTO billing.invoices VALUES (1)")
    db.execute("CREATE TABLE public.document_chunks_2020_01_01_000000_v1 (id int)")
    columns = [row[0] for row in db.query(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = 'chunk_registry' "
        "AND table_name = 'managed_tables' AND is_nullable = 'NO' AND column_default IS NULL")]
    template = db.query("SELECT " + ", ".join(columns) + " FROM chunk_registry.managed_tables "
                        "LIMIT 1")[0]
    for schema, table, version in (
            ("billing", "invoices", "2020-01-02-000000-v1"),
            ("public", "document_chunks_2020_01_01_000000_v1", "2020-01-01-000000-v1")):
        values = dict(zip(columns, template, strict=True)) | {
            "schema_name": schema, "table_name": table, "chunk_version": version,
            "status": "retired"}
        placeholders = ", ".join(["%s"] * len(values))
        db.execute(f"INSERT INTO chunk_registry.managed_tables ({', '.join(values)}, retired_at) "
                   f"VALUES ({placeholders}, now() - interval '30 days')", list(values.values()))

    reconcile(repo, dsn)
    plan = run_cli("plan", "--repo", repo.path, "--dsn", dsn, "--format", "json")

    assert db.query("SELECT count(*) FROM billing.invoices") == [(1,)]
    assert db.relkind("document_chunks_2020_01_01_000000_v1") == "r"
    assert "invoices" not in plan.stdout
    assert "2020_01_01" not in json.dumps(json.loads(plan.stdout)["actions"])


@pytest.fixture
def corpus(tmp_path: Path) -> Corpus:
    return write_corpus(tmp_path / "corpus")


@pytest.mark.slow
def test_a_table_dropped_by_hand_is_not_ingested_and_reconcile_source_refills_it(
    registry_repo: RegistryRepo, dsn: str, corpus: Corpus
) -> None:
    version = registry_repo.locked()
    tokenizer = ("--tokenizer-file", str(registry_repo.tokenizer_file))
    assert reconcile(registry_repo, dsn, "--source", str(corpus.path), *tokenizer)[0] == 0
    filled = Database(dsn).count(table_of(version))
    assert filled > 0
    Database(dsn).execute(f"DROP TABLE public.{table_of(version)}")

    status = run_cli("status", "--repo", registry_repo.path, "--dsn", dsn, "--format", "json")
    code, out = reconcile(registry_repo, dsn, "--source", str(corpus.path), *tokenizer)

    row = next(r for r in json.loads(status.stdout)["configs"] if r["chunk_version"] == version)
    assert row["status"] != "Synced", row
    assert code == 0, out
    assert "already" not in out
    assert Database(dsn).count(table_of(version)) == filled


@pytest.mark.slow
def test_a_retention_change_pr_plan_shows_the_drops_it_causes(
    registry_repo: RegistryRepo, dsn: str
) -> None:
    v1 = registry_repo.locked()
    v2 = registry_repo.locked(chunk_size=300)
    assert reconcile(registry_repo, dsn)[0] == 0
    Database(dsn).fill(table_of(v2))
    promote(registry_repo, v2)
    registry_repo.git("rm", "--quiet", f"configs/{v1}.yaml")
    registry_repo.git("commit", "--quiet", "-m", f"Retire {v1}")
    registry_repo.git("push", "--quiet", "origin", "main")
    assert reconcile(registry_repo, dsn)[0] == 0
    registry_repo.git("checkout", "--quiet", "-b", "short-grace")
    text = registry_repo.read("configs/production.yaml").replace("grace_period: 48h",
                                                                "grace_period: 1s")
    registry_repo.write("configs/production.yaml", text, "Shorter grace period")

    offline = run_cli("plan", "--repo", registry_repo.path, "--base", "main", "--head",
                      "short-grace")

    assert "No changes" not in offline.stdout
    assert "grace_period" in offline.stdout and "48h" in offline.stdout


def test_a_base_name_rename_pr_fails_the_pr_check(registry_repo: RegistryRepo) -> None:
    registry_repo.locked()
    registry_repo.git("checkout", "--quiet", "-b", "rename")
    text = registry_repo.read("configs/production.yaml").replace("base_name: document_chunks",
                                                                "base_name: chunks")
    registry_repo.write("configs/production.yaml", text, "Rename the base name")

    offline = run_cli("plan", "--repo", registry_repo.path, "--base", "main", "--head", "rename")
    validate = run_cli("validate", "--repo", registry_repo.path, "--ref", "rename")

    assert offline.code != 0, offline.stdout
    assert validate.code != 0, validate.stdout


@pytest.mark.slow
def test_a_forced_promotion_is_honoured_and_seen_the_same_way_everywhere(
    registry_repo: RegistryRepo, dsn: str, corpus: Corpus, tmp_path: Path
) -> None:
    """promote --force records the force in the merged commit and the reconciler honours it:
    git, the view, active_config(), plan, status and health agree that it is production."""
    import registry

    tokenizer = ("--tokenizer-file", str(registry_repo.tokenizer_file))
    v1 = registry_repo.locked()
    assert reconcile(registry_repo, dsn, "--source", str(corpus.path), *tokenizer)[0] == 0
    promote(registry_repo, v1)
    assert reconcile(registry_repo, dsn)[0] == 0
    weak = write_corpus(tmp_path / "weak", drop_answers=7)
    v2 = registry_repo.locked(chunk_size=300)
    assert reconcile(registry_repo, dsn)[0] == 0
    assert run_cli("ingest", v2, "--repo", registry_repo.path, "--dsn", dsn, "--source",
                   weak.path, *tokenizer).code == 0
    gate = run_cli("eval", "--compare", v2, "--against", "production", "--repo",
                   registry_repo.path, "--dsn", dsn, "--cases", corpus.cases)
    assert gate.code != 0, gate.stdout
    assert run_cli("tag", "--repo", registry_repo.path).code == 0
    forced = run_cli("promote", v2, "--force", "--repo", registry_repo.path, "--dsn", dsn)
    assert forced.code == 0, forced.stderr
    registry_repo.merge(f"promote/{v2}")

    pending = run_cli("plan", "--repo", registry_repo.path, "--dsn", dsn)
    code, out = reconcile(registry_repo, dsn)
    status = json.loads(run_cli("status", "--repo", registry_repo.path, "--dsn", dsn,
                                "--format", "json").stdout)
    health = run_cli("health", "--repo", registry_repo.path, "--dsn", dsn, "--format", "json",
                     "--no-record", *tokenizer)

    assert "force" in pending.stdout.lower() and v2 in pending.stdout
    assert code == 0, out
    assert Database(dsn).view_target() == [table_of(v2)]
    assert registry.active_config(repo=registry_repo.path).chunk_version == v2
    assert [r["chunk_version"] for r in status["configs"] if r.get("production")] == [v2]
    assert json.loads(health.stdout)["chunk_version"] == v2


@pytest.mark.parametrize("promoted", [True, False], ids=["serving", "shadow-only"])
@pytest.mark.slow
def test_a_named_registry_never_takes_an_unnamed_registrys_tables(
    tmp_path: Path, tokenizer_file: Path, dsn: str, promoted: bool
) -> None:
    """Both use public.document_chunks: the unnamed one's legacy identity is not the named
    one's, whose configs differ (reviewer's t1: its view was swapped, its table retired)."""
    unnamed = with_settings(tmp_path, tokenizer_file, "unnamed", retention=FAST_RETENTION)
    named = with_settings(tmp_path, tokenizer_file, "named", registry="registry: beta",
                          retention=FAST_RETENTION)
    a1 = unnamed.locked()
    assert reconcile(unnamed, dsn)[0] == 0
    db = Database(dsn)
    if promoted:
        db.fill(table_of(a1))
        promote(unnamed, a1)
        assert reconcile(unnamed, dsn)[0] == 0
    named.locked(chunk_size=300)
    b2 = named.locked(chunk_size=200)
    before = db.query("SELECT registry, table_name, status FROM chunk_registry.managed_tables")

    code, out = reconcile(named, dsn)
    plan = run_cli("plan", "--repo", named.path, "--dsn", dsn)

    assert code == 7, out
    assert "public.document_chunks" in out and "without a registry: name" in out
    assert "blocked" in plan.stdout and "beta" in plan.stdout
    assert db.query("SELECT registry, table_name, status FROM chunk_registry.managed_tables"
                    ) == before
    assert db.tables() == [table_of(a1)]
    assert db.view_target() == ([table_of(a1)] if promoted else [])
    promote(named, b2)
    assert reconcile(named, dsn)[0] == 7
    assert reconcile(unnamed, dsn)[0] == 0
    assert db.tables() == [table_of(a1)]


@pytest.mark.slow
def test_a_registry_that_takes_a_name_keeps_its_tables_serves_once_and_drops_them_retired(
    registry_repo: RegistryRepo, dsn: str
) -> None:
    """Adding `registry:` adopts what the registry made before (its own configs), records it
    under the new name (so retiring those configs later still finds them its own), publishes
    one served state for the environment and stops serving under the old identity."""
    repo = registry_repo
    repo.write("configs/production.yaml", PRODUCTION_YAML.replace(
        "grace_period: 48h", "grace_period: 1s"), "fast retention")
    v1, v2, v3 = repo.locked(), repo.locked(chunk_size=300), repo.locked(chunk_size=200)
    assert reconcile(repo, dsn)[0] == 0
    db = Database(dsn)
    for version in (v1, v2, v3):
        db.fill(table_of(version))
    promote(repo, v1)
    assert reconcile(repo, dsn)[0] == 0
    router = Router(dsn, check_interval=0)
    assert router.table(key="u1") == f"public.{table_of(v1)}"
    served = "SELECT registry, environment FROM chunk_registry.served_state"

    repo.write("configs/production.yaml", "registry: acme\n" + repo.read("configs/production.yaml"),
               "name the registry")
    assert reconcile(repo, dsn)[0] == 0

    assert db.query(served) == [("acme", "production")]
    assert router.table(key="u1") == f"public.{table_of(v1)}"
    assert Router(dsn).table(key="u1") == f"public.{table_of(v1)}"
    assert db.query("SELECT DISTINCT registry FROM chunk_registry.managed_tables") == [("acme",)]
    assert db.query("SELECT count(*) FROM chunk_registry.served_tables "
                    "WHERE registry <> 'acme' AND served_until IS NULL") == [(0,)]

    promote(repo, v2)
    assert reconcile(repo, dsn)[0] == 0
    assert router.table(key="u1") == f"public.{table_of(v2)}"
    promote(repo, v3)  # v1 is no longer the one previous production kept
    assert reconcile(repo, dsn)[0] == 0
    retire(repo, v1)
    code, out = reconcile(repo, dsn)
    assert code == 0 and "retire" in out, out
    later = db.query("SELECT now() + interval '5 minutes'")[0][0]
    reconcile_api(repo.path, dsn=dsn, now=later)

    assert db.tables() == [table_of(v2), table_of(v3)]
    assert db.query(served) == [("acme", "production")]


@pytest.mark.slow
def test_a_renamed_registrys_router_never_mistakes_the_new_state_for_the_old(
    registry_repo: RegistryRepo, dsn: str
) -> None:
    """A router that knew version N of the old identity's state reads the new identity's
    version N as the state it is (the new name publishes from version 1)."""
    repo = registry_repo
    v1, v2, v3 = repo.locked(), repo.locked(chunk_size=300), repo.locked(chunk_size=200)
    assert reconcile(repo, dsn)[0] == 0
    db = Database(dsn)
    for version in (v1, v2, v3):
        db.fill(table_of(version))
    promote(repo, v1)
    assert reconcile(repo, dsn)[0] == 0
    router = Router(dsn, check_interval=0)
    known = router.snapshot()
    repo.write("configs/production.yaml", "registry: acme\n" + repo.read("configs/production.yaml"),
               "name the registry")
    promote(repo, v2)
    assert reconcile(repo, dsn)[0] == 0
    promote(repo, v3)
    assert reconcile(repo, dsn)[0] == 0
    version = db.query("SELECT version FROM chunk_registry.served_state")[0][0]
    assert version == known.version, "the case needs equal versions across the rename"

    assert router.table(key="u1") == f"public.{table_of(v3)}"
    assert router.snapshot().registry == "acme"


@pytest.mark.parametrize("first", ["longer", "shorter"])
@pytest.mark.slow
def test_a_base_name_that_extends_another_is_never_taken_for_it(
    tmp_path: Path, tokenizer_file: Path, dsn: str, first: str
) -> None:
    """document_chunks_en_<version> is not a table of base name document_chunks: neither
    registry is refused nor warned about the other's tables (reviewer's t8)."""
    short = with_settings(tmp_path, tokenizer_file, "short", registry="registry: team-a")
    long = with_settings(tmp_path, tokenizer_file, "long", registry="registry: team-en",
                         tables="tables: {schema: public, base_name: document_chunks_en}")
    a1, b1 = short.locked(), long.locked(chunk_size=300)
    order = [long, short] if first == "longer" else [short, long]

    outputs = [reconcile(repo, dsn) for repo in order * 2]

    assert [code for code, _ in outputs] == [0, 0, 0, 0], outputs
    assert not any("looks like a registry" in out for _, out in outputs), outputs
    longer = "document_chunks_en_" + b1.replace("-", "_")
    assert sorted(Database(dsn).tables()) == sorted([table_of(a1), longer])
    status = run_cli("status", "--repo", short.path, "--dsn", dsn)
    assert status.code == 0 and "document_chunks_en" not in status.stdout, status.stdout


@pytest.mark.slow
def test_an_environment_whose_base_name_extends_productions_is_its_own(
    registry_repo: RegistryRepo, dsn: str
) -> None:
    """staging's document_chunks_staging_<version> next to production's document_chunks
    (reviewer's t20): both environments reconcile, each keeps its tables."""
    repo = registry_repo
    repo.write("configs/production.yaml", "registry: acme\n" + PRODUCTION_YAML, "name it")
    v1 = repo.locked()
    repo.write("configs/environments/staging.yaml",
               "serves: null\ntables: {schema: public, base_name: document_chunks_staging}\n",
               "staging")

    staging = reconcile(repo, dsn, "--environment", "staging")
    production = reconcile(repo, dsn)
    again = reconcile(repo, dsn, "--environment", "staging")

    for code, out in (staging, production, again):
        assert code == 0, out
        assert "looks like a registry" not in out, out
    assert sorted(Database(dsn).tables()) == sorted(
        [table_of(v1), f"document_chunks_staging_{v1.replace('-', '_')}"])
