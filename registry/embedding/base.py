"""What every backend offers (passages and queries with their prefixes), and the fingerprint.

The fingerprint embeds each probe text alone (no batch, so no padding to vary the arithmetic),
L2-normalises it in float64, rounds it to FINGERPRINT_DECIMALS and hashes the integers: two
runs of one model on one runtime give the same hash, through the local file or an HTTP server.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import replace
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from registry.embedding.spec import FINGERPRINT_DECIMALS, PROBE_TEXTS, EmbedderSpec
from registry.errors import EmbedderChanged, EmbedderError

Vectors = npt.NDArray[np.float32]


@runtime_checkable
class Embedder(Protocol):
    """What ingest, eval and health need: vectors for passages and for queries."""

    @property
    def spec(self) -> EmbedderSpec: ...

    @property
    def dimension(self) -> int: ...

    def embed_texts(self, texts: Sequence[str]) -> Vectors: ...

    def embed_passages(self, texts: Sequence[str]) -> Vectors: ...

    def embed_query(self, text: str) -> Vectors: ...


class PrefixedEmbedder(ABC):
    """A backend implements `embed_texts` (raw texts in, one row each out); the prefixes and
    the optional L2 normalisation live here once for every backend."""

    def __init__(self, spec: EmbedderSpec) -> None:
        spec.validate()
        self._spec = spec

    @property
    def spec(self) -> EmbedderSpec:
        return self._spec

    @property
    def dimension(self) -> int:
        return self._spec.dimension

    @abstractmethod
    def _embed(self, texts: Sequence[str]) -> Vectors:
        """Raw vectors, `len(texts)` rows; the backend's own batching and transport."""

    def embed_texts(self, texts: Sequence[str]) -> Vectors:
        """Vectors of `texts` as given (no prefix), normalised when the spec says so."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self._embed(texts)
        if vectors.shape != (len(texts), self.dimension):
            raise EmbedderError(
                f"embedder {self._spec.name} returned vectors of shape {vectors.shape} for "
                f"{len(texts)} texts, expected dimension {self.dimension}",
                fix="check that the embedder is the model the spec pins",
            )
        return l2_normalise(vectors) if self._spec.normalize else vectors.astype(np.float32)

    def embed_passages(self, texts: Sequence[str]) -> Vectors:
        prefix = self._spec.passage_prefix
        return self.embed_texts([prefix + text for text in texts])

    def embed_query(self, text: str) -> Vectors:
        """One row: the query with the query prefix (e5's `query: `, bge's instruction)."""
        row: Vectors = self.embed_texts([self._spec.query_prefix + text])[0]
        return row


def l2_normalise(vectors: Vectors) -> Vectors:
    norms = np.linalg.norm(vectors.astype(np.float64), axis=1, keepdims=True)
    normalised: Vectors = (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
    return normalised


def fingerprint(embedder: Embedder) -> str:
    """sha256 of the probe texts' vectors: each alone, L2-normalised, rounded, as int16."""
    digest = hashlib.sha256(f"probes:{len(PROBE_TEXTS)}:{FINGERPRINT_DECIMALS}".encode())
    for text in PROBE_TEXTS:
        row = embedder.embed_texts([text])[0].astype(np.float64)
        row = row / max(float(np.linalg.norm(row)), 1e-12)
        # Integers, not formatted floats: no "-0.000" versus "0.000" around zero.
        digest.update(np.rint(row * 10**FINGERPRINT_DECIMALS).astype("<i2").tobytes())
    return f"sha256:{digest.hexdigest()}"


def pin(embedder: Embedder) -> EmbedderSpec:
    """The embedder's spec with its measured fingerprint: what a lock writes."""
    return replace(embedder.spec, fingerprint=fingerprint(embedder))


def check_fingerprint(spec: EmbedderSpec, embedder: Embedder, where: str = "embedder") -> None:
    """Refuse an embedder that answers the probes differently from the locked fingerprint."""
    actual = fingerprint(embedder)
    if actual != spec.fingerprint:
        raise EmbedderChanged(
            f"embedder {spec.name} ({spec.backend}) has fingerprint {actual}, but the config "
            f"was locked with {spec.fingerprint}: the model behind it changed",
            where=where,
            fix="point the backend at the model the config was locked with, or lock a new "
            "config version with this embedder",
        )
