"""The dashboard in a real headless Chromium (Debian's), driven over the DevTools protocol.

The app runs on 127.0.0.1 in a werkzeug server thread (single-threaded, HTTP/1.0: no keep-alive
threads to leak); Chromium loads the page; the test reads the DOM and the console through CDP and
saves a full-page screenshot to ``artifacts/dashboard.png``.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websocket
from werkzeug.serving import BaseWSGIServer, make_server

from backend.api.app import create_app
from tests.conftest import ADMIN, ADMIN_TOKEN
from tests.diagnosis_project import LS_PUBLIC, PLANTED, PROJECT, build
from tests.processes import stop_process

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--remote-debugging-port=0",
    "--window-size=1280,900",
)


@pytest.fixture(autouse=True)
def _chromium_installed() -> None:
    """The browser test never skips: without Chromium it fails and says how to install it."""
    assert shutil.which(CHROMIUM), (
        "needs Debian's chromium: apt-get install chromium (make test does)"
    )


class Page:
    """One page target over a CDP websocket: commands answered in order, events kept."""

    def __init__(self, ws_url: str) -> None:
        self.ws = websocket.create_connection(ws_url, timeout=20, suppress_origin=True)
        self.events: list[dict[str, Any]] = []
        self._next = 0

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        self._next += 1
        self.ws.send(json.dumps({"id": self._next, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self._next:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result
            self.events.append(message)

    def wait_for(self, event: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == event for e in self.events):
            if time.monotonic() > deadline:
                raise TimeoutError(event)
            self.events.append(json.loads(self.ws.recv()))

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and failed loads the page logged."""
        found = []
        for e in self.events:
            method, params = e.get("method"), e.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") == "error":
                found.append(str(params.get("args")))
            elif method == "Runtime.exceptionThrown":
                found.append(str(params.get("exceptionDetails")))
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                found.append(params["entry"]["text"])
        return found


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    project = build(tmp_path)
    app = create_app(project.settings, store=project.store, upgrade=False)
    httpd: BaseWSGIServer = make_server("127.0.0.1", 0, app, threaded=False)
    thread = threading.Thread(target=httpd.serve_forever, name="dashboard-server")
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()
    thread.join(timeout=10)
    httpd.server_close()
    project.store.dispose()


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Page]:
    profile = tmp_path / "chromium-profile"
    proc = subprocess.Popen(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        port = _devtools_port(proc)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as resp:
            targets = json.load(resp)
        target = next(t for t in targets if t["type"] == "page")
        page = Page(target["webSocketDebuggerUrl"])
        yield page
        page.ws.close()
    finally:
        stop_process(proc)


def _devtools_port(proc: subprocess.Popen[str]) -> int:
    """Chromium prints 'DevTools listening on ws://127.0.0.1:PORT/...' on stderr once ready."""
    assert proc.stderr is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        found = re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line)
        if found:
            return int(found.group(1))
        if not line and proc.poll() is not None:
            break
    raise RuntimeError("chromium did not start its DevTools endpoint")


CELLS_JS = """JSON.stringify(Array.from(document.querySelectorAll('#confusion .cm-cell')).map(
  g => [+g.dataset.true, +g.dataset.pred, +g.querySelector('text').textContent]))"""
LINKS_JS = """JSON.stringify(Array.from(document.querySelectorAll('table.label-errors a.ls-link'))
  .map(a => [+a.dataset.task, a.href]))"""
SECTIONS_JS = """JSON.stringify(Array.from(document.querySelectorAll('section')).map(
  s => ({id: s.id, how: (s.querySelector('p.how') || {}).textContent || ''})))"""
AUC_JS = """JSON.stringify(Array.from(document.querySelectorAll('table.class-curves tbody tr')).map(
  r => [r.dataset.class, +r.querySelector('td.auc').textContent]))"""
DUPLICATES_JS = "document.querySelectorAll('table.duplicates tr[data-conflicting=\"1\"]').length"
PAIRS_JS = "document.querySelectorAll('table.confused-pairs tbody tr').length"
INSIDE_JS = """(() => { const svg = document.querySelector('#curve').getBoundingClientRect();
  return Array.from(document.querySelectorAll('#curve text.series-name')).every(t => {
    const b = t.getBoundingClientRect();
    return b.left >= svg.left && b.right <= svg.right && b.top >= svg.top && b.bottom <= svg.bottom;
  }); })()"""
MAP_NAMES_JS = """(() => { const svg = document.querySelector('#map').getBoundingClientRect();
  const boxes = Array.from(document.querySelectorAll('#map text.halo')).map(
    t => t.getBoundingClientRect());
  const apart = (a, b) => a.right <= b.left || b.right <= a.left || a.bottom <= b.top
    || b.bottom <= a.top;
  return boxes.length > 0 && boxes.every((a, i) => a.left >= svg.left && a.right <= svg.right
    && a.top >= svg.top && a.bottom <= svg.bottom && boxes.slice(i + 1).every(b => apart(a, b)));
})()"""
IMAGES_JS = "Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"


def test_dashboard_in_chromium(server: str, page: Page) -> None:
    diagnosis = urllib.request.Request(f"{server}/api/projects/{PROJECT}/diagnosis", headers=ADMIN)
    api = json.load(urllib.request.urlopen(diagnosis))
    for domain in ("Page", "Runtime", "Log"):
        page.send(f"{domain}.enable")
    _viewport(page, 8000)  # tall enough that every lazy thumbnail is in view and loads
    # The admin's browser logs in with basic auth: the admin token's name and the token.
    login = server.replace("http://", f"http://tests:{ADMIN_TOKEN}@")
    page.send("Page.navigate", url=f"{login}/dashboard/{PROJECT}")
    page.wait_for("Page.loadEventFired")
    deadline = time.monotonic() + 10
    while not page.evaluate(IMAGES_JS) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert page.evaluate(IMAGES_JS), "thumbnails did not load"
    assert page.errors() == []
    cells = {(i, j): n for i, j, n in json.loads(page.evaluate(CELLS_JS))}
    counts = api["classification"]["confusion"]["counts"]
    assert cells == {(i, j): c for i, row in enumerate(counts) for j, c in enumerate(row)}
    links = dict(json.loads(page.evaluate(LINKS_JS)))
    assert set(PLANTED) <= set(links)
    for task, href in links.items():
        assert href == f"{LS_PUBLIC}/projects/{PROJECT}/data?task={task}"
    sections = json.loads(page.evaluate(SECTIONS_JS))
    assert {s["id"] for s in sections} >= {
        "class-curves",
        "confused-pairs",
        "curve",
        "duplicates",
        "image-quality",
        "slices",
    }
    conflicting = page.evaluate(DUPLICATES_JS)
    assert conflicting == api["duplicates"]["n_conflicting"] > 0
    assert all(s["how"] for s in sections), "every section says how to read it"
    aucs = dict(json.loads(page.evaluate(AUC_JS)))
    assert aucs == {c["name"]: pytest.approx(c["roc_auc"], abs=1e-3) for c in api["class_curves"]}
    assert page.evaluate(PAIRS_JS) == len(api["confused_pairs"])
    assert page.evaluate(INSIDE_JS), "a learning-curve name leaves its plot"
    assert page.evaluate(MAP_NAMES_JS), "class names on the map overlap or leave it"
    _screenshot(page, ARTIFACTS / "dashboard.png")


def _viewport(page: Page, height: int) -> None:
    page.send(
        "Emulation.setDeviceMetricsOverride",
        width=1280,
        height=height,
        deviceScaleFactor=1,
        mobile=False,
    )


def _screenshot(page: Page, path: Path) -> None:
    _viewport(page, 900)  # measure the page itself, not the tall viewport
    _viewport(page, int(page.evaluate("document.documentElement.scrollHeight")))
    shot = page.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(shot["data"]))
    assert path.stat().st_size > 10_000
