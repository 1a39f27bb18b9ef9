"""Commands that change the registry. Each one only makes a branch with one commit (and tags);
the merge of that branch is the decision, and the reconciler acts on what main then says."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry.config import (
    EMBEDDER_SCHEMA_VERSION,
    ENVIRONMENTS_DIR,
    MAX_CHUNK_SIZE,
    MAX_OVERLAP_RATIO,
    MIN_JACCARD,
    PRODUCTION_ENVIRONMENT,
    PRODUCTION_PATH,
    SCHEMA_VERSION,
    ExperimentConfig,
    Guardrails,
    LockedConfig,
    config_path,
    environment_flag,
    environment_path,
    guardrail_violations,
    is_version,
    parse_yaml,
    rfc3339,
    set_experiment_block,
    set_production_pointer,
    utc_now,
)
from registry.embedding.spec import EmbedderSpec
from registry.environments import environments, select
from registry.errors import (
    ConfigInvalid,
    GitError,
    Refused,
    RegistryError,
    UnknownVersion,
    UsageError,
    invalid,
)
from registry.quality.gate import promotion_note
from registry.reconciler.render import render_plan
from registry.reconciler.run import offline_plan
from registry.repository.config_schema import schema_problems
from registry.repository.git import Git
from registry.repository.github import Proposal, origin_repo, propose
from registry.repository.history import (
    FORCE_TRAILER,
    last_promotion,
    read_history,
    standing_promotions,
)
from registry.repository.runbook import render
from registry.repository.state import RegistryState, parse_config_file, read_state
from registry.tokenizer import passage_prefix_tokens, resolve, special_token_count

if TYPE_CHECKING:
    import psycopg

TRAILER = "Chunk-Version"


@dataclass(frozen=True)
class LockResult:
    config: LockedConfig
    branch: str
    commit: str
    path: str
    base: str
    pushed: bool
    runbook_path: str | None = None
    reused: bool = False
    """An unmerged lock branch with the same config_hash existed (a rerun): adopted."""


def check_parameters(
    chunk_size: int, overlap_ratio: float, jaccard_threshold: float, prefix_policy: str
) -> None:
    """Refuse values outside the hard guardrails before anything else happens."""
    checks = [
        (1 <= chunk_size <= MAX_CHUNK_SIZE,
         f"--chunk-size {chunk_size} is outside 1..{MAX_CHUNK_SIZE}",
         f"use a chunk size between 1 and {MAX_CHUNK_SIZE} tokens"),
        (0 <= overlap_ratio <= MAX_OVERLAP_RATIO,
         f"--overlap-ratio {overlap_ratio} is outside 0..{MAX_OVERLAP_RATIO}",
         f"use an overlap ratio between 0 and {MAX_OVERLAP_RATIO}"),
        (MIN_JACCARD <= jaccard_threshold <= 1,
         f"--jaccard-threshold {jaccard_threshold} is outside {MIN_JACCARD}..1",
         f"use a Jaccard threshold between {MIN_JACCARD} and 1"),
        (prefix_policy in ("A", "B"), f"--prefix-policy {prefix_policy!r} is not A or B",
         "A puts the prefix in embedding_text only, B in both texts"),
    ]
    for ok, message, fix in checks:
        if not ok:
            raise ConfigInvalid(message, fix=fix)


def read_baseline_metrics(path: Path) -> dict[str, float]:
    """Metrics from a JSON or YAML file: a mapping of numbers, or an eval report's `metrics`."""
    where = str(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise UsageError(f"cannot read baseline metrics: {err.strerror}", where=where) from None
    try:
        data: Any = json.loads(raw)
    except ValueError:
        data = parse_yaml(raw, where).data
    if isinstance(data, dict) and isinstance(data.get("metrics"), dict):
        data = data["metrics"]
    if not isinstance(data, dict):
        raise ConfigInvalid("baseline metrics must be a mapping of names to numbers", where=where,
                            fix='write e.g. {"oracle_hit_rate": 0.47, "filter_hit_rate": 0.22}')
    metrics = {
        k: v for k, v in data.items() if isinstance(v, int | float) and not isinstance(v, bool)
    }
    if not metrics:
        raise ConfigInvalid("baseline metrics file holds no numeric metrics", where=where,
                            fix='write e.g. {"oracle_hit_rate": 0.47}')
    return {k: float(v) for k, v in metrics.items()}


def next_version(git: Git, state: RegistryState, now: datetime) -> str:
    """`%Y-%m-%d-%H%M%S-vN` in UTC, N bumped while the version is taken anywhere we can see."""
    stamp = now.strftime("%Y-%m-%d-%H%M%S")
    refs = git.run("for-each-ref", "--format=%(refname)", "refs/heads/lock/", "refs/remotes/",
                   "refs/tags/").splitlines()
    taken_refs = {ref.rsplit("/", 1)[-1] for ref in refs}
    n = 1
    while True:
        version = f"{stamp}-v{n}"
        if version not in state.configs and config_path(version) not in state.files \
                and version not in taken_refs:
            return version
        n += 1


def lock(
    git: Git,
    *,
    chunk_size: int,
    overlap_ratio: float,
    jaccard_threshold: float,
    prefix_policy: str,
    embedder: str | None = None,
    embedder_max_tokens: int = 512,
    embedder_spec: EmbedderSpec | None = None,
    tokenizer: str | None = None,
    tokenizer_file: Path | None = None,
    baseline_metrics: Mapping[str, float] | Path | None = None,
    description: str | None = None,
    generate_runbook: bool = False,
    push: bool = False,
    now: datetime | None = None,
) -> LockResult:
    """Lock a new config: branch `lock/<version>` from main with one commit adding it.
    `embedder_spec` (pinned: with its fingerprint) makes a format 2 config; its name and max
    tokens are then the flat `embedder_name` and `embedder_max_tokens`."""
    check_parameters(chunk_size, overlap_ratio, jaccard_threshold, prefix_policy)
    if embedder_spec is not None:
        if embedder_spec.fingerprint is None:
            raise ConfigInvalid(f"embedder {embedder_spec.name} has no measured fingerprint",
                                fix="pin it with registry.embedding.pin(embedder)")
        embedder, embedder_max_tokens = embedder_spec.name, embedder_spec.max_tokens
    if not embedder:
        raise UsageError("no embedder named", fix="pass --embedder NAME, --embedder-onnx MODEL "
                         "or --embedder-openai NAME")
    base = git.desired_ref(fetch=False)
    if not git.run("ls-tree", "--name-only", base, "--", PRODUCTION_PATH).strip():
        raise ConfigInvalid(f"{PRODUCTION_PATH} is missing on {base}, so this is not a registry "
                            "repository yet", where=str(git.root),
                            fix="run `registry init`, commit what it writes to main, then lock")
    state = read_state(git, base)
    metrics = (
        read_baseline_metrics(baseline_metrics)
        if isinstance(baseline_metrics, Path)
        else dict(baseline_metrics or {})
    )
    tokenizer_name = tokenizer or embedder
    resolved = resolve(tokenizer_name, tokenizer_file, repo_root=git.root)
    loaded = resolved.load()
    special = special_token_count(loaded)
    prefix_tokens = (None if embedder_spec is None
                     else passage_prefix_tokens(loaded, embedder_spec.passage_prefix))
    when = now or utc_now()
    config_data: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION if embedder_spec is None else EMBEDDER_SCHEMA_VERSION,
        "chunk_version": next_version(git, state, when),
        "chunk_size": chunk_size,
        "overlap_ratio": overlap_ratio,
        "jaccard_threshold": jaccard_threshold,
        "prefix_policy": prefix_policy,
        "embedder_name": embedder,
        "embedder_max_tokens": embedder_max_tokens,
        "tokenizer_name": tokenizer_name,
        "tokenizer_hash": resolved.hash,
        "created_at": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "created_by": git.identity(),
        "baseline_metrics": metrics,
    }
    if embedder_spec is not None:
        config_data["embedder"] = embedder_spec.to_dict()
    if description:
        config_data["description"] = description
    config = _checked(config_data, special, prefix_tokens)
    if push:
        adopted = _unmerged_lock(git, state, base, config.config_hash)
        if adopted is not None:
            found, branch, commit = adopted
            commit, _ = place_branch(git, branch, commit, base, push)
            runbook = f"runbooks/{found.chunk_version}.md"
            return LockResult(found, branch, commit, config_path(found.chunk_version), base,
                              push, runbook if git.show(commit, runbook) else None, reused=True)
    path = config_path(config.chunk_version)
    changes: dict[str, bytes | None] = {path: config.dump().encode()}
    runbook_path = None
    if generate_runbook:
        runbook_path = f"runbooks/{config.chunk_version}.md"
        changes[runbook_path] = render(config, state.settings, "markdown").encode()
    message = (
        f"Lock chunk config {config.chunk_version} ({config.label()})\n\n"
        f"Embedder {config.embedder_name} (max {config.embedder_max_tokens} tokens), tokenizer "
        f"{config.tokenizer_name} {config.tokenizer_hash}.\n"
        + (f"Pinned {config.embedder.backend} embedder, dimension {config.embedder.dimension}, "
           f"fingerprint {config.embedder.fingerprint}.\n" if config.embedder else "")
        + f"config_hash {config.config_hash}\n\n"
        f"{TRAILER}: {config.chunk_version}\n"
    )
    commit = git.commit_files(base, changes, message)
    branch = f"lock/{config.chunk_version}"
    require_no_new_errors(git, base, commit, f"lock {config.chunk_version}")
    git.create_branch(branch, commit)
    if push:
        git.push(f"refs/heads/{branch}:refs/heads/{branch}")
    return LockResult(config, branch, commit, path, base, push, runbook_path)


def _unmerged_lock(
    git: Git, state: RegistryState, base: str, config_hash: str
) -> tuple[LockedConfig, str, str] | None:
    """(config, branch, commit) of a lock branch not merged into `base` (local, or origin's
    as last fetched) whose config has `config_hash`: what a rerun of `lock --push/--pr` after
    a failure adopts instead of locking the same parameters again under a new version."""
    listed = git.run("for-each-ref", "--format=%(refname) %(objectname)", "refs/heads/lock/",
                     "refs/remotes/origin/lock/")
    for line in listed.splitlines():
        ref, commit = line.split()
        version = ref.rsplit("/", 1)[1]
        if version in state.configs or not is_version(version) or git.is_ancestor(commit, base):
            continue
        raw = git.show(commit, config_path(version))
        found = parse_config_file(config_path(version), raw)[0] if raw else None
        if found is not None and found.config_hash == config_hash:
            return found, f"lock/{version}", commit
    return None


def place_branch(git: Git, branch: str, commit: str, base: str, push: bool) -> tuple[str, bool]:
    """Put the change `commit` on `branch` (and push it): (the commit the branch holds, whether
    an existing branch already held this change and was kept).

    A branch left by an earlier change that was merged into `base` is replaced; one holding
    the same content (a rerun) is kept as it is, so its pushed commit and open pull request
    stay; one with other, unmerged changes is refused, saying what to run."""
    tree = git.tree_of(commit)
    remote = git.pushed_branch(branch) if push else None
    local = git.resolve(f"refs/heads/{branch}")
    reused = False
    for where, existing in (("at origin ", remote), ("", local)):
        if existing is None or git.is_ancestor(existing, base):
            continue
        if existing == commit or git.tree_of(existing) == tree:
            commit, reused = (commit, True) if reused else (existing, True)
            continue
        delete = f"`git branch -D {branch}`" + (
            f" and `git push origin --delete {branch}`" if remote else "")
        raise GitError(f"branch {branch} already exists {where}with other changes "
                       f"({existing[:10]}, not merged into {base})",
                       fix=f"merge or close its pull request, or delete it ({delete}), then rerun")
    git.set_branch(branch, commit)
    if push and remote != commit:
        lease = [f"--force-with-lease=refs/heads/{branch}:{remote}"] if remote else []
        git.push(*lease, f"refs/heads/{branch}:refs/heads/{branch}")
    return commit, reused


def _checked(data: dict[str, Any], special_tokens: int,
             passage_prefix_tokens: int | None = None) -> LockedConfig:
    """Schema and guardrails on the exact mapping that will be written."""
    text = LockedConfig.from_mapping(data).dump()
    doc = parse_yaml(text.encode(), config_path(str(data["chunk_version"])))
    problems = schema_problems(doc, "locked")
    if problems:
        raise invalid(problems)
    config = LockedConfig.from_mapping(doc.data)
    violations = guardrail_violations(config, special_tokens, passage_prefix_tokens)
    if violations:
        raise invalid([doc.problem((f,), m, fix) for f, m, fix in violations])
    return config


# ---------------------------------------------------------------------------------------------
# Tags


@dataclass(frozen=True)
class TagResult:
    created: list[str]
    existing: list[str]
    pushed: bool


def tag(git: Git, *, ref: str | None = None, push: bool = False) -> TagResult:
    """Annotate every config on main that has no tag yet, on the commit that introduced it; a
    lightweight lock tag on that commit is replaced by an annotated one (pushed with force:
    the same commit, so other clones take it without calling it moved)."""
    main = git.desired_ref(ref, fetch=False)
    git.require_history("`registry tag` (it tags the commit that introduced each config)")
    state = read_state(git, main)
    settings = state.settings
    tags = git.tags(settings.tag_prefix)
    introduced = git.config_introductions(main)
    created: list[str] = []
    existing: list[str] = []
    replaced: list[str] = []
    for version, config in sorted(state.configs.items()):
        name = settings.tag_name(version)
        commit = introduced.get(config_path(version))
        found = tags.get(name)
        if found is not None and (found.annotated or found.commit != commit):
            existing.append(name)  # a lightweight tag elsewhere is validate's to report
            continue
        if found is not None:
            replaced.append(name)  # lightweight, on the right commit: made annotated
        if commit is None:
            raise RegistryError(f"cannot find the commit that introduced {config_path(version)}",
                                where=main)
        message = (
            f"Locked chunk config {version} ({config.label()})\n\n"
            f"config_hash: {config.config_hash}\ningest_run_id: {config.ingest_run_id}\n"
            f"tokenizer_hash: {config.tokenizer_hash}\n"
        )
        git.create_tag(name, commit, message, replace=name in replaced)
        created.append(name)
    if push and created:
        git.push(*(f"{'+' if name in replaced else ''}refs/tags/{name}:refs/tags/{name}"
                   for name in created))
    return TagResult(created, existing, push and bool(created))


# ---------------------------------------------------------------------------------------------
# Promote, retire, rollback: the same shape as lock (a branch from main with one commit)


@dataclass(frozen=True)
class ChangeResult:
    """A change made as a branch with one commit on top of the main branch, ready for a PR."""

    action: str
    chunk_version: str
    branch: str
    commit: str
    base: str
    title: str
    previous: str | None = None
    reverted: str | None = None
    pushed: bool = False
    reused: bool = False
    """The branch already held this change (a rerun): kept, not remade."""


def _finish(
    git: Git, action: str, version: str, base: str, commit: str, push: bool,
    branch: str | None = None, **extra: Any
) -> ChangeResult:
    branch = branch or f"{action}/{version}"
    require_no_new_errors(git, base, commit, f"{action} {version}")
    commit, reused = place_branch(git, branch, commit, base, push)
    title = git.run("log", "-1", "--format=%s", commit).strip()
    return ChangeResult(action, version, branch, commit, base, title, pushed=push,
                        reused=reused, **extra)


def require_no_new_errors(git: Git, base: str, commit: str, what: str) -> None:
    """Every commit a command writes is validated before a branch names it: a change whose
    pull request would fail `registry validate` is refused here, in one line. Only errors the
    commit adds count, so a change that repairs an already broken main is not blocked."""
    known = {(p.path, p.message) for p in read_state(git, base).errors}
    added = [p for p in read_state(git, commit).errors if (p.path, p.message) not in known]
    if added:
        more = f" (and {len(added) - 1} more)" if len(added) > 1 else ""
        first = added[0]
        raise Refused(f"{what} would not validate: {first.path}:{first.line}: "
                      f"{first.message}{more}",
                      fix=first.fix or "fix that first, then rerun the command")


def _experiment_of(state: RegistryState, version: str, environment: str | None
                   ) -> tuple[str, str] | None:
    """(environment, experiment name) of an experiment declared with `version` as its
    candidate: in `environment`, or in any environment when None."""
    found = [(PRODUCTION_ENVIRONMENT, state.production.experiment if state.production else None)]
    found += [(name, env.settings.experiment if env.settings else None)
              for name, env in state.environment_files.items()]
    return next(((where, experiment.name) for where, experiment in found
                 if experiment is not None and experiment.candidate == version
                 and environment in (None, where)), None)


def _require_no_experiment(state: RegistryState, version: str, action: str,
                           environment: str | None) -> None:
    """Promoting or retiring a running experiment's candidate would leave an experiment
    that validation refuses: the experiment ends first, by its own pull request."""
    running = _experiment_of(state, version, environment)
    if running is not None:
        where, name = running
        option = "" if where == PRODUCTION_ENVIRONMENT else f" --environment {where}"
        raise Refused(f"cannot {action} {version}: it is the candidate of experiment {name} "
                      f"in {where}", fix=f"end experiment {name} first "
                      f"(`registry experiment end{option}`), merge that, then {action} it")


def _require_locked(state: RegistryState, version: str, base: str, action: str) -> LockedConfig:
    if not is_version(version):
        raise UnknownVersion(f"{version!r} is not a chunk_version",
                             fix="use the form 2025-09-07-143022-v1; `registry list` shows them")
    config = state.configs.get(version)
    if config is None:
        raise UnknownVersion(f"cannot {action} {version}: it is not a locked config on {base}",
                             fix="merge its lock pull request first and `git pull`; "
                                 "`registry list` shows the locked versions")
    return config


def promote(
    git: Git, version: str, *, conn: psycopg.Connection[Any] | None = None, force: bool = False,
    push: bool = False, environment: str = PRODUCTION_ENVIRONMENT, path_note: str | None = None,
) -> ChangeResult:
    """Branch `promote/<version>` (`promote/<environment>/<version>` for another environment
    than production) from main with one commit pointing the environment at `version`.

    Refused when the version is not locked on main, has no lock tag, or is served already;
    and, when a database is given (`conn`), when its last eval comparison failed (or none
    exists and production.yaml requires one) unless `force`. `path_note` is the verdict of the
    promotion path (`environments.promotion_path_note`), for the commit message.
    """
    base = git.desired_ref(fetch=False)
    state = select(read_state(git, base), environment)
    config = _require_locked(state, version, base, "promote")
    _require_no_experiment(state, version, "promote", environment)
    settings = state.settings
    previous = settings.production
    path = environment_path(environment)
    rollback = f"`registry rollback{environment_flag(environment)}`"
    if previous == version:
        raise Refused(f"{version} is already {_served(environment)} on {base}",
                      fix=f"nothing to do; {rollback} returns to the previous version")
    tag_name = settings.tag_name(version)
    git.fetch_tags(settings.tag_prefix, [tag_name])
    if tag_name not in git.tags(settings.tag_prefix):
        raise Refused(f"{version} has no lock tag {tag_name}: it is not locked yet",
                      fix="run `registry tag` on main (or `git fetch --tags` when CI tags)")
    gate = _eval_gate(conn, version, settings.require_eval and previous is not None, force,
                      settings.identities)
    raw = git.show(base, path)
    if raw is None:
        raise GitError(f"{path} is missing on {base}",
                       fix="create it with `production: null` and merge it")
    notes = "".join(f"{note}\n\n" for note in (gate, path_note) if note)
    message = (
        f"Promote chunk config {version} to {environment}\n\n"
        f"{environment.capitalize()} moves from {previous or 'none'} to {version} "
        f"({config.label()}, embedder {config.embedder_name}, config_hash "
        f"{config.config_hash[:12]}). Once merged, the reconciler points the "
        f"{settings.schema}.{settings.base_name} view at {settings.table_name(version)}; "
        f"{rollback} reverts this change.\n\n"
        + notes
        + f"{TRAILER}: {version}\n"
        + (f"{FORCE_TRAILER}: {version}\n" if force else "")
    )
    key = "production" if environment == PRODUCTION_ENVIRONMENT else "serves"
    changes: dict[str, bytes | None] = {path: set_production_pointer(raw, version, key)}
    commit = git.commit_files(base, changes, message)
    return _finish(git, "promote", version, base, commit, push,
                   _branch("promote", environment, version), previous=previous)


def _branch(action: str, environment: str, version: str) -> str | None:
    """`promote/<version>` for production (None: the default), `promote/<env>/<version>`."""
    return None if environment == PRODUCTION_ENVIRONMENT else f"{action}/{environment}/{version}"


def _served(environment: str) -> str:
    return ("production" if environment == PRODUCTION_ENVIRONMENT
            else f"what {environment} serves")


def _eval_gate(conn: psycopg.Connection[Any] | None, version: str, require_eval: bool,
               force: bool, registries: tuple[str, ...]) -> str | None:
    """The promotion gate (`registry.quality.gate`) on what the database recorded: a line for
    the commit message, or Refused. Without a database there is nothing to read, and the
    reconciler gates again. (`require_eval` is off for the first promotion: there is nothing
    to compare against.)"""
    if conn is None:
        return None
    return promotion_note(conn, version, require_eval=require_eval, force=force,
                          registries=registries)


def retire(git: Git, version: str, *, push: bool = False) -> ChangeResult:
    """Branch `retire/<version>` from main with one commit deleting the config.

    A config is repo-wide, so this is refused for the version any environment serves and for
    any environment's previous version (the target of its `registry rollback`): production's
    and staging's alike.
    """
    base = git.desired_ref(fetch=False)
    state = read_state(git, base)
    _require_locked(state, version, base, "retire")
    _require_no_experiment(state, version, "retire", None)
    settings = state.settings
    declared = environments(state)
    _require_readable_environments(state, {env.path for env in declared}, version)
    for env in declared:
        production = env.name == PRODUCTION_ENVIRONMENT
        option = "" if production else f" --environment {env.name}"
        if env.serves == version:
            raise Refused(f"cannot retire {version}: it is "
                          f"{'production' if production else f'what {env.name} serves'}",
                          fix=f"promote another version{option} first, then retire this one")
        protected = standing_promotions(read_history(git, base, env.name)).previous_productions(
            env.settings.keep_previous)
        if version in protected:
            raise Refused(f"cannot retire {version}: it is the previous "
                          f"{'production' if production else f'version of {env.name}'}, what "
                          f"`registry rollback{option}` returns to",
                          fix="retire it after another promotion has replaced it as the "
                              "rollback target")
    message = (
        f"Retire chunk config {version}\n\n"
        f"Deletes {config_path(version)}. Once merged, the reconciler marks "
        f"{state.settings.table_name(version)} retired and drops it after the grace period "
        f"({_duration(settings.grace_period)}); the tag {settings.tag_name(version)} keeps the "
        "locked content.\n\n"
        f"{TRAILER}: {version}\n"
    )
    commit = git.commit_files(base, {config_path(version): None}, message)
    return _finish(git, "retire", version, base, commit, push)


def _require_readable_environments(state: RegistryState, declared: set[str],
                                   version: str) -> None:
    """An environment file that cannot be read (malformed, against the schema, misnamed)
    may serve `version`: retiring it then would leave that environment, once its file is
    repaired, pointing at a deleted config. Its first problem instead (exit 1, path:line)."""
    broken = [p for p in state.errors
              if (p.path.startswith(f"{ENVIRONMENTS_DIR}/") and p.path not in declared)
              or (p.path == PRODUCTION_PATH and state.production is None)]
    if broken:
        first = invalid(broken)
        raise ConfigInvalid(f"cannot retire {version} while an environment file cannot be "
                            f"read: {first.message}", where=first.where, fix=first.fix)


def rollback(git: Git, *, push: bool = False, branch: str | None = None,
             environment: str = PRODUCTION_ENVIRONMENT) -> ChangeResult:
    """Branch `rollback/<version>` with a `git revert` of the last promotion still in force.

    The promotion may have reached main as a merge commit (reverted with `-m 1`), a squash
    merge or a plain commit. Refused when there is nothing to roll back to, when the version
    production would return to is no longer locked, or when the revert would change more than
    production.yaml. `branch` overrides `rollback/<version>` (the regression watch names its
    own per promotion).
    """
    base = git.desired_ref(fetch=False)
    state = select(read_state(git, base), environment)
    event = last_promotion(git, base, environment)
    path = environment_path(environment)
    target = event.previous
    assert target is not None
    current = state.settings.production
    flag = environment_flag(environment)
    if target not in state.configs:
        raise Refused(f"cannot roll back {environment} to {target}: it is no longer a locked "
                      f"config on {base}",
                      fix=f"promote a locked version with `registry promote VERSION{flag}`")
    how = {"merge": "merge commit", "squash": "squash merge", "commit": "commit"}[event.merge]
    pr = f" (#{event.pr})" if event.pr else ""
    message = (
        f"Roll back {environment} to {target}\n\n"
        f"Reverts the promotion of {current} ({how} {event.commit[:10]}{pr}: "
        f"{event.subject}). Once merged, the reconciler points the view back at "
        f"{state.settings.table_name(target)}: no re-ingest.\n\n"
        f"This reverts commit {event.commit}.\n\n"
        f"{TRAILER}: {target}\n"
    )
    mainline = 1 if event.merge == "merge" else None
    commit = git.revert(event.commit, base, message, mainline=mainline)
    changed = git.run("diff", "--name-only", base, commit).split()
    if changed != [path]:
        others = ", ".join(p for p in changed if p != path) or "nothing"
        raise Refused(
            f"reverting {event.commit[:10]} would change {others}, not just {path}",
            fix=f"point {environment} back by hand: `registry promote {target}{flag}`",
        )
    reverted_to = select(read_state(git, commit), environment).settings.production
    if reverted_to != target:
        raise Refused(f"reverting {event.commit[:10]} sets {environment} to {reverted_to}, "
                      f"not {target}", fix=f"use `registry promote {target}{flag}`")
    branch = branch or _branch("rollback", environment, target)
    return _finish(git, "rollback", target, base, commit, push, branch, previous=current,
                   reverted=event.commit)


# ---------------------------------------------------------------------------------------------
# Experiments: start, set-share, end (each a branch with one commit changing production.yaml)


def _experiment_branch(environment: str, name: str, what: str) -> str:
    """`experiment/<name>-<what>`, or `experiment/<environment>/<name>-<what>` for an
    environment other than production."""
    where = "" if environment == PRODUCTION_ENVIRONMENT else f"{environment}/"
    return f"experiment/{where}{name}-{what}"


def _check_share(share: float) -> None:
    if not 0 < share < 1:
        raise UsageError(f"--share {share:g} is outside (0, 1)",
                         fix="give the candidate's share of requests, e.g. 0.1 for 10%")


def _experiment_commit(git: Git, base: str, environment: str,
                       experiment: ExperimentConfig | None, message: str) -> str:
    """One commit changing only the `experiment:` block of the environment's file; the
    result must validate (the candidate locked, not what the environment serves)."""
    path = environment_path(environment)
    raw = git.show(base, path)
    if raw is None:
        raise GitError(f"{path} is missing on {base}", fix="declare the environment first")
    commit = git.commit_files(base, {path: set_experiment_block(raw, experiment)}, message)
    read_state(git, commit).require_valid()
    return commit


def experiment_start(
    git: Git, name: str, candidate: str, *, share: float, ends: datetime,
    salt: str | None = None, guardrails: Guardrails | None = None, push: bool = False,
    now: datetime | None = None, environment: str = PRODUCTION_ENVIRONMENT,
) -> ChangeResult:
    """Branch `experiment/<name>-start` adding `experiment:` to production.yaml: `candidate`
    (locked and tagged on main, not production) gets `share` of the request keys until `ends`
    (in the future). `salt` defaults to the name: a new experiment reshuffles the keys."""
    base = git.desired_ref(fetch=False)
    state = select(read_state(git, base), environment)
    settings = state.settings
    if settings.experiment is not None:
        raise Refused(f"experiment {settings.experiment.name} is already declared on {base}",
                      fix="end it first with `registry experiment end`")
    config = _require_locked(state, candidate, base, "experiment with")
    if settings.production is None:
        raise Refused(f"{environment} serves no config: an experiment needs a control",
                      fix="promote a config first")
    if settings.production == candidate:
        raise Refused(f"{candidate} is what {environment} serves already: it cannot be the "
                      "candidate", fix="name another locked version")
    tag_name = settings.tag_name(candidate)
    git.fetch_tags(settings.tag_prefix, [tag_name])
    if tag_name not in git.tags(settings.tag_prefix):
        raise Refused(f"{candidate} has no lock tag {tag_name}: it is not locked yet",
                      fix="run `registry tag` on main (or `git fetch --tags` when CI tags)")
    _check_share(share)
    moment = now or utc_now()
    if ends <= moment:
        raise UsageError(f"--ends {rfc3339(ends)} is not in the future",
                         fix="give an RFC 3339 time after now, or a duration like 14d")
    experiment = ExperimentConfig(name, candidate, share, salt or name, ends.astimezone(UTC),
                                  guardrails or Guardrails())
    message = (
        f"Start experiment {name}: {candidate} gets {share:.0%} of requests"
        + ("" if environment == PRODUCTION_ENVIRONMENT else f" in {environment}") + "\n\n"
        f"Candidate {candidate} ({config.label()}) against {environment}'s "
        f"{settings.production}, "
        f"until {rfc3339(experiment.ends)}, keys assigned by sha256(salt:key) with salt "
        f"{experiment.salt!r}. Once merged, the reconciler serves the candidate's table to "
        f"its share of keys (`registry.retrieval_table(key=...)`) and through the view "
        f"{settings.schema}.{settings.candidate_view}.\n\n"
        f"{TRAILER}: {candidate}\n"
    )
    commit = _experiment_commit(git, base, environment, experiment, message)
    return _finish(git, "experiment", candidate, base, commit, push,
                   _experiment_branch(environment, name, "start"), previous=settings.production)


def _running(state: RegistryState, base: str) -> ExperimentConfig:
    experiment = state.settings.experiment
    if experiment is None:
        raise Refused(f"no experiment is declared on {base}",
                      fix="start one with `registry experiment start`")
    return experiment


def experiment_set_share(git: Git, share: float, *, push: bool = False,
                         environment: str = PRODUCTION_ENVIRONMENT) -> ChangeResult:
    """Branch `experiment/<name>-share-<percent>` changing the candidate's share. Growing it
    only adds keys to the candidate; shrinking it moves some back (said in the commit)."""
    base = git.desired_ref(fetch=False)
    state = select(read_state(git, base), environment)
    experiment = _running(state, base)
    _check_share(share)
    if share == experiment.share:
        raise Refused(f"experiment {experiment.name} already gives {share:g} to the candidate",
                      fix="give another share")
    grows = share > experiment.share
    effect = ("every key in the candidate stays there; keys are only added" if grows else
              "keys whose point lies between the two shares move back to the control")
    message = (
        f"Experiment {experiment.name}: candidate share {experiment.share:.0%} -> {share:.0%}"
        f"\n\nThe salt is unchanged, so {effect}.\n\n{TRAILER}: {experiment.candidate}\n"
    )
    changed = ExperimentConfig(experiment.name, experiment.candidate, share, experiment.salt,
                               experiment.ends, experiment.guardrails)
    commit = _experiment_commit(git, base, environment, changed, message)
    percent = f"{share * 100:g}".replace(".", "_")
    return _finish(git, "experiment", experiment.candidate, base, commit, push,
                   _experiment_branch(environment, experiment.name, f"share-{percent}"))


def experiment_end(git: Git, *, reason: str | None = None, push: bool = False,
                   branch: str | None = None, environment: str = PRODUCTION_ENVIRONMENT
                   ) -> ChangeResult:
    """Branch `experiment/<name>-end` removing `experiment:` from production.yaml: once merged,
    every key reads production again and the candidate's view goes (its table stays a
    shadow: promote or retire it by its own pull request)."""
    base = git.desired_ref(fetch=False)
    state = select(read_state(git, base), environment)
    experiment = _running(state, base)
    message = (
        f"End experiment {experiment.name} (candidate {experiment.candidate})\n\n"
        + (f"{reason}\n\n" if reason else "")
        + f"Once merged, every request reads {environment}'s {state.settings.production} again "
        f"and the view {state.settings.schema}.{state.settings.candidate_view} is dropped; "
        f"{experiment.candidate}'s table stays a shadow.\n\n"
        f"{TRAILER}: {experiment.candidate}\n"
    )
    commit = _experiment_commit(git, base, environment, None, message)
    return _finish(git, "experiment", experiment.candidate, base, commit, push,
                   branch or _experiment_branch(environment, experiment.name, "end"))


def _duration(value: timedelta) -> str:
    hours = value.total_seconds() / 3600
    return f"{hours:g}h"


# ---------------------------------------------------------------------------------------------
# Pull request text


def check_pr_origin(git: Git) -> None:
    """`--pr` needs an origin on GitHub: checked before anything is made or pushed."""
    try:
        origin_repo(git)
    except GitError as err:
        raise GitError(f"{err.message}; nothing was pushed", where=err.where,
                       fix=err.fix) from None


def propose_pushed(git: Git, branch: str, base: str, commit: str, rerun: str) -> Proposal:
    """The pull request of a change branch just pushed; when the API fails, the error says
    what now exists (the pushed branch, no pull request) and what to run (`rerun`, which
    adopts both), instead of leaving the user to guess."""
    try:
        return propose_change(git, branch, base)
    except RegistryError as err:
        compare = origin_repo(git).compare_url(git.branch_of(base), branch)
        then = f"rerun {rerun} (it adopts the pushed branch and an open pull request), or " \
               f"open the pull request at {compare}"
        raise type(err)(f"{err.message}: branch {branch} is pushed to origin at {commit[:10]}, "
                        "no pull request was opened", where=err.where,
                        fix=f"{err.fix}; then {then}" if err.fix else then) from None


def propose_change(git: Git, branch: str, base: str) -> Proposal:
    """The pull request of a pushed change branch (or, without a token, the page to open it)."""
    title, body = describe_change(git, branch, base)
    return propose(git, branch, git.branch_of(base), title, body)


def describe_change(git: Git, branch: str, base: str) -> tuple[str, str]:
    """Title and Markdown body of the pull request for a change branch: the commit message,
    the locked config it is about, the offline plan of the merge, and the config's runbook
    (not for a retirement)."""
    message = git.run("log", "-1", "--format=%B", branch).strip()
    title, _, rest = message.partition("\n")
    paragraphs = [p for p in rest.strip().split("\n\n") if p and not p.startswith(f"{TRAILER}:")]
    version = next((line.split(":", 1)[1].strip() for line in message.splitlines()
                    if line.startswith(f"{TRAILER}:")), None)
    sections = ["\n\n".join(paragraphs)] if paragraphs else []
    state = read_state(git, branch)
    config = state.configs.get(version) if version else None
    if config is None and version:
        config = read_state(git, base).configs.get(version)  # retire: the config leaves
    if config is not None:
        sections.append(f"## Config `{config.chunk_version}`\n\n```yaml\n{config.dump()}```")
    sections.append(_offline_plan_section(git, base, branch))
    if config is not None and not branch.startswith("retire/"):
        runbook = render(config, state.settings, "markdown")
        sections.append(runbook.replace("\n## ", "\n### ").replace("# Runbook:", "## Runbook:", 1))
    sections.append(f"<sub>Made by chunk-registry from branch `{branch}`. The merge is the "
                    "decision; the reconciler acts on main.</sub>")
    return title, "\n\n".join(s.strip() for s in sections) + "\n"


def _offline_plan_section(git: Git, base: str, branch: str) -> str:
    """`registry plan --base BASE --head BRANCH` as Markdown; a plan that cannot be made is
    shown as such (the validate check on the PR fails on the same problem)."""
    command = f"`registry plan --base {base} --head {branch}`"
    try:
        plan = render_plan(offline_plan(git, base, branch), "markdown")
    except RegistryError as err:
        return f"## Plan\n\n{command} cannot plan this merge: {err}"
    return f"## Plan\n\nWhat merging does to PostgreSQL ({command}):\n\n{plan}"
