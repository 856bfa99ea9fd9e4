"""The two-pass template pipeline: render trained identities into the faces of a template photo.

For each assigned face, on a crop around it (so big templates stay fast and the background is never
regenerated): face fusion before -> the reference face pasted by a five-point similarity transform
(source of the openpose control) -> pass 1 inpaints the face with canny + openpose + color controls
and the LoRA -> color transfer -> face fusion after -> pass 2 inpaints the ring around the face with
canny + tile -> color transfer -> optional skin retouch -> face restoration. The crop is then pasted
back, and the new face is scored against the user's photos.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from portrait_core.core import face_imaging
from portrait_core.errors import InputImageError, ModelUnavailableError, PortraitError
from portrait_core.faces.base import Face, FaceAnalyzer, similarity
from portrait_core.generate.identity import IdentityAssets, IdentityNotReadyError
from portrait_core.generate.pose import face_pose_map
from portrait_core.hosts.base import Control, Host
from portrait_core.log import get_logger
from portrait_core.params import GenerateParams, output_size_problem

log = get_logger("generate")

IP_ADAPTER_BESIDE_LORA, IP_ADAPTER_ALONE = 0.0, 0.6
# Images (templates, and reference faces pasted into them) whose faces a generator remembers: a few kB of
# landmarks each, the images themselves are not kept.
TEMPLATE_FACES_KEPT = 32


class TemplateError(PortraitError):
    """A template cannot be used: no face, too few faces, unreadable, too large."""


def check_template_size(template: Image.Image, params: GenerateParams, template_name: str) -> None:
    """TemplateError naming the template when its portrait (the template's size x `params.upscale`) would be
    larger than the output limits of `portrait_core.params`."""
    width, height = (max(1, round(side * params.upscale)) for side in template.size)
    problem = output_size_problem(width, height)
    if problem:
        upscaled = f" upscaled x{params.upscale:g}" if params.upscale > 1 else ""
        raise TemplateError(f"template {template_name} ({template.width}x{template.height} px{upscaled}) is too "
                            f"large: {problem}; use a smaller template or a lower upscale")


@dataclass
class FaceResult:
    identity: str
    box: list[float]
    identity_score: float | None


@dataclass
class PortraitResult:
    image: Image.Image
    template: str
    seed: int
    faces: list[FaceResult]
    seconds: float
    notes: list[str] = field(default_factory=list)
    diffusion_seconds: float = 0.0

    @property
    def score(self) -> float:
        """Mean identity score over the faces (a face where none was found counts as 0)."""
        scores = [f.identity_score or 0.0 for f in self.faces]
        return sum(scores) / len(scores) if scores else 0.0


class _TimedHost:
    """Adds up the time spent inside the host's diffusion calls (for the benchmark and results)."""

    def __init__(self, host: Host):
        self.host, self.seconds = host, 0.0

    def inpaint(self, *args, **kwargs) -> Image.Image:
        started = time.perf_counter()
        try:
            return self.host.inpaint(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - started


class PortraitGenerator:
    """Renders identities into templates on a Host; keeps the host's models and the face models loaded."""

    def __init__(self, host: Host, analyzer: FaceAnalyzer):
        self.host = host
        self.analyzer = analyzer
        self._found: OrderedDict[tuple, tuple[Face, ...]] = OrderedDict()
        self._found_guard = threading.Lock()

    def generate(self, template: Image.Image, identities: list[IdentityAssets], params: GenerateParams, *,
                 template_name: str = "template") -> list[PortraitResult]:
        """One result per seed (`params.batch` of them), best identity score first."""
        check_template_size(template, params, template_name)
        if template.mode != "RGB":  # 16-bit and float scaled, alpha on white: not clipped by convert("RGB")
            from portrait_core.prepare.photos import to_rgb

            template = Image.fromarray(to_rgb(template))
        faces = self.assign_faces(template, identities, params, template_name)
        first_seed = params.seed if params.seed >= 0 else random.randrange(2**31)  # noqa: S311 - a seed, not a secret
        params, notes = self._controls_this_host_has(params)
        passes = 1 + _runs_second_pass(params)
        self.host.progress(0, len(faces) * passes * params.batch, f"Portrait Studio: {template_name}")
        results = [self._render(template, faces, params, seed=first_seed + offset, template_name=template_name,
                                notes=list(notes)) for offset in range(params.batch)]
        return sorted(results, key=lambda result: -result.score)

    def assign_faces(self, template: Image.Image, identities: list[IdentityAssets], params: GenerateParams,
                     template_name: str) -> list[tuple[Face, IdentityAssets]]:
        """Template faces (left to right) paired with the identities, or per `params.face_order`."""
        faces = self.template_faces(template)
        if not faces:
            raise TemplateError(f"template {template_name} has no face that can be found; choose a photo "
                                "with a clearly visible face")
        order = params.face_order or list(range(len(identities)))
        if max(order) >= len(faces):
            raise TemplateError(f"template {template_name} has {len(faces)} face(s) but face "
                                f"{max(order)} was asked for ({len(identities)} identities)")
        return [(faces[index], identity) for index, identity in zip(order, identities, strict=True)]

    def template_faces(self, template: Image.Image) -> list[Face]:
        """The template's faces, left to right (searched once per template: see `_remembered_faces`)."""
        return sorted(self._remembered_faces(np.asarray(template.convert("RGB"))), key=lambda f: f.box[0])

    def _remembered_faces(self, pixels: np.ndarray) -> tuple[Face, ...]:
        """The analyzer's faces in `pixels`, remembered for the last TEMPLATE_FACES_KEPT images searched this
        way: the next portrait of the same template (another seed, a second click) searches neither the
        template nor the reference face pasted into it again. Remembered faces are read-only."""
        key = (pixels.shape, hashlib.blake2b(np.ascontiguousarray(pixels).data, digest_size=16).digest())
        with self._found_guard:
            if key in self._found:
                self._found.move_to_end(key)
                return self._found[key]
        faces = tuple(self.analyzer.detect(pixels))
        for face in faces:
            for array in (face.points, face.landmarks):
                if array is not None:
                    array.flags.writeable = False
        with self._found_guard:
            self._found[key] = faces
            while len(self._found) > TEMPLATE_FACES_KEPT:
                self._found.popitem(last=False)
        return faces

    def _render(self, template: Image.Image, faces: list[tuple[Face, IdentityAssets]], params: GenerateParams, *,
                seed: int, template_name: str, notes: list[str]) -> PortraitResult:
        started = time.perf_counter()
        timed = _TimedHost(self.host)
        image = template.convert("RGB")
        for face, identity in faces:
            image = self._render_face(image, face, identity, params, seed=seed, host=timed, notes=notes)
        if params.upscale > 1.0:
            image = self.host.upscale(image, params.upscale)
        results = self.identity_scores(image, faces, params)
        return PortraitResult(image, template_name, seed, results, time.perf_counter() - started,
                              notes, timed.seconds)

    def _controls_this_host_has(self, params: GenerateParams) -> tuple[GenerateParams, list[str]]:
        """The colour control is the one a portrait can do without: where the host has no colour model for
        its checkpoint's family (SDXL has none), it is left out with a note instead of refusing the portrait.
        Every other missing control still refuses, naming the file to install."""
        if params.color_weight <= 0 or "color" in self.host.controlnet_models():
            return params, []
        family = getattr(self.host, "family", None)  # both hosts know it; the protocol does not require it
        if family is None:
            current = self.host.current_checkpoint()
            family = current.family if current is not None else "sd15"
        why = ("no colour ControlNet or T2I-Adapter exists for SDXL" if family == "sdxl" else
               "no colour model is installed (t2iadapter_color_sd14v1 in the ControlNet models folder)")
        return (params.copy(update={"color_weight": 0.0}),
                [f"colour control left out: {why}; pass 1 ran with the other controls"])

    def _render_face(self, image: Image.Image, face: Face, identity: IdentityAssets, params: GenerateParams, *,
                     seed: int, host: _TimedHost, notes: list[str]) -> Image.Image:
        crop = face_imaging.crop_around_face(image, face.box, scale=params.crop_scale, short_side=params.crop_size)
        points = crop.to_crop(face.points)
        work = crop.image
        size = work.size
        if params.face_fusion_before > 0:
            work = face_imaging.fuse_faces(work, identity.reference_image, points, identity.reference_points,
                                           ratio=params.face_fusion_before)
        first = self._first_pass(work, points, identity, params, seed=seed, host=host)
        if params.color_transfer:
            first = _face_color_transfer(first, crop.image, points)
        if params.face_fusion_after > 0:
            first = face_imaging.fuse_faces(first, identity.reference_image, points, identity.reference_points,
                                            ratio=params.face_fusion_after)
        final = self._second_pass(first, points, identity, params, seed=seed, host=host)
        if params.color_transfer:
            final = _face_color_transfer(final, crop.image, points)
        if params.skin_retouch > 0:
            final = face_imaging.smooth_skin(final, face_imaging.face_mask(size, points=points, dilation=0.0),
                                             params.skin_retouch)
        final = self._restore(final, params, notes)
        return face_imaging.paste_crop_back(image, final, crop.box)

    def _first_pass(self, work: Image.Image, points: np.ndarray, identity: IdentityAssets,
                    params: GenerateParams, *, seed: int, host: _TimedHost) -> Image.Image:
        pasted = face_imaging.paste_aligned_face(work, identity.reference_image, identity.reference_points,
                                                 points).image
        pose_face = self._face_in(pasted, points)
        controls = [Control("canny", work, params.canny_weight, end=params.canny_end),
                    Control("openpose", face_pose_map(work.size, pose_face), params.openpose_weight,
                            preprocessed=True),
                    Control("color", work, params.color_weight, end=params.color_end)]
        controls += self._ip_adapter(identity, params)
        mask = face_imaging.face_mask(work.size, points=points, dilation=0.1)
        return host.inpaint(work, mask, self.prompt(identity, params), params.negative_prompt,
                            controls=[c for c in controls if c.weight > 0], lora=self._lora(identity, params),
                            steps=params.first_pass_steps, denoise=params.first_pass_denoise,
                            cfg=params.cfg_scale, seed=seed, sampler=params.sampler, size=work.size)

    def _second_pass(self, image: Image.Image, points: np.ndarray, identity: IdentityAssets,
                     params: GenerateParams, *, seed: int, host: _TimedHost) -> Image.Image:
        if not _runs_second_pass(params):
            return image
        controls = [Control("canny", image, params.second_canny_weight), Control("tile", image, params.tile_weight)]
        ring = face_imaging.face_ring_mask(image.size, points=points)
        return host.inpaint(image, ring, self.prompt(identity, params), params.negative_prompt,
                            controls=[c for c in controls if c.weight > 0], lora=self._lora(identity, params),
                            steps=params.second_pass_steps, denoise=params.second_pass_denoise,
                            cfg=params.cfg_scale, seed=seed, sampler=params.sampler, size=image.size)

    def _face_in(self, image: Image.Image, points: np.ndarray) -> Face:
        """The face found where `points` are (for its dense landmarks), else one made of the five points.

        The face was pasted there, so only a region around the points is searched, not the whole crop."""
        left, top, right, bottom = _region_around(points, image.size)
        region = np.ascontiguousarray(np.asarray(image)[top:bottom, left:right])
        match = _face_at(self._remembered_faces(region), points.mean(axis=0) - (left, top))
        if match is not None:
            return match.in_crop(-left, -top)
        x0, y0 = points.min(axis=0)
        x1, y1 = points.max(axis=0)
        return Face(box=(float(x0), float(y0), float(x1), float(y1)), confidence=0.0, points=points)

    def check_ready(self, identity: IdentityAssets, params: GenerateParams) -> None:
        """IdentityNotReadyError when this host cannot render `identity` with `params` (no LoRA and no
        image prompt): asked before anything runs or is queued."""
        self._ip_adapter_weight(identity, params)

    def _ip_adapter_weight(self, identity: IdentityAssets, params: GenerateParams) -> float:
        weight = params.ip_adapter_weight
        if weight is None:
            weight = IP_ADAPTER_BESIDE_LORA if identity.has_lora else IP_ADAPTER_ALONE
        if weight > 0 and "ip_adapter" not in self.host.controlnet_models():
            raise IdentityNotReadyError(
                f"identity {identity.id!r} has no LoRA yet and this host offers no image-prompt (IP-Adapter) "
                f"control for a tuning-free portrait: train it first (python -m portrait_core train --id "
                f"{identity.id})" if not identity.has_lora else
                "an IP-Adapter weight was set but this host has no IP-Adapter model")
        return weight

    def _ip_adapter(self, identity: IdentityAssets, params: GenerateParams) -> list[Control]:
        weight = self._ip_adapter_weight(identity, params)
        if weight <= 0:
            return []
        return [Control("ip_adapter", Image.fromarray(identity.reference_image), weight, preprocessed=True)]

    def _lora(self, identity: IdentityAssets, params: GenerateParams) -> list[tuple[str, float]]:
        """By name: every host looks it up in its own LoRA folder (the WebUI's through `<lora:...>`)."""
        return [(identity.id, params.lora_weight)] if identity.has_lora and params.lora_weight > 0 else []

    @staticmethod
    def prompt(identity: IdentityAssets, params: GenerateParams) -> str:
        parts = [identity.trigger, "a photo of a person", params.prompt.strip()]
        return ", ".join(part for part in parts if part)

    def _restore(self, image: Image.Image, params: GenerateParams, notes: list[str]) -> Image.Image:
        if not params.restore_faces:
            return image
        try:
            return self.host.restore_faces(image, params.codeformer_weight)
        except ModelUnavailableError as error:
            if str(error) not in notes:
                notes.append(f"face restoration skipped: {error}")
            return image

    def identity_scores(self, image: Image.Image, faces: list[tuple[Face, IdentityAssets]],
                        params: GenerateParams) -> list[FaceResult]:
        """For each template face, the similarity of the face now at its place to its identity's photos (None
        when none is found there). Each face is looked for only in a region around its place: the detector's
        time grows with the pixels it searches, and there the face has the size the detector likes best."""
        scale = params.upscale if params.upscale > 1.0 else 1.0
        pixels = np.asarray(image.convert("RGB"))
        results = []
        for face, identity in faces:
            centre = np.array([(face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2]) * scale
            left, top, right, bottom = _region_around(face.points * scale, image.size)
            match = _face_at(self.analyzer.detect(np.ascontiguousarray(pixels[top:bottom, left:right])),
                             centre - (left, top))
            score = None if match is None else round(
                float(similarity(self.analyzer.embed(pixels, match.in_crop(-left, -top)), identity.centre)), 4)
            results.append(FaceResult(identity.id, face.box_list(), score))
        return results


def _runs_second_pass(params: GenerateParams) -> bool:
    """Pass 2 runs when its denoise leaves it at least one step."""
    return params.second_pass_denoise > 0 and int(params.second_pass_steps * params.second_pass_denoise) >= 1


def _face_at(faces: list[Face], point: np.ndarray) -> Face | None:
    """The first of `faces` (largest first, as detected) whose box holds `point`."""
    for face in faces:
        x0, y0, x1, y1 = face.box
        if x0 <= point[0] <= x1 and y0 <= point[1] <= y1:
            return face
    return None


def _region_around(points: np.ndarray, size: tuple[int, int], factor: float = 5.0) -> tuple[int, int, int, int]:
    """A square of `factor` x the five points' span around them, clipped to an image of `size`: the face
    (about 2.2 spans wide), the context a detector wants, and the face mesh's own crop (twice the face)."""
    centre = points.mean(axis=0)
    half = max(float(np.ptp(points, axis=0).max()) * factor / 2, 16.0)
    left, top = (max(0, int(np.floor(c - half))) for c in centre)
    right, bottom = (min(side, int(np.ceil(c + half))) for c, side in zip(centre, size, strict=True))
    return left, top, right, bottom


def _face_color_transfer(image: Image.Image, reference: Image.Image, points: np.ndarray) -> Image.Image:
    """Pull the face region's colours toward the template face's, so the new face sits in the template's light."""
    mask = face_imaging.face_mask(image.size, points=points, dilation=0.0)
    if not np.asarray(mask).any():
        raise InputImageError("the face region is empty; cannot transfer colours")
    return face_imaging.lab_color_transfer(image, reference, target_mask=mask, reference_mask=mask)
