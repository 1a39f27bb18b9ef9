"""The reconciler against real git and real PostgreSQL: lifecycle, safety rules, drift, locks."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from registry.commands.reconcile import plan, reconcile, status
from registry.errors import ReconcileBusy, Refused
from registry.reconciler.applier import Applier
from registry.reconciler.planner import CreateTable, Drop, Retire, SwapProduction, Unretire
from registry.reconciler.run import RunResult, acquire_lock
from tests.database import Database, promote, retire, table_of
from tests.helpers import PRODUCTION_YAML, RegistryRepo


@pytest.fixture
def db(dsn: str) -> Database:
    return Database(dsn)


def run(repo: RegistryRepo, db: Database, **options: Any) -> RunResult:
    return reconcile(repo.path, dsn=db.dsn, **options)


def later(db: Database, hours: float) -> Any:
    """The database clock `hours` from now (to let a grace period pass)."""
    return db.query("SELECT now()")[0][0] + timedelta(hours=hours)


def kinds(result: RunResult) -> list[str]:
    return [type(a).__name__ for a in result.plan.actions]


def serving(repo: RegistryRepo, db: Database, version: str) -> None:
    """Promote `version` (its table filled first, as an ingest would) and reconcile."""
    db.fill(table_of(version))
    promote(repo, version)
    result = run(repo, db)
    assert result.outcome == "applied", result.to_dict()


def promotion_pending(repo: RegistryRepo, db: Database, rows: int = 3) -> tuple[str, str]:
    """v1 serves production; v2 is ingested and its promotion merged, not yet reconciled."""
    v1, v2 = repo.locked(), repo.locked(chunk_size=300)
    run(repo, db)
    serving(repo, db, v1)
    db.fill(table_of(v2), rows=rows)
    promote(repo, v2)
    return v1, v2


def serving_shadow_retired(repo: RegistryRepo, db: Database) -> tuple[str, str, str]:
    """Three configs, reconciled: v1 serves production, v2 is an empty shadow, v3 retired."""
    v1, v2, v3 = (repo.locked(chunk_size=s) for s in (400, 300, 200))
    run(repo, db)
    serving(repo, db, v1)
    retire(repo, v3)
    run(repo, db)
    return v1, v2, v3


# ---------------------------------------------------------------------------------------------
# The lifecycle


@pytest.mark.slow
def test_first_reconcile_creates_the_table_and_refuses_an_empty_production(
    registry_repo: RegistryRepo, db: Database
) -> None:
    v1 = registry_repo.locked()
    promote(registry_repo, v1)

    first = run(registry_repo, db)

    assert kinds(first) == ["CreateTable"]
    assert first.outcome == "refused"
    assert db.tables() == [table_of(v1)]
    assert db.managed() == {table_of(v1): "shadow"}
    assert db.relkind("document_chunks") is None
    assert [f.kind for f in first.plan.blocking] == ["empty"]
    with pytest.raises(Refused, match="is empty"):
        first.raise_for_outcome()
    columns = db.query("SELECT column_name, is_generated FROM information_schema.columns "
                       "WHERE table_name = %s ORDER BY ordinal_position", (table_of(v1),))
    assert columns[-1] == ("bm25_tsv", "ALWAYS")
    indexes = {r[0] for r in db.query("SELECT indexdef FROM pg_indexes WHERE tablename = %s",
                                      (table_of(v1),))}
    assert any("USING gin (bm25_tsv)" in i for i in indexes)
    assert any("(doc_id, chunk_index)" in i for i in indexes)

    db.fill(table_of(v1))
    second = run(registry_repo, db)

    assert kinds(second) == ["SwapProduction"] and second.outcome == "applied"
    assert db.view_target() == [table_of(v1)]
    assert db.count("document_chunks") == 3
    assert db.managed() == {table_of(v1): "production"}
    assert [r["outcome"] for r in db.runs()] == ["refused", "applied"]


def test_force_creates_the_table_and_the_view_in_one_run(
    registry_repo: RegistryRepo, db: Database
) -> None:
    v1 = registry_repo.locked()
    promote(registry_repo, v1)

    result = run(registry_repo, db, force=True)

    assert kinds(result) == ["CreateTable", "SwapProduction"]
    assert result.outcome == "applied"
    assert db.view_target() == [table_of(v1)]
    assert db.count("document_chunks") == 0


@pytest.mark.slow
def test_second_reconcile_is_a_noop_that_runs_no_ddl(
    registry_repo: RegistryRepo, db: Database
) -> None:
    v1, v2 = registry_repo.locked(), registry_repo.locked(chunk_size=300)
    run(registry_repo, db)
    serving(registry_repo, db, v1)
    db.execute("CREATE TABLE ddl_log (tag text)")
    db.execute("CREATE FUNCTION log_ddl() RETURNS event_trigger LANGUAGE plpgsql AS "
               "$$ BEGIN INSERT INTO public.ddl_log VALUES (tg_tag); END $$")
    db.execute("CREATE EVENT TRIGGER log_ddl ON ddl_command_start EXECUTE FUNCTION log_ddl()")

    again = run(registry_repo, db)

    assert again.outcome == "noop" and again.results == []
    assert again.plan.in_sync
    assert db.query("SELECT tag FROM ddl_log") == []
    assert db.tables() == sorted([table_of(v1), table_of(v2)])
    assert db.runs()[-1]["outcome"] == "noop"


@pytest.mark.slow
def test_promote_and_revert_swap_the_view_while_a_reader_keeps_reading(
    registry_repo: RegistryRepo, db: Database
) -> None:
    v1, v2 = promotion_pending(registry_repo, db, rows=5)
    seen: list[str] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        with psycopg.connect(db.dsn, autocommit=True) as conn:
            while not stop.is_set():
                try:
                    row = conn.execute("SELECT min(chunk_version) FROM document_chunks").fetchone()
                    assert row is not None
                    if not seen or seen[-1] != row[0]:
                        seen.append(row[0])
                except BaseException as err:
                    errors.append(err)
                    return

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        time.sleep(0.1)
        promoted = run(registry_repo, db)
        time.sleep(0.1)
        registry_repo.git("revert", "--no-edit", "HEAD")
        registry_repo.git("push", "--quiet", "origin", "main")
        reverted = run(registry_repo, db)
        time.sleep(0.1)
    finally:
        stop.set()
        thread.join()

    assert errors == []
    assert seen == [v1, v2, v1]
    swap = promoted.plan.actions[0]
    assert isinstance(swap, SwapProduction)
    assert (swap.old_table, swap.table) == (table_of(v1), table_of(v2))
    assert kinds(reverted) == ["SwapProduction"]
    assert db.view_target() == [table_of(v1)]
    assert db.managed() == {table_of(v1): "production", table_of(v2): "shadow"}


@pytest.mark.slow
def test_retired_table_is_dropped_only_after_the_grace_period(
    registry_repo: RegistryRepo, db: Database
) -> None:
    v1, v2 = registry_repo.locked(), registry_repo.locked(chunk_size=300)
    run(registry_repo, db)
    serving(registry_repo, db, v1)
    retire(registry_repo, v2)

    retired = run(registry_repo, db)
    waiting = run(registry_repo, db, now=later(db, 47))
    dropped = run(registry_repo, db, now=later(db, 49))

    assert kinds(retired) == ["Retire"]
    assert db.managed()[table_of(v2)] == "dropped"
    assert kinds(waiting) == [] and [f.kind for f in waiting.plan.findings] == ["grace"]
    assert kinds(dropped) == ["Drop"]
    assert db.tables() == [table_of(v1)]


@pytest.mark.slow
def test_a_reverted_retirement_brings_the_table_back_as_a_shadow(
    registry_repo: RegistryRepo, db: Database
) -> None:
    v1, v2 = registry_repo.locked(), registry_repo.locked(chunk_size=300)
    run(registry_repo, db)
    retire(registry_repo, v2)
    run(registry_repo, db)
    registry_repo.git("revert", "--no-edit", "HEAD")
    registry_repo.git("push", "--quiet", "origin", "main")

    result = run(registry_repo, db)

    assert kinds(result) == ["Unretire"]
    assert db.managed() == {table_of(v1): "shadow", table_of(v2): "shadow"}


# ---------------------------------------------------------------------------------------------
# Safety rules


@pytest.mark.slow
def test_previous_production_is_kept_until_it_stops_being_the_rollback_target(
    registry_repo: RegistryRepo, db: Database
) -> None:
    v1, v2, v3 = (registry_repo.locked(chunk_size=s) for s in (400, 300, 200))
    run(registry_repo, db)
    serving(registry_repo, db, v1)
    serving(registry_repo, db, v2)
    retire(registry_repo, v1)

    kept = run(registry_repo, db, now=later(db, 100))
    kept_later = run(registry_repo, db, now=later(db, 100))
    db.fill(table_of(v3))
    promote(registry_repo, v3)
    moved_on = run(registry_repo, db, now=later(db, 100))

    assert kinds(kept) == ["Retire"]
    assert kinds(kept_later) == []
    assert [f.kind for f in kept_later.plan.findings] == ["kept"]
    assert kinds(moved_on) == ["SwapProduction", "Drop"]
    assert table_of(v1) not in db.tables()
    assert db.managed() == {table_of(v1): "dropped", table_of(v2): "shadow",
                            table_of(v3): "production"}


@pytest.mark.slow
def test_drop_rechecks_every_rule_inside_its_transaction(
    registry_repo: RegistryRepo, db: Database
) -> None:
    """A Drop built by hand (not by the planner) still cannot break a safety rule."""
    from registry.repository.git import Git
    from registry.repository.state import read_state

    v1, v2, v3, v4 = (registry_repo.locked(chunk_size=s) for s in (400, 300, 200, 100))
    run(registry_repo, db)
    serving(registry_repo, db, v1)
    serving(registry_repo, db, v2)
    retire(registry_repo, v1)
    retire(registry_repo, v3)
    run(registry_repo, db)
    db.execute("CREATE TABLE document_chunks_by_hand (id int)")
    settings = read_state(Git(registry_repo.path), "main").settings
    cases = [
        ("document_chunks_by_hand", 49, "never drops a table it does not manage"),
        (table_of(v2), 49, "is production, not retired"),
        (table_of(v1), 49, "is the previous production"),
        (table_of(v3), 1, "grace period 48h is not over"),
        (table_of(v4), 49, "is shadow, not retired"),
    ]
    errors = []
    with psycopg.connect(db.dsn, autocommit=True) as conn:
        for table, hours, _ in cases:
            applier = Applier(conn, settings, None, later(db, hours))
            result = applier.run(Drop("public", table, "any", None))
            errors.append(result.error if result.outcome == "failed" else "dropped!")

    for (table, _, refusal), error in zip(cases, errors, strict=True):
        assert refusal in (error or ""), table
        assert db.relkind(table) == "r"


@pytest.mark.slow
def test_a_retired_table_with_dependents_is_never_dropped_with_cascade(
    registry_repo: RegistryRepo, db: Database
) -> None:
    registry_repo.locked()
    v2 = registry_repo.locked(chunk_size=300)
    run(registry_repo, db)
    retire(registry_repo, v2)
    run(registry_repo, db)
    db.execute(f"CREATE VIEW someone_elses_report AS SELECT id FROM {table_of(v2)}")

    result = run(registry_repo, db, now=later(db, 49))

    assert result.outcome == "failed"
    assert "depend" in (result.failed[0].error or "")
    assert db.relkind(table_of(v2)) == "r"
    assert db.relkind("someone_elses_report") == "v"
    assert db.managed()[table_of(v2)] == "retired"
    assert db.runs()[-1]["outcome"] == "failed"


def test_a_desired_state_without_configs_is_refused(
    registry_repo: RegistryRepo, db: Database
) -> None:
    v1 = registry_repo.locked()
    run(registry_repo, db)
    retire(registry_repo, v1)

    with pytest.raises(Refused, match="no locked configs"):
        run(registry_repo, db)
    with pytest.raises(Refused, match="no locked configs"):
        plan(registry_repo.path, dsn=db.dsn)
    report = status(registry_repo.path, dsn=db.dsn)
    assert db.managed() == {table_of(v1): "shadow"}
    assert [(r.chunk_version, r.status) for r in report.rows] == [(v1, "OutOfSync")]


def test_first_run_adopts_nothing_and_drops_nothing(
    registry_repo: RegistryRepo, db: Database
) -> None:
    v1, v2 = registry_repo.locked(), registry_repo.locked(chunk_size=300)
    db.execute("CREATE TABLE document_chunks_2020_01_01_000000_v1 (id text)")
    db.execute("CREATE TABLE document_chunks_backup (id text)")
    db.execute(f"CREATE TABLE {table_of(v2)} (id text)")

    result = run(registry_repo, db)

    assert kinds(result) == ["CreateTable"]
    assert result.outcome == "refused"
    assert db.managed() == {table_of(v1): "shadow"}
    found = {(f.table, f.kind, f.severity) for f in result.plan.findings}
    assert found == {
        (table_of(v2), "unmanaged", "error"),
        ("document_chunks_2020_01_01_000000_v1", "unmanaged", "warning"),
        ("document_chunks_backup", "unmanaged", "warning"),
    }
    assert set(db.tables()) == {table_of(v1), table_of(v2), "document_chunks_backup",
                                "document_chunks_2020_01_01_000000_v1"}


@pytest.mark.slow
def test_a_swap_left_pending_stops_later_destructive_actions(
    registry_repo: RegistryRepo, db: Database
) -> None:
    v1, v2, v3 = serving_shadow_retired(registry_repo, db)
    db.fill(table_of(v2))
    promote(registry_repo, v2)
    with psycopg.connect(db.dsn) as reader:
        reader.execute("SELECT count(*) FROM document_chunks")  # holds the view's lock
        result = run(registry_repo, db, now=later(db, 49), swap_deadline=0.3)

    assert [(type(r.action).__name__, r.outcome) for r in result.results] == [
        ("SwapProduction", "pending"), ("Drop", "skipped")]
    assert result.outcome == "refused"
    assert "pending: 1 locks on the view are held" in (result.results[0].error or "")
    with pytest.raises(Refused, match="pending"):
        result.raise_for_outcome()
    assert db.relkind(table_of(v3)) == "r"
    assert db.view_target() == [table_of(v1)]


def test_a_config_changed_under_the_same_version_is_reported_not_applied(
    registry_repo: RegistryRepo, db: Database
) -> None:
    v1 = registry_repo.locked()
    run(registry_repo, db)
    path = f"configs/{v1}.yaml"
    registry_repo.write(path, registry_repo.read(path).replace("chunk_size: 450",
                                                               "chunk_size: 400"), "Tamper")

    result = run(registry_repo, db)

    assert result.outcome == "refused"
    assert [f.kind for f in result.plan.blocking] == ["config_changed"]


def test_tables_go_to_the_schema_and_base_name_production_yaml_names(
    tmp_path: Path, tokenizer_file: Path, db: Database
) -> None:
    repo = RegistryRepo.create(tmp_path, tokenizer_file, PRODUCTION_YAML.replace(
        "{schema: public, base_name: document_chunks}", "{schema: rag, base_name: chunks}"))
    v1 = repo.locked()
    promote(repo, v1)

    result = run(repo, db, force=True)

    table = "chunks_" + v1.replace("-", "_")
    assert result.outcome == "applied"
    assert Database(db.dsn, schema="rag").view_target("chunks") == [table]


# ---------------------------------------------------------------------------------------------
# Drift


def test_a_managed_table_dropped_by_hand_is_reported_and_recreated_empty(
    registry_repo: RegistryRepo, db: Database
) -> None:
    v1, v2 = registry_repo.locked(), registry_repo.locked(chunk_size=300)
    run(registry_repo, db)
    db.fill(table_of(v2))
    db.execute(f"DROP TABLE {table_of(v2)}")

    before = status(registry_repo.path, dsn=db.dsn)
    result = run(registry_repo, db)

    assert {r.chunk_version: r.status for r in before.rows} == {v1: "Synced", v2: "Missing"}
    assert [f.kind for f in result.plan.findings] == ["missing"]
    action = result.plan.actions[0]
    assert isinstance(action, CreateTable) and action.recreate
    assert "needs an ingest" in action.describe()
    assert db.count(table_of(v2)) == 0
    assert run(registry_repo, db).outcome == "noop"


def test_a_view_pointing_elsewhere_is_reported_and_repointed(
    registry_repo: RegistryRepo, db: Database
) -> None:
    v1, v2 = registry_repo.locked(), registry_repo.locked(chunk_size=300)
    run(registry_repo, db)
    serving(registry_repo, db, v1)
    db.fill(table_of(v2))
    db.execute("DROP VIEW document_chunks")
    db.execute(f"CREATE VIEW document_chunks AS SELECT * FROM {table_of(v2)}")

    seen = plan(registry_repo.path, dsn=db.dsn)
    drifted = status(registry_repo.path, dsn=db.dsn)
    result = run(registry_repo, db)

    assert [f.kind for f in seen.findings] == ["view_elsewhere"]
    assert {r.chunk_version: r.status for r in drifted.rows}[v1] == "Drifted"
    swap = result.plan.actions[0]
    assert isinstance(swap, SwapProduction) and swap.old_table == table_of(v2)
    assert db.view_target() == [table_of(v1)]


def test_a_view_replaced_by_a_table_is_reported_and_left_alone(
    registry_repo: RegistryRepo, db: Database
) -> None:
    v1 = registry_repo.locked()
    run(registry_repo, db)
    serving(registry_repo, db, v1)
    db.execute("DROP VIEW document_chunks")
    db.execute("CREATE TABLE document_chunks (id text)")
    db.execute("INSERT INTO document_chunks VALUES ('keep me')")

    result = run(registry_repo, db)

    assert result.outcome == "refused"
    assert [f.kind for f in result.plan.blocking] == ["view_replaced"]
    assert db.relkind("document_chunks") == "r"
    assert db.count("document_chunks") == 1


def test_a_dropped_production_table_comes_back_but_the_view_waits_for_an_ingest(
    registry_repo: RegistryRepo, db: Database
) -> None:
    v1 = registry_repo.locked()
    run(registry_repo, db)
    serving(registry_repo, db, v1)
    db.execute(f"DROP TABLE {table_of(v1)} CASCADE")

    result = run(registry_repo, db)

    assert kinds(result) == ["CreateTable"]
    assert {f.kind for f in result.plan.findings} == {"missing", "view_missing", "empty"}
    db.fill(table_of(v1))
    assert kinds(run(registry_repo, db)) == ["SwapProduction"]
    assert db.view_target() == [table_of(v1)]


# ---------------------------------------------------------------------------------------------
# Locks: other reconcilers, readers


def test_a_second_reconciler_is_told_who_holds_the_lock(
    registry_repo: RegistryRepo, db: Database
) -> None:
    registry_repo.locked()
    holder = acquire_lock(db.dsn)
    try:
        pid = holder.info.backend_pid
        with pytest.raises(ReconcileBusy, match=f"pid {pid} \\(chunk-registry reconcile"):
            run(registry_repo, db)
    finally:
        holder.close()
    assert db.tables() == []
    assert run(registry_repo, db).outcome == "applied"


@pytest.mark.slow
def test_a_reader_holding_the_view_makes_the_swap_retry_not_hang(
    registry_repo: RegistryRepo, db: Database
) -> None:
    _, v2 = promotion_pending(registry_repo, db)
    reading = threading.Event()

    def long_reader() -> None:
        with psycopg.connect(db.dsn) as conn:
            conn.execute("SELECT count(*) FROM document_chunks")
            reading.set()
            time.sleep(1.0)

    thread = threading.Thread(target=long_reader)
    thread.start()
    reading.wait(5)
    result = run(registry_repo, db, lock_timeout_ms=100)
    thread.join()

    swap = result.results[0]
    assert swap.outcome == "applied"
    assert swap.attempts > 1
    assert db.view_target() == [table_of(v2)]


@pytest.mark.slow
def test_status_lists_every_config_with_rows_and_the_last_run(
    registry_repo: RegistryRepo, db: Database
) -> None:
    v1, v2, v3 = serving_shadow_retired(registry_repo, db)
    v4 = registry_repo.locked(chunk_size=100)

    report = status(registry_repo.path, dsn=db.dsn, exact=True)

    rows = {r.chunk_version: r for r in report.rows}
    assert [r.chunk_version for r in report.rows] == [v4, v3, v2, v1]
    assert {v: r.status for v, r in rows.items()} == {
        v1: "Synced", v2: "Synced", v3: "Retired", v4: "OutOfSync"}
    assert rows[v1].production and rows[v1].rows == 3 and rows[v2].rows == 0
    assert not any(r.rows_estimated for r in report.rows)
    assert rows[v4].rows is None and "create" in rows[v4].note
    assert rows[v1].params == "400/0.10/J=0.8/prefix-A"
    assert report.last_run is not None and report.last_run["outcome"] == "applied"
    assert rows[v3].last_run == report.last_run["id"]
    assert rows[v1].last_run == report.last_run["id"] - 1


def test_unretire_and_swap_run_in_order_when_a_retired_config_is_promoted_back(
    registry_repo: RegistryRepo, db: Database
) -> None:
    v1, v2 = registry_repo.locked(), registry_repo.locked(chunk_size=300)
    run(registry_repo, db)
    db.fill(table_of(v2))
    retire(registry_repo, v2)
    run(registry_repo, db)
    registry_repo.git("revert", "--no-edit", "HEAD")
    promote(registry_repo, v2)

    result = run(registry_repo, db)

    assert [type(a) for a in result.plan.actions] == [Unretire, SwapProduction]
    assert db.managed() == {table_of(v1): "shadow", table_of(v2): "production"}
    assert not any(isinstance(a, Retire) for a in result.plan.actions)
