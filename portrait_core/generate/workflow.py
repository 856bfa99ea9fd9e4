"""Workflows: an ordered list of steps (txt2img, img2img, pose transfer, image prompt + pose, portrait,
restore, upscale), each taking the previous step's output or a named input image.

The whole workflow is validated before the first step runs (unknown op, missing input, bad size or
unknown identity: rejected naming the step and field). Every step's images are kept and returned.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from PIL import Image

from portrait_core.errors import IdentityError, ModelUnavailableError, PortraitError
from portrait_core.hosts.base import Control, Host
from portrait_core.log import get_logger
from portrait_core.models.families import family as model_family
from portrait_core.params import GenerateParams, WorkflowParams, output_size_problem
from portrait_core.store import validate_identity_id

log = get_logger("workflow")


class WorkflowError(PortraitError):
    """A workflow cannot run: names the step and the field."""


@dataclass
class StepOutput:
    index: int
    op: str
    images: list[Image.Image]
    infotexts: list[str]
    extras: dict[str, Image.Image] = field(default_factory=dict)  # e.g. the pose skeleton it used
    notes: list[str] = field(default_factory=list)


class WorkflowRunner:
    """Runs workflows on a Host; portrait steps go through a GenerationService on the same host."""

    def __init__(self, host: Host, *, generation=None, root: Path | None = None,
                 progress: Callable[[int, int, str], None] | None = None):
        self.host = host
        self.generation = generation
        self.root = root
        self.progress = progress or (lambda index, total, text: None)
        self._pose_extractor = None

    def run(self, workflow: WorkflowParams, images: dict[str, Image.Image]) -> list[StepOutput]:
        self.validate(workflow, images)
        outputs: list[StepOutput] = []
        previous: Image.Image | None = None
        with self.host.session("portrait studio: workflow"):  # no other caller between two steps
            for index, step in enumerate(workflow.steps):
                self.progress(index, len(workflow.steps), step.op)
                output = getattr(self, f"_run_{step.op}")(index, step, images, previous)
                outputs.append(output)
                previous = output.images[0]
        return outputs

    def validate(self, workflow: WorkflowParams, images: dict[str, Image.Image]) -> None:
        """Everything that can be checked before a step runs; WorkflowError names the step and field."""
        try:
            workflow.check_inputs(set(images))
        except ValueError as error:
            raise WorkflowError(str(error)) from None
        for index, step in enumerate(workflow.steps):
            self._check_identities(index, step)
            if step.op in ("image_prompt_pose",) and "ip_adapter" not in self.host.controlnet_models():
                raise WorkflowError(f"steps[{index}] ({step.op}): this host has no IP-Adapter model; "
                                    "see the README's image-prompt section for where to put one")
            if step.op == "portrait" and self.generation is None:
                raise WorkflowError(f"steps[{index}] (portrait): no portrait generator is configured")
        self._check_output_sizes(workflow, images)

    def _check_output_sizes(self, workflow: WorkflowParams, images: dict[str, Image.Image]) -> None:
        """Each step's output size worked out from its inputs, refused when over the output limits."""
        previous: tuple[int, int] | None = None
        for index, step in enumerate(workflow.steps):
            size = self._planned_size(step, {name: image.size for name, image in images.items()}, previous)
            problem = output_size_problem(*size)
            if problem:
                raise WorkflowError(f"steps[{index}] ({step.op}): {problem}; lower its size or scale, or an "
                                    "earlier step's")
            previous = size

    def _planned_size(self, step, sizes: dict[str, tuple[int, int]], previous) -> tuple[int, int]:
        def source(name):
            return sizes[name] if name else previous

        if step.op == "txt2img":
            return (step.width or self._default_side(), step.height or self._default_side())
        if step.op in ("img2img", "pose_transfer", "image_prompt_pose"):
            return _step_size(step, source(step.image if step.op == "img2img" else step.pose_image))
        if step.op == "portrait":
            return _scaled(source(step.template), GenerateParams(identities=step.identities, **step.options).upscale)
        if step.op == "upscale":
            return _scaled(source(step.image), step.scale)
        return source(step.image)  # restore keeps the size

    # ---- the steps ------------------------------------------------------------------------------------
    def _run_txt2img(self, index, step, images, previous) -> StepOutput:
        size = (step.width or self._default_side(), step.height or self._default_side())
        return self._sample(index, step, size, controls=[], extra={})

    def _run_img2img(self, index, step, images, previous) -> StepOutput:
        source = _input(step.image, images, previous)
        size = _step_size(step, source.size)
        mask = Image.new("L", source.size, 255)
        results, texts = [], []
        for seed in self._seeds(step):
            results.append(self.host.inpaint(source, mask, step.prompt, step.negative_prompt, lora=self._lora(step),
                                             steps=step.steps, denoise=step.denoise, cfg=step.cfg_scale, seed=seed,
                                             sampler=step.sampler, size=size, mask_blur=0))
            texts.append(_infotext(step, index, seed, size, {"Denoising strength": step.denoise}))
        return StepOutput(index, step.op, results, texts)

    def _run_pose_transfer(self, index, step, images, previous) -> StepOutput:
        source = _input(step.pose_image, images, previous)
        size = _step_size(step, source.size)
        skeleton = self._pose_map(source, index, step.pose_image, size)
        controls = [Control("openpose", skeleton, step.controlnet_scale, preprocessed=True)]
        output = self._sample(index, step, size, controls, {"ControlNet openpose scale": step.controlnet_scale})
        output.extras["pose"] = skeleton
        return output

    def _run_image_prompt_pose(self, index, step, images, previous) -> StepOutput:
        # With an identity and no ip_image, the person's own reference face is the image prompt.
        look = self._reference_face(step.identity) if step.ip_image is None and step.identity else \
            _input(step.ip_image, images, previous)
        pose_source = images[step.pose_image]
        size = _step_size(step, pose_source.size)
        skeleton = self._pose_map(pose_source, index, step.pose_image, size)
        controls = [Control("ip_adapter", look, step.ip_adapter_scale, preprocessed=True),
                    Control("openpose", skeleton, step.controlnet_scale, preprocessed=True)]
        extra = {"IP-Adapter scale": step.ip_adapter_scale, "ControlNet openpose scale": step.controlnet_scale}
        output = self._sample(index, step, size, controls, extra)
        output.extras["pose"] = skeleton
        return output

    def _run_portrait(self, index, step, images, previous) -> StepOutput:
        template = _input(step.template, images, previous)
        params = GenerateParams(identities=step.identities, **step.options)
        outputs = self.generation.generate(params, [(step.template or f"step-{index}", template)])
        return StepOutput(index, step.op, [result.image for result, _ in outputs], [text for _, text in outputs],
                          notes=[note for result, _ in outputs for note in result.notes])

    def _run_restore(self, index, step, images, previous) -> StepOutput:
        source = _input(step.image, images, previous)
        text = f"Workflow step: {index} restore, CodeFormer weight: {step.codeformer_weight}"
        try:
            return StepOutput(index, step.op, [self.host.restore_faces(source, step.codeformer_weight)], [text])
        except ModelUnavailableError as error:
            return StepOutput(index, step.op, [source], [text], notes=[f"face restoration skipped: {error}"])

    def _run_upscale(self, index, step, images, previous) -> StepOutput:
        source = _input(step.image, images, previous)
        upscaled = self.host.upscale(source, step.scale, step.upscaler)
        return StepOutput(index, step.op, [upscaled], [f"Workflow step: {index} upscale, Scale: {step.scale}, "
                                                       f"Upscaler: {step.upscaler or 'default'}"])

    # ---- helpers --------------------------------------------------------------------------------------
    def _sample(self, index, step, size, controls, extra) -> StepOutput:
        results, texts = [], []
        for seed in self._seeds(step):
            results.append(self.host.txt2img(step.prompt, step.negative_prompt, controls=controls,
                                             lora=self._lora(step), steps=step.steps, cfg=step.cfg_scale,
                                             seed=seed, sampler=step.sampler, size=size))
            texts.append(_infotext(step, index, seed, size, extra))
        return StepOutput(index, step.op, results, texts)

    def _reference_face(self, identity: str) -> Image.Image:
        if self.generation is None:
            raise WorkflowError(f"identity {identity!r}: no identity store is configured for reference faces")
        return Image.fromarray(self.generation.identity(identity).reference_image)

    def _seeds(self, step) -> list[int]:
        first = step.seed if step.seed >= 0 else random.randrange(2**31)  # noqa: S311 - a seed, not a secret
        return [first + offset for offset in range(step.samples)]

    def _lora(self, step) -> list[tuple[str, float]]:
        return [(step.identity, step.lora_weight)] if step.identity and step.lora_weight > 0 else []

    def _check_identities(self, index: int, step) -> None:
        if step.op == "portrait" and self.generation is not None:
            for name in step.identities:
                try:
                    self.generation.identity(name)
                except PortraitError as error:
                    raise WorkflowError(f"steps[{index}] (portrait): {error}") from None
        elif getattr(step, "identity", None) and \
                not (Path(self.host.lora_dir()) / f"{_identity_id(index, step)}.safetensors").is_file():
            raise WorkflowError(f"steps[{index}] ({step.op}): identity {step.identity!r} has no LoRA in "
                                    f"{self.host.lora_dir()}; train it first")

    def _default_side(self) -> int:
        return model_family(getattr(self.host, "family", "sd15")).resolution

    def _pose_map(self, image: Image.Image, index: int, name: str | None, size: tuple[int, int]) -> Image.Image:
        """The OpenPose skeleton of the person in `image`, drawn at `size` (drawn, not resized: the
        ControlNet reads the exact OpenPose colours)."""
        from portrait_core.generate.pose import NoPersonError, PoseExtractor, draw_openpose, extract_pose

        if self._pose_extractor is None:
            self._pose_extractor = PoseExtractor()  # kept: the pose model loads once per runner
        try:
            pose = extract_pose(image, name=name or f"the output of step {index - 1}", extractor=self._pose_extractor)
        except NoPersonError as error:
            raise WorkflowError(f"steps[{index}]: {error}") from None
        return draw_openpose(size, pose)


def _identity_id(index: int, step) -> str:
    """The step's identity, checked as every identity id is (length, characters) before it names a file."""
    try:
        return validate_identity_id(step.identity)
    except IdentityError as error:
        raise WorkflowError(f"steps[{index}] ({step.op}): identity: {error}") from None


def _input(name: str | None, images: dict[str, Image.Image], previous: Image.Image | None) -> Image.Image:
    return (images[name] if name else previous).convert("RGB")


def _step_size(step, source: tuple[int, int]) -> tuple[int, int]:
    """The step's width/height, else the input image's size (width, height) rounded down to a multiple of 8."""
    width = step.width or max(64, source[0] // 8 * 8)
    height = step.height or max(64, source[1] // 8 * 8)
    return (min(width, 2048), min(height, 2048))


def _scaled(size: tuple[int, int], scale: float) -> tuple[int, int]:
    return (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))


def _infotext(step, index: int, seed: int, size: tuple[int, int], extra: dict) -> str:
    pairs = {"Steps": step.steps, "Sampler": step.sampler, "CFG scale": step.cfg_scale, "Seed": seed,
             "Size": f"{size[0]}x{size[1]}", "Workflow step": f"{index} {step.op}", **extra}
    if step.identity:
        pairs["Portrait identities"] = step.identity
        pairs["LoRA weight"] = step.lora_weight
    text = ", ".join(f"{key}: {value}" for key, value in pairs.items())
    return f"{step.prompt}\nNegative prompt: {step.negative_prompt}\n{text}"
