"""Output-size limits of workflows: a chain that would grow past them is refused before anything runs."""

from __future__ import annotations

import pytest
from PIL import Image

from portrait_core.generate.workflow import WorkflowError, WorkflowRunner
from portrait_core.hosts.diffusers_host import DiffusersHost
from portrait_core.params import MAX_OUTPUT_PIXELS, MAX_OUTPUT_SIDE, WorkflowParams


@pytest.fixture
def host(tiny_sd15):
    return DiffusersHost(tiny_sd15)


def upscales(times: int, scale: float = 4) -> list[dict]:
    return [{"op": "upscale", "scale": scale}] * times


def test_five_x4_upscales_of_a_64_px_image_are_refused_naming_the_step(host):
    workflow = WorkflowParams(steps=[{"op": "txt2img", "width": 64, "height": 64, "steps": 2}, *upscales(5)])
    with pytest.raises(WorkflowError, match=r"steps\[4\] \(upscale\): the output would be 16384x16384 px") as refused:
        WorkflowRunner(host).validate(workflow, {})
    assert f"{MAX_OUTPUT_SIDE} px a side" in str(refused.value)
    assert host.load_count == 0, "refused before anything loads or runs"


def test_a_chain_that_stays_inside_the_limits_passes_and_one_step_more_does_not(host):
    grown = [{"op": "txt2img", "width": 64, "height": 64, "steps": 2}, *upscales(3), {"op": "restore"}]
    WorkflowRunner(host).validate(WorkflowParams(steps=[*grown, *upscales(1, scale=1.9)]), {})  # 7782 px, 61 Mpx
    assert MAX_OUTPUT_PIXELS < 8192 * 8192  # 8192 px a side is allowed, but not on both sides at once
    with pytest.raises(WorkflowError, match=r"steps\[5\] \(upscale\): the output would be 8192x8192 px"):
        WorkflowRunner(host).validate(WorkflowParams(steps=[*grown, *upscales(1, scale=2)]), {})


def test_the_area_limit_counts_too_and_sizes_follow_the_supplied_image(host):
    strip = Image.new("RGB", (4000, 4500))  # each side x2 is under 8192 px, the area is 72 Mpx
    workflow = WorkflowParams(steps=[{"op": "restore", "image": "strip.png"}, *upscales(1, scale=2)])
    with pytest.raises(WorkflowError, match=r"steps\[1\] \(upscale\): the output would be 8000x9000"):
        WorkflowRunner(host).validate(workflow, {"strip.png": strip})
    thin = Image.new("RGB", (1, 4000))  # one pixel wide: the side limit, not the area, refuses it
    with pytest.raises(WorkflowError, match=r"steps\[0\] \(upscale\): the output would be 3x12000"):
        WorkflowRunner(host).validate(WorkflowParams(steps=[{"op": "upscale", "image": "thin.png", "scale": 3}]),
                                      {"thin.png": thin})
