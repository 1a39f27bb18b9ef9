"""The pure planner without a database: hand-built actual states against a committed state whose
production.yaml goes through the real parser, and every action and every refusal it can plan
(as alembic tests its revision map). Nothing here connects to anything."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from registry.config import LockedConfig, load_production
from registry.database.bookkeeping import ManagedTable
from registry.database.chunk_table import Marker
from registry.errors import Refused
from registry.reconciler.actual import ActualState, Relation
from registry.reconciler.planner import (
    CreateTable,
    Drop,
    Plan,
    Retire,
    SwapProduction,
    Unretire,
    make_plan,
    protected_tables,
)
from registry.reconciler.render import render_plan
from registry.repository.state import ConfigFile, RegistryState, config_path
from tests.helpers import PRODUCTION_YAML, locked_config

NOW = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)
V1, V2, V3 = "2026-01-01-000000-v1", "2026-01-02-000000-v2", "2026-01-03-000000-v3"


def table(version: str) -> str:
    return f"document_chunks_{version.replace('-', '_')}"


def config(version: str) -> LockedConfig:
    return locked_config(chunk_version=version)  # type: ignore[no-any-return]


def state(*versions: str, production: str | None = None,
          require_eval: bool = False) -> RegistryState:
    """The committed state: these configs, and production.yaml parsed from its YAML bytes."""
    text = PRODUCTION_YAML.replace("production: null", f"production: {production or 'null'}")
    if require_eval:
        text = text.replace("max_drop: 0.02}", "max_drop: 0.02, require_eval: true}")
    settings, _ = load_production(text.encode(), "production.yaml")
    assert settings.require_eval == require_eval
    files = {config_path(v): ConfigFile(config_path(v), f"blob-{v}", config(v)) for v in versions}
    return RegistryState(ref="main", commit="c0ffee", files=files, production=settings)


def managed(version: str, status: str = "shadow", *, present: bool = True,
            promoted: datetime | None = None, demoted: datetime | None = None,
            retired: datetime | None = None, compared: bool | None = None,
            config_hash: str | None = None, schema: str = "public") -> ManagedTable:
    return ManagedTable(
        schema, table(version), version, config_hash or config(version).config_hash, status,
        NOW - timedelta(days=5), "abc", promoted, demoted, retired, None, present, compared)


def actual(*rows: ManagedTable, view: str | None = None, rows_in: dict[str, int] | None = None,
           extra: dict[str, Relation] | None = None) -> ActualState:
    """The database: the managed rows (their tables exist when present), the view reading
    `view`'s table, row counts."""
    found = ActualState(schema="public", base_name="document_chunks", now=NOW,
                        managed=list(rows))
    for row in rows:
        if row.present and row.status != "dropped":
            found.relations[row.table_name] = Relation(
                row.table_name, "r", marker=Marker(row.registry, row.chunk_version,
                                                   row.config_hash))
    if view is not None:
        found.relations["document_chunks"] = Relation(
            "document_chunks", "v", (("public", table(view)),))
    found.relations.update(extra or {})
    found.rows = dict(rows_in or {})
    return found


def kinds(plan: Plan) -> list[tuple[str, str]]:
    return [(f.kind, f.severity) for f in plan.findings]


def only(plan: Plan, kind: type) -> Any:
    [action] = [a for a in plan.actions if isinstance(a, kind)]
    return action


# ---------------------------------------------------------------------------------------------
# Actions


def test_a_new_config_gets_its_shadow_table() -> None:
    plan = make_plan(state(V1), actual())
    assert plan.actions == [CreateTable.of("public", table(V1), config(V1))]
    assert plan.findings == [] and not plan.in_sync


def test_a_reconciled_database_is_in_sync() -> None:
    plan = make_plan(state(V1, production=V1),
                     actual(managed(V1, "production", promoted=NOW), view=V1))
    assert plan.in_sync and plan.actions == [] and plan.findings == []


def test_a_managed_table_dropped_by_hand_is_recreated_empty() -> None:
    plan = make_plan(state(V1), actual(managed(V1, present=False)))
    assert plan.actions == [CreateTable.of("public", table(V1), config(V1), recreate=True)]
    assert kinds(plan) == [("missing", "warning")]


def test_a_retired_config_back_in_the_repo_is_unretired() -> None:
    plan = make_plan(state(V1), actual(managed(V1, "retired", retired=NOW)))
    assert plan.actions == [Unretire("public", table(V1), V1)]


def test_the_first_production_is_swapped_in_once_its_table_has_rows() -> None:
    plan = make_plan(state(V1, production=V1), actual(managed(V1), rows_in={table(V1): 10}))
    assert plan.actions == [SwapProduction("public", "document_chunks", None, table(V1), V1)]


def test_a_promotion_swaps_from_the_current_production() -> None:
    plan = make_plan(state(V1, V2, production=V2),
                     actual(managed(V1, "production", promoted=NOW), managed(V2, compared=True),
                            view=V1, rows_in={table(V2): 5}))
    assert only(plan, SwapProduction) == SwapProduction(
        "public", "document_chunks", table(V1), table(V2), V2)


def test_a_config_that_left_the_repo_is_retired_for_the_grace_period() -> None:
    plan = make_plan(state(V1, production=V1),
                     actual(managed(V1, "production", promoted=NOW), managed(V2), view=V1))
    assert plan.actions == [Retire("public", table(V2), V2, "2026-01-12T12:00:00Z")]


def test_a_retired_table_past_its_grace_period_is_dropped() -> None:
    retired = NOW - timedelta(hours=49)
    plan = make_plan(state(V1, production=V1),
                     actual(managed(V1, "production", promoted=NOW),
                            managed(V2, "retired", retired=retired), view=V1))
    assert plan.actions == [Drop("public", table(V2), V2, "2026-01-08T11:00:00Z")]


def test_a_retired_table_dropped_by_hand_is_only_recorded_as_dropped() -> None:
    plan = make_plan(state(V1, production=V1),
                     actual(managed(V1, "production", promoted=NOW),
                            managed(V2, "retired", present=False,
                                    retired=NOW - timedelta(days=3)), view=V1))
    assert only(plan, Drop).already_gone


def test_actions_come_in_one_order_whatever_the_input() -> None:
    plan = make_plan(
        state(V1, V3, production=V3),
        actual(managed(V1, "retired", retired=NOW), managed(V2, "production", promoted=NOW),
               view=V2, rows_in={}),
        force=True,
    )
    assert [type(a) for a in plan.actions] == [CreateTable, Unretire, SwapProduction, Retire]


# ---------------------------------------------------------------------------------------------
# Refusals and findings


def test_an_empty_desired_state_is_refused_unless_allowed() -> None:
    with pytest.raises(Refused, match="has no locked configs"):
        make_plan(state(), actual(managed(V1)))
    assert [type(a) for a in make_plan(state(), actual(managed(V1)),
                                       allow_empty=True).actions] == [Retire]


def test_a_table_the_registry_did_not_create_is_never_adopted() -> None:
    plan = make_plan(state(V1), actual(extra={table(V1): Relation(table(V1), "r")}))
    assert plan.actions == [] and kinds(plan) == [("unmanaged", "error")]


def test_a_locked_config_edited_after_its_table_was_created_blocks() -> None:
    plan = make_plan(state(V1), actual(managed(V1, config_hash="f" * 64)))
    assert plan.actions == [] and kinds(plan) == [("config_changed", "error")]


def test_moving_tables_to_another_schema_is_refused() -> None:
    plan = make_plan(state(V1), actual(managed(V1, schema="elsewhere")))
    assert ("moved", "error") in kinds(plan)
    assert not any(isinstance(a, CreateTable) for a in plan.actions)


def test_no_production_named_keeps_the_view_where_it_is() -> None:
    plan = make_plan(state(V1), actual(managed(V1, "production", promoted=NOW), view=V1))
    assert plan.actions == [] and kinds(plan) == [("no_production", "warning")]


def test_a_table_in_place_of_the_view_blocks_the_swap() -> None:
    plan = make_plan(state(V1, production=V1),
                     actual(managed(V1), rows_in={table(V1): 3},
                            extra={"document_chunks": Relation("document_chunks", "r")}))
    assert plan.actions == [] and kinds(plan) == [("view_replaced", "error")]


def test_a_view_the_registry_did_not_create_is_replaced_only_with_force() -> None:
    foreign = {"document_chunks": Relation("document_chunks", "v", (("public", "mine"),))}
    held = make_plan(state(V1, production=V1), actual(managed(V1), rows_in={table(V1): 3},
                                                      extra=foreign))
    assert held.actions == [] and kinds(held) == [("unmanaged", "error")]
    forced = make_plan(state(V1, production=V1), actual(managed(V1), rows_in={table(V1): 3},
                                                        extra=foreign), force=True)
    assert only(forced, SwapProduction).old_table == "mine"


def test_a_missing_view_is_drift_and_is_recreated() -> None:
    plan = make_plan(state(V1, production=V1),
                     actual(managed(V1, "production", promoted=NOW), rows_in={table(V1): 3}))
    assert only(plan, SwapProduction).reason == "drift: the view was missing"
    assert kinds(plan) == [("view_missing", "warning")]


def test_a_view_repointed_by_hand_is_drift_and_is_pointed_back() -> None:
    plan = make_plan(state(V1, V2, production=V1),
                     actual(managed(V1, "production", promoted=NOW), managed(V2), view=V2,
                            rows_in={table(V1): 3}))
    swap = only(plan, SwapProduction)
    assert (swap.old_table, swap.table) == (table(V2), table(V1))
    assert swap.reason.startswith("drift: the view read")
    assert kinds(plan) == [("view_elsewhere", "warning")]


def test_an_empty_table_is_never_swapped_in_without_force() -> None:
    plan = make_plan(state(V1, production=V1), actual(managed(V1), rows_in={table(V1): 0}))
    assert plan.actions == [] and kinds(plan) == [("empty", "error")]
    created = make_plan(state(V1, production=V1), actual())
    assert [type(a) for a in created.actions] == [CreateTable]
    assert "(it is created by this run)" in created.findings[0].message
    forced = make_plan(state(V1, production=V1), actual(managed(V1), rows_in={table(V1): 0}),
                       force=True)
    assert [type(a) for a in forced.actions] == [SwapProduction]


def test_the_gate_holds_a_shadow_whose_last_comparison_failed() -> None:
    plan = make_plan(state(V1, V2, production=V2),
                     actual(managed(V1, "production", promoted=NOW), managed(V2, compared=False),
                            view=V1, rows_in={table(V2): 5}))
    assert plan.actions == [] and kinds(plan) == [("gate", "error")]
    assert "failed the gates" in plan.findings[0].message


def test_require_eval_holds_a_shadow_never_compared_but_not_the_first_production() -> None:
    never = actual(managed(V1, "production", promoted=NOW), managed(V2), view=V1,
                   rows_in={table(V2): 5})
    held = make_plan(state(V1, V2, production=V2, require_eval=True), never)
    assert kinds(held) == [("gate", "error")] and "never compared" in held.findings[0].message
    first = make_plan(state(V1, production=V1, require_eval=True),
                      actual(managed(V1), rows_in={table(V1): 5}))
    assert [type(a) for a in first.actions] == [SwapProduction]


def test_a_rollback_target_is_never_held_back_by_the_gate() -> None:
    plan = make_plan(state(V1, V2, production=V1),
                     actual(managed(V1, promoted=NOW - timedelta(days=2), demoted=NOW,
                                    compared=False),
                            managed(V2, "production", promoted=NOW), view=V2,
                            rows_in={table(V1): 5}))
    assert [type(a) for a in plan.actions] == [SwapProduction] and plan.findings == []


def test_force_skips_the_gate() -> None:
    plan = make_plan(state(V1, V2, production=V2),
                     actual(managed(V1, "production", promoted=NOW), managed(V2, compared=False),
                            view=V1, rows_in={table(V2): 5}), force=True)
    assert [type(a) for a in plan.actions] == [SwapProduction]


def test_production_leaving_the_repo_is_kept_until_production_moves() -> None:
    plan = make_plan(state(V2), actual(managed(V1, "production", promoted=NOW), managed(V2),
                                       view=V1))
    assert plan.actions == []
    assert ("kept", "warning") in kinds(plan)


def test_the_previous_production_is_kept_as_the_rollback_target() -> None:
    plan = make_plan(state(V2, production=V2),
                     actual(managed(V1, "retired", promoted=NOW - timedelta(days=9),
                                    demoted=NOW - timedelta(days=4),
                                    retired=NOW - timedelta(days=3)),
                            managed(V2, "production", promoted=NOW), view=V2))
    assert plan.actions == [] and kinds(plan) == [("kept", "info")]


def test_a_retired_table_within_its_grace_period_waits() -> None:
    plan = make_plan(state(V1, production=V1),
                     actual(managed(V1, "production", promoted=NOW),
                            managed(V2, "retired", retired=NOW - timedelta(hours=1)), view=V1))
    assert plan.actions == [] and kinds(plan) == [("grace", "info")]
    assert "grace period 48h" in plan.findings[0].message


def test_a_look_alike_relation_is_reported_and_left_alone() -> None:
    stray = {"document_chunks_old": Relation("document_chunks_old", "r")}
    plan = make_plan(state(V1, production=V1),
                     actual(managed(V1, "production", promoted=NOW), view=V1, extra=stray))
    assert plan.actions == [] and kinds(plan) == [("unmanaged", "warning")]
    assert plan.in_sync  # a warning does not block


def test_the_table_production_leaves_becomes_the_protected_rollback_target() -> None:
    old = managed(V1, "production", promoted=NOW)
    older = managed(V2, "retired", demoted=NOW - timedelta(days=1), retired=NOW)
    found = actual(old, older)
    assert protected_tables(found, 1, swapping_from=old) == {old.key}
    assert protected_tables(found, 1) == {old.key, older.key}


def test_renderings_read_the_same_plan() -> None:
    plan = make_plan(state(V1, production=V1), actual(managed(V1), rows_in={table(V1): 0}))
    text = render_plan(plan)
    assert "blocked: refusing to swap production" in text and "Plan: no changes; 1 blocked." in text
    assert "🚨" in render_plan(plan, "markdown")


# ---------------------------------------------------------------------------------------------
# Ownership: a registry acts only on what carries its own identity and matches what it creates


def test_another_registrys_tables_in_another_schema_are_never_retired_or_dropped() -> None:
    retired = NOW - timedelta(hours=49)
    theirs = [replace(managed(V2, "retired", retired=retired, schema="team_b"),
                      registry="team-b"),
              replace(managed(V3, "shadow", schema="team_b"), registry="team-b")]
    plan = make_plan(state(V1, production=V1),
                     actual(managed(V1, "production", promoted=NOW), *theirs, view=V1))
    assert plan.actions == [] and plan.blocking == []


def test_a_bookkeeping_row_alone_never_gets_a_table_dropped() -> None:
    """A retired row of this registry past its grace period, whose table carries no marker
    (or another version's), plans no Drop: the row alone is not ownership."""
    retired = NOW - timedelta(hours=49)
    found = actual(managed(V1, "production", promoted=NOW),
                   managed(V2, "retired", retired=retired), view=V1)
    found.relations[table(V2)] = Relation(table(V2), "r")
    assert not any(isinstance(a, Drop) for a in make_plan(state(V1, production=V1),
                                                          found).actions)
    found.relations[table(V2)] = Relation(table(V2), "r", marker=Marker(None, V3))
    assert not any(isinstance(a, Drop) for a in make_plan(state(V1, production=V1),
                                                          found).actions)


def test_a_row_outside_the_schema_or_name_pattern_is_never_acted_on() -> None:
    forged = replace(managed(V2, "retired", retired=NOW - timedelta(days=30)),
                     schema_name="billing", table_name="invoices")
    plan = make_plan(state(V1, production=V1),
                     actual(managed(V1, "production", promoted=NOW), forged, view=V1))
    assert plan.actions == []


def test_another_registrys_view_makes_a_plan_of_one_refusal_and_no_action() -> None:
    found = actual(view=None)
    found.relations["document_chunks"] = Relation(
        "document_chunks", "v", (("public", table(V1)),), Marker("ours", V1))
    plan = make_plan(state(V2, production=V2), found)
    assert plan.actions == [] and kinds(plan) == [("foreign", "error")]
    assert "ours" in plan.findings[0].message


LEGACY = "public.document_chunks"


def named(*versions: str, production: str | None = None) -> RegistryState:
    """The committed state of a registry named acme on public.document_chunks."""
    found = state(*versions, production=production)
    assert found.production is not None
    return replace(found, production=replace(found.production, registry="acme"))


def legacy(row: ManagedTable) -> ManagedTable:
    return replace(row, registry=LEGACY)


@pytest.mark.parametrize(("rows", "view_marker", "foreign"), [
    ([legacy(managed(V1, "production", promoted=NOW))], Marker(LEGACY, V1), False),
    ([legacy(managed(V1, "production", promoted=NOW))], Marker(LEGACY, V1, "0" * 64), True),
    ([legacy(managed(V1, "production", promoted=NOW)), legacy(managed(V3))],
     Marker(LEGACY, V1), True),
    ([legacy(managed(V1, "production", promoted=NOW, config_hash="0" * 64))],
     Marker(LEGACY, V1), True),
    ([legacy(managed(V3, "production", promoted=NOW))], Marker(LEGACY, V3), True),
    ([legacy(managed(V3))], None, True),
    ([replace(managed(V1, "production", promoted=NOW), registry="acme")],
     Marker("acme", V1), False),
    ([replace(managed(V3, "production", promoted=NOW), registry="acme")],
     Marker(LEGACY, V3), False),
], ids=["own-configs", "view-hash-not-ours", "one-row-not-ours", "hash-not-ours",
        "version-not-ours", "shadow-not-ours", "own-name", "view-of-an-adopted-row"])
def test_a_named_registry_adopts_its_legacy_identity_only_for_its_own_configs(
    rows: list[ManagedTable], view_marker: Marker | None, foreign: bool
) -> None:
    """The legacy identity `schema.base_name` is also an unnamed registry's on the same
    tables: a named one adopts a row or marker of it only for a version and config hash that
    are a config in its repository, else the plan is one refusal naming the other."""
    found = actual(*rows)
    if view_marker is not None:
        found.relations["document_chunks"] = Relation(
            "document_chunks", "v", (("public", table(str(view_marker.chunk_version))),),
            view_marker)
    plan = make_plan(named(V1, V2, production=V1), found)
    if foreign:
        assert plan.actions == [] and kinds(plan) == [("foreign", "error")]
        assert LEGACY in plan.findings[0].message and "acme" in plan.findings[0].message
    else:
        assert "foreign" not in [f.kind for f in plan.findings], plan.findings
        assert CreateTable in [type(a) for a in plan.actions]


@pytest.mark.parametrize("base_name", ["document_chunks_en", "document_chunks_staging",
                                       "document_chunks_2026"])
def test_a_table_of_a_base_name_extending_ours_is_never_ours_nor_foreign(base_name: str) -> None:
    """`<base>_<version>` exactly is ours; `document_chunks_en_<version>` only starts like it."""
    other = replace(managed(V2, "production", promoted=NOW), registry="team-en",
                    table_name=f"{base_name}_{V2.replace('-', '_')}")
    found = actual(managed(V1, "production", promoted=NOW), view=V1)
    found.managed.append(other)
    found.relations[other.table_name] = Relation(other.table_name, "r",
                                                 marker=Marker("team-en", V2))
    found.relations[base_name] = Relation(base_name, "v", (("public", other.table_name),),
                                          Marker("team-en", V2))
    plan = make_plan(state(V1, production=V1), found)
    assert plan.actions == [] and plan.findings == []


def test_a_forced_promotion_skips_the_gate_for_that_version_only() -> None:
    held = actual(managed(V1, "production", promoted=NOW), managed(V2, compared=False),
                  managed(V3, compared=False), view=V1, rows_in={table(V2): 5, table(V3): 5})
    forced = make_plan(state(V1, V2, V3, production=V2), held, forced_promotion=V2)
    assert [type(a) for a in forced.actions] == [SwapProduction]
    assert ("forced", "info") in kinds(forced)
    other = make_plan(state(V1, V2, V3, production=V3), held, forced_promotion=V2)
    assert kinds(other) == [("gate", "error")] and other.actions == []


def test_a_changed_table_shape_blocks_the_swap_to_it() -> None:
    found = actual(managed(V1, "production", promoted=NOW), managed(V2), view=V1,
                   rows_in={table(V2): 5})
    found.shape_drift[table(V2)] = ["missing index USING btree (doc_id, chunk_index)"]
    plan = make_plan(state(V1, V2, production=V2), found)
    assert plan.actions == [] and kinds(plan) == [("shape", "error")]
