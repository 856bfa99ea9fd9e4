"""Per-photo preprocessing time of the embedded face backend: decode, detect, embed, crop + masks.

Run from the repository root:

    .venv/bin/python -m bench.bench_preprocess [--photos DIR] [--repeat 3]

Each shared test photo is timed at its own size and resized to 1024 px on the long side (the target
is under 0.3 s per 1024 px photo on 2 CPU cores). Model loading is done once before timing.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from PIL import Image

from portrait_core.faces.embedded import EmbeddedFaceAnalyzer
from portrait_core.prepare.photos import list_photo_files, load_photo
from portrait_core.prepare.preprocess import PreprocessOptions, make_training_crop

DEFAULT_PHOTOS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "faces"
STAGES = ("decode", "detect", "embed", "masks")


def time_photo(path: Path, analyzer: EmbeddedFaceAnalyzer, repeat: int) -> dict[str, float] | None:
    """Median seconds of each stage for one photo (None when it has no face)."""
    samples: dict[str, list[float]] = {stage: [] for stage in STAGES}
    options = PreprocessOptions()
    for _ in range(repeat):
        started = time.perf_counter()
        photo = load_photo(path)
        decoded = time.perf_counter()
        faces = analyzer.detect(photo.pixels)
        detected = time.perf_counter()
        if not faces:
            return None
        analyzer.embed(photo.pixels, faces[0])
        embedded = time.perf_counter()
        make_training_crop(photo.pixels, faces[0], faces[1:], analyzer, options)
        masked = time.perf_counter()
        for stage, seconds in zip(STAGES, (decoded - started, detected - decoded, embedded - detected,
                                          masked - embedded), strict=True):
            samples[stage].append(seconds)
    return {stage: statistics.median(values) for stage, values in samples.items()}


def resized_copies(photos: list[Path], folder: Path, long_side: int = 1024) -> list[Path]:
    copies = []
    for path in photos:
        with Image.open(path) as image:
            scale = long_side / max(image.size)
            small = image.convert("RGB").resize((round(image.width * scale), round(image.height * scale)),
                                                Image.LANCZOS)
        target = folder / f"{path.stem}@{long_side}.jpg"
        small.save(target, quality=92)
        copies.append(target)
    return copies


def print_table(rows: list[tuple[str, str, dict[str, float] | None]]) -> None:
    width = max(len(name) for name, _, _ in rows)
    print(f"{'photo':<{width}}  {'size':>9}  " + "  ".join(f"{s:>7}" for s in (*STAGES, "total")))
    for name, size, timings in rows:
        if timings is None:
            print(f"{name:<{width}}  {size:>9}  no face")
            continue
        cells = [timings[s] for s in STAGES] + [sum(timings.values())]
        print(f"{name:<{width}}  {size:>9}  " + "  ".join(f"{v * 1000:>5.0f}ms" for v in cells))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    photos = [p for p in list_photo_files(args.photos) if p.suffix.lower() in (".jpg", ".jpeg", ".png")]
    analyzer = EmbeddedFaceAnalyzer()
    time_photo(photos[0], analyzer, 1)  # load every model before timing
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for path in photos + resized_copies(photos, Path(scratch)):
            with Image.open(path) as image:
                size = f"{image.width}x{image.height}"
            rows.append((path.name, size, time_photo(path, analyzer, args.repeat)))
    print_table(rows)
    at_1024 = [sum(t.values()) for name, _, t in rows if "@1024" in name and t]
    if at_1024:
        print(f"\nmean per 1024 px photo: {statistics.mean(at_1024) * 1000:.0f} ms "
              f"(median {statistics.median(at_1024) * 1000:.0f} ms) over {len(at_1024)} photos")
    analyzer.unload()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
