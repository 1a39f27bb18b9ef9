"""Notifications end to end: real git, real PostgreSQL, a local Slack-compatible webhook, a
local JSON webhook and a local SMTP server (aiosmtpd). Each incident is told once, repeated
checks are silent, the resolution is told once, a dead endpoint is retried at a later run
without changing any exit code, and no secret reaches a message, a log line or a row."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from registry.commands.data import ingest
from registry.config import load_production
from registry.errors import ConfigInvalid
from tests.helpers import PRODUCTION_YAML, RegistryRepo, run_cli
from tests.notify_servers import SmtpServer, WebhookServer
from tests.repository.test_promote_rollback import promoted
from tests.test_health_eval import write_corpus

SLACK_PATH = "/services/T0REGISTRY/B0REGISTRY/sLaCkPaThToKeN0123456789"
AUDIT_TOKEN = "audit-bearer-tOkEn-987654321"
SMTP_PASSWORD = "smtp-Pa55w0rd-sekret"
SECRETS = ("sLaCkPaThToKeN0123456789", AUDIT_TOKEN, SMTP_PASSWORD)
NOTIFICATIONS = """\
notifications:
  targets:
    chat: {type: slack, url_env: SLACK_WEBHOOK_URL}
    audit: {type: webhook, url_env: AUDIT_WEBHOOK_URL, token_env: AUDIT_WEBHOOK_TOKEN}
    oncall: {type: email, host: 127.0.0.1, port: PORT, security: none, username: registry-bot,
             password_env: SMTP_PASSWORD, from: registry@example.com, to: [oncall@example.com]}
  routes:
    reconcile-blocked: [chat, oncall]
    reconcile-failed: [chat]
    health-critical: [chat, oncall]
    drift: [chat]
    promotion: [audit]
  timeout: 1s
"""


@dataclass
class Setup:
    repo: RegistryRepo
    dsn: str
    chat: WebhookServer
    audit: WebhookServer
    smtp: SmtpServer

    def cli(self, *args: str) -> tuple[int, str]:
        result = run_cli(*args, "--repo", str(self.repo.path), "--dsn", self.dsn)
        return result.code, result.stdout + result.stderr

    def rows(self) -> list[tuple[object, ...]]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            return conn.execute(
                "SELECT kind, target, open_status, resolve_status, attempts, "
                "next_attempt_at - last_attempt_at, last_error, n::text "
                "FROM chunk_registry.notifications n ORDER BY id").fetchall()

    def sql(self, query: str) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(query)  # type: ignore[arg-type]


@pytest.fixture
def setup(registry_repo: RegistryRepo, dsn: str,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[Setup]:
    with WebhookServer() as chat, WebhookServer() as audit, \
            SmtpServer("registry-bot", SMTP_PASSWORD) as smtp:
        monkeypatch.setenv("SLACK_WEBHOOK_URL", chat.url(SLACK_PATH))
        monkeypatch.setenv("AUDIT_WEBHOOK_URL", audit.url("/hooks/registry"))
        monkeypatch.setenv("AUDIT_WEBHOOK_TOKEN", AUDIT_TOKEN)
        monkeypatch.setenv("SMTP_PASSWORD", SMTP_PASSWORD)
        registry_repo.write("configs/production.yaml", PRODUCTION_YAML
                            + NOTIFICATIONS.replace("PORT", str(smtp.port)), "Notifications")
        yield Setup(registry_repo, dsn, chat, audit, smtp)


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text


@pytest.mark.slow
def test_each_incident_is_told_once_and_its_resolution_once(
    setup: Setup, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s = setup
    v1 = s.repo.locked()
    promoted(s.repo, v1)
    logs: list[str] = []

    # Production names an empty table: the reconcile is blocked (exit 7), the health critical.
    for _ in range(2):
        code, out = s.cli("reconcile", "--no-fetch")
        assert code == 7, out
        logs.append(out)
    for _ in range(2):
        code, out = s.cli("health")
        assert code == 19, out
        logs.append(out)
    assert [t.splitlines()[0] for t in s.chat.texts] == [
        "*🚨 Reconcile blocked: public.document_chunks*",
        f"*🚨 Health critical: {v1} on public.document_chunks_{v1.replace('-', '_')}*"]
    assert "refusing to swap production" in s.chat.texts[0]
    assert "is empty" in s.chat.texts[1]
    assert len(s.smtp.subjects) == 2 and "Reconcile blocked" in s.smtp.subjects[0]
    assert s.audit.received == []

    # Filled and reconciled: the swap is applied (told to audit), both incidents resolve once.
    corpus = write_corpus(tmp_path / "corpus")
    ingest(s.repo.path, v1, corpus.path, dsn=s.dsn, tokenizer_file=s.repo.tokenizer_file,
           workers=1)
    for _ in range(2):
        code, out = s.cli("reconcile", "--no-fetch")
        assert code == 0, out
        logs.append(out)
        code, out = s.cli("health")
        assert code in (0, 18), out
        logs.append(out)
    assert [t.splitlines()[0] for t in s.chat.texts[2:]] == [
        "*✅ Resolved: Reconcile blocked: public.document_chunks*",
        f"*✅ Resolved: Health critical: {v1} on public.document_chunks_{v1.replace('-', '_')}*"]
    assert len(s.smtp.subjects) == 4 and "Resolved" in s.smtp.subjects[3]
    assert [(r.body["event"], r.body["phase"], r.body["subject"]) for r in s.audit.received] == [
        ("promotion", "opened", v1)]
    assert s.audit.received[0].headers["Authorization"] == f"Bearer {AUDIT_TOKEN}"
    rows = s.rows()
    assert {(r[0], r[1], r[2], r[3]) for r in rows} == {
        ("reconcile-blocked", "chat", "sent", "sent"), ("reconcile-blocked", "oncall", "sent", "sent"),
        ("health-critical", "chat", "sent", "sent"), ("health-critical", "oncall", "sent", "sent"),
        ("promotion", "audit", "sent", None)}
    sent = [str(r.body) for r in s.chat.received + s.audit.received]
    assert_no_secret(*sent, *(m.decode() for m in s.smtp.messages), *logs, caplog.text,
                     *(str(r) for r in rows))


@pytest.mark.slow
def test_a_dead_endpoint_is_retried_at_a_later_run_and_never_fails_the_command(
    setup: Setup, caplog: pytest.LogCaptureFixture,
) -> None:
    s = setup
    v1 = s.repo.locked()
    promoted(s.repo, v1)
    s.chat.mode = "500"
    code, out = s.cli("reconcile", "--no-fetch")
    assert code == 7, out  # what a blocked reconcile exits with, notifications or not
    assert "notification to chat failed" in caplog.text and "HTTP 500" in caplog.text
    assert_no_secret(out, caplog.text)
    chat = [r for r in s.rows() if r[1] == "chat"]
    assert [(r[2], r[4], str(r[5]), r[6]) for r in chat] == [
        ("pending", 1, "0:05:00", "HTTP 500 internal_error")]
    assert len(s.smtp.messages) == 1  # the other target was not held up

    # The next run inside the backoff does not knock again; after it, the message goes out once.
    code, out = s.cli("reconcile", "--no-fetch")
    assert code == 7 and len(s.chat.received) == 1
    s.chat.mode = "ok"
    s.sql("UPDATE chunk_registry.notifications SET next_attempt_at = next_attempt_at "
          "- interval '5 minutes'")
    code, out = s.cli("reconcile", "--no-fetch")
    assert code == 7 and len(s.chat.received) == 2
    assert [r[2] for r in s.rows() if r[1] == "chat"] == ["sent"]
    code, out = s.cli("reconcile", "--no-fetch")
    assert len(s.chat.received) == 2

    # A rate limit is honoured (Retry-After beyond the backoff); a hung endpoint times out.
    s.chat.mode = "429"
    assert s.cli("health")[0] == 19
    limited = next(r for r in s.rows() if r[0] == "health-critical" and r[1] == "chat")
    assert (limited[4], str(limited[5]), limited[6]) == (1, "0:10:00", "HTTP 429 rate_limited")
    s.chat.mode = "hang"
    s.sql("UPDATE chunk_registry.notifications SET next_attempt_at = now() - interval '1s'")
    code, out = s.cli("health")
    assert code == 19 and "no answer within 1s" in caplog.text
    assert_no_secret(out, caplog.text, *(str(r) for r in s.rows()))


@pytest.mark.slow
def test_notify_test_reports_each_target(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    s = setup
    result = run_cli("notify", "test", "--repo", str(s.repo.path))
    assert result.code == 0, result.stderr
    assert [line.split(":")[0] for line in result.lines] == [
        "audit (webhook)", "chat (slack)", "oncall (email)"]
    assert len(s.chat.received) == len(s.audit.received) == len(s.smtp.messages) == 1
    monkeypatch.setenv("SMTP_PASSWORD", "wrong-password-123")
    monkeypatch.delenv("AUDIT_WEBHOOK_URL")
    result = run_cli("notify", "test", "--repo", str(s.repo.path))
    assert result.code == 15
    assert "audit (webhook): FAILED: webhook URL: environment variable AUDIT_WEBHOOK_URL is " \
           "not set" in result.stdout
    assert "oncall (email): FAILED" in result.stdout
    assert "chat (slack): sent" in result.stdout
    assert "wrong-password-123" not in result.stdout + result.stderr
    only = run_cli("notify", "test", "--target", "chat", "--repo", str(s.repo.path))
    assert only.code == 0 and len(only.lines) == 1


@pytest.mark.parametrize(("line", "message"), [
    ("chat: {type: slack, url: 'https://hooks.slack.com/services/T/B/X'}",
     "a literal url would put a secret in git"),
    ("chat: {type: slack, url_env: 'https://hooks.slack.com/services/T/B/X'}",
     "holds a URL"),
    ("chat: {type: email, host: smtp.example.com, username: bot, password: hunter22, "
     "from: a@b.c, to: [d@e.f]}", "a literal password would put a secret in git"),
    ("chat: {type: webhook, host: 'https://bot:hunter22@example.com/hook'}", "holds a URL"),
    ("chat: {type: email, host: smtp.example.com, username: bot, from: a@b.c, to: [d@e.f]}",
     "has a username but no password_env"),
])
def test_validation_refuses_secrets_written_in_the_repo(line: str, message: str) -> None:
    raw = (PRODUCTION_YAML + f"notifications:\n  targets:\n    {line}\n"
           "  routes: {drift: [chat]}\n").encode()
    with pytest.raises(ConfigInvalid) as caught:
        load_production(raw, "configs/production.yaml")
    assert message in str(caught.value)
    assert "hunter22" not in str(caught.value)


def test_a_route_to_an_unknown_target_is_refused_and_a_good_section_loads() -> None:
    good = PRODUCTION_YAML + NOTIFICATIONS.replace("PORT", "2525")
    settings, _ = load_production(good.encode(), "configs/production.yaml")
    assert settings.notifications is not None
    assert [t.name for t in settings.notifications.targets_for("health-critical")] == [
        "chat", "oncall"]
    with pytest.raises(ConfigInvalid, match=r"names target pager, which notifications\.targets"):
        load_production(good.replace("drift: [chat]", "drift: [pager]").encode(),
                        "configs/production.yaml")
