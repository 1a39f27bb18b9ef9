"""Named crash points, so the reliability suite can kill a real process anywhere and prove the
next run converges.

`REGISTRY_FAULT=<point>[#N][:kill|:stop]` makes the process SIGKILL itself (or SIGSTOP itself,
for a test that restarts the database and then sends SIGCONT) the Nth time (default: the first)
it reaches `<point>`; `REGISTRY_FAULT_TRACE=<file>` appends every point reached, as
`<point>#<n>`, so a test can list the points a scenario passes through and kill at each one.
`REGISTRY_FAULT_ONCE=<file>` makes the fault fire in one process only, across processes (the
first to create that file): a Ray worker killed once must be retried, and its retry must live.

The environment is read once, at import: with neither variable set, `point` is a function
that does nothing, and production code pays one call per action.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

FAULT_ENV = "REGISTRY_FAULT"
TRACE_ENV = "REGISTRY_FAULT_TRACE"
ONCE_ENV = "REGISTRY_FAULT_ONCE"


def _disarmed(*_parts: str) -> None:
    """No fault armed, no trace asked for."""


def _first_to_claim(path: str) -> bool:
    """Whether this process is the first to create `path` (no path: every process is)."""
    if not path:
        return True
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        return False
    return True


def _armed(target: str, trace: str, once: str = "") -> Callable[..., None]:
    spec, _, action = target.partition(":")
    name, _, nth = spec.partition("#")
    wanted = int(nth) if nth.isdigit() else 1
    sig = signal.SIGSTOP if action == "stop" else signal.SIGKILL
    counts: dict[str, int] = {}

    def point(*parts: str) -> None:
        label = ".".join(parts)
        counts[label] = hit = counts.get(label, 0) + 1
        if trace:
            with open(trace, "a", encoding="utf-8") as handle:
                handle.write(f"{label}#{hit}\n")
        if label == name and hit == wanted and _first_to_claim(once):
            os.kill(os.getpid(), sig)

    return point


def _resolve() -> Callable[..., None]:
    target = os.environ.get(FAULT_ENV, "")
    trace = os.environ.get(TRACE_ENV, "")
    once = os.environ.get(ONCE_ENV, "")
    return _armed(target, trace, once) if target or trace else _disarmed


point: Callable[..., None] = _resolve()
"""`point("apply", "CreateTable", "begin")`: the crash point `apply.CreateTable.begin`."""
