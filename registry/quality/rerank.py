"""Optional cross-encoder rerank for `registry eval`, and the CE score distribution health
watches for drift.

A cross-encoder is an ONNX file taking a BERT-style (query, passage) pair encoding
(`input_ids`, `attention_mask`, optionally `token_type_ids`) and giving one relevance score per
pair (`(batch, 1)` or `(batch,)`; a `(batch, 2)` classifier's last column). With one, eval
scores the k retrieved chunks of each case, reorders them by score, judges the filter hit on
the new top, and records the quantiles of the scores the reader would get (the top chunks of
every case). A model that starts scoring the same kind of data differently, or data that
drifted away from what the model scores confidently, shows as quantiles moving away from the
baseline's (the first distribution recorded for the config with that model file).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry.errors import EmbedderError
from registry.extras import require
from registry.tokenizer import file_hash

if TYPE_CHECKING:
    from onnxruntime import InferenceSession
    from tokenizers import Tokenizer

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
DEFAULT_BATCH_SIZE = 16


def quantiles(scores: Sequence[float]) -> dict[str, float]:
    """q10..q90 (linear interpolation), the count and the mean of the scores."""
    if not scores:
        return {}
    import numpy as np  # here: health imports this module for `drift`, and needs no numpy

    values = np.asarray(scores, dtype=np.float64)
    found = {f"q{round(q * 100)}": float(np.quantile(values, q)) for q in QUANTILES}
    return found | {"count": float(len(values)), "mean": float(values.mean())}


def drift(current: Mapping[str, float], baseline: Mapping[str, float]) -> float:
    """How far the current quantiles moved from the baseline's: the largest move of q10..q90,
    in units of the baseline's q10-q90 spread (a spread of 0 counts as 1e-9)."""
    spread = max(baseline["q90"] - baseline["q10"], 1e-9)
    keys = [f"q{round(q * 100)}" for q in QUANTILES]
    return max(abs(current[k] - baseline[k]) for k in keys) / spread


class CrossEncoder:
    """An ONNX cross-encoder with its tokenizer.json, on CPU (or the GPU providers present)."""

    def __init__(self, model_file: Path, tokenizer_file: Path, *, max_tokens: int = 512,
                 batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        require("onnxruntime", "the cross-encoder rerank")
        from registry.embedding.onnx import _open_session
        from registry.tokenizer import load_tokenizer

        for label, path in (("model", model_file), ("tokenizer", tokenizer_file)):
            if not Path(path).is_file():
                raise EmbedderError(f"cross-encoder {label} file {path} does not exist",
                                    fix=f"pass --rerank-model FILE.onnx and --rerank-tokenizer "
                                        f"tokenizer.json (the {label} file)")
        self._session: InferenceSession = _open_session(Path(model_file), None, None)
        self._inputs = {i.name for i in self._session.get_inputs()}
        if not {"input_ids", "attention_mask"} <= self._inputs:
            raise EmbedderError(f"cross-encoder {model_file} takes {sorted(self._inputs)}, not "
                                "input_ids and attention_mask",
                                fix="pass a BERT-style ONNX cross-encoder")
        shape = self._session.get_outputs()[0].shape
        if len(shape) != 2 or (isinstance(shape[1], int) and shape[1] not in (1, 2)):
            raise EmbedderError(f"cross-encoder {model_file} outputs shape {shape}, not one "
                                "relevance logit (or two classes) per pair: it is not a "
                                "cross-encoder (an embedding model outputs token vectors)",
                                fix="pass a BERT-style ONNX cross-encoder (e.g. ms-marco-MiniLM)")
        self._tokenizer: Tokenizer = load_tokenizer(Path(tokenizer_file))
        self._tokenizer.enable_truncation(max_tokens)
        self._tokenizer.enable_padding()
        self._batch_size = max(1, batch_size)
        self.model_hash = file_hash(Path(model_file))
        self.name = Path(model_file).name

    def score(self, query: str, passages: Sequence[str]) -> list[float]:
        """One relevance score per passage (higher: more relevant)."""
        import numpy as np  # onnxruntime's own dependency, present whenever a session is

        scores: list[float] = []
        for start in range(0, len(passages), self._batch_size):
            batch = passages[start:start + self._batch_size]
            encodings = self._tokenizer.encode_batch([(query, p) for p in batch])
            feeds: dict[str, Any] = {
                "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in encodings],
                                           dtype=np.int64)}
            if "token_type_ids" in self._inputs:
                feeds["token_type_ids"] = np.array([e.type_ids for e in encodings],
                                                   dtype=np.int64)
            output = np.asarray(self._session.run(None, feeds)[0], dtype=np.float64)
            if output.shape not in ((len(batch), 1), (len(batch), 2)):
                raise EmbedderError(f"cross-encoder {self.name} returned shape {output.shape} "
                                    f"for {len(batch)} pairs, not one score (or two classes) each",
                                    fix="pass a BERT-style ONNX cross-encoder")
            column = output[:, -1]
            scores.extend(float(x) for x in column)
        return scores
