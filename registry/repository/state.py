"""The committed (desired) state of the registry at a ref: every locked config and
production.yaml, parsed and checked, with the problems found while reading them.

Reads are batched (one `ls-tree` per ref, blobs through one persistent `cat-file --batch`) and
parsed configs are cached by blob SHA in the parse cache, so a warm read parses nothing. The
checks that reading needs (file names, guardrails, versions, the production pointer) live in
`validation`; this module only reads and assembles.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registry.config import (
    CONFIG_DIR,
    ENVIRONMENT_NAME_RE,
    ENVIRONMENTS_DIR,
    PRODUCTION_ENVIRONMENT,
    PRODUCTION_FILE,
    PRODUCTION_PATH,
    LockedConfig,
    ProductionConfig,
    YamlDoc,
    config_path,
    embedder_problem,
    parse_yaml,
)
from registry.errors import ConfigInvalid, GitError, Problem, UnknownVersion, invalid
from registry.repository.config_schema import schema_problems
from registry.repository.git import Git, git_blob_sha
from registry.repository.parse_cache import ParseCache
from registry.repository.validation import (
    environment_problems,
    file_name_problems,
    guardrail_problems,
    repo_level_problems,
)

WORKTREE = "WORKTREE"
"""The pseudo-ref for the working tree (what `registry validate` reads by default)."""


@dataclass(frozen=True)
class ConfigFile:
    """One locked config as found in the repo: parsed config (or None) and where it came from."""

    path: str
    blob: str
    config: LockedConfig | None
    problems: tuple[Problem, ...] = ()


@dataclass(frozen=True)
class EnvironmentFile:
    """One environment other than production, as declared in configs/environments/: its
    settings (None when the file is invalid) and the line of each top-level key."""

    name: str
    path: str
    blob: str
    settings: ProductionConfig | None
    lines: dict[str, int] = field(default_factory=dict)

    def line_of(self, key: str) -> int:
        return self.lines.get(key, 1)


@dataclass
class RegistryState:
    """The desired state at one ref: every locked config and production.yaml, plus the problems
    found while reading them (an invalid state is reported, never half-applied)."""

    ref: str
    commit: str | None
    files: dict[str, ConfigFile] = field(default_factory=dict)
    production: ProductionConfig | None = None
    production_blob: str | None = None
    production_line: int = 1
    experiment_line: int = 1
    production_key_lines: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    environment_files: dict[str, EnvironmentFile] = field(default_factory=dict)
    """Environments other than production, by name (configs/environments/<name>.yaml)."""
    environment: str = PRODUCTION_ENVIRONMENT
    """The environment this state acts for: `settings` are its settings (`environments.select`
    gives the state of another one)."""

    _configs: tuple[dict[str, ConfigFile], int, dict[str, LockedConfig]] | None = field(
        default=None, init=False, repr=False, compare=False)

    @property
    def configs(self) -> dict[str, LockedConfig]:
        """Valid configs by chunk_version (a file whose name disagrees is left out).

        Worked out once per `files` (the planner asks for it once per config: 60 s of 80 at
        3,000 configs when every access rebuilt it) and again when `files` is replaced or
        gains or loses a file; callers must not mutate the dict returned."""
        known = self._configs
        if known is not None and known[0] is self.files and known[1] == len(self.files):
            return known[2]
        out: dict[str, LockedConfig] = {}
        for file in self.files.values():
            if file.config is not None and file.path == config_path(file.config.chunk_version):
                out[file.config.chunk_version] = file.config
        self._configs = (self.files, len(self.files), out)
        return out

    @property
    def settings(self) -> ProductionConfig:
        """The settings of the environment this state acts for (production.yaml's by default)."""
        if self.environment != PRODUCTION_ENVIRONMENT:
            file = self.environment_files.get(self.environment)
            if file is not None and file.settings is not None:
                return file.settings
        return self.production_settings

    @property
    def production_settings(self) -> ProductionConfig:
        """production.yaml's settings, whichever environment this state acts for."""
        return self.production or ProductionConfig(production=None)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    def is_production(self, chunk_version: str) -> bool:
        return self.settings.production == chunk_version

    def production_config(self) -> LockedConfig | None:
        version = self.settings.production
        return self.configs.get(version) if version else None

    def require_valid(self) -> None:
        if self.errors:
            raise invalid(self.errors)

    def config(self, chunk_version: str) -> LockedConfig:
        if chunk_version == "production":
            found = self.production_config()
            if found is None:
                raise ConfigInvalid(
                    "production.yaml names no production config", where=PRODUCTION_PATH,
                    fix="promote a config first with `registry promote VERSION`",
                )
            return found
        if chunk_version not in self.configs:
            raise UnknownVersion(
                f"no locked config {chunk_version} on {self.ref}",
                fix="run `registry list` to see the versions",
            )
        return self.configs[chunk_version]


def parse_config_file(path: str, raw: bytes) -> tuple[LockedConfig | None, list[Problem]]:
    """Parse and schema-check one config file (no repo-level checks)."""
    try:
        doc = parse_yaml(raw, path)
    except ConfigInvalid as err:
        line = int(str(err.where).rsplit(":", 1)[1]) if err.where and ":" in err.where else 1
        return None, [Problem(path, line, err.message, err.fix)]
    problems = schema_problems(doc, "locked")
    if problems:
        return None, problems
    try:
        return LockedConfig.from_mapping(doc.data), []
    except ConfigInvalid as err:  # the embedder spec's own rules, beyond the schema
        return None, [embedder_problem(doc, err)]


def _problem_from_dict(data: dict[str, Any]) -> Problem:
    return Problem(data["path"], data["line"], data["message"], data["fix"], data["severity"])


_PARSED: dict[tuple[str, str], ConfigFile] = {}
"""(path, blob) -> the file as parsed in this process: a command that reads several refs
(plan reads head, base, and base again for the history's tag prefix) parses each blob once,
with or without the parse cache. A parse depends only on the path and the bytes."""
_PARSED_MAX = 100_000


def _parse_cached(cache: ParseCache, path: str, blob: str, read: Any) -> ConfigFile:
    known = _PARSED.get((path, blob))
    if known is not None:
        if (cache.get(blob) or {}).get("path") != path:
            cache.put(blob, _cache_entry(known))
        return known
    file = _parse_uncached(cache, path, blob, read)
    if len(_PARSED) >= _PARSED_MAX:
        _PARSED.clear()
    _PARSED[(path, blob)] = file
    return file


def _cache_entry(file: ConfigFile) -> dict[str, Any]:
    return {
        "path": file.path,
        "config": file.config.to_dict() if file.config else None,
        "problems": [
            {"path": p.path, "line": p.line, "message": p.message, "fix": p.fix,
             "severity": p.severity}
            for p in file.problems
        ],
    }


def _parse_uncached(cache: ParseCache, path: str, blob: str, read: Any) -> ConfigFile:
    hit = cache.get(blob)
    if hit is not None and hit.get("path") == path:
        config = LockedConfig.from_mapping(hit["config"]) if hit["config"] else None
        return ConfigFile(path, blob, config, tuple(_problem_from_dict(p) for p in hit["problems"]))
    config, problems = parse_config_file(path, read())
    file = ConfigFile(path, blob, config, tuple(problems))
    cache.put(blob, _cache_entry(file))
    return file


def read_state(git: Git, ref: str = WORKTREE, *, use_cache: bool = True) -> RegistryState:
    """The registry at `ref` (a commit-ish, or WORKTREE for the working tree)."""
    cache = ParseCache(git.git_dir if use_cache else None)
    contents: dict[str, bytes] = {}
    if ref == WORKTREE:
        state = RegistryState(ref=ref, commit=None)
        entries, production_raw, contents = _worktree_entries(git.root, state)
    else:
        commit = git.resolve(ref)
        if commit is None:
            raise GitError(f"ref {ref} does not exist", fix="pass --ref with a branch, tag or SHA")
        state = RegistryState(ref=ref, commit=commit)
        tree = git.ls_configs(commit)
        entries = [(mode, sha, path) for mode, sha, path in tree]
        production_entry = next((e for e in tree if e[2] == PRODUCTION_PATH), None)
        production_raw = None
        if production_entry is not None:
            if production_entry[0] == "120000":
                state.problems.append(Problem(
                    PRODUCTION_PATH, 1, "production.yaml must be a regular file, not a symlink",
                    "commit the file itself"))
            else:
                production_raw = git.read_blobs([production_entry[1]])[production_entry[1]]
    environment_entries = [e for e in entries if e[2].startswith(f"{ENVIRONMENTS_DIR}/")]
    entries = [e for e in entries if not e[2].startswith(f"{ENVIRONMENTS_DIR}/")]
    files, problems = file_name_problems(entries)
    state.problems.extend(problems)
    # A cached parse is reused only at the same path (the path is in its problems), so a blob
    # cached under another name (a renamed file) is read again.
    misses = sorted({blob for path, blob in files if (path, blob) not in _PARSED
                     and (cache.get(blob) or {}).get("path") != path} - contents.keys())
    if misses:
        contents.update(git.read_blobs(misses))
    for path, blob in files:
        file = _parse_cached(cache, path, blob, lambda b=blob: contents[b])
        state.files[path] = file
        state.problems.extend(file.problems)
        if file.config is not None:
            state.problems.extend(guardrail_problems(git, file, contents))
    _read_production(state, production_raw, cache)
    cache.save()
    _read_environments(git, state, environment_entries, contents)
    state.problems.extend(repo_level_problems(git, state, contents))
    state.problems.extend(environment_problems(state))
    state.problems.sort(key=lambda p: (p.path, p.line))
    return state


def committed_state(git: Git, ref: str | None = None, *, fetch: bool = False) -> RegistryState:
    """The registry as committed on `ref` (default: origin/main, fetched first with `fetch`,
    else main): what the reconciler, status, ingest, eval and health act on."""
    return read_state(git, git.desired_ref(ref, fetch=fetch))


def _read_production(state: RegistryState, raw: bytes | None, cache: ParseCache) -> None:
    """production.yaml; a valid one is cached by blob SHA like the configs (a warm read then
    needs neither the YAML parser nor jsonschema)."""
    if raw is not None:
        blob = git_blob_sha(raw)
        hit = cache.get(f"production:{blob}")
        if hit is not None:
            state.production = ProductionConfig.from_mapping(hit["data"])
            state.production_line = hit["line"]
            state.experiment_line = hit.get("experiment_line", 1)
            state.production_key_lines = dict(hit.get("lines") or {})
            state.production_blob = blob
            return
    if raw is None:
        if not any(p.path == PRODUCTION_PATH for p in state.problems):
            state.problems.append(Problem(PRODUCTION_PATH, 1, "production.yaml is missing",
                                          "create it with `production: null` or a locked version"))
        return
    try:
        doc: YamlDoc = parse_yaml(raw, PRODUCTION_PATH)
    except ConfigInvalid as err:
        line = int(str(err.where).rsplit(":", 1)[1]) if err.where and ":" in err.where else 1
        state.problems.append(Problem(PRODUCTION_PATH, line, err.message, err.fix))
        return
    problems = schema_problems(doc, "production")
    state.production_line = doc.line_of("production")
    state.experiment_line = doc.line_of("experiment", "candidate")
    state.production_key_lines = {str(k[0]): n for k, n in doc.lines.items() if len(k) == 1}
    if problems:
        state.problems.extend(problems)
        return
    state.production = ProductionConfig.from_mapping(doc.data)
    state.production_blob = git_blob_sha(raw)
    cache.put(f"production:{state.production_blob}",
              {"data": doc.data, "line": state.production_line,
               "experiment_line": state.experiment_line,
               "lines": state.production_key_lines})


def _read_environments(
    git: Git, state: RegistryState, entries: list[tuple[str, str, str]],
    contents: dict[str, bytes],
) -> None:
    """configs/environments/<name>.yaml: each a regular file named after its environment,
    checked against the environment schema (production.yaml's with `serves:`)."""
    wanted = [sha for mode, sha, _ in entries if mode in ("100644", "100755") and sha
              and sha not in contents]
    if wanted:
        contents.update(git.read_blobs(wanted))
    production = state.production_settings
    for mode, blob, path in entries:
        folder, _, file_name = path.rpartition("/")
        name = file_name.removesuffix(".yaml")
        if not file_name.endswith((".yaml", ".yml")):
            continue
        if mode == "120000" or mode not in ("100644", "100755"):
            state.problems.append(Problem(path, 1, "environment files must be regular files",
                                          "commit the file itself"))
            continue
        if (folder != ENVIRONMENTS_DIR or not file_name.endswith(".yaml")
                or not ENVIRONMENT_NAME_RE.fullmatch(name) or name == PRODUCTION_ENVIRONMENT):
            state.problems.append(Problem(
                path, 1, "an environment file is configs/environments/<name>.yaml, the name "
                "lowercase letters, digits and dashes (at most 21), not production",
                "rename it, e.g. configs/environments/staging.yaml (production is "
                "configs/production.yaml)"))
            continue
        try:
            doc = parse_yaml(contents[blob], path)
        except ConfigInvalid as err:
            line = int(str(err.where).rsplit(":", 1)[1]) if err.where and ":" in err.where else 1
            state.problems.append(Problem(path, line, err.message, err.fix))
            continue
        problems = schema_problems(doc, "environment")
        state.problems.extend(problems)
        lines = {str(key[0]): line for key, line in doc.lines.items() if len(key) == 1}
        settings = None if problems else ProductionConfig.for_environment(
            name, doc.data, production)
        state.environment_files[name] = EnvironmentFile(name, path, blob, settings, lines)


def _worktree_entries(
    root: Path, state: RegistryState
) -> tuple[list[tuple[str, str, str]], bytes | None, dict[str, bytes]]:
    """configs/ of the working tree as (mode, blob sha, path) entries, production.yaml's bytes
    and the bytes of each blob; symlinks are reported, never followed."""
    config_dir = root / CONFIG_DIR
    entries: list[tuple[str, str, str]] = []
    contents: dict[str, bytes] = {}
    production_raw: bytes | None = None
    if config_dir.is_symlink() or not config_dir.is_dir():
        state.problems.append(Problem(CONFIG_DIR, 1, "configs/ is missing or not a directory",
                                      "create configs/ with production.yaml"))
        return entries, None, contents
    for item in sorted(config_dir.rglob("*")):
        rel = item.relative_to(root).as_posix()
        if item.is_symlink():
            if rel == PRODUCTION_PATH or rel.endswith((".yaml", ".yml")):
                entries.append(("120000", "", rel))
            continue
        if not item.is_file():
            continue
        if rel == PRODUCTION_PATH:
            production_raw = _read_file(item, rel, state)
            continue
        if not rel.endswith((".yaml", ".yml")):
            continue
        raw = _read_file(item, rel, state)
        if raw is not None:
            blob = git_blob_sha(raw)
            contents[blob] = raw
            entries.append(("100644", blob, rel))
    if production_raw is None and (config_dir / PRODUCTION_FILE).is_symlink():
        state.problems.append(Problem(PRODUCTION_PATH, 1, "production.yaml must be a regular file, "
                                      "not a symlink", "commit the file itself"))
    return entries, production_raw, contents


def _read_file(item: Path, rel: str, state: RegistryState) -> bytes | None:
    try:
        return item.read_bytes()
    except OSError as err:
        state.problems.append(Problem(rel, 1, f"cannot read the file: {err.strerror}",
                                      "check its permissions"))
        return None

