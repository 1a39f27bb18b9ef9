"""The one urllib opener every outbound client uses: redirects are never followed, and a
connection is given CONNECT_TIMEOUT_S to open.

urllib follows 301/302/303 by turning a POST into a GET without its body and sends the
Authorization header to wherever the redirect points, another host included; a client here
carries a token or a secret URL, so a redirect is the server's answer, never a place to go.

urllib's one timeout covers the connect and every read alike: a host that silently drops
connections (a firewall, a wrong address in a private network) then cost the whole read timeout
per try (60 s for an embedding request, six tries: six minutes) before anything was said.
"""

from __future__ import annotations

import http.client
import urllib.request
from collections.abc import Callable
from typing import Any

CONNECT_TIMEOUT_S = 10.0


class ConnectTimeout(TimeoutError):
    """No connection within the connect timeout: nothing answered, as opposed to a server
    slow to answer a request it has."""


def _connect(connection: http.client.HTTPConnection, connect: Callable[[], None]) -> None:
    """`connect` (the class's own) within min(CONNECT_TIMEOUT_S, the timeout); then the
    socket gets the full timeout back for the reads."""
    timeout = connection.timeout
    if isinstance(timeout, int | float):
        connection.timeout = min(CONNECT_TIMEOUT_S, timeout)
    try:
        connect()
    except TimeoutError as err:
        raise ConnectTimeout(f"no connection to {connection.host}:{connection.port} within "
                             f"{connection.timeout:g} s") from err
    finally:
        connection.timeout = timeout
    if connection.sock is not None and isinstance(timeout, int | float):
        connection.sock.settimeout(timeout)


class _HTTPConnection(http.client.HTTPConnection):
    def connect(self) -> None:
        _connect(self, super().connect)


class _HTTPSConnection(http.client.HTTPSConnection):
    def connect(self) -> None:  # the TCP connect and the TLS handshake
        _connect(self, super().connect)


_TIMED = {http.client.HTTPConnection: _HTTPConnection,
          http.client.HTTPSConnection: _HTTPSConnection}


class _TimedConnections(urllib.request.AbstractHTTPHandler):
    """Opens urllib's connections with the classes above; whatever else this Python's
    http(s)_open passes (3.11 adds check_hostname) goes on as it is."""

    def do_open(self, http_class: Any, req: urllib.request.Request, **kwargs: Any
                ) -> http.client.HTTPResponse:
        return super().do_open(_TIMED.get(http_class, http_class), req, **kwargs)


class _HTTPHandler(_TimedConnections, urllib.request.HTTPHandler):
    pass


class _HTTPSHandler(_TimedConnections, urllib.request.HTTPSHandler):
    pass


class NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse every redirect: urllib then raises HTTPError with the 3xx status."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def no_redirect_opener() -> urllib.request.OpenerDirector:
    """An opener whose 3xx answers are HTTPErrors, so no request or header leaves for
    another URL, and whose connections open within CONNECT_TIMEOUT_S."""
    return urllib.request.build_opener(NoRedirect, _HTTPHandler, _HTTPSHandler)
