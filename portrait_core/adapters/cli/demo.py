"""`python -m portrait_core demo`: prepare sample photos -> train a LoRA -> render a portrait, end to end.

Everything runs offline. The sample person is NASA's public-domain portrait of Eileen Collins that
scikit-image ships (`skimage.data.astronaut()`), in a few framings; the template is a studio-style
reframing of the same photo that we make here. Without `--base-model` the tiny local model is used:
it proves every stage runs, but its weights are random, so the repainted face is noise, not a likeness.
"""

from __future__ import annotations

import html
import json
import time
from pathlib import Path

from PIL import Image, ImageEnhance, ImageOps

from portrait_core.log import get_logger

log = get_logger("demo")
DEMO_IDENTITY = "astronaut"


def sample_portrait() -> Image.Image:
    """Eileen Collins' NASA portrait (public domain), as shipped by scikit-image."""
    from skimage import data

    return Image.fromarray(data.astronaut())


def write_sample_photos(folder: Path) -> list[Path]:
    """Six framings of the sample portrait, as a user's uploads would vary (zoom, mirror, light, tilt).

    The 512 px original is enlarged to 1024 px first: its face would be under the 128 px minimum.
    """
    portrait = sample_portrait().resize((1024, 1024), Image.LANCZOS)
    folder.mkdir(parents=True, exist_ok=True)
    variants = {
        "portrait.jpg": portrait,
        "closer.jpg": portrait.crop((192, 0, 832, 640)).resize((1024, 1024), Image.LANCZOS),
        "mirrored.jpg": ImageOps.mirror(portrait),
        "brighter.jpg": ImageEnhance.Brightness(portrait).enhance(1.25),
        "tilted.jpg": portrait.rotate(8, resample=Image.BICUBIC, fillcolor=(128, 128, 128)),
        "smaller.jpg": portrait.resize((768, 768), Image.LANCZOS),
    }
    paths = []
    for name, image in variants.items():
        image.save(folder / name, quality=92)
        paths.append(folder / name)
    return paths


def studio_template() -> Image.Image:
    """A template made from the sample photo: mirrored, wider framing on grey, warmer light."""
    portrait = ImageOps.mirror(sample_portrait()).resize((768, 768), Image.LANCZOS)
    canvas = Image.new("RGB", (960, 960), (92, 96, 104))
    canvas.paste(portrait, (96, 192))
    warm = Image.merge("RGB", [band.point(lambda v, k=k: min(255, int(v * k)))
                               for band, k in zip(canvas.split(), (1.08, 1.0, 0.9), strict=True)])
    return ImageEnhance.Contrast(warm).enhance(1.1)


def run_demo(out_dir: Path, base_model: Path | None = None, size: int = 256, steps: int = 30,
             seed: int = 1) -> int:
    """The whole product in one go; writes `index.html` and `contact_sheet.png` into `out_dir`, which is the
    demo's Portrait Studio home (identities, LoRA and jobs all stay inside it)."""
    from portrait_core.services.runtime import standalone_services
    from portrait_core.services.workspace import Workspace

    started = time.perf_counter()
    out_dir = Path(out_dir).resolve()
    services = standalone_services(Workspace.at(out_dir), base_model)  # a wrong path fails here, before any write
    if base_model is None:
        print("No --base-model: using the tiny local model. It shows every stage running; its random "
              "weights paint noise, not a face. Pass --base-model PATH (an SD1.5 checkpoint) for real pixels.")
    try:
        photos = write_sample_photos(out_dir / "photos")
        report = _prepare(out_dir / "photos", services.workspace.identities)
        lora = _train(services, steps=steps, resolution=min(size, 512), tiny=base_model is None)
        portraits = _generate(services, size=size, seed=seed, out=out_dir / "portraits", tiny=base_model is None)
    finally:
        services.close()
    seconds = time.perf_counter() - started
    page = write_report(out_dir, photos=photos, report=report, lora=lora, portraits=portraits, seconds=seconds)
    print(f"\nDemo finished in {seconds:.0f} s. Open {page} (or {out_dir / 'contact_sheet.png'}).")
    return 0


def _prepare(photos: Path, root: Path):
    from portrait_core.prepare.preprocess import preprocess_folder

    print("1/3 preparing the sample photos ...")
    report = preprocess_folder(photos, DEMO_IDENTITY, root=root)
    print(f"    kept {len(report.kept)} of {len(report.photos)}; reference {report.reference}")
    return report


def _train(services, *, steps: int, resolution: int, tiny: bool) -> Path:
    from portrait_core.adapters.cli.train import progress_line
    from portrait_core.jobs import DONE
    from portrait_core.params import TrainParams

    print(f"2/3 training the LoRA ({steps} steps at {resolution} px) ...")
    params = TrainParams(identity=DEMO_IDENTITY, max_train_steps=steps, resolution=resolution,
                         validate_every=max(1, steps // 3), rank=8 if tiny else None, gradient_accumulation=1)
    job = services.training.start(params).job
    while job.state not in ("done", "failed", "cancelled"):
        job = services.runner.wait(job.id, timeout=1.0)
        print("\r    " + progress_line(job.progress), end="", flush=True)
    print()
    if job.state != DONE:
        from portrait_core.errors import PortraitError

        raise PortraitError(f"demo training {job.state}: {job.error}")
    return Path(job.result_path)


def _generate(services, *, size: int, seed: int, out: Path, tiny: bool) -> list:
    from portrait_core.generate.results import save_results
    from portrait_core.params import GenerateParams

    print("3/3 rendering the portrait into the studio template ...")
    template = studio_template()
    out.mkdir(parents=True, exist_ok=True)
    template.save(out / "template.png")
    params = GenerateParams(identities=[DEMO_IDENTITY], seed=seed, crop_size=size,
                            first_pass_steps=20 if tiny else 50, second_pass_steps=10 if tiny else 20)
    outputs = services.generation.generate(params, [("template.png", template)])
    save_results(outputs, out)
    for result, _ in outputs:
        score = result.faces[0].identity_score
        print(f"    identity score {'n/a (no face found)' if score is None else f'{score:.3f}'}; "
              f"{result.seconds:.1f} s")
    return [result for result, _ in outputs]


def write_report(out_dir: Path, *, photos: list[Path], report, lora: Path, portraits: list,
                 seconds: float) -> Path:
    """index.html (inputs, dataset, template, outputs, scores) and a PNG contact sheet of the same."""
    dataset = sorted((out_dir / "identities" / DEMO_IDENTITY / "dataset" / "images").glob("*.png"))
    outputs = sorted((out_dir / "portraits").glob("template-*.png"))
    rows = [("Uploaded photos", photos), ("Training set (prepared)", dataset),
            ("Template", [out_dir / "portraits" / "template.png"]), ("Portraits", outputs)]
    scores = [face.identity_score for result in portraits for face in result.faces]
    _contact_sheet(rows).save(out_dir / "contact_sheet.png")
    body = "".join(f"<h2>{html.escape(title)}</h2><div>" + "".join(
        f'<img src="{html.escape(str(p.relative_to(out_dir)))}" height="160">' for p in paths) + "</div>"
        for title, paths in rows)
    summary = {"kept": len(report.kept), "of": len(report.photos), "lora": str(lora), "identity_scores": scores,
               "seconds": round(seconds, 1)}
    page = out_dir / "index.html"
    page.write_text(f"<!doctype html><meta charset='utf-8'><title>Portrait Studio demo</title>"
                    f"<h1>Portrait Studio demo</h1><pre>{html.escape(json.dumps(summary, indent=2))}</pre>"
                    f"{body}", encoding="utf-8")
    (out_dir / "demo.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return page


def _contact_sheet(rows: list[tuple[str, list[Path]]], height: int = 160) -> Image.Image:
    thumbnails = []
    for _, paths in rows:
        row = []
        for path in paths:
            with Image.open(path) as opened:
                image = opened.convert("RGB")
            row.append(image.resize((max(1, image.width * height // image.height), height)))
        thumbnails.append(row)
    width = max(sum(t.width for t in row) for row in thumbnails)
    sheet = Image.new("RGB", (width, height * len(thumbnails)), "white")
    for index, row in enumerate(thumbnails):
        x = 0
        for thumbnail in row:
            sheet.paste(thumbnail, (x, index * height))
            x += thumbnail.width
    return sheet
