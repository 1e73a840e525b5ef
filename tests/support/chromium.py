"""A real headless Chromium (Debian's ``chromium`` package) driven over the DevTools protocol:
open a page, record every network request it makes, read its images, take a screenshot.

Nothing here fakes the browser: the page is loaded and laid out by Chromium itself, so an image
that does not decode has ``naturalWidth`` 0, and a stylesheet, font or script fetched from
anywhere shows up as a request.
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from websockets.sync.client import ClientConnection, connect

PACKAGE = "chromium"


def chromium_binary() -> str:
    """The browser, or an error naming the Debian package that provides it."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        raise RuntimeError(
            f"headless Chromium is needed for this test: apt-get install -y {PACKAGE}"
        )
    return found


@dataclass(frozen=True)
class PageVisit:
    requests: list[str]  # every URL the page asked for, the page itself included
    resources: list[str]  # the page's own resource timing entries (data: URLs are not in it)
    images: list[dict[str, Any]]
    screenshot: bytes
    title: str


class _Session:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws, self.ids, self.events = ws, itertools.count(1), []

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        n = next(self.ids)
        self.ws.send(json.dumps({"id": n, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=60))
            if message.get("id") == n:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return dict(message.get("result", {}))
            self.events.append(message)

    def wait_for(self, method: str, *, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while not any(e.get("method") == method for e in self.events):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {method} within {timeout_s} s")
            self.events.append(json.loads(self.ws.recv(timeout=remaining)))

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")


@contextmanager
def _browser() -> Iterator[str]:
    """A headless Chromium on a loopback DevTools port; yields the port's HTTP base URL."""
    profile = Path(tempfile.mkdtemp(prefix="chromium-"))
    args = [
        chromium_binary(),
        "--headless=new",
        "--no-sandbox",  # tests run as root in CI containers
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        "--remote-debugging-address=127.0.0.1",
        "--remote-debugging-port=0",
        f"--user-data-dir={profile}",
        "about:blank",
    ]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield f"http://127.0.0.1:{_devtools_port(profile, process)}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        shutil.rmtree(profile, ignore_errors=True)


def _devtools_port(profile: Path, process: subprocess.Popen[bytes]) -> int:
    marker = profile / "DevToolsActivePort"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"chromium exited with {process.returncode}")
        if marker.is_file() and marker.read_text().strip():
            return int(marker.read_text().split()[0])
        time.sleep(0.1)
    raise TimeoutError("chromium did not open its DevTools port")


def visit(page: Path, *, width: int = 1200) -> PageVisit:
    """Load ``page`` (a local file) in headless Chromium and report what it did."""
    with _browser() as devtools:
        target = next(t for t in httpx.get(f"{devtools}/json/list").json() if t["type"] == "page")
        with connect(target["webSocketDebuggerUrl"], max_size=None) as ws:
            session = _Session(ws)
            session.call("Network.enable")
            session.call("Page.enable")
            session.call(
                "Emulation.setDeviceMetricsOverride",
                width=width,
                height=900,
                deviceScaleFactor=1,
                mobile=False,
            )
            session.call("Page.navigate", url=page.resolve().as_uri())
            session.wait_for("Page.loadEventFired")
            return _inspect(session)


def _inspect(session: _Session) -> PageVisit:
    images = session.evaluate(
        "JSON.stringify([...document.images].map(i => ({figure: i.dataset.figure, "
        "width: i.naturalWidth, height: i.naturalHeight, complete: i.complete, "
        "src: i.currentSrc.slice(0, 32)})))"
    )
    resources = session.evaluate(
        "JSON.stringify(performance.getEntriesByType('resource').map(e => e.name))"
    )
    height = int(session.evaluate("document.documentElement.scrollHeight"))
    shot = session.call(
        "Page.captureScreenshot",
        format="png",
        captureBeyondViewport=True,
        clip={"x": 0, "y": 0, "width": 1200, "height": height, "scale": 1},
    )
    requests = [
        e["params"]["request"]["url"]
        for e in session.events
        if e.get("method") == "Network.requestWillBeSent"
    ]
    return PageVisit(
        requests=requests,
        resources=json.loads(resources),
        images=json.loads(images),
        screenshot=base64.b64decode(shot["data"]),
        title=str(session.evaluate("document.title")),
    )
