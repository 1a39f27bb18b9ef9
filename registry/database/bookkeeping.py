"""The bookkeeping schema `chunk_registry`: every table of it, and every read and write of them.

What the registry created and did is recorded here: the tables it manages (`managed_tables`),
its reconcile, ingest and evaluation runs, the health reports the dashboard draws and the
rollback proposals of the regression watch. The schema is created and migrated by the tool
itself, under a transaction-level advisory lock so two first runs cannot race, and its version
is recorded. Functions take a psycopg connection and plain values, and return plain values or
the small row types below; callers own the transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from registry.database.connection import MIGRATION_LOCK_KEY
from registry.errors import BookkeepingDamaged, RegistryError
from registry.timestamps import rfc3339

T = TypeVar("T")

BOOKKEEPING_SCHEMA = "chunk_registry"
BOOKKEEPING_VERSION = 12
"""The version of the `chunk_registry` schema this code writes (not the locked-config format,
which is `config.SCHEMA_VERSION`)."""


def table(name: str) -> sql.Composed:
    """`chunk_registry.<name>`, quoted."""
    return sql.SQL("{}.{}").format(sql.Identifier(BOOKKEEPING_SCHEMA), sql.Identifier(name))


MANAGED = table("managed_tables")
RECONCILE_RUNS = table("reconcile_runs")
INGEST_RUNS = table("ingest_runs")
EVAL_RUNS = table("eval_runs")
HEALTH_REPORTS = table("health_reports")
CE_DISTRIBUTIONS = table("ce_score_distributions")
ROLLBACK_PROPOSALS = table("rollback_proposals")
NOTIFICATIONS = table("notifications")
SERVED_STATE = table("served_state")
SERVED_TABLES = table("served_tables")
OUTCOMES = table("experiment_outcomes")
EXPERIMENT_STOPS = table("experiment_stops")
SERVED_CHANNEL = "chunk_registry_served"
"""NOTIFY channel of a served-state change (payload `registry/environment`)."""
TUNE_RUNS = table("tune_runs")
TUNE_TRIALS = table("tune_trials")
EMBEDDING_CACHE = table("embedding_cache")


# ---------------------------------------------------------------------------------------------
# Migrations


def _migration_1() -> list[sql.Composed | sql.SQL]:
    s = sql.Identifier(BOOKKEEPING_SCHEMA)
    statements = [
        "CREATE SCHEMA IF NOT EXISTS {s}",
        """CREATE TABLE {s}.schema_version (
            singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
            version integer NOT NULL,
            migrated_at timestamptz NOT NULL DEFAULT now())""",
        # One row per table the registry ever created; rows are kept after a drop (history).
        """CREATE TABLE {s}.managed_tables (
            schema_name text NOT NULL,
            table_name text NOT NULL CHECK (octet_length(table_name) <= 63),
            chunk_version text NOT NULL,
            config_hash text NOT NULL,
            status text NOT NULL CHECK (status IN ('shadow', 'production', 'retired', 'dropped')),
            created_at timestamptz NOT NULL DEFAULT now(),
            created_commit text,
            promoted_at timestamptz,
            demoted_at timestamptz,
            retired_at timestamptz,
            dropped_at timestamptz,
            PRIMARY KEY (schema_name, table_name),
            CHECK ((status = 'retired') <= (retired_at IS NOT NULL)),
            CHECK ((status = 'dropped') = (dropped_at IS NOT NULL)))""",
        # At most one production table, enforced by the database itself.
        """CREATE UNIQUE INDEX managed_tables_one_production ON {s}.managed_tables ((true))
            WHERE status = 'production'""",
        # A live chunk_version has one table (a dropped one may come back under a new row).
        """CREATE UNIQUE INDEX managed_tables_live_version ON {s}.managed_tables (chunk_version)
            WHERE status <> 'dropped'""",
        """CREATE TABLE {s}.reconcile_runs (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            started_at timestamptz NOT NULL DEFAULT now(),
            finished_at timestamptz,
            git_ref text NOT NULL,
            git_commit text,
            plan jsonb NOT NULL DEFAULT '[]',
            outcome text NOT NULL
                CHECK (outcome IN ('running', 'noop', 'applied', 'refused', 'failed')),
            error text,
            actor text)""",
        """CREATE TABLE {s}.ingest_runs (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            ingest_run_id text NOT NULL,
            chunk_version text NOT NULL,
            started_at timestamptz NOT NULL DEFAULT now(),
            finished_at timestamptz,
            status text NOT NULL CHECK (status IN ('running', 'succeeded', 'failed')),
            documents integer,
            chunks integer,
            duplicates_removed integer,
            over_budget integer,
            source text,
            details jsonb NOT NULL DEFAULT '{{}}')""",
        "CREATE INDEX ingest_runs_version ON {s}.ingest_runs (chunk_version, started_at DESC)",
        """CREATE TABLE {s}.health_reports (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            at timestamptz NOT NULL DEFAULT now(),
            chunk_version text,
            report jsonb NOT NULL)""",
        "CREATE INDEX health_reports_version ON {s}.health_reports (chunk_version, at DESC)",
    ]
    return [sql.SQL(text).format(s=s) for text in statements]


def _migration_2() -> list[sql.Composed | sql.SQL]:
    """Evaluation runs: the promotion gate reads the last comparison of a shadow table."""
    s = sql.Identifier(BOOKKEEPING_SCHEMA)
    statements = [
        """CREATE TABLE {s}.eval_runs (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            at timestamptz NOT NULL DEFAULT now(),
            chunk_version text NOT NULL,
            against_version text,
            kind text NOT NULL CHECK (kind IN ('eval', 'compare')),
            cases integer NOT NULL CHECK (cases >= 0),
            metrics jsonb NOT NULL,
            passed boolean,
            details jsonb NOT NULL DEFAULT '{{}}',
            CHECK ((kind = 'compare') = (against_version IS NOT NULL AND passed IS NOT NULL)))""",
        "CREATE INDEX eval_runs_version ON {s}.eval_runs (chunk_version, kind, at DESC)",
    ]
    return [sql.SQL(text).format(s=s) for text in statements]


def _migration_3() -> list[sql.Composed | sql.SQL]:
    """Rollback proposals of the regression watch: one per promotion, i.e. per config and
    promotion commit on main (the unique key), so a rerun or a restart finds the proposal it
    already made instead of opening another (a drift re-swap moves promoted_at, not that)."""
    s = sql.Identifier(BOOKKEEPING_SCHEMA)
    statements = [
        """CREATE TABLE {s}.rollback_proposals (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            chunk_version text NOT NULL,
            promoted_at timestamptz NOT NULL,
            promote_commit text NOT NULL,
            target_version text NOT NULL,
            proposed_at timestamptz NOT NULL DEFAULT now(),
            branch text,
            commit text,
            pr_number integer,
            pr_url text,
            adopted boolean NOT NULL DEFAULT false,
            evidence jsonb NOT NULL DEFAULT '{{}}',
            UNIQUE (chunk_version, promote_commit))""",
    ]
    return [sql.SQL(text).format(s=s) for text in statements]


def _migration_4() -> list[sql.Composed | sql.SQL]:
    """Notifications: one row per incident and target, carrying both of its messages (opened,
    then resolved) and their delivery state, so a restart or the next scheduled run neither
    repeats a sent message nor forgets an unsent one (it is retried at next_attempt_at)."""
    s = sql.Identifier(BOOKKEEPING_SCHEMA)
    statements = [
        """CREATE TABLE {s}.notifications (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            kind text NOT NULL,
            subject text NOT NULL,
            fingerprint text NOT NULL,
            target text NOT NULL,
            title text NOT NULL,
            body text NOT NULL,
            opened_at timestamptz NOT NULL,
            open_status text NOT NULL CHECK (open_status IN ('pending', 'sent', 'abandoned')),
            open_sent_at timestamptz,
            resolved_at timestamptz,
            resolve_body text,
            resolve_status text CHECK (resolve_status IN ('pending', 'sent', 'abandoned')),
            resolve_sent_at timestamptz,
            attempts integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
            next_attempt_at timestamptz NOT NULL,
            last_attempt_at timestamptz,
            last_error text,
            CHECK ((resolve_status IS NULL) OR (resolved_at IS NOT NULL)))""",
        # One open occurrence of an incident per target.
        """CREATE UNIQUE INDEX notifications_open ON {s}.notifications
            (kind, subject, fingerprint, target) WHERE resolved_at IS NULL""",
        """CREATE INDEX notifications_due ON {s}.notifications (next_attempt_at)
            WHERE open_status = 'pending' OR resolve_status = 'pending'""",
    ]
    return [sql.SQL(text).format(s=s) for text in statements]


def _migration_5() -> list[sql.Composed | sql.SQL]:
    """Registry identities: every managed row and reconcile run names the registry that wrote
    it (rows from before: the legacy identity `schema.base_name`, the base name read off the
    table name), and "one production" and "one live table per version" hold per registry, so
    two registries share a database without touching each other's tables."""
    s = sql.Identifier(BOOKKEEPING_SCHEMA)
    statements = [
        "ALTER TABLE {s}.managed_tables ADD COLUMN registry text",
        """UPDATE {s}.managed_tables SET registry = schema_name || '.' || regexp_replace(
            table_name, '_[0-9]{{4}}_[0-9]{{2}}_[0-9]{{2}}_[0-9]{{6}}_v[0-9]+$', '')""",
        "ALTER TABLE {s}.managed_tables ALTER COLUMN registry SET NOT NULL",
        "DROP INDEX {s}.managed_tables_one_production",
        """CREATE UNIQUE INDEX managed_tables_one_production ON {s}.managed_tables (registry)
            WHERE status = 'production'""",
        "DROP INDEX {s}.managed_tables_live_version",
        """CREATE UNIQUE INDEX managed_tables_live_version ON {s}.managed_tables
            (registry, chunk_version) WHERE status <> 'dropped'""",
        "ALTER TABLE {s}.reconcile_runs ADD COLUMN registry text",
    ]
    return [sql.SQL(text).format(s=s) for text in statements]


_ONLY_REGISTRY = sql.SQL("(SELECT min(registry) FROM {s}.managed_tables "
                         "HAVING count(DISTINCT registry) = 1)")
"""The registry of a database only one registry ever used (NULL when there were several)."""
_OF_VERSION = sql.SQL("(SELECT m.registry FROM {s}.managed_tables m WHERE m.chunk_version = "
                      "x.chunk_version ORDER BY m.created_at DESC LIMIT 1)")
"""The registry of the newest managed row of a record's version."""
_BY_TABLE = sql.SQL(
    "(SELECT m.registry FROM {s}.managed_tables m "
    "WHERE m.schema_name || '.' || m.table_name = {q}), "
    "CASE WHEN {q} LIKE '%.%' THEN split_part({q}, '.', 1) || '.' || regexp_replace("
    "split_part({q}, '.', 2), '_[0-9]{{4}}_[0-9]{{2}}_[0-9]{{2}}_[0-9]{{6}}_v[0-9]+$', '') END")
"""The registry of the managed row of the `schema.table` a record names (`q`), else that
table's legacy identity `schema.base_name` (as migration 5 read managed rows)."""


def _migration_6() -> list[sql.Composed | sql.SQL]:
    """Ingest, evaluation, health, rollback and notification records name their registry, and
    every read filters by it: two registries in one database may lock the same version
    string. Rows from before are attributed by the table they name (its managed row's
    registry, else the legacy identity read off the table name), else by their version's
    newest managed row, else to the only registry the database knows; what stays ambiguous
    keeps a NULL registry and is read by no registry."""
    s = sql.Identifier(BOOKKEEPING_SCHEMA)
    only, of_version = _ONLY_REGISTRY.format(s=s), _OF_VERSION.format(s=s)
    in_details = _BY_TABLE.format(s=s, q=sql.SQL("(x.details->>'table')"))
    in_report = _BY_TABLE.format(s=s, q=sql.SQL("(x.report->>'table')"))
    plain = [
        "ALTER TABLE {s}.ingest_runs ADD COLUMN registry text",
        "ALTER TABLE {s}.eval_runs ADD COLUMN registry text",
        "ALTER TABLE {s}.health_reports ADD COLUMN registry text",
        "ALTER TABLE {s}.rollback_proposals ADD COLUMN registry text",
        "ALTER TABLE {s}.notifications ADD COLUMN registry text",
    ]
    backfills: list[sql.Composed | sql.SQL] = [
        sql.SQL("UPDATE {s}.ingest_runs x SET registry = coalesce({t}, {v}, {o})").format(
            s=s, t=in_details, v=of_version, o=only),
        sql.SQL("UPDATE {s}.eval_runs x SET registry = coalesce({t}, {v}, {o})").format(
            s=s, t=in_details, v=of_version, o=only),
        sql.SQL("UPDATE {s}.health_reports x SET registry = coalesce({t}, {v}, {o})").format(
            s=s, t=in_report, v=of_version, o=only),
        sql.SQL("UPDATE {s}.rollback_proposals x SET registry = coalesce({v}, {o})").format(
            s=s, v=of_version, o=only),
        sql.SQL("UPDATE {s}.notifications SET registry = {o}").format(s=s, o=only),
        sql.SQL("UPDATE {s}.reconcile_runs SET registry = {o} WHERE registry IS NULL").format(
            s=s, o=only),
    ]
    indexes = [
        "DROP INDEX {s}.ingest_runs_version",
        """CREATE INDEX ingest_runs_version ON {s}.ingest_runs
            (registry, chunk_version, started_at DESC)""",
        "DROP INDEX {s}.eval_runs_version",
        """CREATE INDEX eval_runs_version ON {s}.eval_runs
            (registry, chunk_version, kind, at DESC)""",
        "DROP INDEX {s}.health_reports_version",
        """CREATE INDEX health_reports_version ON {s}.health_reports
            (registry, chunk_version, at DESC)""",
        """ALTER TABLE {s}.rollback_proposals
            DROP CONSTRAINT rollback_proposals_chunk_version_promote_commit_key""",
        """CREATE UNIQUE INDEX rollback_proposals_promotion ON {s}.rollback_proposals
            (registry, chunk_version, promote_commit)""",
        "DROP INDEX {s}.notifications_open",
        """CREATE UNIQUE INDEX notifications_open ON {s}.notifications
            (registry, kind, subject, fingerprint, target) WHERE resolved_at IS NULL""",
    ]
    return [*(sql.SQL(text).format(s=s) for text in plain), *backfills,
            *(sql.SQL(text).format(s=s) for text in indexes)]


def _migration_7() -> list[sql.Composed | sql.SQL]:
    """What applications read: the served state per registry and environment (materialized by
    the reconciler, a version bumped on every change), when each table was last served (the
    reconciler keeps a table a reader's cache may still name), experiment outcomes, and the
    guardrail stops the promotion watch proposed."""
    s = sql.Identifier(BOOKKEEPING_SCHEMA)
    statements = [
        """CREATE TABLE {s}.served_state (
            registry text NOT NULL,
            environment text NOT NULL,
            version bigint NOT NULL DEFAULT 1,
            state jsonb NOT NULL,
            git_commit text,
            updated_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (registry, environment))""",
        # One row per table ever served; served_until NULL while it is served now.
        """CREATE TABLE {s}.served_tables (
            registry text NOT NULL,
            environment text NOT NULL,
            schema_name text NOT NULL,
            table_name text NOT NULL,
            first_served_at timestamptz NOT NULL DEFAULT now(),
            served_until timestamptz,
            PRIMARY KEY (registry, environment, schema_name, table_name))""",
        """CREATE TABLE {s}.experiment_outcomes (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            registry text NOT NULL,
            environment text NOT NULL,
            experiment text NOT NULL,
            arm text NOT NULL CHECK (arm IN ('control', 'candidate')),
            chunk_version text NOT NULL,
            request_key text NOT NULL,
            metric text NOT NULL DEFAULT 'success',
            success boolean NOT NULL,
            at timestamptz NOT NULL DEFAULT now(),
            details jsonb)""",
        """CREATE INDEX experiment_outcomes_arm ON {s}.experiment_outcomes
            (registry, environment, experiment, metric, arm)""",
        """CREATE TABLE {s}.experiment_stops (
            registry text NOT NULL,
            environment text NOT NULL,
            experiment text NOT NULL,
            candidate text NOT NULL,
            proposed_at timestamptz NOT NULL DEFAULT now(),
            branch text,
            git_commit text,
            pr_number integer,
            pr_url text,
            adopted boolean NOT NULL DEFAULT false,
            evidence jsonb NOT NULL DEFAULT '{{}}',
            PRIMARY KEY (registry, environment, experiment))""",
    ]
    return [sql.SQL(text).format(s=s) for text in statements]


def _migration_8() -> list[sql.Composed | sql.SQL]:
    """Tuning runs (`registry tune`): one row per run (its space, objectives, outcome, the
    chosen trial and the lock it opened) and one per trial (parameters, metrics, whether it is
    on the Pareto front), each run named by the registry that ran it. `token` names the run's
    scratch schema and advisory lock, so a later run can tell a dead run (lock free) from a
    live one, whichever registry started it."""
    s = sql.Identifier(BOOKKEEPING_SCHEMA)
    statements = [
        """CREATE TABLE {s}.tune_runs (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            token text NOT NULL UNIQUE,
            registry text NOT NULL,
            started_at timestamptz NOT NULL DEFAULT now(),
            finished_at timestamptz,
            status text NOT NULL
                CHECK (status IN ('running', 'succeeded', 'failed', 'interrupted')),
            source text NOT NULL,
            cases_file text NOT NULL,
            cases integer NOT NULL CHECK (cases >= 0),
            base_version text,
            space jsonb NOT NULL,
            objectives jsonb NOT NULL,
            prefer text NOT NULL,
            scratch_schema text NOT NULL,
            best_trial integer,
            locked jsonb,
            error text,
            details jsonb NOT NULL DEFAULT '{{}}')""",
        """CREATE TABLE {s}.tune_trials (
            run_id bigint NOT NULL REFERENCES {s}.tune_runs (id) ON DELETE CASCADE,
            number integer NOT NULL CHECK (number >= 0),
            at timestamptz NOT NULL DEFAULT now(),
            state text NOT NULL CHECK (state IN ('complete', 'pruned', 'failed')),
            params jsonb NOT NULL,
            metrics jsonb NOT NULL DEFAULT '{{}}',
            pareto boolean NOT NULL DEFAULT false,
            seconds double precision NOT NULL,
            details jsonb NOT NULL DEFAULT '{{}}',
            PRIMARY KEY (run_id, number))""",
    ]
    return [sql.SQL(text).format(s=s) for text in statements]


def _migration_9() -> list[sql.Composed | sql.SQL]:
    """The embedding cache: vectors keyed by what decides them, the embedder's fingerprint and
    normalization and the sha256 of the exact text embedded (passage prefix included), so a
    config whose chunks repeat an earlier one's (another Jaccard threshold, prefix policy B
    after A) embeds only what is new. Plain bytea (float32, little-endian): no pgvector
    needed in the bookkeeping schema. Shared by every registry of the database: an entry is
    what one model gives one text, whoever asked."""
    s = sql.Identifier(BOOKKEEPING_SCHEMA)
    statements = [
        """CREATE TABLE {s}.embedding_cache (
            fingerprint text NOT NULL,
            normalized boolean NOT NULL,
            text_sha256 bytea NOT NULL CHECK (octet_length(text_sha256) = 32),
            vector bytea NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (fingerprint, normalized, text_sha256))""",
    ]
    return [sql.SQL(text).format(s=s) for text in statements]


def _migration_10() -> list[sql.Composed | sql.SQL]:
    """Cross-encoder score distributions: the quantiles of the CE scores of one evaluation
    (with the model file's hash, since only one model's scores compare), which health holds
    against the config's first one (the baseline) to warn of drift."""
    s = sql.Identifier(BOOKKEEPING_SCHEMA)
    statements = [
        """CREATE TABLE {s}.ce_score_distributions (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            at timestamptz NOT NULL DEFAULT now(),
            eval_run_id bigint NOT NULL REFERENCES {s}.eval_runs (id) ON DELETE CASCADE,
            chunk_version text NOT NULL,
            model_hash text NOT NULL,
            model_name text NOT NULL,
            quantiles jsonb NOT NULL)""",
        """CREATE INDEX ce_score_distributions_version ON {s}.ce_score_distributions
            (chunk_version, model_hash, at)""",
    ]
    return [sql.SQL(text).format(s=s) for text in statements]


def _migration_11() -> list[sql.Composed | sql.SQL]:
    """The email recipients who already got a notification's due message: when others refused
    it, only they are tried again (a retry of the whole target sent each retry to everyone)."""
    s = sql.Identifier(BOOKKEEPING_SCHEMA)
    return [sql.SQL("ALTER TABLE {s}.notifications ADD COLUMN delivered_to text[] NOT NULL "
                    "DEFAULT '{{}}'").format(s=s)]


def _migration_12() -> list[sql.Composed | sql.SQL]:
    """Experiment outcomes and stops per run, not per name: a name started again (another
    candidate, salt or end) is another run, whose report and guardrail stop must not see the
    earlier run's outcomes or stop. Rows of the experiment the served state routes now are
    given its run; older rows keep a NULL run (a report by name still reads them)."""
    s = sql.Identifier(BOOKKEEPING_SCHEMA)
    run = sql.SQL("(e.state->'experiment'->'candidate'->>'version') || ':' || "
                  "(e.state->'experiment'->>'salt') || ':' || (e.state->'experiment'->>'ends')")
    statements = [
        "ALTER TABLE {s}.experiment_outcomes ADD COLUMN run text",
        "UPDATE {s}.experiment_outcomes o SET run = {run} FROM {s}.served_state e "
        "WHERE jsonb_typeof(e.state->'experiment') = 'object' AND o.registry = e.registry "
        "AND o.environment = e.environment AND o.experiment = e.state->'experiment'->>'name'",
        "DROP INDEX {s}.experiment_outcomes_arm",
        """CREATE INDEX experiment_outcomes_run ON {s}.experiment_outcomes
            (registry, environment, experiment, run, metric, arm, chunk_version)""",
        "ALTER TABLE {s}.experiment_stops ADD COLUMN run text NOT NULL DEFAULT ''",
        "UPDATE {s}.experiment_stops o SET run = {run} FROM {s}.served_state e "
        "WHERE jsonb_typeof(e.state->'experiment') = 'object' AND o.registry = e.registry "
        "AND o.environment = e.environment AND o.experiment = e.state->'experiment'->>'name' "
        "AND o.candidate = e.state->'experiment'->'candidate'->>'version'",
        "ALTER TABLE {s}.experiment_stops DROP CONSTRAINT experiment_stops_pkey",
        "ALTER TABLE {s}.experiment_stops ADD PRIMARY KEY (registry, environment, experiment, "
        "run)",
    ]
    return [sql.SQL(text).format(s=s, run=run) for text in statements]


MIGRATIONS = {1: _migration_1, 2: _migration_2, 3: _migration_3, 4: _migration_4,
              5: _migration_5, 6: _migration_6, 7: _migration_7,
              8: _migration_8, 9: _migration_9, 10: _migration_10, 11: _migration_11,
              12: _migration_12}
"""version -> the statements that bring the schema from version-1 to version."""


def bookkeeping_version(conn: psycopg.Connection[Any]) -> int:
    """The recorded bookkeeping version, 0 when the schema does not exist yet (one query)."""
    row = conn.execute(
        sql.SQL("SELECT CASE WHEN to_regclass({}) IS NULL THEN NULL ELSE 1 END").format(
            sql.Literal(f"{BOOKKEEPING_SCHEMA}.schema_version"))
    ).fetchone()
    if row is None or row[0] is None:
        return 0
    found = conn.execute(sql.SQL("SELECT version FROM {}").format(table("schema_version"))
                         ).fetchone()
    return int(found[0]) if found else 0


def ensure_schema(conn: psycopg.Connection[Any]) -> int:
    """Create or migrate `chunk_registry` to BOOKKEEPING_VERSION; idempotent and race-free.

    The common case (already current) is one query.
    """
    try:
        row = conn.execute(sql.SQL("SELECT version FROM {}").format(table("schema_version"))
                           ).fetchone()
        if row is None:
            raise BookkeepingDamaged(
                f"{BOOKKEEPING_SCHEMA}.schema_version has no row, so the version of the "
                "bookkeeping tables is unknown (deleted by hand?)",
                fix=f"put the row back with version {BOOKKEEPING_VERSION} if the tables are "
                "current, or restore the schema from a backup")
        current = int(row[0])
    except psycopg.errors.UndefinedTable:
        if not conn.autocommit:
            conn.rollback()
        current = 0
    if current == BOOKKEEPING_VERSION:
        return current
    _check_not_newer(current)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
        current = bookkeeping_version(conn)
        _check_not_newer(current)
        if current == 0:
            _check_no_leftovers(conn)
        for version in range(current + 1, BOOKKEEPING_VERSION + 1):
            for statement in MIGRATIONS[version]():
                conn.execute(statement)
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (version) VALUES (%s) ON CONFLICT (singleton) "
                "DO UPDATE SET version = EXCLUDED.version, migrated_at = now()"
            ).format(table("schema_version")),
            (BOOKKEEPING_VERSION,),
        )
    return BOOKKEEPING_VERSION


def _check_no_leftovers(conn: psycopg.Connection[Any]) -> None:
    """A schema without its version table but with other tables was edited by hand: creating
    it again would fail half-way, and guessing its version could migrate it wrongly."""
    row = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = %s",
                       (BOOKKEEPING_SCHEMA,)).fetchone()
    if row and row[0]:
        raise BookkeepingDamaged(
            f"{BOOKKEEPING_SCHEMA}.schema_version is missing but {row[0]} other bookkeeping "
            "tables are there, so their version is unknown (dropped by hand?)",
            fix=f"restore {BOOKKEEPING_SCHEMA} from a backup; if its history may go, DROP "
            f"SCHEMA {BOOKKEEPING_SCHEMA} CASCADE and rerun (the tool recreates it)")


def _check_not_newer(version: int) -> None:
    if version > BOOKKEEPING_VERSION:
        raise RegistryError(
            f"the database's {BOOKKEEPING_SCHEMA} schema is version {version}, newer than this "
            f"chunk-registry understands ({BOOKKEEPING_VERSION})",
            fix="upgrade chunk-registry",
        )


def exists(conn: psycopg.Connection[Any], name: str) -> bool:
    """Whether the bookkeeping table `name` exists (a database a read-only command never
    migrated may predate it)."""
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL",
                       (f"{BOOKKEEPING_SCHEMA}.{name}",)).fetchone()
    return bool(row and row[0])


def _one(
    conn: psycopg.Connection[Any], query: sql.Composed, params: Sequence[Any],
    make: Callable[..., T],
) -> T | None:
    """The first row of `query` made into `make(*row)`, None when there is none."""
    row = conn.execute(query, params).fetchone()
    return make(*row) if row else None


# ---------------------------------------------------------------------------------------------
# managed_tables: what the reconciler created, and what production reads


@dataclass(frozen=True)
class ManagedTable:
    """One row of chunk_registry.managed_tables, and whether its table exists."""

    schema_name: str
    table_name: str
    chunk_version: str
    config_hash: str
    status: str
    created_at: datetime
    created_commit: str | None
    promoted_at: datetime | None
    demoted_at: datetime | None
    retired_at: datetime | None
    dropped_at: datetime | None
    present: bool
    last_compare_passed: bool | None = None
    """Outcome of the newest `registry eval --compare` of this table (None: never compared)."""
    registry: str | None = None
    """The identity of the registry that created it (None: a row built without one)."""

    @property
    def key(self) -> tuple[str, str]:
        return (self.schema_name, self.table_name)


_MANAGED_COLUMNS = tuple(
    f.name for f in fields(ManagedTable)
    if f.name not in ("present", "last_compare_passed", "registry")
)
_LAST_COMPARE = sql.SQL(
    "(SELECT e.passed FROM {e} e WHERE e.chunk_version = m.chunk_version "
    "AND e.registry = ANY(%(registries)s) AND e.kind = 'compare' "
    "ORDER BY e.at DESC, e.id DESC LIMIT 1)"
).format(e=EVAL_RUNS)


def adopt_tables(
    conn: psycopg.Connection[Any], registry: str, legacy: str, schema: str,
    tables: Sequence[tuple[str, str, str]],
) -> int:
    """Record under `registry` the rows its legacy identity wrote for `tables` ((table_name,
    chunk_version, config_hash): configs of its repository), so they stay its own once their
    configs are retired, when their versions no longer prove whose they are. Rows of any
    other config (an unnamed registry's with the same tables) are left alone. How many."""
    cursor = conn.execute(sql.SQL(
        "UPDATE {} SET registry = %s WHERE registry = %s AND schema_name = %s "
        "AND (table_name, chunk_version, config_hash) IN "
        "(SELECT * FROM unnest(%s::text[], %s::text[], %s::text[]))").format(MANAGED),
        (registry, legacy, schema, [t for t, _, _ in tables], [v for _, v, _ in tables],
         [h for _, _, h in tables]))
    return cursor.rowcount


def managed_tables(
    conn: psycopg.Connection[Any], *, with_last_compare: bool, registries: Sequence[str] = (),
) -> list[ManagedTable]:
    """Every managed row (of any registry: the planner sorts out what is its own), oldest
    first, with whether its table exists and (when eval_runs exists, `with_last_compare`) the
    outcome of the newest comparison `registries` recorded of its version: one query."""
    query = sql.SQL(
        "SELECT {cols}, to_regclass(format('%%I.%%I', schema_name, table_name)) IS NOT NULL, "
        "{compare}, registry FROM {m} m ORDER BY created_at, table_name"
    ).format(cols=sql.SQL(", ").join(map(sql.Identifier, _MANAGED_COLUMNS)),
             compare=_LAST_COMPARE if with_last_compare else sql.SQL("NULL"), m=MANAGED)
    return [ManagedTable(*r) for r in conn.execute(
        query, {"registries": list(registries)}).fetchall()]


def managed_status(conn: psycopg.Connection[Any], schema: str, table_name: str,
                   registries: Sequence[str]) -> str | None:
    """The status of a managed table, None when none of `registries` manages it."""
    row = conn.execute(
        sql.SQL("SELECT status FROM {} WHERE schema_name = %s AND table_name = %s "
                "AND registry = ANY(%s)").format(MANAGED),
        (schema, table_name, list(registries))).fetchone()
    return str(row[0]) if row else None


def record_created(
    conn: psycopg.Connection[Any], schema: str, table_name: str, chunk_version: str,
    config_hash: str, commit: str | None, registry: str,
) -> None:
    """A table the reconciler (re)created: a new shadow row, or a dropped row come back.
    created_at moves to now: an ingest finished before it filled another instance."""
    conn.execute(
        sql.SQL(
            "INSERT INTO {m} (schema_name, table_name, chunk_version, config_hash, status, "
            "created_commit, registry) VALUES (%(schema)s, %(table)s, %(version)s, %(hash)s, "
            "'shadow', %(commit)s, %(registry)s) ON CONFLICT (schema_name, table_name) DO UPDATE "
            "SET created_at = now(), created_commit = EXCLUDED.created_commit, "
            "registry = EXCLUDED.registry, "
            "status = CASE WHEN {m}.status = 'dropped' THEN 'shadow' ELSE {m}.status END, "
            "dropped_at = NULL, "
            "retired_at = CASE WHEN {m}.status = 'dropped' THEN NULL ELSE {m}.retired_at END"
        ).format(m=MANAGED),
        {"schema": schema, "table": table_name, "version": chunk_version,
         "hash": config_hash, "commit": commit, "registry": registry},
    )


def set_retired(conn: psycopg.Connection[Any], schema: str, table_name: str, retired: bool,
                registries: Sequence[str]) -> bool:
    """shadow -> retired (its grace period starts now), or back, for a table of `registries`;
    False when the table was not in the state it leaves."""
    change = ("status = 'retired', retired_at = now() WHERE status = 'shadow'" if retired
              else "status = 'shadow', retired_at = NULL WHERE status = 'retired'")
    return conn.execute(
        sql.SQL("UPDATE {} SET {} AND schema_name = %s AND table_name = %s "
                "AND registry = ANY(%s)").format(MANAGED, sql.SQL(change)),
        (schema, table_name, list(registries))).rowcount == 1


def lock_live(
    conn: psycopg.Connection[Any], schema: str, table_name: str, registries: Sequence[str]
) -> str | None:
    """The status of a live (shadow or production) table managed by one of `registries`, its
    row locked FOR UPDATE until the transaction ends; None when it is not live."""
    row = conn.execute(
        sql.SQL("SELECT status FROM {} WHERE schema_name = %s AND table_name = %s "
                "AND status IN ('shadow', 'production') AND registry = ANY(%s) FOR UPDATE"
                ).format(MANAGED), (schema, table_name, list(registries))).fetchone()
    return str(row[0]) if row else None


def lock_row(
    conn: psycopg.Connection[Any], schema: str, table_name: str, registries: Sequence[str]
) -> tuple[str, datetime | None] | None:
    """(status, retired_at) of a table managed by one of `registries`, its row locked FOR
    UPDATE; None: not managed by them."""
    row = conn.execute(
        sql.SQL("SELECT status, retired_at FROM {} WHERE schema_name = %s AND table_name = %s "
                "AND registry = ANY(%s) FOR UPDATE").format(MANAGED),
        (schema, table_name, list(registries))).fetchone()
    return (str(row[0]), row[1]) if row else None


def former_productions(
    conn: psycopg.Connection[Any], limit: int, registries: Sequence[str]
) -> list[tuple[str, str]]:
    """(schema, table) of the `limit` most recently demoted live tables of `registries`: the
    rollback targets."""
    rows = conn.execute(
        sql.SQL("SELECT schema_name, table_name FROM {} WHERE status <> 'dropped' "
                "AND demoted_at IS NOT NULL AND status <> 'production' AND registry = ANY(%s) "
                "ORDER BY demoted_at DESC LIMIT %s").format(MANAGED),
        (list(registries), limit)).fetchall()
    return [(str(s), str(t)) for s, t in rows]


def set_demoted(conn: psycopg.Connection[Any], schema: str, table_name: str, *,
                rollback: bool, registries: Sequence[str]) -> int:
    """The production of `registries` other than the table becomes a shadow; rows changed."""
    demoted_at = sql.SQL("NULL" if rollback else "now()")
    return conn.execute(
        sql.SQL("UPDATE {} SET status = 'shadow', demoted_at = {} "
                "WHERE status = 'production' AND NOT (schema_name = %s AND table_name = %s) "
                "AND registry = ANY(%s)").format(MANAGED, demoted_at),
        (schema, table_name, list(registries))).rowcount


def set_production(conn: psycopg.Connection[Any], schema: str, table_name: str) -> int:
    """The table becomes production; a drift correction keeps its promoted_at (when it became
    production: the regression watch's window). Rows changed."""
    return conn.execute(
        sql.SQL("UPDATE {} SET promoted_at = CASE WHEN status = 'production' "
                "THEN promoted_at ELSE now() END, status = 'production' "
                "WHERE schema_name = %s AND table_name = %s").format(MANAGED),
        (schema, table_name)).rowcount


def mark_dropped(conn: psycopg.Connection[Any], schema: str, table_name: str) -> int:
    return conn.execute(
        sql.SQL("UPDATE {} SET status = 'dropped', dropped_at = now() "
                "WHERE schema_name = %s AND table_name = %s").format(MANAGED),
        (schema, table_name)).rowcount


def production_row(
    conn: psycopg.Connection[Any], registries: Sequence[str]
) -> tuple[str, str, datetime | None] | None:
    """(chunk_version, table, promoted_at) of the table production of `registries` reads, per
    the bookkeeping."""
    row = conn.execute(sql.SQL(
        "SELECT chunk_version, table_name, promoted_at FROM {} WHERE status = 'production' "
        "AND registry = ANY(%s) ORDER BY promoted_at DESC NULLS LAST LIMIT 1"
    ).format(MANAGED), (list(registries),)).fetchone()
    return (row[0], row[1], row[2]) if row else None


def served_production(
    conn: psycopg.Connection[Any], chunk_version: str, registries: Sequence[str]
) -> bool:
    """Whether the live table of `chunk_version` of `registries` was production at some
    point."""
    row = conn.execute(
        sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE chunk_version = %s AND status <> "
                "'dropped' AND promoted_at IS NOT NULL AND registry = ANY(%s))").format(MANAGED),
        (chunk_version, list(registries))).fetchone()
    return bool(row and row[0])


def serving_since(
    conn: psycopg.Connection[Any], chunk_version: str, schema: str, table_name: str,
    registries: Sequence[str],
) -> datetime | None:
    """When the registry (one of `registries`) made the table of `chunk_version` what it
    serves, if it serves it now: the start of an environment's soak. None: not serving it."""
    row = conn.execute(
        sql.SQL("SELECT promoted_at FROM {} WHERE status = 'production' AND chunk_version = %s "
                "AND schema_name = %s AND table_name = %s AND registry = ANY(%s)").format(MANAGED),
        (chunk_version, schema, table_name, list(registries))).fetchone()
    return row[0] if row else None


def database_now(conn: psycopg.Connection[Any]) -> datetime:
    """The database's clock: what recorded timestamps are compared with."""
    row = conn.execute("SELECT statement_timestamp()").fetchone()
    assert row is not None
    value: datetime = row[0]
    return value


def table_versions(conn: psycopg.Connection[Any], registries: Sequence[str]) -> dict[str, str]:
    """table -> chunk_version of every table `registries` ever created."""
    return {str(t): str(v) for t, v in conn.execute(sql.SQL(
        "SELECT table_name, chunk_version FROM {} WHERE registry = ANY(%s) "
        "ORDER BY created_at").format(MANAGED), (list(registries),))}


# ---------------------------------------------------------------------------------------------
# reconcile_runs


RECONCILE_INTERRUPTED = (
    "interrupted: the reconciler stopped before it recorded an outcome (process killed or "
    "database connection lost); a later run converged from where it stopped")
_MARK_INTERRUPTED = sql.SQL(
    "WITH interrupted AS (UPDATE {} SET outcome = 'failed', error = %(interrupted)s "
    "WHERE outcome = 'running') ").format(RECONCILE_RUNS)
"""Runs still `running` belong to reconcilers that died (killed, or their connection lost):
every run row is written under the reconcile lock. Said once, in the same statement that
records the new run (no extra round trip); the new row is not visible to the UPDATE."""


def start_reconcile_run(
    conn: psycopg.Connection[Any], ref: str, commit: str | None, plan: str, actor: str,
    registry: str | None = None,
) -> int:
    """A `running` run with its planned actions (JSON text); earlier running ones are marked
    interrupted in the same statement. Returns its id."""
    row = conn.execute(
        _MARK_INTERRUPTED + sql.SQL(
            "INSERT INTO {} (git_ref, git_commit, plan, outcome, actor, registry) VALUES "
            "(%(ref)s, %(commit)s, %(plan)s, 'running', %(actor)s, %(registry)s) RETURNING id"
        ).format(RECONCILE_RUNS),
        {"ref": ref, "commit": commit, "actor": actor, "interrupted": RECONCILE_INTERRUPTED,
         "plan": plan, "registry": registry},
    ).fetchone()
    assert row is not None
    return int(row[0])


def finish_reconcile_run(
    conn: psycopg.Connection[Any], run_id: int | None, *, ref: str, commit: str | None,
    plan: str, outcome: str, error: str | None, actor: str, registry: str | None = None,
) -> int:
    """Finish the run row (one statement; a run never started, a no-op, is inserted already
    finished, marking earlier running ones interrupted). Returns its id."""
    params = {"ref": ref, "commit": commit, "plan": plan, "outcome": outcome, "error": error,
              "actor": actor, "id": run_id, "interrupted": RECONCILE_INTERRUPTED,
              "registry": registry}
    if run_id is None:
        query = _MARK_INTERRUPTED + sql.SQL(
            "INSERT INTO {} (git_ref, git_commit, plan, outcome, error, actor, finished_at, "
            "registry) VALUES (%(ref)s, %(commit)s, %(plan)s, %(outcome)s, %(error)s, "
            "%(actor)s, clock_timestamp(), %(registry)s) RETURNING id").format(RECONCILE_RUNS)
    else:
        query = sql.SQL(
            "UPDATE {} SET plan = %(plan)s, outcome = %(outcome)s, error = %(error)s, "
            "finished_at = clock_timestamp() WHERE id = %(id)s RETURNING id"
        ).format(RECONCILE_RUNS)
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return int(row[0])


@dataclass(frozen=True)
class ReconcileRun:
    """The newest reconcile run, as `registry status` shows it."""

    id: int
    outcome: str
    git_ref: str
    git_commit: str | None
    started_at: datetime
    finished_at: datetime | None
    error: str | None
    actor: str | None
    actions: int


def last_reconcile_run(
    conn: psycopg.Connection[Any], registries: Sequence[str]
) -> ReconcileRun | None:
    """The newest run of `registries`."""
    return _one(conn, sql.SQL(
        "SELECT id, outcome, git_ref, git_commit, started_at, finished_at, error, actor, "
        "jsonb_array_length(plan) FROM {} WHERE registry = ANY(%s) ORDER BY id DESC LIMIT 1"
    ).format(RECONCILE_RUNS), (list(registries),), ReconcileRun)


def last_applied_by_table(
    conn: psycopg.Connection[Any], registries: Sequence[str]
) -> dict[str, tuple[int, str | None]]:
    """table -> (run id, commit) of the last run of `registries` that applied an action to it."""
    touched = conn.execute(sql.SQL(
        "SELECT DISTINCT ON (a->>'table') a->>'table', r.id, r.git_commit "
        "FROM {} r CROSS JOIN LATERAL jsonb_array_elements(r.plan) a "
        "WHERE a->>'result' = 'applied' AND r.registry = ANY(%s) "
        "ORDER BY a->>'table', r.id DESC"
    ).format(RECONCILE_RUNS), (list(registries),)).fetchall()
    return {t: (i, c) for t, i, c in touched}


def changing_runs(
    conn: psycopg.Connection[Any], registries: Sequence[str]
) -> list[tuple[int, datetime, str | None, str, list[Any]]]:
    """(id, when, commit, outcome, recorded actions) of every run of `registries` that applied
    or failed something, oldest first."""
    return [(int(i), at, c, o, p) for i, at, c, o, p in conn.execute(sql.SQL(
        "SELECT id, coalesce(finished_at, started_at), git_commit, outcome, plan "
        "FROM {} WHERE outcome IN ('applied', 'failed') AND registry = ANY(%s) "
        "AND jsonb_typeof(plan) = 'array' ORDER BY id").format(RECONCILE_RUNS),
        (list(registries),)).fetchall()]


# ---------------------------------------------------------------------------------------------
# ingest_runs


INGEST_INTERRUPTED = ("interrupted: the ingest stopped before it recorded an outcome (process "
                      "killed or database connection lost); nothing of it was committed")


def start_ingest_run(
    conn: psycopg.Connection[Any], ingest_run_id: str, chunk_version: str, source: str,
    details: Mapping[str, Any], registry: str,
) -> int:
    """The run's `running` record. Any earlier `running` record of the same ingest_run_id is
    a dead run (the caller holds the run's lock): it is marked in the same statement."""
    row = conn.execute(
        sql.SQL("WITH interrupted AS (UPDATE {r} SET status = 'failed', details = details || "
                "%(note)s WHERE status = 'running' AND ingest_run_id = %(run)s "
                "AND registry = %(registry)s) "
                "INSERT INTO {r} (ingest_run_id, chunk_version, status, source, details, "
                "registry) VALUES (%(run)s, %(version)s, 'running', %(source)s, %(details)s, "
                "%(registry)s) RETURNING id").format(r=INGEST_RUNS),
        {"run": ingest_run_id, "version": chunk_version, "source": source, "registry": registry,
         "note": Jsonb({"error": INGEST_INTERRUPTED}), "details": Jsonb(dict(details))},
    ).fetchone()
    assert row is not None
    return int(row[0])


def finish_ingest_run(
    conn: psycopg.Connection[Any], run: int | None, *, documents: int, chunks: int,
    duplicates_removed: int, over_budget: int, details: Mapping[str, Any],
) -> None:
    conn.execute(
        sql.SQL("UPDATE {} SET status = 'succeeded', finished_at = now(), documents = %s, "
                "chunks = %s, duplicates_removed = %s, over_budget = %s, details = %s "
                "WHERE id = %s").format(INGEST_RUNS),
        (documents, chunks, duplicates_removed, over_budget, Jsonb(dict(details)), run),
    )


def fail_ingest_run(
    conn: psycopg.Connection[Any], run: int | None, *, documents: int,
    details: Mapping[str, Any],
) -> None:
    conn.execute(
        sql.SQL("UPDATE {} SET status = 'failed', finished_at = now(), documents = %s, "
                "details = %s WHERE id = %s").format(INGEST_RUNS),
        (documents, Jsonb(dict(details)), run),
    )


STAGING_PREFIX = "ingest_staging_"
"""`chunk_registry.ingest_staging_<run>`: where the workers of a distributed ingest (Ray) COPY
their shards; one transaction then moves the whole run into the shadow table."""


def staging_table(run: int) -> sql.Composed:
    return table(f"{STAGING_PREFIX}{run}")


def create_ingest_staging(conn: psycopg.Connection[Any], run: int, like: sql.Composable,
                          columns: Sequence[str]) -> sql.Composed:
    """An UNLOGGED table with the row columns of `like` plus the shard and document number of
    each row (a retried shard deletes its own rows first). Unlogged: it lives for one run and
    its rows are written again by a retry, so WAL would only cost."""
    staging = staging_table(run)
    conn.execute(sql.SQL("CREATE UNLOGGED TABLE {} AS SELECT {} FROM {} WITH NO DATA").format(
        staging, sql.SQL(", ").join(map(sql.Identifier, columns)), like))
    conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN shard integer NOT NULL, "
                         "ADD COLUMN doc_seq bigint NOT NULL").format(staging))
    # Every shard's load first deletes its earlier rows: without an index each delete reads
    # the whole table, N shards reading it N times over.
    conn.execute(sql.SQL("CREATE INDEX ON {} (shard)").format(staging))
    return staging


def drop_ingest_staging(conn: psycopg.Connection[Any], ingest_run_id: str) -> list[str]:
    """Drop every staging table of `ingest_run_id`'s runs (the caller holds its run lock, so
    none is in use): the current run's, and those a killed driver left behind."""
    found = conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "JOIN chunk_registry.ingest_runs r ON c.relname = 'ingest_staging_' || r.id "
        "WHERE n.nspname = 'chunk_registry' AND c.relkind = 'r' AND r.ingest_run_id = %s",
        (ingest_run_id,)).fetchall()
    names = [str(row[0]) for row in found]
    for name in names:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table(name)))
    return names


@dataclass(frozen=True)
class IngestRun:
    """The last successful ingest of a config (what the health check's dedup rate reads)."""

    ingest_run_id: str
    finished_at: datetime | None
    documents: int | None
    chunks: int | None
    duplicates_removed: int | None
    over_budget: int | None
    source: str | None


def last_successful_ingest(
    conn: psycopg.Connection[Any], chunk_version: str, registries: Sequence[str]
) -> IngestRun | None:
    return _one(conn, sql.SQL(
        "SELECT ingest_run_id, finished_at, documents, chunks, duplicates_removed, over_budget, "
        "source FROM {} WHERE registry = ANY(%s) AND chunk_version = %s "
        "AND status = 'succeeded' ORDER BY finished_at DESC NULLS LAST, id DESC LIMIT 1"
    ).format(INGEST_RUNS), (list(registries), chunk_version), IngestRun)


def last_ingest_times(
    conn: psycopg.Connection[Any], registries: Sequence[str]
) -> dict[str, datetime]:
    """chunk_version -> when its last successful ingest by `registries` finished (what an
    older evaluation or health report no longer describes)."""
    return {str(v): at for v, at in conn.execute(sql.SQL(
        "SELECT chunk_version, max(finished_at) FROM {} WHERE status = 'succeeded' "
        "AND registry = ANY(%s) AND finished_at IS NOT NULL GROUP BY chunk_version"
    ).format(INGEST_RUNS), (list(registries),)).fetchall()}


def versions_never_ingested(
    conn: psycopg.Connection[Any], schema: str, ingest_run_ids: Sequence[str],
    registries: Sequence[str],
) -> list[str]:
    """chunk_versions of shadow tables in `schema` with no successful run of any of
    `ingest_run_ids` into the table as it is now: a run that finished before the table was
    (re)created by the reconciler filled another instance of it (dropped since)."""
    rows = conn.execute(
        sql.SQL("SELECT m.chunk_version FROM {m} m WHERE m.status = 'shadow' "
                "AND m.schema_name = %(schema)s AND m.registry = ANY(%(registries)s) "
                "AND NOT EXISTS (SELECT 1 FROM {r} r WHERE "
                "r.chunk_version = m.chunk_version AND r.status = 'succeeded' "
                "AND r.registry = ANY(%(registries)s) AND r.finished_at >= m.created_at "
                "AND r.ingest_run_id = ANY(%(runs)s))").format(m=MANAGED, r=INGEST_RUNS),
        {"schema": schema, "runs": list(ingest_run_ids),
         "registries": list(registries)}).fetchall()
    return [str(r[0]) for r in rows]


def ingest_throughput(
    conn: psycopg.Connection[Any], since: datetime, registries: Sequence[str]
) -> list[tuple[str, datetime, float, int | None, int | None]]:
    """(version, finished, MB/s, documents, chunks) of every successful ingest by
    `registries` since `since`."""
    rows = conn.execute(sql.SQL(
        "SELECT chunk_version, finished_at, (details->>'mb_per_s')::float8, documents, chunks "
        "FROM {} WHERE status = 'succeeded' AND finished_at >= %s AND registry = ANY(%s) "
        "AND jsonb_typeof(details->'mb_per_s') = 'number' ORDER BY finished_at, id"
    ).format(INGEST_RUNS), (since, list(registries))).fetchall()
    return [(v, at, float(rate), docs, chunks) for v, at, rate, docs, chunks in rows]


# ---------------------------------------------------------------------------------------------
# eval_runs


@dataclass(frozen=True)
class EvalRecord:
    """The newest recorded metrics of a version (an eval, or the shadow side of a comparison)."""

    at: datetime
    kind: str
    metrics: dict[str, float]


@dataclass(frozen=True)
class ComparisonRecord:
    """The newest comparison of a version against another: what the promotion gate reads."""

    at: datetime
    against: str
    passed: bool
    metrics: dict[str, float]
    regressions: list[str]
    deltas: dict[str, float] = field(default_factory=dict)
    """metric -> this version's value minus the other's."""
    chunk_version: str = ""
    retrieval: str = "bm25"
    """The retrieval both sides ran (comparisons before retrieval modes: bm25)."""


def record_eval_run(
    conn: psycopg.Connection[Any], chunk_version: str, *, registry: str, cases: int,
    metrics: Mapping[str, float], details: Mapping[str, Any],
    against: str | None = None, passed: bool | None = None,
) -> int:
    """Append an eval (or, with `against` and `passed`, a comparison) to eval_runs; its id."""
    row = conn.execute(
        sql.SQL("INSERT INTO {} (chunk_version, against_version, kind, cases, metrics, passed, "
                "details, registry) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id").format(
                    EVAL_RUNS),
        (chunk_version, against, "eval" if against is None else "compare", cases,
         Jsonb(dict(metrics)), passed, Jsonb(dict(details)), registry),
    ).fetchone()
    assert row is not None
    return int(row[0])


@dataclass(frozen=True)
class CeDistribution:
    """One evaluation's cross-encoder score quantiles."""

    at: datetime
    model_hash: str
    model_name: str
    quantiles: dict[str, float]


def record_ce_distribution(
    conn: psycopg.Connection[Any], eval_run_id: int, chunk_version: str, *, model_hash: str,
    model_name: str, quantiles: Mapping[str, float],
) -> None:
    conn.execute(
        sql.SQL("INSERT INTO {} (eval_run_id, chunk_version, model_hash, model_name, quantiles) "
                "VALUES (%s, %s, %s, %s, %s)").format(CE_DISTRIBUTIONS),
        (eval_run_id, chunk_version, model_hash, model_name, Jsonb(dict(quantiles))))


def ce_distributions(
    conn: psycopg.Connection[Any], chunk_version: str, registries: Sequence[str]
) -> tuple[CeDistribution | None, CeDistribution | None]:
    """(baseline, latest) of a config of this registry (its evaluations'): the latest
    distribution recorded, and the first one recorded with the same model (None, None when
    none; a database before migration 10 too)."""
    if not exists(conn, "ce_score_distributions"):
        return None, None
    mine = sql.SQL("SELECT d.* FROM {t} d JOIN {e} e ON e.id = d.eval_run_id "
                   "WHERE d.chunk_version = %(v)s AND e.registry = ANY(%(r)s)").format(
                       t=CE_DISTRIBUTIONS, e=EVAL_RUNS)
    rows = conn.execute(
        sql.SQL("WITH mine AS ({mine}), latest AS (SELECT * FROM mine ORDER BY at DESC, id DESC "
                "LIMIT 1) (SELECT at, model_hash, model_name, quantiles FROM latest) "
                "UNION ALL (SELECT at, model_hash, model_name, quantiles FROM mine "
                "WHERE model_hash = (SELECT model_hash FROM latest) ORDER BY at, id LIMIT 1)"
                ).format(mine=mine),
        {"v": chunk_version, "r": list(registries)}).fetchall()
    if not rows:
        return None, None
    latest, baseline = (CeDistribution(r[0], r[1], r[2], dict(r[3])) for r in rows)
    return baseline, latest


def ce_series(conn: psycopg.Connection[Any], since: datetime, registries: Sequence[str]
              ) -> list[tuple[str, datetime, dict[str, float], str]]:
    """(version, at, quantiles, model name) of this registry's distributions since `since`,
    oldest first."""
    if not exists(conn, "ce_score_distributions"):
        return []
    rows = conn.execute(
        sql.SQL("SELECT d.chunk_version, d.at, d.quantiles, d.model_name FROM {} d JOIN {} e "
                "ON e.id = d.eval_run_id WHERE d.at >= %s AND e.registry = ANY(%s) "
                "ORDER BY d.at, d.id").format(CE_DISTRIBUTIONS, EVAL_RUNS),
        (since, list(registries))).fetchall()
    return [(r[0], r[1], dict(r[2]), r[3]) for r in rows]


def last_eval(
    conn: psycopg.Connection[Any], chunk_version: str, registries: Sequence[str]
) -> EvalRecord | None:
    return _one(conn, sql.SQL("SELECT at, kind, metrics FROM {} WHERE registry = ANY(%s) "
                              "AND chunk_version = %s ORDER BY at DESC, id DESC LIMIT 1"
                              ).format(EVAL_RUNS), (list(registries), chunk_version), EvalRecord)


def last_comparison(
    conn: psycopg.Connection[Any], chunk_version: str, registries: Sequence[str]
) -> ComparisonRecord | None:
    """None when there is none, or when the database predates eval_runs."""
    return _newest_comparison(conn, chunk_version, registries)


def newest_comparison(
    conn: psycopg.Connection[Any], registries: Sequence[str]
) -> ComparisonRecord | None:
    """The newest comparison `registries` recorded of any version (the dashboard's top)."""
    return _newest_comparison(conn, None, registries)


def _newest_comparison(
    conn: psycopg.Connection[Any], chunk_version: str | None, registries: Sequence[str]
) -> ComparisonRecord | None:
    if not exists(conn, "eval_runs"):
        return None
    of_version = sql.SQL("" if chunk_version is None else "AND chunk_version = %(version)s")
    row = conn.execute(
        sql.SQL("SELECT at, against_version, passed, metrics, details, chunk_version FROM {} "
                "WHERE kind = 'compare' AND registry = ANY(%(registries)s) {} "
                "ORDER BY at DESC, id DESC LIMIT 1").format(EVAL_RUNS, of_version),
        {"version": chunk_version, "registries": list(registries)}).fetchone()
    if row is None:
        return None
    at, against, passed, metrics, details, version = row
    details = details or {}
    return ComparisonRecord(at, against, passed, metrics, list(details.get("regressions") or []),
                            dict(details.get("deltas") or {}), version,
                            str(details.get("retrieval") or "bm25"))


# ---------------------------------------------------------------------------------------------
# health_reports


@dataclass(frozen=True)
class StoredHealthReport:
    """One row of health_reports: a HealthReport's JSON as `registry health` recorded it."""

    id: int
    at: datetime
    report: dict[str, Any]


def record_health_report(
    conn: psycopg.Connection[Any], at: datetime, chunk_version: str, report: Mapping[str, Any],
    registry: str,
) -> None:
    conn.execute(
        sql.SQL("INSERT INTO {} (at, chunk_version, report, registry) VALUES (%s, %s, %s, %s)"
                ).format(HEALTH_REPORTS), (at, chunk_version, Jsonb(dict(report)), registry))


def _stored(report_id: int, at: datetime, report: Any) -> StoredHealthReport:
    """A stored report (one that is not a JSON object reads as empty)."""
    return StoredHealthReport(int(report_id), at, report if isinstance(report, dict) else {})


def health_reports_between(
    conn: psycopg.Connection[Any], chunk_version: str, since: datetime, until: datetime,
    registries: Sequence[str],
) -> list[StoredHealthReport]:
    rows = conn.execute(sql.SQL(
        "SELECT id, at, report FROM {} WHERE registry = ANY(%s) AND chunk_version = %s "
        "AND at >= %s AND at <= %s ORDER BY at, id").format(HEALTH_REPORTS),
        (list(registries), chunk_version, since, until)).fetchall()
    return [_stored(*r) for r in rows]


def last_health_report(
    conn: psycopg.Connection[Any], chunk_version: str, until: datetime,
    registries: Sequence[str],
) -> StoredHealthReport | None:
    """The newest report of `chunk_version` up to `until` (what it looked like before)."""
    return _one(conn, sql.SQL(
        "SELECT id, at, report FROM {} WHERE registry = ANY(%s) AND chunk_version = %s "
        "AND at <= %s ORDER BY at DESC, id DESC LIMIT 1").format(HEALTH_REPORTS),
        (list(registries), chunk_version, until), _stored)


def latest_health_reports(
    conn: psycopg.Connection[Any], registries: Sequence[str]
) -> dict[str, StoredHealthReport]:
    """chunk_version -> its newest report by `registries`."""
    rows = conn.execute(sql.SQL(
        "SELECT DISTINCT ON (chunk_version) chunk_version, id, at, report FROM {} "
        "WHERE chunk_version IS NOT NULL AND registry = ANY(%s) "
        "ORDER BY chunk_version, at DESC, id DESC"
    ).format(HEALTH_REPORTS), (list(registries),)).fetchall()
    return {str(r[0]): _stored(*r[1:]) for r in rows}


def _report_number(path: tuple[str, ...]) -> sql.Composed:
    """SQL for a numeric field of a report, NULL when absent or not a number."""
    keys = sql.Literal("{" + ",".join(path) + "}")
    return sql.SQL(
        "CASE WHEN jsonb_typeof(report #> {k}) = 'number' THEN (report #>> {k})::float8 END"
    ).format(k=keys)


def health_series(
    conn: psycopg.Connection[Any], since: datetime, metrics: Mapping[str, tuple[str, ...]],
    registries: Sequence[str],
) -> Iterator[tuple[str, datetime, dict[str, float | None], int, int]]:
    """(version, at, metric -> number at its path in the report, alerts, critical alerts) of
    every report since `since`, in one query however many there are."""
    columns = sql.SQL(", ").join(_report_number(path) for path in metrics.values())
    query = sql.SQL(
        "SELECT chunk_version, at, {columns}, "
        "CASE WHEN jsonb_typeof(report->'alerts') = 'array' "
        "THEN jsonb_array_length(report->'alerts') ELSE 0 END, "
        "CASE WHEN jsonb_typeof(report->'alerts') = 'array' THEN (SELECT count(*) FROM "
        "jsonb_array_elements(report->'alerts') a WHERE a->>'level' = 'critical') ELSE 0 END "
        "FROM {r} WHERE at >= %s AND chunk_version IS NOT NULL AND registry = ANY(%s) "
        "ORDER BY chunk_version, at, id"
    ).format(columns=columns, r=HEALTH_REPORTS)
    keys = list(metrics)
    for row in conn.execute(query, (since, list(registries))):
        version, at, *values, alerts, critical = row
        yield version, at, dict(zip(keys, values, strict=True)), int(alerts), int(critical)


# ---------------------------------------------------------------------------------------------
# rollback_proposals


@dataclass(frozen=True)
class RollbackProposal:
    """The rollback the regression watch proposed (or adopted) for one promotion."""

    target_version: str
    proposed_at: datetime
    branch: str | None
    commit: str | None
    number: int | None
    url: str | None
    adopted: bool
    created: bool = False
    """Whether this run opened the pull request (not stored: a property of the run)."""

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "proposed_at": rfc3339(self.proposed_at)}


def rollback_proposal(
    conn: psycopg.Connection[Any], chunk_version: str, promote_commit: str, registry: str
) -> RollbackProposal | None:
    """The proposal `registry` recorded for the promotion of `chunk_version` by
    `promote_commit`."""
    return _one(conn, sql.SQL(
        "SELECT target_version, proposed_at, branch, commit, pr_number, pr_url, adopted FROM {} "
        "WHERE registry = %s AND chunk_version = %s AND promote_commit = %s"
    ).format(ROLLBACK_PROPOSALS), (registry, chunk_version, promote_commit), RollbackProposal)


def record_rollback_proposal(
    conn: psycopg.Connection[Any], chunk_version: str, promoted_at: datetime,
    promote_commit: str, proposal: RollbackProposal, evidence: Mapping[str, Any],
    registry: str,
) -> RollbackProposal:
    """Record it once per promotion: when one is recorded already, that one is returned."""
    row = conn.execute(sql.SQL(
        "INSERT INTO {} (chunk_version, promoted_at, promote_commit, target_version, branch, "
        "commit, pr_number, pr_url, adopted, evidence, registry) VALUES (%s, %s, %s, %s, %s, "
        "%s, %s, %s, %s, %s, %s) ON CONFLICT (registry, chunk_version, promote_commit) "
        "DO NOTHING RETURNING proposed_at"
    ).format(ROLLBACK_PROPOSALS), (
        chunk_version, promoted_at, promote_commit, proposal.target_version, proposal.branch,
        proposal.commit, proposal.number, proposal.url, proposal.adopted,
        Jsonb(dict(evidence)), registry)).fetchone()
    if row is None:
        existing = rollback_proposal(conn, chunk_version, promote_commit, registry)
        assert existing is not None
        return existing
    return RollbackProposal(**{**asdict(proposal), "proposed_at": row[0]})


@dataclass(frozen=True)
class ProposedRollback:
    """A recent rollback proposal as the dashboard lists it, with its evidence."""

    chunk_version: str
    target_version: str
    proposed_at: datetime
    url: str | None
    number: int | None
    evidence: dict[str, Any] = field(default_factory=dict)


def rollback_proposals_since(
    conn: psycopg.Connection[Any], since: datetime, registries: Sequence[str]
) -> list[ProposedRollback]:
    """Newest first; none when the database predates rollback_proposals."""
    if not exists(conn, "rollback_proposals"):
        return []
    rows = conn.execute(sql.SQL(
        "SELECT chunk_version, target_version, proposed_at, pr_url, pr_number, evidence "
        "FROM {} WHERE proposed_at >= %s AND registry = ANY(%s) ORDER BY proposed_at DESC"
    ).format(ROLLBACK_PROPOSALS), (since, list(registries))).fetchall()
    return [ProposedRollback(*row) for row in rows]


# ---------------------------------------------------------------------------------------------
# notifications: incidents, the messages about them, and their delivery


@dataclass(frozen=True)
class Notification:
    """One incident at one target, and the message of it that is due next."""

    id: int
    kind: str
    subject: str
    fingerprint: str
    target: str
    phase: str
    """`opened` or `resolved`: which message is due."""
    title: str
    body: str
    attempts: int
    at: datetime
    """When the incident opened (or resolved, for a resolution message)."""
    delivered_to: tuple[str, ...] = ()
    """Email recipients who already got this message (an earlier attempt reached only some)."""


def open_incidents(
    conn: psycopg.Connection[Any], registry: str, kinds: Sequence[str]
) -> list[tuple[str, str, str]]:
    """(kind, subject, fingerprint) of every incident of `registry` and `kinds` not resolved
    yet."""
    rows = conn.execute(sql.SQL(
        "SELECT DISTINCT kind, subject, fingerprint FROM {} WHERE resolved_at IS NULL "
        "AND registry = %s AND kind = ANY(%s)").format(NOTIFICATIONS),
        (registry, list(kinds))).fetchall()
    return [(str(k), str(s), str(f)) for k, s, f in rows]


def incident_known(conn: psycopg.Connection[Any], registry: str, kind: str, subject: str,
                   fingerprint: str) -> bool:
    """Whether `registry` ever recorded this incident (a one-shot event is told once, ever)."""
    row = conn.execute(sql.SQL(
        "SELECT EXISTS (SELECT FROM {} WHERE registry = %s AND kind = %s AND subject = %s "
        "AND fingerprint = %s)").format(NOTIFICATIONS),
        (registry, kind, subject, fingerprint)).fetchone()
    return bool(row and row[0])


def open_incident(
    conn: psycopg.Connection[Any], registry: str, kind: str, subject: str, fingerprint: str,
    targets: Sequence[str], title: str, body: str, now: datetime, *, one_shot: bool,
) -> None:
    """One pending message per target; a one-shot event is resolved as it opens (nothing to
    resolve later)."""
    for target in targets:
        conn.execute(sql.SQL(
            "INSERT INTO {} (kind, subject, fingerprint, target, title, body, opened_at, "
            "open_status, resolved_at, next_attempt_at, registry) VALUES (%s, %s, %s, %s, %s, "
            "%s, %s, 'pending', %s, %s, %s) ON CONFLICT DO NOTHING").format(NOTIFICATIONS),
            (kind, subject, fingerprint, target, title, body, now, now if one_shot else None,
             now, registry))


def resolve_incident(
    conn: psycopg.Connection[Any], registry: str, kind: str, subject: str, fingerprint: str,
    body: str, now: datetime,
) -> None:
    """Mark an incident resolved and its resolution message pending (abandoned with the
    opening message it would follow, when that one could never be sent)."""
    conn.execute(sql.SQL(
        "UPDATE {} SET resolved_at = %(now)s, resolve_body = %(body)s, "
        "resolve_status = CASE WHEN open_status = 'abandoned' THEN 'abandoned' ELSE 'pending' "
        "END, attempts = CASE WHEN open_status = 'sent' THEN 0 ELSE attempts END, "
        "next_attempt_at = CASE WHEN open_status = 'sent' THEN %(now)s ELSE next_attempt_at END "
        "WHERE registry = %(registry)s AND kind = %(kind)s AND subject = %(subject)s "
        "AND fingerprint = %(fp)s AND resolved_at IS NULL").format(NOTIFICATIONS),
        {"now": now, "body": body, "kind": kind, "subject": subject, "fp": fingerprint,
         "registry": registry})


def claim_due_notifications(
    conn: psycopg.Connection[Any], registry: str, now: datetime, lease_until: datetime
) -> list[Notification]:
    """Every message of `registry` due at `now` (its targets are named in its own settings),
    claimed until `lease_until` (another process skips them meanwhile), oldest first."""
    rows = conn.execute(sql.SQL(
        "UPDATE {n} SET next_attempt_at = %(lease)s WHERE id IN (SELECT id FROM {n} "
        "WHERE (open_status = 'pending' OR (open_status = 'sent' AND resolve_status = 'pending'))"
        " AND next_attempt_at <= %(now)s AND registry = %(registry)s ORDER BY id "
        "FOR UPDATE SKIP LOCKED) "
        "RETURNING id, kind, subject, fingerprint, target, "
        "CASE WHEN open_status = 'pending' THEN 'opened' ELSE 'resolved' END, title, "
        "CASE WHEN open_status = 'pending' THEN body ELSE resolve_body END, attempts, "
        "CASE WHEN open_status = 'pending' THEN opened_at ELSE resolved_at END, delivered_to"
    ).format(n=NOTIFICATIONS), {"now": now, "lease": lease_until, "registry": registry}
    ).fetchall()
    found = [Notification(id_, kind, subject, fp, target, phase, title, body, attempts, at,
                          tuple(delivered))
             for id_, kind, subject, fp, target, phase, title, body, attempts, at, delivered
             in rows]
    return sorted(found, key=lambda n: n.id)


def record_delivery(
    conn: psycopg.Connection[Any], notification: Notification, now: datetime, *,
    error: str | None, retry_at: datetime | None, delivered: Sequence[str] = (),
) -> None:
    """The outcome of one attempt: sent (the recipients list starts over for the next
    message); or failed, retried at `retry_at` (None: abandoned), `delivered` (the recipients
    who got it all the same) added to those a retry skips."""
    params = {"now": now, "error": error, "retry": retry_at, "id": notification.id,
              "delivered": list(delivered)}
    status, sent_at = _PHASE_COLUMNS[notification.phase == "opened"]
    if error is None:
        statement = (
            "UPDATE {n} SET {status} = 'sent', {sent_at} = %(now)s, attempts = 0, "
            "last_error = NULL, last_attempt_at = %(now)s, delivered_to = '{{}}' "
            "WHERE id = %(id)s")
    else:
        statement = (
            "UPDATE {n} SET {status} = CASE WHEN %(retry)s::timestamptz IS NULL THEN "
            "'abandoned' ELSE {status} END, attempts = attempts + 1, last_error = %(error)s, "
            "next_attempt_at = coalesce(%(retry)s, next_attempt_at), last_attempt_at = %(now)s, "
            "delivered_to = delivered_to || %(delivered)s::text[] WHERE id = %(id)s")
    conn.execute(sql.SQL(statement).format(n=NOTIFICATIONS, status=status, sent_at=sent_at),
                 params)


_PHASE_COLUMNS = {True: (sql.Identifier("open_status"), sql.Identifier("open_sent_at")),
                  False: (sql.Identifier("resolve_status"), sql.Identifier("resolve_sent_at"))}
"""(status, sent_at) columns of a notification's opening (True) or resolution message: constant
names, so the statement may carry parameters (psycopg reads a `%` in a composed name as one)."""


# ---------------------------------------------------------------------------------------------
# served_state and served_tables: what applications read


def publish_served_state(
    conn: psycopg.Connection[Any], registry: str, environment: str, state: Mapping[str, Any],
    commit: str | None, tables: Sequence[tuple[str, str]], former: Sequence[str] = (),
) -> tuple[int, bool]:
    """Store what `environment` serves; the version is bumped (and listeners notified) only
    when it changed. `tables` are the tables it serves now: each one stops being served (its
    served_until is set) when it leaves. `former`: the registry's other identities (its
    legacy one, once it has a name): their served state for `environment` is removed and
    their tables stop being served, so one registry never serves an environment twice (a
    router without registry= refuses that) nor keeps a table served forever under a name it
    no longer publishes. (version, changed); run it in one transaction."""
    schemas = [s for s, _ in tables]
    names = [t for _, t in tables]
    # One statement (one round trip): the data-modifying parts touch disjoint rows (former
    # identities are never `registry`), and the version falls back to the row as it was when
    # nothing changed.
    row = conn.execute(sql.SQL(
        "WITH published AS (INSERT INTO {state} AS s (registry, environment, state, git_commit) "
        "VALUES (%(registry)s, %(environment)s, %(state)s, %(commit)s) "
        "ON CONFLICT (registry, environment) DO UPDATE SET version = s.version + 1, "
        "state = EXCLUDED.state, git_commit = EXCLUDED.git_commit, updated_at = now() "
        "WHERE s.state IS DISTINCT FROM EXCLUDED.state RETURNING version), "
        "serving AS (INSERT INTO {tables} (registry, environment, schema_name, table_name) "
        "SELECT %(registry)s, %(environment)s, s, t "
        "FROM unnest(%(schemas)s::text[], %(names)s::text[]) AS u(s, t) "
        "ON CONFLICT (registry, environment, schema_name, table_name) "
        "DO UPDATE SET served_until = NULL), "
        "stopped AS (UPDATE {tables} SET served_until = now() WHERE registry = %(registry)s "
        "AND environment = %(environment)s AND served_until IS NULL "
        "AND (schema_name, table_name) NOT IN "
        "(SELECT s, t FROM unnest(%(schemas)s::text[], %(names)s::text[]) AS u(s, t))), "
        "forgotten AS (DELETE FROM {state} WHERE registry = ANY(%(former)s::text[]) "
        "AND environment = %(environment)s AND registry <> %(registry)s), "
        "closed AS (UPDATE {tables} SET served_until = now() "
        "WHERE registry = ANY(%(former)s::text[]) AND registry <> %(registry)s "
        "AND environment = %(environment)s AND served_until IS NULL) "
        "SELECT (SELECT version FROM published), "
        "(SELECT version FROM {state} WHERE registry = %(registry)s "
        "AND environment = %(environment)s), "
        "(SELECT pg_notify(%(channel)s, %(registry)s || '/' || %(environment)s) "
        "FROM published)").format(state=SERVED_STATE, tables=SERVED_TABLES),
        {"registry": registry, "environment": environment, "state": Jsonb(dict(state)),
         "commit": commit, "schemas": schemas, "names": names, "channel": SERVED_CHANNEL,
         "former": list(former)},
    ).fetchone()
    assert row is not None
    changed = row[0] is not None
    version = row[0] if changed else row[1]
    assert version is not None
    return int(version), changed


READ_SERVED = sql.SQL(
    "SELECT registry, version, CASE WHEN version = %s AND registry = %s THEN NULL ELSE state END "
    "FROM {} WHERE environment = %s AND (%s::text IS NULL OR registry = %s) LIMIT 2"
).format(SERVED_STATE)
"""The one query of a served-state refresh: the state only when its version moved, or when
another registry serves now (a registry that took a name publishes under it from version 1:
its version may equal the one known of its former identity)."""


def served_tables_until(
    conn: psycopg.Connection[Any], registries: Sequence[str]
) -> dict[tuple[str, str], datetime | None]:
    """(schema, table) -> when it stopped being served (None: served now), for `registries`;
    empty when the database predates served_tables."""
    if not exists(conn, "served_tables"):
        return {}
    rows = conn.execute(sql.SQL(
        "SELECT schema_name, table_name, bool_or(served_until IS NULL), max(served_until) "
        "FROM {} WHERE registry = ANY(%s) GROUP BY 1, 2").format(SERVED_TABLES),
        (list(registries),)).fetchall()
    return {(str(s), str(t)): (None if now else until) for s, t, now, until in rows}


def served_within(
    conn: psycopg.Connection[Any], schema: str, table_name: str, registries: Sequence[str],
    seconds: float, now: datetime,
) -> bool:
    """Whether the table is served, or stopped being served less than `seconds` before
    `now`."""
    if not exists(conn, "served_tables"):
        return False
    row = conn.execute(sql.SQL(
        "SELECT EXISTS (SELECT 1 FROM {} WHERE schema_name = %s AND table_name = %s "
        "AND registry = ANY(%s) AND (served_until IS NULL OR served_until > "
        "%s - make_interval(secs => %s)))").format(SERVED_TABLES),
        (schema, table_name, list(registries), now, seconds)).fetchone()
    return bool(row and row[0])


# ---------------------------------------------------------------------------------------------
# experiment_outcomes and experiment_stops


INSERT_OUTCOME = sql.SQL(
    "INSERT INTO {} (registry, environment, experiment, run, arm, chunk_version, request_key, "
    "metric, success, details) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)").format(OUTCOMES)


def record_outcome(
    conn: psycopg.Connection[Any], registry: str, environment: str, experiment: str, run: str,
    arm: str, chunk_version: str, key: str, success: bool, metric: str = "success",
    details: Mapping[str, Any] | None = None,
) -> None:
    """One outcome of `run` (`ExperimentConfig.run`: a name restarted is another run)."""
    conn.execute(INSERT_OUTCOME, (registry, environment, experiment, run, arm, chunk_version,
                                  key, metric, success,
                                  Jsonb(dict(details)) if details else None))


def newest_run(
    conn: psycopg.Connection[Any], registry: str, environment: str, experiment: str
) -> tuple[bool, str | None]:
    """(found, run) of the newest outcome of the experiment named `experiment` (run None:
    recorded before outcomes had runs)."""
    row = conn.execute(sql.SQL(
        "SELECT run FROM {} WHERE registry = %s AND environment = %s AND experiment = %s "
        "ORDER BY id DESC LIMIT 1").format(OUTCOMES),
        (registry, environment, experiment)).fetchone()
    return (row is not None, None if row is None else row[0])


def outcome_counts(
    conn: psycopg.Connection[Any], registry: str, environment: str, experiment: str,
    run: str | None, versions: Mapping[str, str], metric: str = "success",
) -> dict[str, tuple[int, int]]:
    """arm -> (outcomes, successes) of one run's metric, counting only the outcomes served by
    the arm's version in `versions`: a control promoted mid-run starts its own count."""
    rows = conn.execute(sql.SQL(
        "SELECT arm, count(*), count(*) FILTER (WHERE success) FROM {} WHERE registry = %s "
        "AND environment = %s AND experiment = %s AND run IS NOT DISTINCT FROM %s "
        "AND metric = %s AND ((arm = 'control' AND chunk_version = %s) "
        "OR (arm = 'candidate' AND chunk_version = %s)) GROUP BY arm").format(OUTCOMES),
        (registry, environment, experiment, run, metric, versions.get("control"),
         versions.get("candidate"))).fetchall()
    return {str(a): (int(n), int(k)) for a, n, k in rows}


def outcome_versions(
    conn: psycopg.Connection[Any], registry: str, environment: str, experiment: str,
    run: str | None,
) -> dict[str, str]:
    """arm -> the chunk_version the run's newest outcome in it was served by."""
    rows = conn.execute(sql.SQL(
        "SELECT DISTINCT ON (arm) arm, chunk_version FROM {} WHERE registry = %s "
        "AND environment = %s AND experiment = %s AND run IS NOT DISTINCT FROM %s "
        "ORDER BY arm, id DESC").format(OUTCOMES),
        (registry, environment, experiment, run)).fetchall()
    return {str(a): str(v) for a, v in rows}


@dataclass(frozen=True)
class ExperimentStop:
    """The pull request the promotion watch opened (or adopted) to end an experiment."""

    experiment: str
    candidate: str
    proposed_at: datetime
    branch: str | None
    commit: str | None
    number: int | None
    url: str | None
    adopted: bool

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "proposed_at": rfc3339(self.proposed_at)}


def experiment_stop(
    conn: psycopg.Connection[Any], registry: str, environment: str, experiment: str, run: str
) -> ExperimentStop | None:
    """The stop proposed for this run of `experiment` (an earlier run's stop is not this
    one's: a name started again is watched afresh)."""
    return _one(conn, sql.SQL(
        "SELECT experiment, candidate, proposed_at, branch, git_commit, pr_number, pr_url, "
        "adopted FROM {} WHERE registry = %s AND environment = %s AND experiment = %s "
        "AND run = %s").format(EXPERIMENT_STOPS), (registry, environment, experiment, run),
        ExperimentStop)


def record_experiment_stop(
    conn: psycopg.Connection[Any], registry: str, environment: str, run: str,
    stop: ExperimentStop, evidence: Mapping[str, Any],
) -> ExperimentStop:
    """Once per experiment run: when one is recorded already, that one is returned."""
    row = conn.execute(sql.SQL(
        "INSERT INTO {} (registry, environment, experiment, run, candidate, branch, git_commit, "
        "pr_number, pr_url, adopted, evidence) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
        "ON CONFLICT (registry, environment, experiment, run) DO NOTHING RETURNING proposed_at"
    ).format(EXPERIMENT_STOPS), (
        registry, environment, stop.experiment, run, stop.candidate, stop.branch, stop.commit,
        stop.number, stop.url, stop.adopted, Jsonb(dict(evidence)))).fetchone()
    if row is None:
        existing = experiment_stop(conn, registry, environment, stop.experiment, run)
        assert existing is not None
        return existing
    return ExperimentStop(**{**asdict(stop), "proposed_at": row[0]})
# tune_runs and tune_trials: what `registry tune` tried, measured and chose

TUNE_INTERRUPTED = ("interrupted: the tune run stopped before it recorded an outcome (process "
                    "killed or database connection lost); its scratch schema was swept")


def start_tune_run(
    conn: psycopg.Connection[Any], token: str, *, registry: str, source: str, cases_file: str,
    cases: int,
    base_version: str | None, space: Mapping[str, Any], objectives: Sequence[str], prefer: str,
    scratch_schema: str, details: Mapping[str, Any],
) -> int:
    row = conn.execute(
        sql.SQL("INSERT INTO {} (token, registry, status, source, cases_file, cases, "
                "base_version, space, objectives, prefer, scratch_schema, details) VALUES (%s, "
                "%s, 'running', %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id").format(
            TUNE_RUNS),
        (token, registry, source, cases_file, cases, base_version, Jsonb(dict(space)),
         Jsonb(list(objectives)), prefer, scratch_schema, Jsonb(dict(details))),
    ).fetchone()
    assert row is not None
    return int(row[0])


def record_tune_trial(
    conn: psycopg.Connection[Any], run_id: int, number: int, *, state: str,
    params: Mapping[str, Any], metrics: Mapping[str, float], seconds: float,
    details: Mapping[str, Any],
) -> None:
    """One finished trial, recorded as soon as it ends (a killed run keeps what it measured)."""
    conn.execute(
        sql.SQL("INSERT INTO {} (run_id, number, state, params, metrics, seconds, details) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s)").format(TUNE_TRIALS),
        (run_id, number, state, Jsonb(dict(params)), Jsonb(dict(metrics)), seconds,
         Jsonb(dict(details))),
    )


def finish_tune_run(
    conn: psycopg.Connection[Any], run_id: int, status: str, *, best_trial: int | None = None,
    pareto: Sequence[int] = (), error: str | None = None, details: Mapping[str, Any] | None = None,
) -> None:
    """The run's outcome, and which of its trials are on the Pareto front."""
    conn.execute(
        sql.SQL("UPDATE {} SET pareto = (number = ANY(%s)) WHERE run_id = %s").format(
            TUNE_TRIALS), (list(pareto), run_id))
    conn.execute(
        sql.SQL("UPDATE {} SET status = %s, finished_at = now(), best_trial = %s, error = %s, "
                "details = details || %s WHERE id = %s").format(TUNE_RUNS),
        (status, best_trial, error, Jsonb(dict(details or {})), run_id))


def set_tune_locked(conn: psycopg.Connection[Any], run_id: int, locked: Mapping[str, Any]) -> None:
    """The lock `--lock-best` opened for the run's chosen trial."""
    conn.execute(sql.SQL("UPDATE {} SET locked = %s WHERE id = %s").format(TUNE_RUNS),
                 (Jsonb(dict(locked)), run_id))


def running_tune_runs(conn: psycopg.Connection[Any]) -> list[tuple[int, str]]:
    """(id, token) of every run recorded as running: alive, or killed before its outcome."""
    rows = conn.execute(sql.SQL("SELECT id, token FROM {} WHERE status = 'running' "
                                "ORDER BY id").format(TUNE_RUNS)).fetchall()
    return [(int(r[0]), str(r[1])) for r in rows]


def mark_tune_run_interrupted(conn: psycopg.Connection[Any], run_id: int) -> None:
    conn.execute(sql.SQL("UPDATE {} SET status = 'failed', finished_at = now(), error = %s "
                         "WHERE id = %s AND status = 'running'").format(TUNE_RUNS),
                 (TUNE_INTERRUPTED, run_id))


@dataclass(frozen=True)
class TuneTrialRecord:
    number: int
    state: str
    params: dict[str, Any]
    metrics: dict[str, float]
    pareto: bool
    seconds: float


@dataclass(frozen=True)
class TuneRunRecord:
    """The latest finished tuning run, with its trials (what the dashboard charts)."""

    run_id: int
    started_at: datetime
    finished_at: datetime | None
    status: str
    objectives: list[str]
    prefer: str
    best_trial: int | None
    locked: dict[str, Any] | None
    trials: list[TuneTrialRecord]


def latest_tune_run(conn: psycopg.Connection[Any],
                    registries: Sequence[str]) -> TuneRunRecord | None:
    """The newest run of `registries` that finished with trials (succeeded), None when there
    is none or the database predates tuning."""
    if not exists(conn, "tune_runs"):
        return None
    row = conn.execute(sql.SQL(
        "SELECT id, started_at, finished_at, status, objectives, prefer, best_trial, locked "
        "FROM {} WHERE status = 'succeeded' AND registry = ANY(%s) ORDER BY id DESC LIMIT 1"
    ).format(TUNE_RUNS), (list(registries),)).fetchone()
    if row is None:
        return None
    trials = [TuneTrialRecord(int(t[0]), str(t[1]), dict(t[2]), dict(t[3]), bool(t[4]),
                              float(t[5]))
              for t in conn.execute(sql.SQL(
                  "SELECT number, state, params, metrics, pareto, seconds FROM {} "
                  "WHERE run_id = %s ORDER BY number").format(TUNE_TRIALS), (row[0],))]
    return TuneRunRecord(int(row[0]), row[1], row[2], str(row[3]), list(row[4]), str(row[5]),
                         row[6], dict(row[7]) if row[7] else None, trials)


# embedding_cache: vectors by (fingerprint, normalized, sha256 of the text embedded)


def cached_embeddings(
    conn: psycopg.Connection[Any], fingerprint: str, normalized: bool, keys: Sequence[bytes],
    dimension: int,
) -> dict[bytes, Any]:
    """key -> float32 vector (numpy) for the `keys` the cache holds; vectors of another
    dimension (a damaged row) are left out, so they are embedded again."""
    import numpy as np

    if not keys:
        return {}
    rows = conn.execute(
        sql.SQL("SELECT text_sha256, vector FROM {} WHERE fingerprint = %s AND normalized = %s "
                "AND text_sha256 = ANY(%s)").format(EMBEDDING_CACHE),
        (fingerprint, normalized, list(keys))).fetchall()
    found: dict[bytes, Any] = {}
    for key, raw in rows:
        if len(raw) == 4 * dimension:
            found[bytes(key)] = np.frombuffer(bytes(raw), dtype="<f4").astype(np.float32)
    return found


def store_embeddings(
    conn: psycopg.Connection[Any], fingerprint: str, normalized: bool, keys: Sequence[bytes],
    vectors: Any,
) -> None:
    """Add vectors to the cache in one statement; a key already there (another ingest got it
    first) is kept: content-addressed, both are the same vector."""
    import numpy as np

    if not keys:
        return
    blobs = [np.asarray(row, dtype="<f4").tobytes() for row in vectors]
    conn.execute(
        sql.SQL("INSERT INTO {} (fingerprint, normalized, text_sha256, vector) "
                "SELECT %s, %s, k, v FROM unnest(%s::bytea[], %s::bytea[]) AS t(k, v) "
                "ON CONFLICT DO NOTHING").format(EMBEDDING_CACHE),
        (fingerprint, normalized, list(keys), blobs))
