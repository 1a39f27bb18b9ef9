"""No secret in any message, log line or bookkeeping row.

Every value of an environment variable a target names (webhook URLs, tokens, passwords), and
the path segments of those URLs (a Slack webhook's secret is its path), plus the GitHub token,
are replaced by `***`; so is the password of any `scheme://user:password@` URL. (A shared
scrubber in registry/secrets.py is planned; this one covers what notifications handle.)
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

MASK = "***"
ALWAYS_SECRET_ENVS = ("GITHUB_TOKEN", "GH_TOKEN", "PGPASSWORD")
_MIN_SECRET = 6
_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:)[^/\s@]+@")


class Scrubber:
    """Replaces known secret values; built once per run from the environment."""

    def __init__(self, secrets: Iterable[str]) -> None:
        found: set[str] = set()
        for value in secrets:
            value = value.strip()
            if len(value) >= _MIN_SECRET:
                found.add(value)
            if "://" in value:
                parts = urlsplit(value)
                found.update(p for p in parts.path.split("/") if len(p) >= _MIN_SECRET)
                found.update(p for p in (parts.query, parts.password or "")
                             if len(p) >= _MIN_SECRET)
        # Longest first, so a URL is masked whole before its segments are.
        self._secrets = sorted(found, key=len, reverse=True)

    @classmethod
    def from_env(cls, names: Iterable[str], env: Mapping[str, str]) -> Scrubber:
        return cls(env[name] for name in {*names, *ALWAYS_SECRET_ENVS} if env.get(name))

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return _USERINFO.sub(lambda m: m.group("head") + MASK + "@", text)
