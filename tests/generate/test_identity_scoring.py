"""Faces searched only where they are: identity scoring of 1-3 faces, the pasted face's landmarks, photo
preparation's detector on real photos; each against what the whole-image search per face found before."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from portrait_core.core import face_imaging
from portrait_core.core.geometry import boxes_overlap_as_same_face
from portrait_core.faces.base import similarity
from portrait_core.faces.embedded import EmbeddedFaceAnalyzer
from portrait_core.generate.identity import load_identity
from portrait_core.generate.pipeline import PortraitGenerator
from portrait_core.params import GenerateParams


class CountingAnalyzer(EmbeddedFaceAnalyzer):
    """The real embedded backend, counting its detections and the pixels they searched."""

    def __init__(self):
        super().__init__()
        self.detections, self.searched_pixels = 0, 0

    def detect(self, image, **options):
        self.detections += 1
        self.searched_pixels += image.shape[0] * image.shape[1]
        return super().detect(image, **options)


@pytest.fixture(scope="module")
def analyzer():
    return CountingAnalyzer()


@pytest.fixture(scope="module")
def obama(prepared_obama, tmp_path_factory):
    return load_identity("obama", root=prepared_obama, lora_dir=tmp_path_factory.mktemp("Lora"))


@pytest.fixture(scope="module")
def group(shared_faces_dir):
    """Three people side by side: Biden, Obama, Obama (another photo)."""
    photos = [Image.open(shared_faces_dir / name).convert("RGB") for name in ("biden.jpg", "obama.jpg", "obama2.jpg")]
    photos = [photo.resize((round(photo.width * 360 / photo.height), 360), Image.LANCZOS) for photo in photos]
    canvas = Image.new("RGB", (sum(photo.width for photo in photos), 360), "white")
    left = 0
    for photo in photos:
        canvas.paste(photo, (left, 0))
        left += photo.width
    return canvas


def _scores_searching_per_face(analyzer, image, faces, identity):
    """What scoring did before: the whole result searched again for every face."""
    pixels = np.asarray(image)
    scores = []
    for face in faces:
        centre = ((face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2)
        match = next((found for found in analyzer.detect(pixels)
                      if found.box[0] <= centre[0] <= found.box[2] and found.box[1] <= centre[1] <= found.box[3]),
                     None)
        scores.append(None if match is None else
                      round(float(similarity(analyzer.embed(pixels, match), identity.centre)), 4))
    return scores


@pytest.mark.parametrize("count", [1, 2, 3])
def test_scoring_searches_around_each_face_only_and_scores_the_same_faces(analyzer, obama, group, count):
    faces = sorted(analyzer.detect(np.asarray(group)), key=lambda face: face.box[0])[:count]
    assert len(faces) == count
    expected = _scores_searching_per_face(analyzer, group, faces, obama)
    analyzer.detections, analyzer.searched_pixels = 0, 0
    results = PortraitGenerator(None, analyzer).identity_scores(group, [(face, obama) for face in faces],
                                                                GenerateParams(identities=["obama"] * count))
    assert analyzer.detections == count
    assert analyzer.searched_pixels < group.width * group.height * count / 2
    assert [result.identity_score for result in results] == pytest.approx(expected, abs=0.01)
    assert [result.box for result in results] == [face.box_list() for face in faces]
    if count > 1:  # Obama's own face is more like his photos than Biden's is
        assert results[1].identity_score > results[0].identity_score + 0.03


def test_the_pasted_face_is_found_on_its_box_as_on_the_whole_crop(analyzer, obama, shared_faces_dir):
    template = Image.open(shared_faces_dir / "biden.jpg").convert("RGB")
    template = template.resize((512, round(template.height * 512 / template.width)), Image.LANCZOS)
    points = analyzer.detect(np.asarray(template))[0].points
    pasted = face_imaging.paste_aligned_face(template, obama.reference_image, obama.reference_points, points).image
    whole = analyzer.detect(np.asarray(pasted))[0]
    analyzer.searched_pixels = 0
    found = PortraitGenerator(None, analyzer)._face_in(pasted, points)
    assert analyzer.searched_pixels < pasted.width * pasted.height / 2
    assert found.landmarks is not None
    assert np.abs(np.asarray(found.box) - np.asarray(whole.box)).max() < 3.0
    assert np.abs(found.landmarks - whole.landmarks).max() < 3.0  # the pose map drawn from them is the same


@pytest.mark.parametrize("name", ["obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg", "obama_partial_face.jpg"])
def test_preparations_detection_finds_the_same_faces_without_the_tiled_search(analyzer, shared_faces_dir, name):
    pixels = np.asarray(Image.open(shared_faces_dir / name).convert("RGB"))
    everything = analyzer.detect(pixels)
    prepared = analyzer.detect(pixels, small_faces=False)
    assert len(prepared) == len(everything)
    for face, same in zip(prepared, everything, strict=True):
        # The box may be another detector's (a tile's box can win on score); the face and its points stay.
        assert boxes_overlap_as_same_face(face.box, same.box)
        assert np.abs(face.points - same.points).max() < 0.03 * same.size
