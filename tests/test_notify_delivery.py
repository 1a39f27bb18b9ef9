"""Notification delivery against real local servers (http.server webhooks, aiosmtpd) and real
PostgreSQL bookkeeping: a redirect is a failure and nothing reaches where it points; an email
reaches each recipient once, however many retries the others need; a URL or token that holds
whitespace or a control character is refused without being shown, and no library's exception
text is repeated; a Retry-After of any size is recorded as a retry."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from registry.database import bookkeeping
from registry.notify.delivery import Message, send
from registry.notify.dispatch import notify
from registry.notify.events import Check, Event
from registry.notify.scrub import Scrubber
from registry.notify.settings import NotificationSettings, Target
from tests.notify_servers import SmtpServer, WebhookServer

TOKEN = "bearer-tOkEn-0123456789abcdef"
SECRET_PATH = "/services/T0/B0/sEcReTpAtH0123456789"
PASSWORD = "smtp-Pa55-sekret"
MESSAGE = Message("drift", "test", "view", "fp", "Drift: view", "the view reads another table",
                  "2026-01-01T00:00:00Z")
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def deliver(target: Target, env: dict[str, str], timeout: float = 2.0) -> tuple[bool, str]:
    outcome = send(target, MESSAGE, env, timeout, Scrubber.from_env(target.secret_envs, env))
    return outcome.sent, outcome.detail


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308, 300, 305])
@pytest.mark.parametrize("kind", ["slack", "webhook"])
def test_a_redirect_is_a_failure_and_nothing_reaches_where_it_points(kind: str,
                                                                     status: int) -> None:
    with WebhookServer() as elsewhere, WebhookServer("redirect", redirect_status=status) as hook:
        hook.location = elsewhere.url("/landing")
        env = {"HOOK_URL": hook.url(SECRET_PATH), "HOOK_TOKEN": TOKEN}
        sent, detail = deliver(Target("audit", kind, "HOOK_URL", "HOOK_TOKEN"), env)
    assert not sent
    assert detail == (f"HTTP {status}: redirects are not followed (point the target at the "
                      "final URL)")
    assert [(r.method, r.headers["Authorization"]) for r in hook.received] == [
        ("POST", f"Bearer {TOKEN}")]
    assert elsewhere.received == []


def test_the_embedding_and_github_clients_do_not_follow_redirects_either() -> None:
    """One opener serves every client that carries a token; none follows a redirect."""
    from registry.embedding.openai import OpenAIEmbedder
    from registry.errors import EmbedderError, GitHubError
    from registry.repository.github import GitHubClient, GitHubRepo

    with WebhookServer() as elsewhere, WebhookServer("redirect") as api:
        api.location = elsewhere.url("/landing")
        embedder = OpenAIEmbedder("m", base_url=api.url("/v1"), token=TOKEN, dimension=4)
        with pytest.raises(EmbedderError, match="redirect"):
            embedder.embed_texts(["a text"])
        client = GitHubClient(api.url(""), TOKEN, GitHubRepo("github.com", "o", "r",
                                                              "https://github.com/o/r"))
        with pytest.raises(GitHubError, match="redirected"):
            client.find_open("branch", "main")
        with pytest.raises(GitHubError, match="redirected"):
            client.create("branch", "main", "title", "body")
    assert api.received and elsewhere.received == []


BAD_CHARACTERS = {"newline": "\n", "tab": "\t", "space": " ", "carriage return": "\r",
                  "NUL": "\x00", "escape": "\x1b", "line separator": "\u2028",
                  "zero-width space": "\u200b", "no-break space": "\u00a0"}


@pytest.mark.parametrize("bad", BAD_CHARACTERS.values(), ids=BAD_CHARACTERS.keys())
@pytest.mark.parametrize("where", ["HOOK_URL", "HOOK_TOKEN"])
def test_a_url_or_token_with_whitespace_or_a_control_character_is_refused_unshown(
    where: str, bad: str
) -> None:
    with WebhookServer() as hook:
        env = {"HOOK_URL": hook.url(SECRET_PATH), "HOOK_TOKEN": TOKEN}
        env[where] = env[where][:-8] + bad + env[where][-8:]
        sent, detail = deliver(Target("audit", "webhook", "HOOK_URL", "HOOK_TOKEN"), env)
    assert not sent and hook.received == []
    assert detail.startswith(f"target audit: {where} holds whitespace or a control character")
    assert "its value is not shown" in detail
    for piece in re.split(r"[/:]", env[where].replace(bad, "/")):
        assert len(piece) < 5 or piece not in detail


@pytest.mark.parametrize("url", ["http://127.0.0.1:99pOrTsEcReT/hook", "ftp://example.com/sEcReT",
                                 "http:///sEcReTpAtH", "not a url sEcReT"])
def test_a_url_that_is_not_http_is_refused_unshown(url: str) -> None:
    sent, detail = deliver(Target("chat", "slack", "HOOK_URL"), {"HOOK_URL": url})
    assert not sent and "sEcReT" not in detail and "pOrTsEcReT" not in detail
    assert detail.startswith("target chat: HOOK_URL ")


def test_a_library_error_is_named_by_its_type_never_by_its_text() -> None:
    """http.client refuses a header it cannot encode and would quote it; only the type shows."""
    with WebhookServer() as hook:
        env = {"HOOK_URL": hook.url("/hook"), "HOOK_TOKEN": "tok€n-sEcReT-value"}
        sent, detail = deliver(Target("audit", "webhook", "HOOK_URL", "HOOK_TOKEN"), env)
    assert not sent and hook.received == []
    assert detail == "UnicodeEncodeError (its text is not shown: it may hold the URL or a token)"


def test_an_smtp_password_may_hold_spaces_but_no_control_character() -> None:
    spaced = "pass word with spaces"
    with SmtpServer("bot", spaced) as smtp:
        target = Target("oncall", "email", host="127.0.0.1", port=smtp.port, security="none",
                        username="bot", password_env="SMTP_PW", sender="r@example.com",
                        recipients=("oncall@example.com",))
        assert deliver(target, {"SMTP_PW": spaced})[0]
        sent, detail = deliver(target, {"SMTP_PW": "first-line\nsecond-line"})
    assert not sent and "line" not in detail.replace("control character", "")
    assert detail.startswith("target oncall: SMTP_PW holds a control character")
    assert smtp.recipients == ["oncall@example.com"]


def email_target(port: int, *recipients: str) -> Target:
    return Target("oncall", "email", host="127.0.0.1", port=port, security="none",
                  username="bot", password_env="SMTP_PW", sender="registry@example.com",
                  recipients=recipients)


def test_each_recipient_gets_an_email_once_and_a_retry_goes_only_to_those_who_did_not(
    dsn: str,
) -> None:
    people = ("oncall@example.com", "nobody@example.com", "away@example.com")
    settings = NotificationSettings((email_target(0, *people),), (("drift", ("oncall",)),))
    opened = Check((("drift", None),), (Event("drift", "view", "fp", "drift found", "body"),))
    env = {"SMTP_PW": PASSWORD}
    with SmtpServer("bot", PASSWORD) as smtp, psycopg.connect(dsn, autocommit=True) as conn:
        settings = NotificationSettings((email_target(smtp.port, *people),), settings.routes)
        bookkeeping.ensure_schema(conn)

        def run(check: Check, later: timedelta) -> tuple[str, bool, str]:
            [done] = notify(conn, settings, check, registry="r", env=env, now=NOW + later)
            return done.phase, done.outcome.sent, done.outcome.detail

        smtp.refuse = {"nobody@example.com", "away@example.com"}
        phase, sent, detail = run(opened, timedelta())
        assert (phase, sent) == ("opened", False)
        assert detail.startswith("not accepted for nobody@example.com (")
        assert "away@example.com (" in detail and "550" in detail
        assert detail.endswith("; sent to oncall@example.com")
        assert smtp.recipients == ["oncall@example.com"]

        smtp.refuse = {"nobody@example.com"}
        phase, sent, detail = run(opened, timedelta(hours=1))
        assert not sent and detail.endswith("; sent to away@example.com; 1 got it at an "
                                            "earlier attempt")
        assert smtp.recipients == ["oncall@example.com", "away@example.com"]
        phase, sent, detail = run(opened, timedelta(hours=2))
        assert not sent and detail.endswith("; 2 got it at an earlier attempt")
        assert smtp.recipients == ["oncall@example.com", "away@example.com"]

        smtp.refuse = set()
        assert run(opened, timedelta(days=1))[:2] == ("opened", True)
        assert smtp.recipients == ["oncall@example.com", "away@example.com",
                                   "nobody@example.com"]
        assert conn.execute("SELECT open_status, attempts, delivered_to, last_error "
                            "FROM chunk_registry.notifications").fetchall() == [
            ("sent", 0, [], None)]

        # The resolution is a new message: everyone gets it, once.
        assert run(Check((("drift", None),)), timedelta(days=2))[:2] == ("resolved", True)
        assert sorted(smtp.recipients[3:]) == sorted(people)
        assert notify(conn, settings, Check((("drift", None),)), registry="r", env=env,
                      now=NOW + timedelta(days=3)) == []
        assert len(smtp.messages) == 6


def test_a_partial_email_that_runs_out_of_attempts_is_abandoned_without_resending(
    dsn: str,
) -> None:
    with SmtpServer("bot", PASSWORD) as smtp, psycopg.connect(dsn, autocommit=True) as conn:
        settings = NotificationSettings(
            (email_target(smtp.port, "oncall@example.com", "nobody@example.com"),),
            (("drift", ("oncall",)),), max_attempts=3)
        bookkeeping.ensure_schema(conn)
        smtp.refuse = {"nobody@example.com"}
        check = Check((("drift", None),), (Event("drift", "view", "fp", "drift", "body"),))
        for day in range(5):
            notify(conn, settings, check, registry="r", env={"SMTP_PW": PASSWORD},
                   now=NOW + timedelta(days=day))
        assert smtp.recipients == ["oncall@example.com"]
        assert conn.execute("SELECT open_status, attempts, delivered_to "
                            "FROM chunk_registry.notifications").fetchall() == [
            ("abandoned", 3, ["oncall@example.com"])]


@pytest.mark.parametrize(("header", "wait"), [
    ("inf", timedelta(days=1)), ("Infinity", timedelta(days=1)), ("1e400", timedelta(days=1)),
    ("1e20", timedelta(days=1)), ("99999999999999", timedelta(days=1)),
    ("172800", timedelta(days=1)), ("600", timedelta(minutes=10)),
    ("nan", timedelta(minutes=5)), ("-5", timedelta(minutes=5)), ("soon", timedelta(minutes=5)),
])
def test_any_retry_after_is_recorded_as_a_retry_of_at_most_a_day(
    dsn: str, header: str, wait: timedelta,
) -> None:
    with WebhookServer("429", retry_after=header) as hook, \
            psycopg.connect(dsn, autocommit=True) as conn:
        bookkeeping.ensure_schema(conn)
        settings = NotificationSettings((Target("chat", "slack", "HOOK_URL"),),
                                        (("drift", ("chat",)),))
        check = Check((("drift", None),), (Event("drift", "view", "fp", "drift", "body"),))
        [done] = notify(conn, settings, check, registry="r", env={"HOOK_URL": hook.url("/h")},
                        now=NOW)
        assert not done.outcome.sent
        assert conn.execute("SELECT open_status, attempts, next_attempt_at - last_attempt_at, "
                            "last_error FROM chunk_registry.notifications").fetchall() == [
            ("pending", 1, wait, "HTTP 429 rate_limited")]
        assert notify(conn, settings, check, registry="r", env={"HOOK_URL": hook.url("/h")},
                      now=NOW + wait - timedelta(seconds=1)) == []
        assert len(hook.received) == 1


@pytest.mark.parametrize("glue", ["\n", "\r\n", "\t", " ", "\x00", "\u2028", "\u200b"])
def test_the_pieces_of_a_secret_split_by_whitespace_are_masked_wherever_they_show(
    glue: str,
) -> None:
    """A library quotes such a value escaped (`\\n`) or cut at the break: no piece shows."""
    first, second = "first-half-AAAA0000", "second-half-SECRET99"
    scrub = Scrubber([f"tok-{first}{glue}{second}"])
    for text in (f"Invalid header value b'Bearer tok-{first}\\n{second}'",
                 f"nonnumeric port: '{second}'", f"tok-{first} {second}"):
        masked = scrub(text)
        assert first not in masked and second not in masked, masked
