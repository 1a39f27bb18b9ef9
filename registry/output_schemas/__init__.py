"""JSON Schemas (draft 2020-12) of every `--format json` output, one file per shape, shipped in
the wheel so a script can validate what it reads; docs/json-output.md lists them and which
command prints which. Changing a shape means changing its schema (tests run every command and
validate its output) and a CHANGELOG line."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

SCHEMA_DIR = Path(__file__).resolve().parent


def schema_names() -> list[str]:
    """The output shapes, by file name without `.json`."""
    return sorted(p.stem for p in SCHEMA_DIR.glob("*.json"))


@cache
def output_schema(name: str) -> dict[str, Any]:
    """The schema of output `name` (e.g. `plan`, `eval-compare`)."""
    data: dict[str, Any] = json.loads((SCHEMA_DIR / f"{name}.json").read_text())
    return data
