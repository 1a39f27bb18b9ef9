"""An embedder behind any OpenAI-compatible `POST {base}/embeddings` (OpenAI, Hugging Face TEI,
vLLM, Ollama, a LiteLLM proxy): batches sent by a bounded pool of threads, retried with
exponential backoff and jitter on 429, 5xx and dropped connections (Retry-After honoured).

Plain urllib, like the GitHub client: a few JSON POSTs need no HTTP library, and the core keeps
no dependency it does not declare. The endpoint comes from REGISTRY_EMBEDDING_URL and the token
from REGISTRY_EMBEDDING_TOKEN; the token goes only into the Authorization header and is masked
in any server text an error repeats. Redirects are not followed (urllib would carry the token to
wherever a redirect points).
"""

from __future__ import annotations

import base64
import errno
import http.client
import json
import os
import random
import re
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import numpy as np

from registry.embedding.base import PrefixedEmbedder, Vectors
from registry.embedding.spec import EmbedderSpec
from registry.errors import EmbedderError
from registry.http import ConnectTimeout, no_redirect_opener

URL_ENV = "REGISTRY_EMBEDDING_URL"
TOKEN_ENV = "REGISTRY_EMBEDDING_TOKEN"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_BATCH_SIZE = 64
DEFAULT_CONCURRENCY = 4


@dataclass(frozen=True)
class RetryPolicy:
    """`attempts` tries in all; the wait before try n+1 is base * 2**(n-1), capped, times a
    random factor in [0.5, 1) so parallel workers do not retry in lockstep."""

    attempts: int = 6
    unreachable_attempts: int = 3
    """Tries in all when no connection can be made (refused, no route, a name that does not
    resolve): a server restarting answers within a second or two, a wrong URL never does."""
    base_delay: float = 0.5
    max_delay: float = 30.0
    max_retry_after: float = 120.0
    """A Retry-After longer than this ends the run at once rather than stalling it."""

    def delay(self, attempt: int) -> float:
        return min(self.max_delay, self.base_delay * 2.0 ** (attempt - 1)) * random.uniform(0.5, 1)


class _Transient(Exception):
    """A failure worth another try; `reason` is already scrubbed."""

    def __init__(self, reason: str, retry_after: float | None = None,
                 unreachable: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.unreachable = unreachable


class OpenAIEmbedder(PrefixedEmbedder):
    """Embeds through an OpenAI-compatible endpoint; `dimension=None` asks the server once."""

    def __init__(
        self,
        name: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        token: str | None = None,
        dimension: int | None = None,
        normalize: bool = True,
        max_tokens: int = 512,
        pooling: str | None = None,
        tokenizer_hash: str | None = None,
        query_prefix: str = "",
        passage_prefix: str = "",
        batch_size: int = DEFAULT_BATCH_SIZE,
        concurrency: int = DEFAULT_CONCURRENCY,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._endpoint = self._base_url + "/embeddings"
        self._token = token or None
        self._batch_size = max(1, batch_size)
        self._concurrency = max(1, concurrency)
        self._timeout = timeout
        self._retry = retry or RetryPolicy()
        self._sleep = sleep
        self._opener = no_redirect_opener()
        self._name = name
        if dimension is None:
            dimension = int(self._post(["ok"]).shape[1])
        super().__init__(EmbedderSpec(
            backend="openai", name=name, dimension=dimension, normalize=normalize,
            max_tokens=max_tokens, pooling=pooling, tokenizer_hash=tokenizer_hash,
            query_prefix=query_prefix, passage_prefix=passage_prefix,
        ))

    @classmethod
    def from_spec(cls, spec: EmbedderSpec, env: Mapping[str, str] | None = None,
                  **runtime: Any) -> OpenAIEmbedder:
        """The embedder a locked spec describes, at the endpoint the environment names."""
        env = os.environ if env is None else env
        return cls(spec.name, base_url=env.get(URL_ENV) or DEFAULT_BASE_URL,
                   token=env.get(TOKEN_ENV), dimension=spec.dimension, normalize=spec.normalize,
                   max_tokens=spec.max_tokens, pooling=spec.pooling,
                   tokenizer_hash=spec.tokenizer_hash, query_prefix=spec.query_prefix,
                   passage_prefix=spec.passage_prefix, **runtime)

    def __repr__(self) -> str:
        return f"OpenAIEmbedder({self._name!r}, endpoint={self.endpoint!r})"

    def settings(self) -> dict[str, str]:
        """Its endpoint and token as the environment names them (URL_ENV, TOKEN_ENV): what
        `from_spec` rebuilds the same embedder from elsewhere (a Ray actor)."""
        return {URL_ENV: self._base_url, **({TOKEN_ENV: self._token} if self._token else {})}

    @property
    def endpoint(self) -> str:
        """The URL without any user:password@ or query string: safe to print."""
        return re.sub(r"^([a-z+]+://)[^@/]+@", r"\1", self._endpoint.split("?", 1)[0])

    def _embed(self, texts: Sequence[str]) -> Vectors:
        batches = [list(texts[i:i + self._batch_size])
                   for i in range(0, len(texts), self._batch_size)]
        if len(batches) == 1:
            return self._post(batches[0])
        pool = ThreadPoolExecutor(max_workers=min(self._concurrency, len(batches)))
        try:
            return np.concatenate(list(pool.map(self._post, batches)))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _post(self, batch: list[str]) -> Vectors:
        """One batch, retried while the failure is transient; any other failure is one line.

        Only the tries that could not connect count toward `unreachable_attempts`: a server
        that answered 5xx while draining is restarting, not a wrong URL."""
        unreachable = 0
        for attempt in range(1, self._retry.attempts + 1):
            try:
                return self._once(batch)
            except _Transient as err:
                unreachable += err.unreachable
                if err.unreachable and unreachable >= min(self._retry.unreachable_attempts,
                                                          self._retry.attempts):
                    raise EmbedderError(
                        f"embedding endpoint {self.endpoint} cannot be reached ({unreachable} "
                        f"tries); last: {err.reason}",
                        fix=f"check that {URL_ENV} names a running server (the API base, "
                        "ending in /v1)") from None
                if attempt == self._retry.attempts:
                    raise EmbedderError(
                        f"embedding endpoint {self.endpoint} failed {attempt} times; last: "
                        f"{err.reason}",
                        fix="retry later, or lower the concurrency if the server is overloaded",
                    ) from None
                wait = self._retry.delay(attempt) if err.retry_after is None else err.retry_after
                if wait > self._retry.max_retry_after:
                    raise EmbedderError(
                        f"embedding endpoint {self.endpoint} asks to retry after {wait:.0f} s "
                        f"({err.reason})", fix="retry later, or raise the endpoint's rate limit",
                    ) from None
                self._sleep(wait)
        raise AssertionError("unreachable: the loop returns or raises")

    def _once(self, batch: list[str]) -> Vectors:
        body = json.dumps({"model": self._name, "input": batch, "encoding_format": "float"})
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        request = urllib.request.Request(self._endpoint, data=body.encode(), headers=headers,
                                         method="POST")
        try:
            with self._opener.open(request, timeout=self._timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as err:
            raise self._http_error(err) from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
            reason = getattr(err, "reason", None) or err
            if isinstance(reason, ssl.SSLCertVerificationError):  # no retry will trust it
                detail = reason.verify_message or str(reason)
                raise EmbedderError(
                    f"embedding endpoint {self.endpoint} has a certificate this machine does "
                    f"not trust ({self._scrub(detail)})",
                    fix=f"check {URL_ENV}; for a private CA, set SSL_CERT_FILE to its "
                    "certificate bundle") from None
            raise _Transient(f"connection failed: {self._scrub(str(reason))}",
                             unreachable=_unreachable(reason)) from None
        return self._vectors(raw, len(batch))

    def _http_error(self, err: urllib.error.HTTPError) -> Exception:
        status = err.code
        try:
            detail = self._scrub(_detail(err.read()))
        except (OSError, http.client.HTTPException):
            detail = ""
        said = f"{status} {detail}".strip()
        if status == 429 or status >= 500:
            return _Transient(said, _retry_after(err.headers.get("Retry-After")))
        where = f"embedding endpoint {self.endpoint}"
        if status in (401, 403):
            return EmbedderError(f"{where} rejected the token ({said})",
                                 fix=f"set {TOKEN_ENV} to a token allowed to use {self._name}")
        if status == 404:
            return EmbedderError(f"{where} has no model {self._name} or no embeddings route "
                                 f"({said})", fix=f"check the model name, and that {URL_ENV} "
                                 "is the API base (ending in /v1)")
        if 300 <= status < 400:
            return EmbedderError(f"{where} redirects ({said}); redirects are not followed",
                                 fix=f"set {URL_ENV} to the final URL")
        return EmbedderError(f"{where} refused the request ({said})",
                             fix="check the model name and that the texts fit its max tokens")

    def _vectors(self, raw: bytes, count: int) -> Vectors:
        try:
            items = sorted(json.loads(raw)["data"], key=lambda item: int(item["index"]))
            rows = [_row(item["embedding"]) for item in items]
            vectors = np.stack(rows) if rows else np.zeros((0, 0), dtype=np.float32)
        except (ValueError, KeyError, TypeError) as err:
            raise EmbedderError(f"embedding endpoint {self.endpoint} answered without an "
                                f"OpenAI embeddings list ({type(err).__name__})",
                                fix=f"check that {URL_ENV} points at an OpenAI-compatible API",
                                ) from None
        if vectors.shape[0] != count:
            raise EmbedderError(f"embedding endpoint {self.endpoint} returned {vectors.shape[0]} "
                                f"vectors for {count} texts",
                                fix="check the server; it must answer one vector per input")
        return vectors

    def _scrub(self, text: str) -> str:
        """Server text on one line, bounded, with the token masked."""
        if self._token:
            text = text.replace(self._token, "***")
        return " ".join(text.split())[:200]


def _row(embedding: object) -> Vectors:
    if isinstance(embedding, str):
        return np.frombuffer(base64.b64decode(embedding), dtype="<f4").astype(np.float32)
    return np.asarray(embedding, dtype=np.float32)


def _detail(raw: bytes) -> str:
    """The message of an OpenAI ({error: {message}}), TEI ({error}) or vLLM ({message}) body."""
    text = raw.decode("utf-8", "replace")
    try:
        payload = json.loads(text)
    except ValueError:
        return text
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
        if payload.get("message"):
            return str(payload["message"])
    return text


_NO_CONNECTION = {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH}


def _unreachable(reason: object) -> bool:
    """No connection could be made at all: refused, no route, no such name, or nothing
    answered within the connect timeout (as opposed to one dropped, or a slow answer)."""
    if isinstance(reason, socket.gaierror | ConnectionRefusedError | ConnectTimeout):
        return True
    return isinstance(reason, OSError) and reason.errno in _NO_CONNECTION


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
