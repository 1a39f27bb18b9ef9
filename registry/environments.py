"""Environments: where a registry serves its configs (staging, production, ...), each with its
own served version, tables, retention, gates, targets and database, as Kargo's stages or one
Argo CD Application per environment of an ApplicationSet.

configs/production.yaml declares the environment `production` (a registry with only that file
has that one environment, exactly as before); configs/environments/<name>.yaml declares each
other one, with the same fields and `serves:` for the version it serves. The whole tool acts on
an environment through a state whose `settings` are that environment's (`select`), so reconcile,
status, health, plan, the promotion watch and the dashboard need nothing else to know.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import psycopg

from registry.config import (
    ENVIRONMENTS_DIR,
    PRODUCTION_ENVIRONMENT,
    PRODUCTION_PATH,
    ProductionConfig,
    Promotion,
    environment_path,
)
from registry.database import bookkeeping
from registry.database.connection import configured_dsn, database_error, session
from registry.errors import Problem, Refused, RegistryError, UsageError, invalid
from registry.quality.gate import GateVerdict, judge_path, soak_evidence
from registry.repository.state import RegistryState
from registry.secrets import register_dsn


@dataclass(frozen=True)
class Environment:
    """One declared environment: its name, the file that declares it and its settings
    (`settings.production` is the version it serves)."""

    name: str
    path: str
    settings: ProductionConfig

    @property
    def serves(self) -> str | None:
        return self.settings.production

    @property
    def dsn_env(self) -> str | None:
        return self.settings.dsn_env

    @property
    def promotion(self) -> Promotion | None:
        return self.settings.promotion

    @property
    def pointer_key(self) -> str:
        """The key of the served-version line in its file (what a promotion commit changes)."""
        return "production" if self.name == PRODUCTION_ENVIRONMENT else "serves"


def environments(state: RegistryState) -> list[Environment]:
    """Every environment of the committed state, in promotion order (an environment after the
    one it is promoted from; production last), then by name."""
    found = {PRODUCTION_ENVIRONMENT: Environment(PRODUCTION_ENVIRONMENT, PRODUCTION_PATH,
                                                 state.production_settings)}
    for name, file in state.environment_files.items():
        if file.settings is not None:
            found[name] = Environment(name, file.path, file.settings)
    return sorted(found.values(), key=lambda env: (_depth(env.name, found),
                                                   env.name == PRODUCTION_ENVIRONMENT, env.name))


def _depth(name: str, found: dict[str, Environment]) -> int:
    depth, seen = 0, {name}
    promotion = found[name].promotion
    while promotion is not None and promotion.source in found and promotion.source not in seen:
        seen.add(promotion.source)
        depth += 1
        promotion = found[promotion.source].promotion
    return depth


def environment_names(state: RegistryState) -> list[str]:
    return [env.name for env in environments(state)]


def environment(state: RegistryState, name: str) -> Environment:
    """The environment `name`; when its file exists but is invalid (malformed YAML, against the
    schema, not a regular file, misnamed), that file's problem (exit 1, `path:line`): calling
    it undeclared would send the user to declare what they did declare. Otherwise a usage
    error naming the declared ones."""
    for env in environments(state):
        if env.name == name:
            return env
    broken = file_problems(state, name)
    if broken:
        raise invalid(broken)
    raise UsageError(
        f"no environment {name} in {state.ref} (declared: "
        f"{', '.join(environment_names(state))})", where="--environment",
        fix=f"declare it in {environment_path(name)} or pick a declared one")


def file_problems(state: RegistryState, name: str) -> list[Problem]:
    """The errors found in the file declaring environment `name` (`<name>.yaml`, or a
    `<name>.yml` that should be), in the order `validate` lists them."""
    paths = {environment_path(name), f"{ENVIRONMENTS_DIR}/{name}.yml"}
    return [p for p in state.errors if p.path in paths]


def select(state: RegistryState, name: str | None) -> RegistryState:
    """The state acting for environment `name` (None or production: the state itself)."""
    if name is None or name == state.environment:
        return state
    environment(state, name)
    return replace(state, environment=name)


def environment_dsn(state: RegistryState, dsn: str | None) -> str | None:
    """The DSN to use for the environment `state` acts for: `--dsn` when given, else the value
    of its `dsn_env` variable (set and blank, or unset: one line naming it), else None (the
    usual REGISTRY_DSN, DATABASE_URL, embedded fallback)."""
    if dsn is not None:
        return dsn
    name = state.settings.dsn_env
    if name is None:
        return None
    value = os.environ.get(name)
    if value is None or not value.strip():
        how = "is not set" if value is None else "is set but empty"
        raise UsageError(
            f"environment {state.environment} reads its database from {name}, which {how}",
            where=environment_path(state.environment),
            fix=f"set {name} to the environment's DSN (a secret of the GitHub environment "
                f"{state.environment}), or pass --dsn")
    register_dsn(value)
    return value


# ---------------------------------------------------------------------------------------------
# The promotion path: one rule (`gate.judge_path`), its evidence read here


def path_verdict(
    state: RegistryState, version: str, *, conn: psycopg.Connection[Any] | None = None,
    offline: bool = False, served_before: bool = False,
) -> GateVerdict | None:
    """The promotion path gate of the environment `state` acts for, for `version`: None when
    the environment has no `promotion:`. Online (not `offline`), the evidence is read from the
    source environment's database: its `dsn_env`, or without one the database the target
    environment uses (`conn`, else the configured DSN). Evidence that cannot be read holds the
    version back (the line says why): the gate fails closed."""
    promotion = state.settings.promotion
    if promotion is None:
        return None
    source = select(state, promotion.source)
    serves = source.settings.production
    now = datetime.now().astimezone()
    if offline or served_before or serves != version:
        return judge_path(version, state.environment, promotion, serves, None, now,
                          served_before=served_before)
    try:
        if source.settings.dsn_env is None and conn is not None:
            return _judged(state, source, version, conn)
        dsn = environment_dsn(source, None)
        if dsn is None:
            configured = configured_dsn(None)
            if configured is None:
                raise UsageError(
                    f"no database is configured to read {source.environment}'s evidence from",
                    fix=f"set dsn_env in {environment_path(source.environment)} (and that "
                        "variable), or REGISTRY_DSN")
            dsn = configured.value
        with session(dsn, purpose=f"promotion path from {source.environment}") as evidence:
            try:
                return _judged(state, source, version, evidence)
            except psycopg.Error as err:
                raise database_error(err, dsn, f"reading {source.environment}'s evidence") \
                    from None
    except RegistryError as err:
        return GateVerdict(True, f"cannot read {source.environment}'s evidence for {version}: "
                           f"{err.message}", err.fix)


def _judged(state: RegistryState, source: RegistryState, version: str,
            conn: psycopg.Connection[Any]) -> GateVerdict:
    promotion = state.settings.promotion
    assert promotion is not None
    evidence = soak_evidence(conn, version, source.settings)
    return judge_path(version, state.environment, promotion, source.settings.production,
                      evidence, bookkeeping.database_now(conn))


def promotion_path_note(
    state: RegistryState, version: str, *, force: bool, served_before: bool = False,
    conn: psycopg.Connection[Any] | None = None,
) -> str | None:
    """The promotion path gate for `registry promote`: a line for the commit message, or
    Refused (one line, saying how long the soak has left) unless `force`."""
    verdict = path_verdict(state, version, conn=conn, served_before=served_before)
    if verdict is None:
        return None
    if not verdict.held:
        return f"Promotion path: {verdict.reason}."
    if not force:
        raise Refused(f"cannot promote {version} to {state.environment}: {verdict.reason}",
                      fix=verdict.fix)
    return f"Promotion path: promoted with --force although {verdict.reason}."
