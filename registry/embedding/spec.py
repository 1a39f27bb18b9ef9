"""EmbedderSpec: everything that decides what vector a text gets, as a locked config pins it.

Identity differs by backend. An `onnx` embedder is its files: the sha256 of the model file and
of its tokenizer.json (a name alone says nothing about a re-exported file). An `openai` embedder
is its model name; the endpoint and token come from the environment at run time, so one lock
serves OpenAI, a TEI or vLLM server or a LiteLLM proxy alike. For both, the fingerprint (the
probe texts' vectors, rounded and hashed) catches a model that changed behind the same identity.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from registry.errors import ConfigInvalid

FORMAT_VERSION = 2
"""The locked-config format version that carries an `embedder` mapping (1 = BM25 only)."""

BACKENDS = ("onnx", "openai")
POOLINGS = ("mean", "cls")
MAX_TOKENS_LIMIT = 32768
"""Sanity bound on `max_tokens`: no embedder in use reads more in one input."""

PROBE_TEXTS = (
    "The registry locks every chunking configuration before it is ingested.",
    "A cat sleeps on the warm windowsill in the afternoon sun.",
    "How do I roll back a promotion to the previous production table?",
    "PostgreSQL keeps the shadow table in step with the locked config.",
    "Quarterly revenue grew 12% to $4.2 million, beating estimates.",
    "def chunk(text: str, size: int = 450) -> list[str]: ...",
    "Die Katze schläft auf dem Fensterbrett; le chat dort. 猫が寝ている。",
    "ok",
)
"""Fixed inputs whose vectors make the fingerprint: prose, a question, numbers, code, other
languages and a one-word text, so a change anywhere in the model moves at least one of them."""

FINGERPRINT_DECIMALS = 3

_SHA256 = re.compile(r"sha256:[0-9a-f]{64}")
_REQUIRED = ("backend", "name", "dimension", "normalize", "max_tokens", "fingerprint")


@dataclass(frozen=True)
class EmbedderSpec:
    """The complete pin of an embedder. `fingerprint` is None only on an embedder's own
    description before `pin()` has measured it; a parsed (locked) spec always has one."""

    backend: str
    name: str
    dimension: int
    normalize: bool
    max_tokens: int
    pooling: str | None = None
    model_hash: str | None = None
    tokenizer_hash: str | None = None
    query_prefix: str = ""
    passage_prefix: str = ""
    fingerprint: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The plain mapping a locked config stores under `embedder` (fixed key order)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: object, where: str = "embedder") -> EmbedderSpec:
        """Parse and validate a locked `embedder` mapping; the first problem is one line."""
        if not isinstance(data, Mapping):
            raise _invalid(where, f"embedder must be a mapping, not {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(key) for key in data if key not in known)
        if unknown:
            raise _invalid(f"{where}.{unknown[0]}", f"unknown embedder field {unknown[0]!r}",
                           fix=f"use only {', '.join(sorted(known))}")
        missing = [key for key in _REQUIRED if data.get(key) is None]
        if missing:
            raise _invalid(f"{where}.{missing[0]}", f"embedder field {missing[0]} is missing",
                           fix="pin the embedder again with the lock command")
        spec = cls(**{key: data[key] for key in known if key in data})
        spec.validate(where)
        return spec

    def validate(self, where: str = "embedder") -> None:
        """Raise ConfigInvalid naming the first field that cannot describe a real embedder."""
        _typed(where, "backend", self.backend, str)
        if self.backend not in BACKENDS:
            raise _invalid(f"{where}.backend", f"unknown embedder backend {self.backend!r}",
                           fix=f"use one of {', '.join(BACKENDS)}")
        _typed(where, "name", self.name, str)
        if not self.name.strip():
            raise _invalid(f"{where}.name", "embedder name is empty",
                           fix="name the model (the API's model name for openai)")
        for key, upper in (("dimension", 65536), ("max_tokens", MAX_TOKENS_LIMIT)):
            value = getattr(self, key)
            _typed(where, key, value, int)
            if not 1 <= value <= upper:
                raise _invalid(f"{where}.{key}", f"embedder {key} {value} is out of range",
                               fix=f"use 1..{upper}")
        _typed(where, "normalize", self.normalize, bool)
        for key in ("query_prefix", "passage_prefix"):
            _typed(where, key, getattr(self, key), str)
        if self.pooling is not None and self.pooling not in POOLINGS:
            raise _invalid(f"{where}.pooling", f"unknown pooling {self.pooling!r}",
                           fix=f"use one of {', '.join(POOLINGS)}")
        for key in ("model_hash", "tokenizer_hash", "fingerprint"):
            value = getattr(self, key)
            if value is not None and not (isinstance(value, str) and _SHA256.fullmatch(value)):
                raise _invalid(f"{where}.{key}", f"{key} {value!r} is not sha256:<64 hex digits>",
                               fix="pin the embedder again with the lock command")
        if self.backend == "onnx":
            for key in ("model_hash", "tokenizer_hash", "pooling"):
                if getattr(self, key) is None:
                    raise _invalid(f"{where}.{key}", f"an onnx embedder needs {key}",
                                   fix="pin the embedder again with the lock command")
        elif self.model_hash is not None:
            raise _invalid(f"{where}.model_hash",
                           "an openai embedder is identified by its model name, not a file hash",
                           fix="remove model_hash")


def _invalid(where: str, message: str, fix: str | None = None) -> ConfigInvalid:
    return ConfigInvalid(message, where=where, fix=fix)


def _typed(where: str, key: str, value: object, kind: type) -> None:
    # bool is an int in Python: a `dimension: true` must not pass as 1.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _invalid(f"{where}.{key}",
                       f"embedder field {key} must be {kind.__name__}, not {value!r}")
