"""The table's whole shape (columns, types, constraints, indexes) is compared with what the
reconciler creates: any difference is drift that `plan` reports (issue 13, item 5)."""

from __future__ import annotations

import pytest

from tests.database import Database, table_of
from tests.helpers import RegistryRepo, run_cli
from tests.test_health_eval import Corpus
from tests.test_health_from_the_data import served


@pytest.mark.parametrize("damage", [
    "ALTER TABLE {t} DROP CONSTRAINT {c}",
    # A type change is refused by PostgreSQL itself while the view reads the column.
    "ALTER TABLE {t} ALTER COLUMN doc_id DROP NOT NULL",
    "ALTER TABLE {t} ADD COLUMN note text",
    "DROP INDEX {i}",
])
@pytest.mark.slow
def test_a_changed_table_shape_is_drift_that_plan_reports(
    registry_repo: RegistryRepo, dsn: str, corpus: Corpus, damage: str
) -> None:
    version = served(registry_repo, dsn, corpus.path)
    table = table_of(version)
    db = Database(dsn)
    constraint = db.query("SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass "
                          "AND contype = 'c' ORDER BY conname LIMIT 1", (f"public.{table}",))[0][0]
    index = db.query("SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = "
                     "%s::regclass AND NOT indisprimary ORDER BY 1 LIMIT 1",
                     (f"public.{table}",))[0][0]
    db.execute(damage.format(t=table, c=f'"{constraint}"', i=index))

    plan = run_cli("plan", "--repo", registry_repo.path, "--dsn", dsn, "--detailed-exitcode")

    assert plan.code != 0, plan.stdout
    assert "drift" in plan.stdout.lower() and table in plan.stdout
