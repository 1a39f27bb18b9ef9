"""What happened to the registry on main: locks, promotions, rollbacks and retirements.

Read in one pass: one `git log` of the first-parent commits that change configs/ (picked by the
tree SHA of configs/ at each), with each one's diff against its first parent (so a merge commit
shows exactly what its pull request changed), restricted to configs/, plus one `for-each-ref`
for the tags. Events are derived from the diffs, not from commit
messages, so a promotion is a promotion however it reached main (merge, squash or plain commit)
and whoever wrote the message. A production change that undoes the production change before it
(a `git revert`, or promoting the previous version again) is a rollback.
"""

from __future__ import annotations

import re
import weakref
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from registry.config import (
    CONFIG_DIR,
    PRODUCTION_ENVIRONMENT,
    PRODUCTION_PATH,
    VERSION_RE,
    environment_flag,
    environment_path,
)
from registry.errors import Refused
from registry.repository.git import Git
from registry.repository.state import read_state
from registry.timestamps import rfc3339

Kind = Literal["lock", "promote", "rollback", "retire"]
Merge = Literal["merge", "squash", "commit"]

_HEADER = "\x01"
_END = "\x02"
_FORMAT = f"{_HEADER}%H%x00%P%x00%an%x00%ae%x00%cI%x00%s%x00%b{_END}"
_CONFIG_RE = re.compile(rf"^{CONFIG_DIR}/({VERSION_RE.pattern})\.yaml$")
_POINTER_RE = re.compile(r"^([-+])(?:production|serves):[ \t]*(.*?)[ \t]*(?:#.*)?$")
_MERGE_PR_RE = re.compile(r"^Merge pull request #([0-9]+)\b")
_SQUASH_PR_RE = re.compile(r"\(#([0-9]+)\)\s*$")
_NULLS = {"", "~", "null", "Null", "NULL"}


@dataclass(frozen=True)
class Event:
    """One change to the registry, at the first-parent commit that brought it to main.

    `chunk_version` is the version locked or retired, or the version production moved to;
    `previous` is the version production moved away from (promote and rollback only).
    """

    kind: Kind
    chunk_version: str | None
    previous: str | None
    commit: str
    merge: Merge
    pr: int | None
    author: str
    email: str
    at: str
    subject: str
    tag: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """As JSON: `at` in RFC 3339 UTC (git gives the author's offset)."""
        return {**asdict(self), "at": rfc3339(self.at)}

    def describe(self) -> str:
        if self.kind in ("promote", "rollback"):
            verb = "promoted" if self.kind == "promote" else "rolled back to"
            return f"{verb} {self.chunk_version or 'none'} (from {self.previous or 'none'})"
        return f"{'locked' if self.kind == 'lock' else 'retired'} {self.chunk_version}"


@dataclass(frozen=True)
class _Commit:
    sha: str
    parents: int
    author: str
    email: str
    at: str
    subject: str
    body: str

    @property
    def merge(self) -> Merge:
        if self.parents > 1:
            return "merge"
        return "squash" if _SQUASH_PR_RE.search(self.subject) else "commit"

    @property
    def pr(self) -> int | None:
        found = _MERGE_PR_RE.match(self.subject) or _SQUASH_PR_RE.search(self.subject)
        return int(found.group(1)) if found else None


def _pointer(text: str) -> str | None:
    value = text.strip().strip("'\"")
    return None if value in _NULLS else value


def _parse(out: str) -> list[tuple[_Commit, list[str]]]:
    """(commit, its diff lines) newest first, from the log output of `_FORMAT` with `-p`."""
    commits = []
    for chunk in out.split(_HEADER)[1:]:
        header, _, diff = chunk.partition(_END)
        sha, parents, author, email, at, subject, body = header.split("\0", 6)
        commit = _Commit(sha, len(parents.split()), author, email, at, subject, body)
        commits.append((commit, diff.splitlines()))
    return commits


def _changes(
    diff: list[str], pointer_path: str = PRODUCTION_PATH
) -> tuple[list[str], list[str], tuple[str | None, str | None] | None]:
    """Config versions added and deleted, and the pointer of the environment declared at
    `pointer_path` (production.yaml's `production:`, an environment's `serves:`) as (old, new)
    if it moved."""
    added: list[str] = []
    deleted: list[str] = []
    old: str | None = None
    new: str | None = None
    seen_old = seen_new = False
    path = ""
    for line in diff:
        if line.startswith("diff --git "):
            path = f"{CONFIG_DIR}/" + line.rsplit(" b/", 1)[-1]  # the log is --relative
            continue
        found = _CONFIG_RE.match(path)
        if found and line.startswith("new file mode"):
            added.append(found.group(1))
        elif found and line.startswith("deleted file mode"):
            deleted.append(found.group(1))
        elif path == pointer_path and not line.startswith(("---", "+++")):
            pointer = _POINTER_RE.match(line)
            if pointer and pointer.group(1) == "-" and not seen_old:
                old, seen_old = _pointer(pointer.group(2)), True
            elif pointer and pointer.group(1) == "+" and not seen_new:
                new, seen_new = _pointer(pointer.group(2)), True
    moved = (old, new) if (seen_old or seen_new) and old != new else None
    return added, deleted, moved


_LOGS: weakref.WeakKeyDictionary[Git, dict[str, list[tuple[_Commit, list[str]]]]] = \
    weakref.WeakKeyDictionary()
"""The parsed log of each commit already read, per repository object (one command): git diffs
the whole configs/ tree at every commit, which grows with configs times commits (14 s at
10,000 configs, busy), and a plan reads the history of its base up to four times."""


def _log(git: Git, ref: str) -> list[tuple[_Commit, list[str]]]:
    commit = git.resolve(ref)
    known = _LOGS.setdefault(git, {})
    if commit is not None and commit in known:
        return known[commit]
    # `git log --first-parent -p REF -- configs/` diffs configs/ twice at every commit (once
    # to pick the commits that touch it, once for the patch): 6.4 s of CPU at 10,000 configs
    # against 2.7 s for picking them by configs/'s tree SHA and diffing each once, the patch
    # kept to configs/ by --relative (paths then relative to it).
    out = git.log_of(
        git.changed_on_first_parents(ref, CONFIG_DIR),
        "--diff-merges=first-parent", "-p", "-U0", "--no-renames", "--no-color",
        "--no-ext-diff", f"--relative={CONFIG_DIR}/", f"--format={_FORMAT}",
    )
    commits = _parse(out)
    if commit is not None:
        known[commit] = commits
    return commits


def read_history(
    git: Git, ref: str | None = None, environment: str = PRODUCTION_ENVIRONMENT, *,
    tags: bool = True,
) -> list[Event]:
    """Every registry event on `ref` (default: the main `Git.desired_ref` picks), newest
    first; promotions and rollbacks are those of `environment`. A shallow clone is deepened
    first: one commit of history reads as no history. Without `tags` the lock events name no
    tag (and no tag is fetched): for callers that read only kinds, versions and times."""
    ref = ref or git.desired_ref(fetch=False)
    git.require_history("reading the registry's history")
    commits = _log(git, ref)
    events: list[Event] = []
    moves: list[tuple[_Commit, str | None, str | None]] = []
    for commit, diff in reversed(commits):
        added, deleted, moved = _changes(diff, environment_path(environment))
        events += [_event(commit, "lock", v, None) for v in added]
        if moved is not None:
            moves.append((commit, *moved))
        events += [_event(commit, "retire", v, None) for v in deleted]
    events += _pointer_events(moves)
    order = {commit.sha: index for index, (commit, _) in enumerate(commits)}
    rank = {"retire": 0, "promote": 1, "rollback": 1, "lock": 2}
    events.sort(key=lambda e: (order[e.commit], rank[e.kind]))
    return _with_tags(git, ref, events) if tags else events


def _event(commit: _Commit, kind: Kind, version: str | None, previous: str | None) -> Event:
    return Event(kind, version, previous, commit.sha, commit.merge, commit.pr, commit.author,
                 commit.email, commit.at, commit.subject)


def _pointer_events(moves: list[tuple[_Commit, str | None, str | None]]) -> list[Event]:
    """Promotions and rollbacks: a move that undoes the last standing promotion is a rollback."""
    events = []
    standing: list[tuple[str | None, str | None]] = []
    for commit, old, new in moves:
        if standing and standing[-1] == (new, old):
            standing.pop()
            events.append(_event(commit, "rollback", new, old))
        else:
            standing.append((old, new))
            events.append(_event(commit, "promote", new, old))
    return events


def _with_tags(git: Git, ref: str, events: list[Event]) -> list[Event]:
    settings = read_state(git, ref).settings
    tags = git.fetch_tags(settings.tag_prefix, [settings.tag_name(e.chunk_version)
                                                for e in events
                                                if e.kind == "lock" and e.chunk_version])
    out = []
    for event in events:
        name = settings.tag_name(event.chunk_version) if event.chunk_version else None
        if event.kind == "lock" and name in tags:
            event = replace(event, at=rfc3339(event.at), tag=name)  # as to_dict gives `at`
        out.append(event)
    return out


# ---------------------------------------------------------------------------------------------
# What rollback and retire need to know


@dataclass(frozen=True)
class Standing:
    """The promotions still in force, oldest first: each one's undo is the next rollback."""

    promotions: list[Event]

    @property
    def last(self) -> Event | None:
        return self.promotions[-1] if self.promotions else None

    def previous_productions(self, keep: int) -> list[str]:
        """The `keep` most recent versions production would roll back to, newest first.

        A promotion from no version (the environment's first, or its first since its file was
        deleted or its pointer set to null) is where rollbacks stop: what came before it is
        no rollback target."""
        found: list[str] = []
        for event in reversed(self.promotions):
            if event.previous is None:
                break
            if event.previous not in found:
                found.append(event.previous)
        return found[: max(keep, 1)]


def standing_promotions(events: list[Event]) -> Standing:
    """Replay production moves oldest first; a rollback cancels the promotion it undid."""
    stack: list[Event] = []
    for event in reversed(events):
        if event.kind == "promote":
            stack.append(event)
        elif event.kind == "rollback" and stack:
            stack.pop()
    return Standing(stack)


def last_promotion(git: Git, ref: str, environment: str = PRODUCTION_ENVIRONMENT) -> Event:
    """The promotion `registry rollback` reverts, or Refused when there is nothing to return to."""
    standing = standing_promotions(read_history(git, ref, environment))
    event = standing.last
    promote = f"`registry promote VERSION{environment_flag(environment)}`"
    if event is None:
        which = "" if environment == PRODUCTION_ENVIRONMENT else f" for {environment}"
        raise Refused(f"{ref} has no promotion to roll back{which}",
                      fix=f"{environment} has never moved; promote a version with {promote}")
    if event.previous is None:
        raise Refused(
            f"nothing to roll back to: {event.chunk_version} is the first {environment} version "
            f"(set by {event.commit[:10]})",
            fix=f"promote another locked version with {promote}",
        )
    return event



FORCE_TRAILER = "Promotion-Forced"
"""The trailer `registry promote --force` writes (`Promotion-Forced: <version>`): the merged
promotion then skips the promotion gate in the reconciler, for that promotion only."""


def forced_promotion(
    git: Git, ref: str, version: str, environment: str = PRODUCTION_ENVIRONMENT
) -> str | None:
    """The commit recording that production's move to `version` on `ref` was forced: the
    newest production move on `ref` must be that one, and a commit it brought (the merged
    branch's commits, the squashed message, or the commit itself) must carry the trailer
    `Promotion-Forced: <version>`. None: not forced (or moved again since)."""
    move = next((e for e in read_history(git, ref, environment)
                 if e.kind in ("promote", "rollback")), None)
    if move is None or move.chunk_version != version:
        return None
    span = [f"{move.commit}^1..{move.commit}"] if move.merge == "merge" else ["-1", move.commit]
    out = git.run("log", f"--format=%H%x00%(trailers:key={FORCE_TRAILER},valueonly,"
                  "separator=%x00)", *span)
    for line in out.splitlines():
        sha, *values = line.split("\0")
        if version in (v.strip() for v in values):
            return sha
    return None
