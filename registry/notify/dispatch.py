"""Incidents in, messages out: once per incident, once when it resolves, retried until sent.

`notify` records what a check found in chunk_registry.notifications (under an advisory lock,
so two processes never open the same incident twice) and then delivers every message that is
due, this check's and the ones earlier runs could not send. A failed delivery is logged and
retried at a later run (an email only to the recipients who did not get it) with exponential
backoff (`retry.backoff`, doubled per attempt, capped at a day, at least what a 429 asked for
up to a day) until `retry.max_attempts`. Nothing raises: a broken target, database hiccup or
missing extra is a log line, never a failed reconcile or health command.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from registry.database import bookkeeping
from registry.database.connection import NOTIFY_LOCK_KEY
from registry.notify.delivery import Message, Outcome, send
from registry.notify.events import Check
from registry.notify.scrub import Scrubber
from registry.notify.settings import NotificationSettings

MAX_BACKOFF = timedelta(days=1)

log = logging.getLogger("registry.notify")
# Commands quiet the `registry` logger to errors; an undelivered notification must still show.
log.setLevel(logging.INFO)


@dataclass(frozen=True)
class Delivery:
    """One attempt of this run: which incident, which message, what happened."""

    kind: str
    subject: str
    phase: str
    outcome: Outcome


def notify(
    conn: psycopg.Connection[Any], settings: NotificationSettings | None, check: Check, *,
    registry: str, env: Mapping[str, str] | None = None, now: datetime | None = None,
) -> list[Delivery]:
    """Record `check`'s incidents and resolutions as `registry`'s, then deliver what of
    `registry`'s is due (its targets are named in its own settings); never raises."""
    if settings is None:
        return []
    env = os.environ if env is None else env
    scrub = Scrubber.from_env(settings.secret_envs, env)
    try:
        clock = now or _db_now(conn)
        _record(conn, registry, settings, check, clock, scrub)
        return _deliver_due(conn, registry, settings, clock, env, scrub)
    except Exception as err:  # notifications never fail the command that observed them
        log.warning("notifications skipped this run: %s", scrub(f"{type(err).__name__}: {err}"))
        return []


def _db_now(conn: psycopg.Connection[Any]) -> datetime:
    row = conn.execute("SELECT statement_timestamp()").fetchone()
    assert row is not None
    moment: datetime = row[0]
    return moment


def _record(conn: psycopg.Connection[Any], registry: str, settings: NotificationSettings,
            check: Check, now: datetime, scrub: Scrubber) -> None:
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (NOTIFY_LOCK_KEY,))
        kinds = sorted({kind for kind, _ in check.scopes} | {e.kind for e in check.events})
        already = set(bookkeeping.open_incidents(conn, registry, kinds))
        active = set()
        for event in check.events:
            key = (event.kind, event.subject, event.fingerprint)
            active.add(key)
            targets = [t.name for t in settings.targets_for(event.kind)]
            if not targets or key in already or (
                    event.one_shot and bookkeeping.incident_known(conn, registry, *key)):
                continue
            bookkeeping.open_incident(conn, registry, *key, targets, scrub(event.title),
                                      scrub(event.body), now, one_shot=event.one_shot)
        for kind, subject, fp in sorted(already - active):
            if check.covers(kind, subject):
                bookkeeping.resolve_incident(conn, registry, kind, subject, fp,
                                             scrub(check.resolution(kind, subject)), now)


def _deliver_due(conn: psycopg.Connection[Any], registry: str, settings: NotificationSettings,
                 now: datetime, env: Mapping[str, str], scrub: Scrubber) -> list[Delivery]:
    lease = now + timedelta(seconds=max(60.0, 3 * settings.timeout))
    done: list[Delivery] = []
    for due in bookkeeping.claim_due_notifications(conn, registry, now, lease):
        target = settings.target(due.target)
        message = Message(due.kind, due.phase, due.subject, due.fingerprint, due.title,
                          due.body, due.at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
        if due.phase == "resolved":
            message = Message(due.kind, "resolved", due.subject, due.fingerprint,
                              f"Resolved: {due.title}", due.body, message.at)
        if target is None:
            outcome = Outcome(due.target, "?", False,
                              f"target {due.target} is no longer in production.yaml")
            retry_at = None
        else:
            outcome = send(target, message, env, settings.timeout, scrub,
                           already=due.delivered_to)
            retry_at = None if outcome.sent else _retry_at(settings, due.attempts + 1, now,
                                                           outcome.retry_after)
        bookkeeping.record_delivery(conn, due, now, error=None if outcome.sent else
                                    outcome.detail, retry_at=retry_at,
                                    delivered=outcome.delivered)
        if outcome.sent:
            log.info("notified %s: %s %s of %s", due.target, due.kind, due.phase, due.subject)
        else:
            then = (f"retrying after {retry_at.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}"
                    if retry_at else "giving up")
            log.warning("notification to %s failed (%s %s of %s, attempt %d): %s; %s",
                        due.target, due.kind, due.phase, due.subject, due.attempts + 1,
                        outcome.detail, then)
        done.append(Delivery(due.kind, due.subject, due.phase, outcome))
    return done


def _retry_at(settings: NotificationSettings, attempts: int, now: datetime,
              retry_after: float | None) -> datetime | None:
    """When to try again after `attempts` failures; None once max_attempts is reached. A
    Retry-After beyond MAX_BACKOFF counts as MAX_BACKOFF: `inf` or 1e20 seconds would overflow
    the date, and the failure would never be recorded (so resent at every run)."""
    if attempts >= settings.max_attempts:
        return None
    delay = min(settings.backoff * 2 ** (attempts - 1), MAX_BACKOFF)
    if retry_after is not None and not math.isnan(retry_after):
        delay = max(delay, timedelta(seconds=min(retry_after, MAX_BACKOFF.total_seconds())))
    moment: datetime = now + delay
    return moment


def send_test(settings: NotificationSettings, names: Sequence[str] = (), *,
              env: Mapping[str, str] | None = None) -> list[Outcome]:
    """`registry notify test`: one test message to each target (or those named), no
    bookkeeping; the outcome of each."""
    env = os.environ if env is None else env
    scrub = Scrubber.from_env(settings.secret_envs, env)
    chosen = [t for t in settings.targets if not names or t.name in names]
    at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return [send(target, Message(
        "test", "test", target.name, "test", f"chunk-registry test message to {target.name}",
        f"If you can read this, {target.name} ({target.kind}) receives chunk-registry "
        "notifications.", at), env, settings.timeout, scrub) for target in chosen]
