"""The embedder a locked config pins: its spec and fingerprint, and the backends that run it
(a local ONNX file through onnxruntime, or any OpenAI-compatible /v1/embeddings endpoint).

Heavy imports (onnxruntime) happen only when a backend is built, so the spec can be parsed and
validated anywhere.
"""

from registry.embedding.base import Embedder, check_fingerprint, fingerprint, pin
from registry.embedding.spec import FORMAT_VERSION, PROBE_TEXTS, EmbedderSpec

__all__ = ["FORMAT_VERSION", "PROBE_TEXTS", "Embedder", "EmbedderSpec", "check_fingerprint",
           "fingerprint", "pin"]
