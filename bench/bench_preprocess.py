"""Per-photo preprocessing time of the embedded face backend: decode, detect, embed, crop + masks.

Run from the repository root:

    .venv/bin/python -m bench.bench_preprocess [--photos DIR] [--repeat 3]

Each shared test photo is timed at its own size and resized to 1024 px on the long side (the target
is under 0.3 s per 1024 px photo on 2 CPU cores). Model loading is done once before timing. The photos
take turns (`--repeat` rounds, each photo once per round); each stage is given as its median, the total
as min / median, and each photo's own size against its 1024 px copy, from the same run.
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


def time_photo(path: Path, analyzer: EmbeddedFaceAnalyzer) -> dict[str, float] | None:
    """Seconds of each stage for one photo, once (None when it has no face)."""
    options = PreprocessOptions()
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
    return dict(zip(STAGES, (decoded - started, detected - decoded, embedded - detected, masked - embedded),
                    strict=True))


def time_photos(paths: list[Path], analyzer: EmbeddedFaceAnalyzer, repeat: int) -> dict[Path, list[dict] | None]:
    """`repeat` rounds over all photos (interleaved); per photo its rounds' stage times, None without a face."""
    samples: dict[Path, list[dict] | None] = {path: [] for path in paths}
    for _ in range(repeat):
        for path in paths:
            if samples[path] is not None:
                timings = time_photo(path, analyzer)
                samples[path] = None if timings is None else [*samples[path], timings]
    return samples


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


def print_table(rows: list[tuple[str, str, list[dict] | None]]) -> None:
    width = max(len(name) for name, _, _ in rows)
    print(f"{'photo':<{width}}  {'size':>9}  " + "  ".join(f"{s:>7}" for s in STAGES)
          + f"  {'total min / median':>20}  {'vs its 1024 px copy':>20}")
    totals = {name: [sum(t.values()) for t in samples] for name, _, samples in rows if samples}
    for name, size, samples in rows:
        if samples is None:
            print(f"{name:<{width}}  {size:>9}  no face")
            continue
        stages = "  ".join(f"{statistics.median(t[s] for t in samples) * 1000:>5.0f}ms" for s in STAGES)
        total = totals[name]
        copy = totals.get(f"{Path(name).stem}@1024.jpg")
        ratio = f"{min(total) / min(copy):.2f}x" if copy and "@1024" not in name else ""
        cell = f"{min(total) * 1000:.0f} / {statistics.median(total) * 1000:.0f}ms"
        print(f"{name:<{width}}  {size:>9}  {stages}  {cell:>20}  {ratio:>20}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    photos = [p for p in list_photo_files(args.photos) if p.suffix.lower() in (".jpg", ".jpeg", ".png")]
    analyzer = EmbeddedFaceAnalyzer()
    time_photo(photos[0], analyzer)  # load every model before timing
    with tempfile.TemporaryDirectory() as scratch:
        paths = photos + resized_copies(photos, Path(scratch))
        sizes = {}
        for path in paths:
            with Image.open(path) as image:
                sizes[path] = f"{image.width}x{image.height}"
        samples = time_photos(paths, analyzer, args.repeat)
    rows = [(path.name, sizes[path], samples[path]) for path in paths]
    print(f"{args.repeat} interleaved rounds")
    print_table(rows)
    at_1024 = [min(sum(t.values()) for t in samples) for name, _, samples in rows if "@1024" in name and samples]
    if at_1024:
        print(f"\nper 1024 px photo (each photo's min): mean {statistics.mean(at_1024) * 1000:.0f} ms, "
              f"median {statistics.median(at_1024) * 1000:.0f} ms over {len(at_1024)} photos (target < 300 ms)")
    analyzer.unload()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
