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
    assert set(schema) == {"ControlParams", "LoraWeight", "DiffusionParams", "TrainParams", "GenerateParams"}
    steps = schema["DiffusionParams"]["properties"]["steps"]
    assert steps["minimum"] == 1 and steps["maximum"] == 150
