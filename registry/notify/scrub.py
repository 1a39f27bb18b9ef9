"""No secret in any message, log line or bookkeeping row: registry/secrets.py's scrubber, fed
with what notifications know to be secret.

Every value of an environment variable a target names (webhook URLs, tokens, passwords) is
registered with the shared, process-wide scrubber. The long path segments and the query of
those URLs (a Slack webhook's secret is its path, which may come back without the host) are
masked here too, but only in what notifications write: registered globally, a segment such as
`/hooks/registry` would mask the word everywhere. So are the long pieces of a value that holds
whitespace or control characters (delivery refuses such a value, but a library quoting it would
escape or split it, and the whole value would no longer match). The shared scrubber also masks
`user:password@`, bearer tokens and GitHub tokens by their shape.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

from registry.secrets import MASK, SCRUBBER

ALWAYS_SECRET_ENVS = ("GITHUB_TOKEN", "GH_TOKEN", "PGPASSWORD")
_MIN_SEGMENT = 12
_BREAKS = re.compile(r"[\s\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028\u2029\ufeff]+")


class Scrubber:
    """Registers the secrets of a run with the shared scrubber; calling it scrubs."""

    def __init__(self, secrets: Iterable[str]) -> None:
        segments: set[str] = set()
        for value in secrets:
            value = value.strip()
            SCRUBBER.register(value)
            pieces = _BREAKS.split(value)
            if len(pieces) > 1:
                segments.update(piece for piece in pieces if len(piece) >= _MIN_SEGMENT)
            if "://" in value:
                parts = urlsplit(value)
                segments.update(part for part in (*parts.path.split("/"), parts.query)
                                if len(part) >= _MIN_SEGMENT)
        self._segments = sorted(segments, key=len, reverse=True)

    @classmethod
    def from_env(cls, names: Iterable[str], env: Mapping[str, str]) -> Scrubber:
        return cls(env[name] for name in {*names, *ALWAYS_SECRET_ENVS} if env.get(name))

    def __call__(self, text: str) -> str:
        text = SCRUBBER.scrub(text)
        for segment in self._segments:
            text = text.replace(segment, MASK)
        return text
