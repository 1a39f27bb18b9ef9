"""`registry`: a thin typer app. Parse, call the core library, render; nothing else.

Heavy modules (git, psycopg, jsonschema, tokenizers) are imported inside the commands that need
them so `registry --help` stays fast. Every RegistryError becomes one red line and its exit code;
anything else is a bug: "unexpected error" and exit 3 (traceback only with --debug).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from registry.cli.completion import complete_version
from registry.errors import UNEXPECTED_EXIT_CODE, RegistryError
from registry.secrets import scrub, scrub_log_handlers

if TYPE_CHECKING:
    from registry.errors import Problem
    from registry.repository.git import Git
    from registry.repository.github import Proposal
    from registry.repository.lifecycle import ChangeResult
    from registry.repository.state import RegistryState

app = typer.Typer(
    name="registry",
    help="A git repository as the registry of locked RAG chunking configurations, with "
    "PostgreSQL kept in step by a reconciler.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

_debug = {"on": os.environ.get("REGISTRY_DEBUG", "") not in ("", "0")}

RepoOpt = Annotated[
    Path, typer.Option("--repo", help="Registry repository (default: the current directory).")
]
RefOpt = Annotated[
    str | None,
    typer.Option("--ref", help="Git ref to read (default: origin/main when there is a remote, "
                 "else main)."),
]
DataFormat = Literal["text", "json"]
FormatOpt = Annotated[DataFormat, typer.Option("--format", help="Output format.")]
PR_HELP = ("Push the branch and open a pull request (GITHUB_TOKEN or GH_TOKEN; without one, "
           "print the page that opens it).")


def _print(text: str = "") -> None:
    sys.stdout.write(scrub(text) + "\n")


def _emit_json(data: Any) -> None:
    _print(json.dumps(data, indent=2, default=str))


def _table(headers: list[str], rows: list[list[str]]) -> None:
    """Columns padded to their widest cell, like `kubectl get`. Plain text on purpose: rich's
    Table takes ~1 ms a row, 1.7 s for a registry of 1,500 configs."""
    widths = [max([len(header), *(len(row[i]) for row in rows)])
              for i, header in enumerate(headers)]
    _print("\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
                     .rstrip() for row in [headers, *rows]))


def _show_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        _print(f"registry (chunk-registry) {version('chunk-registry')}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks of unexpected errors.")
    ] = False,
    show_version: Annotated[
        bool, typer.Option("--version", is_eager=True, callback=_show_version,
                           help="Print the installed chunk-registry version and exit.")
    ] = False,
) -> None:
    if debug:
        _debug["on"] = True


# ---------------------------------------------------------------------------------------------
# Configs: lock, validate, tag, show, list


@app.command()
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
    from registry.repository.scaffold import init as run_init

    result = run_init(directory, tool_repo=tool_repo, pin_sha=pin_sha)
    if fmt == "json":
        _emit_json({"root": str(result.root), "version": result.version,
                    "git_initialised": result.git_initialised, "written": result.written,
                    "unchanged": result.unchanged})
        return
    if not result.changed:
        _print(f"{result.root} is already a registry repository for chunk-registry "
               f"{result.version}: nothing to do")
        return
    if result.git_initialised:
        _print(f"Initialised an empty git repository in {result.root}")
    for path in result.written:
        _print(f"  wrote {path}")
    for path in result.unchanged:
        _print(f"  kept {path} (already up to date)")
    _print("Next: git add -A && git commit -m 'Start the registry', push it to main, then "
           "`registry lock`.")


@app.command()
def lock(
    chunk_size: Annotated[int, typer.Option(help="Tokens per chunk (1..1000).")] = 450,
    overlap_ratio: Annotated[float, typer.Option(help="Overlap between windows (0..0.5).")] = 0.10,
    jaccard_threshold: Annotated[
        float, typer.Option(help="Drop near-duplicates at or above this Jaccard (0.5..1).")
    ] = 0.8,
    prefix_policy: Annotated[
        str, typer.Option(help="A: prefix in embedding_text only; B: in both texts.")
    ] = "A",
    embedder: Annotated[str, typer.Option(help="Embedding model name.")] = "BAAI/bge-large-en-v1.5",
    embedder_max_tokens: Annotated[
        int, typer.Option(help="The embedder's maximum input tokens.")
    ] = 512,
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
    from registry.repository.git import Git
    from registry.repository.lifecycle import lock as lock_config
    from registry.repository.lifecycle import propose_change

    git = Git(repo)
    result = lock_config(
        git,
        chunk_size=chunk_size,
        overlap_ratio=overlap_ratio,
        jaccard_threshold=jaccard_threshold,
        prefix_policy=prefix_policy.upper(),
        embedder=embedder,
        embedder_max_tokens=embedder_max_tokens,
        tokenizer=tokenizer,
        tokenizer_file=tokenizer_file,
        baseline_metrics=baseline_metrics,
        description=description,
        generate_runbook=generate_runbook,
        push=push or pr,
    )
    config = result.config
    proposal = propose_change(git, result.branch, result.base) if pr else None
    if fmt == "json":
        _emit_json({
            "chunk_version": config.chunk_version, "branch": result.branch,
            "commit": result.commit, "path": result.path, "base": result.base,
            "pushed": result.pushed, "config_hash": config.config_hash,
            "ingest_run_id": config.ingest_run_id, "runbook": result.runbook_path,
            "pull_request": _proposal_dict(proposal),
        })
        return
    _print(f"Locked {config.chunk_version} ({config.label()}) on branch {result.branch}")
    _print(f"  {result.path} in commit {result.commit[:10]} on top of {result.base}")
    if result.runbook_path:
        _print(f"  runbook: {result.runbook_path}")
    _print_next_step(result.branch, result.pushed, proposal)


def _print_next_step(branch: str, pushed: bool, proposal: Any) -> None:
    """What the user does next with a change branch: the PR that was opened, or how to open one."""
    if proposal is not None:
        _print_proposal(proposal)
    elif pushed:
        _print(f"Next: open a pull request from {branch} and merge it.")
    else:
        _print(f"Next: git push origin {branch}, then open a pull request and merge it.")


ValidateFormat = Literal["text", "json", "github"]


@app.command()
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
    from registry.repository.git import Git
    from registry.repository.state import WORKTREE, read_state
    from registry.repository.validation import validate as run_validate

    files: dict[str, Path] = {}
    for item in tokenizer_file or []:
        name, sep, path = item.partition("=")
        if not sep:
            raise _usage(f"--tokenizer-file {item!r} is not NAME=PATH")
        files[name] = Path(path)
    git = Git(repo)
    state = read_state(git, ref or WORKTREE)
    report = run_validate(git, state, strict=strict, tokenizer_files=files)
    if fmt == "json":
        _emit_json({
            "ref": report.ref, "commit": report.commit, "configs": report.configs,
            "ok": report.ok, "errors": len(report.errors), "warnings": len(report.warnings),
            "unchecked": report.unchecked,
            "problems": [_problem_dict(p) for p in report.problems],
        })
    elif fmt == "github":
        from registry.repository.github import annotation, append_step_summary, validation_summary

        for problem in report.problems:
            _print(annotation(problem))
        append_step_summary(validation_summary(report))
    else:
        for problem in report.problems:
            prefix = "warning: " if problem.severity == "warning" else ""
            _print(prefix + problem.render())
        where = "working tree" if report.ref == WORKTREE else report.ref
        verdict = "FAILED" if not report.ok else "unverified" if report.unchecked else "ok"
        unchecked = f", {report.unchecked} untagged" if report.unchecked else ""
        _print(f"{verdict}: {report.configs} configs in the {where}, {len(report.errors)} errors, "
               f"{len(report.warnings)} warnings{unchecked}")
    if not report.ok:
        raise typer.Exit(1)


def _problem_dict(problem: Problem) -> dict[str, Any]:
    return {"path": problem.path, "line": problem.line, "severity": problem.severity,
            "message": problem.message, "fix": problem.fix}


def _usage(message: str) -> RegistryError:
    from registry.errors import UsageError

    return UsageError(message)


@app.command()
def tag(
    repo: RepoOpt = Path("."),
    ref: RefOpt = None,
    push: Annotated[bool, typer.Option("--push", help="Push the new tags to origin.")] = False,
    fmt: FormatOpt = "text",
) -> None:
    """Tag every config on main that has no tag yet, on the commit that introduced it."""
    from registry.repository.git import Git
    from registry.repository.lifecycle import tag as tag_configs

    result = tag_configs(Git(repo), ref=ref, push=push)
    if fmt == "json":
        _emit_json({"created": result.created, "existing": result.existing,
                    "pushed": result.pushed})
        return
    for name in result.created:
        _print(f"tagged {name}")
    pushed = " and pushed" if result.pushed else ""
    _print(f"{len(result.created)} tags created{pushed}, {len(result.existing)} already tagged")


def _committed_state(repo: Path, ref: str | None) -> RegistryState:
    from registry.repository.git import Git
    from registry.repository.state import committed_state

    return committed_state(Git(repo), ref)


def _config_row(state: RegistryState, version: str, tags: dict[str, Any]) -> dict[str, Any]:
    config = state.configs[version]
    tag_name = state.settings.tag_name(version)
    return {
        **config.to_dict(),
        "label": config.label(),
        "config_hash": config.config_hash,
        "ingest_run_id": config.ingest_run_id,
        "table": state.table_name(version),
        "overlap_tokens": config.overlap_tokens,
        "tag": tag_name if tag_name in tags else None,
        "is_production": state.is_production(version),
    }


@app.command("list")
def list_configs(repo: RepoOpt = Path("."), ref: RefOpt = None, fmt: FormatOpt = "text") -> None:
    """The locked configs on a ref, newest first, with tag and production marker."""
    from registry.repository.git import Git
    from registry.repository.state import committed_state

    git = Git(repo)
    state = committed_state(git, ref)
    tags = git.tags(state.settings.tag_prefix)
    rows = [_config_row(state, v, tags) for v in sorted(state.configs, reverse=True)]
    if fmt == "json":
        _emit_json(rows)
        return
    _table(
        ["", "VERSION", "PARAMS", "EMBEDDER", "TAG", "CREATED BY"],
        [["*" if r["is_production"] else "", r["chunk_version"], r["label"], r["embedder_name"],
          "yes" if r["tag"] else "no", r["created_by"]] for r in rows],
    )
    if not rows:
        _print(f"no locked configs on {state.ref}")


@app.command()
def show(
    version: Annotated[str, typer.Argument(help="A chunk_version, or `production`.",
                                           autocompletion=complete_version)],
    repo: RepoOpt = Path("."),
    ref: RefOpt = None,
    fmt: FormatOpt = "text",
) -> None:
    """One locked config: its parameters, derived names, tag and production marker."""
    from registry.repository.git import Git
    from registry.repository.state import committed_state

    git = Git(repo)
    state = committed_state(git, ref)
    config = state.config(version)
    row = _config_row(state, config.chunk_version, git.tags(state.settings.tag_prefix))
    if fmt == "json":
        _emit_json(row)
        return
    width = max(len(k) for k in row)
    for key, value in row.items():
        if key == "baseline_metrics":
            value = ", ".join(f"{k}={v:g}" for k, v in value.items()) or "(none)"
        _print(f"{key.ljust(width)}  {value}")


@app.command()
def runbook(
    version: Annotated[str, typer.Argument(help="A chunk_version, or `production`.",
                                           autocompletion=complete_version)],
    repo: RepoOpt = Path("."),
    ref: RefOpt = None,
    fmt: Annotated[
        Literal["text", "json", "shell"], typer.Option("--format", help="Output format.")
    ] = "text",
) -> None:
    """The runbook of a config: environment, the exact rollout commands, sanity checks."""
    from registry.repository.runbook import render

    state = _committed_state(repo, ref)
    sys.stdout.write(render(state.config(version), state.settings, fmt))


@app.command("env")
def env_command(
    version: Annotated[str, typer.Argument(help="A chunk_version, or `production`.",
                                           autocompletion=complete_version)],
    repo: RepoOpt = Path("."),
    ref: RefOpt = None,
) -> None:
    """`export` lines of a config's environment: eval "$(registry env VERSION)"."""
    from registry.repository.runbook import export_lines

    state = _committed_state(repo, ref)
    sys.stdout.write(export_lines(state.config(version)))


# ---------------------------------------------------------------------------------------------
# The GitOps flow: promote, retire, rollback (each a branch + one commit), and history

PushOpt = Annotated[bool, typer.Option("--push", help="Push the branch to origin.")]
PrOpt = Annotated[bool, typer.Option("--pr", help=PR_HELP)]


def _proposal_dict(proposal: Proposal | None) -> dict[str, Any] | None:
    if proposal is None:
        return None
    return {"number": proposal.number, "url": proposal.url, "created": proposal.created}


def _print_proposal(proposal: Proposal) -> None:
    if proposal.number is None:
        _print(f"Next: open the pull request at {proposal.url}")
        _print("  (set GITHUB_TOKEN or GH_TOKEN to have `--pr` open it for you)")
    elif proposal.created:
        _print(f"Opened pull request #{proposal.number}: {proposal.url}")
    else:
        _print(f"Pull request #{proposal.number} is already open: {proposal.url}")


def _report_change(git: Git, result: ChangeResult, fmt: str, pr: bool) -> None:
    """Print what a promote/retire/rollback made, and the step that makes it count."""
    from registry.repository.lifecycle import propose_change

    proposal = propose_change(git, result.branch, result.base) if pr else None
    if fmt == "json":
        _emit_json({
            "action": result.action, "chunk_version": result.chunk_version,
            "branch": result.branch, "commit": result.commit, "base": result.base,
            "title": result.title, "previous": result.previous, "reverted": result.reverted,
            "pushed": result.pushed, "pull_request": _proposal_dict(proposal),
        })
        return
    _print(f"{result.title}: branch {result.branch}")
    _print(f"  commit {result.commit[:10]} on top of {result.base}")
    if result.reverted:
        _print(f"  reverts {result.reverted[:10]}")
    _print_next_step(result.branch, result.pushed, proposal)


@app.command()
def promote(
    version: Annotated[str, typer.Argument(help="The locked chunk_version to make production.",
                                           autocompletion=complete_version)],
    force: Annotated[
        bool, typer.Option("--force", help="Promote although the last eval comparison failed.")
    ] = False,
    dsn: Annotated[
        str | None,
        typer.Option("--dsn", help="Database whose eval_runs gate the promotion (default: "
                     "REGISTRY_DSN, then DATABASE_URL; none: no gate here, the reconciler's "
                     "applies)."),
    ] = None,
    push: PushOpt = False,
    pr: PrOpt = False,
    repo: RepoOpt = Path("."),
    fmt: FormatOpt = "text",
) -> None:
    """Point production at a locked version: a branch promote/<version> with one commit."""
    from registry.repository.git import Git
    from registry.repository.lifecycle import promote as promote_version

    git = Git(repo)
    result = promote_version(git, version, dsn=dsn, force=force, push=push or pr)
    _report_change(git, result, fmt, pr)


@app.command()
def retire(
    version: Annotated[str, typer.Argument(help="The locked chunk_version to retire.",
                                           autocompletion=complete_version)],
    push: PushOpt = False,
    pr: PrOpt = False,
    repo: RepoOpt = Path("."),
    fmt: FormatOpt = "text",
) -> None:
    """Delete a locked config (its table is dropped after the grace period): branch retire/<v>."""
    from registry.repository.git import Git
    from registry.repository.lifecycle import retire as retire_version

    git = Git(repo)
    _report_change(git, retire_version(git, version, push=push or pr), fmt, pr)


@app.command()
def rollback(
    push: PushOpt = False, pr: PrOpt = False, repo: RepoOpt = Path("."), fmt: FormatOpt = "text"
) -> None:
    """Revert the last promotion on main: a branch rollback/<version> with a `git revert`."""
    from registry.repository.git import Git
    from registry.repository.lifecycle import rollback as rollback_production

    git = Git(repo)
    _report_change(git, rollback_production(git, push=push or pr), fmt, pr)


@app.command()
def history(
    repo: RepoOpt = Path("."),
    ref: RefOpt = None,
    limit: Annotated[int | None, typer.Option(help="Show only the newest N events.")] = None,
    fmt: FormatOpt = "text",
) -> None:
    """Locks, promotions, rollbacks and retirements on main, newest first: who, when, PR."""
    from registry.repository.git import Git
    from registry.repository.history import read_history

    git = Git(repo)
    events = read_history(git, git.desired_ref(ref, fetch=False))[:limit]
    if fmt == "json":
        _emit_json([e.to_dict() for e in events])
        return
    _table(
        ["WHEN", "EVENT", "VERSION", "FROM", "WHO", "COMMIT", "PR"],
        [[e.at, e.kind, e.chunk_version or "none",
          (e.previous or "none") if e.kind in ("promote", "rollback") else "",
          e.author, f"{e.commit[:10]} ({e.merge})", f"#{e.pr}" if e.pr else ""] for e in events],
    )
    if not events:
        _print("no registry events yet")


# ---------------------------------------------------------------------------------------------
# The demo


@app.command()
def demo(
    keep: Annotated[
        Path | None,
        typer.Option("--keep", help="Leave the demo repo in this directory, and its database."),
    ] = None,
    dsn: Annotated[
        str | None,
        typer.Option("--dsn", help="Server to create the demo database on (default: "
                     "REGISTRY_DSN, then DATABASE_URL, else the embedded PostgreSQL)."),
    ] = None,
) -> None:
    """The whole lifecycle on a throwaway registry and database, each step a printed command."""
    from registry.cli.demo import run_demo

    seconds = run_demo(dsn=dsn, keep=keep)
    _print(f"\nDemo finished in {seconds:.1f} s.")


# ---------------------------------------------------------------------------------------------
# Reconciler: plan, reconcile, status, db

DsnOpt = Annotated[
    str | None,
    typer.Option("--dsn", help="PostgreSQL DSN (default: REGISTRY_DSN, then DATABASE_URL, else "
                 "the embedded server in REGISTRY_HOME)."),
]
FetchOpt = Annotated[
    bool, typer.Option("--fetch/--no-fetch", help="git fetch origin before reading origin/main.")
]
PlanFormat = Literal["text", "json", "markdown"]
DedupOpt = Annotated[
    Literal["document", "corpus"],
    typer.Option("--dedup", help="Near-duplicates within each document, or across the corpus "
                 "(MinHash LSH, verified exactly)."),
]
WorkersOpt = Annotated[
    int | None, typer.Option("--workers", min=1, help="Chunking processes (default: CPU count).")
]
StrictOpt = Annotated[
    bool, typer.Option("--strict", help="Fail the run (writing nothing) at the first bad "
                       "document instead of skipping it.")
]


@app.command()
def plan(
    repo: RepoOpt = Path("."),
    ref: RefOpt = None,
    dsn: DsnOpt = None,
    fmt: Annotated[PlanFormat, typer.Option("--format", help="Output format.")] = "text",
    detailed_exitcode: Annotated[
        bool,
        typer.Option("--detailed-exitcode", help="Exit 0 in sync, 2 changes pending, 1 error."),
    ] = False,
    base: Annotated[
        str | None, typer.Option("--base", help="Offline: the ref a PR merges into (no database).")
    ] = None,
    head: Annotated[
        str | None, typer.Option("--head", help="Offline: the ref being merged (with --base).")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Plan as `reconcile --force` would.")
    ] = False,
    fetch: FetchOpt = True,
) -> None:
    """What reconcile would change in PostgreSQL (or, with --base/--head, what merging would)."""
    from registry.reconciler.render import render_plan
    from registry.reconciler.run import offline_plan
    from registry.reconciler.run import plan as make_plan

    if (base is None) != (head is None):
        raise _usage("--base and --head go together")
    try:
        if base is not None and head is not None:
            result = offline_plan(repo, base, head)
        else:
            result = make_plan(repo, ref=ref, dsn=dsn, fetch=fetch, force=force)
    except RegistryError as err:
        if detailed_exitcode:
            raise RegistryError(err.message, where=err.where, fix=err.fix) from None
        raise
    if fmt == "json":
        _emit_json(result.to_dict())
    else:
        sys.stdout.write(render_plan(result, fmt))
    if detailed_exitcode and not result.in_sync:
        raise typer.Exit(2)


@app.command()
def reconcile(
    repo: RepoOpt = Path("."),
    ref: RefOpt = None,
    dsn: DsnOpt = None,
    force: Annotated[
        bool, typer.Option("--force", help="Allow swapping production to an empty table, or over a "
                           "view the registry did not create.")
    ] = False,
    watch: Annotated[
        bool, typer.Option("--watch", help="Keep reconciling every --interval until stopped.")
    ] = False,
    interval: Annotated[
        float, typer.Option("--interval", help="Seconds between runs with --watch.", min=0.1)
    ] = 60.0,
    lock_timeout: Annotated[
        int, typer.Option("--lock-timeout", help="Milliseconds the view swap may wait for readers "
                          "before it retries.", min=1)
    ] = 500,
    wait_lock: Annotated[
        float, typer.Option("--wait-lock", help="Wait up to SECONDS for another reconciler to "
                            "finish instead of exiting 4.", min=0)
    ] = 0.0,
    require_signed: Annotated[
        bool, typer.Option("--require-signed", help="Apply only a commit (or annotated tag) "
                           "whose SSH signature verifies against the allowed signers.")
    ] = False,
    allowed_signers: Annotated[
        Path | None, typer.Option("--allowed-signers", help="With --require-signed: the "
                                  "ssh-keygen allowed_signers file (default: git config "
                                  "gpg.ssh.allowedSignersFile).")
    ] = None,
    fetch: FetchOpt = True,
    fmt: FormatOpt = "text",
    source: Annotated[
        Path | None, typer.Option("--source", help="Then ingest this corpus into every shadow "
                                  "table that has no successful ingest yet (see `ingest`).")
    ] = None,
    tokenizer_file: Annotated[
        list[Path] | None, typer.Option(help="With --source: tokenizer.json files to pick from "
                                        "by hash (repeatable; default: the HF cache).")
    ] = None,
    dedup: DedupOpt = "document",
    workers: WorkersOpt = None,
) -> None:
    """Make PostgreSQL match the repo: create shadow tables, swap production, retire, drop."""
    import logging

    from registry.reconciler.run import reconcile as run_once

    options: dict[str, Any] = {"ref": ref, "dsn": dsn, "force": force, "fetch": fetch,
                               "lock_timeout_ms": lock_timeout, "wait_lock": wait_lock,
                               "require_signed": require_signed,
                               "allowed_signers": allowed_signers}
    if watch:
        if source is not None:
            raise _usage("--source does not go with --watch (ingests are long; run them apart)")
        _watch(repo, interval, options)
        return
    logging.getLogger("registry").setLevel(logging.ERROR)
    result = run_once(repo, **options)
    reports: list[Any] = []
    if source is not None and result.outcome != "failed":
        from registry.ingest.pipeline import ingest_pending

        with _ingest_feedback(quiet=fmt == "json") as (on_progress, on_problem):
            reports = ingest_pending(repo, source, dsn=dsn, ref=ref,
                                     tokenizer_files=tokenizer_file or [], dedup=dedup,
                                     workers=workers, on_progress=on_progress,
                                     on_problem=on_problem)
        if reports and result.outcome == "refused":  # e.g. a swap that waited for rows
            result = run_once(repo, **options)
    if fmt == "json":
        data = result.to_dict()
        if source is not None:
            data["ingests"] = [r.to_dict() for r in reports]
        _emit_json(data)
    else:
        _render_run(result)
        for report in reports:
            _print_ingest(report)
        if source is not None and not reports:
            _print("Every shadow table already has a successful ingest.")
    result.raise_for_outcome()


def _render_run(result: Any) -> None:
    from registry.reconciler.render import render_plan, summary

    run = f"run #{result.run_id}" if result.run_id else "run"
    if result.outcome == "noop":
        _print(f"In sync: {result.plan.ref} ({(result.plan.commit or '')[:10]}) matches "
               f"{result.plan.target} ({run}).")
        for finding in result.plan.findings:
            _print(f"  ! {finding.render()}")
        return
    sys.stdout.write(render_plan(result.plan))
    for item in result.results:
        tries = f" after {item.attempts} attempts" if item.attempts > 1 else ""
        detail = f": {item.error}" if item.error else ""
        _print(f"{item.outcome}{tries}: {item.action.describe()}{detail}")
    _print(f"Reconcile {run}: {result.outcome} ({summary(result.plan)}).")


def _watch(repo: Path, interval: float, options: dict[str, Any]) -> None:
    """Reconcile until SIGINT/SIGTERM; one log line per run, outages logged with backoff."""
    import logging
    import signal
    import threading

    from registry.reconciler.render import summary
    from registry.reconciler.run import watch

    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(message)s", datefmt="%Y-%m-%dT%H:%M:%S%z")
    scrub_log_handlers()
    log = logging.getLogger("registry.watch")
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        stop.set()

    def on_result(result: Any) -> None:
        commit = (result.plan.commit or "")[:10]
        log.info("reconciled %s (%s): %s, %s", result.plan.ref, commit, result.outcome,
                 summary(result.plan))
        for item in result.failed:
            log.warning("failed: %s: %s", item.action.describe(), item.error)
        for finding in result.plan.blocking:
            log.warning("blocked: %s", finding.render())

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    log.info("watching %s every %gs", options.get("ref") or "the main branch", interval)
    runs = watch(repo, stop=stop, interval=interval, on_result=on_result, **options)
    log.info("stopped after %d runs", runs)


@app.command()
def status(
    repo: RepoOpt = Path("."),
    ref: RefOpt = None,
    dsn: DsnOpt = None,
    fetch: FetchOpt = True,
    fmt: FormatOpt = "text",
    exact: Annotated[
        bool, typer.Option("--exact", help="Count every table's rows (reads every row) instead "
                           "of the catalog's estimates.")
    ] = False,
) -> None:
    """Every config and its table: rows, sync status, production, last reconcile that touched it."""
    from registry.reconciler.status import status as read_status

    report = read_status(repo, ref=ref, dsn=dsn, fetch=fetch, exact=exact)
    if fmt == "json":
        _emit_json(report.to_dict())
        return
    last = report.last_run
    if last:
        _print(f"Last reconcile: #{last['id']} {last['outcome']} at {last['finished_at'] or '-'} "
               f"({last['git_ref']} {(last['git_commit'] or '')[:10]}, {last['actor']})")
    else:
        _print("Last reconcile: never")
    _table(
        ["", "VERSION", "PARAMS", "TABLE", "ROWS", "STATUS", "LAST RUN"],
        [["*" if r.production else ("+" if r.desired_production else ""), r.chunk_version,
          r.params or "(retired)", r.table,
          "-" if r.rows is None else ("~" if r.rows_estimated else "") + str(r.rows), r.status,
          f"#{r.last_run} {(r.last_run_commit or '')[:10]}" if r.last_run else "-"]
         for r in report.rows],
    )
    for row in report.rows:
        if row.note:
            _print(f"{row.chunk_version}: {row.note}")
    others = [f for f in report.plan.findings if f.kind == "unmanaged"]
    for finding in others:
        _print(f"! {finding.render()}")
    _print("* production now, + production in the repo but not yet served"
           + ("" if report.exact else "; ~ rows estimated from the catalog (--exact counts them)"))


db_app = typer.Typer(
    help="The database in use, and the embedded PostgreSQL.", no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(db_app, name="db")


@db_app.command("url")
def db_url(dsn: DsnOpt = None, fmt: FormatOpt = "text") -> None:
    """The DSN in use (password masked); starts the embedded server when it is the default."""
    from registry.database.connection import resolve_dsn

    resolved = resolve_dsn(dsn)
    if fmt == "json":
        _emit_json({"dsn": resolved.redacted, "source": resolved.source})
    else:
        _print(resolved.redacted)


@db_app.command("stop")
def db_stop(fmt: FormatOpt = "text") -> None:
    """Stop the embedded PostgreSQL (REGISTRY_HOME); later commands start it again."""
    from registry.database.connection import embedded_data_dir, stop_embedded

    stopped = stop_embedded()
    data = embedded_data_dir()
    if fmt == "json":
        _emit_json({"stopped": stopped, "data_dir": str(data)})
    elif stopped:
        _print(f"stopped the embedded PostgreSQL in {data}")
    else:
        _print(f"the embedded PostgreSQL in {data} is not running")


# ---------------------------------------------------------------------------------------------
# Evaluation and health

CasesOpt = Annotated[
    Path | None,
    typer.Option("--cases", help="JSONL (or JSON array) of {query_id, query, gt_answer}."),
]
KOpt = Annotated[int, typer.Option("--k", min=1, max=1000, help="Candidates retrieved per query "
                                   "(the retrieval snapshot).")]
TopOpt = Annotated[int, typer.Option("--top", min=1, max=1000, help="Chunks a reader gets (the "
                                     "filter hit is judged on these).")]
MatchOpt = Annotated[
    Literal["any", "all"],
    typer.Option("--match", help="any: a chunk may match any query term (BM25-like, default); "
                 "all: every term, as websearch_to_tsquery alone."),
]


@app.command("eval")
def eval_command(
    version: Annotated[
        str | None, typer.Argument(help="A chunk_version, or `production`.",
                                   autocompletion=complete_version)
    ] = None,
    cases: CasesOpt = None,
    compare: Annotated[
        str | None, typer.Option("--compare", help="Compare this shadow version ...")
    ] = None,
    against: Annotated[
        str, typer.Option("--against", help="... against this version (default: production).")
    ] = "production",
    k: KOpt = 50,
    top: TopOpt = 8,
    match: MatchOpt = "any",
    record: Annotated[
        bool, typer.Option("--record/--no-record", help="Store the result in eval_runs.")
    ] = True,
    write_baseline: Annotated[
        Path | None,
        typer.Option("--write-baseline", help="Write the measured metrics to FILE for "
                     "`registry lock --baseline-metrics FILE`."),
    ] = None,
    repo: RepoOpt = Path("."),
    ref: RefOpt = None,
    dsn: DsnOpt = None,
    fmt: FormatOpt = "text",
) -> None:
    """Retrieval evaluation by PostgreSQL full-text search, or a shadow-vs-production comparison
    (exit 1 when the shadow regresses beyond the gates of production.yaml)."""
    from registry.quality.evaluation import baseline_metrics, run_compare, run_eval

    if cases is None:
        raise _usage("--cases FILE is required")
    if compare is None and version is None:
        raise _usage("name a VERSION to evaluate, or --compare SHADOW --against production")
    if compare is not None and version is not None:
        raise _usage("give either VERSION or --compare, not both")
    options: dict[str, Any] = {"dsn": dsn, "ref": ref, "k": k, "top": top, "match": match,
                               "record": record}
    if compare is None:
        assert version is not None
        result = run_eval(repo, version, cases, **options)
        if write_baseline:
            write_baseline.write_text(json.dumps(
                {"chunk_version": result.chunk_version, "metrics": baseline_metrics(result)},
                indent=2) + "\n")
        if fmt == "json":
            _emit_json(result.as_dict())
            return
        _print_metrics(f"{result.chunk_version} ({result.table}, k={k}, top={top}, match={match})",
                       result.metrics)
        if write_baseline:
            _print(f"baseline metrics written to {write_baseline}")
        return
    comparison = run_compare(repo, compare, against, cases, **options)
    if write_baseline:
        write_baseline.write_text(json.dumps(
            {"chunk_version": comparison.shadow.chunk_version,
             "metrics": baseline_metrics(comparison.shadow)}, indent=2) + "\n")
    if fmt == "json":
        _emit_json(comparison.as_dict())
    else:
        shadow, base = comparison.shadow.metrics, comparison.baseline.metrics
        _table(["METRIC", comparison.shadow.chunk_version, comparison.baseline.chunk_version,
                "DELTA"],
               [[name, f"{shadow[name]:.3f}", f"{base[name]:.3f}",
                 f"{comparison.deltas[name]:+.3f}"] for name in comparison.deltas])
        for line in comparison.regressions:
            _print(f"regression: {line}")
        _print("gate: PASSED" if comparison.passed else "gate: FAILED (reconcile will refuse to "
               "promote it unless --force)")
    if not comparison.passed:
        raise typer.Exit(1)


def _print_metrics(title: str, metrics: dict[str, float]) -> None:
    _print(title)
    for name, value in metrics.items():
        shown = f"{value:.0f}" if name == "cases" else f"{value:.3f}"
        _print(f"  {name:<20} {shown}")


@app.command()
def health(
    version: Annotated[
        str, typer.Option("--version", help="The config to check (default: production).")
    ] = "production",
    cases: CasesOpt = None,
    tokenizer_file: Annotated[
        Path | None, typer.Option(help="tokenizer.json to check the config's hash against.")
    ] = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="A tokenizer that cannot be checked is critical.")
    ] = False,
    record: Annotated[
        bool, typer.Option("--record/--no-record", help="Append the report to health_reports.")
    ] = True,
    repo: RepoOpt = Path("."),
    ref: RefOpt = None,
    dsn: DsnOpt = None,
    fmt: Annotated[
        Literal["text", "json", "markdown"], typer.Option("--format", help="Output format.")
    ] = "text",
) -> None:
    """Health of a config and its table: guardrails, prefix leakage, over-budget chunks, dedup
    rate, retrieval metrics and alerts. Exit 0 healthy, 1 warnings, 2 critical."""
    from registry.quality.health import render, run_health

    report = run_health(repo, version, dsn=dsn, ref=ref, cases_file=cases,
                        tokenizer_file=tokenizer_file, strict=strict, record_report=record)
    sys.stdout.write(render(report, fmt))
    if report.exit_code:
        raise typer.Exit(report.exit_code)


# ---------------------------------------------------------------------------------------------
# Ingest: fill a shadow table from a corpus

@app.command()
def ingest(
    version: Annotated[str, typer.Argument(help="The chunk_version whose table to fill.",
                                           autocompletion=complete_version)],
    source: Annotated[
        Path, typer.Option("--source", help="A directory of .md/.txt files, or a JSONL file of "
                           '{"doc_id", "title"?, "text"} objects.')
    ],
    repo: RepoOpt = Path("."),
    ref: RefOpt = None,
    dsn: DsnOpt = None,
    dedup: DedupOpt = "document",
    workers: WorkersOpt = None,
    tokenizer_file: Annotated[
        Path | None, typer.Option(help="tokenizer.json to use instead of the HF cache (its "
                                  "hash must equal the config's tokenizer_hash).")
    ] = None,
    strict: StrictOpt = False,
    max_document_mb: Annotated[
        float, typer.Option(help="Skip documents larger than this.", min=0.001)
    ] = 16.0,
    fmt: FormatOpt = "text",
) -> None:
    """Chunk a corpus exactly as a locked config says and load it into that config's table."""
    from registry.ingest.pipeline import ingest as run

    with _ingest_feedback(quiet=fmt == "json") as (on_progress, on_problem):
        report = run(repo, version, source, dsn=dsn, ref=ref, tokenizer_file=tokenizer_file,
                     dedup=dedup, workers=workers, strict=strict,
                     max_document_bytes=int(max_document_mb * 1024 * 1024),
                     on_progress=on_progress, on_problem=on_problem)
    if fmt == "json":
        _emit_json(report.to_dict())
        return
    _print_ingest(report)


def _print_ingest(report: Any) -> None:
    _print(f"Ingested {report.chunk_version} into {report.table}: {report.chunks} chunks from "
           f"{report.documents} documents ({report.bytes / 1e6:.1f} MB in {report.seconds:.1f}s, "
           f"{report.mb_per_s:.2f} MB/s, run #{report.run})")
    _print(f"  {report.duplicates_removed} near-duplicates removed ({report.dedup}), "
           f"{report.too_small} tiny chunks dropped, {report.over_budget} over budget, "
           f"{report.skipped} documents skipped, {report.replaced_rows} previous rows replaced")
    for entry in report.accounted[:10]:
        into = f" (into {', '.join(entry['into'][:3])})" if entry.get("into") else ""
        _print(f"  not ingested: {entry['doc']}: {entry['outcome']}{into}: {entry['reason']}")
    if report.not_ingested > 10:
        _print(f"  ... {report.not_ingested - 10} more not ingested, named in the run record's "
               "details.accounted")


@contextlib.contextmanager
def _ingest_feedback(quiet: bool) -> Iterator[tuple[Any, Any]]:
    """Progress and skipped documents on stderr: a rich bar on a TTY, else a line every 5 s."""
    def on_problem(problem: Any) -> None:
        sys.stderr.write(f"warning: skipped {problem.render()}\n")

    if quiet:
        yield None, on_problem
        return
    if sys.stderr.isatty():
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        bar = Progress(TextColumn("{task.description}"), BarColumn(),
                       TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                       console=Console(stderr=True), transient=True)
        task = bar.add_task("ingest", total=None, info="")

        def on_progress(state: Any) -> None:
            bar.update(task, total=state.total_bytes, completed=state.bytes,
                       info=f"{state.documents} docs, {state.chunks} chunks, "
                       f"{state.mb_per_s:.2f} MB/s")

        def on_problem_tty(problem: Any) -> None:
            bar.console.print(f"warning: skipped {problem.render()}", markup=False,
                              highlight=False)

        with bar:
            yield on_progress, on_problem_tty
        return
    last = {"at": 0.0}

    def on_progress_plain(state: Any) -> None:
        import time

        if time.monotonic() - last["at"] >= 5.0:
            last["at"] = time.monotonic()
            total = f" of {state.total_bytes / 1e6:.1f}" if state.total_bytes else ""
            sys.stderr.write(f"ingest: {state.bytes / 1e6:.1f}{total} MB, {state.documents} "
                             f"documents, {state.chunks} chunks, {state.mb_per_s:.2f} MB/s\n")

    yield on_progress_plain, on_problem


# ---------------------------------------------------------------------------------------------
# Monitoring: the health dashboard, and the regression watch after a promotion


@app.command()
def dashboard(
    out: Annotated[Path, typer.Option("--out", help="Directory to write index.html into.")],
    serve: Annotated[
        bool, typer.Option("--serve", help="Then serve it on 127.0.0.1 until interrupted.")
    ] = False,
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, help="Port for --serve (0: any free one).")
    ] = 8000,
    days: Annotated[int, typer.Option("--days", min=1, help="Days of history to draw.")] = 90,
    repo: RepoOpt = Path("."),
    ref: RefOpt = None,
    dsn: DsnOpt = None,
    fetch: FetchOpt = True,
    fmt: FormatOpt = "text",
) -> None:
    """A static health dashboard: alerts, configs, and per config the metrics over time with
    their target bands and the promotions, rollbacks and reconciles that touched it."""
    from registry.quality.dashboard import build, server, url_of

    result = build(repo, out, dsn=dsn, ref=ref, fetch=fetch, days=days)
    if fmt == "json":
        _emit_json(result.to_dict())
    else:
        _print(f"Wrote {result.path} ({result.bytes / 1e6:.1f} MB): {result.configs} configs, "
               f"{result.reports} health reports, {result.markers} events, {result.alerts} "
               "current alerts")
    if not serve:
        return
    http = server(out, port)
    with http:
        sys.stderr.write(f"Serving {url_of(http)} (Ctrl-C stops)\n")
        sys.stderr.flush()
        with contextlib.suppress(KeyboardInterrupt):
            http.serve_forever()


@app.command("watch-promotion")
def watch_promotion(
    follow: Annotated[
        bool, typer.Option("--follow", help="Keep checking every --interval until stopped.")
    ] = False,
    interval: Annotated[
        float, typer.Option("--interval", min=1.0, help="Seconds between checks with --follow.")
    ] = 300.0,
    cases: Annotated[
        Path | None,
        typer.Option("--cases", help="Record a fresh health report (an eval on these cases) "
                     "before each check."),
    ] = None,
    tokenizer_file: Annotated[
        Path | None, typer.Option(help="With --cases: tokenizer.json for the health check.")
    ] = None,
    repo: RepoOpt = Path("."),
    ref: RefOpt = None,
    dsn: DsnOpt = None,
    fetch: FetchOpt = True,
    fmt: FormatOpt = "text",
) -> None:
    """Within the monitoring window after a promotion, compare each health report with the
    config's baseline and the previous production; on a critical alert or a regression beyond
    the gates, open a rollback pull request (once per promotion). Exit 1 while it regressed."""
    from registry.quality.promotion_watch import check

    options: dict[str, Any] = {"dsn": dsn, "ref": ref, "fetch": fetch}

    def record_health() -> None:
        if cases is not None:
            from registry.quality.health import run_health

            run_health(repo, dsn=dsn, ref=ref, cases_file=cases, tokenizer_file=tokenizer_file)

    if follow:
        _follow_promotions(repo, interval, record_health, options)
        return
    record_health()
    result = check(repo, **options)
    if fmt == "json":
        _emit_json(result.to_dict())
    else:
        _print_watch(result)
    if result.exit_code:
        raise typer.Exit(result.exit_code)


def _print_watch(result: Any) -> None:
    promotion = result.promotion
    if promotion is not None:
        _print(f"Promotion of {promotion.chunk_version} from {promotion.previous or 'nothing'} "
               f"(commit {promotion.commit[:10]}), served since "
               f"{promotion.to_dict()['promoted_at']}, watched until "
               f"{promotion.to_dict()['window_ends']}: {len(result.reports)} health report(s)")
    for regression in result.regressions:
        _print(f"  regression in report #{regression.report}: {regression.message}")
    _print(f"{result.outcome}: {result.message}")


def _follow_promotions(repo: Path, interval: float, before_check: Any,
                       options: dict[str, Any]) -> None:
    """Check until SIGINT/SIGTERM; a log line whenever the verdict changes."""
    import logging
    import signal
    import threading

    from registry.quality.promotion_watch import follow

    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(message)s", datefmt="%Y-%m-%dT%H:%M:%S%z")
    scrub_log_handlers()
    log = logging.getLogger("registry.quality.promotion_watch")
    stop = threading.Event()
    last: dict[str, Any] = {}

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        stop.set()

    def on_result(result: Any) -> None:
        verdict = (result.outcome, len(result.regressions), result.message)
        if verdict != last.get("verdict"):
            last["verdict"] = verdict
            for regression in result.regressions:
                log.warning("regression in report #%s: %s", regression.report,
                            regression.message)
            log.info("%s: %s", result.outcome, result.message)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    log.info("watching promotions every %gs", interval)
    checks = follow(repo, stop=stop, interval=interval, on_result=on_result,
                    before_check=before_check, **options)
    log.info("stopped after %d checks", checks)


# ---------------------------------------------------------------------------------------------
# The error funnel


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app, turn errors into one line and an exit code."""
    import logging

    # psycopg warns about cleanup after an error (a COPY on a lost connection) that the
    # funnel below already reports as one line.
    logging.getLogger("psycopg").setLevel(logging.ERROR)
    try:
        app(args=argv, prog_name="registry")
    except RegistryError as err:
        _fail(f"error: {err}", err.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except BrokenPipeError:
        sys.exit(0)
    except Exception as err:
        from registry.database.connection import explain

        known = explain(err)
        if known is not None:
            _fail(f"error: {known}", known.exit_code)
        if _debug["on"]:
            import traceback

            sys.stderr.write(scrub(traceback.format_exc()))
        reason = str(err).splitlines()[0][:200] if str(err) else ""
        _fail(f"unexpected error: {type(err).__name__}: {reason} (rerun with --debug for the "
              "traceback, and report it)", UNEXPECTED_EXIT_CODE)


def _fail(line: str, code: int) -> None:
    sys.stderr.write(scrub(line).replace("\n", " ") + "\n")
    sys.exit(code)
