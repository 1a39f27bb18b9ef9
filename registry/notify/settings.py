"""The `notifications:` section of production.yaml: targets, routes and retry policy.

A target names the environment variables that hold its secrets (`url_env`, `token_env`,
`password_env`); the values are read only when a message is sent. `notification_problems`
refuses what would put a secret in git: a literal `url`, `password` or `token`, or any value
that looks like a webhook URL or a URL with credentials.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from registry.config import YamlDoc
    from registry.errors import Problem

EventKind = Literal["health-critical", "regression", "reconcile-failed", "reconcile-blocked",
                    "drift", "promotion"]
EVENT_KINDS: tuple[EventKind, ...] = ("health-critical", "regression", "reconcile-failed",
                                      "reconcile-blocked", "drift", "promotion")
TargetKind = Literal["slack", "webhook", "email"]
DEFAULT_BACKOFF = timedelta(minutes=5)
DEFAULT_MAX_ATTEMPTS = 12
DEFAULT_TIMEOUT = 10.0
SMTP_PORTS = {"starttls": 587, "ssl": 465, "none": 25}

_SECRET_KEYS = {"url": "url_env", "webhook": "url_env", "webhook_url": "url_env",
                "token": "token_env", "password": "password_env", "secret": "password_env"}
_CREDENTIAL_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:[^/\s@]+@")
_ANY_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


@dataclass(frozen=True)
class Target:
    """One place messages go; secrets are environment variable names, not values."""

    name: str
    kind: TargetKind
    url_env: str | None = None
    token_env: str | None = None
    host: str | None = None
    port: int | None = None
    security: str = "starttls"
    username: str | None = None
    password_env: str | None = None
    sender: str | None = None
    recipients: tuple[str, ...] = ()

    @property
    def secret_envs(self) -> tuple[str, ...]:
        return tuple(e for e in (self.url_env, self.token_env, self.password_env) if e)

    @property
    def smtp_port(self) -> int:
        return self.port or SMTP_PORTS[self.security]


@dataclass(frozen=True)
class NotificationSettings:
    targets: tuple[Target, ...]
    routes: tuple[tuple[str, tuple[str, ...]], ...]
    backoff: timedelta = DEFAULT_BACKOFF
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    timeout: float = DEFAULT_TIMEOUT

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> NotificationSettings:
        """From a schema-valid `notifications:` mapping."""
        from registry.config import parse_duration

        targets = tuple(
            Target(name, spec["type"], spec.get("url_env"), spec.get("token_env"),
                   spec.get("host"), spec.get("port"), spec.get("security", "starttls"),
                   spec.get("username"), spec.get("password_env"), spec.get("from"),
                   tuple(spec.get("to") or ()))
            for name, spec in sorted((data.get("targets") or {}).items()))
        routes = tuple((kind, tuple(names)) for kind, names in
                       sorted((data.get("routes") or {}).items()))
        retry = data.get("retry") or {}
        return cls(
            targets, routes,
            parse_duration(retry["backoff"]) if "backoff" in retry else DEFAULT_BACKOFF,
            int(retry.get("max_attempts", DEFAULT_MAX_ATTEMPTS)),
            parse_duration(data["timeout"]).total_seconds() if "timeout" in data
            else DEFAULT_TIMEOUT)

    def target(self, name: str) -> Target | None:
        return next((t for t in self.targets if t.name == name), None)

    def targets_for(self, kind: str) -> list[Target]:
        """The targets routed for an event kind (unknown names are a validation problem)."""
        names = dict(self.routes).get(kind, ())
        return [t for t in (self.target(n) for n in names) if t is not None]

    @property
    def secret_envs(self) -> tuple[str, ...]:
        return tuple(env for target in self.targets for env in target.secret_envs)


def notification_problems(doc: YamlDoc) -> list[Problem]:
    """What the schema cannot say: a secret written literally, a target missing what its type
    needs, a route to a target that does not exist."""
    section = doc.data.get("notifications")
    if not isinstance(section, dict):
        return []
    problems = _literal_secrets(doc, section, ("notifications",))
    found_targets = section.get("targets")
    targets: dict[str, Any] = found_targets if isinstance(found_targets, dict) else {}
    for name, spec in targets.items():
        if not isinstance(spec, dict):
            continue
        where = ("notifications", "targets", name)
        kind = spec.get("type")
        if kind in ("slack", "webhook") and "url_env" not in spec:
            problems.append(doc.problem(
                (*where, "type"), f"notification target {name} ({kind}) names no url_env",
                "add url_env: THE_VARIABLE_HOLDING_THE_WEBHOOK_URL"))
        if kind == "email":
            for needed in ("host", "from", "to"):
                if needed not in spec:
                    problems.append(doc.problem(
                        (*where, "type"), f"email target {name} needs {needed}",
                        f"add {needed}: to notifications.targets.{name}"))
            if "username" in spec and "password_env" not in spec:
                problems.append(doc.problem(
                    (*where, "username"), f"email target {name} has a username but no "
                    "password_env", "add password_env: THE_VARIABLE_HOLDING_THE_SMTP_PASSWORD"))
    found_routes = section.get("routes")
    routes: dict[str, Any] = found_routes if isinstance(found_routes, dict) else {}
    for kind, names in routes.items():
        for index, name in enumerate(names if isinstance(names, list) else []):
            if isinstance(name, str) and name not in targets:
                problems.append(doc.problem(
                    ("notifications", "routes", kind, index),
                    f"route {kind} names target {name}, which notifications.targets does not "
                    "define", f"define {name} under notifications.targets or remove it"))
    return problems


def _literal_secrets(doc: YamlDoc, node: Any, path: tuple[str | int, ...]) -> list[Problem]:
    found: list[Problem] = []
    items = node.items() if isinstance(node, dict) else enumerate(node) \
        if isinstance(node, list) else ()
    for key, value in items:
        here = (*path, key)
        if isinstance(key, str) and key.lower() in _SECRET_KEYS:
            found.append(doc.problem(
                here, f"{'.'.join(map(str, here))}: a literal {key} would put a secret in git",
                f"store it in an environment variable or CI secret and name that with "
                f"{_SECRET_KEYS[key.lower()]}"))
        elif isinstance(value, str) and (_CREDENTIAL_URL.search(value)
                                          or _ANY_URL.match(value.strip())):
            found.append(doc.problem(
                here, f"{'.'.join(map(str, here))} holds a URL: webhook URLs and URLs with "
                "credentials are secrets and never go in git",
                "store it in an environment variable or CI secret and name that with url_env"))
        else:
            found.extend(_literal_secrets(doc, value, here))
    return found
