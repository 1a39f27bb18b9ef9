"""Sending one message to one target; never raises, always says what happened.

Webhooks (Slack-compatible and generic JSON) are one HTTPS POST each, sent with the standard
library: apprise's Slack plugin only posts to hooks.slack.com (so not to Mattermost, Rocket.Chat
or any other server speaking Slack's incoming-webhook contract), its JSON plugin adds fields of
its own, and it reports a bool per target with the reason only in its log, whose debug lines
carry the webhook URL. Email goes through apprise (`mailto://`/`mailtos://`: STARTTLS, SSL,
MIME, login), from the optional extra `notify`; its warnings are captured as the reason.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote, urlencode

from registry.notify.scrub import Scrubber
from registry.notify.settings import Target

MAX_DETAIL = 300


@dataclass(frozen=True)
class Message:
    """What is said about an incident; `phase` is `opened`, `resolved` or `test`."""

    kind: str
    phase: str
    subject: str
    fingerprint: str
    title: str
    body: str
    at: str

    @property
    def headline(self) -> str:
        mark = {"opened": "🚨", "resolved": "✅", "test": "🔔"}.get(self.phase, "")
        return f"{mark} {self.title}".strip()


@dataclass(frozen=True)
class Outcome:
    target: str
    kind: str
    sent: bool
    detail: str
    retry_after: float | None = None
    """Seconds the server asked us to wait (HTTP 429 Retry-After)."""


class DeliveryError(Exception):
    def __init__(self, detail: str, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


def send(target: Target, message: Message, env: Mapping[str, str], timeout: float,
         scrub: Scrubber) -> Outcome:
    """Deliver `message` to `target`; a failure is an Outcome (scrubbed), never an exception."""
    try:
        if target.kind == "email":
            detail = _send_email(target, message, env, timeout)
        else:
            detail = _send_webhook(target, message, env, timeout)
    except DeliveryError as err:
        return Outcome(target.name, target.kind, False, scrub(str(err))[:MAX_DETAIL],
                       err.retry_after)
    except Exception as err:  # a delivery must never fail the command that observed it
        reason = f"{type(err).__name__}: {err}"
        return Outcome(target.name, target.kind, False, scrub(reason)[:MAX_DETAIL])
    return Outcome(target.name, target.kind, True, scrub(detail)[:MAX_DETAIL])


def _secret(env: Mapping[str, str], name: str | None, what: str) -> str:
    value = env.get(name or "", "").strip()
    if not value:
        raise DeliveryError(f"{what}: environment variable {name} is not set")
    return value


def payload(target: Target, message: Message) -> dict[str, object]:
    if target.kind == "slack":
        return {"text": f"*{message.headline}*\n{message.body}"}
    return {"source": "chunk-registry", "event": message.kind, "phase": message.phase,
            "subject": message.subject, "fingerprint": message.fingerprint,
            "title": message.title, "text": message.body, "at": message.at}


def _send_webhook(target: Target, message: Message, env: Mapping[str, str],
                  timeout: float) -> str:
    url = _secret(env, target.url_env, "webhook URL")
    if not url.startswith(("https://", "http://")):
        raise DeliveryError(f"{target.url_env} does not hold an http(s) URL")
    headers = {"Content-Type": "application/json", "User-Agent": "chunk-registry"}
    if target.token_env:
        headers["Authorization"] = f"Bearer {_secret(env, target.token_env, 'webhook token')}"
    request = urllib.request.Request(url, json.dumps(payload(target, message)).encode(),
                                     headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer = response.read(200).decode("utf-8", "replace").strip()
            return f"HTTP {response.status} {answer}".strip()
    except urllib.error.HTTPError as err:
        answer = err.read(200).decode("utf-8", "replace").strip()
        retry_after = _seconds(err.headers.get("Retry-After")) if err.code == 429 else None
        raise DeliveryError(f"HTTP {err.code} {answer}".strip(), retry_after) from None
    except TimeoutError:
        raise DeliveryError(f"no answer within {timeout:g}s") from None
    except urllib.error.URLError as err:
        raise DeliveryError(f"cannot reach the webhook: {err.reason}") from None


def _seconds(value: str | None) -> float | None:
    try:
        return max(float(value), 0.0) if value else None
    except ValueError:
        return None


def apprise_email_url(target: Target, password: str | None, timeout: float) -> str:
    """The apprise URL of an SMTP target (it holds the password: never log it)."""
    scheme = "mailto" if target.security == "none" else "mailtos"
    login = ""
    if target.username:
        login = f"{quote(target.username, safe='')}:{quote(password or '', safe='')}@"
    query = {"smtp": target.host or "", "from": target.sender or "",
             "to": ",".join(target.recipients), "cto": f"{timeout:g}",
             "mode": "insecure" if target.security == "none" else target.security}
    return f"{scheme}://{login}{target.host}:{target.smtp_port}?{urlencode(query)}"


def _send_email(target: Target, message: Message, env: Mapping[str, str],
                timeout: float) -> str:
    from registry.extras import require

    require("apprise", "email notifications")
    import apprise

    password = _secret(env, target.password_env, "SMTP password") if target.username else None
    notifier = apprise.Apprise()
    if not notifier.add(apprise_email_url(target, password, timeout)):
        raise DeliveryError(f"email target {target.name} is not a usable SMTP setting")
    with apprise.LogCapture(level=logging.WARNING) as captured:  # type: ignore[no-untyped-call]
        sent = bool(notifier.notify(title=f"[chunk-registry] {message.headline}",
                                    body=message.body))
    if not sent:
        lines = [line.split(" - ", 2)[-1] for line in captured.getvalue().splitlines() if line]
        raise DeliveryError("; ".join(lines) or "the SMTP server did not accept the message")
    return f"accepted by {target.host}:{target.smtp_port} for {len(target.recipients)} " \
           "recipient(s)"
