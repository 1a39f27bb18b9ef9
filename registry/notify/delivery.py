"""Sending one message to one target; never raises, always says what happened.

Webhooks (Slack-compatible and generic JSON) are one HTTPS POST each, sent with the standard
library: apprise's Slack plugin only posts to hooks.slack.com (so not to Mattermost, Rocket.Chat
or any other server speaking Slack's incoming-webhook contract), its JSON plugin adds fields of
its own, and it reports a bool per target with the reason only in its log, whose debug lines
carry the webhook URL. Email goes through apprise (`mailto://`/`mailtos://`: STARTTLS, SSL,
MIME, login), from the optional extra `notify`; its warnings are captured as the reason.
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import unicodedata
import urllib.error
import urllib.request
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from urllib.parse import quote, urlencode, urlsplit

from registry.errors import RegistryError
from registry.http import no_redirect_opener
from registry.notify.scrub import Scrubber
from registry.notify.settings import Target

MAX_DETAIL = 300
MAX_RETRY_AFTER = 86400.0
"""A Retry-After beyond a day (or `inf`) is read as a day: the retry is still recorded."""


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
    delivered: tuple[str, ...] = ()
    """Email recipients who got the message in this attempt, so a retry skips them."""


class DeliveryError(Exception):
    def __init__(self, detail: str, retry_after: float | None = None,
                 delivered: tuple[str, ...] = ()) -> None:
        super().__init__(detail)
        self.retry_after = retry_after
        self.delivered = delivered


def send(target: Target, message: Message, env: Mapping[str, str], timeout: float,
         scrub: Scrubber, *, already: Collection[str] = ()) -> Outcome:
    """Deliver `message` to `target` (an email target: to its recipients not in `already`,
    who got it at an earlier attempt); a failure is an Outcome (scrubbed), never an exception.

    Exception text is not repeated unless it is ours: urllib and http.client put the URL or a
    header value (a token) into theirs."""
    try:
        if target.kind == "email":
            detail, delivered = _send_email(target, message, env, timeout, already)
        else:
            detail, delivered = _send_webhook(target, message, env, timeout), ()
    except DeliveryError as err:
        return Outcome(target.name, target.kind, False, scrub(str(err))[:MAX_DETAIL],
                       err.retry_after, err.delivered)
    except RegistryError as err:  # ours (a missing extra): says what to do, holds no secret
        return Outcome(target.name, target.kind, False, scrub(str(err))[:MAX_DETAIL])
    except Exception as err:  # a delivery must never fail the command that observed it
        reason = f"{type(err).__name__} (its text is not shown: it may hold the URL or a token)"
        return Outcome(target.name, target.kind, False, reason)
    return Outcome(target.name, target.kind, True, scrub(detail)[:MAX_DETAIL],
                   delivered=delivered)


def _secret(env: Mapping[str, str], name: str | None, what: str, target: Target, *,
            spaces: bool = False) -> str:
    """The value of `name`, refused (without showing it) when it holds a control character,
    or whitespace unless `spaces`: such a value was pasted wrongly, and the library that
    would reject it would print it in its error."""
    value = env.get(name or "", "").strip()
    if not value:
        raise DeliveryError(f"{what}: environment variable {name} is not set")
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") or (c.isspace() and not spaces)
           for c in value):
        kind = "a control character" if spaces else "whitespace or a control character"
        raise DeliveryError(f"target {target.name}: {name} holds {kind}, which no {what} "
                            "contains (its value is not shown); set it to the bare value")
    return value


def payload(target: Target, message: Message) -> dict[str, object]:
    if target.kind == "slack":
        return {"text": f"*{message.headline}*\n{message.body}"}
    return {"source": "chunk-registry", "event": message.kind, "phase": message.phase,
            "subject": message.subject, "fingerprint": message.fingerprint,
            "title": message.title, "text": message.body, "at": message.at}


def _send_webhook(target: Target, message: Message, env: Mapping[str, str],
                  timeout: float) -> str:
    url = _secret(env, target.url_env, "webhook URL", target)
    try:
        parts = urlsplit(url)
        # a port that is not a number raises here, rather than in http.client's words
        usable = parts.scheme in ("https", "http") and bool(parts.hostname) and (
            parts.port or 0) >= 0
    except ValueError:
        usable = False
    if not usable:
        raise DeliveryError(f"target {target.name}: {target.url_env} does not hold an http(s) "
                            "URL (its value is not shown)")
    headers = {"Content-Type": "application/json", "User-Agent": "chunk-registry"}
    if target.token_env:
        token = _secret(env, target.token_env, "webhook token", target)
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, json.dumps(payload(target, message)).encode(),
                                     headers, method="POST")
    try:
        with no_redirect_opener().open(request, timeout=timeout) as response:
            answer = response.read(200).decode("utf-8", "replace").strip()
            return f"HTTP {response.status} {answer}".strip()
    except urllib.error.HTTPError as err:
        if 300 <= err.code < 400:
            raise DeliveryError(f"HTTP {err.code}: redirects are not followed (point the "
                                "target at the final URL)") from None
        answer = err.read(200).decode("utf-8", "replace").strip()
        retry_after = _seconds(err.headers.get("Retry-After")) if err.code == 429 else None
        raise DeliveryError(f"HTTP {err.code} {answer}".strip(), retry_after) from None
    except TimeoutError:
        raise DeliveryError(f"no answer within {timeout:g}s") from None
    except urllib.error.URLError as err:
        reason = err.reason.strerror if isinstance(err.reason, OSError) else None
        raise DeliveryError(f"cannot reach the webhook: {reason or type(err.reason).__name__}"
                            ) from None
    except (http.client.HTTPException, OSError) as err:
        reason = err.strerror if isinstance(err, OSError) else None
        raise DeliveryError(f"the webhook connection failed: {reason or type(err).__name__}"
                            ) from None


def _seconds(value: str | None) -> float | None:
    """Retry-After as seconds in [0, MAX_RETRY_AFTER]; None when absent or not a number."""
    try:
        seconds = float(value) if value else None
    except ValueError:
        return None
    if seconds is None or math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def apprise_email_url(target: Target, password: str | None, timeout: float,
                      recipient: str) -> str:
    """The apprise URL of an SMTP target for one recipient (it holds the password: never
    log it)."""
    scheme = "mailto" if target.security == "none" else "mailtos"
    login = ""
    if target.username:
        login = f"{quote(target.username, safe='')}:{quote(password or '', safe='')}@"
    query = {"smtp": target.host or "", "from": target.sender or "", "to": recipient,
             "cto": f"{timeout:g}",
             "mode": "insecure" if target.security == "none" else target.security}
    return f"{scheme}://{login}{target.host}:{target.smtp_port}?{urlencode(query)}"


def _send_email(target: Target, message: Message, env: Mapping[str, str], timeout: float,
                already: Collection[str]) -> tuple[str, tuple[str, ...]]:
    """One mail per recipient not in `already` (apprise sends one each anyway, but answers
    with one bool for all): who got it is known, so a retry never sends it to them again."""
    from registry.extras import require

    require("apprise", "email notifications")
    import apprise

    password = (_secret(env, target.password_env, "SMTP password", target, spaces=True)
                if target.username else None)
    pending = [r for r in target.recipients if r not in already]
    notifiers = []
    for recipient in pending:
        notifier = apprise.Apprise()
        if not notifier.add(apprise_email_url(target, password, timeout, recipient)):
            raise DeliveryError(f"email target {target.name} is not a usable SMTP setting "
                                f"(for {recipient})")
        notifiers.append((recipient, notifier))
    delivered: list[str] = []
    refused: list[str] = []
    for recipient, notifier in notifiers:
        with apprise.LogCapture(level=logging.DEBUG) as captured:  # type: ignore[no-untyped-call]
            try:
                sent = bool(notifier.notify(title=f"[chunk-registry] {message.headline}",
                                            body=message.body))
            except Exception as err:  # those reached before must still be recorded
                refused.append(f"{recipient} ({type(err).__name__})")
                continue
        if sent:
            delivered.append(recipient)
        else:
            refused.append(f"{recipient} ({_smtp_reason(captured.getvalue())})")
    earlier = f"; {len(already)} got it at an earlier attempt" if already else ""
    if refused:
        got = f"; sent to {', '.join(delivered)}" if delivered else ""
        raise DeliveryError(f"not accepted for {'; '.join(refused)}{got}{earlier}",
                            delivered=tuple(delivered))
    return (f"accepted by {target.host}:{target.smtp_port} for {len(delivered)} "
            f"recipient(s){earlier}", tuple(delivered))


def _smtp_reason(log: str) -> str:
    """The server's answer (apprise logs it at debug level as a "Socket Exception", e.g.
    `(550, b'5.1.1 no such user')`), else apprise's warnings; not its other debug lines."""
    said: list[str] = []
    warned: list[str] = []
    for line in log.splitlines():
        parts = line.split(" - ", 2)
        if len(parts) < 3:
            continue
        _, level, text = parts
        if text.startswith("Socket Exception: "):
            said.append(text.removeprefix("Socket Exception: "))
        elif level in ("WARNING", "ERROR", "CRITICAL"):
            warned.append(text)
    return "; ".join(said or warned) or "not accepted"
