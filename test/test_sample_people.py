"""The offline pipeline (person detector with the settings of config/person_detector.yaml + face
baseline) on the sample photographs, scored against their hand annotations
(emotion_perception.testing.sample_people): the people in the photos are found, no box holds no
person, and everyone whose face is visible is answered with their own face."""
from __future__ import annotations

import os

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('YOLO_OFFLINE', '1')

import cv2  # noqa: E402
import pytest  # noqa: E402

from emotion_perception.core.backends import create_backend  # noqa: E402
from emotion_perception.core.detector import DetectorOptions, PersonDetector  # noqa: E402
from emotion_perception.core.model_files import sample_image_paths  # noqa: E402
from emotion_perception.core.types import BBox, Status  # noqa: E402
from emotion_perception.testing.sample_people import (PEOPLE, PhotoScore,  # noqa: E402
                                                      evaluate_photos, match_people, score_photo)
from emotion_perception.tools.config import load_pipeline_config  # noqa: E402


@pytest.fixture(scope='module')
def images():
    return {n: cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)
            for n, p in sample_image_paths().items() if n in PEOPLE}


@pytest.fixture(scope='module')
def backend():
    b = create_backend('face_baseline', {'device': 'cpu'})
    b.load()
    yield b
    b.unload()


def _run(images, backend, options: DetectorOptions) -> PhotoScore:
    det = PersonDetector(options)
    det.load()

    def detect(image):
        found = det.detect(image).detections
        return [d.bbox for d in found], [d.confidence for d in found]

    def answer(image, boxes):
        h, w = image.shape[:2]
        results = backend.predict(image, boxes)
        faces = backend.preprocess(image, [b.clipped(w, h) for b in boxes]).face_boxes
        return [(r.status == Status.OK, f) for r, f in zip(results, faces)]

    return sum(evaluate_photos(images, detect, answer).values(), PhotoScore())


def test_configured_detector_finds_the_people_without_phantoms(images, backend):
    configured = load_pipeline_config().detector
    assert (configured.image_size, configured.confidence) == (512, 0.4)
    configured.tracker = ''
    got = _run(images, backend, configured)
    # 8 people; the one at bus.jpg's left border shows only part of the body and is not found
    assert (got.people, got.found) == (8, 7)
    assert got.phantoms == 0 and got.boxes == 7
    assert got.answered == got.with_face == 6, got.missed
    assert got.wrong_face == 0

    # with ultralytics' usual settings the same model finds the same people, plus boxes on the
    # astronaut's helmet, on the flag beside Grace Hopper, half of her, and a second box on the
    # man in the beige coat: none of them is answered with someone's face
    default = _run(images, backend, DetectorOptions(image_size=640, confidence=0.25, tracker=''))
    assert default.found == got.found and default.phantoms > got.phantoms
    assert default.answered == 6 and default.phantoms_answered == 0 and default.wrong_face == 0


def test_scoring_counts_what_it_says():
    people = PEOPLE['zidane']
    anc, zid = (BBox(*map(float, p.box)) for p in people)
    second = BBox(anc.x1 + 20, anc.y1, anc.x2, anc.y2)  # another box on Ancelotti
    assert match_people(people, [second, anc, zid], [0.5, 0.9, 0.8]) == [None, 0, 1]
    face_anc = BBox(*map(float, people[0].face))
    face_zid = BBox(*map(float, people[1].face))
    s = score_photo('zidane', [anc, zid, second], [0.9, 0.8, 0.5],
                    [(True, face_anc), (True, face_anc), (True, face_zid)])
    assert (s.found, s.phantoms, s.answered, s.wrong_face, s.phantoms_answered) == (2, 1, 1, 1, 1)
    assert s.missed == ['zidane: Zinedine Zidane (left)']
