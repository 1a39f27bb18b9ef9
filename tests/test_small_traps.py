"""Small traps: a duration that PostgreSQL would read as "no timeout", and a dashboard server
that must serve its page and nothing else, to nobody but a loopback Host."""

from __future__ import annotations

import http.client
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from registry.database.connection import RECONCILE_LOCK_KEY, timeout_setting
from registry.errors import UsageError
from registry.quality.dashboard import server
from tests.helpers import RegistryRepo

DURATIONS_MS = [1e-9, 0.0004, 0.4, 0.5, 0.999, 1.0, 1.0001, 499.5, 1e15, float("inf")]


@pytest.mark.parametrize("milliseconds", DURATIONS_MS)
def test_no_positive_duration_becomes_an_endless_postgres_timeout(dsn: str,
                                                                  milliseconds: float) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("SET lock_timeout = {}").format(timeout_setting(milliseconds)))
        shown = conn.execute("SHOW lock_timeout").fetchone()
    assert shown is not None and shown[0] != "0", milliseconds


def test_a_nan_timeout_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        timeout_setting(float("nan"))


@pytest.mark.parametrize("wait", ["0.0004", "0.000001", "0.0009"])
def test_a_sub_millisecond_wait_lock_gives_up_instead_of_waiting_forever(
    registry_repo: RegistryRepo, dsn: str, wait: str
) -> None:
    registry_repo.locked()
    with psycopg.connect(dsn, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (RECONCILE_LOCK_KEY,))
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "registry", "reconcile", "--repo", str(registry_repo.path),
             "--dsn", dsn, "--no-fetch", "--wait-lock", wait],
            capture_output=True, text=True, timeout=60)
    assert proc.returncode == 4, proc.stderr
    assert time.monotonic() - started < 30
    assert "another reconcile is running" in proc.stderr


# ---------------------------------------------------------------------------------------------
# dashboard --serve


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A dashboard directory with the page and everything a server must not hand out, served."""
    out = tmp_path / "site"
    (out / "sub").mkdir(parents=True)
    (out / "index.html").write_text("<html>the page</html>")
    (out / ".index.html.partial").write_text("half")
    (out / "notes.txt").write_text("private")
    (out / "sub" / "index.html").write_text("nested")
    (tmp_path / "outside.txt").write_text("outside the site")
    (out / "escape.txt").symlink_to(tmp_path / "outside.txt")
    (out / "escape-dir").symlink_to(tmp_path)
    http = server(out, 0)
    thread = threading.Thread(target=http.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield out, int(http.server_address[1])
    http.shutdown()
    http.server_close()


def fetch(port: int, path: str, host: str | None = None, method: str = "GET"
          ) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.putrequest(method, path, skip_host=True)
    conn.putheader("Host", host if host is not None else f"127.0.0.1:{port}")
    conn.endheaders()
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response.status, body


@pytest.mark.parametrize("path", ["/", "/index.html", "/index.html?x=1"])
@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}"])
def test_the_page_is_served_to_a_loopback_host(site: tuple[Path, int], path: str,
                                               host: str) -> None:
    _, port = site
    assert fetch(port, path, host.format(port=port)) == (200, b"<html>the page</html>")
    assert fetch(port, path, host.format(port=port), method="HEAD") == (200, b"")


@pytest.mark.parametrize("path", [
    "/notes.txt", "/.index.html.partial", "/sub/", "/sub", "/sub/index.html", "/escape.txt",
    "/escape-dir/", "/escape-dir/outside.txt", "/../outside.txt", "/%2e%2e/outside.txt",
    "/index.html/", "/INDEX.HTML", "/./notes.txt", "/index.htm",
])
def test_nothing_but_the_page_is_served(site: tuple[Path, int], path: str) -> None:
    _, port = site
    status, body = fetch(port, path)
    assert status == 404, (path, body)
    assert b"private" not in body and b"outside" not in body and b"nested" not in body


@pytest.mark.parametrize("host", [
    "evil.example:{port}", "evil.example", "127.0.0.1", "localhost", "127.0.0.1:1",
    "localhost:{port}.evil.example", "", "[::1]:{port}", "0.0.0.0:{port}",
])
def test_a_request_for_another_host_is_refused_dns_rebinding(site: tuple[Path, int],
                                                            host: str) -> None:
    _, port = site
    status, body = fetch(port, "/index.html", host.format(port=port))
    assert status == 421 and b"the page" not in body, (host, status)


def test_a_page_replaced_by_a_symlink_is_not_followed(site: tuple[Path, int]) -> None:
    out, port = site
    page = out / "index.html"
    page.unlink()
    page.symlink_to(out.parent / "outside.txt")
    assert fetch(port, "/index.html")[0] == 404
