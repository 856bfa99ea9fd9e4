"""The training run itself: load, add LoRA adapters, cache latents, step, checkpoint, validate, merge."""

from __future__ import annotations

import argparse
import re
import time
from dataclasses import dataclass
from pathlib import Path

from portrait_core.errors import InputImageError
from portrait_core.log import get_logger
from portrait_core.models.checkpoints.hashes import model_short_hash
from portrait_core.models.families import family as model_family
from portrait_core.models.families import family_of_components
from portrait_core.training import kohya
from portrait_core.training.dataset import LatentCache, list_examples, load_square
from portrait_core.training.merge import ValidationScore, checkpoint_weights, weighted_average_loras
from portrait_core.training.trainer import (
    CHECKPOINT_GLOB,
    TEXT_TARGETS,
    TRAINER_VERSION,
    UNET_TARGETS,
    ProgressLog,
    TrainingState,
    default_rank_alpha,
    eta_text,
    planned_steps,
)

log = get_logger("trainer")


@dataclass
class TrainingSetup:
    """Everything the step loop needs, built once."""

    accelerator: object
    components: object
    trainable: dict  # component name -> model carrying LoRA adapters
    optimizer: object
    noise_scheduler: object
    cache: LatentCache
    token_ids: list  # per text encoder: tensor (images of this process, 77)
    rank: int
    alpha: float
    resolution: int
    n_images: int  # the whole dataset's; under several processes each trains on its own share (`cache.count`)


def run_training(args: argparse.Namespace, progress: ProgressLog) -> Path:
    import torch

    torch.manual_seed(args.seed)
    progress.write("loading", step=0, total=0)
    setup = build_setup(args, progress)
    state = TrainingState(total=planned_steps(setup.n_images, args.steps_per_photo, args.max_steps))
    state.step = state.first_step = resume_if_possible(args, setup)
    scores = _previous_scores(args.output_dir)
    validator = _make_validator(args, setup) if setup.accelerator.is_main_process else None
    # Every process draws its own noise, timesteps and flips (process 0 the same as a single process would).
    generator = torch.Generator().manual_seed(args.seed + state.step + 1_000_003 * setup.accelerator.process_index)
    log.info("training %s: %d images, %d steps (from %d), rank %d, alpha %g", args.identity, setup.n_images,
             state.total, state.step, setup.rank, setup.alpha)
    while state.step < state.total:
        loss = train_one_step(setup, args, generator)
        state.step += 1
        state.losses.append(loss)
        progress.write("training", step=state.step, total=state.total, loss=round(loss, 5),
                       eta_s=_rounded(state.eta_seconds()))
        if state.step % args.validate_every == 0 or state.step == state.total:
            scores += checkpoint_and_validate(args, setup, state, validator, progress)
            if _should_stop_early(args, state, scores):
                progress.write("early_stop", step=state.step, total=state.total)
                break
    final = finish(args, setup, state, scores, progress)
    progress.write("merged", step=state.step, total=state.total, identity_score=state.best_score)
    return final


def build_setup(args: argparse.Namespace, progress: ProgressLog | None = None) -> TrainingSetup:
    import torch
    from accelerate import Accelerator

    from portrait_core.models.checkpoints.loading import load_components

    precision = args.mixed_precision
    if precision == "auto":
        precision = "fp16" if torch.cuda.is_available() else "no"
    accelerator = Accelerator(gradient_accumulation_steps=args.grad_accum, mixed_precision=precision)
    components = load_components(args.base_model)
    family = components.family.replace("-inpaint", "")
    rank, alpha = default_rank_alpha(family, args.rank, args.alpha)
    resolution = args.resolution or model_family(family).resolution
    trainable = _add_adapters(components, rank, alpha, accelerator.device)
    all_examples = list_examples(args.dataset, args.caption or f"a photo of {args.identity}")
    # Data parallel (`accelerate launch --num_processes N`): each process encodes and trains on its own share
    # of the photos (accelerate's split; the last photo repeats when there are fewer photos than processes).
    with accelerator.split_between_processes(all_examples, apply_padding=True) as share:
        examples = list(share)
    _log_shares(accelerator, examples)
    images = [load_square(example.image_path, resolution) for example in examples]
    components.vae.to(accelerator.device)
    # On a CPU one image at a time encodes faster than batches (measured 1.3 vs 2.0 s for 10 images at 512 px:
    # a batch's activations outgrow the caches); on a GPU batches of 4 keep it busy. Same latents either way.
    cache = LatentCache(components.vae, images, str(accelerator.device), on_progress=_encoding_reporter(progress),
                        batch_size=1 if accelerator.device.type == "cpu" else 4)
    token_ids = _tokenize(components, [example.caption for example in examples])
    optimizer = _optimizer(trainable, args.learning_rate, args.text_encoder_lr_ratio)
    if torch.cuda.is_available():
        components.unet.enable_gradient_checkpointing()
    prepared = accelerator.prepare(optimizer, *trainable.values())
    optimizer, models = prepared[0], prepared[1:]
    trainable = dict(zip(trainable, models, strict=True))
    return TrainingSetup(accelerator, components, trainable, optimizer, _noise_scheduler(components), cache,
                         token_ids, rank, alpha, resolution, len(all_examples))


def _log_shares(accelerator, examples: list) -> None:
    """Under several processes, the main one says which photos each process trains on (gathered from them)."""
    if accelerator.num_processes == 1:
        return
    from accelerate.utils import gather_object

    shares = gather_object([[example.image_path.name for example in examples]])
    log.info("data parallel: %d processes (%s, %s); photos per process: %s", accelerator.num_processes,
             accelerator.distributed_type.value, getattr(accelerator.state, "backend", None) or "?",
             "; ".join(f"{index}: {', '.join(names)}" for index, names in enumerate(shares)))


def check_processes_agree(setup: TrainingSetup) -> None:
    """Under several processes: the LoRA weights must be the same in all of them (gradients averaged every
    optimizer step keep them so); a difference means the processes trained apart, and is an error."""
    if setup.accelerator.num_processes == 1:
        return
    import torch
    from accelerate.utils import gather_object

    with torch.no_grad():
        fingerprint = float(sum(p.double().abs().sum() + p.double().sum() * 1e-3
                                for model in setup.trainable.values() for p in model.parameters() if p.requires_grad))
    fingerprints = gather_object([fingerprint])
    if max(fingerprints) - min(fingerprints) > 1e-9 * max(1.0, abs(fingerprints[0])):
        raise RuntimeError(f"the {len(fingerprints)} training processes hold different LoRA weights "
                           f"({fingerprints}): their gradients were not averaged")
    log.info("the LoRA weights are identical in all %d processes", len(fingerprints))


def _encoding_reporter(progress: ProgressLog | None):
    """Progress records for the VAE pre-encoding: phase `encoding`, images done of total, an ETA."""
    if progress is None:
        return None
    started = time.perf_counter()

    def report(done: int, total: int) -> None:
        eta = (time.perf_counter() - started) / done * (total - done) if done else None
        progress.write("encoding", step=done, total=total, eta_s=_rounded(eta))

    return report


def _add_adapters(components, rank: int, alpha: float, device) -> dict:
    from peft import LoraConfig, inject_adapter_in_model

    trainable = {}
    for name in ("text_encoder", "text_encoder_2", "unet"):
        model = getattr(components, name, None)
        if model is None:
            continue
        model.requires_grad_(False)
        targets = UNET_TARGETS if name == "unet" else TEXT_TARGETS
        config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, init_lora_weights="gaussian")
        inject_adapter_in_model(config, model)
        for parameter_name, parameter in model.named_parameters():
            parameter.requires_grad_("lora_" in parameter_name)
            if "lora_" in parameter_name:
                parameter.data = parameter.data.float()
        model.to(device).train()
        trainable[name] = model
    return trainable


def _optimizer(trainable: dict, learning_rate: float, text_ratio: float):
    import torch

    groups = []
    for name, model in trainable.items():
        params = [p for p in model.parameters() if p.requires_grad]
        groups.append({"params": params, "lr": learning_rate if name == "unet" else learning_rate * text_ratio})
    # The same AdamW update in one fused kernel over all LoRA tensors (torch >= 2.4 on the CPU, any recent
    # torch on CUDA); else the multi-tensor ("foreach") form. At small sizes the per-tensor loop of the plain
    # form is a tenth of a step: a LoRA has hundreds of small tensors.
    try:
        return torch.optim.AdamW(groups, weight_decay=1e-2, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups, weight_decay=1e-2, foreach=True)


def _noise_scheduler(components):
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(components.scheduler.config)


def _tokenize(components, captions: list[str]) -> list:
    ids = []
    for tokenizer in (components.tokenizer, getattr(components, "tokenizer_2", None)):
        if tokenizer is None:
            continue
        encoded = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length,
                            truncation=True, return_tensors="pt")
        ids.append(encoded.input_ids)
    return ids


def train_one_step(setup: TrainingSetup, args: argparse.Namespace, generator) -> float:
    """One optimizer step: `grad_accum` micro-batches, each with fresh noise, timesteps and flips.

    Under several processes the gradients are averaged by accelerate's DDP wrappers at the last micro-batch
    (`accumulate` skips the exchange before it, for the UNet and, through `no_sync`, the text encoders too);
    the loss returned is the mean over the processes.
    """
    import contextlib

    import torch

    accelerator = setup.accelerator
    losses = []
    for _ in range(args.grad_accum):
        with contextlib.ExitStack() as stack:
            stack.enter_context(accelerator.accumulate(setup.trainable["unet"]))
            if not accelerator.sync_gradients:
                for name, model in setup.trainable.items():
                    if name != "unet":
                        stack.enter_context(accelerator.no_sync(model))
            loss = _micro_batch_loss(setup, args.batch_size, generator)
            accelerator.backward(loss)
            setup.optimizer.step()
            setup.optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach())
    mean = torch.stack(losses).mean()
    if accelerator.num_processes > 1:
        mean = accelerator.reduce(mean, reduction="mean")
    return float(mean)


def _micro_batch_loss(setup: TrainingSetup, batch_size: int, generator):
    import torch
    import torch.nn.functional as F  # noqa: N812 - the usual name

    indices = torch.randint(0, setup.cache.count, (batch_size,), generator=generator)
    flips = torch.rand(batch_size, generator=generator) < 0.5
    latents = setup.cache.sample(indices, flips, generator)
    noise = torch.randn(latents.shape, generator=generator).to(latents.device)
    steps = setup.noise_scheduler.config.num_train_timesteps
    timesteps = torch.randint(0, steps, (batch_size,), generator=generator).to(latents.device)
    noisy = setup.noise_scheduler.add_noise(latents, noise, timesteps)
    conditioning = _text_conditioning(setup, indices)
    prediction = setup.trainable["unet"](noisy.to(setup.components.unet.dtype), timesteps, **conditioning).sample
    if setup.noise_scheduler.config.prediction_type == "v_prediction":
        target = setup.noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    return F.mse_loss(prediction.float(), target.float())


def _text_conditioning(setup: TrainingSetup, indices) -> dict:
    import torch

    device = setup.accelerator.device
    if "text_encoder_2" not in setup.trainable:
        hidden = setup.trainable["text_encoder"](setup.token_ids[0][indices].to(device))[0]
        return {"encoder_hidden_states": hidden}
    first = setup.trainable["text_encoder"](setup.token_ids[0][indices].to(device), output_hidden_states=True)
    second = setup.trainable["text_encoder_2"](setup.token_ids[1][indices].to(device), output_hidden_states=True)
    hidden = torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1)
    size = setup.resolution
    time_ids = torch.tensor([[size, size, 0, 0, size, size]] * len(indices), dtype=hidden.dtype, device=device)
    return {"encoder_hidden_states": hidden,
            "added_cond_kwargs": {"text_embeds": second.text_embeds, "time_ids": time_ids}}


def current_lora_layers(setup: TrainingSetup) -> dict:
    from peft import get_peft_model_state_dict

    family = family_of_components(setup.trainable).name
    layers = {}
    for name, model in setup.trainable.items():
        unwrapped = setup.accelerator.unwrap_model(model)
        prefix = kohya.COMPONENT_PREFIXES[family][name]
        layers.update(kohya.peft_to_kohya_layers(get_peft_model_state_dict(unwrapped), prefix, setup.alpha))
    return layers


def lora_metadata(args: argparse.Namespace, setup: TrainingSetup, steps: int) -> dict[str, str]:
    """Provenance, in the WebUI's `ss_*` keys and our own `portrait_studio.*` ones."""
    family = setup.components.family.replace("-inpaint", "")
    base = Path(args.base_model)
    return {
        "ss_base_model_version": model_family(family).kohya_version,
        "ss_network_module": "networks.lora", "ss_network_dim": str(setup.rank),
        "ss_network_alpha": str(setup.alpha), "ss_resolution": f"({setup.resolution}, {setup.resolution})",
        "ss_max_train_steps": str(steps), "ss_learning_rate": str(args.learning_rate),
        "ss_text_encoder_lr": str(args.learning_rate * args.text_encoder_lr_ratio),
        "ss_num_train_images": str(setup.n_images), "ss_sd_model_name": base.name,
        "ss_output_name": args.identity, "ss_training_comment": "Portrait Studio person LoRA",
        "portrait_studio.identity": args.identity, "portrait_studio.trainer": TRAINER_VERSION,
        "portrait_studio.family": family, "portrait_studio.base_model": base.name,
        "portrait_studio.base_model_hash": model_short_hash(base) or "",
    }


def checkpoint_and_validate(args, setup: TrainingSetup, state, validator, progress: ProgressLog) -> list:
    """Checkpoint + validation by the main process alone; every process then knows the scores (early stop)."""
    from accelerate.utils import broadcast_object_list

    from portrait_core.models.lora import write_lora_file

    path = args.output_dir / f"checkpoint-{state.step}.safetensors"
    check_processes_agree(setup)
    new_scores = [None]
    if setup.accelerator.is_main_process:
        _save_optimizer_state(setup, path)  # first: a checkpoint that exists always has its optimizer state
        write_lora_file(path, current_lora_layers(setup), lora_metadata(args, setup, state.step))
        if validator is None:
            new_scores = [[ValidationScore(path, state.step, None, None)]]
        else:
            progress.write("validating", step=state.step, total=state.total)
            new_scores = [validator(setup, path, state.step)]
        _record_scores(args.output_dir, new_scores[0])
    new_scores = broadcast_object_list(new_scores)[0]
    best = max((s.identity_score for s in new_scores if s.identity_score is not None), default=None)
    _update_best(state, best)
    progress.write("checkpoint", step=state.step, total=state.total, checkpoint=path.name, identity_score=best,
                   eta_s=_rounded(state.eta_seconds()))
    log.info("step %d/%d: checkpoint %s, identity score %s, eta %s", state.step, state.total, path.name,
             "n/a" if best is None else f"{best:.3f}", eta_text(state.eta_seconds()))
    return new_scores


def _update_best(state, best: float | None) -> None:
    if best is not None and (state.best_score is None or best > state.best_score):
        state.best_score = best
        state.validations_without_gain = 0
    else:
        state.validations_without_gain += 1


def _should_stop_early(args, state, scores) -> bool:
    return bool(args.early_stop_patience) and state.best_score is not None and \
        state.validations_without_gain >= args.early_stop_patience


def finish(args, setup: TrainingSetup, state, scores: list, progress: ProgressLog) -> Path:
    """The merge, by the main process alone (the others return at once: they have nothing to write)."""
    from portrait_core.models.lora import write_lora_file

    target = args.final_lora or args.output_dir / f"{args.identity}.safetensors"
    if not setup.accelerator.is_main_process:
        return target
    progress.write("merging", step=state.step, total=state.total)
    weights = checkpoint_weights(scores, args.merge_top)
    merged = weighted_average_loras(weights)
    metadata = lora_metadata(args, setup, state.step)
    metadata["portrait_studio.merged_from"] = ", ".join(f"{p.name}:{w:.3f}" for p, w in sorted(weights.items()))
    write_lora_file(target, merged, metadata)
    _keep_best_render(args, scores)
    if not args.keep_checkpoints:
        for _, checkpoint in list_checkpoints(args.output_dir):
            checkpoint.unlink()
            optimizer_state_path(checkpoint).unlink(missing_ok=True)
    return target


def _keep_best_render(args, scores: list) -> None:
    """The best-scoring validation render becomes the identity's face reference for generation."""
    from portrait_core.store import atomic_write_bytes

    rendered = [s for s in scores if s.identity_score is not None and s.image is not None and s.image.is_file()]
    if args.face_reference is None or not rendered:
        return
    best = max(rendered, key=lambda s: (s.identity_score, s.step))
    atomic_write_bytes(args.face_reference, best.image.read_bytes())


def resume_if_possible(args, setup: TrainingSetup) -> int:
    """Load the newest readable checkpoint in the output folder; return its step (0 when none)."""
    if args.no_resume:
        return 0
    for step, path in sorted(list_checkpoints(args.output_dir), reverse=True):
        try:
            _load_checkpoint_into(setup, path)
        except (OSError, ValueError, InputImageError) as error:
            log.warning("cannot resume from %s (%s); trying an older one", path.name, error)
            continue
        restored = _load_optimizer_state(setup, path)
        log.info("resuming from %s (%s)", path.name,
                 "optimizer state restored" if restored else "no optimizer state: AdamW starts afresh")
        return step
    return 0


def optimizer_state_path(checkpoint: Path) -> Path:
    """checkpoint-N.safetensors -> checkpoint-N.optimizer.pt: AdamW's moments, so a resume continues the
    same optimisation instead of restarting it from zero moments (a jump in the loss after every crash)."""
    return checkpoint.with_name(checkpoint.name.removesuffix(".safetensors") + ".optimizer.pt")


def _save_optimizer_state(setup: TrainingSetup, checkpoint: Path) -> None:
    import io

    import torch

    from portrait_core.store import atomic_write_bytes

    buffer = io.BytesIO()
    torch.save(setup.optimizer.state_dict(), buffer)
    atomic_write_bytes(optimizer_state_path(checkpoint), buffer.getvalue())


def _load_optimizer_state(setup: TrainingSetup, checkpoint: Path) -> bool:
    import pickle

    import torch

    path = optimizer_state_path(checkpoint)
    if not path.is_file():
        return False
    try:
        setup.optimizer.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except (OSError, ValueError, KeyError, RuntimeError, pickle.UnpicklingError) as error:
        log.warning("cannot restore the optimizer state %s (%s); AdamW starts afresh", path.name, error)
        return False
    return True


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    found = []
    for path in Path(folder).glob(CHECKPOINT_GLOB):
        match = re.fullmatch(r"checkpoint-(\d+)\.safetensors", path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def _load_checkpoint_into(setup: TrainingSetup, path: Path) -> None:
    from peft import set_peft_model_state_dict

    from portrait_core.models.lora import read_lora_file

    layers = read_lora_file(path)
    family = family_of_components(setup.trainable).name
    for name, model in setup.trainable.items():
        unwrapped = setup.accelerator.unwrap_model(model)
        names = [n for n, _ in unwrapped.named_modules()]
        state = kohya.kohya_to_peft_state(layers, kohya.COMPONENT_PREFIXES[family][name], names)
        set_peft_model_state_dict(unwrapped, state)


def _previous_scores(folder: Path) -> list:
    import json

    path = Path(folder) / "validation.jsonl"
    if not path.is_file():
        return []
    scores = []
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        checkpoint = Path(folder) / record["checkpoint"]
        if checkpoint.is_file():
            image = Path(folder) / record["image"] if record.get("image") else None
            scores.append(ValidationScore(checkpoint, record["step"], image, record.get("identity_score")))
    return scores


def _record_scores(folder: Path, scores: list) -> None:
    import json

    with (Path(folder) / "validation.jsonl").open("a", encoding="utf-8") as handle:
        for score in scores:
            handle.write(json.dumps({"checkpoint": score.checkpoint.name, "step": score.step,
                                     "image": score.image.name if score.image else None,
                                     "identity_score": score.identity_score}) + "\n")


def _make_validator(args, setup: TrainingSetup):
    if args.validation_dir is None:
        return None
    from portrait_core.training.validation import make_validator

    return make_validator(args, setup)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
