"""A live page for tests: the app on a loopback port (`served`) and headless Chromium driven through
chromedriver's W3C WebDriver API (`Browser`, the `browser` fixture) - test helpers, not a test module."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import threading
import time

import pytest

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
# Nothing may leave this machine: the Gradio page links fonts and a script on the internet, so every host
# name but the local server's resolves to nothing, and Chromium's own background traffic is off.
CHROMIUM_ARGUMENTS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                      "--window-size=1400,2200", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                      "--disable-background-networking", "--disable-component-update", "--disable-sync",
                      "--disable-default-apps", "--no-first-run", "--disable-domain-reliability"]
W3C_ELEMENT = "element-6066-11e4-a52e-4f735466cecf"
# Gradio 3 renders into <gradio-app> (with or without a shadow root); the WebUI's gradioApp() does the same.
QUERY = ("const app = document.querySelector('gradio-app');"
         "const root = app && app.shadowRoot ? app.shadowRoot : document;")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(condition, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Browser:
    """Headless Chromium through chromedriver's W3C WebDriver HTTP API (httpx only: no extra package)."""

    def __init__(self, driver_url: str):
        import httpx

        self.http = httpx.Client(base_url=driver_url, timeout=60)
        wait_until(self._ready, 20, "chromedriver")
        capabilities = {"browserName": "chrome", "goog:chromeOptions": {"binary": CHROMIUM,
                                                                       "args": CHROMIUM_ARGUMENTS}}
        session = self.http.post("/session", json={"capabilities": {"alwaysMatch": capabilities}}).json()
        self.session = f"/session/{session['value']['sessionId']}"

    def _ready(self) -> bool:
        import httpx

        try:
            return self.http.get("/status").json()["value"]["ready"]
        except httpx.HTTPError:
            return False

    def close(self) -> None:
        self.http.delete(self.session)
        self.http.close()

    def command(self, path: str, body: dict | None = None):
        response = self.http.post(self.session + path, json=body or {})
        value = response.json()["value"]
        assert response.status_code == 200, value
        return value

    def open(self, url: str) -> None:
        self.command("/url", {"url": url})

    def script(self, body: str, *arguments):
        return self.command("/execute/sync", {"script": QUERY + body, "args": list(arguments)})

    def text(self, css: str) -> str:
        return self.script("const e = root.querySelector(arguments[0]); return e ? e.innerText : '';", css) or ""

    def click(self, css: str) -> None:
        assert self.script("const e = root.querySelector(arguments[0]); if (e) e.click(); return !!e;", css), css

    def click_tab(self, label: str) -> None:
        found = self.script("const b = [...root.querySelectorAll('button')].find(b => b.innerText.trim() === "
                            "arguments[0]); if (b) b.click(); return !!b;", label)
        assert found, f"no tab button {label!r}"

    def type(self, css: str, text: str, *, clear: bool = False) -> None:
        element = self.script("return root.querySelector(arguments[0]);", css)
        if clear:
            self.command(f"/element/{element[W3C_ELEMENT]}/clear")
        self.command(f"/element/{element[W3C_ELEMENT]}/value", {"text": text})

    def wait_for_text(self, css: str, expected: str, timeout: float = 30) -> str:
        return wait_until(lambda: expected in self.text(css) and self.text(css), timeout,
                          f"{expected!r} in {css} (it shows {self.text(css)[:300]!r})")


@contextlib.contextmanager
def served(app):
    """`app` on a free 127.0.0.1 port, in a thread, for the duration of the block."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="portrait-ui-test-server", daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, 30, "the test server")
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@pytest.fixture
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("no headless browser: apt-get install chromium chromium-driver")
    port = free_port()
    driver = subprocess.Popen([CHROMEDRIVER, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        chromium = Browser(f"http://127.0.0.1:{port}")
        try:
            yield chromium
        finally:
            chromium.close()
    finally:
        driver.terminate()
        driver.wait(timeout=15)
