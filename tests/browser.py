"""Headless Chromium driven over the Chrome DevTools Protocol (a small client on `websockets`):
every network request the page makes, its console errors and uncaught exceptions are recorded,
the DOM can be queried, and a full-page screenshot saved."""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

CHROMIUM = os.environ.get("REGISTRY_CHROMIUM", "/usr/bin/chromium")
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--mute-audio",
    "--remote-debugging-port=0", "--remote-allow-origins=*",
)
ARTIFACTS = Path(os.environ.get("REGISTRY_ARTIFACTS", Path(__file__).resolve().parents[1] / "artifacts"))


@dataclass
class Page:
    """One tab: what it loaded and what it complained about."""

    browser: Chromium
    session: str
    requests: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    load_fired: bool = False

    def send(self, method: str, params: dict[str, Any] | None = None, timeout: float = 30) -> Any:
        return self.browser.call(method, params, session=self.session, timeout=timeout)

    def goto(self, url: str, timeout: float = 60) -> None:
        self.load_fired = False
        self.send("Page.navigate", {"url": url})
        deadline = time.monotonic() + timeout
        while not self.load_fired:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not finish loading in {timeout} s")
            self.browser.pump(0.2)

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"{expression!r} stayed false for {timeout} s")
            self.browser.pump(0.2)

    def screenshot(self, path: Path, width: int = 1400) -> Path:
        """The whole page (not just the viewport) as a PNG."""
        metrics = self.send("Page.getLayoutMetrics")
        height = int(metrics["cssContentSize"]["height"])
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": min(height, 16000), "deviceScaleFactor": 1,
                   "mobile": False})
        shot = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True},
                         timeout=60)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def on_event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Network.requestWillBeSent":
            self.requests.append(params["request"]["url"])
        elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
            self.console_errors.append(text)
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            self.console_errors.append(
                details.get("exception", {}).get("description") or details.get("text", ""))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            self.console_errors.append(f"{params['entry']['source']}: {params['entry']['text']}")
        elif method == "Page.loadEventFired":
            self.load_fired = True


class Chromium:
    """A headless Chromium with a fresh profile, stopped (by its own pid) on exit."""

    def __init__(self, width: int = 1400, height: int = 900) -> None:
        self.width, self.height = width, height
        self._ids = itertools.count(1)
        self._pages: dict[str, Page] = {}
        self._replies: dict[int, dict[str, Any]] = {}

    def __enter__(self) -> Chromium:
        from websockets.sync.client import connect

        self._stack = contextlib.ExitStack()
        if not Path(CHROMIUM).exists():
            raise FileNotFoundError(f"{CHROMIUM} is missing: apt-get install chromium")
        self._profile = Path(tempfile.mkdtemp(prefix="registry-chromium-"))
        self._proc = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={self._profile}",
             f"--window-size={self.width},{self.height}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        port_file = self._profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self._stop()
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.05)
        port, path = port_file.read_text().splitlines()[:2]
        self._ws = self._stack.enter_context(
            connect(f"ws://127.0.0.1:{port}{path}", max_size=None, open_timeout=30))
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            self._stack.close()
        finally:
            self._stop()

    def _stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        shutil.rmtree(self._profile, ignore_errors=True)

    def call(self, method: str, params: dict[str, Any] | None = None, *,
             session: str | None = None, timeout: float = 30) -> Any:
        message_id = next(self._ids)
        message: dict[str, Any] = {"id": message_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        self._ws.send(json.dumps(message))
        deadline = time.monotonic() + timeout
        while message_id not in self._replies:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no answer to {method} in {timeout} s")
            self.pump(deadline - time.monotonic())
        reply = self._replies.pop(message_id)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def pump(self, timeout: float) -> None:
        """Read one message (a reply or an event) if one arrives within `timeout`."""
        try:
            raw = self._ws.recv(timeout=max(timeout, 0.01))
        except TimeoutError:
            return
        message = json.loads(raw)
        if "id" in message:
            self._replies[message["id"]] = message
        elif message.get("sessionId") in self._pages:
            self._pages[message["sessionId"]].on_event(message["method"], message["params"])

    def new_page(self) -> Page:
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"]
        page = Page(self, session)
        self._pages[session] = page
        for domain in ("Page", "Runtime", "Network", "Log"):
            page.send(f"{domain}.enable")
        page.send("Emulation.setDeviceMetricsOverride",
                  {"width": self.width, "height": self.height, "deviceScaleFactor": 1,
                   "mobile": False})
        return page
