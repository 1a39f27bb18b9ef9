"""A local OpenAI-compatible embeddings server (https://platform.openai.com/docs/api-reference/
embeddings): `POST /v1/embeddings` with {model, input, encoding_format}, Bearer authentication,
{"error": {"message", "type"}} bodies. Its vectors are REAL: a local ONNX embedder computes them.

Tests steer it: answer the next N requests with 429/500 (and a Retry-After), drop connections,
echo the Authorization header in error bodies (a misbehaving proxy), serve another model's
vectors or perturb them (a model swapped behind the same name). It records each request."""

from __future__ import annotations

import json
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

import numpy as np

from registry.embedding.onnx import OnnxEmbedder
from tests import local_http


@dataclass
class Received:
    path: str
    authorization: str | None
    body: Any


@dataclass
class FakeEmbeddings(local_http.LocalServer):
    """Serves `model` with `embedder`'s vectors; `token=None` accepts unauthenticated calls."""

    embedder: OnnxEmbedder
    model: str = "minilm"
    token: str | None = None
    failures: list[int] = field(default_factory=list)
    """Statuses for the next requests, one each, before the server answers normally again;
    0 closes the connection without an answer."""
    retry_after: str | None = None
    echo_authorization: bool = False
    swapped: OnnxEmbedder | None = None
    perturbation: float = 0.0
    received: list[Received] = field(default_factory=list)
    port: int = 0
    """0: any free port."""

    def __enter__(self) -> FakeEmbeddings:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Buffered: head and body leave in one write (two small writes meet the client's
            # delayed ACK and cost 40 ms a request, which a real server does not).
            wbufsize = -1

            def do_POST(self) -> None:
                fake.handle(self)

            def log_message(self, *args: Any) -> None:
                pass

        self._lock = threading.Lock()
        self._server = local_http.start(Handler, self.port)
        return self

    @property
    def base_url(self) -> str:
        return self.origin + "/v1"

    # -- the contract ---------------------------------------------------------------------------

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        raw = request.rfile.read(length)
        authorization = request.headers.get("Authorization")
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        with self._lock:
            self.received.append(Received(request.path, authorization, body))
            failure = self.failures.pop(0) if self.failures else None
        if failure == 0:
            request.close_connection = True
            request.connection.shutdown(socket.SHUT_RDWR)
            return
        if failure is not None:
            kind = "rate_limit_exceeded" if failure == 429 else "server_error"
            return self._error(request, failure, f"injected {failure}", kind, authorization)
        if request.path != "/v1/embeddings":
            return self._error(request, 404, f"no route {request.path}", "invalid_request_error",
                               authorization)
        if self.token is not None and authorization != f"Bearer {self.token}":
            return self._error(request, 401, "Incorrect API key provided",
                               "invalid_request_error", authorization)
        if not isinstance(body, dict) or not isinstance(body.get("input"), (list, str)):
            return self._error(request, 400, "'input' is required", "invalid_request_error",
                               authorization)
        if body.get("model") != self.model:
            return self._error(request, 404, f"The model `{body.get('model')}` does not exist",
                               "invalid_request_error", authorization)
        texts = [body["input"]] if isinstance(body["input"], str) else body["input"]
        with self._lock:  # one model run at a time, as a single-replica server would
            vectors = (self.swapped or self.embedder).embed_texts(texts)
        if self.perturbation:
            vectors = vectors + np.float32(self.perturbation)
        data = [{"object": "embedding", "index": i, "embedding": row.tolist()}
                for i, row in enumerate(vectors)]
        self._send(request, 200, {"object": "list", "data": data, "model": self.model,
                                  "usage": {"prompt_tokens": 0, "total_tokens": 0}})

    def _error(self, request: BaseHTTPRequestHandler, status: int, message: str, kind: str,
               authorization: str | None) -> None:
        if self.echo_authorization:
            message += f" (request had Authorization: {authorization})"
        headers = {"Retry-After": self.retry_after} if self.retry_after and status == 429 else {}
        self._send(request, status, {"error": {"message": message, "type": kind}}, headers)

    @staticmethod
    def _send(request: BaseHTTPRequestHandler, status: int, payload: object,
              headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            request.send_header(name, value)
        request.end_headers()
        request.wfile.write(data)
