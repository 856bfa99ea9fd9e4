"""The services every door calls: what a LoRA may be used with, what "active" means, where a home keeps things."""

from __future__ import annotations

import shutil

import pytest
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from portrait_core.generate.identity import IdentityNotReadyError
from portrait_core.generate.workflow import WorkflowError
from portrait_core.hosts.diffusers_host import DiffusersHost
from portrait_core.params import GenerateParams, WorkflowParams
from portrait_core.services.identities import IdentityBusyError
from portrait_core.services.loras import LoraMismatchError
from tests.lora_factory import random_lora_for
from tests.service_factory import services_on

FAST = {"first_pass_steps": 3, "second_pass_steps": 3, "crop_size": 128, "seed": 4}


@pytest.fixture(scope="module")
def components(tiny_sd15):
    from portrait_core.models.checkpoints.loading import load_components

    parts = load_components(tiny_sd15)
    return {"unet": parts.unet, "text_encoder": parts.text_encoder}


@pytest.fixture(scope="module")
def template(shared_faces_dir):
    image = Image.open(shared_faces_dir / "biden.jpg").convert("RGB")
    return image.resize((image.width // 3, image.height // 3))


def lora_with(path, components, **metadata):
    """A LoRA that fits the tiny SD1.5 model's layers, whose header says what `metadata` says."""
    random_lora_for(components, path)
    with safe_open(str(path), "pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - no iterator
        header = dict(handle.metadata() or {})
    save_file(tensors, str(path), metadata=header | {"portrait_studio.identity": "obama"} | metadata)
    return path


@pytest.fixture
def services(tmp_path, tiny_sd15, prepared_obama):
    made = services_on(DiffusersHost(tiny_sd15, lora_dir=tmp_path / "Lora"), identities=prepared_obama,
                       home=tmp_path / "home")
    (tmp_path / "Lora").mkdir()
    yield made
    made.close()


def test_a_lora_of_another_family_is_refused_naming_both(services, components, template, tmp_path):
    lora_with(tmp_path / "Lora" / "obama.safetensors", components, **{
        "portrait_studio.family": "sdxl", "portrait_studio.base_model": "sdxl-base-1.0.safetensors"})
    checkpoint = services.host().current_checkpoint().name
    with pytest.raises(LoraMismatchError) as refused:
        services.generation.generate(GenerateParams(identities=["obama"], **FAST), [("t.png", template)])
    message = str(refused.value)
    assert "SDXL" in message and "sdxl-base-1.0.safetensors" in message
    assert "SD1.5" in message and checkpoint in message
    with pytest.raises(LoraMismatchError):  # refused before anything is queued
        services.generation.submit(GenerateParams(identities=["obama"], **FAST), [("t.png", template)])
    assert services.runner.jobs() == []
    workflow = WorkflowParams(steps=[{"op": "txt2img", "prompt": "a portrait", "identity": "obama", "steps": 2,
                                      "width": 64, "height": 64}])
    with pytest.raises(WorkflowError, match="SDXL"):
        services.workflows.run(workflow, {})


def test_a_lora_of_another_base_of_the_same_family_renders_with_a_note(services, components, template, tmp_path):
    lora_with(tmp_path / "Lora" / "obama.safetensors", components, **{
        "portrait_studio.family": "sd15", "portrait_studio.base_model": "realistic-v5.safetensors",
        "portrait_studio.base_model_hash": "0123456789"})
    [(result, _)] = services.generation.generate(GenerateParams(identities=["obama"], **FAST), [("t.png", template)])
    assert any("realistic-v5.safetensors" in note and "same family" in note for note in result.notes), result.notes
    # The LoRA of the checkpoint in use itself: no note.
    lora_with(tmp_path / "Lora" / "obama.safetensors", components, **{
        "portrait_studio.family": "sd15", "portrait_studio.base_model": "whatever",
        "portrait_studio.base_model_hash": services.host().current_checkpoint().short_hash})
    [(result, _)] = services.generation.generate(GenerateParams(identities=["obama"], **FAST), [("t.png", template)])
    assert not any("trained on" in note for note in result.notes), result.notes


def test_a_queued_generation_of_two_identities_holds_both(tmp_path, tiny_sd15, prepared_obama, template, components):
    pair = Image.new("RGB", (template.width * 2, template.height))  # a template with two faces
    pair.paste(template, (0, 0))
    pair.paste(template, (template.width, 0))
    root = tmp_path / "identities"
    shutil.copytree(prepared_obama, root)
    services = services_on(DiffusersHost(tiny_sd15, lora_dir=tmp_path / "Lora"), identities=root,
                           home=tmp_path / "home")
    try:
        with pytest.raises(IdentityNotReadyError, match="train it first"):  # refused now, not in the job
            services.generation.submit(GenerateParams(identities=["obama"], **FAST), [("t.png", template)])
        assert services.runner.jobs() == []
        services.identities.rename("obama", "twin")
        shutil.copytree(prepared_obama / "obama", root / "obama")
        (tmp_path / "Lora").mkdir()
        for identity in ("obama", "twin"):
            lora_with(tmp_path / "Lora" / f"{identity}.safetensors", components)
        params = GenerateParams(identities=["obama", "twin"], **FAST)
        with services.host().session("someone else's generation"):  # the job waits behind it, queued
            job = services.generation.submit(params, [("pair.png", pair)])
            for identity in ("obama", "twin"):
                with pytest.raises(IdentityBusyError, match=job.id):
                    services.identities.delete(identity)
                assert services.identities.info(identity).active_job.id == job.id
            with pytest.raises(IdentityBusyError):
                services.identities.rename("twin", "other")
        finished = services.runner.wait(job.id, timeout=300)
        assert finished.state == "done", finished.error
        assert services.identities.delete("twin")[0] == ["folder"]
    finally:
        services.close()


def test_inside_the_webui_the_tiny_test_model_is_refused_and_standalone_it_comes_with_a_note(
        tmp_path, tiny_sd15, prepared_obama):
    from portrait_core.errors import CheckpointError
    from portrait_core.params import TrainParams

    for in_webui in (True, False):
        services = services_on(DiffusersHost(tiny_sd15, lora_dir=tmp_path / "Lora"), identities=prepared_obama,
                               home=tmp_path / f"home-{in_webui}", in_webui=in_webui)
        try:
            if in_webui:
                with pytest.raises(CheckpointError, match="tiny local test model cannot be trained inside"):
                    services.training.start(TrainParams(identity="obama", max_train_steps=2))
                assert services.runner.jobs() == []
            else:
                path, notes = services.training.base_model(None)
                assert path == tiny_sd15 and "not a likeness" in notes[0]
        finally:
            services.close()
