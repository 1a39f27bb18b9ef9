"""The embedder a locked config pins: its spec and fingerprint, and the backends that run it
(a local ONNX file through onnxruntime, or any OpenAI-compatible /v1/embeddings endpoint).

Heavy imports (numpy, onnxruntime) happen only when a backend or the fingerprint is used, so
the spec can be parsed and validated anywhere (the validate path installs no numpy).
"""

from __future__ import annotations

from typing import Any

from registry.embedding.spec import FORMAT_VERSION, PROBE_TEXTS, EmbedderSpec

__all__ = ["FORMAT_VERSION", "PROBE_TEXTS", "Embedder", "EmbedderSpec", "check_fingerprint",
           "fingerprint", "pin"]

_FROM_BASE = ("Embedder", "check_fingerprint", "fingerprint", "pin")


def __getattr__(name: str) -> Any:
    if name in _FROM_BASE:
        from registry.embedding import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
