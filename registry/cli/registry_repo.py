"""The registry repository's commands: init, lock, validate, tag, list, show, runbook, env,
history. Each parses, calls `registry.commands.configs` (imported when it runs, so `--help`
stays fast) and renders."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from registry.cli.output import (
    PR_HELP,
    FormatOpt,
    RefOpt,
    RepoOpt,
    VersionArg,
    emit_json,
    print_next_step,
    print_table,
    proposal_dict,
    say,
)

if TYPE_CHECKING:
    from registry.errors import Problem


def init(
    directory: Annotated[
        Path, typer.Argument(help="The registry repository to set up (git init when it is not "
                             "one yet).")
    ] = Path("."),
    tool_repo: Annotated[
        str, typer.Option("--tool-repo", help="OWNER/NAME of the chunk-registry repository the "
                          "workflows and the pre-commit hook pin.")
    ] = "chunk-registry/chunk-registry",
    pin_sha: Annotated[
        str | None, typer.Option("--pin-sha", help="Pin by this commit SHA of the release tag "
                                 "instead of the tag.")
    ] = None,
    fmt: FormatOpt = "text",
) -> None:
    """Start a registry repository: configs/production.yaml, the workflows and pre-commit hook
    pinned to this release, a README section. Never overwrites (exit 11 on a differing file)."""
    from registry.commands import configs

    result = configs.init(directory, tool_repo=tool_repo, pin_sha=pin_sha)
    if fmt == "json":
        emit_json({"root": str(result.root), "version": result.version,
                    "git_initialised": result.git_initialised, "written": result.written,
                    "unchanged": result.unchanged})
        return
    if not result.changed:
        say(f"{result.root} is already a registry repository for chunk-registry "
            f"{result.version}: nothing to do")
        return
    if result.git_initialised:
        say(f"Initialised an empty git repository in {result.root}")
    for path in result.written:
        say(f"  wrote {path}")
    for path in result.unchanged:
        say(f"  kept {path} (already up to date)")
    say("Next: git add -A && git commit -m 'Start the registry', push it to main, then "
        "`registry lock`.")


def lock(
    chunk_size: Annotated[int, typer.Option(help="Tokens per chunk (1..1000).")] = 450,
    overlap_ratio: Annotated[float, typer.Option(help="Overlap between windows (0..0.5).")] = 0.10,
    jaccard_threshold: Annotated[
        float, typer.Option(help="Drop near-duplicates at or above this Jaccard (0.5..1).")
    ] = 0.8,
    prefix_policy: Annotated[
        str, typer.Option(help="A: prefix in embedding_text only; B: in both texts.")
    ] = "A",
    embedder: Annotated[
        str | None, typer.Option(help="Embedding model name (default BAAI/bge-large-en-v1.5; "
                                 "with --embedder-onnx FILE: its label).")
    ] = None,
    embedder_max_tokens: Annotated[
        int | None, typer.Option(help="The embedder's maximum input tokens (default 512; an "
                                 "installed onnx model's own).")
    ] = None,
    embedder_onnx: Annotated[
        str | None, typer.Option(help="Pin a local ONNX embedder (format 2 config): an installed "
                                 "model (all-MiniLM-L6-v2-int8, paraphrase-MiniLM-L3-v2) or a "
                                 ".onnx file with --embedder-tokenizer.")
    ] = None,
    embedder_openai: Annotated[
        str | None, typer.Option(help="Pin an OpenAI-compatible embedder by model name, at "
                                 "REGISTRY_EMBEDDING_URL with REGISTRY_EMBEDDING_TOKEN.")
    ] = None,
    embedder_tokenizer: Annotated[
        Path | None, typer.Option(help="The embedder's tokenizer.json (an onnx file's; for "
                                  "openai, declares its tokenizer hash).")
    ] = None,
    embedder_pooling: Annotated[
        str | None, typer.Option(help="mean or cls (onnx: default the model's own).")
    ] = None,
    embedder_normalize: Annotated[
        bool, typer.Option(help="Store L2-normalised vectors (HNSW on inner product).")
    ] = True,
    embedder_query_prefix: Annotated[
        str, typer.Option(help="Prefix of queries, e5/bge style (e.g. 'query: ').")
    ] = "",
    embedder_passage_prefix: Annotated[
        str, typer.Option(help="Prefix of passages (e.g. 'passage: ').")
    ] = "",
    tokenizer: Annotated[
        str | None, typer.Option(help="Tokenizer name (default: the embedder's).")
    ] = None,
    tokenizer_file: Annotated[
        Path | None, typer.Option(help="tokenizer.json to hash instead of the HF cache.")
    ] = None,
    baseline_metrics: Annotated[
        Path | None, typer.Option(help="JSON/YAML file of metrics measured with this config.")
    ] = None,
    description: Annotated[str | None, typer.Option(help="One line on why.")] = None,
    generate_runbook: Annotated[
        bool, typer.Option("--generate-runbook", help="Also commit runbooks/<version>.md.")
    ] = False,
    push: Annotated[bool, typer.Option("--push", help="Push the branch to origin.")] = False,
    pr: Annotated[bool, typer.Option("--pr", help=PR_HELP)] = False,
    repo: RepoOpt = Path("."),
    fmt: FormatOpt = "text",
) -> None:
    """Lock a new chunking config: a branch lock/<version> with one commit adding it."""
    from registry.commands import configs

    choice = configs.EmbedderChoice(
        onnx=embedder_onnx, openai=embedder_openai, tokenizer=embedder_tokenizer,
        label=embedder, max_tokens=embedder_max_tokens, pooling=embedder_pooling,
        normalize=embedder_normalize, query_prefix=embedder_query_prefix,
        passage_prefix=embedder_passage_prefix)
    if not choice.chosen:
        embedder = embedder or "BAAI/bge-large-en-v1.5"
    locked = configs.lock(
        repo,
        embedder_choice=choice,
        chunk_size=chunk_size,
        overlap_ratio=overlap_ratio,
        jaccard_threshold=jaccard_threshold,
        prefix_policy=prefix_policy.upper(),
        embedder=embedder,
        embedder_max_tokens=embedder_max_tokens or 512,
        tokenizer=tokenizer,
        tokenizer_file=tokenizer_file,
        baseline_metrics=baseline_metrics,
        description=description,
        generate_runbook=generate_runbook,
        push=push,
        pr=pr,
    )
    result, proposal = locked.result, locked.proposal
    config = result.config
    if fmt == "json":
        emit_json({
            "chunk_version": config.chunk_version, "branch": result.branch,
            "commit": result.commit, "path": result.path, "base": result.base,
            "pushed": result.pushed, "config_hash": config.config_hash,
            "ingest_run_id": config.ingest_run_id, "runbook": result.runbook_path,
            "pull_request": proposal_dict(proposal),
        })
        return
    say(f"Locked {config.chunk_version} ({config.label()}) on branch {result.branch}")
    say(f"  {result.path} in commit {result.commit[:10]} on top of {result.base}")
    if result.runbook_path:
        say(f"  runbook: {result.runbook_path}")
    print_next_step(result.branch, result.pushed, proposal)


ValidateFormat = Literal["text", "json", "github"]


def validate(
    repo: RepoOpt = Path("."),
    ref: Annotated[
        str | None,
        typer.Option("--ref", help="Validate a committed ref instead of the working tree."),
    ] = None,
    fmt: Annotated[ValidateFormat, typer.Option("--format", help="Output format.")] = "text",
    strict: Annotated[
        bool, typer.Option("--strict", help="A tokenizer that cannot be checked is an error.")
    ] = False,
    tokenizer_file: Annotated[
        list[str] | None,
        typer.Option(help="NAME=PATH: the tokenizer.json of tokenizer NAME (repeatable)."),
    ] = None,
) -> None:
    """Check every invariant: schema, guardrails, names, production pointer, tags, tokenizer."""
    from registry.commands import configs
    from registry.repository.state import WORKTREE

    files = configs.tokenizer_files(tokenizer_file or [])
    report = configs.validate(repo, ref, strict=strict, tokenizer_files=files)
    if fmt == "json":
        emit_json({
            "ref": report.ref, "commit": report.commit, "configs": report.configs,
            "ok": report.ok, "errors": len(report.errors), "warnings": len(report.warnings),
            "unchecked": report.unchecked,
            "problems": [_problem_dict(p) for p in report.problems],
        })
    elif fmt == "github":
        from registry.repository.github import annotation, append_step_summary, validation_summary

        for problem in report.problems:
            say(annotation(problem))
        append_step_summary(validation_summary(report))
    else:
        for problem in report.problems:
            prefix = "warning: " if problem.severity == "warning" else ""
            say(prefix + problem.render())
        where = "working tree" if report.ref == WORKTREE else report.ref
        verdict = "FAILED" if not report.ok else "unverified" if report.unchecked else "ok"
        unchecked = f", {report.unchecked} untagged" if report.unchecked else ""
        say(f"{verdict}: {report.configs} configs in the {where}, {len(report.errors)} errors, "
            f"{len(report.warnings)} warnings{unchecked}")
    if not report.ok:
        raise typer.Exit(1)


def _problem_dict(problem: Problem) -> dict[str, Any]:
    return {"path": problem.path, "line": problem.line, "severity": problem.severity,
            "message": problem.message, "fix": problem.fix}


def tag(
    repo: RepoOpt = Path("."),
    ref: RefOpt = None,
    push: Annotated[bool, typer.Option("--push", help="Push the new tags to origin.")] = False,
    fmt: FormatOpt = "text",
) -> None:
    """Tag every config on main that has no tag yet, on the commit that introduced it."""
    from registry.commands import configs

    result = configs.tag(repo, ref, push=push)
    if fmt == "json":
        emit_json({"created": result.created, "existing": result.existing,
                    "pushed": result.pushed})
        return
    for name in result.created:
        say(f"tagged {name}")
    pushed = " and pushed" if result.pushed else ""
    say(f"{len(result.created)} tags created{pushed}, {len(result.existing)} already tagged")


def list_configs(repo: RepoOpt = Path("."), ref: RefOpt = None, fmt: FormatOpt = "text") -> None:
    """The locked configs on a ref, newest first, with tag and production marker."""
    from registry.commands import configs

    state, rows = configs.list_configs(repo, ref)
    if fmt == "json":
        emit_json(rows)
        return
    print_table(
        ["", "VERSION", "PARAMS", "EMBEDDER", "TAG", "CREATED BY"],
        [["*" if r["is_production"] else "", r["chunk_version"], r["label"],
          r["embedder_name"] + (f" ({r['embedder']['backend']}, {r['embedder']['dimension']}d)"
                                if r.get("embedder") else ""),
          "yes" if r["tag"] else "no", r["created_by"]] for r in rows],
    )
    if not rows:
        say(f"no locked configs on {state.ref}")


def show(
    version: VersionArg,
    repo: RepoOpt = Path("."),
    ref: RefOpt = None,
    fmt: FormatOpt = "text",
) -> None:
    """One locked config: its parameters, derived names, tag and production marker."""
    from registry.commands import configs

    row = configs.show(repo, ref, version)
    if fmt == "json":
        emit_json(row)
        return
    width = max(len(k) for k in row)
    for key, value in row.items():
        if key == "baseline_metrics":
            value = ", ".join(f"{k}={v:g}" for k, v in value.items()) or "(none)"
        if key == "embedder":
            value = (f"{value['backend']} {value['name']}, dimension {value['dimension']}, "
                     f"{'normalized' if value['normalize'] else 'raw'}, max "
                     f"{value['max_tokens']} tokens, passage prefix {value['passage_prefix']!r}, "
                     f"query prefix {value['query_prefix']!r}, fingerprint "
                     f"{value['fingerprint']}")
        say(f"{key.ljust(width)}  {value}")


def runbook(
    version: VersionArg,
    repo: RepoOpt = Path("."),
    ref: RefOpt = None,
    fmt: Annotated[
        Literal["text", "json", "shell"], typer.Option("--format", help="Output format.")
    ] = "text",
) -> None:
    """The runbook of a config: environment, the exact rollout commands, sanity checks."""
    from registry.commands import configs

    sys.stdout.write(configs.runbook(repo, ref, version, fmt))


def env_command(
    version: VersionArg,
    repo: RepoOpt = Path("."),
    ref: RefOpt = None,
) -> None:
    """`export` lines of a config's environment: eval "$(registry env VERSION)"."""
    from registry.commands import configs

    sys.stdout.write(configs.env(repo, ref, version))


def history(
    repo: RepoOpt = Path("."),
    ref: RefOpt = None,
    limit: Annotated[int | None, typer.Option(help="Show only the newest N events.")] = None,
    fmt: FormatOpt = "text",
) -> None:
    """Locks, promotions, rollbacks and retirements on main, newest first: who, when, PR."""
    from registry.commands import configs

    events = configs.history(repo, ref, limit)
    if fmt == "json":
        emit_json([e.to_dict() for e in events])
        return
    print_table(
        ["WHEN", "EVENT", "VERSION", "FROM", "WHO", "COMMIT", "PR"],
        [[e.at, e.kind, e.chunk_version or "none",
          (e.previous or "none") if e.kind in ("promote", "rollback") else "",
          e.author, f"{e.commit[:10]} ({e.merge})", f"#{e.pr}" if e.pr else ""] for e in events],
    )
    if not events:
        say("no registry events yet")
