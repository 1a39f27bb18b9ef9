"""The outbound opener's connect timeout: a host that never completes the connect costs
CONNECT_TIMEOUT_S a try, not the request's whole timeout, while a server slow to answer keeps
the full timeout for its reads. The blackhole is a real listener whose accept queue is full:
the kernel drops further SYNs, as a firewall does."""

from __future__ import annotations

import contextlib
import socket
import time
import urllib.error
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import pytest

from registry import http
from registry.embedding.openai import OpenAIEmbedder
from registry.errors import EmbedderError
from tests import local_http


@pytest.fixture
def blackhole() -> Iterator[str]:
    """http://127.0.0.1:PORT of a listener that never accepts, its backlog full."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    queued = []
    for _ in range(3):
        client = socket.socket()
        client.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            client.connect(("127.0.0.1", port))
        queued.append(client)
    time.sleep(0.1)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        for client in queued:
            client.close()
        listener.close()


@pytest.fixture
def short_connect(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http, "CONNECT_TIMEOUT_S", 0.3)


@pytest.mark.usefixtures("short_connect")
def test_a_host_that_never_answers_the_connect_costs_the_connect_timeout(blackhole: str
                                                                        ) -> None:
    with pytest.raises(urllib.error.URLError) as caught:
        http.no_redirect_opener().open(f"{blackhole}/v1/embeddings", timeout=60)
    assert isinstance(caught.value.reason, http.ConnectTimeout)
    assert "within 0.3 s" in str(caught.value.reason)


class Slow(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        time.sleep(1.0)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.usefixtures("short_connect")
def test_a_slow_answer_keeps_the_full_timeout_for_its_reads() -> None:
    server = local_http.start(Slow)
    try:
        host, port = server.server_address[:2]
        with http.no_redirect_opener().open(f"http://{host!s}:{port}/", timeout=10) as answer:
            assert answer.read() == b"ok"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.usefixtures("short_connect")
def test_an_embedding_endpoint_behind_a_blackhole_is_unreachable_after_three_tries(
        blackhole: str) -> None:
    """Before, each try waited the 60 s read timeout and all six tries were made (~6 min)."""
    sleeps: list[float] = []
    remote = OpenAIEmbedder("m", base_url=f"{blackhole}/v1", dimension=3, sleep=sleeps.append)
    with pytest.raises(EmbedderError) as caught:
        remote.embed_texts(["ok"])
    assert "cannot be reached (3 tries)" in str(caught.value)
    assert "no connection to 127.0.0.1" in str(caught.value)
    assert len(sleeps) == 2
