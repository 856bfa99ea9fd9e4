"""The insightface backend's code path, run on tiny ONNX models of the real models' shapes."""

from __future__ import annotations

import dataclasses
import functools
import http.server
import shutil
import threading

import numpy as np
import pytest

from portrait_core.core.geometry import box_center, points_in_box
from portrait_core.errors import ModelUnavailableError
from portrait_core.faces import available_backends, get_face_analyzer, similarity
from portrait_core.faces.insightface import InsightFaceAnalyzer, find_installed_packs
from portrait_core.models.registry import ModelFile, ModelRegistry, default_registry, sha256_file
from tests.faces.tiny_onnx import build_arcface_like, build_scrfd_like


@pytest.fixture(scope="module")
def tiny_pack(tmp_path_factory):
    """A models folder holding a buffalo_l-shaped pack of tiny models, and a registry that knows them."""
    models_dir = tmp_path_factory.mktemp("models")
    pack = models_dir / "insightface" / "buffalo_l"
    detector = build_scrfd_like(pack / "det_10g.onnx")
    recognizer = build_arcface_like(pack / "w600k_r50.onnx")
    files = [ModelFile(name=f"insightface/buffalo_l/{path.stem}", file=f"insightface/buffalo_l/{path.name}",
                       sha256=sha256_file(path), size=path.stat().st_size) for path in (detector, recognizer)]
    return ModelRegistry(files, models_dir=models_dir, offline=True), models_dir


@pytest.fixture(scope="module")
def analyzer(tiny_pack):
    registry, _ = tiny_pack
    analyzer = get_face_analyzer("insightface", registry=registry)
    yield analyzer
    analyzer.unload()


def _white_square(size=1280, left=640, top=640, side=64):
    image = np.zeros((size, size, 3), np.uint8)
    image[top:top + side, left:left + side] = 255
    return image


def test_the_pack_is_offered_when_its_files_are_in_the_models_folder(tiny_pack):
    registry, _ = tiny_pack
    assert find_installed_packs(registry) == ["buffalo_l"]
    assert "insightface:buffalo_l" in available_backends(registry)
    auto = get_face_analyzer("auto", registry=registry)
    assert isinstance(auto, InsightFaceAnalyzer) and auto.name == "insightface:buffalo_l"


def test_detection_maps_faces_back_to_image_coordinates_with_ordered_points(analyzer):
    # The tiny detector fires on a white 32x32 cell of its 640x640 input; the 1280 px image is shrunk 2x.
    faces = analyzer.detect(_white_square())
    assert len(faces) == 1
    face = faces[0]
    assert face.box == pytest.approx((576, 576, 704, 704), abs=1)
    assert 0.5 < face.confidence <= 1.0
    assert points_in_box(face.points, face.box)
    left_eye, right_eye, nose, left_mouth, right_mouth = face.points
    assert left_eye[0] < right_eye[0] and left_mouth[0] < right_mouth[0]  # the model emits them swapped
    assert max(left_eye[1], right_eye[1]) < nose[1] < left_mouth[1]


def test_detection_follows_the_square_and_finds_nothing_on_black(analyzer):
    moved = analyzer.detect(_white_square(left=320, top=960))
    assert len(moved) == 1 and box_center(moved[0].box) == pytest.approx((320, 960), abs=1)
    assert analyzer.detect(np.zeros((480, 640, 3), np.uint8)) == []


def test_embedding_is_a_unit_vector_that_tells_images_apart(analyzer):
    image = _white_square()
    image[:, :, 0] = np.linspace(0, 200, image.shape[1], dtype=np.uint8)[None, :]
    face = analyzer.detect(_white_square())[0]
    vector = analyzer.embed(image, face)
    assert vector.shape == (512,) and analyzer.embedding_size == 512
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
    assert similarity(vector, analyzer.embed(image.copy(), face)) == pytest.approx(1.0, abs=1e-6)
    assert similarity(vector, analyzer.embed(255 - image, face)) < 0.9


def test_masks_come_from_the_face_mesh(analyzer, embedded, face_photo):
    image = face_photo("obama.jpg")
    face = dataclasses.replace(embedded.detect(image)[0], landmarks=None)  # as an SCRFD face has none
    mask = analyzer.face_mask(image, face)
    cx, cy = (round(v) for v in box_center(face.box))
    assert mask[cy, cx] == 255 and not mask[0, 0]
    assert analyzer.person_mask(image)[cy, cx] == 255


def test_asking_for_a_missing_pack_names_the_files_and_where_to_put_them(tmp_path):
    builtin = default_registry()
    registry = ModelRegistry([builtin.get(n) for n in builtin.names()], models_dir=tmp_path, offline=True)
    with pytest.raises(ModelUnavailableError) as raised:
        get_face_analyzer("insightface", registry=registry)
    message = str(raised.value)
    for expected in ("det_10g.onnx", "w600k_r50.onnx", "glintr100.onnx", str(tmp_path / "insightface" / "buffalo_l")):
        assert expected in message
    assert get_face_analyzer("auto", registry=registry).name == "embedded"
    assert available_backends(registry) == ["embedded"]


def test_files_of_the_wrong_size_do_not_count_as_the_real_pack(tiny_pack, tmp_path):
    _, models_dir = tiny_pack
    shutil.copytree(models_dir / "insightface", tmp_path / "insightface")
    builtin = default_registry()
    registry = ModelRegistry([builtin.get(n) for n in builtin.names()], models_dir=tmp_path, offline=True)
    assert find_installed_packs(registry) == []  # tiny files are not the published 16.9 MB / 174 MB files
    with pytest.raises(ModelUnavailableError, match="det_10g.onnx"):
        InsightFaceAnalyzer.from_registry("buffalo_l", registry=registry)


def test_a_recognizer_in_the_detector_slot_is_refused_by_name(tmp_path):
    wrong = build_arcface_like(tmp_path / "det_10g.onnx")
    recognizer = build_arcface_like(tmp_path / "w600k_r50.onnx", seed=1)
    analyzer = InsightFaceAnalyzer(wrong, recognizer, pack="broken")
    with pytest.raises(ModelUnavailableError, match=r"det_10g\.onnx is not an SCRFD face detector"):
        analyzer.detect(np.zeros((64, 64, 3), np.uint8))


def test_unknown_pack_names_are_refused(tiny_pack):
    registry, _ = tiny_pack
    with pytest.raises(ValueError, match="antelopev3"):
        get_face_analyzer("insightface:antelopev3", registry=registry)


def test_a_pack_with_pinned_digests_can_be_downloaded_on_request(tiny_pack, tmp_path):
    _, source_dir = tiny_pack
    pack_dir = source_dir / "insightface" / "buffalo_l"
    handler = functools.partial(_QuietFiles, directory=str(pack_dir))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as httpd:
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{httpd.server_address[1]}"
        files = [ModelFile(name=f"insightface/buffalo_l/{p.stem}", file=f"insightface/buffalo_l/{p.name}",
                           sha256=sha256_file(p), size=p.stat().st_size, url=f"{base}/{p.name}")
                 for p in sorted(pack_dir.glob("*.onnx"))]
        offline = ModelRegistry(files, models_dir=tmp_path, offline=True)
        with pytest.raises(ModelUnavailableError):
            InsightFaceAnalyzer.from_registry("buffalo_l", registry=offline, download=True)
        online = ModelRegistry(files, models_dir=tmp_path, offline=False)
        with pytest.raises(ModelUnavailableError):  # never behind the user's back
            InsightFaceAnalyzer.from_registry("buffalo_l", registry=online)
        analyzer = InsightFaceAnalyzer.from_registry("buffalo_l", registry=online, download=True)
        httpd.shutdown()
    assert analyzer.detector_path == tmp_path / "insightface" / "buffalo_l" / "det_10g.onnx"
    assert len(analyzer.detect(_white_square())) == 1
    analyzer.unload()


class _QuietFiles(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass
