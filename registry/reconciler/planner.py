"""The pure planner: what reconciling the committed state would do to the database.

`make_plan` compares the desired state (read from git) with the actual state (read by
`registry.reconciler.actual`, or made up by `synthetic_actual`) and returns typed actions plus
findings (drift, refusals) without touching anything: no connection, no I/O. Printing,
applying and testing all read the same action objects.

Safety rules live here AND are re-checked inside each action's transaction by the applier (a
Drop re-reads its bookkeeping row FOR UPDATE), so an action built by hand cannot break them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from registry.config import LockedConfig, ProductionConfig, duration_text
from registry.database.bookkeeping import ManagedTable
from registry.database.chunk_table import Marker
from registry.errors import Refused
from registry.quality import gate
from registry.reconciler.actual import ActualState
from registry.reconciler.served import SERVED_GRACE
from registry.timestamps import rfc3339

if TYPE_CHECKING:
    from registry.repository.state import RegistryState

@dataclass(frozen=True)
class CreateTable:
    """Create the shadow table of a locked config (empty: an ingest fills it)."""

    schema: str
    table: str
    chunk_version: str
    config_hash: str
    chunk_size: int
    token_budget: int
    prefix_policy: str
    recreate: bool = False
    embedding_dimension: int | None = None
    """The vector column's dimension when the config pins an embedder (None: BM25 only)."""
    embedding_normalized: bool = True
    create_extension: bool = False
    """pgvector is not created in the database yet: the action creates it first."""

    @classmethod
    def of(cls, schema: str, table: str, config: LockedConfig, *,
           recreate: bool = False, create_extension: bool = False) -> CreateTable:
        spec = config.embedder
        return cls(schema, table, config.chunk_version, config.config_hash, config.chunk_size,
                   config.token_budget, config.prefix_policy, recreate=recreate,
                   embedding_dimension=spec.dimension if spec else None,
                   embedding_normalized=spec.normalize if spec else True,
                   create_extension=create_extension and spec is not None)

    def describe(self) -> str:
        vectors = ""
        if self.embedding_dimension is not None:
            opclass = "vector_ip_ops" if self.embedding_normalized else "vector_cosine_ops"
            vectors = (f" with embedding vector({self.embedding_dimension}) and an HNSW index "
                       f"({opclass})" + (", creating the pgvector extension first"
                                         if self.create_extension else ""))
        if self.recreate:
            return (f"recreate {self.schema}.{self.table} for {self.chunk_version}{vectors} "
                    "(dropped outside the registry; it comes back empty and needs an ingest)")
        return f"create {self.schema}.{self.table} for {self.chunk_version}{vectors}"


@dataclass(frozen=True)
class Unretire:
    """A retired config is back in the repo (a reverted retire): its table is a shadow again."""

    schema: str
    table: str
    chunk_version: str

    def describe(self) -> str:
        return f"unretire {self.schema}.{self.table} ({self.chunk_version} is back in the repo)"


@dataclass(frozen=True)
class SwapProduction:
    """Point the production view at another table (and record it), in one transaction."""

    schema: str
    view: str
    old_table: str | None
    table: str
    chunk_version: str
    reason: str = "promote"

    def describe(self) -> str:
        old = self.old_table or "nothing"
        why = "" if self.reason == "promote" else f" ({self.reason})"
        return f"swap {self.schema}.{self.view}: {old} -> {self.table}{why}"


@dataclass(frozen=True)
class Retire:
    """The config left the repo: mark its table retired; it is dropped after the grace period."""

    schema: str
    table: str
    chunk_version: str
    drop_after: str

    def describe(self) -> str:
        return (f"retire {self.schema}.{self.table} ({self.chunk_version}; "
                f"drop after {self.drop_after})")


@dataclass(frozen=True)
class Drop:
    """Drop a retired table whose grace period is over (never CASCADE)."""

    schema: str
    table: str
    chunk_version: str
    retired_at: str | None
    already_gone: bool = False

    def describe(self) -> str:
        if self.already_gone:
            return (f"record {self.schema}.{self.table} as dropped (it was dropped outside "
                    "the registry)")
        return f"drop {self.schema}.{self.table} ({self.chunk_version}, retired {self.retired_at})"


Action = CreateTable | Unretire | SwapProduction | Retire | Drop
ACTION_ORDER: tuple[type, ...] = (CreateTable, Unretire, SwapProduction, Retire, Drop)
DESTRUCTIVE: tuple[type, ...] = (Drop,)

Severity = Literal["error", "warning", "info"]
VIEW_KINDS = frozenset({"view_elsewhere", "view_missing", "view_replaced"})
"""Finding kinds about the production view (drift of what production reads)."""


@dataclass(frozen=True)
class Finding:
    """Something the plan noticed: drift, a refusal, or why a table is kept.

    `error` findings block: `plan` reports changes pending and `reconcile` exits non-zero.
    """

    kind: str
    table: str | None
    message: str
    fix: str | None = None
    severity: Severity = "warning"

    def render(self) -> str:
        return f"{self.message} ({self.fix})" if self.fix else self.message


def action_dict(action: Action) -> dict[str, Any]:
    """An action as the bookkeeping records it (names unqualified, `schema` beside them: the
    readers of reconcile_runs, status and the dashboard, key on that)."""
    return {"action": type(action).__name__, **asdict(action), "description": action.describe()}


def action_json(action: Action) -> dict[str, Any]:
    """An action as `--format json` prints it: `table`, `old_table` and `view`
    schema-qualified (`schema` kept)."""
    data = action_dict(action)
    for key in ("table", "old_table", "view"):
        if data.get(key):
            data[key] = f"{action.schema}.{data[key]}"
    return data


@dataclass
class Plan:
    """What reconciling `ref` would do to the database, and what it found there."""

    ref: str
    commit: str | None
    target: str
    actions: list[Action] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    environment: str = "production"
    schema: str = "public"
    """The registry's tables.schema: findings name tables in it."""

    @property
    def blocking(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def in_sync(self) -> bool:
        return not self.actions and not self.blocking

    def finding_dict(self, finding: Finding) -> dict[str, Any]:
        """A finding as JSON, its table schema-qualified (null when it names none)."""
        data = asdict(finding)
        if finding.table and "." not in finding.table:
            data["table"] = f"{self.schema}.{finding.table}"
        return data

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for action in self.actions:
            out[type(action).__name__] = out.get(type(action).__name__, 0) + 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "commit": self.commit,
            "target": self.target,
            "environment": self.environment,
            "in_sync": self.in_sync,
            "actions": [action_json(a) for a in self.actions],
            "findings": [self.finding_dict(f) for f in self.findings],
        }


def refuse_empty(state: RegistryState) -> None:
    if not state.configs:
        raise Refused(
            f"the desired state at {state.ref} has no locked configs: refusing to reconcile "
            "(it would retire every managed table)",
            fix="check --ref and the repository; lock a config first",
        )


def swap_target(state: RegistryState) -> str | None:
    """The table production should read, if production.yaml names one."""
    production = state.settings.production
    return state.settings.table_name(production) if production else None


def adoptable(settings: ProductionConfig, configs: Mapping[str, LockedConfig],
              registry: str | None, chunk_version: str | None, config_hash: str | None) -> bool:
    """Whether what carries `registry` is this registry's. A named registry shares its legacy
    identity (`schema.base_name`) with an unnamed registry using the same tables, so it adopts
    a legacy-identity row or marker only when that version, with that config hash (None: a
    marker that records none), is a config in its own repository: the tables it created
    before it had a name, never another registry's."""
    if not settings.owns(registry):
        return False
    if settings.registry is None or registry != settings.legacy_identity:
        return True
    config = configs.get(chunk_version) if chunk_version is not None else None
    return config is not None and config_hash in (None, config.config_hash)


def foreign_owner(settings: ProductionConfig, actual: ActualState,
                  configs: Mapping[str, LockedConfig]) -> str | None:
    """Another registry's identity on what this one would manage (the view, or a live table
    this registry would name so: `<base_name>_<version>` in its schema, never a mere prefix
    match, which is another base name's): the database belongs to someone else there."""
    view = actual.relations.get(settings.base_name)
    if view is not None and view.marker is not None and not adoptable(
            settings, configs, view.marker.registry, view.marker.chunk_version,
            view.marker.config_hash) and not _adopted_view(settings, actual, view.marker):
        return view.marker.registry
    for row in actual.live.values():
        if (row.schema_name == settings.schema
                and row.table_name == settings.table_name(row.chunk_version)
                and not adoptable(settings, configs, row.registry, row.chunk_version,
                                  row.config_hash)):
            return row.registry
    return None


def _adopted_view(settings: ProductionConfig, actual: ActualState, marker: Marker) -> bool:
    """A view marked by the legacy identity reading a version whose row this registry already
    adopted (recorded under its name): its own view, even once that config left the repo."""
    return (settings.registry is not None and marker.registry == settings.legacy_identity
            and any(m.registry == settings.registry and m.schema_name == settings.schema
                    and m.chunk_version == marker.chunk_version for m in actual.managed))


def _anothers(settings: ProductionConfig, name: str, marker: Marker | None) -> bool:
    """Whether a relation the look-alike scan found is another registry's own: not named as
    this one names its relations (`document_chunks_en_<version>` only starts like
    `document_chunks_`) and marked by a registry that is not this one."""
    return (not settings.names_relation(name) and marker is not None
            and not settings.owns(marker.registry))


def _registry_text(identity: str) -> str:
    """How a finding names a registry: a legacy identity is the registry without a name."""
    if "." in identity:
        return f"registry {identity} (one without a registry: name)"
    return f"registry {identity}"


def owned(settings: ProductionConfig, actual: ActualState, row: ManagedTable,
          configs: Mapping[str, LockedConfig]) -> bool:
    """A bookkeeping row this registry acts on: its identity (`adoptable`), in its schema,
    named as it names a table of that version, and (while the table exists) the table carries
    the registry's marker for that version and config hash. A row alone is never enough."""
    if (not adoptable(settings, configs, row.registry, row.chunk_version, row.config_hash)
            or row.schema_name != settings.schema):
        return False
    if row.table_name != settings.table_name(row.chunk_version):
        return False
    if not row.present or row.status == "dropped":
        return True
    relation = actual.relations.get(row.table_name)
    if relation is None or relation.is_view:
        return False
    marker = relation.marker
    return (marker is not None and settings.owns(marker.registry)
            and marker.chunk_version == row.chunk_version
            and marker.config_hash in (None, row.config_hash))


def _vectors_possible(plan: Plan, actual: ActualState, config: LockedConfig, table: str
                      ) -> bool:
    """Whether `config`'s table can be created here: BM25-only, or pgvector usable; if not, a
    blocking finding naming the admin's statement (other configs go ahead)."""
    if config.embedder is None or actual.vector.usable:
        return True
    message, fix = actual.vector.refusal()
    plan.findings.append(Finding("pgvector", table, f"{message} ({config.chunk_version} pins "
                                 f"embedder {config.embedder.name})", fix, "error"))
    return False


def make_plan(
    state: RegistryState,
    actual: ActualState,
    *,
    target: str = "",
    force: bool = False,
    allow_empty: bool = False,
    forced_promotion: str | None = None,
) -> Plan:
    """The ordered actions that make `actual` match `state`, and what blocks or stays.

    Touches nothing, and acts only on what this registry owns (`owned`); another registry's
    view or tables where this one would act make a plan of one blocking finding and no
    action. `force` allows swapping production to an empty table or over a view the registry
    did not create; `forced_promotion` is the version whose merged promotion was forced
    (`registry promote --force`): the promotion gate is skipped for it alone. An empty
    desired state is refused unless `allow_empty` (status shows what it would mean;
    reconcile never applies it).
    """
    if not allow_empty:
        refuse_empty(state)
    settings = state.settings
    schema, base = settings.schema, settings.base_name
    plan = Plan(ref=state.ref, commit=state.commit, target=target, schema=schema,
                environment=state.environment)
    other = foreign_owner(settings, actual, state.configs)
    if other is not None:
        plan.findings.append(Finding(
            "foreign", base, f"{schema}.{base} and its tables belong to "
            f"{_registry_text(other)}, but "
            f"this repository is registry {settings.identity}: changing nothing",
            "check --repo and REGISTRY_DSN (the wrong repository or database?), or give this "
            "registry its own tables.schema/base_name", "error"))
        return plan
    elsewhere = {m.chunk_version: m for m in actual.live.values()
                 if adoptable(settings, state.configs, m.registry, m.chunk_version, m.config_hash)
                 and m.key != (schema, settings.table_name(m.chunk_version))}
    actual = replace(actual, managed=[m for m in actual.managed
                                      if owned(settings, actual, m, state.configs)])
    live = actual.live
    managed_names = {m.table_name for m in live.values() if m.schema_name == schema}
    blocked: set[str] = set()

    for version, config in sorted(state.configs.items()):
        table = settings.table_name(version)
        row = live.get(version)
        if row is None and version in elsewhere:
            row = elsewhere[version]
            blocked.add(version)
            plan.findings.append(Finding(
                "moved", row.table_name, f"{version} is managed as {row.schema_name}."
                f"{row.table_name}, but production.yaml now places it at {schema}.{table}",
                "restore tables.schema/base_name in production.yaml; moving tables is not "
                "supported", "error"))
            continue
        if row is None:
            if table in actual.relations:
                blocked.add(version)
                plan.findings.append(Finding(
                    "unmanaged", table, f"{schema}.{table} exists but the registry did not create "
                    "it: refusing to adopt it", "rename or drop it yourself, then reconcile",
                    "error"))
                continue
            if not _vectors_possible(plan, actual, config, table):
                blocked.add(version)
                continue
            plan.actions.append(CreateTable.of(
                schema, table, config, create_extension=actual.vector.type_schema is None))
            continue
        if row.config_hash != config.config_hash:
            blocked.add(version)
            plan.findings.append(Finding(
                "config_changed", row.table_name, f"{row.schema_name}.{row.table_name} was created "
                f"for config hash {row.config_hash[:12]}, but {version} in the repo hashes to "
                f"{config.config_hash[:12]}", "a locked config is immutable: restore it and lock "
                "a new version for the change", "error"))
            continue
        drift = actual.shape_drift.get(table) if row.present else None
        if drift:
            blocked.add(version)
            plan.findings.append(Finding(
                "shape", table, f"drift: {schema}.{table} is not shaped as the reconciler "
                f"creates it: {'; '.join(drift)}", "restore it by hand (or retire the config "
                "and lock a new version): the reconciler never alters a table's columns, "
                "constraints or indexes", "error"))
        if row.status == "retired":
            plan.actions.append(Unretire(schema, table, version))
        if not row.present and not _vectors_possible(plan, actual, config, table):
            blocked.add(version)
        elif not row.present:
            plan.actions.append(CreateTable.of(
                schema, table, config, recreate=True,
                create_extension=actual.vector.type_schema is None))
            plan.findings.append(Finding(
                "missing", table, f"managed table {schema}.{table} was dropped outside the "
                "registry", "reconcile recreates it empty; ingest it again", "warning"))

    swapping_from = _plan_production(plan, state, actual, blocked, force, forced_promotion)
    _plan_retirements(plan, state, actual, swapping_from)

    reported = {f.table for f in plan.findings}
    for name, relation in sorted(actual.relations.items()):
        if name in (base, settings.candidate_view) or name in managed_names or name in reported:
            continue
        if _anothers(settings, name, relation.marker):
            continue
        kind = "view" if relation.is_view else "table"
        plan.findings.append(Finding(
            "unmanaged", name, f"{schema}.{name} looks like a registry {kind} but is not managed: "
            "left alone", "drop or rename it yourself if it is not needed", "warning"))
    plan.actions.sort(key=lambda a: ACTION_ORDER.index(type(a)))
    return plan


def _plan_production(
    plan: Plan, state: RegistryState, actual: ActualState, blocked: set[str], force: bool,
    forced_promotion: str | None = None,
) -> ManagedTable | None:
    """Add the swap (or why there is none); return the row production moves away from."""
    settings = state.settings
    schema, base = settings.schema, settings.base_name
    view = actual.relations.get(base)
    current = actual.production
    wanted = settings.production
    if wanted is None:
        if current is not None:
            plan.findings.append(Finding(
                "no_production", current.table_name, f"production.yaml names no production; "
                f"{schema}.{base} keeps reading {current.table_name}",
                "point production at a config to switch it", "warning"))
        return None
    if wanted in blocked:
        return None
    table = settings.table_name(wanted)
    if view is not None and not view.is_view:
        plan.findings.append(Finding(
            "view_replaced", base, f"{schema}.{base} is a table, not the registry's view: "
            "production cannot be switched", f"rename that table (ALTER TABLE {schema}.{base} "
            "RENAME TO ...) and reconcile to recreate the view", "error"))
        return None
    reads = view.reads if view is not None else ()
    points_right = reads == ((schema, table),)
    marked_right = current is not None and current.key == (schema, table)
    if points_right and marked_right:
        return None
    old = reads[0][1] if len(reads) == 1 else (current.table_name if current else None)
    reason = "promote"
    if view is not None and not points_right and current is None and not force:
        plan.findings.append(Finding(
            "unmanaged", base, f"{schema}.{base} is a view the registry did not create (it reads "
            f"{_names(reads)})", "drop it yourself, or reconcile --force to replace it", "error"))
        return None
    if current is not None and view is None:
        reason = "drift: the view was missing"
        plan.findings.append(Finding(
            "view_missing", base, f"the production view {schema}.{base} is missing",
            "reconcile recreates it", "warning"))
    elif current is not None and reads != ((schema, current.table_name),):
        reason = f"drift: the view read {_names(reads)}"
        plan.findings.append(Finding(
            "view_elsewhere", base, f"{schema}.{base} reads {_names(reads)}, but the registry's "
            f"production is {current.table_name}", "reconcile re-points it", "warning"))
    row = actual.live.get(wanted)
    eval_row = row if actual.evals_known else None
    gate = None if force else (
        _gate_finding(eval_row, state, schema, table, first=current is None)
        or _path_finding(actual, row, schema, table))
    if gate is not None and forced_promotion == wanted:
        plan.findings.append(Finding(
            "forced", table, f"{wanted} was promoted with --force (recorded in its "
            f"promotion commit): the promotion gate is skipped for it ({gate.message})",
            None, "info"))
        gate = None
    if gate is not None:
        plan.findings.append(gate)
        return None
    rows = actual.rows.get(table, 0) if row is not None and row.present else 0
    if rows == 0 and not force:
        new = " (it is created by this run)" if row is None or not row.present else ""
        plan.findings.append(Finding(
            "empty", table, f"refusing to swap {state.environment} to {schema}.{table}: the "
            f"table is empty{new}", f"ingest {wanted} first, then reconcile; or pass --force",
            "error"))
        return None
    plan.actions.append(SwapProduction(schema, base, old, table, wanted, reason))
    return current if current is not None and current.key != (schema, table) else None


def _gate_finding(
    row: ManagedTable | None, state: RegistryState, schema: str, table: str, *, first: bool
) -> Finding | None:
    """The promotion gate (`registry.quality.gate`) on the swap target's bookkeeping row; no
    row: the table is created by this run and the empty-table refusal speaks instead (or,
    offline, no comparison outcome is known: the reconciler judges it)."""
    if row is None:
        return None
    verdict = gate.judge(row.chunk_version, row.last_compare_passed,
                         served_before=row.promoted_at is not None,
                         require_eval=state.settings.require_eval and not first)
    if not verdict.held:
        return None
    return Finding("gate", table, f"refusing to swap {state.environment} to {schema}.{table}: "
                   f"{verdict.reason}", verdict.fix, "error")


def _path_finding(
    actual: ActualState, row: ManagedTable | None, schema: str, table: str
) -> Finding | None:
    """The promotion path gate (`gate.judge_path`, read by the run into `actual.path_gate`):
    a table this environment served before (a rollback target) is never held back."""
    verdict = actual.path_gate
    if verdict is None or not verdict.held or (row is not None and row.promoted_at is not None):
        return None
    return Finding("gate", table, f"refusing to swap to {schema}.{table}: {verdict.reason}",
                   verdict.fix, "error")


def _names(reads: tuple[tuple[str, str], ...]) -> str:
    return ", ".join(f"{s}.{t}" for s, t in reads) or "nothing"


def protected_tables(
    actual: ActualState, keep_previous: int, swapping_from: ManagedTable | None = None
) -> set[tuple[str, str]]:
    """Production and the `keep_previous` most recent former productions (rollback targets),
    as they will be once a planned swap away from `swapping_from` is done."""
    keep = {m.key for m in actual.managed if m.status == "production"}
    former = sorted(
        (m for m in actual.managed if m.status != "dropped" and m.demoted_at is not None
         and m.status != "production"),
        key=lambda m: m.demoted_at or datetime.min.replace(tzinfo=UTC), reverse=True,
    )
    order = ([swapping_from] if swapping_from else []) + [
        m for m in former if swapping_from is None or m.key != swapping_from.key]
    keep.update(m.key for m in order[:keep_previous])
    return keep


def _plan_retirements(
    plan: Plan, state: RegistryState, actual: ActualState, swapping_from: ManagedTable | None
) -> None:
    settings = state.settings
    configs = state.configs
    swap = next((a for a in plan.actions if isinstance(a, SwapProduction)), None)
    protected = protected_tables(actual, settings.keep_previous, swapping_from)
    candidate = settings.experiment.candidate if settings.experiment else None
    for version, row in sorted(actual.live.items()):
        if version in configs:
            continue
        if version == candidate:
            plan.findings.append(Finding(
                "kept", row.table_name, f"{row.schema_name}.{row.table_name} is kept: it is "
                "the candidate of the running experiment", "end the experiment first "
                "(`registry experiment end`)", "warning"))
            continue
        name = f"{row.schema_name}.{row.table_name}"
        if row.status in ("shadow", "production"):
            if row.status == "production" and (swap is None or swap.table == row.table_name):
                plan.findings.append(Finding(
                    "kept", row.table_name, f"{name} is still production: it is not retired until "
                    "production moves to another config", "promote another config", "warning"))
                continue
            drop_after = actual.now + settings.grace_period
            plan.actions.append(Retire(row.schema_name, row.table_name, version,
                                       utc_text(drop_after)))
            continue
        retired_at = row.retired_at or actual.now
        served_until = actual.served_until.get(row.key, actual.now - SERVED_GRACE)
        if row.key in protected:
            plan.findings.append(Finding(
                "kept", row.table_name, f"{name} is kept: it is the previous production "
                "(the rollback target)", None, "info"))
        elif served_until is None or served_until + SERVED_GRACE > actual.now:
            plan.findings.append(Finding(
                "served", row.table_name, f"{name} is kept: applications were served it "
                f"{'now' if served_until is None else 'at ' + utc_text(served_until)}, and a "
                f"reader's cache may name it for {duration_text(SERVED_GRACE)} after that",
                None, "info"))
        elif retired_at + settings.grace_period > actual.now:
            plan.findings.append(Finding(
                "grace", row.table_name, f"{name} is retired; it is dropped after "
                f"{utc_text(retired_at + settings.grace_period)} (grace period "
                f"{duration_text(settings.grace_period)})", None, "info"))
        else:
            plan.actions.append(Drop(row.schema_name, row.table_name, version, utc_text(retired_at),
                                     already_gone=not row.present))


def utc_text(moment: datetime) -> str:
    """`2026-01-02T03:04:05Z`: how plans and errors write a moment (RFC 3339 UTC)."""
    return rfc3339(moment)


