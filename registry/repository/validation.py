"""Every invariant of the registry, as a list of Problems (`path:line: message (fix)`).

Two kinds. What reading a state checks (file names, guardrails, one file per version, the
production pointer): `state.read_state` calls `file_name_problems`, `guardrail_problems` and
`repo_level_problems`, so every state carries them. What needs history, checked by `validate`
on a state already read: immutability against tags (tampering, moved tags, tags off main),
provenance (configs that reached main without a pull request) and the tokenizer each config was
locked with. This module reads only through the git layer; it names the state's types but
never imports the state module at run time (the state module imports it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from registry.config import (
    CONFIG_DIR,
    ENVIRONMENTS_DIR,
    PREFIX_BUDGET_TOKENS,
    PRODUCTION_ENVIRONMENT,
    PRODUCTION_PATH,
    ProductionConfig,
    YamlDoc,
    config_path,
    guardrail_violations,
    is_version,
    load_production,
    parse_yaml,
)
from registry.errors import Problem, RegistryError, TokenizerUnavailable
from registry.repository.git import Git, TagInfo
from registry.repository.parse_cache import ParseCache
from registry.tokenizer import resolve, special_token_count

if TYPE_CHECKING:
    from registry.repository.state import ConfigFile, RegistryState


# ---------------------------------------------------------------------------------------------
# What reading a state checks


def file_name_problems(
    entries: list[tuple[str, str, str]],
) -> tuple[list[tuple[str, str]], list[Problem]]:
    """Split configs/ entries (mode, blob, path) into (path, blob) of the config files to parse
    and problems with the names."""
    keep: list[tuple[str, str]] = []
    problems: list[Problem] = []
    for mode, blob, path in entries:
        folder, _, name = path.rpartition("/")
        if path == PRODUCTION_PATH:
            continue
        if not (name.endswith(".yaml") or name.endswith(".yml")):
            continue
        if mode == "120000":
            problems.append(Problem(path, 1, "configs must be regular files, not symlinks",
                                    "commit the file itself"))
            continue
        if mode not in ("100644", "100755"):
            problems.append(Problem(path, 1, f"unexpected entry (mode {mode})", "remove it"))
            continue
        if folder != CONFIG_DIR:
            problems.append(Problem(path, 1, "configs live directly in configs/, not in a "
                                    "subfolder", f"move it to {CONFIG_DIR}/{name}"))
            continue
        if name.endswith(".yml"):
            problems.append(Problem(path, 1, "config files end in .yaml",
                                    f"rename it to {CONFIG_DIR}/{name[:-4]}.yaml"))
            continue
        keep.append((path, blob))
    return keep, problems


def repo_level_problems(
    git: Git, state: RegistryState, contents: Mapping[str, bytes]
) -> list[Problem]:
    """File name == version, versions unique, production names an existing config."""
    problems: list[Problem] = []
    seen: dict[str, str] = {}
    for file in state.files.values():
        if file.config is None:
            continue
        version = file.config.chunk_version
        expected = config_path(version)
        if file.path != expected:
            problems.append(_doc(git, file, contents).problem(
                ("chunk_version",), f"file name does not match chunk_version {version}",
                f"rename the file to {expected} or fix chunk_version"))
        if version in seen:
            problems.append(_doc(git, file, contents).problem(
                ("chunk_version",), f"chunk_version {version} is already used by {seen[version]}",
                "every locked config needs its own version"))
        seen.setdefault(version, file.path)
    production = state.production
    if (
        production is not None
        and production.production is not None
        and production.production not in state.configs
    ):
        problems.append(
            Problem(PRODUCTION_PATH, state.production_line, f"production names "
                    f"{production.production}, which is not a locked config in {CONFIG_DIR}/",
                    "lock that version first, or point production at an existing one")
        )
    problems.extend(experiment_problems(state))
    return problems


def experiment_problems(state: RegistryState) -> list[Problem]:
    """In every environment, an experiment's candidate is a locked config other than the
    version the environment serves, and it serves one to compare with (the end date is
    checked when the experiment starts: a committed experiment past its end simply stops
    routing)."""
    declared: list[tuple[str, int, ProductionConfig]] = []
    if state.production is not None:
        declared.append((PRODUCTION_PATH, state.experiment_line, state.production))
    for file in state.environment_files.values():
        if file.settings is not None:
            declared.append((file.path, file.line_of("experiment"), file.settings))
    found = []
    for path, line, settings in declared:
        experiment = settings.experiment
        if experiment is None:
            continue
        if experiment.candidate not in state.configs:
            found.append(Problem(path, line, f"experiment {experiment.name}'s candidate "
                                 f"{experiment.candidate} is not a locked config in "
                                 f"{CONFIG_DIR}/", "lock it first, or end the experiment "
                                 "(`registry experiment end`)"))
        if settings.production is None:
            found.append(Problem(path, line, f"experiment {experiment.name} has no control: "
                                 f"{settings.environment} serves no config",
                                 "promote a config first, then start the experiment"))
        elif experiment.candidate == settings.production:
            found.append(Problem(path, line, f"experiment {experiment.name}'s candidate "
                                 f"{experiment.candidate} is what {settings.environment} "
                                 "serves already", "name another locked version, or end the "
                                 "experiment"))
    return found


def environment_problems(state: RegistryState) -> list[Problem]:
    """The environments as a whole: each serves a locked config, each promotion path starts at
    another declared environment and never loops, and no two share an identity (they would
    claim each other's tables and bookkeeping rows)."""
    problems: list[Problem] = []
    declared: dict[str, tuple[str, int, ProductionConfig]] = {}
    if state.production is not None:
        declared[PRODUCTION_ENVIRONMENT] = (PRODUCTION_PATH, 1, state.production)
    for file in state.environment_files.values():
        if file.settings is None:
            continue
        declared[file.name] = (file.path, file.line_of("promotion"), file.settings)
        served = file.settings.production
        if served is not None and served not in state.configs:
            problems.append(Problem(
                file.path, file.line_of("serves"), f"serves names {served}, which is not a "
                f"locked config in {CONFIG_DIR}/", "lock that version first, or point the "
                "environment at an existing one"))
    if not state.environment_files:
        return problems
    owners: dict[str, str] = {}
    # Environments by the tables they use, with their dsn_env: two that can share a database
    # must not share tables, whatever their `registry:` names (a name never keeps them apart).
    tables_of: dict[tuple[str, str], list[tuple[str, str | None]]] = {}
    for name, (path, line, settings) in declared.items():
        if name == PRODUCTION_ENVIRONMENT and state.production is not None:
            line = _production_line(state, "promotion")
        promotion = settings.promotion
        if promotion is not None:
            if promotion.source == name:
                problems.append(Problem(path, line, f"promotion.from names {name} itself",
                                        "name the environment versions come from"))
            elif promotion.source not in declared:
                problems.append(Problem(
                    path, line, f"promotion.from names {promotion.source}, which is not a "
                    "declared environment", f"declare it in {ENVIRONMENTS_DIR}/"
                    f"{promotion.source}.yaml, or name one of {', '.join(sorted(declared))}"))
            elif _loops(name, declared):
                problems.append(Problem(path, line, f"the promotion path through {name} loops",
                                        "make one environment the start of the path"))
        tables = (settings.schema, settings.base_name)
        sharer = next((other for other, dsn_env in tables_of.get(tables, [])
                       if dsn_env is None or settings.dsn_env is None
                       or dsn_env == settings.dsn_env), None)
        tables_of.setdefault(tables, []).append((name, settings.dsn_env))
        if sharer is not None:
            where = (_production_line(state, "tables") if name == PRODUCTION_ENVIRONMENT
                     else state.environment_files[name].line_of("tables"))
            problems.append(Problem(
                path, where, f"environments {sharer} and {name} both use tables "
                f"{settings.legacy_identity} and can share a database (no dsn_env, or the same "
                "one): one's reconcile would swap the other's view and drop its tables",
                f"give {name} its own tables.schema or tables.base_name"))
            continue
        identity = settings.identity
        if identity in owners:
            where = (_production_line(state, "registry") if name == PRODUCTION_ENVIRONMENT
                     else state.environment_files[name].line_of("registry"))
            problems.append(Problem(
                path, where, f"environments {owners[identity]} and {name} have the same "
                f"registry identity {identity}: they would claim each other's tables",
                f"give {name} its own `registry:` name or its own tables.schema"))
        owners.setdefault(identity, name)
    return problems


def _production_line(state: RegistryState, key: str) -> int:
    """The line of a top-level key of production.yaml (1 when it is absent)."""
    return state.production_key_lines.get(key, 1)


def _loops(start: str, declared: Mapping[str, tuple[str, int, ProductionConfig]]) -> bool:
    seen = {start}
    current = declared[start][2].promotion
    while current is not None and current.source in declared:
        if current.source in seen:
            return True
        seen.add(current.source)
        current = declared[current.source][2].promotion
    return False


def _doc(git: Git, file: ConfigFile, contents: Mapping[str, bytes]) -> YamlDoc:
    """The parsed file with line numbers, re-read only when a problem needs a line."""
    raw = contents.get(file.blob) or git.read_blobs([file.blob])[file.blob]
    return parse_yaml(raw, file.path)


def guardrail_problems(git: Git, file: ConfigFile, contents: Mapping[str, bytes]) -> list[Problem]:
    """The hard guardrails on one parsed config, each at the line of its field."""
    assert file.config is not None
    violations = guardrail_violations(file.config)
    if not violations:
        return []
    doc = _doc(git, file, contents)
    return [doc.problem((field_name,), message, fix) for field_name, message, fix in violations]


# ---------------------------------------------------------------------------------------------
# What needs history: `registry validate`


@dataclass
class Report:
    """The outcome of `registry validate`: problems in file order, and what was checked."""

    ref: str
    commit: str | None
    configs: int
    problems: list[Problem] = field(default_factory=list)
    unchecked: int = 0
    """Configs on main with no lock tag anywhere: their immutability could not be checked."""

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors


def validate(
    git: Git,
    state: RegistryState,
    *,
    strict: bool = False,
    tokenizer_files: Mapping[str, Path] | None = None,
    main_ref: str | None = None,
) -> Report:
    """Check `state` (read by `read_state`, whose problems it carries) against every invariant.

    `strict` turns "tokenizer not available" into an error and allows a hub download;
    `tokenizer_files` maps tokenizer names to local tokenizer.json files.
    """
    report = Report(ref=state.ref, commit=state.commit, configs=len(state.files))
    report.problems.extend(state.problems)
    main = main_ref or _main_ref(git)
    if main is not None:
        if state.files:
            git.require_history("validate (tags and provenance are checked against main)")
        untagged = untagged_problems(git, state, main)
        report.unchecked = len(untagged)
        report.problems.extend(untagged)
        history = main_history(git, state, main)
        report.problems.extend(identity_problems(git, state, main))
        report.problems.extend(tag_problems(git, state, main, history))
        report.problems.extend(provenance_problems(git, state, main, history))
    report.problems.extend(tokenizer_problems(state, strict, tokenizer_files or {},
                                              repo_root=git.root))
    report.problems.sort(key=lambda p: (p.path, p.line, p.severity))
    return report


def _main_ref(git: Git) -> str | None:
    try:
        return git.desired_ref(fetch=False)
    except RegistryError:
        return None


def untagged_problems(git: Git, state: RegistryState, main: str) -> list[Problem]:
    """Configs on main without a lock tag, after fetching the ones origin has (a clone made
    with --no-tags has none): each is a warning, and `validate` does not call the result a
    plain "ok", since their immutability went unchecked."""
    settings = state.settings
    on_tree = {path for _mode, _blob, path in git.ls_configs(main)}
    on_main = {path: file.config.chunk_version for path, file in state.files.items()
               if file.config is not None and path in on_tree}
    if not on_main:
        return []
    tags = git.fetch_tags(settings.tag_prefix, [settings.tag_name(v) for v in on_main.values()],
                          required=True)
    return [Problem(path, 1, f"{version} has no lock tag {settings.tag_name(version)}, so "
                    "its immutability is not checked",
                    "run `registry tag --push` on main (CI tags every merge)", "warning")
            for path, version in sorted(on_main.items())
            if settings.tag_name(version) not in tags]


def identity_problems(git: Git, state: RegistryState, main: str) -> list[Problem]:
    """Where the tables live and whose they are cannot change once configs are locked on
    main: the reconciler refuses to move tables (tables.schema, tables.base_name) and a
    changed `registry:` name disowns every table the registry created. Adding a name where
    main has none is allowed (the tables made under the legacy identity stay owned)."""
    raw = git.show(main, PRODUCTION_PATH)
    if raw is None or state.production is None or not _has_configs(git, main):
        return []
    try:
        before, _ = load_production(raw, f"{main}:{PRODUCTION_PATH}")
    except RegistryError:
        return []
    now = state.settings
    problems = []
    if (before.schema, before.base_name) != (now.schema, now.base_name):
        problems.append(Problem(
            PRODUCTION_PATH, 1, f"tables changed from {before.legacy_identity} to "
            f"{now.legacy_identity}: the reconciler refuses to move the tables of configs "
            f"locked on {main}", "restore tables.schema/base_name; start a new registry for "
            "other tables"))
    if before.registry is not None and before.registry != now.registry:
        problems.append(Problem(
            PRODUCTION_PATH, 1, f"registry changed from {before.registry} to "
            f"{now.registry or 'none'}: every table it created carries {before.registry}, "
            "so the reconciler would no longer own them", f"restore `registry: "
            f"{before.registry}`"))
    return problems


def _has_configs(git: Git, ref: str) -> bool:
    """Whether `ref` has a locked config (tables may exist for it)."""
    return any(name.endswith(".yaml") and name != PRODUCTION_PATH
               for name in git.run("ls-tree", "--name-only", ref, f"{CONFIG_DIR}/").split())


@dataclass
class MainHistory:
    """What the history checks ask of main, asked once for both: the tags, the blob each tag's
    config has, every commit on main with its parents, and which commit introduced each
    config (see `main_history`)."""

    tags: dict[str, TagInfo]
    named: dict[str, str]
    blobs: dict[str, str | None]
    parents: dict[str, tuple[str, ...]]
    introduced: dict[str, str]


def main_history(git: Git, state: RegistryState, main: str) -> MainHistory:
    """Tags, tagged blobs, main's commits and the introducing commit of every config, in time
    linear in configs.

    A config's tag normally names the commit that introduced it, and one batched cat-file
    proves it: the tagged commit has the file and its only parent has not (git's log leaves
    merges out of `--diff-filter=A`). Only configs no tag answers for (untagged on main, or a
    tag that fails the proof) go through `config_introductions`, whose `git log` diffs the
    whole configs/ tree at every commit: 2 s at 3,000 configs and growing with their square.
    A tag moved onto a commit that re-added a deleted config passes the proof; the content
    check against the tagged blob still holds for it."""
    prefix = state.settings.tag_prefix
    tags = git.tags(prefix)
    named = {name: name[len(prefix):] for name in tags}
    blobs = _tagged_blobs(git, tags, named)
    parents = git.parents(main)
    # Tags whose introducing commit matters: a config's, with the file, on main.
    candidates = {name: (tags[name].commit, config_path(version))
                  for name, version in named.items()
                  if is_version(version) and blobs[name] is not None
                  and tags[name].commit in parents}
    parent_names = [f"{parents[commit][0]}:{path}" for commit, path in candidates.values()
                    if len(parents[commit]) == 1]
    in_parent = git.object_headers(parent_names) if parent_names else {}
    introduced: dict[str, str] = {}
    for commit, path in candidates.values():
        first = parents[commit]
        if not first or (len(first) == 1 and in_parent[f"{first[0]}:{path}"] is None):
            introduced.setdefault(path, commit)
    on_main = {path for _mode, _blob, path in git.ls_configs(main)}
    unproven = {path for path in state.files if path in on_main}
    unproven |= {path for _commit, path in candidates.values()}
    unproven -= introduced.keys()
    if unproven:
        introduced.update(git.config_introductions(main, sorted(unproven)))
    return MainHistory(tags, named, blobs, parents, introduced)


def tag_problems(git: Git, state: RegistryState, main: str,
                 history: MainHistory | None = None) -> list[Problem]:
    """Locked configs must equal their tagged blob; tags must sit on main where the config was
    introduced. A fixed number of git calls whatever the count (see `main_history`)."""
    history = history or main_history(git, state, main)
    if not history.tags:
        return []
    problems: list[Problem] = []
    introduced = history.introduced
    for name, version in sorted(history.named.items()):
        tag = history.tags[name]
        path = config_path(version)
        if not is_version(version):
            problems.append(Problem(path, 1, f"tag {name} does not name a chunk_version",
                                    f"delete it with `git tag -d {name}`", "warning"))
            continue
        tagged_blob = history.blobs[name]
        short = tag.commit[:10]
        if tagged_blob is None:
            problems.append(Problem(path, 1, f"tag {name} points to commit {short}, which has no "
                                    f"{path}", "delete the tag; `registry tag` recreates it"))
            continue
        if tag.commit not in history.parents:
            problems.append(Problem(path, 1, f"tag {name} points to commit {short}, which is not "
                                    f"on {main}: the tagged config never reached main",
                                    "delete the tag; `registry tag` recreates it from main"))
        elif introduced.get(path) and introduced[path] != tag.commit:
            problems.append(Problem(path, 1, f"tag {name} was moved: it points to {short}, but "
                                    f"{path} was introduced by {introduced[path][:10]}",
                                    "restore the tag to the commit that introduced the config"))
        if not tag.annotated:
            problems.append(Problem(path, 1, f"tag {name} is a lightweight tag",
                                    "locks are annotated tags: `registry tag --push` replaces "
                                    "it with one on the same commit",
                                    "warning"))
        problems.extend(_tampering(state, path, name, tagged_blob))
    return problems


def _tagged_blobs(git: Git, tags: Mapping[str, TagInfo], named: Mapping[str, str]
                  ) -> dict[str, str | None]:
    """tag -> the blob of its config at the tagged commit (None: no such file).

    A commit's tree never changes, so answers are cached by `commit:path` in .git; only new or
    moved tags reach git, through the persistent `cat-file --batch-check` (each lookup walks
    the commit's configs/ tree, which costs 0.3 s for 1,500 tags every run without the
    cache).

    Without the cache they are asked in the order of the config's path, which is the order
    the configs were locked in (a version starts with its lock time): consecutive commits'
    configs/ trees are deltas of each other, so git's delta cache rebuilds each from the
    last. In the order of the commit SHAs (random) every lookup rebuilt its tree from the
    base of its delta chain: 22 s against 3 s at 10,000 tags (2 shared cores, busy)."""
    cache = ParseCache(git.git_dir, "tagged-blobs.json")
    keys = {name: f"{tags[name].commit}:{config_path(version)}" for name, version in named.items()}
    missing = sorted({key for key in keys.values() if key not in cache},
                     key=lambda key: (key.partition(":")[2], key))
    if missing:
        for key, header in git.object_headers(missing).items():
            cache.put(key, header[1] if header is not None and header[0] == "blob" else None)
        cache.save()
    return {name: cache.get(key) for name, key in keys.items()}


def _tampering(state: RegistryState, path: str, tag: str, tagged_blob: str) -> list[Problem]:
    current = state.files.get(path)
    if current is None or current.blob == tagged_blob:
        return []
    return [Problem(path, 1, f"{path} differs from the locked blob tagged {tag} (tampering: a "
                    "locked config is immutable)", "restore the tagged content and lock a new "
                    "version for the change")]


def immutability_problems(git: Git, state: RegistryState) -> list[Problem]:
    """The errors of `validate`'s immutability checks (configs equal to their tagged blobs,
    tags neither moved nor off main), so the reconciler refuses what `validate` refuses
    before it touches the database. Without a main branch: the blob check alone."""
    main = _main_ref(git)
    if main is None:
        return tampering_problems(git, state)
    return moved_tag_problems(git, state.settings.tag_prefix) + [
        p for p in tag_problems(git, state, main) if p.severity == "error"]


def tampering_problems(git: Git, state: RegistryState) -> list[Problem]:
    """Only the immutability check (configs equal to their tagged blobs): two git calls."""
    prefix = state.settings.tag_prefix
    problems = moved_tag_problems(git, prefix)
    tags = git.tags(prefix)
    named = {name: name[len(prefix):] for name in tags if is_version(name[len(prefix):])}
    if not named:
        return problems
    for name, blob in _tagged_blobs(git, tags, named).items():
        if blob is not None:
            problems.extend(_tampering(state, config_path(named[name]), name, blob))
    return problems


def moved_tag_problems(git: Git, prefix: str) -> list[Problem]:
    """Lock tags the last fetch found moved to another commit at origin: tampering, since a
    lock tag is immutable. This clone keeps its own (the fetch never clobbers a tag)."""
    problems = []
    for name, moved in sorted(git.moved_tags.items()):
        version = name[len(prefix):]
        if not name.startswith(prefix) or not is_version(version):
            continue
        problems.append(Problem(
            config_path(version), 1, f"tag {name} was moved at origin: it names "
            f"{moved.remote[:10]} there, {moved.local[:10]} here (tampering: a lock tag is "
            "immutable)", f"restore it from this clone with `git push --force origin "
            f"refs/tags/{name}`; lock a new version for any change"))
    return problems


def provenance_problems(git: Git, state: RegistryState, main: str,
                        history: MainHistory | None = None) -> list[Problem]:
    """Warn about configs whose introducing commit was pushed straight to main: not a merge,
    not a squashed pull request `(#N)`, not the repository's first commit."""
    wanted = {path for path in state.files}
    if not wanted:
        return []
    introduced = (history or main_history(git, state, main)).introduced
    first_parent: dict[str, tuple[int, str]] = {}
    for line in git.run("log", "--first-parent", "--format=%H%x00%P%x00%s", main).splitlines():
        sha, parent_list, subject = line.split("\0", 2)
        first_parent[sha] = (len(parent_list.split()), subject)
    problems = []
    for path, commit in introduced.items():
        if path not in wanted or commit not in first_parent:
            continue
        parents, subject = first_parent[commit]
        if parents == 1 and not _looks_squashed(subject):
            problems.append(Problem(path, 1, f"{path} reached {main} in commit {commit[:10]} "
                                    "without a pull request", "lock through a PR: `registry lock "
                                    "--pr`, then merge it", "warning"))
    return problems


def _looks_squashed(subject: str) -> bool:
    """GitHub's squash and rebase merges end the subject with `(#123)`."""
    stripped = subject.rstrip()
    if not stripped.endswith(")") or "(#" not in stripped:
        return False
    number = stripped[stripped.rfind("(#") + 2 : -1]
    return number.isdigit()


def tokenizer_problems(
    state: RegistryState, strict: bool, tokenizer_files: Mapping[str, Path],
    repo_root: Path | None = None,
) -> list[Problem]:
    """Each config's tokenizer, when available, must hash to its tokenizer_hash (a file pinned
    at tokenizers/<name>/tokenizer.json in `repo_root` is found offline)."""
    problems: list[Problem] = []
    by_name: dict[str, list[str]] = {}
    for path, file in sorted(state.files.items()):
        if file.config is not None:
            by_name.setdefault(file.config.tokenizer_name, []).append(path)
    for name, paths in by_name.items():
        try:
            resolved = resolve(name, tokenizer_files.get(name), allow_download=strict,
                               repo_root=repo_root)
        except TokenizerUnavailable as err:
            others = f" (and {len(paths) - 1} more configs)" if len(paths) > 1 else ""
            problems.append(Problem(paths[0], 1, f"cannot check the tokenizer hash{others}: "
                                    f"{err.message}",
                                    err.fix, "error" if strict else "warning"))
            continue
        special = None
        for path in paths:
            config = state.files[path].config
            assert config is not None
            if config.tokenizer_hash != resolved.hash:
                problems.append(Problem(path, 1, f"tokenizer {name} at {resolved.path} hashes to "
                                        f"{resolved.hash}, not the locked {config.tokenizer_hash}",
                                        "lock a new version with this tokenizer, or restore the "
                                        "tokenizer the config was locked with"))
                continue
            if special is None:
                special = special_token_count(resolved.load())
            needed = config.chunk_size + PREFIX_BUDGET_TOKENS + special
            if needed > config.token_budget:
                problems.append(Problem(path, 1, f"chunk_size {config.chunk_size} + prefix budget "
                                        f"{PREFIX_BUDGET_TOKENS} + {special} special tokens of "
                                        f"{name} exceed the token budget {config.token_budget}",
                                        "lock a new version with a smaller --chunk-size"))
    return problems
