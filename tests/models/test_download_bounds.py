"""Downloads are bounded: no more bytes than registered, an overall deadline, redirects to http(s) only.

Against a real HTTP server on loopback that misbehaves on purpose.
"""

from __future__ import annotations

import hashlib
import http.server
import threading
import time

import pytest

from portrait_core.errors import ModelDownloadError
from portrait_core.models.registry import ModelFile, ModelRegistry, fetch_url_to_file

SIZE = 100_000  # the registered size
PAYLOAD = bytes(range(256)) * (SIZE // 256) + bytes(SIZE % 256)
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Misbehaving(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        sent = self.server.sent
        sent[self.path] = 0
        try:
            if self.path == "/good.bin":
                self._send(PAYLOAD)
            elif self.path == "/announces-too-much.bin":  # says 60 MB up front
                self.send_response(200)
                self.send_header("Content-Length", str(60 * 1024 * 1024))
                self.end_headers()
                self._stream(sent, 60 * 1024 * 1024)
            elif self.path == "/endless.bin":  # no Content-Length, and it never stops
                self.send_response(200)
                self.end_headers()
                self._stream(sent, 10 ** 12)
            elif self.path == "/drip.bin":  # one byte at a time, each well inside the socket timeout
                self.send_response(200)
                self.send_header("Content-Length", str(SIZE))
                self.end_headers()
                for index in range(SIZE):
                    self.wfile.write(PAYLOAD[index : index + 1])
                    self.wfile.flush()
                    sent[self.path] += 1
                    time.sleep(0.02)
            elif self.path.startswith("/redirect-to/"):
                self.send_response(302)
                self.send_header("Location", self.path[len("/redirect-to/"):].replace("|", "://", 1))
                self.end_headers()
            else:
                self.send_error(404)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up: that is what these tests want

    def _send(self, body: bytes):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _stream(self, sent: dict, total: int):
        block = b"\0" * 65536
        while sent[self.path] < total:
            self.wfile.write(block)
            sent[self.path] += len(block)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Misbehaving)
    httpd.daemon_threads = True
    httpd.sent = {}
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def url(server, path: str) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}{path}"


def fetch(server, path: str, tmp_path, **kwargs):
    return fetch_url_to_file(url(server, path), tmp_path / "weights.bin", sha256=PAYLOAD_SHA, size=SIZE,
                             label="demo/weights", **kwargs)


def test_a_content_length_over_the_registered_size_is_refused_before_the_body(server, tmp_path):
    with pytest.raises(ModelDownloadError, match=f"more than the registered {SIZE} bytes") as refused:
        fetch(server, "/announces-too-much.bin", tmp_path)
    assert "demo/weights" in str(refused.value) and "nothing was saved" in str(refused.value)
    assert list(tmp_path.iterdir()) == []


def test_a_body_without_a_length_is_cut_off_once_it_passes_the_registered_size(server, tmp_path):
    with pytest.raises(ModelDownloadError, match=f"more than the registered {SIZE} bytes"):
        fetch(server, "/endless.bin", tmp_path)
    assert list(tmp_path.iterdir()) == []  # no partial file either


def test_a_server_that_drips_bytes_is_stopped_by_the_overall_deadline(server, tmp_path):
    # Each byte comes well inside the 5 s socket timeout; only the 1 s deadline can end this (it would take 30 min).
    with pytest.raises(ModelDownloadError, match="1 s deadline"):
        fetch(server, "/drip.bin", tmp_path, timeout=5, deadline=1)
    assert server.sent["/drip.bin"] < SIZE
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("target", ["ftp|127.0.0.1/weights.bin", "file|/etc/passwd", "gopher|127.0.0.1/x"])
def test_a_redirect_to_another_scheme_is_refused_naming_it(server, tmp_path, target):
    scheme = target.split("|")[0]
    with pytest.raises(ModelDownloadError, match=f"redirect to a {scheme} URL .* refused: only http") as refused:
        fetch(server, f"/redirect-to/{target}", tmp_path)
    assert "demo/weights" in str(refused.value)
    assert list(tmp_path.iterdir()) == []


def test_a_redirect_to_http_is_followed_and_the_registry_passes_its_bounds_on(server, tmp_path):
    target = url(server, "/good.bin").replace("://", "|", 1)
    model = ModelFile(name="demo/weights", file="demo/weights.bin", sha256=PAYLOAD_SHA, size=SIZE,
                      url=url(server, f"/redirect-to/{target}"))
    path = ModelRegistry([model], models_dir=tmp_path, offline=False, deadline=30).resolve("demo/weights")
    assert path.read_bytes() == PAYLOAD
    slow = ModelFile(name="demo/slow", file="demo/slow.bin", sha256=PAYLOAD_SHA, size=SIZE,
                     url=url(server, "/drip.bin"))
    with pytest.raises(ModelDownloadError, match="deadline"):
        ModelRegistry([slow], models_dir=tmp_path, offline=False, timeout=5, deadline=0.5).resolve("demo/slow")
