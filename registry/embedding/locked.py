"""The embedder of a locked config, built and checked: what ingest, eval and health call.

`embedder_for` builds the backend the pin names (an onnx pin's files found among the installed
model packages by hash, or given; an openai pin's endpoint and token from the environment) and
`check_embedder` measures its fingerprint against the lock, so a model changed behind the same
name or file path is refused before a vector of it is stored or compared.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from registry.config import LockedConfig, config_path
from registry.embedding.base import Embedder, check_fingerprint
from registry.embedding.spec import EmbedderSpec
from registry.errors import EmbedderError


def locked_spec(config: LockedConfig) -> EmbedderSpec:
    """The config's embedder pin; refused for a format 1 (BM25-only) config."""
    if config.embedder is None:
        raise EmbedderError(f"{config.chunk_version} pins no embedder (a format 1, BM25-only "
                            "config)", where=config_path(config.chunk_version),
                            fix="lock a new version with --embedder-onnx or --embedder-openai")
    return config.embedder


def embedder_for(config: LockedConfig, *, model_file: Path | None = None,
                 tokenizer_file: Path | None = None, **runtime: Any) -> Embedder:
    """The backend `config` pins, its files refused unless they hash as locked (not yet
    fingerprinted: `check_embedder`, or `verified_embedder` for both)."""
    spec = locked_spec(config)
    if spec.backend == "openai":
        from registry.embedding.openai import OpenAIEmbedder

        return OpenAIEmbedder.from_spec(spec, **runtime)
    from registry.embedding.onnx import OnnxEmbedder

    model_file, tokenizer_file = onnx_files(config, model_file, tokenizer_file)
    return OnnxEmbedder.from_spec(spec, model_file, tokenizer_file, **runtime)


def onnx_files(config: LockedConfig, model_file: Path | None, tokenizer_file: Path | None
               ) -> tuple[Path, Path]:
    """The model and tokenizer files of `config`'s onnx pin: those given, else the installed
    model package's whose hashes are the pin's; refused in one line when there are none."""
    spec = locked_spec(config)
    if model_file is None or tokenizer_file is None:
        found_model, found_tokenizer = installed_files(spec)
        model_file = model_file or found_model
        tokenizer_file = tokenizer_file or found_tokenizer
    if model_file is None or tokenizer_file is None:
        raise EmbedderError(
            f"no installed model package has the model file of embedder {spec.name} "
            f"({spec.model_hash})", where=config_path(config.chunk_version),
            fix="pass --embedder-model FILE (and --embedder-tokenizer FILE) with the files the "
            "config was locked with")
    return Path(model_file), Path(tokenizer_file)


def installed_files(spec: EmbedderSpec) -> tuple[Path | None, Path | None]:
    """(model, tokenizer) among the installed model packages whose hashes are the pin's."""
    from registry.embedding.onnx import INSTALLED_MODELS, installed_model
    from registry.tokenizer import file_hash

    candidates = [spec.name] + [name for name in INSTALLED_MODELS if name != spec.name]
    for name in candidates:
        if name not in INSTALLED_MODELS:
            continue
        try:
            model, tokenizer = installed_model(name)
        except EmbedderError:
            continue
        if file_hash(model) == spec.model_hash:
            return model, (tokenizer if file_hash(tokenizer) == spec.tokenizer_hash else None)
    return None, None


def check_embedder(config: LockedConfig, embedder: Embedder) -> None:
    """Refuse `embedder` unless it answers the probes as the lock recorded (EmbedderChanged)."""
    check_fingerprint(locked_spec(config), embedder, where=config_path(config.chunk_version))


_VERIFIED: dict[tuple[EmbedderSpec, Path, Path], Embedder] = {}
"""Onnx embedders already fingerprinted in this process, by pin and files: loading a session
and embedding the probes takes seconds, and the same files on the same runtime cannot answer
differently later in the process (each use still re-hashes the files)."""


def verified_embedder(config: LockedConfig, *, model_file: Path | None = None,
                      tokenizer_file: Path | None = None, **runtime: Any) -> Embedder:
    """`embedder_for` + `check_embedder`: the embedder a run may use. An openai pin is
    fingerprinted on every call (the server may swap the model at any time)."""
    spec = locked_spec(config)
    key = None
    if spec.backend == "onnx" and not runtime:
        from registry.tokenizer import file_hash

        model_file, tokenizer_file = onnx_files(config, model_file, tokenizer_file)
        key = (spec, model_file.resolve(), tokenizer_file.resolve())
        if key in _VERIFIED and file_hash(model_file) == spec.model_hash \
                and file_hash(tokenizer_file) == spec.tokenizer_hash:
            return _VERIFIED[key]
    embedder = embedder_for(config, model_file=model_file, tokenizer_file=tokenizer_file,
                            **runtime)
    check_embedder(config, embedder)
    if key is not None:
        _VERIFIED[key] = embedder
    return embedder
