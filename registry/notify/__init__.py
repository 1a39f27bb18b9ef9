"""Notifications: tell people when something breaks, once per incident, and when it resolves.

settings (the `notifications:` section of production.yaml), events (what a reconcile, a health
report or the regression watch means for each event kind), scrub (no secret in any message or
log line), delivery (Slack-compatible and JSON webhooks, email over SMTP) and dispatch (incident
bookkeeping in chunk_registry.notifications, retries with backoff). Nothing here ever fails the
command that observed the incident.
"""
