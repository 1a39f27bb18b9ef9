"""Local endpoints for notification tests: an HTTP server speaking Slack's incoming-webhook
contract (POST JSON with `text`, answers `ok`) or a generic JSON webhook, that can be told to
fail (500, 429 with Retry-After), to redirect elsewhere or to hang; and an SMTP server
(aiosmtpd) with a login that can refuse some recipients."""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    method: str = "POST"


@dataclass
class WebhookServer:
    """`mode`: ok | 500 | 429 | hang | redirect (`redirect_status` to `location`). Records
    every request (a GET too: what a followed redirect turns a POST into), failed ones too."""

    mode: str = "ok"
    received: list[Received] = field(default_factory=list)
    retry_after: str = "600"
    redirect_status: int = 302
    location: str = ""

    def __enter__(self) -> WebhookServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                owner.received.append(Received(self.path, dict(self.headers),
                                               json.loads(raw) if raw else {}, self.command))
                if owner.mode == "hang":
                    time.sleep(3)
                if owner.mode == "redirect":
                    self.send_response(owner.redirect_status)
                    self.send_header("Location", owner.location)
                    self.end_headers()
                    return
                status, answer = {"ok": (200, b"ok"), "500": (500, b"internal_error"),
                                  "429": (429, b"rate_limited"), "hang": (200, b"ok")}[owner.mode]
                self.send_response(status)
                if status == 429:
                    self.send_header("Retry-After", owner.retry_after)
                self.end_headers()
                self.wfile.write(answer)

            do_GET = do_PUT = do_POST

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}{path}"

    @property
    def texts(self) -> list[str]:
        return [str(r.body.get("text")) for r in self.received]


class SmtpServer:
    """aiosmtpd on a free local port, accepting one user/password (AUTH without TLS); RCPT of
    an address in `refuse` is answered 550. `recipients`: who each accepted message went to."""

    def __init__(self, user: str, password: str) -> None:
        self.user, self.password = user, password
        self.messages: list[bytes] = []
        self.recipients: list[str] = []
        self.refuse: set[str] = set()

    def __enter__(self) -> SmtpServer:
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult, LoginPassword

        owner = self

        class Handler:
            async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                                  rcpt_options: Any) -> str:
                if address in owner.refuse:
                    return "550 5.1.1 no such user"
                envelope.rcpt_tos.append(address)
                return "250 OK"

            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                owner.messages.append(envelope.content)
                owner.recipients.extend(envelope.rcpt_tos)
                return "250 OK"

        def authenticate(server: Any, session: Any, envelope: Any, mechanism: str,
                         data: Any) -> AuthResult:
            ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
                owner.user.encode(), owner.password.encode())
            return AuthResult(success=ok)

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._controller = Controller(Handler(), hostname="127.0.0.1", port=self.port,
                                      authenticator=authenticate, auth_require_tls=False)
        self._controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._controller.stop()

    @property
    def subjects(self) -> list[str]:
        from email import message_from_bytes
        from email.header import decode_header, make_header

        return [str(make_header(decode_header(message_from_bytes(m)["Subject"])))
                for m in self.messages]
