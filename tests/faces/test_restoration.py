"""Face restoration through spandrel: CodeFormer- and GFPGAN-shaped networks with random weights, built from
spandrel's own architecture classes and saved where the registry looks, are found, loaded and run on a face."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from portrait_core.core.geometry import scale_box
from portrait_core.core.masks import box_mask
from portrait_core.errors import ModelUnavailableError
from portrait_core.faces.restoration import FaceRestorer
from portrait_core.generate.workflow import WorkflowRunner
from portrait_core.hosts.diffusers_host import DiffusersHost
from portrait_core.models.registry import BUILTIN_MODELS, CODEFORMER, GFPGAN, ModelRegistry
from portrait_core.params import WorkflowParams

pytestmark = pytest.mark.skipif(importlib.util.find_spec("spandrel_extra_arches") is None,
                                reason="spandrel / spandrel-extra-arches are not installed")


def _test_registry(models_dir: Path) -> ModelRegistry:
    """The built-in entries over `models_dir`, minus the published files' size and digest (a file of random
    weights cannot match them; everything else, names and places, is the real registry's)."""
    files = [dataclasses.replace(m, size=None, sha256=None) if m.name in (CODEFORMER, GFPGAN) else m
             for m in BUILTIN_MODELS]
    return ModelRegistry(files, models_dir=models_dir, offline=True)


def _save(state: dict, path: Path) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    # As the published .pth files are laid out (the EMA weights under "params_ema"); half precision only
    # halves the test's disk use, the loader widens it again.
    torch.save({"params_ema": {key: value.half() for key, value in state.items()}}, path)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    import torch

    from portrait_core.models.spandrel_import import spandrel_registry

    spandrel_registry()  # spandrel's architecture modules import only through it here (no torchvision)
    from spandrel.architectures.GFPGAN import GFPGANv1Clean
    from spandrel_extra_arches.architectures.CodeFormer import CodeFormer

    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    # A narrow transformer (spandrel reads its width, depth and codebook from the keys); the rest is fixed.
    codeformer = CodeFormer(dim_embd=64, n_head=8, n_layers=1, codebook_size=64, connect_list=["32"])
    _save(codeformer.state_dict(), folder / "codeformer" / "codeformer-v0.1.0.pth")
    gfpgan = GFPGANv1Clean(out_size=512, num_style_feat=512, channel_multiplier=2, decoder_load_path=None,
                           fix_decoder=False, num_mlp=8, input_is_latent=True, different_w=True, narrow=1,
                           sft_half=True)
    _save(gfpgan.state_dict(), folder / "GFPGAN" / "GFPGANv1.4.pth")  # the WebUI's folder name: also_at
    return folder


@pytest.fixture(scope="module")
def portrait(astronaut) -> Image.Image:
    return astronaut.resize((256, 256), Image.LANCZOS)


def _check_only_the_face_changed(before: Image.Image, after: Image.Image, face) -> None:
    old, new = (np.asarray(image).astype(int) for image in (before, after))
    assert old.shape == new.shape
    changed = np.abs(old - new).max(axis=2) > 0
    # The detector's box is tight (brows to chin); the pasted face mask also takes the forehead in.
    head = box_mask(changed.shape, scale_box(face.box, 1.8)) > 0
    assert not changed[~head].any(), "pixels outside the face changed"
    core = box_mask(changed.shape, scale_box(face.box, 0.6)) > 0
    assert np.abs(old - new)[core].mean() > 10, "the face was not restored"  # random weights: visibly


@pytest.mark.parametrize("remove_first", [False, True], ids=["codeformer", "gfpgan"])
def test_a_restorer_from_the_models_folder_changes_only_the_face(models_dir, embedded, portrait, remove_first,
                                                                 tmp_path):
    folder = models_dir
    if remove_first:  # CodeFormer is preferred when both are there: a folder with GFPGAN only
        folder = tmp_path / "models"
        (folder / "GFPGAN").mkdir(parents=True)
        (folder / "GFPGAN" / "GFPGANv1.4.pth").symlink_to(models_dir / "GFPGAN" / "GFPGANv1.4.pth")
    restorer = FaceRestorer(_test_registry(folder), faces=embedded.detect)
    found = restorer.find()
    assert found.architecture == ("GFPGAN" if remove_first else "CodeFormer")
    faces = embedded.detect(np.asarray(portrait))
    assert len(faces) == 1
    if remove_first:  # through the standalone host, as the workflow's `restore` op runs it
        host = DiffusersHost(Path("no-model-needed"), face_restorer=restorer)
        workflow = WorkflowParams(steps=[{"op": "restore", "image": "face.png", "codeformer_weight": 0.5}])
        [output] = WorkflowRunner(host).run(workflow, {"face.png": portrait})
        assert output.notes == []
        restored = output.images[0]
    else:
        restored = restorer.restore(portrait, 0.5)
    _check_only_the_face_changed(portrait, restored, faces[0])
    if found.architecture == "CodeFormer":  # its fidelity weight reaches the network
        faithful = restorer.restore(portrait, 1.0)
        assert np.abs(np.asarray(faithful).astype(int) - np.asarray(restored).astype(int)).mean() > 0.5


def test_without_a_model_the_standalone_host_says_which_file_to_put_where(tmp_path, portrait):
    host = DiffusersHost(Path("no-model-needed"), face_restorer=FaceRestorer(_test_registry(tmp_path / "empty")))
    with pytest.raises(ModelUnavailableError) as missing:
        host.restore_faces(portrait, 0.7)
    message = str(missing.value)
    assert str(tmp_path / "empty" / "codeformer" / "codeformer-v0.1.0.pth") in message
    assert str(tmp_path / "empty" / "gfpgan" / "GFPGANv1.4.pth") in message
    assert "github.com/sczhou/CodeFormer" in message


def test_a_file_of_another_kind_is_refused_naming_it(tmp_path, portrait, embedded):
    import torch

    bogus = tmp_path / "codeformer" / "codeformer-v0.1.0.pth"
    bogus.parent.mkdir(parents=True)
    torch.save({"params_ema": {"conv.weight": torch.zeros(3, 3, 3, 3)}}, bogus)
    with pytest.raises(ModelUnavailableError, match="codeformer-v0.1.0.pth is not a model spandrel can load"):
        FaceRestorer(_test_registry(tmp_path), faces=embedded.detect).restore(portrait)


def test_spandrel_imports_without_leaving_a_stand_in_torchvision_behind():
    import sys

    from portrait_core.models.spandrel_import import spandrel_registry

    had_torchvision = importlib.util.find_spec("torchvision") is not None
    registry = spandrel_registry()
    assert "CodeFormer" in registry and "GFPGAN" in registry
    stand_in = sys.modules.get("torchvision")
    assert stand_in is None or getattr(stand_in, "__file__", None), "a stand-in torchvision stayed in sys.modules"
    assert (importlib.util.find_spec("torchvision") is not None) == had_torchvision
