"""A local GitHub REST server for the two pull request endpoints, following the documented
contract (https://docs.github.com/rest/pulls/pulls): authentication, 404 for unknown repos,
422 Validation Failed (missing fields, a head branch that was never pushed, a pull request
that already exists), primary and secondary rate limits with their headers. It records every
request it received (method, path, query, headers, JSON body) so tests assert on the wire."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from tests import local_http

if TYPE_CHECKING:
    import pytest

    from tests.helpers import RegistryRepo

DOCS = "https://docs.github.com/rest/pulls/pulls"


@dataclass
class Received:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


@dataclass
class FakeGitHub(local_http.LocalServer):
    """`repos` maps `owner/name` to the bare repository the branches are pushed to."""

    token: str
    repos: dict[str, Path]
    prefix: str = ""
    rate_limit: int = 5000
    limited_status: int = 403
    secondary_retry_after: int | None = None
    list_lags: bool = False
    received: list[Received] = field(default_factory=list)
    pulls: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    reset_at: int = field(default_factory=lambda: int(time.time()) + 1800)

    def __enter__(self) -> FakeGitHub:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake.handle(self)

            def do_POST(self) -> None:
                fake.handle(self)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = local_http.start(Handler)
        return self

    @property
    def url(self) -> str:
        return self.origin + self.prefix

    # -- the contract ---------------------------------------------------------------------------

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(request.path)
        length = int(request.headers.get("Content-Length") or 0)
        raw = request.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        self.received.append(Received(request.command, parts.path, query,
                                      {k.lower(): v for k, v in request.headers.items()}, body))
        status, payload, headers = self.answer(request, parts.path, query, body)
        data = json.dumps(payload).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json; charset=utf-8")
        request.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            request.send_header(name, value)
        request.end_headers()
        request.wfile.write(data)

    def answer(self, request: BaseHTTPRequestHandler, path: str, query: dict[str, str],
               body: Any) -> tuple[int, Any, dict[str, str]]:
        auth = request.headers.get("Authorization", "")
        if auth not in (f"Bearer {self.token}", f"token {self.token}"):
            return 401, {"message": "Bad credentials", "documentation_url": DOCS,
                         "status": "401"}, {}
        self.rate_limit -= 1
        remaining = str(max(self.rate_limit, 0))
        limits = {"x-ratelimit-limit": "5000", "x-ratelimit-remaining": remaining,
                  "x-ratelimit-reset": str(self.reset_at), "x-ratelimit-resource": "core"}
        if self.secondary_retry_after is not None:
            return self.limited_status, {
                "message": "You have exceeded a secondary rate limit. Please wait a few minutes "
                           "before you try again.", "documentation_url": DOCS,
            }, {**limits, "retry-after": str(self.secondary_retry_after)}
        if self.rate_limit < 0:
            return self.limited_status, {"message": "API rate limit exceeded for user ID 1.",
                                         "documentation_url": DOCS}, limits
        segments = path.removeprefix(self.prefix).strip("/").split("/")
        if len(segments) != 4 or segments[0] != "repos" or segments[3] != "pulls":
            return 404, {"message": "Not Found", "documentation_url": DOCS}, limits
        full_name = f"{segments[1]}/{segments[2]}"
        if full_name not in self.repos:
            return 404, {"message": "Not Found", "documentation_url": DOCS}, limits
        pulls = self.pulls.setdefault(full_name, [])
        if request.command == "GET":
            found = [] if self.list_lags else [
                p for p in pulls
                if p["head"]["label"] == query.get("head", p["head"]["label"])
                and p["base"]["ref"] == query.get("base", p["base"]["ref"])
                and query.get("state", "open") in (p["state"], "all")
            ]
            return 200, found, limits
        return self.create(full_name, pulls, body, limits)

    def create(self, full_name: str, pulls: list[dict[str, Any]], body: Any,
               limits: dict[str, str]) -> tuple[int, Any, dict[str, str]]:
        owner = full_name.split("/")[0]
        missing = [f for f in ("head", "base", "title") if not (body or {}).get(f)]
        if missing:
            return 422, self.invalid({"resource": "PullRequest", "field": missing[0],
                                      "code": "missing_field"}), limits
        head, base = body["head"], body["base"]
        if any(p["head"]["ref"] == head and p["base"]["ref"] == base and p["state"] == "open"
               for p in pulls):
            return 422, self.invalid({"resource": "PullRequest", "code": "custom",
                                      "message": f"A pull request already exists for "
                                                 f"{owner}:{head}."}), limits
        if not self.has_branch(full_name, head):
            return 422, self.invalid({"resource": "PullRequest", "field": "head",
                                      "code": "invalid"}), limits
        number = sum(len(p) for p in self.pulls.values()) + 1
        pull = {
            "number": number, "state": "open", "title": body["title"], "body": body.get("body"),
            "html_url": f"https://github.com/{full_name}/pull/{number}",
            "url": f"https://api.github.com/repos/{full_name}/pulls/{number}",
            "head": {"ref": head, "label": f"{owner}:{head}"},
            "base": {"ref": base, "label": f"{owner}:{base}"},
        }
        pulls.append(pull)
        return 201, pull, limits

    @staticmethod
    def invalid(error: dict[str, str]) -> dict[str, Any]:
        return {"message": "Validation Failed", "errors": [error], "documentation_url": DOCS,
                "status": "422"}

    def has_branch(self, full_name: str, branch: str) -> bool:
        proc = subprocess.run(
            ["git", "-C", str(self.repos[full_name]), "rev-parse", "--verify", "--quiet",
             f"refs/heads/{branch}"], capture_output=True, check=False,
        )
        return proc.returncode == 0


@contextmanager
def acme_origin(registry_repo: RegistryRepo, monkeypatch: pytest.MonkeyPatch,
                token: str) -> Iterator[FakeGitHub]:
    """The registry's origin named https://github.com/acme/chunk-configs (pushes go to the bare
    repo), and a local API for it that knows `token` (GITHUB_API_URL and GITHUB_TOKEN set)."""
    registry_repo.git("remote", "set-url", "origin", "https://github.com/acme/chunk-configs.git")
    registry_repo.git("remote", "set-url", "--push", "origin", str(registry_repo.origin))
    with FakeGitHub(token, {"acme/chunk-configs": registry_repo.origin}) as server:
        monkeypatch.setenv("GITHUB_API_URL", server.url)
        monkeypatch.setenv("GITHUB_TOKEN", token)
        yield server
