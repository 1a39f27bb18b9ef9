"""A local OpenAI-compatible chat server (`POST /v1/chat/completions`, Bearer authentication,
{"error": {"message", "type"}} bodies) whose model does real work: an extractive reader that
answers with the context sentence sharing the most words with the question (none shared: "I
don't know"). Tests steer it with failures for the next requests, and it records them."""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests import local_http

WORD = re.compile(r"[a-z0-9]+")
PASSAGE = re.compile(r"^\[\d+\] (.*)$", re.MULTILINE)


def extract(user_message: str) -> str:
    """The sentence of the numbered passages that shares the most words with the question."""
    context, _, question = user_message.rpartition("Question:")
    asked = set(WORD.findall(question.lower()))
    best, best_overlap = "I don't know.", 0
    for passage in PASSAGE.findall(context):
        for sentence in re.split(r"(?<=[.!?])\s+", passage):
            overlap = len(asked & set(WORD.findall(sentence.lower())))
            if overlap > best_overlap:
                best, best_overlap = sentence.strip(), overlap
    return best


@dataclass
class ExtractiveChat(local_http.LocalServer):
    model: str = "extractive-reader"
    token: str | None = None
    failures: list[int] = field(default_factory=list)
    """Statuses for the next requests, one each, before the server answers normally again."""
    received: list[dict[str, Any]] = field(default_factory=list)

    def __enter__(self) -> ExtractiveChat:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            wbufsize = -1

            def do_POST(self) -> None:
                fake.handle(self)

            def log_message(self, *args: Any) -> None:
                pass

        self._lock = threading.Lock()
        self._server = local_http.start(Handler)
        return self

    @property
    def base_url(self) -> str:
        return self.origin + "/v1"

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        raw = request.rfile.read(int(request.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        with self._lock:
            self.received.append({"path": request.path, "body": body,
                                  "authorization": request.headers.get("Authorization")})
            failure = self.failures.pop(0) if self.failures else None
        if failure is not None:
            return self._send(request, failure, {"error": {"message": f"injected {failure}",
                                                           "type": "server_error"}})
        if request.path != "/v1/chat/completions":
            return self._send(request, 404, {"error": {"message": f"no route {request.path}",
                                                       "type": "invalid_request_error"}})
        if self.token is not None and request.headers.get("Authorization") != \
                f"Bearer {self.token}":
            return self._send(request, 401, {"error": {"message": "Incorrect API key provided",
                                                       "type": "invalid_request_error"}})
        messages = body.get("messages") if isinstance(body, dict) else None
        if not isinstance(messages, list) or body.get("model") != self.model:
            return self._send(request, 400, {"error": {"message": "bad model or messages",
                                                       "type": "invalid_request_error"}})
        user = next((m.get("content", "") for m in reversed(messages)
                     if isinstance(m, dict) and m.get("role") == "user"), "")
        answer = extract(str(user))
        self._send(request, 200, {
            "id": f"chatcmpl-{len(self.received)}", "object": "chat.completion",
            "model": self.model,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": answer}}],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}})

    @staticmethod
    def _send(request: BaseHTTPRequestHandler, status: int, payload: object) -> None:
        data = json.dumps(payload).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        request.wfile.write(data)
