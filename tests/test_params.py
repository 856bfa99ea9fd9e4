"""Typed parameters: defaults from ARCHITECTURE.md, errors that name the field, pydantic 1.10 schema."""

from __future__ import annotations

import pydantic
import pytest

from portrait_core.params import GenerateParams, TrainParams, WorkflowParams, params_json_schema


def test_runs_on_pydantic_1_like_the_webui():
    assert pydantic.VERSION.startswith("1.10")


def test_reference_defaults():
    train = TrainParams(identity="ana")
    assert (train.max_train_steps, train.steps_per_photo, train.learning_rate) == (800, 200, 1e-4)
    assert train.rank is None and train.resolution is None  # the model family decides: 128 / 512 for SD1.5
    generate = GenerateParams(identities=["ana"])
    assert (generate.first_pass_steps, generate.first_pass_denoise, generate.lora_weight) == (50, 0.45, 0.9)


@pytest.mark.parametrize(("model", "fields", "named"), [
    (GenerateParams, {"identities": ["a"], "crop_size": 500}, "crop_size"),
    (GenerateParams, {"identities": ["a"], "sampler": "Turbo"}, "sampler"),
    (GenerateParams, {"identities": ["a"], "stepz": 3}, "stepz"),
    (TrainParams, {"identity": "../etc"}, "identity"),
    (GenerateParams, {"identities": ["ok", "bad/name"]}, "identities"),
])
def test_invalid_values_name_the_field(model, fields, named):
    with pytest.raises(pydantic.ValidationError) as error:
        model(**fields)
    assert named in str(error.value)


def test_schema_lists_the_models_the_endpoints_accept_with_their_constraints():
    schema = params_json_schema()
    assert set(schema) == {"TrainParams", "GenerateParams", "WorkflowParams"}
    steps = schema["GenerateParams"]["properties"]["first_pass_steps"]
    assert steps["minimum"] == 1 and steps["maximum"] == 150
    identity = schema["TrainParams"]["properties"]["identity"]
    assert identity["maxLength"] == 64 and identity["pattern"].startswith("^[A-Za-z0-9]")


@pytest.mark.parametrize("bad", ["", "x" * 65, "x" * 300, "con", "a.b", "../up", "ana lopez", 12])
def test_one_identity_rule_for_every_field_that_names_an_identity(bad):
    """The same id is refused wherever it appears: training, generation, a workflow step, a portrait step."""
    attempts = [lambda: TrainParams(identity=bad), lambda: GenerateParams(identities=[bad]),
                lambda: WorkflowParams(steps=[{"op": "txt2img", "identity": bad}]),
                lambda: WorkflowParams(steps=[{"op": "portrait", "identities": [bad]}])]
    for attempt in attempts:
        with pytest.raises(pydantic.ValidationError, match="identity"):
            attempt()


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
