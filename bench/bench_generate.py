"""Portrait speed on the tiny model: before/after the lean control path, control forwards, scoring, cold/warm.

Prints, side by side in one run (interleaved repetitions, min and median):
1. a warm portrait at the defaults, before (the colour control on a ControlNet at every step, each
   ControlNet embedding its control image at every step, the masked image VAE-encoded, the result
   searched for faces once per face) and after (the colour T2I-Adapter run once, each control image
   embedded once per call, no unused encode, each face searched for in a region around its place), and
   after with earlier control windows (canny and colour end at 0.5); target after >= 1.2x faster than before;
2. the ControlNet and adapter forwards each of those portraits runs;
3. identity scoring of a result with 1, 2, 3 faces: the whole result searched once per face (before)
   against a region around each face (after); and photo preparation's face detection with and without the
   tiled search;
4. with --cold-warm (or only that: --cold-warm-only): cold (the first portrait in a new process, every
   model loading) against warm (the next ones) at 128 px 10+5 steps and at the defaults, each round in a
   new process, and the warm portrait's wall time against its diffusion time.

    .venv/bin/python bench/bench_generate.py [--crop-size 512] [--steps 50] [--second-steps 20] [--repeat 3]
        [--cold-warm | --cold-warm-only]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from portrait_core.generate.pipeline import PortraitGenerator


def prepare_identity(work: Path) -> Path:
    """The demo's sample person, prepared and given a briefly trained LoRA (in-process, 2 steps)."""
    from portrait_core import config
    from portrait_core.adapters.cli.demo import DEMO_IDENTITY, write_sample_photos
    from portrait_core.models.tiny import ensure_tiny_sd15
    from portrait_core.prepare.preprocess import preprocess_folder
    from portrait_core.training.trainer import main, parse_args

    root = work / "identities"
    config.configure(lora_dir=root)
    write_sample_photos(work / "photos")
    preprocess_folder(work / "photos", DEMO_IDENTITY, root=root)
    main(parse_args(["--base-model", str(ensure_tiny_sd15()), "--identity", DEMO_IDENTITY,
                     "--dataset", str(root / DEMO_IDENTITY / "dataset" / "images"),
                     "--output-dir", str(work / "run"), "--final-lora", str(root / f"{DEMO_IDENTITY}.safetensors"),
                     "--resolution", "64", "--max-steps", "2", "--validate-every", "2", "--grad-accum", "1"]))
    return root


# ---- 1 + 2: portraits before / after ---------------------------------------------------------------

def scores_searching_per_face(generator, image, faces, params):
    """Identity scoring as it was: the whole result searched for faces again for every face."""
    from portrait_core.faces.base import similarity
    from portrait_core.generate.pipeline import FaceResult

    scale = params.upscale if params.upscale > 1.0 else 1.0
    pixels = np.asarray(image.convert("RGB"))
    results = []
    for face, identity in faces:
        centre = np.array([(face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2]) * scale
        score = None
        for found in generator.analyzer.detect(pixels):
            x0, y0, x1, y1 = found.box
            if x0 <= centre[0] <= x1 and y0 <= centre[1] <= y1:
                score = round(float(similarity(generator.analyzer.embed(pixels, found), identity.centre)), 4)
                break
        results.append(FaceResult(identity.id, face.box_list(), score))
    return results


class GeneratorBefore(PortraitGenerator):
    """The pipeline's face searches as they were: the pasted face searched for in the whole work crop,
    each result searched once per face."""

    def _face_in(self, image, points):
        from portrait_core.faces.base import Face

        centre = points.mean(axis=0)
        for face in self.analyzer.detect(np.asarray(image)):
            x0, y0, x1, y1 = face.box
            if x0 <= centre[0] <= x1 and y0 <= centre[1] <= y1:
                return face
        x0, y0 = points.min(axis=0)
        x1, y1 = points.max(axis=0)
        return Face(box=(float(x0), float(y0), float(x1), float(y1)), confidence=0.0, points=points)

    def identity_scores(self, image, faces, params):
        return scores_searching_per_face(self, image, faces, params)


def portrait_setups(root: Path, analyzer):
    """(label, generator, params changes) for before, after, and after with earlier windows."""
    from portrait_core.hosts.diffusers_host import DiffusersHost
    from portrait_core.models.tiny import ensure_tiny_sd15

    before_host = DiffusersHost(ensure_tiny_sd15(), lora_dir=root, color_adapter=False)
    before_host.skip_unused_encode = False  # diffusers' own inpaint: the masked image is encoded
    before_host.cache_control_embeddings = False  # and every ControlNet embeds its control image at every step
    after_host = DiffusersHost(ensure_tiny_sd15(), lora_dir=root)
    return [("before", GeneratorBefore(before_host, analyzer), {}),
            ("after", PortraitGenerator(after_host, analyzer), {}),
            ("after, canny+colour end 0.5", PortraitGenerator(after_host, analyzer),
             {"canny_end": 0.5, "color_end": 0.5})]


def measure_portraits(root: Path, crop: int, steps: int, second_steps: int, repeat: int):
    from portrait_core.adapters.cli.demo import DEMO_IDENTITY, studio_template
    from portrait_core.faces import get_face_analyzer
    from portrait_core.generate.identity import load_identity
    from portrait_core.params import GenerateParams

    analyzer = get_face_analyzer("embedded")
    identity = load_identity(DEMO_IDENTITY, root=root, lora_dir=root)
    template = studio_template()
    setups = portrait_setups(root, analyzer)
    base = {"identities": [DEMO_IDENTITY], "seed": 1, "crop_size": crop, "first_pass_steps": steps,
            "second_pass_steps": second_steps}
    timings = {label: [] for label, _, _ in setups}
    forwards = {}
    for round_index in range(repeat + 1):  # round 0 warms every setup up (models load), not timed
        for label, generator, changes in setups:
            params = GenerateParams(**base, **changes)
            counted = dict(generator.host.forwards)
            started = time.perf_counter()
            generator.generate(template, [identity], params)
            if round_index:
                timings[label].append(time.perf_counter() - started)
                forwards[label] = {kind: generator.host.forwards[kind] - counted[kind] for kind in counted}
    return timings, forwards


# ---- 3: scoring and detection ----------------------------------------------------------------------

def group_image(faces: int):
    """`faces` copies of the sample portrait side by side (a result with that many faces)."""
    from PIL import Image

    from portrait_core.adapters.cli.demo import sample_portrait

    portrait = sample_portrait().resize((512, 512), Image.LANCZOS)
    canvas = Image.new("RGB", (512 * faces, 512), "white")
    for index in range(faces):
        canvas.paste(portrait, (512 * index, 0))
    return canvas


def measure_scoring(root: Path, repeat: int):
    from portrait_core.adapters.cli.demo import DEMO_IDENTITY
    from portrait_core.faces import get_face_analyzer
    from portrait_core.generate.identity import load_identity
    from portrait_core.params import GenerateParams

    analyzer = get_face_analyzer("embedded")
    identity = load_identity(DEMO_IDENTITY, root=root, lora_dir=root)
    generator = PortraitGenerator(None, analyzer)
    rows = []
    for count in (1, 2, 3):
        image = group_image(count)
        faces = sorted(analyzer.detect(np.asarray(image)), key=lambda face: face.box[0])[:count]
        pairs, params = [(face, identity) for face in faces], GenerateParams(identities=[DEMO_IDENTITY] * count)
        before, after = [], []
        for _ in range(repeat + 1):
            for samples, score in ((before, scores_searching_per_face), (after, type(generator).identity_scores)):
                started = time.perf_counter()
                score(generator, image, pairs, params)
                samples.append(time.perf_counter() - started)
        rows.append((f"scoring, {count} face(s)", before[1:], after[1:]))
    return rows


def measure_detection(repeat: int):
    """Photo preparation's detection of the sample photos: with the tiled search, and skipped after a large face."""
    from portrait_core.adapters.cli.demo import sample_portrait
    from portrait_core.faces import get_face_analyzer

    analyzer = get_face_analyzer("embedded")
    pixels = np.asarray(sample_portrait().resize((1024, 1024)))
    before, after = [], []
    for _ in range(repeat + 1):
        for samples, small_faces in ((before, True), (after, False)):
            started = time.perf_counter()
            analyzer.detect(pixels, small_faces=small_faces)
            samples.append(time.perf_counter() - started)
    return [("preparation detect, 1024 px", before[1:], after[1:])]


# ---- 4: cold / warm (the earlier table) ------------------------------------------------------------

def timed_portrait(service, params, template) -> tuple[float, float]:
    started = time.perf_counter()
    result = service.generate(params, [("template.png", template)])[0][0]
    return time.perf_counter() - started, result.diffusion_seconds


def import_libraries() -> None:
    """torch, diffusers' pipeline and model classes, transformers, mediapipe and dlib imported, no model loaded:
    where the WebUI stands when its first portrait is asked for (it imported torch long before)."""
    import dlib  # noqa: F401
    import mediapipe  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from diffusers import ControlNetModel, StableDiffusionControlNetInpaintPipeline  # noqa: F401


def measure_cold_warm(root, crop: int, steps: int, second_steps: int) -> dict:
    """The first portrait of a new service (cold: every model loads inside the call) and the second (warm),
    for one setting, in this process: {"cold": (wall s, diffusion s), "warm": (wall s, diffusion s)}."""
    from portrait_core.adapters.cli.demo import DEMO_IDENTITY, studio_template
    from portrait_core.params import GenerateParams
    from portrait_core.services.runtime import standalone_services
    from portrait_core.services.workspace import Workspace

    params = GenerateParams(identities=[DEMO_IDENTITY], seed=1, crop_size=crop, first_pass_steps=steps,
                            second_pass_steps=second_steps)
    services = standalone_services(Workspace.at(root.parent))  # the home whose identities/ `root` is
    service = services.generation
    template = studio_template()
    try:
        cold = timed_portrait(service, params, template)
        warm = timed_portrait(service, params, template)
    finally:
        services.close()
    return {"cold": cold, "warm": warm}


def cold_warm_in_new_processes(root, cases: list[tuple[tuple[int, int, int], bool]], repeat: int) -> dict:
    """`measure_cold_warm` for each (setting, libraries imported first) case, each time in a new Python process
    (a user's first portrait after starting the app is the cold one); cases interleaved, `repeat` rounds.
    {case: [result, ...]}."""
    samples = {case: [] for case in cases}
    for _ in range(repeat):
        for case in cases:
            setting, imported = case
            child = subprocess.run([sys.executable, __file__, "--cold-warm-child", str(root),
                                    *(str(value) for value in setting), *(["--imported"] if imported else [])],
                                   check=True, capture_output=True, text=True)
            samples[case].append(json.loads(child.stdout.strip().splitlines()[-1]))
    return samples


def print_cold_warm(root, args) -> None:
    defaults, small = (args.crop_size, args.steps, args.second_steps), (128, 10, 5)
    cases = [(small, True), (small, False), (defaults, True)]
    samples = cold_warm_in_new_processes(root, cases, args.repeat)
    print(f"\ncold = the first portrait of a new process (every model loads inside it), warm = its second; "
          f"{args.repeat} rounds, each a new process;\n'libraries imported' = torch, diffusers, transformers, "
          f"mediapipe, dlib imported before the first portrait (as in the WebUI), else imported inside it")
    print(f"{'portrait':<34}{'cold min s':>11}{'median':>8}{'warm min s':>11}{'median':>8}"
          f"{'warm diffusion':>15}{'cold/warm min':>14}{'median':>8}")
    for (setting, imported), runs in samples.items():
        cold = [run["cold"][0] for run in runs]
        warm = [run["warm"][0] for run in runs]
        ratios = [c / w for c, w in zip(cold, warm, strict=True)]
        crop, steps, second = setting
        label = f"{crop}px {steps}+{second}, " + ("libraries imported" if imported else "cold imports")
        print(f"{label:<34}{min(cold):>11.2f}{statistics.median(cold):>8.2f}{min(warm):>11.2f}"
              f"{statistics.median(warm):>8.2f}{min(run['warm'][1] for run in runs):>15.2f}"
              f"{min(cold) / min(warm):>13.1f}x{statistics.median(ratios):>7.1f}x")
    warm_defaults = samples[(defaults, True)]
    overhead = min(run["warm"][0] / run["warm"][1] for run in warm_defaults)
    print(f"pipeline overhead at the defaults, warm (wall / diffusion): {overhead:.3f} (target <= 1.10); "
          f"warm vs cold at 128px 10+5: target >= 3x")


# ---- report ------------------------------------------------------------------------------------------

def print_portraits(timings, forwards, args) -> None:
    print(f"\ntiny SD1.5 on this machine; template 960x960; one face; crop {args.crop_size} px, "
          f"{args.steps}+{args.second_steps} steps; {args.repeat} interleaved repetitions")
    print(f"{'warm portrait':<30}{'min s':>8}{'median s':>10}{'vs before':>11}{'ControlNet fw':>15}{'adapter fw':>12}")
    before = min(timings["before"])
    for label, samples in timings.items():
        print(f"{label:<30}{min(samples):>8.2f}{statistics.median(samples):>10.2f}{before / min(samples):>10.2f}x"
              f"{forwards[label]['controlnet']:>15}{forwards[label]['adapter']:>12}")
    print(f"after vs before (min): {before / min(timings['after']):.2f}x faster (target >= 1.2x)")


def print_pairs(rows) -> None:
    print(f"\n{'':<30}{'before min ms':>14}{'median':>9}{'after min ms':>14}{'median':>9}{'speed-up':>10}")
    for label, before, after in rows:
        print(f"{label:<30}{min(before) * 1e3:>14.0f}{statistics.median(before) * 1e3:>9.0f}"
              f"{min(after) * 1e3:>14.0f}{statistics.median(after) * 1e3:>9.0f}{min(before) / min(after):>9.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--crop-size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=50, help="first pass (reference default 50)")
    parser.add_argument("--second-steps", type=int, default=20, help="second pass (reference default 20)")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved timed repetitions (after one warm-up)")
    parser.add_argument("--cold-warm", action="store_true", help="also the cold/warm and overhead table")
    parser.add_argument("--cold-warm-only", action="store_true", help="only the cold/warm table")
    parser.add_argument("--cold-warm-child", nargs=4, metavar=("ROOT", "CROP", "STEPS", "SECOND"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--imported", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cold_warm_child:
        folder, *setting = args.cold_warm_child
        if args.imported:
            import_libraries()
        print(json.dumps(measure_cold_warm(Path(folder), *(int(value) for value in setting))))
        return
    root = prepare_identity(Path(tempfile.mkdtemp(prefix="bench-generate-")))
    if not args.cold_warm_only:
        timings, forwards = measure_portraits(root, args.crop_size, args.steps, args.second_steps, args.repeat)
        print_portraits(timings, forwards, args)
        print_pairs(measure_scoring(root, args.repeat) + measure_detection(args.repeat))
    if args.cold_warm or args.cold_warm_only:
        print_cold_warm(root, args)


if __name__ == "__main__":
    main()
