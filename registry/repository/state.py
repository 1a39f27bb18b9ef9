"""The registry repository: desired state at a ref, and commits on branches that never touch the
user's checkout.

Reads are batched (one `ls-tree`, one `for-each-ref`, one `log` per question, never one git call
per config or tag) and parsed configs are cached by blob SHA, which is safe because a blob SHA
names its content. Writes build commits with plumbing in a private index, so `registry lock` on
a dirty checkout or another branch leaves both exactly as they were.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry.config import (
    CONFIG_DIR,
    PRODUCTION_FILE,
    VERSION_RE,
    LockedConfig,
    ProductionConfig,
    YamlDoc,
    guardrail_violations,
    parse_yaml,
)
from registry.errors import ConfigInvalid, GitError, Problem, invalid

if TYPE_CHECKING:
    import git

PRODUCTION_PATH = f"{CONFIG_DIR}/{PRODUCTION_FILE}"
WORKTREE = "WORKTREE"
"""The pseudo-ref for the working tree (what `registry validate` reads by default)."""
CACHE_FORMAT = 1


def git_blob_sha(data: bytes) -> str:
    """The SHA git gives `data` as a blob, so working-tree files share the cache with commits."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


class Git:
    """A repository, driven through the `git` command (batched plumbing) and GitPython."""

    def __init__(self, path: Path | str) -> None:
        self.requested = Path(path)
        try:
            out = subprocess.run(
                ["git", "-C", str(self.requested), "rev-parse", "--show-toplevel",
                 "--absolute-git-dir"],
                capture_output=True, text=True, check=False,
            )
        except FileNotFoundError:
            raise GitError("git is not installed", fix="install git") from None
        if out.returncode != 0:
            raise GitError(
                f"{self.requested} is not a git repository",
                fix="pass --repo with the registry repository's path, or run `git init` there",
            )
        top, git_dir = out.stdout.splitlines()
        self.root = Path(top)
        self.git_dir = Path(git_dir)

    # -- running git --------------------------------------------------------------------------

    def run(
        self,
        *args: str,
        input: bytes | None = None,
        env: dict[str, str] | None = None,
        check: bool = True,
    ) -> str:
        completed = self.run_bytes(*args, input=input, env=env, check=check)
        return completed.decode("utf-8", errors="replace")

    def run_bytes(
        self,
        *args: str,
        input: bytes | None = None,
        env: dict[str, str] | None = None,
        check: bool = True,
    ) -> bytes:
        full_env = {**os.environ, **env} if env else None
        proc = subprocess.run(
            ["git", "-C", str(self.root), *args],
            input=input, capture_output=True, env=full_env, check=False,
        )
        if check and proc.returncode != 0:
            message = proc.stderr.decode("utf-8", errors="replace").strip().splitlines()
            reason = message[-1] if message else f"exit {proc.returncode}"
            raise GitError(f"git {args[0]} failed: {reason}", where=str(self.root))
        return proc.stdout

    @cached_property
    def repo(self) -> git.Repo:
        """The GitPython view of the same repository (imported only when a command needs it)."""
        import git

        return git.Repo(self.root)

    # -- refs -----------------------------------------------------------------------------------

    def resolve(self, ref: str) -> str | None:
        out = self.run("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", check=False).strip()
        return out or None

    def has_remote(self, name: str = "origin") -> bool:
        return name in self.run("remote").split()

    def main_branch(self) -> str:
        """The local main branch: `main`, else `master`, else the current branch."""
        for name in ("main", "master"):
            if self.resolve(f"refs/heads/{name}"):
                return name
        current = self.run("symbolic-ref", "--quiet", "--short", "HEAD", check=False).strip()
        if current and self.resolve(f"refs/heads/{current}"):
            return current
        raise GitError("the repository has no main branch (no commits yet)",
                       fix="commit configs/ to a branch named main")

    def desired_ref(self, ref: str | None = None, fetch: bool = True) -> str:
        """The ref the reconciler reads: `ref` if given, `origin/main` when there is a remote
        (fetched first), else local `main`."""
        if ref:
            if not self.resolve(ref):
                raise GitError(
                    f"ref {ref} does not exist", fix="pass --ref with a branch, tag or SHA"
                )
            return ref
        if self.has_remote("origin"):
            if fetch:
                self.fetch()
            for name in ("main", "master"):
                if self.resolve(f"refs/remotes/origin/{name}"):
                    return f"origin/{name}"
        return self.main_branch()

    def fetch(self, remote: str = "origin") -> None:
        """Fetch branches and tags, unless `ls-remote` shows nothing new: a no-op `git fetch`
        walks every local ref (70 ms with 1,500 tags), `ls-remote` plus one `for-each-ref`
        17-36 ms, and most runs of plan, status and --watch find nothing new."""
        if not self._remote_moved(remote):
            return
        self.run("fetch", "--quiet", "--tags", "--prune", remote)

    def _remote_moved(self, remote: str) -> bool:
        """Whether a fetch would change a remote-tracking branch or bring a tag."""
        advertised = self.run("ls-remote", "--heads", "--tags", remote)
        namespaces = [f"refs/remotes/{remote}/"]
        if "\trefs/tags/" in advertised:
            namespaces.append("refs/tags/")
        local: dict[str, str] = {}
        for line in self.run("for-each-ref", "--format=%(refname) %(objectname)",
                             *namespaces).splitlines():
            name, sha = line.rsplit(" ", 1)
            local[name] = sha
        local.pop(f"refs/remotes/{remote}/HEAD", None)
        wanted: dict[str, str] = {}
        for line in advertised.splitlines():
            sha, _, name = line.partition("\t")
            if name.endswith("^{}"):
                continue
            if name.startswith("refs/heads/"):
                name = f"refs/remotes/{remote}/" + name.removeprefix("refs/heads/")
            wanted[name] = sha
        tracking = {name for name in local if name.startswith(f"refs/remotes/{remote}/")}
        branches = {name for name in wanted if name.startswith(f"refs/remotes/{remote}/")}
        return tracking != branches or any(local.get(n) != sha for n, sha in wanted.items())

    # -- reading trees --------------------------------------------------------------------------

    def ls_configs(self, ref: str) -> list[tuple[str, str, str]]:
        """(mode, blob sha, path) of every entry under configs/ at `ref`, in one call."""
        out = self.run("ls-tree", "-r", "--full-tree", "-z", ref, "--", f"{CONFIG_DIR}/")
        entries = []
        for record in out.split("\0"):
            if not record:
                continue
            meta, path = record.split("\t", 1)
            mode, _kind, sha = meta.split()
            entries.append((mode, sha, path))
        return entries

    def read_blobs(self, shas: list[str]) -> dict[str, bytes]:
        """Contents of many blobs through one `git cat-file --batch`."""
        if not shas:
            return {}
        out = self.run_bytes("cat-file", "--batch", input="\n".join(shas).encode() + b"\n")
        blobs: dict[str, bytes] = {}
        pos = 0
        for sha in shas:
            header_end = out.index(b"\n", pos)
            header = out[pos:header_end].split()
            if len(header) < 3 or header[1] == b"missing":
                raise GitError(f"blob {sha} is missing from the repository")
            size = int(header[2])
            start = header_end + 1
            blobs[sha] = out[start : start + size]
            pos = start + size + 1
        return blobs

    def show(self, ref: str, path: str) -> bytes | None:
        proc = subprocess.run(
            ["git", "-C", str(self.root), "cat-file", "blob", f"{ref}:{path}"],
            capture_output=True, check=False,
        )
        return proc.stdout if proc.returncode == 0 else None

    def tags(self, prefix: str) -> dict[str, TagInfo]:
        """Every tag under `prefix` with the commit it names, in one `for-each-ref`."""
        out = self.run(
            "for-each-ref",
            "--format=%(refname:strip=2)%00%(objecttype)%00%(objectname)%00%(*objectname)",
            f"refs/tags/{prefix.rstrip('/')}/" if prefix.endswith("/") else f"refs/tags/{prefix}",
        )
        tags = {}
        for line in out.splitlines():
            name, kind, sha, peeled = line.split("\0")
            commit = peeled if kind == "tag" else sha
            tags[name] = TagInfo(name=name, commit=commit, annotated=kind == "tag")
        return tags

    def config_introductions(self, ref: str) -> dict[str, str]:
        """configs/<file> -> the oldest commit on `ref`'s history that added it (one `git log`)."""
        out = self.run(
            "log", "--format=%x01%H", "--diff-filter=A", "--name-only", "--no-renames",
            ref, "--", f"{CONFIG_DIR}/",
        )
        added: dict[str, str] = {}
        commit = ""
        for line in out.splitlines():
            if line.startswith("\x01"):
                commit = line[1:]
            elif line:
                added[line] = commit  # log is newest first: the last write wins, the oldest add
        return added

    def identity(self) -> str:
        """`name <email>` from git config, as commits would be authored."""
        ident = self.run("var", "GIT_AUTHOR_IDENT", check=False).strip()
        if not ident or "<>" in ident:
            raise GitError(
                "git has no author identity",
                fix='run git config user.name "Your Name" and '
                "git config user.email you@example.com",
            )
        return ident.rsplit(" ", 2)[0]

    # -- writing commits without a checkout -----------------------------------------------------

    def commit_files(
        self,
        base: str,
        changes: dict[str, bytes | None],
        message: str,
    ) -> str:
        """A commit on top of `base` that writes (bytes) or deletes (None) the given paths.

        Built in a private index file, so neither the user's index nor working tree moves.
        """
        base_sha = self.resolve(base)
        if base_sha is None:
            raise GitError(f"ref {base} does not exist")
        with tempfile.TemporaryDirectory(prefix="registry-index-") as tmp:
            env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
            self.run("read-tree", base_sha, env=env)
            for path, content in changes.items():
                if content is None:
                    self.run("update-index", "--force-remove", "--", path, env=env)
                else:
                    blob = self.run("hash-object", "-w", "--stdin", input=content).strip()
                    self.run(
                        "update-index", "--add", "--cacheinfo", f"100644,{blob},{path}", env=env
                    )
            tree = self.run("write-tree", env=env).strip()
        return self.run("commit-tree", tree, "-p", base_sha, "-m", message).strip()

    def revert(self, commit: str, onto: str, message: str, *, mainline: int | None = None) -> str:
        """A real `git revert` of `commit` on top of `onto`, committed with `message`.

        Runs in a temporary detached worktree (removed afterwards, hooks off), so the user's
        checkout, index and current branch never move. `mainline=1` reverts a merge commit
        against its first parent, i.e. undoes everything its pull request brought in.
        """
        onto_sha = self.resolve(onto)
        if onto_sha is None:
            raise GitError(f"ref {onto} does not exist")
        no_hooks = ("-c", f"core.hooksPath={os.devnull}")
        with tempfile.TemporaryDirectory(prefix="registry-revert-") as tmp:
            tree_dir = Path(tmp) / "tree"
            self.run(*no_hooks, "worktree", "add", "--quiet", "--detach", str(tree_dir), onto_sha)
            try:
                merge = ["-m", str(mainline)] if mainline else []
                args = ["revert", "--no-commit", *merge, commit]
                proc = subprocess.run(
                    ["git", *no_hooks, "-C", str(tree_dir), *args],
                    capture_output=True, check=False,
                )
                if proc.returncode != 0:
                    conflicted = subprocess.run(
                        ["git", "-C", str(tree_dir), "diff", "--name-only", "--diff-filter=U"],
                        capture_output=True, text=True, check=False,
                    ).stdout.split()
                    where = ", ".join(conflicted) or "the tree"
                    raise GitError(
                        f"git revert of {commit[:10]} conflicts with later changes to {where}",
                        where=str(self.root),
                        fix="make the change by hand on a branch, e.g. `registry promote VERSION`",
                    )
                tree = subprocess.run(
                    ["git", "-C", str(tree_dir), "write-tree"],
                    capture_output=True, text=True, check=True,
                ).stdout.strip()
            finally:
                self.run("worktree", "remove", "--force", str(tree_dir), check=False)
                self.run("worktree", "prune", check=False)
        return self.run("commit-tree", tree, "-p", onto_sha, "-m", message).strip()

    def create_branch(self, branch: str, commit: str) -> None:
        """Create `branch` at `commit`; refuse to move an existing branch."""
        if self.resolve(f"refs/heads/{branch}"):
            raise GitError(
                f"branch {branch} already exists",
                fix=f"delete it with `git branch -D {branch}` or merge it first",
            )
        self.run("update-ref", f"refs/heads/{branch}", commit, "")

    def push(self, *refspecs: str, remote: str = "origin") -> None:
        if not self.has_remote(remote):
            raise GitError(f"there is no remote named {remote}", fix="git remote add origin <url>")
        self.run("push", "--quiet", remote, *refspecs)


@dataclass(frozen=True)
class TagInfo:
    name: str
    commit: str
    annotated: bool


@dataclass(frozen=True)
class ConfigFile:
    """One locked config as found in the repo: parsed config (or None) and where it came from."""

    path: str
    blob: str
    config: LockedConfig | None
    problems: tuple[Problem, ...] = ()


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
    problems: list[Problem] = field(default_factory=list)

    @property
    def configs(self) -> dict[str, LockedConfig]:
        """Valid configs by chunk_version (a file whose name disagrees is left out)."""
        out: dict[str, LockedConfig] = {}
        for file in self.files.values():
            if file.config is not None and file.path == config_path(file.config.chunk_version):
                out[file.config.chunk_version] = file.config
        return out

    @property
    def settings(self) -> ProductionConfig:
        return self.production or ProductionConfig(production=None)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    def is_production(self, chunk_version: str) -> bool:
        return self.settings.production == chunk_version

    def production_config(self) -> LockedConfig | None:
        version = self.settings.production
        return self.configs.get(version) if version else None

    def table_name(self, chunk_version: str) -> str:
        return self.settings.table_name(chunk_version)

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
            raise ConfigInvalid(
                f"no locked config {chunk_version} on {self.ref}",
                fix="run `registry list` to see the versions",
            )
        return self.configs[chunk_version]


def config_path(chunk_version: str) -> str:
    return f"{CONFIG_DIR}/{chunk_version}.yaml"


# ---------------------------------------------------------------------------------------------
# The parse cache: blob sha -> parsed result, safe forever because the sha names the content.


@functools.cache
def _cache_key() -> str:
    from registry.repository.config_schema import SCHEMA_FILES, schema_dir

    digest = hashlib.sha256(str(CACHE_FORMAT).encode())
    for name in sorted(SCHEMA_FILES.values()):
        digest.update((schema_dir() / name).read_bytes())
    digest.update((Path(__file__).parent.parent / "config.py").read_bytes())
    return digest.hexdigest()[:16]


class ParseCache:
    """What was worked out from immutable git objects (parsed configs by blob SHA, a tagged
    commit's blob by `commit:path`), as JSON in `.git/chunk-registry/NAME`; a miss just works
    it out again."""

    def __init__(self, git_dir: Path | None, name: str = "parsed.json") -> None:
        self.path = git_dir / "chunk-registry" / name if git_dir else None
        self.entries: dict[str, Any] = {}
        self.dirty = False
        self.key = ""
        if self.path and self.path.is_file():
            try:
                stored = json.loads(self.path.read_text("utf-8"))
                self.key = _cache_key()
                if stored.get("key") == self.key:
                    self.entries = stored["entries"]
            except (OSError, ValueError, KeyError, AttributeError):
                self.entries = {}

    def get(self, blob: str) -> Any:
        return self.entries.get(blob)

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def put(self, blob: str, value: Any) -> None:
        self.entries[blob] = value
        self.dirty = True

    def save(self) -> None:
        if not (self.path and self.dirty):
            return
        try:
            self.path.parent.mkdir(exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"key": self.key or _cache_key(), "entries": self.entries}))
            tmp.replace(self.path)
        except OSError:
            pass  # a read-only .git only costs speed


def parse_config_file(path: str, raw: bytes) -> tuple[LockedConfig | None, list[Problem]]:
    """Parse and schema-check one config file (no repo-level checks)."""
    from registry.repository.config_schema import schema_problems

    try:
        doc = parse_yaml(raw, path)
    except ConfigInvalid as err:
        line = int(str(err.where).rsplit(":", 1)[1]) if err.where and ":" in err.where else 1
        return None, [Problem(path, line, err.message, err.fix)]
    problems = schema_problems(doc, "locked")
    if problems:
        return None, problems
    return LockedConfig.from_mapping(doc.data), []


def _problem_from_dict(data: dict[str, Any]) -> Problem:
    return Problem(data["path"], data["line"], data["message"], data["fix"], data["severity"])


def _parse_cached(cache: ParseCache, path: str, blob: str, read: Any) -> ConfigFile:
    hit = cache.get(blob)
    if hit is not None and hit.get("path") == path:
        config = LockedConfig.from_mapping(hit["config"]) if hit["config"] else None
        return ConfigFile(path, blob, config, tuple(_problem_from_dict(p) for p in hit["problems"]))
    config, problems = parse_config_file(path, read())
    cache.put(
        blob,
        {
            "path": path,
            "config": config.to_dict() if config else None,
            "problems": [
                {"path": p.path, "line": p.line, "message": p.message, "fix": p.fix,
                 "severity": p.severity}
                for p in problems
            ],
        },
    )
    return ConfigFile(path, blob, config, tuple(problems))


def _file_name_problems(
    entries: list[tuple[str, str, str]],
) -> tuple[list[tuple[str, str]], list[Problem]]:
    """Split configs/ entries into config files to parse and problems with the names."""
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


def _repo_level_problems(git: Git, state: RegistryState, contents: dict[str, bytes]) -> None:
    """File name == version, versions unique, production names an existing config."""
    seen: dict[str, str] = {}
    for file in state.files.values():
        if file.config is None:
            continue
        version = file.config.chunk_version
        expected = config_path(version)
        if file.path != expected:
            state.problems.append(_doc(git, file, contents).problem(
                ("chunk_version",), f"file name does not match chunk_version {version}",
                f"rename the file to {expected} or fix chunk_version"))
        if version in seen:
            state.problems.append(_doc(git, file, contents).problem(
                ("chunk_version",), f"chunk_version {version} is already used by {seen[version]}",
                "every locked config needs its own version"))
        seen.setdefault(version, file.path)
    production = state.production
    if (
        production is not None
        and production.production is not None
        and production.production not in state.configs
    ):
        state.problems.append(
            Problem(PRODUCTION_PATH, state.production_line, f"production names "
                    f"{production.production}, which is not a locked config in {CONFIG_DIR}/",
                    "lock that version first, or point production at an existing one")
        )


def _doc(git: Git, file: ConfigFile, contents: dict[str, bytes]) -> YamlDoc:
    """The parsed file with line numbers, re-read only when a problem needs a line."""
    raw = contents.get(file.blob) or git.read_blobs([file.blob])[file.blob]
    return parse_yaml(raw, file.path)


def _guardrail_problems(git: Git, file: ConfigFile, contents: dict[str, bytes]) -> list[Problem]:
    assert file.config is not None
    violations = guardrail_violations(file.config)
    if not violations:
        return []
    doc = _doc(git, file, contents)
    return [doc.problem((field_name,), message, fix) for field_name, message, fix in violations]


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
    files, problems = _file_name_problems(entries)
    state.problems.extend(problems)
    # A cached parse is reused only at the same path (the path is in its problems), so a blob
    # cached under another name (a renamed file) is read again.
    misses = sorted({blob for path, blob in files
                     if (cache.get(blob) or {}).get("path") != path} - contents.keys())
    if misses:
        contents.update(git.read_blobs(misses))
    for path, blob in files:
        file = _parse_cached(cache, path, blob, lambda b=blob: contents[b])
        state.files[path] = file
        state.problems.extend(file.problems)
        if file.config is not None:
            state.problems.extend(_guardrail_problems(git, file, contents))
    _read_production(state, production_raw, cache)
    cache.save()
    _repo_level_problems(git, state, contents)
    state.problems.sort(key=lambda p: (p.path, p.line))
    return state


def committed_state(repo: Path | str, ref: str | None = None) -> RegistryState:
    """The registry as committed on `ref` (default: origin/main or main, not fetched)."""
    git = Git(repo)
    return read_state(git, git.desired_ref(ref, fetch=False))


def _read_production(state: RegistryState, raw: bytes | None, cache: ParseCache) -> None:
    """production.yaml; a valid one is cached by blob SHA like the configs (a warm read then
    needs neither the YAML parser nor jsonschema)."""
    from registry.repository.config_schema import schema_problems

    if raw is not None:
        blob = git_blob_sha(raw)
        hit = cache.get(f"production:{blob}")
        if hit is not None:
            state.production = ProductionConfig.from_mapping(hit["data"])
            state.production_line = hit["line"]
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
    if problems:
        state.problems.extend(problems)
        return
    state.production = ProductionConfig.from_mapping(doc.data)
    state.production_blob = git_blob_sha(raw)
    cache.put(f"production:{state.production_blob}",
              {"data": doc.data, "line": state.production_line})


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


def is_version(text: str) -> bool:
    return VERSION_RE.fullmatch(text) is not None
