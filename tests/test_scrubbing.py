"""Secrets in text the user did not write: whatever a GitHub API (or a proxy in front of it)
answers, and whatever DSN a user types, the token and the password never reach the output,
and the scrubber itself never fails (a crash in it would print a traceback with the secret)."""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from registry.errors import GitHubError
from registry.repository.git import Git
from registry.repository.github import propose
from registry.repository.lifecycle import tag
from registry.secrets import MASK, Scrubber, dsn_passwords, redact_dsn
from tests.github_server import FakeGitHub
from tests.helpers import RegistryRepo, run_cli

TOKEN = "ghp_ScrubMe0123456789abcdefABCDEF012345"
PASSWORD = "Pw-0f-Secr3t"


@dataclass
class HostileGitHub(FakeGitHub):
    """An API (or proxy) that answers with `reply`: a JSON payload for both endpoints, or raw
    bytes instead of a whole HTTP response; `{auth}` in it becomes the request's
    Authorization header, so every answer echoes the token."""

    reply: Any = None
    status: int = 200

    def handle(self, request: Any) -> None:
        auth = request.headers.get("Authorization", "")
        if isinstance(self.reply, bytes):
            request.wfile.write(self.reply.replace(b"{auth}", auth.encode()))
            request.close_connection = True
            return
        data = json.dumps(self.reply).replace("{auth}", auth).encode()
        request.send_response(self.status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        request.wfile.write(data)


def pull(number: Any = 1, url: Any = "https://github.com/acme/chunk-configs/pull/1") -> Any:
    return {"number": number, "html_url": url, "head": {"ref": "x"}}


ECHOED = "{auth}"
HOSTILE_REPLIES: dict[str, tuple[Any, int, int]] = {
    # name: (reply, HTTP status, expected exit code)
    "new PR's URL echoes the token": (pull(url=f"https://github.com/acme/c/pull/1?{ECHOED}"),
                                      201, 0),
    "existing PR's URL echoes the token": ([pull(url=f"https://github.com/pull/1#{ECHOED}")],
                                           200, 0),
    "number is the token": (pull(number=ECHOED), 201, 9),
    "number is a float": (pull(number=1.5), 201, 9),
    "number is missing": ({"html_url": ECHOED}, 201, 9),
    "URL is not a URL": (pull(url=f"javascript:{ECHOED}"), 201, 9),
    "URL is an object": (pull(url={"x": ECHOED}), 201, 9),
    "the answer is a string": (ECHOED, 201, 9),
    "listing of strings": ([ECHOED], 200, 9),
    "status line echoes the token": (b"HTTP/1.1 OK {auth}\r\n\r\n", 0, 9),
    "status code is the token": (b"HTTP/1.1 {auth} OK\r\nContent-Length: 0\r\n\r\n", 0, 9),
    "header line is garbage": (b"HTTP/1.1 200 OK\r\n{auth}\r\n\r\n[]", 0, 9),
    "body cut short": (b"HTTP/1.1 200 OK\r\nContent-Length: 900\r\n\r\n[{\"x\": \"{auth}", 0, 9),
    "body is not JSON": (b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n{auth}", 0, 9),
    "body is not UTF-8": (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n\xff\xfe\x00", 0, 9),
}


@pytest.fixture
def origin(registry_repo: RegistryRepo, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    registry_repo.git("remote", "set-url", "origin", "https://github.com/acme/chunk-configs.git")
    registry_repo.git("remote", "set-url", "--push", "origin", str(registry_repo.origin))
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
    yield registry_repo.locked()
    tag(Git(registry_repo.path))


@pytest.mark.parametrize("case", list(HOSTILE_REPLIES))
def test_no_answer_of_a_github_api_puts_the_token_in_front_of_the_user(
    registry_repo: RegistryRepo, origin: str, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    reply, status, code = HOSTILE_REPLIES[case]
    tag(Git(registry_repo.path))
    with HostileGitHub(TOKEN, {}, reply=reply, status=status) as api:
        monkeypatch.setenv("GITHUB_API_URL", api.url)
        result = run_cli("--debug", "promote", origin, "--pr", "--repo", registry_repo.path)
        try:
            proposal: Any = propose(Git(registry_repo.path), f"promote/{origin}", "main", "t", "b")
        except GitHubError as err:
            proposal = err
    shown = result.stdout + result.stderr + str(proposal) + repr(proposal)
    assert result.code == code, result.stderr
    assert TOKEN not in shown
    assert "unexpected error" not in shown
    if code == 9:
        assert result.stderr.count("\n") == 1 and "GitHub API" in result.stderr, result.stderr
    else:
        assert f"Bearer {MASK}" in result.stdout, result.stdout


@pytest.mark.parametrize("dsn", [
    f"postgresql://u:{PASSWORD}@[bad/db",
    f"postgresql://u:{PASSWORD}@h:port/db",
    f"host=h PASSWORD={PASSWORD} dbname=x",
    f"host=h Password='{PASSWORD} dbname=x",
    f"host=h password = '{PASSWORD}",
    f"postgresql://u@h/db?PassWord={PASSWORD}&x",
    f"postgresql://u@h/db?password={urllib.parse.quote(PASSWORD + ' %')}",
    f"host=h password={PASSWORD} port=notaport",
    f"postgresql://u:{PASSWORD}@/db?host=/nowhere",
])
@pytest.mark.parametrize("command", ["status", "db url", "--debug plan"])
def test_no_dsn_shows_its_password_whatever_its_shape_or_letter_case(
    registry_repo: RegistryRepo, dsn: str, command: str
) -> None:
    repo = [] if command == "db url" else ["--repo", str(registry_repo.path)]
    result = run_cli(*command.split(), *repo, "--dsn", dsn)
    assert PASSWORD not in result.stdout + result.stderr
    assert result.code in (0, 2, 5), result.stderr
    assert PASSWORD not in redact_dsn(dsn)
    assert any(PASSWORD in found for found in dsn_passwords(dsn))


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError(TOKEN)


secret_text = st.text(min_size=3, max_size=12)


@settings(max_examples=300, deadline=None)
@given(secrets=st.lists(secret_text, min_size=1, max_size=4),
       pieces=st.lists(st.one_of(st.text(max_size=8), st.integers(0, 3)), max_size=12),
       forms=st.sampled_from(["raw", "quoted", "json", "repr"]))
@pytest.mark.slow
def test_the_scrubber_never_raises_and_never_returns_a_registered_secret(
    secrets: list[str], pieces: list[str | int], forms: str
) -> None:
    scrubber = Scrubber()
    for secret in secrets:
        scrubber.register(secret)
    encode = {"raw": str, "quoted": lambda s: urllib.parse.quote(s, safe=""),
              "json": lambda s: json.dumps(s)[1:-1], "repr": lambda s: repr(s)[1:-1]}[forms]
    text = "".join(encode(secrets[p % len(secrets)]) if isinstance(p, int) else p
                   for p in pieces)
    out = scrubber.scrub(text)
    assert not any(encode(secret) in out for secret in secrets), (text, out)
    assert not any(secret in out for secret in secrets), (text, out)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_masking_any_text_or_dsn_never_raises(text: str) -> None:
    scrubber = Scrubber()
    scrubber.register(text)
    assert isinstance(scrubber.scrub(text), str)
    assert isinstance(redact_dsn(text), str)
    assert dsn_passwords(text) is not None
    assert scrubber.scrub(Unprintable()) == "<unprintable Unprintable>"


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(categories=("Cs", "L", "P")), min_size=1))
def test_registering_and_masking_text_with_lone_surrogates_never_raises(text: str) -> None:
    """A DSN or token typed with a lone surrogate (hypothesis' text() leaves them out)."""
    scrubber = Scrubber()
    scrubber.register(f"pw{text}secret")
    assert f"pw{text}secret" not in scrubber.scrub(f"password=pw{text}secret host=x")
    assert isinstance(redact_dsn(f"password=pw{text}secret"), str)


@settings(max_examples=200, deadline=None)
@given(password=st.text(st.characters(blacklist_categories=("Cs", "Cc", "Z")), min_size=1,
                        max_size=20).filter(lambda p: not p.startswith("'") and "\\" not in p),
       keyword=st.sampled_from(["password", "PASSWORD", "Password", "pAsSwOrD"]),
       shape=st.sampled_from(["url", "query", "keyword", "quoted", "unclosed"]))
def test_a_password_in_any_dsn_shape_is_masked_even_before_it_is_registered(
    password: str, keyword: str, shape: str
) -> None:
    quoted = urllib.parse.quote(password, safe="")
    escaped = password.replace("'", "\\'")
    dsn, shown = {
        "url": (f"postgresql://u:{quoted}@h/db", "postgresql://u:***@h/db"),
        "query": (f"postgresql://u@h/db?{keyword}={quoted}&sslmode=require",
                  f"postgresql://u@h/db?{keyword}=***&sslmode=require"),
        "keyword": (f"host=h {keyword}={password} dbname=db", f"host=h {keyword}=*** dbname=db"),
        "quoted": (f"host=h {keyword} = '{escaped} x' dbname=db",
                   f"host=h {keyword} = *** dbname=db"),
        "unclosed": (f"host=h {keyword}='{password} dbname=db", f"host=h {keyword}=*** dbname=db"),
    }[shape]
    assert redact_dsn(dsn) == shown
