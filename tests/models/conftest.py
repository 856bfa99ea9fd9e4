"""Fixtures shared by the model tests."""

from __future__ import annotations

import pytest
import safetensors
import safetensors.torch


class _HeaderOnlySlice:
    """A tensor slice that tells its shape and dtype but refuses to read its bytes."""

    def __init__(self, real):
        self._real = real

    def get_shape(self):
        return self._real.get_shape()

    def get_dtype(self):
        return self._real.get_dtype()

    def __getitem__(self, _index):
        raise AssertionError("read tensor bytes where only the header was needed")


class _HeaderOnlyReader:
    """`safetensors.safe_open` that reads names, shapes and metadata, and fails the test on any tensor read."""

    def __init__(self, *args, **kwargs):
        self._opened = _REAL_SAFE_OPEN(*args, **kwargs)

    def __enter__(self):
        self._reader = self._opened.__enter__()
        return self

    def __exit__(self, *exc_info):
        return self._opened.__exit__(*exc_info)

    def keys(self):
        return self._reader.keys()

    def metadata(self):
        return self._reader.metadata()

    def get_slice(self, name):
        return _HeaderOnlySlice(self._reader.get_slice(name))

    def get_tensor(self, _name):
        raise AssertionError("read a tensor where only the header was needed")


_REAL_SAFE_OPEN = safetensors.safe_open


@pytest.fixture
def no_tensor_reads(monkeypatch):
    """Fail the test if anything reads tensor bytes (headers may still be read through safe_open)."""
    def refuse(*_args, **_kwargs):
        raise AssertionError("loaded a whole file where only the header was needed")

    monkeypatch.setattr(safetensors, "safe_open", _HeaderOnlyReader)
    monkeypatch.setattr(safetensors.torch, "safe_open", _HeaderOnlyReader)
    monkeypatch.setattr(safetensors.torch, "load_file", refuse)
