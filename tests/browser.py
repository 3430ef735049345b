"""A real headless Chromium (Debian's `chromium`) driven over the Chrome DevTools Protocol
(websocket-client): open pages, fill and submit forms, click, read the page, take screenshots.
A fresh profile per browser; the process is always stopped again."""

from __future__ import annotations

import base64
import itertools
import json
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import requests
import websocket

from tests.peers import free_port
from tests.webviewer import CHROMIUM, CHROMIUM_FLAGS


class Browser:
    """`with Browser() as b: b.open(url); b.fill("#name", "x"); b.submit("#login")`."""

    def __init__(self, width: int = 1280, height: int = 1000) -> None:
        self.port = free_port()
        self.size = (width, height)
        self._profile = tempfile.TemporaryDirectory(prefix="chromium-cdp-")
        self._ids = itertools.count(1)
        self._proc: subprocess.Popen[bytes] | None = None
        self._ws: websocket.WebSocket | None = None

    def __enter__(self) -> Self:
        self._proc = subprocess.Popen(
            [
                str(CHROMIUM),
                *CHROMIUM_FLAGS,
                f"--user-data-dir={self._profile.name}",
                f"--remote-debugging-port={self.port}",
                f"--window-size={self.size[0]},{self.size[1]}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                pages = requests.get(f"http://127.0.0.1:{self.port}/json", timeout=1).json()
                target = next(p for p in pages if p.get("type") == "page")
                break
            except (requests.RequestException, StopIteration, ValueError):
                if time.monotonic() > deadline:
                    raise TimeoutError("chromium's DevTools endpoint did not come up") from None
                time.sleep(0.1)
        self._ws = websocket.create_connection(
            target["webSocketDebuggerUrl"], timeout=30, suppress_origin=True
        )
        self.call("Page.enable")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._ws is not None:
            self._ws.close()
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._profile.cleanup()

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command and its result (events in between are skipped)."""
        assert self._ws is not None
        number = next(self._ids)
        self._ws.send(json.dumps({"id": number, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv())
            if message.get("id") == number:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return dict(message.get("result", {}))

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(self, url: str) -> None:
        """Navigate and wait for the page to load."""
        self._navigating(lambda: self.call("Page.navigate", url=url))

    def fill(self, selector: str, value: str) -> None:
        self.evaluate(f"document.querySelector({json.dumps(selector)}).value = {json.dumps(value)}")

    def click(self, selector: str) -> None:
        """Click an element that loads a new page (a form's button, a link) and wait for it."""
        self._navigating(
            lambda: self.evaluate(f"document.querySelector({json.dumps(selector)}).click()")
        )

    def text(self, selector: str = "body") -> str:
        return str(self.evaluate(f"document.querySelector({json.dumps(selector)}).innerText"))

    @property
    def url(self) -> str:
        return str(self.evaluate("location.href"))

    def screenshot(self, path: Path) -> None:
        """A PNG of the whole page (its full height)."""
        height = int(self.evaluate("document.documentElement.scrollHeight"))
        self.call(
            "Emulation.setDeviceMetricsOverride",
            width=self.size[0],
            height=max(height, self.size[1]),
            deviceScaleFactor=1,
            mobile=False,
        )
        shot = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        self.call("Emulation.clearDeviceMetricsOverride")

    def _navigating(self, action: Any, timeout: float = 30.0) -> None:
        self.evaluate("window.__dicom_node_old_page = true")
        action()
        deadline = time.monotonic() + timeout
        while True:
            time.sleep(0.05)
            try:
                fresh = self.evaluate("window.__dicom_node_old_page === undefined")
                loaded = self.evaluate("document.readyState") == "complete"
            except RuntimeError:  # the context went away mid-navigation
                fresh, loaded = False, False
            if fresh and loaded:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the page did not load (at {self.url})")
