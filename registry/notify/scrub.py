"""No secret in any message, log line or bookkeeping row: registry/secrets.py's scrubber, fed
with what notifications know to be secret.

Every value of an environment variable a target names (webhook URLs, tokens, passwords) is
registered, and so is each long path segment and the query of those URLs (a Slack webhook's
secret is its path, which may come back without the host); the shared scrubber also masks
`user:password@`, bearer tokens and GitHub tokens by their shape.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

from registry.secrets import SCRUBBER

ALWAYS_SECRET_ENVS = ("GITHUB_TOKEN", "GH_TOKEN", "PGPASSWORD")
_MIN_SEGMENT = 6


class Scrubber:
    """Registers the secrets of a run with the shared scrubber; calling it scrubs."""

    def __init__(self, secrets: Iterable[str]) -> None:
        for value in secrets:
            value = value.strip()
            SCRUBBER.register(value)
            if "://" in value:
                parts = urlsplit(value)
                for part in (*parts.path.split("/"), parts.query, parts.password or ""):
                    if len(part) >= _MIN_SEGMENT:
                        SCRUBBER.register(part)

    @classmethod
    def from_env(cls, names: Iterable[str], env: Mapping[str, str]) -> Scrubber:
        return cls(env[name] for name in {*names, *ALWAYS_SECRET_ENVS} if env.get(name))

    def __call__(self, text: str) -> str:
        return SCRUBBER.scrub(text)
