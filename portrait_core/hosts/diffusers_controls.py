"""How the standalone host spends its control networks: only inside each control's window, adapters once.

* ControlNets: diffusers' pipelines multiply a control's scale by 0 outside its start/end window but
  still run its network at every step. `WindowedControlNets` skips a network whose scale is 0 for the
  step; a zero residual added or not adds nothing, so results are the same and the skipped forwards
  are saved. Each network's conditioning embedding (the convolutions that turn the control image into
  features, at the image's full size) runs once per call instead of at every step (`cache_conditioning`):
  the pipeline passes the same image tensor at every step, so its embedding is the same too.
* T2I-Adapters (the colour control, as the WebUI runs it with `t2iadapter_color_sd14v1`): the adapter
  runs once per call on its control map; `AdapterResiduals` adds those features inside the UNet's down
  blocks (`down_intrablock_additional_residuals`) at every step of the control's window. No diffusers
  pipeline combines an adapter with ControlNets in one inpaint call, so the features go in through a
  forward pre-hook on the UNet, held only for the call.
* `skip_masked_image_encode`: diffusers' inpaint pipelines VAE-encode the masked image even for a
  4-channel UNet, which never reads it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from diffusers.pipelines.controlnet import MultiControlNetModel
from PIL import Image

from portrait_core.errors import ControlError
from portrait_core.hosts.base import Control

ADAPTER_KINDS = ("color",)  # control kinds a T2I-Adapter can run (in a t2iadapter-<kind>/ folder)


def window_keeps(start: float, end: float, steps: int) -> list[bool]:
    """Whether a control acts at each of `steps` denoising steps: diffusers' rule for ControlNets (a step
    counts when it lies wholly inside [start, end]), used for adapters too so both agree."""
    return [not (index / steps < start or (index + 1) / steps > end) for index in range(steps)]


def cache_conditioning(net) -> None:
    """Make `net`'s conditioning embedding compute once per control image (idempotent).

    The cache keeps the input tensor itself: while it is held no other tensor can take its identity, and
    an in-place change to it (a new `_version`) computes the embedding again. Only the forward of that one
    module changes; the network's modules and weights stay as they are."""
    embedding = net.controlnet_cond_embedding
    if "forward" in vars(embedding):
        return
    compute = embedding.forward
    held: dict = {}

    def forward(conditioning):
        if held.get("input") is not conditioning or held["version"] != conditioning._version:
            held.update(input=conditioning, version=conditioning._version, output=compute(conditioning))
        return held["output"]

    embedding.forward = forward


class WindowedControlNets(MultiControlNetModel):
    """MultiControlNetModel that runs only the networks whose scale is non-zero at this step (and, with
    `cache=True`, each network's conditioning embedding once per control image)."""

    forward_calls = 0  # network forwards run (instance attribute once counted; the benchmark reads it)

    def __init__(self, controlnets, *, cache: bool = True):
        super().__init__(controlnets)
        if cache:
            for net in self.nets:
                cache_conditioning(net)

    def forward(self, sample, timestep, encoder_hidden_states, controlnet_cond, conditioning_scale,  # noqa: PLR0917 - diffusers calls it so
                class_labels=None, timestep_cond=None, attention_mask=None, added_cond_kwargs=None,
                cross_attention_kwargs=None, guess_mode=False, return_dict=True):
        active = [index for index, scale in enumerate(conditioning_scale) if scale != 0]
        if not active:
            if not guess_mode:
                return None, None  # the UNet then runs without ControlNet residuals, as it would with zeros
            active = [0]  # guess mode pads the result with zeros for the unconditional half: it needs tensors
        down_total = mid_total = None
        for index in active:
            down, mid = self.nets[index](
                sample=sample, timestep=timestep, encoder_hidden_states=encoder_hidden_states,
                controlnet_cond=controlnet_cond[index], conditioning_scale=conditioning_scale[index],
                class_labels=class_labels, timestep_cond=timestep_cond, attention_mask=attention_mask,
                added_cond_kwargs=added_cond_kwargs, cross_attention_kwargs=cross_attention_kwargs,
                guess_mode=guess_mode, return_dict=False)
            self.forward_calls += 1
            if down_total is None:
                down_total, mid_total = list(down), mid
            else:
                down_total = [total + part for total, part in zip(down_total, down, strict=True)]
                mid_total = mid_total + mid
        return down_total, mid_total


def check_adapter_fits(kind: str, path: Path, unet, base_name: str) -> None:
    """ControlError when the adapter at `path` would not fit `unet`'s down blocks (another model family)."""
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ControlError(f"T2I-Adapter {kind!r} at {path} is unusable: "
                           f"config.json cannot be read ({error})") from None
    channels = list(config.get("channels") or [])
    widths = channels + channels[-1:] if config.get("adapter_type") == "light_adapter" else channels
    wanted = list(unet.config.block_out_channels)
    if widths != wanted:
        raise ControlError(f"T2I-Adapter {kind!r} at {path} gives features of widths {widths}, but the base model "
                           f"{base_name}'s down blocks are {wanted} wide: use an adapter made for this model family")


def adapter_input(control_map: Image.Image, device, dtype) -> torch.Tensor:
    """A control map as an adapter reads it: (1, 3, H, W) in [0, 1]."""
    pixels = np.asarray(control_map.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(pixels.transpose(2, 0, 1)[None]).to(device=device, dtype=dtype)


class AdapterResiduals:
    """Adds T2I-Adapter features inside `unet`'s down blocks while the `with` block runs.

    `adapters`: (adapter model, its control, its map). Each adapter runs once, here; its features, times
    the control's weight, are summed with the others' and added at each step inside the control's
    window. `step` is the index of the step about to run (the host's step callback advances it);
    `total_steps()` is the pipeline's number of steps (known once it has set its timesteps)."""

    def __init__(self, unet, adapters: Sequence[tuple[object, Control, Image.Image]],
                 total_steps: Callable[[], int]):
        self.unet = unet
        self.total_steps = total_steps
        self.step = 0
        self.adapter_forwards = 0
        self._scheduled = []  # (control, features)
        for adapter, control, control_map in adapters:
            with torch.no_grad():
                features = adapter(adapter_input(control_map, unet.device, unet.dtype))
            self.adapter_forwards += 1
            self._scheduled.append((control, [feature * control.weight for feature in features]))
        self._handle = None

    def residuals(self, batch: int) -> list[torch.Tensor] | None:
        """The features to add at the current step for a UNet batch of `batch`, None outside every window."""
        total = max(1, self.total_steps())
        summed = None
        for control, features in self._scheduled:
            if not window_keeps(control.start, control.end, total)[min(self.step, total - 1)]:
                continue
            summed = list(features) if summed is None else [a + b for a, b in zip(summed, features, strict=True)]
        if summed is None:
            return None
        return [feature.expand(batch, *feature.shape[1:]) for feature in summed]

    def _before_unet(self, module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        residuals = self.residuals(sample.shape[0])
        if residuals is not None:
            kwargs["down_intrablock_additional_residuals"] = residuals  # a fresh list: the UNet pops from it
        return args, kwargs

    def __enter__(self) -> AdapterResiduals:
        self._handle = self.unet.register_forward_pre_hook(self._before_unet, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


def skip_masked_image_encode(pipeline) -> None:
    """Stop `pipeline` (a diffusers inpaint pipeline around a 4-channel UNet) encoding the masked image.

    The SDXL pipelines' `prepare_mask_latents` encode nothing for a None image; the SD1.5 ones take a
    latent-shaped input as latents already, so a zero placeholder goes in. The 4-channel denoising loop
    never reads what comes out. The encode would have drawn one latent sample from the call's generator,
    which ancestral samplers go on drawing from: the same draw is made here, so every image stays exactly
    as diffusers makes it."""
    if pipeline.unet.config.in_channels != 4:
        return  # a 9-channel inpainting UNet reads the masked image's latents
    from diffusers.utils.torch_utils import randn_tensor

    prepare = pipeline.prepare_mask_latents
    takes_none = type(pipeline).__name__.startswith("StableDiffusionXL")

    def prepare_mask_latents(mask, masked_image, batch_size, height, width,  # noqa: PLR0917 - diffusers' signature
                             dtype, device, generator, do_classifier_free_guidance):
        if masked_image is None or isinstance(generator, list):
            return prepare(mask, masked_image, batch_size, height, width, dtype, device, generator,
                           do_classifier_free_guidance)
        scale = pipeline.vae_scale_factor
        shape = (masked_image.shape[0], pipeline.vae.config.latent_channels, height // scale, width // scale)
        randn_tensor(shape, generator=generator, device=device, dtype=pipeline.vae.dtype)  # the encode's draw
        placeholder = None if takes_none else torch.zeros(shape, dtype=dtype, device=device)
        return prepare(mask, placeholder, batch_size, height, width, dtype, device, generator,
                       do_classifier_free_guidance)

    pipeline.prepare_mask_latents = prepare_mask_latents
