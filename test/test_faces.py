"""Face finding (core.faces) and the face baseline's choice of each person's face, on real photos.

Our torch MTCNN is checked against facenet-pytorch's own implementation (installed --no-deps by
`make venv` for its weights; imported here only, as the independent reference): the three
networks output for output, and the detector face for face on the sample photographs.
"""
from __future__ import annotations

import dataclasses
import os
import shutil

os.environ.setdefault('HF_HUB_OFFLINE', '1')

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from emotion_perception.core.backends import ModelLoadError, create_backend  # noqa: E402
from emotion_perception.core.faces import (MTCNN, OFFLINE_MTCNN_WEIGHTS, Face,  # noqa: E402
                                           FaceModelError, assign_faces, face_fit,
                                           load_mtcnn_nets, merge_faces, nms)
from emotion_perception.core.model_files import resolve_model_path, sample_image_paths  # noqa: E402
from emotion_perception.core.types import BBox, Status  # noqa: E402
from emotion_perception.testing.sample_people import PEOPLE, face_on  # noqa: E402

WEIGHTS = resolve_model_path(OFFLINE_MTCNN_WEIGHTS, directory=True)


@pytest.fixture(scope='module')
def images() -> dict[str, np.ndarray]:
    return {n: cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)
            for n, p in sample_image_paths().items() if n in PEOPLE}


@pytest.fixture(scope='module')
def mtcnn() -> MTCNN:
    return MTCNN(load_mtcnn_nets(WEIGHTS))


@pytest.fixture(scope='module')
def backend():
    b = create_backend('face_baseline', {'device': 'cpu'})
    b.load()
    yield b
    b.unload()


def _person(photo: str, index: int) -> BBox:
    return BBox(*map(float, PEOPLE[photo][index].box))


# -- MTCNN against facenet-pytorch --------------------------------------------------------------
def test_networks_equal_facenet_pytorch_networks():
    from facenet_pytorch.models.mtcnn import ONet, PNet, RNet  # the reference implementation
    ours = load_mtcnn_nets(WEIGHTS)
    torch.manual_seed(0)
    for net, ref, shape in zip(ours, (PNet(), RNet(), ONet()),
                               ((2, 3, 37, 51), (6, 3, 24, 24), (6, 3, 48, 48))):
        x = torch.randn(shape)
        with torch.no_grad():
            got, want = net(x), ref(x)
        # facenet-pytorch returns (offsets, probabilities) / (offsets, landmarks, probabilities)
        want_prob = want[-1][:, 1]
        torch.testing.assert_close(got[0], want_prob, atol=1e-5, rtol=0)
        torch.testing.assert_close(got[1], want[0], atol=1e-5, rtol=0)
        if len(got) == 3:
            torch.testing.assert_close(got[2], want[1], atol=1e-5, rtol=0)


#: Where the people are, smaller than the full photos (MTCNN over a whole 1280x720 frame takes
#: about a second on a 2-core CPU): (photo, (x0, y0, x1, y1) crop, scale).
VIEWS = (('bus', (0, 380, 420, 720), 1.0), ('zidane', (0, 0, 1280, 720), 0.5),
         ('astronaut', (0, 0, 512, 512), 1.0), ('grace_hopper', (0, 0, 512, 600), 1.0))


def _view(images, name, crop, scale):
    x0, y0, x1, y1 = crop
    image = np.ascontiguousarray(images[name][y0:y1, x0:x1])
    if scale != 1.0:
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)

    def to_view(xyxy):
        return (xyxy[0] - x0) * scale, (xyxy[1] - y0) * scale, (xyxy[2] - x0) * scale, \
            (xyxy[3] - y0) * scale
    return image, to_view


def test_detector_finds_the_faces_facenet_pytorch_finds(mtcnn, images):
    from facenet_pytorch import MTCNN as ReferenceMTCNN
    reference = ReferenceMTCNN(keep_all=True, device='cpu')  # same defaults: 20 px, 0.6/0.7/0.7
    for name, crop, scale in VIEWS:
        image, to_view = _view(images, name, crop, scale)
        ref_boxes, ref_probs = reference.detect(image)
        ref = [BBox(*map(float, b)) for b, p in zip(ref_boxes, ref_probs) if p >= 0.95]
        ours = [f for f in mtcnn.detect([image])[0] if f.score >= 0.95]
        assert len(ours) == len(ref), (name, ours, ref)
        # the same faces, boxes within a few pixels (ours crops with zero padding and continuous
        # coordinates, the reference clips crops and keeps the original 1-based pixel offsets)
        for r in ref:
            assert max(f.box.iou(r) for f in ours) > 0.7, (name, r, ours)
        # every annotated visible face is found
        for person in PEOPLE[name]:
            if person.face is not None:
                face = dataclasses.replace(person, face=to_view(person.face))
                assert any(face_on(f.box, face) for f in ours), (name, person.name)
        for f in ours:
            assert f.source == 'mtcnn' and f.landmarks.shape == (5, 2)
            # landmarks (eyes, nose, mouth) lie inside their face
            assert np.all((f.landmarks[:, 0] >= f.box.x1) & (f.landmarks[:, 0] <= f.box.x2))
            assert np.all((f.landmarks[:, 1] >= f.box.y1) & (f.landmarks[:, 1] <= f.box.y2))
            left_eye, right_eye, nose, mouth_l, mouth_r = f.landmarks
            assert left_eye[1] < nose[1] < mouth_l[1] and right_eye[1] < nose[1] < mouth_r[1]


def test_batched_regions_equal_single_calls(mtcnn, images):
    crops = [images['bus'][380:700, 40:250], images['astronaut'][:300, 100:400],
             _view(images, 'zidane', (500, 0, 1280, 400), 0.5)[0]]
    together = mtcnn.detect(crops)
    for crop, faces in zip(crops, together):
        (alone,) = mtcnn.detect([crop])
        np.testing.assert_allclose([f.box.xyxy() for f in faces], [f.box.xyxy() for f in alone],
                                   atol=1e-3)
        assert [f.score for f in faces] == pytest.approx([f.score for f in alone], abs=1e-5)
    # no face: a grey image, and images smaller than the P-Net window
    assert mtcnn.detect([np.full((200, 300, 3), 128, np.uint8), np.zeros((8, 8, 3), np.uint8)]) \
        == [[], []]


def test_nms_modes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [2, 2, 6, 6], [20, 20, 30, 30]], float)
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    assert nms(boxes, scores, 0.5).tolist() == [0, 2, 3]        # IoU(0,1) = 0.68
    assert nms(boxes, scores, 0.5, mode='min').tolist() == [0, 3]  # box 2 lies inside box 0


def test_bad_weights_raise_clear_errors(tmp_path):
    with pytest.raises(FaceModelError, match='pnet.pt.*do not exist.*facenet-pytorch'):
        load_mtcnn_nets(str(tmp_path))
    for name in ('pnet.pt', 'rnet.pt', 'onet.pt'):
        shutil.copy(os.path.join(WEIGHTS, name), tmp_path / name)
    torch.save({'conv1.weight': torch.zeros(1)}, tmp_path / 'rnet.pt')
    with pytest.raises(FaceModelError, match='rnet.pt.*keys'):
        load_mtcnn_nets(str(tmp_path))
    (tmp_path / 'rnet.pt').write_bytes(b'not a torch file')
    with pytest.raises(FaceModelError, match='rnet.pt'):
        load_mtcnn_nets(str(tmp_path))
    with pytest.raises(ModelLoadError, match="facenet-pytorch.*face_detector: 'haar'"):
        create_backend('face_baseline', {'mtcnn_weights': str(tmp_path / 'none')}).load()
    with pytest.raises(ValueError, match='face_detector'):
        create_backend('face_baseline', {'face_detector': 'dlib'})


# -- whose face is it ----------------------------------------------------------------------------
def _face(x1, y1, x2, y2, score=1.0, source='mtcnn') -> Face:
    return Face(BBox(x1, y1, x2, y2), score, source)


def test_a_face_in_two_boxes_goes_to_the_person_it_belongs_to():
    # two people side by side; the left one stretches an arm over the right one, so the left
    # box also holds the right person's face (larger than the left person's, and higher)
    left, right = BBox(0, 100, 600, 500), BBox(400, 60, 700, 500)
    own_left, own_right = _face(260, 130, 330, 210), _face(520, 110, 610, 200)
    faces = [own_right, own_left]
    assert assign_faces([left, right], faces, 0.6) == [own_left, own_right]
    assert assign_faces([right, left], faces, 0.6) == [own_right, own_left]
    # evaluated alone, the left box still takes its own face (centred), not the larger one
    assert assign_faces([left], faces, 0.6) == [own_left]
    # the left person turns away: the right person's face stays with the right person, also when
    # the right person is only context (answered from the cache)
    assert assign_faces([left, right], [own_right], 0.6) == [None, own_right]
    assert assign_faces([left, right], [own_right], 0.6, evaluated=1) == [None]
    assert assign_faces([left], [own_right], 0.6) == [own_right]  # without context it cannot know


def test_faces_that_cannot_be_the_persons():
    person = BBox(100, 100, 300, 700)  # standing, 600 px tall
    assert face_fit(person, _face(180, 110, 230, 160), 0.6) is not None
    assert face_fit(person, _face(180, 600, 230, 650), 0.6) is None   # in the lower body
    assert face_fit(person, _face(330, 110, 380, 160), 0.6) is None   # beside the box
    assert face_fit(person, _face(185, 110, 200, 125), 0.6) is None   # far too small: a face
    #                                                                   behind the person
    assert face_fit(person, _face(260, 90, 360, 190), 0.6) is None    # mostly outside the box
    # a confident face beats a doubtful one at the same place; a centred face an off-centre one
    assert face_fit(person, _face(180, 110, 230, 160, 0.99), 0.6) < \
        face_fit(person, _face(180, 110, 230, 160, 0.75), 0.6)
    assert face_fit(person, _face(175, 110, 225, 160), 0.6) < \
        face_fit(person, _face(110, 110, 160, 160), 0.6)


def test_merge_keeps_one_detection_per_face():
    a = _face(10, 10, 50, 50, 0.9)
    merged = merge_faces([_face(12, 12, 52, 52, 0.5, 'haar'), _face(11, 11, 51, 51, 0.8), a,
                          _face(100, 100, 140, 140, 0.5, 'haar')])
    assert merged == [a, _face(100, 100, 140, 140, 0.5, 'haar')]


# -- the face baseline on the photographs --------------------------------------------------------
def test_every_visible_face_is_answered_with_its_own_face(backend, images):
    for name, image in images.items():
        people = PEOPLE[name]
        boxes = [BBox(*map(float, p.box)) for p in people]
        results = backend.predict(image, boxes)
        batch = backend.preprocess(image, boxes)
        for person, res, face in zip(people, results, batch.face_boxes):
            if person.face is None:
                assert res.status == Status.SKIPPED, (name, person.name)
            else:
                assert res.status == Status.OK, (name, person.name, res.reason)
                assert face_on(face, person), (name, person.name, face)


def test_zidane_and_ancelotti_each_get_their_own_face(backend, images):
    image = images['zidane']
    ancelotti, zidane = PEOPLE['zidane']
    anc_box, zid_box = _person('zidane', 0), _person('zidane', 1)
    # Zidane's box (his arm stretched over Ancelotti) holds both faces
    assert sum(face_on(f, p) for p in (ancelotti, zidane)
               for f in [d.box for d in backend.face_finder.find(image, [zid_box]) if d]) == 1
    for boxes, context in (([zid_box, anc_box], []), ([zid_box], [anc_box]), ([zid_box], [])):
        (face, *rest) = backend.preprocess(image, boxes, context).face_boxes
        assert face_on(face, zidane), (boxes, context, face)
    (face,) = backend.preprocess(image, [anc_box], [zid_box]).face_boxes
    assert face_on(face, ancelotti)


def test_a_duplicate_box_does_not_answer_with_its_neighbours_face(backend, images):
    image = images['bus']
    beige = _person('bus', 0)
    duplicate = BBox(1, 379, 188, 908)  # the offline detector's box over him and the border
    #                                     person at 640 px (conf 0.52, IoU 0.65 with his box)
    (skipped,) = backend.predict(image, [duplicate], context=[beige])
    assert skipped.status == Status.SKIPPED
    res = backend.predict(image, [beige, duplicate])
    assert [r.status for r in res] == [Status.OK, Status.SKIPPED]
    # the track cache case: the man is answered from the cache, the duplicate box is evaluated
    from emotion_perception.core.pipeline import EmotionPipeline, ReuseOptions
    from emotion_perception.core.types import PersonDetection
    pipe = EmotionPipeline(backend, ReuseOptions(max_age_s=10.0))
    man, dup = PersonDetection(beige, 0.7, '1'), PersonDetection(duplicate, 0.5, '2')
    pipe.process(image, [man], 0.0)
    frame = pipe.process(image, [man, dup], 0.5)
    assert [r.status for r in frame.results] == [Status.CACHED, Status.SKIPPED]


def test_haar_is_the_fallback_where_mtcnn_finds_nothing(images):
    b = create_backend('face_baseline', {'device': 'cpu'})
    b.load()
    box = [_person('astronaut', 0)]
    assert b.preprocess(images['astronaut'], box).detections[0].source == 'mtcnn'
    b.face_finder._mtcnn.detect = lambda crops, sizes=None: [[] for _ in crops]  # sees nothing
    (face,) = b.preprocess(images['astronaut'], box).detections
    assert face is not None and face.source == 'haar'
    assert face_on(face.box, PEOPLE['astronaut'][0])
    # the Haar cascade alone: no MTCNN loaded, misses Zidane's shouting profile
    haar = create_backend('face_baseline', {'device': 'cpu', 'face_detector': 'haar'})
    haar.load()
    assert haar.face_finder._mtcnn is None
    (res,) = haar.predict(images['zidane'], [_person('zidane', 1)])
    assert res.status == Status.SKIPPED
    (res,) = b.predict(images['astronaut'], box)
    assert res.status == Status.OK and res.top(1)[0][0] == 'Happiness'


# -- one face stage for the backend and the REP-155 output (issue 23) ----------------------------
def _detections(photo: str) -> list:
    from emotion_perception.core.types import PersonDetection
    return [PersonDetection(_person(photo, i), 0.9, str(i)) for i in range(len(PEOPLE[photo]))]


def test_the_pipeline_face_stage_finds_every_persons_face_once_a_frame(backend, images):
    """with_faces: every person's face, the cached persons' too, from one MTCNN pass a frame;
    the face baseline answers from those faces as from its own search (same scores); without
    with_faces no face stage runs for the output."""
    from emotion_perception.core.pipeline import EmotionPipeline, ReuseOptions
    finder = backend.face_finder
    calls = []
    detect = finder._mtcnn.detect
    finder._mtcnn.detect = lambda *a, **k: calls.append(1) or detect(*a, **k)
    try:
        image, dets = images['bus'], _detections('bus')
        pipe = EmotionPipeline(backend, ReuseOptions(max_age_s=10.0))
        first = pipe.process(image, dets, 0.0, with_faces=True)
        assert len(calls) == 1
        own = backend.predict(image, [d.bbox for d in dets])   # the backend's own search
        assert len(calls) == 2
        for person, face, res, ref in zip(PEOPLE['bus'], first.faces, first.results, own):
            assert (face is not None) == (person.face is not None), person.name
            if face is not None:
                assert face_on(face.box, person), (person.name, face.box)
            assert res.status == ref.status
            np.testing.assert_array_equal(res.scores, ref.scores)
        cached = pipe.process(image, dets, 0.5, with_faces=True)
        assert {r.status for r in cached.results} <= {Status.CACHED, Status.SKIPPED}
        assert [f is None for f in cached.faces] == [f is None for f in first.faces]
        # one search for all: the cached persons' faces and those of the persons without a
        # face (not cached: evaluated again, from the stage's faces, no second search)
        assert len(calls) == 3
        # without with_faces: the backend searches its evaluated persons' faces itself
        assert pipe.process(image, dets, 1.0).faces is None and len(calls) == 4
    finally:
        finder._mtcnn.detect = detect


def test_a_backend_without_faces_gets_them_from_the_pipelines_face_stage(images):
    """A backend that finds no faces (the VLMs: here the fake one): the pipeline's own face
    stage (the defaults, MTCNN) gives the same faces as the face baseline's; without a stage,
    asking for faces is a clear error."""
    from emotion_perception.core.backends.base import BackendError
    from emotion_perception.core.faces import FaceFinder
    from emotion_perception.core.pipeline import EmotionPipeline
    from emotion_perception.testing.fake_backends import FakeBackend
    fake = FakeBackend()
    fake.load()
    finder = FaceFinder()
    finder.load('cpu')
    image, dets = images['zidane'], _detections('zidane')
    frame = EmotionPipeline(fake, face_finder=finder).process(image, dets, 0.0, with_faces=True)
    ref = create_backend('face_baseline', {'device': 'cpu'})
    ref.load()
    assert [f.box for f in frame.faces] == [f.box for f in ref.face_finder.find(
        image, [d.bbox for d in dets])]
    assert all(face_on(f.box, p) for f, p in zip(frame.faces, PEOPLE['zidane']))
    with pytest.raises(BackendError, match='no face finder'):
        EmotionPipeline(fake).process(image, dets, 0.0, with_faces=True)
