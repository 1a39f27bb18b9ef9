"""The one error funnel: every failure a user can act on is a RegistryError.

The CLI prints `str(error)` as one line and exits with `error.exit_code`; anything that is not
a RegistryError is a bug and reaches the user as "unexpected error" (exit 3).
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass
from typing import Any

_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")


def printable(text: str) -> str:
    """`text` with control, zero-width and bidi-override characters shown as escapes, so a
    hostile file name can neither break a one-line report nor disguise itself on a terminal."""
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def storable(text: str) -> bool:
    """Whether PostgreSQL text can hold `text`: no NUL, and encodable as UTF-8 (no lone
    surrogate, which JSON's \\ud800 escapes can produce)."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class RegistryError(Exception):
    """A failure the user can act on: what went wrong, where, and how to fix it."""

    exit_code = 1

    def __init__(self, message: str, *, where: str | None = None, fix: str | None = None) -> None:
        self.message = message
        self.where = where
        self.fix = fix
        super().__init__(self.render())

    def render(self) -> str:
        text = f"{printable(self.where)}: {self.message}" if self.where else self.message
        return f"{text} ({self.fix})" if self.fix else text

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled whole (class, message, where, fix, attributes): a Ray worker's refusal
        reaches the driver as the error it is, with its exit code."""
        return _rebuilt, (type(self), dict(self.__dict__))


def _rebuilt(kind: type[RegistryError], state: dict[str, Any]) -> RegistryError:
    error = kind.__new__(kind)
    error.__dict__.update(state)
    Exception.__init__(error, error.render())
    return error


class ConfigInvalid(RegistryError):
    """A locked config or production.yaml breaks the schema or a guardrail."""


class UsageError(RegistryError):
    """The command line asks for something that cannot work (same code as typer's usage errors)."""

    exit_code = 2


class Busy(RegistryError):
    """Another process holds the lock this one needs; not a failure, so it has its own code."""

    exit_code = 4


class ReconcileBusy(Busy):
    """Another reconciler holds the reconcile advisory lock."""


class WatchBusy(Busy):
    """Another `registry watch-promotion` holds its lock; like a busy reconcile, not a failure."""


class ReconcileFailed(RegistryError):
    """An action failed while applying a plan; the run is recorded with its error."""


class DatabaseUnavailable(RegistryError):
    """PostgreSQL cannot be reached or refused the connection."""

    exit_code = 5


class GitError(RegistryError):
    """The repository, a ref, a branch or a remote is not in the state the command needs."""

    exit_code = 6


class Refused(RegistryError):
    """A safety rule forbids the change (drop production, swap to an empty table, ...)."""

    exit_code = 7


class TokenizerUnavailable(RegistryError):
    """The tokenizer cannot be found offline, or its hash does not match the config."""

    exit_code = 8


class GitHubError(RegistryError):
    """The GitHub REST API refused or failed a request."""

    exit_code = 9


class MissingExtra(RegistryError):
    """The command needs an optional dependency (an extra) that is not installed."""

    exit_code = 10


class InitConflict(RegistryError):
    """`registry init` found a file it would write, with other content: it never overwrites."""

    exit_code = 11


class DatabasePermission(RegistryError):
    """The role may connect but lacks a right the command needs (SQLSTATE 42501)."""

    exit_code = 13


class BookkeepingDamaged(RegistryError):
    """The `chunk_registry` schema is not what the tool made: a table dropped, the version
    row deleted, a column missing. Never repaired silently: its history is the audit trail."""

    exit_code = 14


UNEXPECTED_EXIT_CODE = 3


class UnknownVersion(ConfigInvalid):
    """A VERSION (argument, `--version`, `--compare`, `--against`) that names no locked config
    on the ref read, or is not a chunk_version at all: one code for every command, so CI can
    tell a typo in a version from an outage or a refusal."""

    exit_code = 16


UNKNOWN_VERSION = UnknownVersion.exit_code
PLAN_PENDING = 17
"""`registry plan --detailed-exitcode`: the plan has changes (not an error: no other code)."""
HEALTH_WARNINGS = 18
"""`registry health`: the report has warnings and no critical alert."""
HEALTH_CRITICAL = 19
"""`registry health`: the report has a critical alert."""
VERDICT_CODES = (PLAN_PENDING, HEALTH_WARNINGS, HEALTH_CRITICAL)
"""Exit codes that are verdicts, not errors: each means one thing and no error shares it."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One broken invariant, located in a file: rendered as `path:line: message (fix)`."""

    path: str
    line: int
    message: str
    fix: str | None = None
    severity: str = "error"

    def render(self) -> str:
        text = f"{self.path}:{self.line}: {self.message}"
        return printable(f"{text} ({self.fix})" if self.fix else text)


def invalid(problems: list[Problem]) -> ConfigInvalid:
    """The ConfigInvalid for the first error among `problems` (the CLI prints one line)."""
    errors = [p for p in problems if p.severity == "error"] or problems
    first = errors[0]
    fix = first.fix
    if len(errors) > 1:
        more = f"{len(errors) - 1} more: run `registry validate`"
        fix = f"{fix}; {more}" if fix else more
    return ConfigInvalid(first.message, where=f"{first.path}:{first.line}", fix=fix)


class EmbedderError(RegistryError):
    """The embedder cannot run: a model file missing or not the pinned one, an endpoint that
    refuses or keeps failing, vectors of the wrong shape."""

    exit_code = 12


class EmbedderChanged(EmbedderError):
    """The embedder answers the probe texts differently from the fingerprint in the lock."""


class NotificationFailed(RegistryError):
    """`registry notify test`: a notification target did not accept the test message."""

    exit_code = 15


class ServedStateUnavailable(RegistryError):
    """No served state for the registry and environment an application asked about: no
    reconcile has materialized it in this database (or it names several registries)."""

    exit_code = 20


class EngineUnavailable(RegistryError):
    """The Ray cluster `--ray-address` names cannot be reached (or Ray cannot start)."""

    exit_code = 21


class OutOfSpace(RegistryError):
    """A disk filled up (or a file size or quota limit was met): here, writing a temporary
    file, or on the database server. The machine's state, not a bug, so not exit 3."""

    exit_code = 22


_NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def out_of_space(err: BaseException) -> OutOfSpace | None:
    """The OutOfSpace a full disk, quota or file size limit met by this process stands for,
    or None. Temporary files (the corpus dedup's shingles, the spec workers read) go where
    TMPDIR says."""
    if not isinstance(err, OSError) or err.errno not in _NO_SPACE_ERRNOS:
        return None
    where = f" {err.filename}" if err.filename else ""
    return OutOfSpace(f"cannot write{where}: {os.strerror(err.errno)}",
                      fix="free disk space (temporary files go to TMPDIR, default /tmp: point "
                      "it at a larger disk), or raise the quota or file size limit, then rerun")
