"""GitHub: pull requests over the REST API, and the GitHub Actions conventions (annotations,
the step summary).

Only the standard library speaks HTTP here: two endpoints do not justify a client dependency.
The token is read from GITHUB_TOKEN or GH_TOKEN and only ever placed in the Authorization
header; no message, URL or error this module produces contains it, and credentials embedded in
an origin URL are dropped before the URL is shown anywhere.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from registry.errors import GitError, GitHubError
from registry.http import no_redirect_opener
from registry.repository.git import Git
from registry.repository.state import WORKTREE
from registry.secrets import register, scrub

if TYPE_CHECKING:
    from email.message import Message

    from registry.errors import Problem
    from registry.repository.validation import Report

DEFAULT_API_URL = "https://api.github.com"
API_VERSION = "2022-11-28"
TIMEOUT_SECONDS = 30
MAX_BODY_CHARS = 65_000
"""GitHub refuses pull request bodies above 65,536 characters."""

_NAME = r"[A-Za-z0-9_.-]+"
_URL_RE = re.compile(
    rf"^(?P<scheme>https?|ssh|git)://(?:[^@/]+@)?(?P<host>[^/:@]+)(?::(?P<port>[0-9]+))?"
    rf"/(?P<owner>{_NAME})/(?P<repo>{_NAME}?)(?:\.git)?/?$"
)
_SCP_RE = re.compile(rf"^(?:[^@/:]+@)?(?P<host>[^/:@]+):/?(?P<owner>{_NAME})/(?P<repo>{_NAME}?)"
                     r"(?:\.git)?/?$")


@dataclass(frozen=True)
class GitHubRepo:
    """owner/name on a GitHub host, and the web address pages of it live under."""

    host: str
    owner: str
    name: str
    web_url: str

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"

    def compare_url(self, base: str, head: str) -> str:
        """The page that opens a pull request from `head` into `base` (no token needed)."""
        quote = urllib.parse.quote
        return (f"{self.web_url}/{self.full_name}/compare/{quote(base, safe='/')}..."
                f"{quote(head, safe='/')}?expand=1")

    def api_url(self, env: Mapping[str, str]) -> str:
        """GITHUB_API_URL when set (GitHub Enterprise, or Actions), else the host's default."""
        if env.get("GITHUB_API_URL"):
            return env["GITHUB_API_URL"].rstrip("/")
        return DEFAULT_API_URL if self.host == "github.com" else f"{self.web_url}/api/v3"


def redact(url: str) -> str:
    """`url` without any `user:password@` part, and scrubbed, safe to print."""
    return scrub(re.sub(r"^([a-z+]+://)[^@/]+@", r"\1", url))


def parse_remote_url(url: str) -> GitHubRepo:
    """owner/repo from an https, ssh or scp-style (`git@host:owner/repo.git`) remote URL."""
    url = url.strip()
    found = _URL_RE.match(url)
    if found:
        host = found["host"]
        secure = found["scheme"] != "http"
        port = f":{found['port']}" if found["port"] and found["scheme"].startswith("http") else ""
        web = f"{'https' if secure else 'http'}://{host}{port}"
        return GitHubRepo(host, found["owner"], found["repo"], web)
    found = _SCP_RE.match(url)
    if found and "://" not in url:
        return GitHubRepo(found["host"], found["owner"], found["repo"], f"https://{found['host']}")
    raise GitError(
        f"the origin URL {redact(url)} does not name a GitHub repository",
        fix="set it with `git remote set-url origin https://github.com/OWNER/REPO.git` "
            "(or git@github.com:OWNER/REPO.git)",
    )


def origin_repo(git: Git, remote: str = "origin") -> GitHubRepo:
    """The GitHub repository behind `remote` (its configured URL, not a rewritten one)."""
    url = git.remote_url(remote)
    if not url:
        raise GitError(f"there is no remote named {remote}",
                       fix="git remote add origin https://github.com/OWNER/REPO.git")
    return parse_remote_url(url)


def token_from(env: Mapping[str, str]) -> str | None:
    for name in ("GITHUB_TOKEN", "GH_TOKEN"):
        value = env.get(name, "").strip()
        if value:
            register(value)
            return value
    return None


# ---------------------------------------------------------------------------------------------
# The REST client


@dataclass(frozen=True)
class PullRequest:
    number: int
    url: str
    created: bool


@dataclass(frozen=True)
class Proposal:
    """A pull request that exists (number set) or, without a token, the page to open one."""

    branch: str
    base: str
    url: str
    number: int | None = None
    created: bool = False


class GitHubClient:
    """The two pull request endpoints, with every failure turned into one GitHubError line."""

    def __init__(self, api_url: str, token: str, repo: GitHubRepo) -> None:
        self.api_url = api_url.rstrip("/")
        self._token = token
        register(token)
        self.repo = repo
        self._opener = no_redirect_opener()

    def __repr__(self) -> str:
        return f"GitHubClient({self.api_url!r}, {self.repo.full_name!r})"

    def _request(
        self, method: str, path: str, body: dict[str, Any] | None = None,
        query: dict[str, str] | None = None,
    ) -> Any:
        url = f"{self.api_url}{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        request = urllib.request.Request(
            url, method=method, data=json.dumps(body).encode() if body is not None else None,
            headers={
                "Accept": "application/vnd.github+json",
                "Authorization": f"Bearer {self._token}",
                "X-GitHub-Api-Version": API_VERSION,
                "User-Agent": "chunk-registry",
                **({"Content-Type": "application/json"} if body is not None else {}),
            },
        )
        try:
            with self._opener.open(request, timeout=TIMEOUT_SECONDS) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as err:
            raise self._error(err.code, err.headers, _payload(err), method, path) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
            reason = scrub(getattr(err, "reason", err))
            raise GitHubError(f"cannot reach the GitHub API at {redact(self.api_url)}: {reason}",
                              fix="check the network, or GITHUB_API_URL for GitHub Enterprise"
                              ) from None
        except ValueError:
            raise GitHubError(f"the GitHub API at {redact(self.api_url)} answered {method} "
                              f"{path} with something that is not JSON",
                              fix="check GITHUB_API_URL: it must be the REST API root") from None

    def _error(
        self, status: int, headers: Message, payload: dict[str, Any], method: str, path: str
    ) -> GitHubError:
        message = scrub(str(payload.get("message") or "").strip())
        repo = self.repo.full_name
        if status == 401:
            return GitHubError(f"GitHub rejected the token (401 {message or 'Bad credentials'})",
                               fix="set GITHUB_TOKEN or GH_TOKEN to a valid token")
        if status in (403, 429) and (
            headers.get("x-ratelimit-remaining") == "0" or headers.get("retry-after")
            or "rate limit" in message.lower()
        ):
            return GitHubError(_rate_limit_message(status, headers),
                               fix="wait until then, or use a token with a higher limit")
        if status == 403:
            return GitHubError(f"GitHub refused {method} {path} (403 {message or 'Forbidden'})",
                               fix=f"the token needs pull request write access to {repo}")
        if status == 404:
            return GitHubError(f"GitHub has no repository {repo}, or the token cannot see it "
                               "(404 Not Found)",
                               fix="check the origin URL, and the token's repository access")
        if status == 422:
            details = [scrub(_detail(e)) for e in payload.get("errors") or []]
            if any("already exists" in d for d in details):
                return GitHubError(f"a pull request already exists on {repo}: {details[0]}",
                                   fix="open the existing pull request instead")
            reason = "; ".join(details) or message or "Validation Failed"
            return GitHubError(f"GitHub refused the pull request on {repo} (422 {reason})",
                               fix="check that the branch was pushed and differs from the base")
        if 300 <= status < 400:
            return GitHubError(f"the GitHub API redirected {method} {path} ({status}): {repo} "
                               "may have moved", fix="update the origin URL to the new location")
        return GitHubError(f"GitHub answered {method} {path} with {status} {message}".rstrip(),
                           fix="retry later; https://www.githubstatus.com shows outages")

    def find_open(self, branch: str, base: str) -> PullRequest | None:
        """The open pull request from `branch` into `base`, if there is one."""
        found = self._request(
            "GET", f"/repos/{self.repo.full_name}/pulls",
            query={"head": f"{self.repo.owner}:{branch}", "base": base, "state": "open"},
        )
        if not isinstance(found, list) or not found:
            return None
        return self._pull(found[0], created=False, doing="GET pulls")

    def open_pulls(self, base: str) -> list[tuple[str, PullRequest]]:
        """(head branch, pull request) of every open pull request into `base`."""
        found = self._request("GET", f"/repos/{self.repo.full_name}/pulls",
                              query={"base": base, "state": "open", "per_page": "100"})
        if not isinstance(found, list):
            found = []
        return [(self._field(p, "head", "ref", doing="GET pulls"),
                 self._pull(p, created=False, doing="GET pulls"))
                for p in found if isinstance(p, dict)]

    def create(self, branch: str, base: str, title: str, body: str) -> PullRequest:
        pull = self._request(
            "POST", f"/repos/{self.repo.full_name}/pulls",
            body={"title": title, "head": branch, "base": base, "body": body[:MAX_BODY_CHARS],
                  "maintainer_can_modify": True},
        )
        return self._pull(pull, created=True, doing="POST pulls")

    def _pull(self, data: Any, *, created: bool, doing: str) -> PullRequest:
        """A pull request from the server's JSON, every field checked and its text scrubbed:
        the server decides what is in it, and it is printed and recorded."""
        number = self._field(data, "number", doing=doing)
        if not number.isdigit():
            raise self._malformed(doing, "number", number)
        url = self._field(data, "html_url", doing=doing)
        if not url.startswith(("https://", "http://")):
            raise self._malformed(doing, "html_url", url)
        return PullRequest(int(number), url, created=created)

    def _field(self, data: Any, *path: str, doing: str) -> str:
        """`data[path...]` as scrubbed text (a number is its digits)."""
        value = data
        for key in path:
            if not isinstance(value, dict) or key not in value:
                raise self._malformed(doing, ".".join(path), "missing")
            value = value[key]
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise self._malformed(doing, ".".join(path), type(value).__name__)
        return scrub(str(value))

    def _malformed(self, doing: str, name: str, value: str) -> GitHubError:
        return GitHubError(
            f"the GitHub API at {redact(self.api_url)} answered {doing} with a malformed pull "
            f"request ({name}: {scrub(value)[:80]})",
            fix="check GITHUB_API_URL: it must be the GitHub REST API root")


def _payload(err: urllib.error.HTTPError) -> dict[str, Any]:
    try:
        data = json.loads(err.read() or b"{}")
    except (ValueError, OSError):
        return {}
    return data if isinstance(data, dict) else {}


def _detail(error: Any) -> str:
    """One entry of a 422's `errors`: its message, else `field code` (e.g. `head invalid`)."""
    if not isinstance(error, dict):
        return str(error)
    if error.get("message"):
        return str(error["message"])
    return " ".join(str(error[k]) for k in ("field", "code") if error.get(k)) or "invalid"


def _rate_limit_message(status: int, headers: Message) -> str:
    retry_after = headers.get("retry-after")
    if retry_after and retry_after.isdigit():
        return f"GitHub secondary rate limit hit ({status}); retry after {retry_after} s"
    reset = headers.get("x-ratelimit-reset")
    if reset and reset.isdigit():
        at = datetime.fromtimestamp(int(reset), UTC)
        minutes = max(0, round((at - datetime.now(UTC)).total_seconds() / 60))
        return (f"GitHub API rate limit exceeded ({status}); it resets at "
                f"{at:%Y-%m-%d %H:%M:%S} UTC, in {minutes} min")
    return f"GitHub API rate limit exceeded ({status})"


def propose(
    git: Git, branch: str, base: str, title: str, body: str,
    env: Mapping[str, str] | None = None,
) -> Proposal:
    """Open (or find the open) pull request for an already pushed `branch`.

    Without GITHUB_TOKEN/GH_TOKEN, return the compare page that opens one in the browser.
    """
    env = os.environ if env is None else env
    repo = origin_repo(git)
    token = token_from(env)
    if token is None:
        return Proposal(branch, base, repo.compare_url(base, branch))
    client = GitHubClient(repo.api_url(env), token, repo)
    pull = client.find_open(branch, base) or client.create(branch, base, title, body)
    return Proposal(branch, base, pull.url, pull.number, pull.created)


# ---------------------------------------------------------------------------------------------
# GitHub Actions: workflow commands and the step summary


def _escape(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape(text).replace(":", "%3A").replace(",", "%2C")


def annotation(problem: Problem, title: str = "registry validate") -> str:
    """The workflow command that shows `problem` as an annotation on its file and line."""
    message = problem.message + (f" ({problem.fix})" if problem.fix else "")
    level = "warning" if problem.severity == "warning" else "error"
    return (f"::{level} file={_escape_property(problem.path)},line={problem.line},"
            f"title={_escape_property(title)}::{_escape(message)}")


def append_step_summary(markdown: str, env: Mapping[str, str] | None = None) -> bool:
    """Append Markdown to the job summary ($GITHUB_STEP_SUMMARY); False outside Actions."""
    env = os.environ if env is None else env
    path = env.get("GITHUB_STEP_SUMMARY")
    if not path:
        return False
    with open(path, "a", encoding="utf-8") as summary:
        summary.write(markdown if markdown.endswith("\n") else markdown + "\n")
    return True


def validation_summary(report: Report) -> str:
    """`registry validate` as Markdown for the job summary: verdict, then each problem."""
    where = "the working tree" if report.ref == WORKTREE else f"`{report.ref}`"
    verdict = "passed" if report.ok else "failed"
    icon = "\u2705" if report.ok else "\u274c"
    configs = f"{report.configs} config{'' if report.configs == 1 else 's'}"
    lines = [f"### {icon} registry validate {verdict}", "",
             f"{configs} in {where}, {len(report.errors)} errors, "
             f"{len(report.warnings)} warnings.", ""]
    if report.problems:
        lines += ["| | Where | Problem | Fix |", "|---|---|---|---|"]
        for problem in report.problems:
            mark = "warning" if problem.severity == "warning" else "error"
            cells = [problem.message, problem.fix or ""]
            text = [c.replace("|", "\\|").replace("\n", " ") for c in cells]
            lines.append(f"| {mark} | `{problem.path}:{problem.line}` | {text[0]} | {text[1]} |")
    return "\n".join(lines) + "\n"
