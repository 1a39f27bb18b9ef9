"""`registry`: a thin typer app. Parse, call the core library, render; nothing else.

Heavy modules (git, psycopg, jsonschema, tokenizers) are imported inside the commands that need
them so `registry --help` stays fast. Every RegistryError becomes one red line and its exit code;
anything else is a bug: "unexpected error" and exit 3 (traceback only with --debug).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from registry.errors import UNEXPECTED_EXIT_CODE, RegistryError

if TYPE_CHECKING:
    from registry.changes import ChangeResult
    from registry.errors import Problem
    from registry.github import Proposal
    from registry.gitops import RegistryState

app = typer.Typer(
    name="registry",
    help="A git repository as the registry of locked RAG chunking configurations, with "
    "PostgreSQL kept in step by a reconciler.",
    no_args_is_help=True,
    add_completion=False,
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
    sys.stdout.write(text + "\n")


def _emit_json(data: Any) -> None:
    _print(json.dumps(data, indent=2, default=str))


def _table(headers: list[str], rows: list[list[str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(*headers, box=None, pad_edge=False, header_style="bold")
    for row in rows:
        table.add_row(*row)
    Console(soft_wrap=True, width=None if sys.stdout.isatty() else 240).print(table)


@app.callback()
def _root(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks of unexpected errors.")
    ] = False,
) -> None:
    if debug:
        _debug["on"] = True


# ---------------------------------------------------------------------------------------------
# Configs: lock, validate, tag, show, list


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
    from registry.changes import lock as lock_config

    result = lock_config(
        repo,
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
    proposal = _propose(repo, result.branch, result.base) if pr else None
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
    if proposal is not None:
        _print_proposal(proposal)
    elif result.pushed:
        _print(f"Next: open a pull request from {result.branch} and merge it to lock the config.")
    else:
        _print(f"Next: git push origin {result.branch}, then open a pull request and merge it.")


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
    from registry.gitops import WORKTREE, Git
    from registry.validate import validate as run_validate

    files: dict[str, Path] = {}
    for item in tokenizer_file or []:
        name, sep, path = item.partition("=")
        if not sep:
            raise _usage(f"--tokenizer-file {item!r} is not NAME=PATH")
        files[name] = Path(path)
    report = run_validate(Git(repo), ref or WORKTREE, strict=strict, tokenizer_files=files)
    if fmt == "json":
        _emit_json({
            "ref": report.ref, "commit": report.commit, "configs": report.configs,
            "ok": report.ok, "errors": len(report.errors), "warnings": len(report.warnings),
            "problems": [_problem_dict(p) for p in report.problems],
        })
    elif fmt == "github":
        from registry.github import annotation, append_step_summary, validation_summary

        for problem in report.problems:
            _print(annotation(problem))
        append_step_summary(validation_summary(report))
    else:
        for problem in report.problems:
            prefix = "warning: " if problem.severity == "warning" else ""
            _print(prefix + problem.render())
        where = "working tree" if report.ref == WORKTREE else report.ref
        verdict = "ok" if report.ok else "FAILED"
        _print(f"{verdict}: {report.configs} configs in the {where}, {len(report.errors)} errors, "
               f"{len(report.warnings)} warnings")
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
    from registry.changes import tag as tag_configs

    result = tag_configs(repo, ref=ref, push=push)
    if fmt == "json":
        _emit_json({"created": result.created, "existing": result.existing,
                    "pushed": result.pushed})
        return
    for name in result.created:
        _print(f"tagged {name}")
    pushed = " and pushed" if result.pushed else ""
    _print(f"{len(result.created)} tags created{pushed}, {len(result.existing)} already tagged")


def _committed_state(repo: Path, ref: str | None) -> RegistryState:
    from registry.gitops import Git, read_state

    git = Git(repo)
    return read_state(git, git.desired_ref(ref, fetch=False))


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
    from registry.gitops import Git

    state = _committed_state(repo, ref)
    tags = Git(repo).tags(state.settings.tag_prefix)
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
    version: Annotated[str, typer.Argument(help="A chunk_version, or `production`.")],
    repo: RepoOpt = Path("."),
    ref: RefOpt = None,
    fmt: FormatOpt = "text",
) -> None:
    """One locked config: its parameters, derived names, tag and production marker."""
    from registry.gitops import Git

    state = _committed_state(repo, ref)
    config = state.config(version)
    row = _config_row(state, config.chunk_version, Git(repo).tags(state.settings.tag_prefix))
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
    version: Annotated[str, typer.Argument(help="A chunk_version, or `production`.")],
    repo: RepoOpt = Path("."),
    ref: RefOpt = None,
    fmt: Annotated[
        Literal["text", "json", "shell"], typer.Option("--format", help="Output format.")
    ] = "text",
) -> None:
    """The runbook of a config: environment, the exact rollout commands, sanity checks."""
    from registry.runbook import render

    state = _committed_state(repo, ref)
    sys.stdout.write(render(state.config(version), state.settings, fmt))


@app.command("env")
def env_command(
    version: Annotated[str, typer.Argument(help="A chunk_version, or `production`.")],
    repo: RepoOpt = Path("."),
    ref: RefOpt = None,
) -> None:
    """`export` lines of a config's environment: eval "$(registry env VERSION)"."""
    from registry.runbook import export_lines

    state = _committed_state(repo, ref)
    sys.stdout.write(export_lines(state.config(version)))


# ---------------------------------------------------------------------------------------------
# The GitOps flow: promote, retire, rollback (each a branch + one commit), and history

PushOpt = Annotated[bool, typer.Option("--push", help="Push the branch to origin.")]
PrOpt = Annotated[bool, typer.Option("--pr", help=PR_HELP)]


def _propose(repo: Path, branch: str, base: str) -> Proposal:
    from registry.changes import describe_change
    from registry.github import propose
    from registry.gitops import Git

    title, body = describe_change(repo, branch, base)
    return propose(Git(repo), branch, base, title, body)


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


def _report_change(repo: Path, result: ChangeResult, fmt: str, pr: bool) -> None:
    """Print what a promote/retire/rollback made, and the step that makes it count."""
    proposal = _propose(repo, result.branch, result.base) if pr else None
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
    if proposal is not None:
        _print_proposal(proposal)
    elif result.pushed:
        _print(f"Next: open a pull request from {result.branch} and merge it.")
    else:
        _print(f"Next: git push origin {result.branch}, then open a pull request and merge it.")


@app.command()
def promote(
    version: Annotated[str, typer.Argument(help="The locked chunk_version to make production.")],
    push: PushOpt = False,
    pr: PrOpt = False,
    repo: RepoOpt = Path("."),
    fmt: FormatOpt = "text",
) -> None:
    """Point production at a locked version: a branch promote/<version> with one commit."""
    from registry.changes import promote as promote_version

    _report_change(repo, promote_version(repo, version, push=push or pr), fmt, pr)


@app.command()
def retire(
    version: Annotated[str, typer.Argument(help="The locked chunk_version to retire.")],
    push: PushOpt = False,
    pr: PrOpt = False,
    repo: RepoOpt = Path("."),
    fmt: FormatOpt = "text",
) -> None:
    """Delete a locked config (its table is dropped after the grace period): branch retire/<v>."""
    from registry.changes import retire as retire_version

    _report_change(repo, retire_version(repo, version, push=push or pr), fmt, pr)


@app.command()
def rollback(
    push: PushOpt = False, pr: PrOpt = False, repo: RepoOpt = Path("."), fmt: FormatOpt = "text"
) -> None:
    """Revert the last promotion on main: a branch rollback/<version> with a `git revert`."""
    from registry.changes import rollback as rollback_production

    _report_change(repo, rollback_production(repo, push=push or pr), fmt, pr)


@app.command()
def history(
    repo: RepoOpt = Path("."),
    ref: RefOpt = None,
    limit: Annotated[int | None, typer.Option(help="Show only the newest N events.")] = None,
    fmt: FormatOpt = "text",
) -> None:
    """Locks, promotions, rollbacks and retirements on main, newest first: who, when, PR."""
    from registry.gitops import Git
    from registry.history import read_history

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
# The error funnel


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app, turn errors into one line and an exit code."""
    try:
        app(args=argv, prog_name="registry")
    except RegistryError as err:
        _fail(f"error: {err}", err.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except BrokenPipeError:
        sys.exit(0)
    except Exception as err:
        if _debug["on"]:
            import traceback

            traceback.print_exc()
        reason = str(err).splitlines()[0][:200] if str(err) else ""
        _fail(f"unexpected error: {type(err).__name__}: {reason} (rerun with --debug for the "
              "traceback, and report it)", UNEXPECTED_EXIT_CODE)


def _fail(line: str, code: int) -> None:
    sys.stderr.write(line.replace("\n", " ") + "\n")
    sys.exit(code)
