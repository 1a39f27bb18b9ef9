"""The JSON Schemas in `schemas/`: located, compiled once, and their errors made actionable.

The schemas are the single source of truth for field names and bounds; the wheel carries a copy
(`registry/schemas`, see pyproject) so the installed tool works outside this repository.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from registry.errors import Problem

if TYPE_CHECKING:
    from jsonschema.protocols import Validator

    from registry.config import YamlDoc

Kind = Literal["locked", "production", "environment"]
SCHEMA_FILES: dict[Kind, str] = {
    "locked": "locked-config.schema.json",
    "production": "production.schema.json",
    "environment": "production.schema.json",
}

FIXES: dict[str, str] = {
    "chunk_size": "lock a new version with --chunk-size between 1 and 1000",
    "overlap_ratio": "lock a new version with --overlap-ratio between 0 and 0.5",
    "jaccard_threshold": "lock a new version with --jaccard-threshold between 0.5 and 1",
    "prefix_policy": "use A (prefix in embedding_text only) or B (in both texts)",
    "chunk_version": "name it like 2025-09-07-143022-v1; `registry lock` generates it",
    "tokenizer_hash": "use sha256:<64 hex digits> of tokenizer.json; `registry lock` computes it",
    "created_at": "use UTC like 2025-09-07T14:30:22Z, quoted",
    "created_by": "use `name <email>`",
    "schema_version": "set schema_version: 1 (BM25 only), or 2 with an embedder: mapping",
    "embedder": "pin the embedder with `registry lock --embedder-onnx` or `--embedder-openai`",
    "production": "name a chunk_version that exists in configs/, or null",
    "serves": "name a chunk_version that exists in configs/, or null",
    "dsn_env": "name the environment variable (a CI secret) holding the DSN, like STAGING_DSN; "
               "never the DSN itself",
    "promotion": "use promotion: {from: staging, soak: 24h, require_healthy: true}",
    "baseline_metrics": "use metric names like oracle_hit_rate with numbers, rates in [0, 1]",
}


def schema_dir() -> Path:
    """`registry/schemas` in a wheel; the repository's `schemas/` in a source checkout."""
    package = Path(__file__).resolve().parent.parent
    packaged = package / "schemas"
    if packaged.is_dir():
        return packaged
    return package.parent / "schemas"


@cache
def schema(kind: Kind) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((schema_dir() / SCHEMA_FILES[kind]).read_text("utf-8"))
    if kind == "environment":
        return environment_schema(result)
    return result


def environment_schema(production: dict[str, Any]) -> dict[str, Any]:
    """An environment file's schema: production.yaml's, with `serves:` (the version the
    environment serves) in place of `production:`, and no `tags:` (a lock tag names a config,
    whatever serves it: production.yaml's prefix holds for every environment)."""
    properties = dict(production["properties"])
    serves = dict(properties.pop("production"))
    serves["description"] = "The chunk_version this environment serves, or null."
    properties.pop("tags", None)
    return {**production, "$id": production["$id"].replace("production", "environment"),
            "title": "An environment: the version it serves and its rollout policy",
            "description": "configs/environments/<name>.yaml",
            "required": ["serves"], "properties": {"serves": serves, **properties}}


@cache
def _ecma_pattern(pattern: str) -> re.Pattern[str]:
    """ECMA-262 semantics for `$` (end of input), which Python's `$` is not: it also matches
    before a trailing newline, so `v1\n` would pass `^...v1$` and reach a table name."""
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"
    return re.compile(pattern)


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[Any]:
    from jsonschema.exceptions import ValidationError

    if isinstance(instance, str) and not _ecma_pattern(pattern).search(instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


@cache
def validator(kind: Kind) -> Validator:
    from jsonschema import Draft202012Validator, validators

    strict = validators.extend(  # type: ignore[no-untyped-call]
        Draft202012Validator, {"pattern": _pattern}
    )
    compiled: Validator = strict(schema(kind))
    return compiled


def _describe(error: Any) -> tuple[tuple[str | int, ...], str]:
    """(path, message) for one jsonschema error, phrased for a person editing YAML."""
    path = tuple(error.absolute_path)
    name = ".".join(str(p) for p in path) or "the file"
    value = error.instance
    shown = repr(value) if isinstance(value, str) else json.dumps(value, default=str)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    keyword = error.validator
    if keyword == "maximum":
        return path, f"{name} {shown} is above the hard cap {error.validator_value}"
    if keyword == "minimum":
        return path, f"{name} {shown} is below the hard floor {error.validator_value}"
    if keyword == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        return (*path, missing), f"required field {missing} is missing"
    if keyword == "additionalProperties" and error.validator_value is False:
        extra = sorted(set(value) - set(error.schema.get("properties", {})))
        return (*path, extra[0]) if extra else path, f"unknown field {', '.join(extra)}"
    if keyword == "type":
        return path, f"{name} {shown} should be of type {error.validator_value}"
    if keyword == "pattern":
        return path, f"{name} {shown} does not have the required form"
    if keyword in ("enum", "const"):
        allowed = error.validator_value if keyword == "enum" else [error.validator_value]
        return path, f"{name} {shown} is not one of {', '.join(map(str, allowed))}"
    if keyword in ("maxLength", "minLength", "maxProperties", "minItems", "items"):
        return path, f"{name} {shown} has the wrong size ({error.message})"
    if keyword == "oneOf" and path in (("production",), ("serves",)):
        return path, f"{path[0]} {shown} is not a chunk_version or null"
    if keyword == "not" and error.validator_value == {"required": ["embedder"]}:
        return ("embedder",), "embedder is a format 2 field, but schema_version is not 2"
    if keyword == "not":
        return path, f"{name} {shown} is reserved"
    return path, f"{name}: {error.message}"


def schema_problems(doc: YamlDoc, kind: Kind) -> list[Problem]:
    """Every schema violation in `doc`, one Problem each, in file order."""
    problems = []
    for error in validator(kind).iter_errors(doc.data):
        path, message = _describe(error)
        field = next((str(p) for p in path if isinstance(p, str)), "")
        fix = FIXES.get(field, f"see {SCHEMA_FILES[kind]}, shipped inside the chunk-registry "
                                "package (registry/schemas/; `registry init` needs no copy)")
        problems.append(doc.problem(path, message, fix))
    if kind in ("production", "environment"):
        from registry.notify.settings import notification_problems

        specific = notification_problems(doc)
        lines = {p.line for p in specific}
        problems = [p for p in problems if p.line not in lines] + specific
        if not problems:
            problems = _time_problems(doc)
    return sorted(problems, key=lambda p: p.line)


def _time_problems(doc: YamlDoc) -> list[Problem]:
    """The schema checks an RFC 3339 time's shape only: `2026-02-30T00:00:00Z` has it, and a
    reader that parsed it would crash far from the file; every time field is parsed here."""
    from registry.config import parse_rfc3339

    experiment = doc.data.get("experiment")
    if not isinstance(experiment, dict) or not isinstance(experiment.get("ends"), str):
        return []
    try:
        parse_rfc3339(experiment["ends"])
    except ValueError as err:
        return [doc.problem(("experiment", "ends"), f"experiment.ends: {err}",
                            "use a real time in UTC like 2026-12-01T00:00:00Z, quoted")]
    return []
