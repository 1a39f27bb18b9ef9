"""A reconcile run: read and validate the committed state, take the reconcile lock, read the
actual state, plan, apply, and record the run; plus `plan` (read only), `offline_plan` (no
database) and the watch loop that reconciles every interval, like Flux."""

from __future__ import annotations

import getpass
import json
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import psycopg
from psycopg import sql

from registry import faults
from registry.config import PRODUCTION_ENVIRONMENT, ProductionConfig, duration_text
from registry.database import bookkeeping
from registry.database.connection import (
    RECONCILE_LOCK_KEY,
    connect,
    database_error,
    timeout_setting,
)
from registry.environments import environment_names, path_verdict, select
from registry.errors import (
    DatabaseUnavailable,
    GitError,
    ReconcileBusy,
    ReconcileFailed,
    Refused,
    RegistryError,
    invalid,
)
from registry.notify.dispatch import notify
from registry.notify.events import reconcile_check
from registry.reconciler.actual import (
    ActualState,
    read_actual,
    row_counts,
    shape_drift,
    synthetic_actual,
)
from registry.reconciler.applier import (
    DEFAULT_LOCK_TIMEOUT_MS,
    SWAP_ATTEMPTS,
    SWAP_DEADLINE_S,
    ActionResult,
    Applier,
)
from registry.reconciler.planner import (
    Finding,
    Plan,
    action_dict,
    make_plan,
    swap_target,
    utc_text,
)
from registry.reconciler.served import Served, materialize, output_state
from registry.repository import trust
from registry.repository.git import Git
from registry.repository.history import forced_promotion, read_history
from registry.repository.state import RegistryState, committed_state, read_state
from registry.repository.validation import immutability_problems

if TYPE_CHECKING:
    import threading

log = logging.getLogger("registry.reconciler.run")


Outcome = Literal["noop", "applied", "refused", "failed"]


@dataclass
class RunResult:
    """One reconcile run: the plan, what each action did, and how the run ended."""

    plan: Plan
    results: list[ActionResult]
    outcome: Outcome
    run_id: int | None = None
    served: Served | None = None
    """The served state materialized after the run (what applications read)."""

    @property
    def failed(self) -> list[ActionResult]:
        return [r for r in self.results if r.outcome == "failed"]

    def raise_for_outcome(self) -> None:
        """Turn a failed or refused run into its RegistryError (after the CLI rendered it)."""
        if self.failed:
            first = self.failed[0]
            more = f"; {len(self.failed) - 1} more failed" if len(self.failed) > 1 else ""
            raise ReconcileFailed(f"{first.action.describe()} failed: {first.error}{more}",
                                  fix="fix the cause and rerun `registry reconcile`")
        pending = [r for r in self.results if r.outcome == "pending"]
        if pending:
            raise Refused(f"{pending[0].action.describe()}: {pending[0].error}",
                          fix="rerun `registry reconcile` when the long readers are done")
        if self.outcome == "refused":
            first_finding = self.plan.blocking[0]
            raise Refused(first_finding.message, fix=first_finding.fix)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.plan.to_dict(),
            "run_id": self.run_id,
            "outcome": self.outcome,
            "results": [
                {"action": type(r.action).__name__, "table": f"{r.action.schema}.{r.action.table}",
                 "outcome": r.outcome, "error": r.error, "attempts": r.attempts,
                 "seconds": round(r.seconds, 4)}
                for r in self.results
            ],
            "served": {"revision": self.served.version, "changed": self.served.changed,
                       "state": output_state(self.served.state), "notes": self.served.notes}
            if self.served else None,
        }


def acquire_lock(dsn: str, *, wait: float = 0.0) -> psycopg.Connection[Any]:
    """A connection holding the reconcile advisory lock, or ReconcileBusy naming the holder.

    The lock lives as long as the connection, and the run does its work on that same
    connection: if the server drops it, the lock and the work stop together, so a second
    reconciler can never take the lock while the first is still applying. With `wait` > 0 the
    server queues us behind the holder for at most `wait` seconds (a lock_timeout on
    pg_advisory_lock: no polling, first come first served) before ReconcileBusy.
    """
    conn = connect(dsn, purpose="reconcile")
    try:
        if _take_lock(conn, wait):
            return conn
        holder = conn.execute(
            "SELECT a.pid, a.application_name, a.client_addr::text, a.backend_start "
            "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.database = "
            "(SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND l.classid = ((%(key)s >> 32) & 4294967295)::bigint::oid "
            "AND l.objid = (%(key)s & 4294967295)::bigint::oid AND l.objsubid = 1",
            {"key": RECONCILE_LOCK_KEY},
        ).fetchone()
    except psycopg.Error as err:
        conn.close()
        raise database_error(err, dsn, "taking the reconcile lock") from None
    except BaseException:
        conn.close()
        raise
    conn.close()
    if holder is None:
        who = "another session (it may have just finished)"
    else:
        pid, app, addr, since = holder
        where = f" from {addr}" if addr else ""
        who = (f"backend pid {pid} ({app or 'no application_name'}{where}, "
               f"connected {utc_text(since)})")
    waited = f" (waited {wait:g}s)" if wait > 0 else ""
    raise ReconcileBusy(f"another reconcile is running: the lock is held by {who}{waited}",
                        fix="wait for it to finish, then rerun, or pass --wait-lock SECONDS")


def _take_lock(conn: psycopg.Connection[Any], wait: float) -> bool:
    if wait <= 0:
        got = conn.execute("SELECT pg_try_advisory_lock(%s)", (RECONCILE_LOCK_KEY,)).fetchone()
        return bool(got and got[0])
    conn.execute(sql.SQL("SET lock_timeout = {}").format(timeout_setting(wait * 1000)))
    try:
        conn.execute("SELECT pg_advisory_lock(%s)", (RECONCILE_LOCK_KEY,))
        return True
    except psycopg.errors.LockNotAvailable:
        return False
    finally:
        conn.execute("RESET lock_timeout")


def _record_start(
    conn: psycopg.Connection[Any], plan: Plan, actor: str, registry: str
) -> int:
    return bookkeeping.start_reconcile_run(
        conn, plan.ref, plan.commit, json.dumps([action_dict(a) for a in plan.actions]), actor,
        registry)


def _record_finish(
    conn: psycopg.Connection[Any], run_id: int | None, result: RunResult, actor: str,
    registry: str,
) -> int:
    """Finish the run row (one statement; a no-op run is inserted already finished)."""
    done = [action_dict(r.action) | {"result": r.outcome, "error": r.error, "attempts": r.attempts}
            for r in result.results]
    errors = [f"{r.action.describe()}: {r.error}" for r in result.results
              if r.outcome in ("failed", "pending")]
    errors += [f.render() for f in result.plan.blocking]
    plan = result.plan
    return bookkeeping.finish_reconcile_run(
        conn, run_id, ref=plan.ref, commit=plan.commit, plan=json.dumps(done),
        outcome=result.outcome, error="; ".join(errors) or None, actor=actor, registry=registry)


def _actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()} pid {os.getpid()}"


def desired_state(
    git: Git, ref: str | None = None, *, fetch: bool = True, signers: Path | None = None,
    environment: str | None = None,
) -> RegistryState:
    """The validated desired state: a committed ref, never the working tree, with no locked
    config edited after its tag, no moved tag and no tag off main (`validate`'s immutability
    errors). With `signers` (an allowed-signers file) the ref's signature
    must verify too. It acts for `environment` (default: production)."""
    state = select(committed_state(git, ref, fetch=fetch), environment)
    state.require_valid()
    tampered = immutability_problems(git, state)
    if tampered:
        raise invalid(tampered)
    if signers is not None:
        assert state.commit is not None
        trust.verify(git, state.ref, state.commit, signers)
    return state


def _still_desired(
    git: Git, state: RegistryState, ref: str | None, fetch: bool, signers: Path | None
) -> RegistryState:
    """Under the lock: the ref may have moved while we connected or waited (another reconciler
    may have applied a newer commit meanwhile); never apply a stale commit."""
    if git.resolve(git.desired_ref(ref, fetch=fetch)) == state.commit:
        return state
    return desired_state(git, ref, fetch=False, signers=signers,
                         environment=state.environment)


def plan(
    git: Git, state: RegistryState, conn: psycopg.Connection[Any], *, target: str,
    force: bool = False,
) -> Plan:
    """What `reconcile` would do now (reads only; creates nothing, not even bookkeeping).
    `target` names the database in the plan (its redacted DSN)."""
    return plan_honouring_force(git, state, _read_for_plan(conn, state), target=target,
                                force=force)


def plan_honouring_force(
    git: Git, state: RegistryState, actual: ActualState, *, target: str,
    force: bool = False, allow_empty: bool = False,
) -> Plan:
    """The plan; when the promotion gate holds production's swap, and the merged promotion
    was forced (`registry promote --force`, recorded as a commit trailer), the plan for that
    promotion without the gate. History is read only when the gate holds."""
    the_plan = make_plan(state, actual, target=target, force=force, allow_empty=allow_empty)
    production = state.settings.production
    if production is None or not any(f.kind == "gate" for f in the_plan.blocking):
        return the_plan
    if forced_promotion(git, state.commit or state.ref, production, state.environment) is None:
        return the_plan
    return make_plan(state, actual, target=target, force=force, allow_empty=allow_empty,
                     forced_promotion=production)


def _read_for_plan(conn: psycopg.Connection[Any], state: RegistryState) -> ActualState:
    """The actual state, with a has-rows probe of the swap target when a swap may be needed."""
    actual = read_actual(conn, state.settings)
    target = swap_target(state)
    production = actual.production
    view = actual.relations.get(state.settings.base_name)
    settled = (production is not None and production.table_name == target and view is not None
               and view.reads == ((state.settings.schema, target),))
    if target and not settled and target in actual.relations:
        actual.rows.update(row_counts(conn, state.settings.schema, [target], exact=False))
    settings = state.settings
    desired = {settings.table_name(v): c for v, c in state.configs.items()
               if settings.table_name(v) in actual.relations}
    actual.shape_drift = shape_drift(conn, settings.schema, desired, settings.identity,
                                     actual.vector.type_schema)
    if target and not settled and settings.promotion is not None and settings.production:
        row = next((m for m in actual.managed if m.chunk_version == settings.production
                    and m.status != "dropped" and settings.owns(m.registry)), None)
        actual.path_gate = path_verdict(
            state, settings.production, conn=conn,
            served_before=row is not None and row.promoted_at is not None)
    return actual


def reconcile(
    git: Git,
    state: RegistryState,
    conn: psycopg.Connection[Any],
    *,
    target: str,
    ref: str | None = None,
    fetch: bool = True,
    signers: Path | None = None,
    force: bool = False,
    now: datetime | None = None,
    lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS,
    attempts: int = SWAP_ATTEMPTS,
    swap_deadline: float = SWAP_DEADLINE_S,
) -> RunResult:
    """Under the reconcile lock `conn` holds (`acquire_lock`): recheck the desired state,
    read the actual state, plan, apply, record.

    `state` was read and validated (and its signature verified with `signers`) BEFORE any
    connection: an invalid or untrusted commit runs no SQL at all. `now` overrides the
    database clock for the grace period (tests, what-if runs).
    """
    faults.point("reconcile", "locked")
    state = _still_desired(git, state, ref, fetch, signers)
    bookkeeping.ensure_schema(conn)
    actual = _read_for_plan(conn, state)
    if now is not None:
        actual.now = now
    the_plan = plan_honouring_force(git, state, actual, target=target, force=force)
    foreign = next((f for f in the_plan.blocking if f.kind == "foreign"), None)
    if foreign is not None:
        raise Refused(foreign.message, fix=foreign.fix)
    _adopt_legacy(conn, state)
    applier = Applier(conn, state.settings, state.commit, actual.now, force=force,
                      schema_exists=actual.schema_exists, lock_timeout_ms=lock_timeout_ms,
                      attempts=attempts, swap_deadline=swap_deadline)
    result = _apply_and_record(conn, applier, the_plan)
    result.served = materialize(conn, state, now or actual.now)
    _notify(conn, state, result, now)
    return result


def _adopt_legacy(conn: psycopg.Connection[Any], state: RegistryState) -> None:
    """A named registry takes over, under its name, the rows it wrote before it had one (their
    configs are in its repository): after a retirement their versions alone could not tell
    them from an unnamed registry's on the same tables."""
    settings = state.settings
    if settings.registry is None:
        return
    tables = [(settings.table_name(v), v, c.config_hash) for v, c in state.configs.items()]
    with conn.transaction():
        adopted = bookkeeping.adopt_tables(conn, settings.registry, settings.legacy_identity,
                                           settings.schema, tables)
    if adopted:
        log.info("%d table(s) recorded under %s are now recorded under %s", adopted,
                 settings.legacy_identity, settings.registry)


def _apply_and_record(
    conn: psycopg.Connection[Any], applier: Applier, the_plan: Plan
) -> RunResult:
    """Record the run as `running`, apply, record the outcome (a no-op run: one row, finished)."""
    actor = _actor()
    registry = applier.settings.identity
    run_id = _record_start(conn, the_plan, actor, registry) if the_plan.actions else None
    faults.point("reconcile", "recorded")
    results = applier.apply(the_plan)
    outcome: Outcome
    if any(r.outcome == "failed" for r in results):
        outcome = "failed"
    elif the_plan.blocking or any(r.outcome == "pending" for r in results):
        outcome = "refused"
    else:
        outcome = "applied" if results else "noop"
    result = RunResult(the_plan, results, outcome, run_id)
    faults.point("reconcile", "finishing")
    result.run_id = _record_finish(conn, run_id, result, actor, registry)
    faults.point("reconcile", "finished")
    return result


def _notify(conn: psycopg.Connection[Any], state: RegistryState, result: RunResult,
            now: datetime | None) -> None:
    """Tell the configured targets of a failed or blocked run, drift, a promotion applied."""
    settings = state.settings
    notify(conn, settings.notifications,
           reconcile_check(result, f"{settings.schema}.{settings.base_name}"), now=now,
           registry=settings.identity)


def offline_plan(git: Git, base: str, head: str, environment: str | None = None) -> Plan:
    """What merging `head` into `base` would make the reconciler of `environment` (default:
    production) do, without a database: the plan against a database exactly reconciled to
    `base` (for PR review in CI), with the tables `base` retired still in their grace period,
    and what the policy changes mean. Blocking findings (a refusal after the merge) make the
    PR check fail. Of the promotion path it checks what the merged tree holds (the version is
    the one the source environment serves); the soak is the reconciler's, online. A promotion
    forced on `head` (its `Promotion-Forced` trailer) is planned as the reconciler will apply
    it after the merge (`plan_honouring_force`): the PR check must not fail what the merge
    does."""
    head_state = read_state(git, head)
    head_state.require_valid()
    head_state = select(head_state, environment)
    base_state = select(read_state(git, base), environment) \
        if environment in (None, PRODUCTION_ENVIRONMENT) else _base_for(git, base, head_state)
    actual = synthetic_actual(base_state, retired=retired_on(git, base, base_state))
    _offline_path(git, base, base_state, head_state, actual)
    the_plan = plan_honouring_force(git, head_state, actual,
                                    target=f"a database reconciled to {base}")
    the_plan.findings[:0] = policy_findings(base_state.settings, head_state.settings, base)
    wanted = head_state.settings.production
    if wanted and wanted != base_state.settings.production \
            and not any(f.kind in ("gate", "forced") for f in the_plan.findings):
        the_plan.findings.extend(_online_checks(git, base_state, head_state, head, wanted))
    return the_plan


def _online_checks(git: Git, base_state: RegistryState, head_state: RegistryState, head: str,
                   wanted: str) -> list[Finding]:
    """What the reconciler still checks in the database before it swaps to `wanted` (the
    offline plan cannot read that evidence, so it says so rather than guess), or that it
    skips those checks for a forced promotion."""
    if forced_promotion(git, head_state.commit or head, wanted, head_state.environment):
        return [Finding("forced", None, f"{wanted} was promoted with --force (recorded in its "
                        "promotion commit): the reconciler skips the promotion gate for it",
                        None, "info")]
    settings, found = head_state.settings, []
    if base_state.settings.production is not None:
        required = " (gates.require_eval: a comparison is required)" \
            if settings.require_eval else ""
        found.append(Finding(
            "eval", None, f"the reconciler checks {wanted}'s last comparison against "
            f"{head_state.environment}{required} in the database before it swaps",
            None, "info"))
    promotion = settings.promotion
    if promotion is not None:
        found.append(Finding(
            "path", None, f"{head_state.environment} takes {wanted} from {promotion.source} "
            f"(it serves it in {head}); the reconciler checks the {duration_text(promotion.soak)}"
            f" soak{' and health' if promotion.require_healthy else ''} in "
            f"{promotion.source}'s database before it swaps", None, "info"))
    return found


def _base_for(git: Git, base: str, head_state: RegistryState) -> RegistryState:
    """`base` acting for the environment of `head_state`; an environment that `head` adds,
    or whose file is invalid on `base` (no reconcile of it applied that commit), starts from
    nothing (its settings as on head, serving nothing)."""
    state = read_state(git, base)
    if head_state.environment in environment_names(state):
        return select(state, head_state.environment)
    file = head_state.environment_files[head_state.environment]
    assert file.settings is not None
    empty = replace(file, settings=replace(file.settings, production=None))
    state.environment_files = {**state.environment_files, file.name: empty}
    return select(state, head_state.environment)


def _offline_path(git: Git, base: str, base_state: RegistryState, head_state: RegistryState,
                  actual: ActualState) -> None:
    """The committed part of the promotion path gate for the version `head` moves to: the
    source environment must serve it in the merged tree, unless the environment served it
    before on `base` (a rollback target)."""
    wanted = head_state.settings.production
    if head_state.settings.promotion is None or not wanted \
            or wanted == base_state.settings.production:
        return
    served = {e.chunk_version for e in read_history(git, base, head_state.environment)
              if e.kind in ("promote", "rollback")}
    served |= {e.previous for e in read_history(git, base, head_state.environment)
               if e.kind in ("promote", "rollback") and e.previous}
    actual.path_gate = path_verdict(head_state, wanted, offline=True,
                                    served_before=wanted in served)


def retired_on(git: Git, ref: str, state: RegistryState) -> dict[str, datetime]:
    """version -> when it was retired on `ref` (its retire commit), for configs that left the
    repo and are not back: what a reconciled database still holds as retired tables."""
    out: dict[str, datetime] = {}
    for event in read_history(git, ref, tags=False):
        version = event.chunk_version
        if event.kind == "retire" and version and version not in state.configs:
            out.setdefault(version, datetime.fromisoformat(event.at))
    return out


def policy_findings(before: ProductionConfig, after: ProductionConfig, base: str
                    ) -> list[Finding]:
    """What a change of production.yaml's table placement, identity or retention does once
    merged: a move or an identity change the reconciler refuses (blocking), a retention change
    that drops retired tables sooner or keeps them longer."""
    findings = []
    if (before.schema, before.base_name) != (after.schema, after.base_name):
        findings.append(Finding(
            "moved", after.base_name, f"tables move from {before.legacy_identity} to "
            f"{after.legacy_identity}: the reconciler refuses to move the tables of {base}",
            "restore tables.schema/base_name", "error"))
    if before.registry is not None and before.registry != after.registry:
        findings.append(Finding(
            "identity", after.base_name, f"registry changes from {before.registry} to "
            f"{after.registry or 'none'}: the reconciler would disown every table it created",
            f"restore `registry: {before.registry}`", "error"))
    if before.grace_period != after.grace_period:
        sooner = after.grace_period < before.grace_period
        findings.append(Finding(
            "retention", None, f"retention.grace_period {duration_text(before.grace_period)} -> "
            f"{duration_text(after.grace_period)}: retired tables are dropped "
            f"{'sooner' if sooner else 'later'}", None, "warning" if sooner else "info"))
    if before.keep_previous != after.keep_previous:
        fewer = after.keep_previous < before.keep_previous
        findings.append(Finding(
            "retention", None, f"retention.keep_previous {before.keep_previous} -> "
            f"{after.keep_previous}: {'fewer' if fewer else 'more'} former productions are kept "
            "as rollback targets", None, "warning" if fewer else "info"))
    findings.extend(experiment_findings(before, after))
    return findings


def experiment_findings(before: ProductionConfig, after: ProductionConfig) -> list[Finding]:
    """What a change of the `experiment:` block does to what applications read, once merged
    and reconciled (nothing a plan action shows: the served state and the candidate view)."""
    old, new = before.experiment, after.experiment
    if old == new:
        return []
    view = f"{after.schema}.{after.candidate_view}"
    if new is None:
        assert old is not None
        return [Finding("experiment", after.candidate_view, f"experiment {old.name} ends: every "
                        f"request key reads {after.environment}'s {after.production} again and "
                        f"{view} is dropped", None, "info")]
    table = f"{after.schema}.{after.table_name(new.candidate)}"
    what = (f"experiment {new.name} starts" if old is None or old.name != new.name
            else f"experiment {new.name} changes")
    return [Finding("experiment", after.candidate_view, f"{what}: {new.share:.0%} of request "
                    f"keys (salt {new.salt!r}) read {table} until "
                    f"{new.to_dict()['ends']}, and {view} reads it; the rest read "
                    f"{after.production}", None, "info")]


# ---------------------------------------------------------------------------------------------
# Watching: reconcile every interval, like Flux


def watch(
    run_once: Callable[[], RunResult],
    *,
    stop: threading.Event,
    interval: float = 60.0,
    max_backoff: float = 300.0,
    on_result: Callable[[RunResult], None] | None = None,
) -> int:
    """Call `run_once` (one whole reconcile) every `interval` seconds until `stop` (a
    threading.Event) is set.

    Database and git outages back off exponentially (capped at `max_backoff`) with one log
    line each; a busy lock, an invalid commit or a refusal wait for the next interval. Returns
    the number of runs that completed.
    """
    failures = 0
    runs = 0
    while not stop.is_set():
        delay = interval
        try:
            result = run_once()
            runs += 1
            failures = 0
            if on_result is not None:
                on_result(result)
        except (DatabaseUnavailable, GitError) as err:
            failures += 1
            delay = min(max(max_backoff, interval), interval * 2 ** (failures - 1))
            log.warning("%s; retrying in %gs (attempt %d)", err, delay, failures + 1)
        except RegistryError as err:
            failures = 0
            log.warning("%s; next run in %gs", err, delay)
        if stop.wait(delay):
            break
    return runs
