"""Commands on the registry repository that need no database: init, lock, validate, tag,
list, show, runbook, env, history."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry.config import LockedConfig
from registry.embedding.spec import EmbedderSpec
from registry.errors import UsageError
from registry.repository import lifecycle, scaffold, validation
from registry.repository.git import Git
from registry.repository.github import Proposal
from registry.repository.history import Event, read_history
from registry.repository.runbook import export_lines, render
from registry.repository.state import WORKTREE, RegistryState, committed_state, read_state


@dataclass(frozen=True)
class Locked:
    """What `lock` made, and the pull request opened for it (with `--pr`)."""

    result: lifecycle.LockResult
    proposal: Proposal | None


def init(directory: Path, *, tool_repo: str, pin_sha: str | None) -> scaffold.InitResult:
    return scaffold.init(directory, tool_repo=tool_repo, pin_sha=pin_sha)


@dataclass(frozen=True)
class EmbedderChoice:
    """`registry lock`'s embedder options: an onnx model (an installed model's name, or a
    .onnx file with its tokenizer.json) or an OpenAI-compatible model name; None of both:
    a format 1 (BM25-only) config."""

    onnx: str | None = None
    openai: str | None = None
    tokenizer: Path | None = None
    label: str | None = None
    max_tokens: int | None = None
    pooling: str | None = None
    normalize: bool = True
    query_prefix: str = ""
    passage_prefix: str = ""

    @property
    def chosen(self) -> bool:
        return self.onnx is not None or self.openai is not None


def pin_embedder(choice: EmbedderChoice) -> tuple[EmbedderSpec, Path | None]:
    """The pinned spec (fingerprint measured by running the model) and the embedder's own
    tokenizer.json when it has one (an onnx model: the default tokenizer to lock)."""
    from registry.embedding.base import Embedder, pin

    if choice.onnx is not None and choice.openai is not None:
        raise UsageError("--embedder-onnx and --embedder-openai exclude each other",
                         fix="pin one embedder")
    settings: dict[str, Any] = {"normalize": choice.normalize,
                                "query_prefix": choice.query_prefix,
                                "passage_prefix": choice.passage_prefix}
    embedder: Embedder
    tokenizer_file: Path | None = None
    if choice.onnx is not None:
        from registry.embedding.onnx import INSTALLED_MODELS, OnnxEmbedder, installed_model

        if choice.pooling:
            settings["pooling"] = choice.pooling
        if choice.max_tokens:
            settings["max_tokens"] = choice.max_tokens
        if choice.onnx in INSTALLED_MODELS and not Path(choice.onnx).is_file():
            embedder = OnnxEmbedder.installed(choice.onnx, **settings)
            tokenizer_file = choice.tokenizer or installed_model(choice.onnx)[1]
            if choice.tokenizer is not None:
                embedder = OnnxEmbedder(installed_model(choice.onnx)[0], choice.tokenizer,
                                        name=choice.label or choice.onnx,
                                        **(settings | {"pooling": embedder.spec.pooling,
                                                       "max_tokens": embedder.spec.max_tokens}))
        else:
            if choice.tokenizer is None:
                raise UsageError(f"--embedder-onnx {choice.onnx} is a model file: its tokenizer "
                                 "is needed too", fix="pass --embedder-tokenizer tokenizer.json")
            tokenizer_file = choice.tokenizer
            embedder = OnnxEmbedder(Path(choice.onnx), tokenizer_file,
                                    name=choice.label or Path(choice.onnx).stem, **settings)
    else:
        import os

        from registry.embedding.openai import DEFAULT_BASE_URL, TOKEN_ENV, URL_ENV, OpenAIEmbedder
        from registry.tokenizer import file_hash

        assert choice.openai is not None
        embedder = OpenAIEmbedder(
            choice.openai, base_url=os.environ.get(URL_ENV) or DEFAULT_BASE_URL,
            token=os.environ.get(TOKEN_ENV), max_tokens=choice.max_tokens or 512,
            pooling=choice.pooling,
            tokenizer_hash=file_hash(choice.tokenizer) if choice.tokenizer else None,
            **settings)
        tokenizer_file = choice.tokenizer
    return pin(embedder), tokenizer_file


def lock(repo: Path, *, pr: bool = False, push: bool = False,
         embedder_choice: EmbedderChoice | None = None, **parameters: Any) -> Locked:
    git = Git(repo)
    if embedder_choice is not None and embedder_choice.chosen:
        spec, own_tokenizer = pin_embedder(embedder_choice)
        parameters["embedder_spec"] = spec
        if parameters.get("tokenizer_file") is None:
            parameters["tokenizer_file"] = own_tokenizer
        if parameters.get("tokenizer") is None:
            parameters["tokenizer"] = spec.name
    result = lifecycle.lock(git, push=push or pr, **parameters)
    return Locked(result, lifecycle.propose_change(git, result.branch, result.base) if pr
                  else None)


def tokenizer_files(items: list[str]) -> dict[str, Path]:
    """`--tokenizer-file NAME=PATH` options as {name: path}."""
    files: dict[str, Path] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            raise UsageError(f"--tokenizer-file {item!r} is not NAME=PATH")
        files[name] = Path(path)
    return files


def validate(repo: Path, ref: str | None, *, strict: bool,
             tokenizer_files: Mapping[str, Path]) -> validation.Report:
    git = Git(repo)
    state = read_state(git, ref or WORKTREE)
    return validation.validate(git, state, strict=strict, tokenizer_files=dict(tokenizer_files))


def tag(repo: Path, ref: str | None, *, push: bool) -> lifecycle.TagResult:
    return lifecycle.tag(Git(repo), ref=ref, push=push)


def config_row(state: RegistryState, version: str, tags: Mapping[str, Any]) -> dict[str, Any]:
    """One config as `list` and `show` print it."""
    config = state.configs[version]
    tag_name = state.settings.tag_name(version)
    return {
        **config.to_dict(),
        "label": config.label(),
        "config_hash": config.config_hash,
        "ingest_run_id": config.ingest_run_id,
        "table": state.settings.table_name(version),
        "overlap_tokens": config.overlap_tokens,
        "tag": tag_name if tag_name in tags else None,
        "is_production": state.is_production(version),
    }


def list_configs(repo: Path, ref: str | None) -> tuple[RegistryState, list[dict[str, Any]]]:
    """The state read, and its configs newest first."""
    git = Git(repo)
    state = committed_state(git, ref)
    tags = git.tags(state.settings.tag_prefix)
    return state, [config_row(state, v, tags) for v in sorted(state.configs, reverse=True)]


def show(repo: Path, ref: str | None, version: str) -> dict[str, Any]:
    git = Git(repo)
    state = committed_state(git, ref)
    config = state.config(version)
    return config_row(state, config.chunk_version, git.tags(state.settings.tag_prefix))


def runbook(repo: Path, ref: str | None, version: str, fmt: str) -> str:
    state = committed_state(Git(repo), ref)
    return render(state.config(version), state.settings, fmt)


def env(repo: Path, ref: str | None, version: str) -> str:
    config: LockedConfig = committed_state(Git(repo), ref).config(version)
    return export_lines(config)


def history(repo: Path, ref: str | None, limit: int | None) -> list[Event]:
    git = Git(repo)
    return read_history(git, git.desired_ref(ref, fetch=False))[:limit]
