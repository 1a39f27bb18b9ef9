"""One timestamp format for everything the CLI prints as data: RFC 3339 in UTC with a `Z`
(`2026-11-30T10:05:00Z`), whatever the source (a timestamptz from PostgreSQL, git's author
date, the clock); and the JSON encoder that applies it to any datetime left in an output."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any


def rfc3339(moment: datetime | str) -> str:
    """`moment` as `YYYY-MM-DDTHH:MM:SSZ` in UTC (a string is parsed first: git's `%aI`, a
    stored ISO text); a naive datetime is taken as UTC."""
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def json_default(value: Any) -> Any:
    """`json.dumps(default=...)` for outputs: datetimes in RFC 3339 UTC, whole Decimals as
    integers, paths and anything else as text."""
    if isinstance(value, datetime):
        return rfc3339(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, Path):
        return str(value)
    return str(value)
