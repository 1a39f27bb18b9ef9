"""The git layer: one `git.Repo` (GitPython) per command, passed down to everything that reads or
writes the registry repository.

Blobs come through GitPython's object database (`repo.odb`, one persistent `git cat-file
--batch` process for the whole command, not one process per read), refs through its reference
objects, remotes and the remote URL through its config reader. A command runs through the
`repo.git` wrapper only where GitPython has no API (`ls-tree`, `ls-remote`, `log` with diffs,
`revert`, `verify-commit`) or where one batched call answers what GitPython would ask object by
object (each such place says what it measured). Writes build commits in a private index, so
`registry lock` on a dirty checkout or another branch leaves both exactly as they were.

`import git` costs about 70 ms of process start-up (measured: `python -c "import git"` 0.10 s
against 0.03 s for the standard modules it needs), so only commands that touch the repository
import this module; `registry --help` does not.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess  # only for PIPE: every git command runs through GitPython
import tempfile
from dataclasses import dataclass
from pathlib import Path

import git
from gitdb.base import IStream
from gitdb.exc import BadName, BadObject
from gitdb.util import hex_to_bin

from registry.config import CONFIG_DIR
from registry.errors import GitError

BATCH_READ_FROM = 64
"""More blobs than this are read by one fed `cat-file --batch` (see `read_blobs`)."""
UNRESOLVED = (BadName, BadObject, ValueError, IndexError, KeyError, git.GitCommandError)
"""What GitPython raises for a name that names no object (rev_parse, odb, tree lookups)."""
TAG_FETCH_BATCH = 500
"""Tags named on one `git fetch` or `ls-remote` command line (about 25 kB of arguments)."""


def git_blob_sha(data: bytes) -> str:
    """The SHA git gives `data` as a blob, so working-tree files share the cache with commits."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def _text(value: str | bytes) -> str:
    """GitPython's cat-file answers are bytes; everything else here is text."""
    return value.decode() if isinstance(value, bytes) else value


@dataclass(frozen=True)
class MovedTag:
    """A tag that names another commit at the remote than here (left as it is here)."""

    name: str
    local: str
    remote: str


@dataclass(frozen=True)
class _FetchPlan:
    branches: bool
    tags: list[str]
    moved: dict[str, MovedTag]


@dataclass(frozen=True)
class TagInfo:
    name: str
    commit: str
    annotated: bool


class Git:
    """The registry repository: a `git.Repo` plus the few questions the registry asks it."""

    def __init__(self, path: Path | str) -> None:
        self.requested = Path(path)
        try:
            self.repo = git.Repo(self.requested, search_parent_directories=True)
        except (git.InvalidGitRepositoryError, git.NoSuchPathError):
            raise GitError(
                f"{self.requested} is not a git repository",
                fix="pass --repo with the registry repository's path, or run `git init` there",
            ) from None
        if self.repo.working_tree_dir is None:
            raise GitError(f"{self.requested} is a bare repository",
                           fix="pass --repo with a clone that has a working tree")
        self.root = Path(self.repo.working_tree_dir)
        self.git_dir = Path(self.repo.git_dir)
        self.moved_tags: dict[str, MovedTag] = {}
        """Tags `fetch` found moved to another commit at the remote (name -> MovedTag)."""

    # -- running git --------------------------------------------------------------------------

    def run(self, *args: str, env: dict[str, str] | None = None, check: bool = True) -> str:
        """`git ARGS` through GitPython's command wrapper, stdout as text."""
        return self.run_bytes(*args, env=env, check=check).decode("utf-8", errors="replace")

    def run_bytes(self, *args: str, env: dict[str, str] | None = None, check: bool = True,
                  command: git.Git | None = None) -> bytes:
        """`git ARGS`, stdout as bytes; a failure is a GitError naming git's last line of
        stderr unless `check` is off."""
        status, out, err = self.execute(*args, env=env, command=command)
        if check and status != 0:
            lines = err.strip().splitlines()
            reason = lines[-1] if lines else f"exit {status}"
            raise GitError(f"git {args[0]} failed: {reason}", where=str(self.root))
        return out

    def execute(self, *args: str, env: dict[str, str] | None = None,
                command: git.Git | None = None) -> tuple[int, bytes, str]:
        """(exit status, stdout, stderr) of `git ARGS` through `command`, GitPython's command
        wrapper (default: the repository's `repo.git`)."""
        status, out, err = (command or self.repo.git).execute(
            ["git", *args], with_extended_output=True, with_exceptions=False,
            stdout_as_string=False, strip_newline_in_stdout=False, env=env,
        )
        return status, out if isinstance(out, bytes) else str(out or "").encode(), str(err)

    # -- refs -----------------------------------------------------------------------------------

    def resolve(self, ref: str) -> str | None:
        """The commit `ref` names (a branch, remote branch, tag, SHA or rev expression)."""
        try:
            return self.repo.rev_parse(f"{ref}^{{commit}}").hexsha
        except UNRESOLVED:
            return None

    def has_remote(self, name: str = "origin") -> bool:
        return any(remote.name == name for remote in self.repo.remotes)

    def main_branch(self) -> str:
        """The local main branch: `main`, else `master`, else the current branch."""
        heads = {head.name for head in self.repo.heads}
        for name in ("main", "master"):
            if name in heads:
                return name
        if not self.repo.head.is_detached and self.repo.head.reference.name in heads:
            return self.repo.head.reference.name
        if self.resolve("HEAD") is not None:
            raise GitError(
                "HEAD is detached and there is no main branch here nor an origin/main",
                where=str(self.root),
                fix="run `git fetch origin main` (the registry works from origin/main), or "
                "`git branch main <commit>`",
            )
        raise GitError("the repository has no main branch (no commits yet)",
                       fix="commit configs/ to a branch named main")

    def desired_ref(self, ref: str | None = None, fetch: bool = True) -> str:
        """The one main every command uses: `ref` if given, `origin/main` when there is a
        remote with that branch (fetched first with `fetch`), else local `main`.

        Reads and changes alike: a change branched from a local main that is behind (or
        ahead of) origin/main would propose a pull request against a production the reader
        never sees. Commands print the base they used."""
        if ref:
            if not self.resolve(ref):
                raise GitError(
                    f"ref {ref} does not exist", fix="pass --ref with a branch, tag or SHA"
                )
            return ref
        if self.has_remote("origin"):
            if fetch:
                self.fetch()
            tracking = {branch.remote_head for branch in self.repo.remote("origin").refs}
            for name in ("main", "master"):
                if name in tracking:
                    return f"origin/{name}"
        return self.main_branch()

    @staticmethod
    def branch_of(ref: str, remote: str = "origin") -> str:
        """The branch name at the remote for a base ref (`origin/main` -> `main`): what a
        pull request targets."""
        return ref.removeprefix(f"{remote}/")

    # -- shallow clones and missing tags (what a CI checkout lacks) -----------------------------

    def is_shallow(self) -> bool:
        return self.run("rev-parse", "--is-shallow-repository").strip() == "true"

    def require_history(self, purpose: str, remote: str = "origin") -> None:
        """Deepen a shallow clone (a CI checkout is one commit deep) before reading history:
        history, rollback, retire, tag and validate would otherwise answer from one commit.
        Refuses in one line, naming the fetch, when the remote cannot deepen it."""
        if not self.is_shallow():
            return
        reason = "there is no origin to fetch it from"
        if self.has_remote(remote):
            status, _out, err = self.execute("fetch", "--quiet", "--unshallow", "--no-tags",
                                             remote)
            if status == 0 and not self.is_shallow():
                self.fetch(remote)
                return
            lines = err.strip().splitlines()
            reason = f"fetching it failed: {lines[-1] if lines else f'exit {status}'}"
        raise GitError(
            f"this is a shallow clone and {purpose} needs the whole history of main; {reason}",
            where=str(self.root),
            fix=f"run `git fetch --unshallow --tags {remote}` (in GitHub Actions: "
            "actions/checkout with fetch-depth: 0)",
        )

    def fetch_tags(self, prefix: str, names: list[str], remote: str = "origin", *,
                   required: bool = False) -> dict[str, TagInfo]:
        """Fetch those of `names` (tags under `prefix`) that this clone lacks and `remote` has:
        a clone made with --no-tags (a CI checkout) would otherwise skip every immutability
        check. When the remote cannot be asked, refuses in one line if `required` (validate),
        else leaves the tags missing for the caller to report. The tags under `prefix` after
        the fetch, as `tags` gives them (read again only when something was fetched)."""
        local = self.tags(prefix)
        missing = [name for name in names if name not in local]
        if not missing or not self.has_remote(remote):
            return local
        patterns = [f"refs/tags/{name}" for name in missing] if len(missing) <= TAG_FETCH_BATCH \
            else []
        status, out, err = self.execute("ls-remote", "--tags", remote, *patterns)
        if status != 0 and not required:
            return local
        if status != 0:
            lines = err.strip().splitlines()
            raise GitError(
                f"{len(missing)} locked configs have no lock tag in this clone and {remote} "
                f"cannot be asked for them: {lines[-1] if lines else f'exit {status}'}",
                where=str(self.root),
                fix=f"run `git fetch --tags {remote}`, then rerun",
            )
        advertised = {line.partition("\t")[2].removeprefix("refs/tags/")
                      for line in _text(out).splitlines()}
        wanted = [name for name in missing if name in advertised]
        for start in range(0, len(wanted), TAG_FETCH_BATCH):
            batch = wanted[start : start + TAG_FETCH_BATCH]
            self.run("fetch", "--quiet", "--no-tags", remote,
                     *(f"refs/tags/{name}:refs/tags/{name}" for name in batch))
        return self.tags(prefix) if wanted else local

    # -- fetching -------------------------------------------------------------------------------

    def fetch(self, remote: str = "origin") -> None:
        """Fetch branches and tags, unless `ls-remote` shows nothing new: a no-op `git fetch`
        walks every local ref (70 ms with 1,500 tags), `ls-remote` plus one `for-each-ref`
        17-36 ms, and most runs of plan, status and --watch find nothing new.

        Tags are fetched by name, never by a wildcard: a tag moved at origin would make a
        wildcard fetch fail on every later run ("would clobber existing tag"), hiding the
        cause. A moved tag is left as this clone has it and recorded in `moved_tags` (for a
        lock tag that is tampering; `validation.tampering_problems` reports it). A tag
        replaced by another object on the same commit (a lightweight lock tag made annotated
        by `registry tag`) is taken."""
        plan = self._fetch_plan(remote)
        self.moved_tags.update(plan.moved)
        if not plan.branches and not plan.tags:
            return
        self.run("fetch", "--quiet", "--prune", "--no-tags", remote,
                 f"+refs/heads/*:refs/remotes/{remote}/*",
                 *(f"+refs/tags/{name}:refs/tags/{name}" for name in plan.tags))

    def _fetch_plan(self, remote: str) -> _FetchPlan:
        """What a fetch would change: whether a remote-tracking branch moved, which tags are
        new or replaced on the same commit, which moved to another commit.

        The local side is one `for-each-ref`: GitPython's `repo.tags` gives each annotated
        tag's object only by asking cat-file for it (1,500 round trips with 1,500 tags)."""
        advertised = self.run("ls-remote", "--heads", "--tags", remote)
        local: dict[str, tuple[str, str]] = {}
        for line in self.run("for-each-ref", "--format=%(refname) %(objectname) %(*objectname)",
                             f"refs/remotes/{remote}/", "refs/tags/").splitlines():
            name, sha, peeled = [*line.split(" "), "", ""][:3]
            local[name] = (sha, peeled or sha)
        local.pop(f"refs/remotes/{remote}/HEAD", None)
        wanted: dict[str, str] = {}
        peeled_remote: dict[str, str] = {}
        for line in advertised.splitlines():
            sha, _, name = line.partition("\t")
            if name.endswith("^{}"):
                peeled_remote[name.removesuffix("^{}")] = sha
                continue
            if name.startswith("refs/heads/"):
                name = f"refs/remotes/{remote}/" + name.removeprefix("refs/heads/")
            wanted[name] = sha
        tracking = {name for name in local if name.startswith(f"refs/remotes/{remote}/")}
        branches = {name for name in wanted if name.startswith(f"refs/remotes/{remote}/")}
        branches_moved = tracking != branches or any(
            local.get(name, ("",))[0] != wanted[name] for name in branches)
        tags: list[str] = []
        moved: dict[str, MovedTag] = {}
        for ref, sha in wanted.items():
            if not ref.startswith("refs/tags/"):
                continue
            name = ref.removeprefix("refs/tags/")
            have = local.get(ref)
            if have is None:
                tags.append(name)
            elif have[0] != sha:
                commit = peeled_remote.get(ref, sha)
                if commit == have[1]:
                    tags.append(name)
                else:
                    moved[name] = MovedTag(name, have[1], commit)
        return _FetchPlan(branches_moved, tags, moved)

    def remote_url(self, remote: str = "origin") -> str | None:
        """`remote.<name>.url` from the repository's config, None without such a remote."""
        if not self.has_remote(remote):
            return None
        return str(self.repo.remote(remote).url)

    def tags(self, prefix: str) -> dict[str, TagInfo]:
        """Every tag under `prefix` with the commit it names, in one `for-each-ref`.

        GitPython's `repo.tags` with each `TagReference.commit` peels every annotated tag
        through cat-file, one round trip each: 892 ms for 1,500 tags against 78 ms for this
        call (median of 7, 2 shared cores), on every plan, status and reconcile."""
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

    def create_tag(self, name: str, commit: str, message: str, *, replace: bool = False) -> None:
        """An annotated tag `name` on `commit` (`replace`: over an existing tag of that name)."""
        self.repo.create_tag(name, ref=commit, message=message, force=replace)

    def object_type(self, ref: str) -> str | None:
        """`commit`, `tag`, `tree` or `blob` for what `ref` names directly (tags not peeled)."""
        try:
            return str(self.repo.rev_parse(ref).type)
        except UNRESOLVED:
            return None

    # -- reading objects ------------------------------------------------------------------------

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
        """Contents of blobs: a few through the object database's persistent `cat-file
        --batch`, many through one `cat-file --batch` fed all at once.

        The persistent process answers one blob per round trip: 1,501 blobs took 394 ms that
        way against 253 ms for one fed batch (median of 7, 2 shared cores), which is the cold
        parse of `plan`, `status` and `validate`; a warm read needs none or a few blobs."""
        if len(shas) > BATCH_READ_FROM:
            return self._read_blob_batch(shas)
        blobs: dict[str, bytes] = {}
        for sha in shas:
            try:
                blobs[sha] = self.repo.odb.stream(hex_to_bin(sha)).read()
            except UNRESOLVED:
                raise GitError(f"blob {sha} is missing from the repository") from None
        return blobs

    def _read_blob_batch(self, shas: list[str]) -> dict[str, bytes]:
        process = self.repo.git.cat_file("--batch", as_process=True, istream=subprocess.PIPE)
        out, _err = process.communicate("\n".join(shas).encode() + b"\n")
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
        """The file at `path` on `ref`, None when there is none."""
        try:
            blob = self.repo.commit(ref).tree / path
        except UNRESOLVED:
            return None
        return bytes(blob.data_stream.read()) if blob.type == "blob" else None

    def object_headers(self, names: list[str]) -> dict[str, tuple[str, str] | None]:
        """name -> (type, sha) of what each `rev:path`-style name names, None for nothing:
        a few through GitPython's persistent `cat-file --batch-check`, many through one fed
        all at once (one round trip each was 2.9 s for 3,000 tags on a loaded machine, the
        fed batch 0.1 s)."""
        if len(names) > BATCH_READ_FROM:
            return self._object_header_batch(names)
        headers: dict[str, tuple[str, str] | None] = {}
        for name in names:
            try:
                sha, kind, _size = self.repo.git.get_object_header(name)
            except ValueError:
                headers[name] = None
            else:
                headers[name] = (_text(kind), _text(sha))
        return headers

    def _object_header_batch(self, names: list[str]) -> dict[str, tuple[str, str] | None]:
        process = self.repo.git.cat_file("--batch-check", as_process=True,
                                         istream=subprocess.PIPE)
        raw, _err = process.communicate("".join(f"{name}\n" for name in names).encode())
        out = raw.decode("utf-8", errors="replace")
        headers: dict[str, tuple[str, str] | None] = {}
        for name, line in zip(names, out.splitlines(), strict=True):
            fields = line.split()
            known = len(fields) == 3 and fields[2].isdigit()
            headers[name] = (fields[1], fields[0]) if known else None
        return headers

    def changed_on_first_parents(self, ref: str, directory: str) -> list[str]:
        """The commits on `ref`'s first-parent chain whose `directory` differs from their first
        parent's (or that have it and no parent), newest first: what `git log --first-parent
        REF -- DIRECTORY/` lists, from the directory's tree SHA at each commit (one `log` of
        root trees, one fed `cat-file --batch-check`) instead of a diff of every commit."""
        chain = [line.split(" ") for line in self.run(
            "log", "--first-parent", "--format=%H %T", ref).splitlines()]
        trees = self.object_headers(sorted({f"{tree}:{directory}" for _commit, tree in chain}))
        found = []
        for index, (commit, tree) in enumerate(chain):
            parent = trees[f"{chain[index + 1][1]}:{directory}"] if index + 1 < len(chain) \
                else None
            if trees[f"{tree}:{directory}"] != parent:
                found.append(commit)
        return found

    def log_of(self, commits: list[str], *args: str) -> str:
        """`git log --no-walk=unsorted ARGS` of `commits` in the order given, fed on stdin
        (any number of them); empty for none."""
        if not commits:
            return ""
        process = self.repo.git.log("--no-walk=unsorted", "--stdin", *args, as_process=True,
                                    istream=subprocess.PIPE)
        out, err = process.communicate("".join(f"{c}\n" for c in commits).encode())
        if process.returncode:
            lines = _text(err or b"").strip().splitlines()
            raise GitError(f"git log failed: {lines[-1] if lines else process.returncode}",
                           where=str(self.root))
        return _text(out)

    def parents(self, ref: str) -> dict[str, tuple[str, ...]]:
        """commit -> its parents, for every commit in `ref`'s history (one `rev-list`)."""
        found: dict[str, tuple[str, ...]] = {}
        for line in self.run("rev-list", "--parents", ref).splitlines():
            commit, *parents = line.split()
            found[commit] = tuple(parents)
        return found

    def config_introductions(self, ref: str, paths: list[str] | None = None) -> dict[str, str]:
        """configs/<file> -> the oldest commit on `ref`'s history that added it (one `git log`,
        limited to `paths` when given).

        git diffs the whole configs/ tree at every commit, so this grows with configs times
        commits (2 s at 3,000 configs): `validate` asks it only for what tags cannot answer."""
        out = self.run(
            "log", "--format=%x01%H", "--diff-filter=A", "--name-only", "--no-renames",
            ref, "--", *(paths if paths is not None else [f"{CONFIG_DIR}/"]),
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
        """`name <email>` as commits would be authored. Asked of `git var`, not GitPython's
        config reader, which ignores GIT_CONFIG_GLOBAL and git's identity environment rules."""
        ident = self.run("var", "GIT_AUTHOR_IDENT", check=False).strip()
        if not ident or "<>" in ident:
            raise GitError(
                "git has no author identity",
                fix='run git config user.name "Your Name" and '
                "git config user.email you@example.com",
            )
        return ident.rsplit(" ", 2)[0]

    # -- writing commits without a checkout -----------------------------------------------------

    def store_blob(self, content: bytes) -> str:
        """Write `content` into the object database; its blob SHA."""
        stored = self.repo.odb.store(IStream("blob", len(content), io.BytesIO(content)))
        return str(stored.hexsha.decode())

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
                    blob = self.store_blob(content)
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
            in_tree = git.Git(tree_dir)
            try:
                merge = ["-m", str(mainline)] if mainline else []
                try:
                    self.run_bytes(*no_hooks, "revert", "--no-commit", *merge, commit,
                                   command=in_tree)
                except GitError:
                    conflicted = self.run_bytes(
                        "diff", "--name-only", "--diff-filter=U", command=in_tree, check=False,
                    ).decode("utf-8", errors="replace").split()
                    where = ", ".join(conflicted) or "the tree"
                    raise GitError(
                        f"git revert of {commit[:10]} conflicts with later changes to {where}",
                        where=str(self.root),
                        fix="make the change by hand on a branch, e.g. `registry promote VERSION`",
                    ) from None
                tree = self.run_bytes("write-tree", command=in_tree).decode().strip()
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
        self.repo.create_head(branch, commit)

    def set_branch(self, branch: str, commit: str) -> None:
        """Create `branch` at `commit`, or move it there (the caller decided it may)."""
        self.run("branch", "--force", branch, commit)

    def is_ancestor(self, ancestor: str, descendant: str) -> bool:
        """Whether `ancestor` is reachable from `descendant` (a branch merged into main)."""
        status, _, _ = self.execute("merge-base", "--is-ancestor", ancestor, descendant)
        return status == 0

    def tree_of(self, commit: str) -> str:
        return self.run("rev-parse", f"{commit}^{{tree}}").strip()

    def pushed_branch(self, branch: str, remote: str = "origin") -> str | None:
        """The commit `branch` names where `git push` sends it (the push URL, which may differ
        from the fetch URL), fetched into refs/remotes/<remote>/<branch> so it can be
        compared; None when it is not there."""
        if not self.has_remote(remote):
            return None
        url = self.run("remote", "get-url", "--push", remote).strip()
        listed = self.run("ls-remote", "--heads", url, f"refs/heads/{branch}").split()
        if not listed:
            return None
        self.run("fetch", "--quiet", "--no-tags", url,
                 f"+refs/heads/{branch}:refs/remotes/{remote}/{branch}")
        return listed[0]

    def push(self, *refspecs: str, remote: str = "origin") -> None:
        if not self.has_remote(remote):
            raise GitError(f"there is no remote named {remote}", fix="git remote add origin <url>")
        self.run("push", "--quiet", remote, *refspecs)
