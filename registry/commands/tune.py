"""`registry tune`: search the chunking parameters against eval cases and a source corpus, and
optionally open the lock change of the chosen config (`--lock-best`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from registry.config import LockedConfig, utc_now
from registry.database import bookkeeping
from registry.database.connection import resolve_dsn, session
from registry.errors import ConfigInvalid, UsageError
from registry.extras import require
from registry.ingest.pipeline import MAX_DOCUMENT_BYTES, DedupMode, locked_embedder
from registry.quality.evaluation import DEFAULT_K, DEFAULT_TOP, MatchMode, load_cases
from registry.repository.git import Git
from registry.repository.state import RegistryState, committed_state
from registry.tokenizer import (
    ResolvedTokenizer,
    passage_prefix_tokens,
    require_hash,
    resolve,
    special_token_count,
)
from registry.tune.corpus import TokenizedCorpus
from registry.tune.space import parse_space
from registry.tune.study import DEFAULT_OBJECTIVES, TrialOutcome, TuneResult, TuneSettings, run_tune

BASELINE_METRICS = ("oracle_hit_rate", "filter_hit_rate", "avg_snapshot_size")
"""What the chosen trial hands to the lock as `baseline_metrics` (as `eval --write-baseline`)."""


def base_config(state: RegistryState, base: str | None, *, embedder: str,
                embedder_max_tokens: int, tokenizer: str | None,
                resolved: Callable[[str], ResolvedTokenizer]) -> tuple[LockedConfig, bool]:
    """The config whose embedder and tokenizer every trial keeps: `base` (a version or
    `production`), else production, else the newest locked config; with none in the registry,
    one made of the embedder options. True when it comes from the registry."""
    if base is not None:
        return state.config(base), True
    found = state.production_config()
    if found is None and state.configs:
        found = state.configs[max(state.configs)]
    if found is not None:
        return found, True
    name = tokenizer or embedder
    return LockedConfig(chunk_version="tune-base", chunk_size=450, overlap_ratio=0.1,
                        jaccard_threshold=0.8, prefix_policy="A", embedder_name=embedder,
                        embedder_max_tokens=embedder_max_tokens, tokenizer_name=name,
                        tokenizer_hash=resolved(name).hash,
                        created_at=utc_now().strftime("%Y-%m-%dT%H:%M:%SZ"),
                        created_by=""), False


def tune(
    repo: Path | str,
    *,
    source: Path,
    cases: Path,
    dsn: str | None = None,
    ref: str | None = None,
    base: str | None = None,
    tokenizer_file: Path | None = None,
    embedder: str = "BAAI/bge-large-en-v1.5",
    embedder_max_tokens: int = 512,
    tokenizer: str | None = None,
    trials: int = 30,
    chunk_size: str | None = None,
    overlap: str | None = None,
    jaccard: str | None = None,
    prefix_policy: str | None = None,
    space_file: Path | None = None,
    timeout: float | None = None,
    seed: int | None = None,
    objectives: tuple[str, ...] = DEFAULT_OBJECTIVES,
    prefer: str | None = None,
    dedup: DedupMode = "document",
    k: int = DEFAULT_K,
    top: int = DEFAULT_TOP,
    match: MatchMode = "any",
    max_document_bytes: int = MAX_DOCUMENT_BYTES,
    lock_best: bool = False,
    pr: bool = False,
    on_start: Callable[[TuneResult], None] | None = None,
    on_trial: Callable[[TrialOutcome], None] | None = None,
    on_trial_loaded: Callable[[int], None] | None = None,
) -> TuneResult:
    """Read the registry, the cases and the corpus (tokenized once), run the study, and with
    `lock_best` lock the chosen trial's config with its metrics as baseline_metrics."""
    require("optuna", "registry tune")
    require("numpy", "registry tune")
    settings = TuneSettings(trials=trials, timeout=timeout, seed=seed, objectives=objectives,
                            prefer=prefer or next(iter(objectives), ""), dedup=dedup, k=k,
                            top=top, match=match)
    settings.check()
    if embedder_max_tokens < 1:
        raise UsageError(f"--embedder-max-tokens {embedder_max_tokens} must be at least 1")
    git = Git(repo)
    state = committed_state(git, ref)
    config, from_registry = base_config(
        state, base, embedder=embedder, embedder_max_tokens=embedder_max_tokens,
        tokenizer=tokenizer,
        resolved=lambda name: resolve(name, tokenizer_file, repo_root=git.root))
    # The pinned embedder and the chunking tokenizer exactly as ingest finds them (an onnx
    # model package's own tokenizer.json serves when it is the locked one).
    pinned, chunking_file = locked_embedder(config, tokenizer_file)
    found = resolve(config.tokenizer_name, chunking_file, repo_root=git.root)
    if from_registry:
        require_hash(found, config.tokenizer_hash, "--tokenizer-file" if tokenizer_file
                     else config.tokenizer_name)
    tokenizer_json = found.path.read_text("utf-8")
    loaded = found.load()
    space, notes = parse_space(
        config, special_tokens=special_token_count(loaded),
        passage_prefix_tokens=passage_prefix_tokens(
            loaded, config.embedder.passage_prefix if config.embedder else ""),
        chunk_size=chunk_size, overlap=overlap, jaccard=jaccard, prefix_policy=prefix_policy,
        space_file=space_file)
    eval_cases = load_cases(cases)
    corpus = TokenizedCorpus.read(source, tokenizer_json, max_document_bytes=max_document_bytes)
    resolved_dsn = resolve_dsn(dsn)
    result = run_tune(resolved_dsn.value, config, corpus, eval_cases, space, settings,
                      source=str(source), cases_file=str(cases),
                      registry=state.settings.identity, notes=notes, embedder=pinned,
                      on_start=on_start, on_trial=on_trial, on_trial_loaded=on_trial_loaded)
    if result.best is not None:
        result.lock_command = lock_command(git, config, result.best.params, found)
    if lock_best:
        result.locked = lock_chosen(git, result, config, found, pr=pr)
        with session(resolved_dsn.value, purpose="tune") as conn:
            bookkeeping.set_tune_locked(conn, result.run_id, result.locked)
    return result


def lock_command(git: Git, base: LockedConfig, params: dict[str, Any],
                 found: ResolvedTokenizer) -> list[str] | None:
    """The `registry lock` argv that locks `params` with every pin of `base` (embedder name
    and length, tokenizer and its file, and a format 2 base's onnx embedder with its files,
    pooling, normalization and prefixes), so the printed hint locks the config tuned. None
    when the pin cannot be spelled as options (an openai endpoint, a model file not
    installed): `--lock-best` locks it then."""
    argv = ["registry", "lock", "--repo", str(git.root),
            "--chunk-size", str(params["chunk_size"]),
            "--overlap-ratio", f"{params['overlap_ratio']:g}",
            "--jaccard-threshold", f"{params['jaccard_threshold']:g}",
            "--prefix-policy", str(params["prefix_policy"]),
            "--embedder", base.embedder_name,
            "--embedder-max-tokens", str(base.embedder_max_tokens),
            "--tokenizer", base.tokenizer_name, "--tokenizer-file", str(found.path.resolve())]
    spec = base.embedder
    if spec is None:
        return argv
    if spec.backend != "onnx":
        return None
    from registry.embedding.locked import installed_files

    model, own_tokenizer = installed_files(spec)
    if model is None or own_tokenizer is None:
        return None
    argv += ["--embedder-onnx", str(model), "--embedder-tokenizer", str(own_tokenizer),
             "--embedder-normalize" if spec.normalize else "--no-embedder-normalize",
             "--embedder-query-prefix", spec.query_prefix,
             "--embedder-passage-prefix", spec.passage_prefix]
    if spec.pooling:
        argv += ["--embedder-pooling", spec.pooling]
    return argv


def lock_chosen(git: Git, result: TuneResult, base: LockedConfig, found: ResolvedTokenizer, *,
                pr: bool) -> dict[str, Any]:
    """`registry lock` of the chosen trial's parameters (branch lock/<version>, and its pull
    request with `pr`), its measured metrics as baseline_metrics; the base's embedder pin kept
    (a format 2 base locks a format 2 config)."""
    from registry.commands.configs import lock

    best = result.best
    if best is None:
        raise ConfigInvalid("no trial completed, so there is nothing to lock",
                            fix="widen the space or run more --trials")
    metrics = {name: round(best.metrics[name], 4) for name in BASELINE_METRICS}
    locked = lock(Path(git.root), pr=pr, chunk_size=best.params["chunk_size"],
                  overlap_ratio=best.params["overlap_ratio"],
                  jaccard_threshold=best.params["jaccard_threshold"],
                  prefix_policy=best.params["prefix_policy"], embedder=base.embedder_name,
                  embedder_max_tokens=base.embedder_max_tokens, embedder_spec=base.embedder,
                  tokenizer=base.tokenizer_name, tokenizer_file=found.path,
                  baseline_metrics=metrics,
                  description=f"registry tune run {result.run_id}, trial {best.number} "
                              f"(prefer {result.settings.prefer})")
    proposal = locked.proposal
    return {"chunk_version": locked.result.config.chunk_version,
            "branch": locked.result.branch, "commit": locked.result.commit,
            "pushed": locked.result.pushed, "baseline_metrics": metrics,
            "pull_request": None if proposal is None else {
                "url": proposal.url, "number": proposal.number,
                "created": proposal.created}}
