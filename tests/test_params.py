"""Typed parameters: defaults from ARCHITECTURE.md, errors that name the field, pydantic 1.10 schema."""

from __future__ import annotations

import pydantic
import pytest

from portrait_core.params import (
    ControlParams,
    DiffusionParams,
    GenerateParams,
    TrainParams,
    params_json_schema,
)


def test_runs_on_pydantic_1_like_the_webui():
    assert pydantic.VERSION.startswith("1.10")


def test_reference_defaults():
    train = TrainParams(identity="ana")
    assert (train.max_train_steps, train.steps_per_photo, train.learning_rate) == (800, 200, 1e-4)
    assert train.rank is None and train.resolution is None  # the model family decides: 128 / 512 for SD1.5
    generate = GenerateParams(identities=["ana"])
    assert (generate.first_pass_steps, generate.first_pass_denoise, generate.lora_weight) == (50, 0.45, 0.9)


@pytest.mark.parametrize(("model", "fields", "named"), [
    (DiffusionParams, {"width": 500}, "width"),
    (DiffusionParams, {"steps": 0}, "steps"),
    (DiffusionParams, {"sampler": "Turbo"}, "sampler"),
    (DiffusionParams, {"stepz": 3}, "stepz"),
    (ControlParams, {"kind": "canny", "start": 0.8, "end": 0.2}, "start"),
    (ControlParams, {"kind": "depthmap"}, "kind"),
    (TrainParams, {"identity": "../etc"}, "identity"),
    (GenerateParams, {"identities": ["ok", "bad/name"]}, "identities"),
])
def test_invalid_values_name_the_field(model, fields, named):
    with pytest.raises(pydantic.ValidationError) as error:
        model(**fields)
    assert named in str(error.value)


def test_schema_lists_every_model_with_its_constraints():
    schema = params_json_schema()
    assert set(schema) == {"ControlParams", "LoraWeight", "DiffusionParams", "TrainParams", "GenerateParams",
                           "WorkflowParams"}
    steps = schema["DiffusionParams"]["properties"]["steps"]
    assert steps["minimum"] == 1 and steps["maximum"] == 150


def test_the_issue_7_workflow_file_format_parses():
    from portrait_core.params import WorkflowParams

    workflow = WorkflowParams(steps=[
        {"op": "txt2img", "prompt": "...", "width": 1024, "height": 1024, "steps": 30, "seed": 1},
        {"op": "pose_transfer", "pose_image": "pose.jpg", "prompt": "...", "controlnet_scale": 0.6, "steps": 30},
        {"op": "restore", "codeformer_weight": 0.7}, {"op": "upscale", "scale": 2}])
    assert [step.op for step in workflow.steps] == ["txt2img", "pose_transfer", "restore", "upscale"]
    assert workflow.image_names() == ["pose.jpg"]


@pytest.mark.parametrize(("steps", "named"), [
    ([{"op": "txt2img"}, {"op": "teleport"}], "steps[1]: unknown op 'teleport'"),
    ([{"op": "txt2img", "width": 1001}], "steps[0] (txt2img): width"),
    ([{"op": "upscale", "scale": 9}], "steps[0] (upscale): scale"),
    ([{"op": "pose_transfer", "pose_image": "../etc/passwd"}], "steps[0] (pose_transfer): pose_image"),
    ([{"op": "portrait", "identities": ["a"], "options": {"crop_size": 100}}], "crop_size"),
])
def test_bad_workflow_steps_are_named(steps, named):
    from portrait_core.params import WorkflowParams

    with pytest.raises(pydantic.ValidationError) as error:
        WorkflowParams(steps=steps)
    assert named in str(error.value)
