"""Identities on disk: safe ids, the folder layout, and writes that leave the old version on failure."""

from __future__ import annotations

import json
import os
import time

import pytest

from portrait_core.errors import IdentityError
from portrait_core.store import (
    atomic_directory,
    atomic_write_bytes,
    atomic_write_json,
    identity_paths,
    list_identities,
    load_identity_embeddings,
    load_reference_face,
    read_json,
    restore_interrupted_replacement,
    validate_identity_id,
)


@pytest.mark.parametrize("identity", ["alice", "Bob_2", "x", "mary-jane", "A" * 64, "007"])
def test_ordinary_ids_are_accepted(identity):
    assert validate_identity_id(identity) == identity


@pytest.mark.parametrize(("identity", "why"), [
    ("", "empty"),
    ("../escape", "not allowed"),
    ("a/b", "not allowed"),
    ("a\\b", "not allowed"),
    ("..", "not allowed"),
    (".hidden", "not allowed"),
    ("-flag", "not allowed"),
    ("with space", "not allowed"),
    ("dots.in.name", "not allowed"),
    ("émile", "not allowed"),
    ("nul\x00byte", "not allowed"),
    ("CON", "reserved device name"),
    ("lpt1", "reserved device name"),
    ("a" * 65, "limit is 64"),
    (None, "must be a string"),
])
def test_unsafe_ids_are_refused_with_the_reason(identity, why):
    with pytest.raises(IdentityError, match=why):
        validate_identity_id(identity)


def test_identity_layout_lives_under_the_root(tmp_path):
    paths = identity_paths("alice", tmp_path)
    assert paths.folder == tmp_path / "alice"
    assert paths.dataset == tmp_path / "alice" / "dataset" and paths.report == tmp_path / "alice" / "report.json"
    layout = paths.dataset_layout()
    assert layout.image(3) == tmp_path / "alice" / "dataset" / "images" / "0003.png"
    assert layout.caption(3).with_suffix(".png") == layout.image(3)


def test_the_default_root_is_the_identities_folder_from_the_settings():
    from portrait_core.config import settings

    assert identity_paths("alice").folder == settings().identities_dir / "alice"


@pytest.mark.skipif(os.name == "nt", reason="symlinks need privileges on Windows")
def test_an_identity_folder_that_is_a_symlink_is_refused(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "alice").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(IdentityError, match="symbolic link"):
        identity_paths("alice", tmp_path / "root")


def test_list_identities_shows_only_identity_folders(tmp_path):
    for name in ("bob", "alice", ".dataset.staging-1", "not valid"):
        (tmp_path / name).mkdir()
    (tmp_path / "carol").write_text("a file, not an identity")
    assert list_identities(tmp_path) == ["alice", "bob"]
    assert list_identities(tmp_path / "missing") == []


def test_atomic_json_writes_the_value_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "sub" / "report.json"
    atomic_write_json(path, {"id": "alice", "score": 0.5, "name": "Zoë"})
    assert read_json(path) == {"id": "alice", "score": 0.5, "name": "Zoë"}
    assert [p.name for p in path.parent.iterdir()] == ["report.json"]


def test_a_value_that_cannot_be_written_leaves_the_old_file(tmp_path):
    path = tmp_path / "report.json"
    atomic_write_json(path, {"version": 1})
    with pytest.raises(ValueError, match="JSON compliant"):
        atomic_write_json(path, {"score": float("nan")})
    assert json.loads(path.read_text()) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_a_failed_byte_write_leaves_no_temporary_file(tmp_path):
    (tmp_path / "target").mkdir()  # a folder where the file should go: the rename fails
    with pytest.raises(OSError):
        atomic_write_bytes(tmp_path / "target", b"data")
    assert [p.name for p in tmp_path.iterdir()] == ["target"]


def test_read_json_names_the_file_it_cannot_read(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(IdentityError, match="bad.json"):
        read_json(tmp_path / "bad.json")
    with pytest.raises(IdentityError, match="does not exist"):
        read_json(tmp_path / "none.json")


def _fill(folder, marker):
    (folder / "images").mkdir()
    (folder / "images" / "0000.png").write_bytes(marker.encode())
    (folder / "manifest.json").write_text(json.dumps({"run": marker}))


def test_a_completed_directory_replaces_the_old_one(tmp_path):
    final = tmp_path / "dataset"
    with atomic_directory(final) as staging:
        _fill(staging, "first")
    with atomic_directory(final) as staging:
        assert staging != final and final.exists()  # the old one stays readable while the new one is built
        _fill(staging, "second")
    assert read_json(final / "manifest.json") == {"run": "second"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset"]


def test_a_failure_while_building_keeps_the_old_directory(tmp_path):
    final = tmp_path / "dataset"
    with atomic_directory(final) as staging:
        _fill(staging, "first")
    with pytest.raises(RuntimeError, match="disk full"), atomic_directory(final) as staging:
        _fill(staging, "second")
        raise RuntimeError("disk full")
    assert read_json(final / "manifest.json") == {"run": "first"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset"]


def test_a_crash_between_the_two_renames_is_repaired_on_the_next_use(tmp_path):
    final = tmp_path / "dataset"
    aside = tmp_path / ".dataset.previous-1234abcd"
    aside.mkdir()
    _fill(aside, "first")  # the old copy was moved aside, then the process died
    stale = tmp_path / ".dataset.staging-deadbeef"
    stale.mkdir()
    os.utime(stale, (time.time() - 3 * 24 * 3600,) * 2)
    assert restore_interrupted_replacement(final)
    assert read_json(final / "manifest.json") == {"run": "first"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset"]


def test_loading_an_identity_that_was_never_prepared_says_so(tmp_path):
    for load in (load_identity_embeddings, load_reference_face):
        with pytest.raises(IdentityError, match="run preprocessing first"):
            load("alice", tmp_path)
