"""The trainer CLI run directly (no subprocess): SDXL keys, early stopping, scoring, the train command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from argparse import Namespace

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError
from safetensors import safe_open

from portrait_core.training.loop import _should_stop_early, _update_best
from portrait_core.training.trainer import TrainingState, main, parse_args
from tests.conftest import REPO_ROOT


def test_sdxl_tiny_model_trains_and_saves_te1_te2_keys(prepared_obama, tiny_sdxl, tmp_path):
    args = parse_args(["--base-model", str(tiny_sdxl), "--dataset", str(prepared_obama / "obama/dataset/images"),
                       "--output-dir", str(tmp_path / "run"), "--resolution", "64", "--max-steps", "2",
                       "--validate-every", "2", "--grad-accum", "1", "--identity", "obama"])
    assert main(args) == 0
    with safe_open(str(tmp_path / "run" / "obama.safetensors"), "pt") as handle:
        keys, metadata = list(handle.keys()), handle.metadata()
    prefixes = {key.split("_text_model")[0] for key in keys if key.startswith("lora_te")}
    assert prefixes == {"lora_te1", "lora_te2"}
    assert any(key.startswith("lora_unet_") for key in keys)
    assert metadata["ss_base_model_version"] == "sdxl_base_v1-0"
    assert (metadata["ss_network_dim"], metadata["ss_network_alpha"]) == ("32", "16.0")  # SDXL defaults


def test_bad_dataset_folder_is_a_clear_error(tmp_path, tiny_sd15, capsys):
    args = parse_args(["--base-model", str(tiny_sd15), "--dataset", str(tmp_path / "nothing"),
                       "--output-dir", str(tmp_path / "run")])
    assert main(args) == 1
    assert "dataset folder not found" in capsys.readouterr().err


def test_the_trainer_takes_its_settings_from_train_params(tmp_path):
    from portrait_core.params import TrainParams

    params_file = tmp_path / "params.json"
    params_file.write_text(TrainParams(identity="ana", max_train_steps=12, rank=8).json())
    paths = ["--base-model", "m", "--dataset", "d", "--output-dir", "o", "--params", str(params_file)]
    args = parse_args(paths)
    assert (args.identity, args.max_steps, args.rank, args.grad_accum) == ("ana", 12, 8, 4)  # 4: TrainParams' default
    assert parse_args([*paths, "--max-steps", "3"]).max_steps == 3, "a flag overrides the file"
    with pytest.raises(ValidationError, match="max_train_steps"):
        parse_args([*paths, "--max-steps", "0"])


def test_early_stop_after_k_validations_without_gain():
    args = Namespace(early_stop_patience=2)
    state = TrainingState(total=100)
    for score, stop in [(0.5, False), (0.6, False), (0.55, False), (0.58, True)]:
        _update_best(state, score)
        assert _should_stop_early(args, state, []) is stop
    assert state.best_score == 0.6
    assert not _should_stop_early(Namespace(early_stop_patience=0), state, [])


def test_identity_score_tells_the_person_apart(shared_faces_dir):
    from portrait_core.faces import get_face_analyzer
    from portrait_core.training.validation import identity_score

    analyzer = get_face_analyzer("embedded")

    def embed_and_mask(name):
        image = Image.open(shared_faces_dir / name).convert("RGB")
        face = analyzer.detect(np.asarray(image))[0]
        return image, analyzer.embed(np.asarray(image), face), Image.new("L", image.size, 255)

    obama, obama_vector, _ = embed_and_mask("obama.jpg")
    obama2, _, everywhere2 = embed_and_mask("obama2.jpg")
    biden, _, everywhere3 = embed_and_mask("biden.jpg")
    same = identity_score(analyzer, obama2, everywhere2, obama_vector)
    other = identity_score(analyzer, biden, everywhere3, obama_vector)
    assert same > other + 0.1
    nowhere = Image.new("L", obama.size, 0)
    assert identity_score(analyzer, obama, nowhere, obama_vector) is None


@pytest.mark.parametrize("command", [["train", "--id", "../evil"]])
def test_train_command_rejects_unsafe_ids(command, tmp_path):
    env = os.environ | {"PORTRAIT_HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "portrait_core", *command], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 1 and "identity" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "evil").exists()


def test_train_command_prepares_trains_and_prints_the_lora(shared_faces_dir, tmp_path, tiny_sd15):
    """`--root` is a whole home: identity, LoRA and jobs of one root never touch another's or the default's."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("obama.jpg", "obama2.jpg", "biden.jpg"):
        (photos / name).write_bytes((shared_faces_dir / name).read_bytes())
    env = os.environ | {"PORTRAIT_HOME": str(tmp_path / "default-home")}
    loras = {}
    for root, steps in ((tmp_path / "a", 4), (tmp_path / "b", 2)):
        result = subprocess.run(
            [sys.executable, "-m", "portrait_core", "train", "--id", "obama", "--photos", str(photos),
             "--root", str(root), "--base-model", str(tiny_sd15), "--max-steps", str(steps), "--validate-every",
             "2", "--resolution", "64", "--rank", "4"], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
            timeout=300, check=False)
        assert result.returncode == 0, result.stderr
        lora = root / "identities" / "obama.safetensors"
        assert f"LoRA: {lora}" in result.stdout and lora.is_file()
        assert "prepared 2 of 3 photos" in result.stdout and f"step {steps}/{steps}" in result.stdout
        [job_file] = (root / "jobs").glob("*.json")
        assert json.loads(job_file.read_text())["result_path"] == str(lora)
        loras[root] = lora.read_bytes()
    assert loras[tmp_path / "a"] != loras[tmp_path / "b"], "the second root overwrote the first one's LoRA"
    assert not (tmp_path / "default-home" / "identities").exists()
    assert not list((tmp_path / "default-home").glob("jobs/*.json"))


def test_the_trainers_optimizer_makes_plain_adamws_update():
    """The fused/multi-tensor AdamW the trainer picks for speed moves the LoRA weights as plain AdamW does."""
    import torch

    from portrait_core.training.loop import _optimizer

    torch.manual_seed(0)
    start = {name: [torch.randn(8, 4), torch.randn(4, 8)] for name in ("unet", "text_encoder")}
    grads = [[torch.randn(8, 4), torch.randn(4, 8)] for _ in range(3)]

    def trained(make):
        models = {name: torch.nn.ParameterList([torch.nn.Parameter(t.clone()) for t in tensors])
                  for name, tensors in start.items()}
        optimizer = make(models)
        for step_grads in grads:
            for model in models.values():
                for parameter, grad in zip(model, step_grads, strict=True):
                    parameter.grad = grad.clone()
            optimizer.step()
        return torch.cat([p.detach().flatten() for model in models.values() for p in model])

    def plain(models):
        return torch.optim.AdamW([{"params": list(models["unet"]), "lr": 1e-2},
                                  {"params": list(models["text_encoder"]), "lr": 5e-3}],
                                 weight_decay=1e-2, foreach=False, fused=False)

    ours = trained(lambda models: _optimizer(models, 1e-2, 0.5))
    reference = trained(plain)
    assert not torch.equal(ours, torch.cat([t.flatten() for tensors in start.values() for t in tensors]))
    assert torch.allclose(ours, reference, rtol=0, atol=1e-6)
