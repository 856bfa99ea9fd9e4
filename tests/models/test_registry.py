"""The model registry: local lookup, offline refusal, and downloads from a real HTTP server on loopback."""

from __future__ import annotations

import hashlib
import http.server
import threading
from pathlib import Path

import pytest

from portrait_core.errors import ModelDownloadError, ModelUnavailableError
from portrait_core.models.registry import (
    BUILTIN_MODELS,
    ModelFile,
    ModelRegistry,
    default_registry,
    fetch_url_to_file,
    package_file,
    sha256_file,
)

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.requests.append(self.path)
        if self.path == "/good.bin":
            self._send(PAYLOAD)
        elif self.path == "/corrupt.bin":
            self._send(PAYLOAD[:-1] + b"X")
        elif self.path == "/interrupted.bin":
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD[: len(PAYLOAD) // 3])
            self.wfile.flush()
            self.close_connection = True  # the server goes away mid-body
        else:
            self.send_error(404, "not here")

    def _send(self, body: bytes):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.requests = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _url(server, path):
    return f"http://127.0.0.1:{server.server_address[1]}{path}"


def _registry(server, models_dir, path="/good.bin", **kwargs):
    model = ModelFile(name="demo/weights", file="demo/weights.bin", sha256=PAYLOAD_SHA, size=len(PAYLOAD),
                      url=_url(server, path), description="test weights")
    return ModelRegistry([model], models_dir=models_dir, **kwargs)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file())


def test_downloads_verifies_and_places_the_file(server, tmp_path):
    registry = _registry(server, tmp_path, offline=False)
    path = registry.resolve("demo/weights")
    assert path == tmp_path / "demo" / "weights.bin"
    assert path.read_bytes() == PAYLOAD
    assert _leftovers(tmp_path) == ["weights.bin"]


def test_a_local_copy_is_used_without_any_request(server, tmp_path):
    target = tmp_path / "demo" / "weights.bin"
    target.parent.mkdir(parents=True)
    target.write_bytes(PAYLOAD)
    before = len(server.requests)
    assert _registry(server, tmp_path, offline=False).resolve("demo/weights") == target
    assert len(server.requests) == before


def test_a_corrupt_download_is_discarded_with_a_clear_error(server, tmp_path):
    registry = _registry(server, tmp_path, path="/corrupt.bin", offline=False)
    with pytest.raises(ModelDownloadError) as raised:
        registry.resolve("demo/weights")
    message = str(raised.value)
    assert "SHA-256" in message and PAYLOAD_SHA in message and "corrupt.bin" in message
    assert not (tmp_path / "demo" / "weights.bin").exists()
    assert _leftovers(tmp_path) == []


def test_an_interrupted_download_leaves_nothing_at_the_final_path(server, tmp_path):
    registry = _registry(server, tmp_path, path="/interrupted.bin", offline=False)
    with pytest.raises(ModelDownloadError, match="interrupted.bin") as raised:
        registry.resolve("demo/weights")
    assert "nothing was saved" in str(raised.value)
    assert not (tmp_path / "demo" / "weights.bin").exists()
    assert _leftovers(tmp_path) == []


def test_a_missing_url_is_reported_with_the_http_status(server, tmp_path):
    with pytest.raises(ModelDownloadError, match="HTTP 404"):
        _registry(server, tmp_path, path="/nope.bin", offline=False).resolve("demo/weights")


def test_offline_mode_refuses_and_says_what_to_put_where(server, tmp_path):
    before = len(server.requests)
    with pytest.raises(ModelUnavailableError) as raised:
        _registry(server, tmp_path, offline=True).resolve("demo/weights")
    message = str(raised.value)
    assert "offline" in message and "demo/weights.bin" in message
    assert str(tmp_path / "demo" / "weights.bin") in message and _url(server, "/good.bin") in message
    assert len(server.requests) == before


def test_offline_follows_the_settings_when_not_given(server, tmp_path, monkeypatch):
    from portrait_core import config

    monkeypatch.setenv(config.ENV_OFFLINE, "1")
    config.reset()
    try:
        with pytest.raises(ModelUnavailableError, match="offline"):
            _registry(server, tmp_path).resolve("demo/weights")
    finally:
        monkeypatch.delenv(config.ENV_OFFLINE)
        config.reset()


def test_a_truncated_local_copy_is_ignored_and_replaced_by_a_verified_download(server, tmp_path):
    target = tmp_path / "demo" / "weights.bin"
    target.parent.mkdir(parents=True)
    target.write_bytes(PAYLOAD[:1000])
    registry = _registry(server, tmp_path, offline=False)
    assert registry.find("demo/weights") is None
    assert registry.resolve("demo/weights").read_bytes() == PAYLOAD


def test_verify_catches_a_same_size_file_with_other_bytes(server, tmp_path):
    target = tmp_path / "demo" / "weights.bin"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"\0" * len(PAYLOAD))
    registry = _registry(server, tmp_path, offline=True)
    assert registry.find("demo/weights") == target  # the cheap check only looks at the size
    with pytest.raises(ModelUnavailableError, match="does not match"):
        registry.verify("demo/weights")


def test_files_without_a_pinned_digest_are_never_downloaded(server, tmp_path):
    model = ModelFile(name="demo/unpinned", file="demo/unpinned.bin", url=_url(server, "/good.bin"))
    before = len(server.requests)
    with pytest.raises(ModelUnavailableError, match="never fetched automatically"):
        ModelRegistry([model], models_dir=tmp_path, offline=False).resolve("demo/unpinned")
    assert len(server.requests) == before


def test_other_tools_folders_are_searched_too(tmp_path):
    model = ModelFile(name="insightface/buffalo_l/det_10g", file="insightface/buffalo_l/det_10g.onnx",
                      also_at=("buffalo_l/det_10g.onnx",))
    elsewhere = tmp_path / "dot-insightface" / "models"
    (elsewhere / "buffalo_l").mkdir(parents=True)
    (elsewhere / "buffalo_l" / "det_10g.onnx").write_bytes(b"weights")
    registry = ModelRegistry([model], models_dir=tmp_path / "ours", extra_dirs=[elsewhere], offline=True)
    assert registry.resolve("insightface/buffalo_l/det_10g") == elsewhere / "buffalo_l" / "det_10g.onnx"
    assert registry.expected_path("insightface/buffalo_l/det_10g") == \
        tmp_path / "ours" / "insightface" / "buffalo_l" / "det_10g.onnx"


def test_only_http_urls_are_fetched(tmp_path):
    with pytest.raises(ModelDownloadError, match="only http"):
        fetch_url_to_file("file:///etc/passwd", tmp_path / "x", sha256=PAYLOAD_SHA)


def test_models_shipped_in_packages_are_found_without_importing_them():
    path = package_file("face_recognition_models", "models/dlib_face_recognition_resnet_model_v1.dat")
    assert path.is_file() and path.stat().st_size > 1_000_000
    with pytest.raises(ModelUnavailableError, match="pip install no_such_package"):
        package_file("no_such_package", "models/x.dat")


def test_builtin_entries_with_a_url_pin_their_digest_and_size():
    downloadable = [m for m in BUILTIN_MODELS if m.url]
    assert {m.name for m in downloadable} == {"insightface/buffalo_l/det_10g", "insightface/buffalo_l/w600k_r50",
                                              "restore/codeformer", "restore/gfpgan"}
    for model in downloadable:
        assert model.url.startswith("https://") and len(model.sha256) == 64 and model.size > 1_000_000
    assert default_registry().names() == sorted(m.name for m in BUILTIN_MODELS)


def test_sha256_file_reads_the_whole_file(tmp_path):
    path = tmp_path / "big.bin"
    path.write_bytes(PAYLOAD * 3)
    assert sha256_file(path) == hashlib.sha256(PAYLOAD * 3).hexdigest()
