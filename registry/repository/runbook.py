"""The runbook of one locked config: its environment, the exact commands of its rollout, and
the sanity checks, generated from the config so they can never drift from it."""

from __future__ import annotations

import json
import shlex
from typing import Any

from registry.config import ChunkingConfig, LockedConfig, ProductionConfig


def environment(config: LockedConfig) -> dict[str, str]:
    """The seed's env vars, exactly as the locked config says (EVAL_DISABLE_CACHE on for evals)."""
    env = ChunkingConfig.from_locked(config)
    return {
        "CHUNK_SIZE": str(env.chunk_size),
        "OVERLAP_RATIO": f"{env.overlap_ratio:g}",
        "JACCARD_THRESHOLD": f"{env.jaccard_threshold:g}",
        "PREFIX_POLICY": env.prefix_policy,
        "CHUNK_VERSION": str(env.chunk_version),
        "INGEST_RUN_ID": str(env.ingest_run_id),
        "EVAL_DISABLE_CACHE": "1",
    } | embedder_environment(config)


def embedder_environment(config: LockedConfig) -> dict[str, str]:
    """The embedder pin and the retrieval it implies: an application embeds its queries with
    exactly these (EMBEDDER_QUERY_PREFIX first) and checks EMBEDDER_FINGERPRINT; a BM25-only
    config says so (RETRIEVAL=bm25)."""
    from registry.quality.retrieval import embedder_spec

    spec = embedder_spec(config)
    if spec is None:
        return {"RETRIEVAL": "bm25"}
    pinned = {
        "EMBEDDER_BACKEND": spec.backend,
        "EMBEDDER_NAME": spec.name,
        "EMBEDDER_DIMENSION": str(spec.dimension),
        "EMBEDDER_NORMALIZE": "1" if spec.normalize else "0",
        "EMBEDDER_POOLING": spec.pooling or "",
        "EMBEDDER_MAX_TOKENS": str(spec.max_tokens),
        "EMBEDDER_QUERY_PREFIX": spec.query_prefix,
        "EMBEDDER_PASSAGE_PREFIX": spec.passage_prefix,
        "EMBEDDER_MODEL_HASH": spec.model_hash or "",
        "EMBEDDER_TOKENIZER_HASH": spec.tokenizer_hash or "",
        "EMBEDDER_FINGERPRINT": spec.fingerprint or "",
        "RETRIEVAL": "hybrid",
    }
    return pinned


def export_lines(config: LockedConfig) -> str:
    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in environment(config).items())


def steps(config: LockedConfig, settings: ProductionConfig) -> list[dict[str, str]]:
    version = config.chunk_version
    return [
        {"step": "reconcile", "why": "after the lock PR merges: create the shadow table",
         "command": "registry reconcile"},
        {"step": "ingest", "why": "fill the shadow table exactly as the config says",
         "command": f"registry ingest {version} --source $CORPUS"},
        {"step": "eval", "why": "retrieval metrics of the shadow table "
         f"({embedder_environment(config)['RETRIEVAL']}, as production would serve it)",
         "command": f"registry eval {version} --cases $EVAL_CASES"},
        {"step": "compare", "why": "the promotion gate: shadow against production",
         "command": f"registry eval --compare {version} --against production --cases $EVAL_CASES"},
        {"step": "health", "why": "guardrails on the data before promoting",
         "command": f"registry health --version {version} --cases $EVAL_CASES"},
        {"step": "promote", "why": "open the PR that points production at this version",
         "command": f"registry promote {version} --pr"},
        {"step": "reconcile", "why": "after the promotion PR merges: swap the view",
         "command": "registry reconcile"},
        {"step": "watch", "why": f"for {_hours(settings)} after the promotion",
         "command": "registry watch-promotion"},
        {"step": "rollback", "why": "if a threshold is exceeded: revert the promotion",
         "command": "registry rollback --pr"},
    ]


def _hours(settings: ProductionConfig) -> str:
    return f"{int(settings.monitoring_window.total_seconds() // 3600)}h"


def _display_sql(template: str, table: tuple[str, str], *values: object) -> str:
    """SQL for a person to paste, composed like every statement we run: names quoted."""
    from psycopg import sql

    literals = [sql.Literal(v) for v in values]
    return sql.SQL(template).format(sql.Identifier(*table), *literals).as_string(None)


def sanity_checks(config: LockedConfig, settings: ProductionConfig) -> list[dict[str, str]]:
    table = (settings.schema, settings.table_name(config.chunk_version))
    checks = [
        {"check": "rows were ingested",
         "sql": _display_sql("SELECT count(*) FROM {};", table), "expect": "> 0"},
        {"check": "no chunk over its token budget",
         "sql": _display_sql("SELECT count(*) FROM {} WHERE bm25_token_count > {} "
                             "OR embedding_token_count > {};", table, config.chunk_size,
                             config.token_budget),
         "expect": "0"},
        {"check": "one ingest run, the locked one",
         "sql": _display_sql("SELECT DISTINCT ingest_run_id FROM {};", table),
         "expect": config.ingest_run_id},
    ]
    if config.prefix_policy == "A":
        checks.append({"check": "policy A: no prefix leaked into BM25 text",
                       "sql": _display_sql("SELECT count(*) FROM {} WHERE bm25_text LIKE {};",
                                           table, "Document: %"),
                       "expect": "0"})
    if embedder_environment(config)["RETRIEVAL"] != "bm25":
        checks.append({"check": "every chunk has its vector",
                       "sql": _display_sql("SELECT count(*) FROM {} WHERE embedding IS NULL;",
                                           table),
                       "expect": "0"})
    checks.append({"check": "the registry agrees", "sql": "", "expect": "registry health exits 0",
                   "command": f"registry health --version {config.chunk_version}"})
    return checks


def runbook(config: LockedConfig, settings: ProductionConfig) -> dict[str, Any]:
    return {
        "chunk_version": config.chunk_version,
        "label": config.label(),
        "table": f"{settings.schema}.{settings.table_name(config.chunk_version)}",
        "config_hash": config.config_hash,
        "environment": environment(config),
        "steps": steps(config, settings),
        "sanity_checks": sanity_checks(config, settings),
    }


def render(config: LockedConfig, settings: ProductionConfig, fmt: str = "text") -> str:
    """The runbook as `text`/`markdown`, `json`, or a `shell` script of exports and commands."""
    book = runbook(config, settings)
    if fmt == "json":
        return json.dumps(book, indent=2) + "\n"
    if fmt == "shell":
        lines = [f"# Runbook for chunk config {config.chunk_version} ({config.label()})",
                 "set -euo pipefail", export_lines(config).rstrip("\n")]
        lines += [f"# {s['step']}: {s['why']}\n{s['command']}" for s in book["steps"]]
        return "\n".join(lines) + "\n"
    out = [
        f"# Runbook: chunk config {config.chunk_version}",
        "",
        f"`{config.label()}` with embedder `{config.embedder_name}` "
        f"(max {config.embedder_max_tokens} tokens), table `{book['table']}`, "
        f"config hash `{config.config_hash[:12]}`.",
        "",
        "## Environment",
        "",
        "```sh",
        export_lines(config).rstrip("\n"),
        "```",
        "",
        "## Steps",
        "",
    ]
    for number, step in enumerate(book["steps"], 1):
        out.append(f"{number}. {step['step']} ({step['why']}): `{step['command']}`")
    out += ["", "## Sanity checks", ""]
    for check in book["sanity_checks"]:
        detail = f"`{check['sql']}`" if check["sql"] else f"`{check.get('command', '')}`"
        out.append(f"- {check['check']}: {detail} -> {check['expect']}")
    return "\n".join(out) + "\n"
