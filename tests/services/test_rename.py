"""Renaming an identity: folder, LoRA and manifest move together; the trained trigger word keeps working."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors import safe_open

from portrait_core.errors import IdentityError
from portrait_core.jobs import JobRunner
from portrait_core.models.lora import LoraLayer, write_lora_file
from portrait_core.services.identities import IdentityService
from portrait_core.services.workspace import Workspace


@pytest.fixture
def identities(tmp_path, prepared_obama):
    root = tmp_path / "identities"
    shutil.copytree(prepared_obama, root)
    loras = tmp_path / "Lora"
    layer = LoraLayer(torch.ones(2, 3), torch.ones(4, 2), 1.0)
    write_lora_file(loras / "obama.safetensors", {"lora_unet_x": layer}, {"portrait_studio.identity": "obama"})
    return root, loras


@pytest.fixture
def identity_service(tmp_path, identities):
    """The IdentityService every door renames through, on this root and LoRA folder."""
    root, loras = identities
    runner = JobRunner(tmp_path / "jobs")
    yield IdentityService(Workspace(tmp_path / "home", loras, root), runner)
    runner.close()



def _snapshot(*folders):
    return sorted(str(p.relative_to(f)) for f in folders for p in f.rglob("*"))


def test_rename_moves_folder_lora_and_manifest_and_keeps_the_trigger(identities, identity_service):
    from portrait_core.generate.identity import load_identity

    root, loras = identities
    assert identity_service.rename("obama", "barack") == ["folder", "lora"]
    assert not (root / "obama").exists() and (root / "barack" / "dataset").is_dir()
    assert not (loras / "obama.safetensors").exists()
    with safe_open(str(loras / "barack.safetensors"), "pt") as handle:
        assert handle.metadata()["portrait_studio.identity"] == "barack"
        assert torch.equal(handle.get_tensor("lora_unet_x.lora_down.weight"), torch.ones(2, 3))
    manifest = json.loads((root / "barack" / "dataset" / "manifest.json").read_text())
    assert manifest["id"] == "barack" and manifest["trigger"] == "obama"
    assets = load_identity("barack", root=root, lora_dir=loras)
    assert assets.trigger == "obama" and assets.has_lora


@pytest.mark.parametrize("new", ["../escape", "bad name", "obama2/x", ""])
def test_bad_new_names_change_nothing(identities, identity_service, new):
    root, loras = identities
    before = _snapshot(root, loras)
    with pytest.raises(IdentityError):
        identity_service.rename("obama", new)
    assert _snapshot(root, loras) == before


def test_a_taken_name_or_a_missing_identity_change_nothing(identities, identity_service):
    root, loras = identities
    (loras / "taken.safetensors").write_bytes(b"someone else's LoRA")
    before = _snapshot(root, loras)
    with pytest.raises(IdentityError, match="already exists"):
        identity_service.rename("obama", "taken")
    with pytest.raises(IdentityError, match="no identity 'ghost'"):
        identity_service.rename("ghost", "casper")
    assert _snapshot(root, loras) == before


def test_a_lora_we_did_not_train_stays_where_it_is(identities, identity_service):
    _, loras = identities
    (loras / "obama.safetensors").unlink()
    write_lora_file(loras / "obama.safetensors", {"lora_unet_x": LoraLayer(torch.ones(2, 3), torch.ones(4, 2), 1.0)})
    assert identity_service.rename("obama", "barack") == ["folder"]
    assert (loras / "obama.safetensors").is_file() and not (loras / "barack.safetensors").exists()
