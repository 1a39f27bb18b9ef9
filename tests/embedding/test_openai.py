"""The OpenAI-compatible backend against a local server that answers with real ONNX vectors."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import numpy as np
import pytest

from registry.embedding.base import pin
from registry.embedding.onnx import OnnxEmbedder
from registry.embedding.openai import TOKEN_ENV, URL_ENV, OpenAIEmbedder, RetryPolicy
from registry.errors import EmbedderError
from tests import local_http
from tests.embedding.conftest import needs_minilm
from tests.embedding_server import FakeEmbeddings

pytestmark = needs_minilm

TOKEN = "sk-test-5ecret-t0ken-never-printed"
TEXTS = ["How do I roll back a promotion?", "Bananas are a good source of potassium.",
         "The reconciler keeps PostgreSQL in step with git.", "ok", "Token budgets",
         "Jaccard near-duplicates", "HNSW index", "a cat on a windowsill", "drift", "CE scores"]


@pytest.fixture
def server(minilm: OnnxEmbedder) -> Iterator[FakeEmbeddings]:
    with FakeEmbeddings(minilm, token=TOKEN) as fake:
        yield fake


def client(server: FakeEmbeddings, sleeps: list[float] | None = None, token: str = TOKEN,
           **settings: object) -> OpenAIEmbedder:
    recorded = [] if sleeps is None else sleeps
    return OpenAIEmbedder(server.model, base_url=server.base_url, token=token, dimension=384,
                          sleep=recorded.append, **settings)  # type: ignore[arg-type]


def test_the_endpoint_returns_the_vectors_of_the_local_model(
        server: FakeEmbeddings, minilm: OnnxEmbedder) -> None:
    remote = client(server, batch_size=3, concurrency=3)
    np.testing.assert_allclose(remote.embed_passages(TEXTS), minilm.embed_passages(TEXTS),
                               atol=1e-6)
    # Three requests in flight at once reach the server in any order; the vectors come back in
    # the input order (above) whatever the order of arrival.
    assert sorted(len(r.body["input"]) for r in server.received) == [1, 3, 3, 3]
    assert {r.authorization for r in server.received} == {f"Bearer {TOKEN}"}
    assert {r.body["model"] for r in server.received} == {"minilm"}


def test_the_dimension_is_asked_of_the_server_when_not_given(server: FakeEmbeddings) -> None:
    remote = OpenAIEmbedder(server.model, base_url=server.base_url, token=TOKEN)
    assert remote.dimension == 384 and server.received[0].body["input"] == ["ok"]


def test_a_locked_spec_finds_its_endpoint_and_token_in_the_environment(
        server: FakeEmbeddings, minilm: OnnxEmbedder) -> None:
    locked = pin(client(server))
    remote = OpenAIEmbedder.from_spec(locked, env={URL_ENV: server.base_url, TOKEN_ENV: TOKEN})
    np.testing.assert_allclose(remote.embed_query("drift"), minilm.embed_query("drift"), atol=1e-6)
    assert TOKEN not in str(locked.to_dict()) and server.base_url not in str(locked.to_dict())


def test_429_and_5xx_and_dropped_connections_are_retried_with_growing_waits(
        server: FakeEmbeddings, minilm: OnnxEmbedder) -> None:
    server.failures = [429, 500, 0, 503]
    sleeps: list[float] = []
    vectors = client(server, sleeps, retry=RetryPolicy(attempts=5, base_delay=1.0)).embed_texts(TEXTS[:2])
    np.testing.assert_allclose(vectors, minilm.embed_texts(TEXTS[:2]), atol=1e-6)
    assert len(server.received) == 5
    assert [0.5 <= s / 2 ** i <= 1.0 for i, s in enumerate(sleeps)] == [True] * 4


def test_retry_after_is_honoured(server: FakeEmbeddings) -> None:
    server.failures, server.retry_after = [429, 429], "3"
    sleeps: list[float] = []
    client(server, sleeps).embed_texts(["ok"])
    assert sleeps == [3.0, 3.0]


def test_a_retry_after_beyond_the_limit_ends_the_run_at_once(server: FakeEmbeddings) -> None:
    server.failures, server.retry_after = [429, 429], "3600"
    with pytest.raises(EmbedderError, match=r"asks to retry after 3600 s \(429 injected 429\)"):
        client(server).embed_texts(["ok"])
    assert len(server.received) == 1


def test_it_gives_up_in_one_line_after_the_attempts(server: FakeEmbeddings) -> None:
    server.failures = [500] * 10
    with pytest.raises(EmbedderError) as caught:
        client(server, retry=RetryPolicy(attempts=3)).embed_texts(["ok"])
    assert str(caught.value) == (
        f"embedding endpoint {server.base_url}/embeddings failed 3 times; last: 500 injected 500 "
        "(retry later, or lower the concurrency if the server is overloaded)")
    assert len(server.received) == 3


def test_an_unreachable_endpoint_is_one_line_after_retries() -> None:
    remote = OpenAIEmbedder("m", base_url="http://127.0.0.1:9/v1", dimension=3,
                            retry=RetryPolicy(attempts=2), sleep=lambda _: None)
    with pytest.raises(EmbedderError, match=r"127.0.0.1:9/v1/embeddings cannot be reached "
                                            r"\(2 tries\); last: connection failed: .*refused"):
        remote.embed_texts(["ok"])


@pytest.mark.parametrize("base_url", ["http://127.0.0.1:9/v1", "http://no-such-host.invalid/v1"])
def test_an_endpoint_nobody_answers_is_given_up_after_a_few_seconds_not_the_full_retries(
        base_url: str) -> None:
    sleeps: list[float] = []
    remote = OpenAIEmbedder("m", base_url=base_url, dimension=3, sleep=sleeps.append)
    with pytest.raises(EmbedderError) as caught:
        remote.embed_texts(["ok"])
    assert len(sleeps) == RetryPolicy().unreachable_attempts - 1 < RetryPolicy().attempts - 1
    assert sum(sleeps) < 2.0
    assert "cannot be reached (3 tries)" in str(caught.value)
    assert "check that REGISTRY_EMBEDDING_URL names a running server" in str(caught.value)


def test_a_server_that_comes_back_within_the_tries_is_used(minilm: OnnxEmbedder) -> None:
    """A refused connection is still retried: the server (restarting) starts listening on
    the port during the first wait."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started: list[FakeEmbeddings | None] = []

    def start_server(_: float) -> None:
        if not started:
            started.append(FakeEmbeddings(minilm, port=port).__enter__())

    embeds_like_minilm(minilm, port, start_server, started)


def embeds_like_minilm(minilm: OnnxEmbedder, port: int, sleep: Callable[[float], None],
                       servers: list[FakeEmbeddings | None]) -> None:
    """An embedder on 127.0.0.1:`port` whose waits run `sleep` (which starts and stops the
    servers it keeps in `servers`) embeds as MiniLM does; the servers are stopped after."""
    remote = OpenAIEmbedder("minilm", base_url=f"http://127.0.0.1:{port}/v1", dimension=384,
                            sleep=sleep)
    try:
        np.testing.assert_allclose(remote.embed_texts(["ok"]), minilm.embed_texts(["ok"]),
                                   atol=1e-6)
    finally:
        for server in servers:
            if server is not None:
                server.__exit__(None, None, None)


@pytest.mark.parametrize("failure", [401, 500])
def test_the_token_never_appears_in_an_error(server: FakeEmbeddings, failure: int) -> None:
    server.echo_authorization = True
    if failure == 401:
        server.token = "the-server-expects-another-token"
    else:
        server.failures = [500] * 3
    with pytest.raises(EmbedderError) as caught:
        client(server, retry=RetryPolicy(attempts=3)).embed_texts(["ok"])
    message = str(caught.value)
    assert "request had Authorization: Bearer ***" in message
    assert TOKEN not in message and TOKEN not in repr(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    if failure == 401:
        assert "rejected the token (401 Incorrect API key provided" in message
        assert f"set {TOKEN_ENV} to a token" in message


def test_the_token_is_not_in_the_embedders_repr(server: FakeEmbeddings) -> None:
    assert TOKEN not in repr(client(server)) and TOKEN not in str(vars(client(server)).keys())


def test_an_unknown_model_is_one_line_and_not_retried(server: FakeEmbeddings) -> None:
    remote = OpenAIEmbedder("no-such-model", base_url=server.base_url, token=TOKEN, dimension=384)
    with pytest.raises(EmbedderError, match=r"has no model no-such-model or no embeddings route "
                                            r"\(404 The model `no-such-model` does not exist\)"):
        remote.embed_texts(["ok"])
    assert len(server.received) == 1


def test_vectors_of_another_dimension_are_refused(server: FakeEmbeddings) -> None:
    with pytest.raises(EmbedderError, match=r"returned vectors of shape \(1, 384\) for 1 texts, "
                                            r"expected dimension 768"):
        OpenAIEmbedder(server.model, base_url=server.base_url, token=TOKEN,
                       dimension=768).embed_texts(["ok"])


def test_a_server_that_answered_errors_then_restarts_gets_its_unreachable_tries(
        minilm: OnnxEmbedder) -> None:
    """A server restarting answers 503 while it drains, then refuses connections for a moment:
    only the refused tries count toward `unreachable_attempts`, so the 503s before them must
    not end the run at the first refused connection (it comes back during the next wait)."""
    first = FakeEmbeddings(minilm).__enter__()
    first.failures = [503, 503]
    port = first._server.server_address[1]
    running: list[FakeEmbeddings | None] = [first]

    def wait(_: float) -> None:
        if len(first.received) == 2 and running[0] is first:  # drained: it goes down
            first.__exit__(None, None, None)
            running[0] = None
        elif running[0] is None:  # one refused try later: it is back on the same port
            running[0] = FakeEmbeddings(minilm, port=port).__enter__()

    embeds_like_minilm(minilm, port, wait, running)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_an_untrusted_certificate_is_one_line_at_once_not_retried(tmp_path: Path) -> None:
    """A certificate the client does not trust (self-signed, a private CA, another host's
    name) is no transient failure: retrying it waited ~10-20 s and then said to retry later."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1"],
                   check=True, capture_output=True)

    class Answer(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.send_response(500)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = local_http.start(Answer)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    sleeps: list[float] = []
    remote = OpenAIEmbedder("m", base_url=f"https://127.0.0.1:{server.server_address[1]}/v1",
                            dimension=3, sleep=sleeps.append)
    try:
        with pytest.raises(EmbedderError) as caught:
            remote.embed_texts(["ok"])
    finally:
        server.shutdown()
        server.server_close()
    assert sleeps == []
    assert "has a certificate this machine does not trust (self-signed certificate)" in str(
        caught.value)
    assert "SSL_CERT_FILE" in str(caught.value)
