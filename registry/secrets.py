"""The one scrubber: everything a remote server, a DSN or a driver puts in front of the user
goes through `scrub` before it is printed, logged or raised.

Two nets, because either alone misses something. Secrets the process knows (the GitHub token,
a DSN's password) are registered as soon as they are read, and masked wherever they appear, in
every form they may be echoed in (raw, %-encoded, JSON- or backslash-escaped). Shapes that are
secrets whatever their value (a URL's `user:password@`, `password=...` in any letter case, a
bearer token, a GitHub token) are masked even when nobody registered them. The scrubber never
raises: a secret in an error path must not turn into a crash whose traceback shows it.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import urllib.parse

MASK = "***"
MIN_SECRET_CHARS = 3
"""Shorter registered values would mask ordinary text everywhere; the shapes below still mask
them where they appear as a password."""

_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^:/?#@\s]*:)[^/?#\s]*@")
_QUERY_PASSWORD = re.compile(r"(?i)([?&]password=)[^&#\s]*")
_KEYWORD_PASSWORD = re.compile(
    r"(?i)((?<![?&\w])password\s*=\s*)(?:'(?:[^'\\]|\\.)*'(?=\s|$)|.*?(?=\s+\w+\s*=|$))")
"""A quoted value up to its closing quote; anything else (unquoted, or a quote never closed)
up to the next `key=` or the end, so no part of a malformed password shows."""
_CREDENTIAL = re.compile(r"(?i)\b(bearer|basic|token)(\s+)[A-Za-z0-9+/=._~-]{16,}")
_GITHUB_TOKEN = re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9_]{16,}|github_pat_[A-Za-z0-9_]{16,})")
WITHHELD = "[text withheld: it contained a secret]"


def _forms(secret: str) -> set[str]:
    """The ways `secret` may come back: as given, %-encoded, JSON-escaped, backslash-quoted
    (libpq keyword values) and as Python's repr shows it."""
    # surrogatepass: a lone surrogate (a DSN typed with one) must not make registering fail
    forms = {secret, urllib.parse.quote(secret, safe="", errors="surrogatepass"),
             urllib.parse.quote(secret, errors="surrogatepass"),
             urllib.parse.quote_plus(secret, errors="surrogatepass"), json.dumps(secret)[1:-1],
             secret.replace("\\", "\\\\").replace("'", "\\'"), repr(secret)[1:-1]}
    return {form for form in forms if len(form) >= MIN_SECRET_CHARS}


class Scrubber:
    """Registered secrets, and the function that masks them and every secret-shaped value."""

    def __init__(self) -> None:
        self._secrets: frozenset[str] = frozenset()
        self._pattern: re.Pattern[str] | None = None
        self._lock = threading.Lock()

    def register(self, secret: str | None) -> None:
        """Mask `secret` in everything scrubbed from now on (None and short values ignored)."""
        if not isinstance(secret, str) or len(secret) < MIN_SECRET_CHARS:
            return
        with self._lock:
            secrets = self._secrets | _forms(secret)
            if secrets == self._secrets:
                return
            longest_first = sorted(secrets, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(s) for s in longest_first))
            self._secrets = frozenset(secrets)

    def scrub(self, text: object) -> str:
        """`text` with every registered secret and every secret-shaped value masked; never
        raises, and never returns a registered secret (not even one the masks would form)."""
        try:
            result = text if isinstance(text, str) else str(text)
        except Exception:  # the fallback below is the answer
            result = f"<unprintable {type(text).__name__}>"
        try:
            result = mask_shapes(result)
            secrets, pattern = self._secrets, self._pattern
            if pattern is None:
                return result
            for _ in range(3):
                if not any(secret in result for secret in secrets):
                    return result
                result = pattern.sub(MASK, result)
            if not any(secret in result for secret in secrets):
                return result
        except Exception:  # the fallback below is the answer
            pass
        return WITHHELD if not any(s in WITHHELD for s in self._secrets) else ""


def mask_shapes(text: str) -> str:
    """`text` with values that are secrets by their shape masked, safe on free text: URL
    passwords (userinfo or `?password=`), bearer/basic/token credentials, GitHub tokens."""
    text = _URL_USERINFO.sub(rf"\1{MASK}@", text)
    text = _QUERY_PASSWORD.sub(rf"\1{MASK}", text)
    text = _CREDENTIAL.sub(rf"\1\2{MASK}", text)
    return _GITHUB_TOKEN.sub(MASK, text)


def redact_dsn(dsn: object) -> str:
    """A DSN (URL or `key=value` words, valid or not) with any password masked, in the form it
    was written; never raises."""
    try:
        text = scrub(dsn)
        return scrub(_KEYWORD_PASSWORD.sub(rf"\1{MASK}", text) if "://" not in text else text)
    except Exception:
        return MASK


def dsn_passwords(dsn: str) -> list[str]:
    """The password(s) a DSN carries, found by shape so an unparseable DSN yields them too."""
    found: list[str] = []
    for match in re.finditer(r"(?i)://[^:/?#@\s]*:([^/?#\s]*)@", dsn):
        found += [match[1], urllib.parse.unquote(match[1])]
    for match in re.finditer(r"(?i)[?&]password=([^&#\s]*)", dsn):
        found += [match[1], urllib.parse.unquote_plus(match[1])]
    for match in re.finditer(r"(?i)(?<![?&\w])password\s*=\s*('(?:[^'\\]|\\.)*'?|\S*)", dsn):
        value = match[1]
        if value.startswith("'"):
            value = re.sub(r"\\(.)", r"\1", value[1:].removesuffix("'"))
        found.append(value)
    return [value for value in found if value]


def register_dsn(dsn: str | None) -> None:
    """Register every password `dsn` carries (by shape, and as libpq parses it)."""
    if not isinstance(dsn, str):
        return
    for password in dsn_passwords(dsn):
        register(password)
    try:
        from psycopg.conninfo import conninfo_to_dict

        parsed = conninfo_to_dict(dsn).get("password")
        register(parsed if isinstance(parsed, str) else None)
    except Exception:  # unparseable: the shapes above are all there is
        pass


SCRUBBER = Scrubber()
register = SCRUBBER.register
scrub = SCRUBBER.scrub


class _ScrubbingFormatter(logging.Formatter):
    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return scrub(self.inner.format(record))


def scrub_log_handlers() -> None:
    """Make every root log handler's output (a `--watch` log) go through `scrub`."""
    for handler in logging.getLogger().handlers:
        if not isinstance(handler.formatter, _ScrubbingFormatter):
            handler.setFormatter(_ScrubbingFormatter(handler.formatter or logging.Formatter()))
