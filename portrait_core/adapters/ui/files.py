"""File inputs that take only what was uploaded, and the uploads let go of once used.

Gradio 3's gr.File takes `{"name": <path>, "is_file": true}` from the client and copies that path, so any
file the server can read (`/etc/passwd`, another identity's photos, a job file) could be "uploaded" by naming
it. `UploadedFiles` takes a named path only when it is a file that Gradio's own `/upload` route wrote: one
level below Gradio's upload folder, in a folder of 40 hex digits (a random token per upload, so a client
cannot name another client's upload without having seen it). Anything else is refused naming the input.
Base64 data is still taken; it is written to a private temporary file.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from portrait_core.log import get_logger

log = get_logger("ui")
_UPLOAD_FOLDER_NAME = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class UploadedFile:
    """What a handler gets for one file: where it is on the server, and the name the user gave it."""

    name: str
    orig_name: str


class UploadRefused(gr.Error):
    """A file input named a file that was not uploaded, or is no longer there."""


def gradio_upload_folders(component_folder: str | None = None) -> list[Path]:
    """Where Gradio puts uploads: its temp folder as Gradio computes it (GRADIO_TEMP_DIR, else <tmp>/gradio),
    and the folder the component was created with, when that differs."""
    folders = [Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio")]
    if component_folder:
        folders.append(Path(component_folder))
    return [folder.resolve() for folder in folders]


def uploaded_path(name: object, folders: list[Path], label: str) -> Path:
    """The file `name` when Gradio's upload route wrote it (see the module text); UploadRefused otherwise."""
    text = name if isinstance(name, str) else ""
    shown = Path(text).name or "(no name)"
    path = Path(text)
    if not path.is_absolute() or path.is_symlink():
        raise _refusal(label, shown, text)
    resolved = path.resolve()
    if resolved.parent.parent not in folders or not _UPLOAD_FOLDER_NAME.fullmatch(resolved.parent.name):
        raise _refusal(label, shown, text)
    if not resolved.is_file():
        raise UploadRefused(f"{label}: {shown} is no longer on the server (an upload is used once); "
                            "upload it again")
    return resolved


def _refusal(label: str, shown: str, text: str) -> UploadRefused:
    log.warning("refused a %s value naming %r: not a file this page uploaded", label, text[:200])
    return UploadRefused(f"{label}: {shown} was not uploaded from this page; upload the file instead")


class UploadedFiles(gr.File):
    """gr.File that accepts only uploads (see the module text). Handlers get UploadedFile values (or a list)."""

    is_template = True  # shown by the page as Gradio's own "file" component

    def preprocess(self, x):
        if x is None:
            return None
        items = x if isinstance(x, list) else [x]
        files = [self._receive(item) for item in items]
        return files if self.file_count != "single" else (files[0] if files else None)

    def _receive(self, item) -> UploadedFile:
        label = self.label or "Files"
        if not isinstance(item, dict):
            raise UploadRefused(f"{label}: not a file upload")
        given = Path(str(item.get("orig_name") or item.get("name") or "file")).name
        if item.get("is_file"):
            path = uploaded_path(item.get("name"), gradio_upload_folders(self.DEFAULT_TEMP_DIR), label)
            return UploadedFile(str(path), given)
        return UploadedFile(str(self._save_data(item.get("data"), label, given)), given)

    def _save_data(self, data, label: str, given: str) -> Path:
        text = data if isinstance(data, str) else ""
        try:
            content = base64.b64decode(text.split(",", 1)[-1], validate=True)
        except (binascii.Error, ValueError):
            raise UploadRefused(f"{label}: {given} is neither an upload nor base64 data") from None
        folder = Path(tempfile.mkdtemp(prefix="portrait-upload-"))  # 0700, this request's own
        path = folder / (re.sub(r"[^A-Za-z0-9._-]+", "_", given).lstrip(".") or "file")
        path.write_bytes(content)
        return path


def discard_uploads(files) -> None:
    """Delete uploaded files once their content is kept elsewhere (a training's photos are copied into the
    identity); Gradio would otherwise leave them in its temp folder for good. Only UploadedFile values (what
    an UploadedFiles input accepted as an upload) are deleted, with their upload's own folder when empty."""
    for item in [] if files is None else files if isinstance(files, list | tuple) else [files]:
        if not isinstance(item, UploadedFile):
            continue
        path = Path(item.name)
        try:
            path.unlink(missing_ok=True)
            path.parent.rmdir()  # left alone while it holds anything else
        except OSError:
            pass
