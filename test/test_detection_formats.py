"""Other stacks' detections in (vision_msgs, yolo_ros, REP-155 bodies) and REP-155 out.

Real messages over DDS: the images (real photos) and detections come from another process
(``testing.detection_peer publish``), the emotion node runs here with a fake backend, and the
REP-155 outputs are received by a listener in a third process. The interface packages are built
from ../shared/ros2_interfaces when not importable (``testing.ros_interfaces``); the DDS tests
are skipped with the reason only where that is impossible.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest

from emotion_perception.core.categories import EMOTIC_CATEGORIES
from emotion_perception.core.expressions import EXPRESSION_TABLE, to_expression, vad_to_unit
from emotion_perception.testing import ros_interfaces

pytestmark = pytest.mark.ros
MISSING = ros_interfaces.ensure()
needs_interfaces = pytest.mark.skipif(MISSING is not None, reason=str(MISSING))

# bus.jpg (810x1080): the hand-annotated people of testing/sample_people.py, as cx, cy, w, h
from emotion_perception.testing.sample_people import PEOPLE  # noqa: E402

BUS_W, BUS_H = 810, 1080
BUS = [((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1) for x1, y1, x2, y2 in
       (p.box for p in PEOPLE['bus'])]
BEIGE_FACE = PEOPLE['bus'][0].face


def outward(cx: float, cy: float, w: float, h: float) -> list[int]:
    """Independent reference: centre +- size/2, rounded outwards, clipped at 0 (x, y, w, h)."""
    x1, y1 = max(0, math.floor(cx - w / 2)), max(0, math.floor(cy - h / 2))
    return [x1, y1, math.ceil(cx + w / 2) - x1, math.ceil(cy + h / 2) - y1]


# -- expression table (ROS-free) ------------------------------------------------------------------
def test_expression_table_covers_categories_and_picks_the_evidence():
    names = [c for cats, _, _ in EXPRESSION_TABLE.values() for c in cats]
    assert sorted(names) == sorted(EMOTIC_CATEGORIES)
    for expr, (cats, v, a) in EXPRESSION_TABLE.items():
        scores = np.full(26, 0.05)
        scores[EMOTIC_CATEGORIES.index(cats[0])] = 0.9
        # VAD at the prototype: that expression; no VAD: that expression too
        est = to_expression(scores, (5.5 + 4.5 * v, 5.5 + 4.5 * a, 5.0))
        assert est.expression == expr and est.confidence == pytest.approx(0.9)
        assert to_expression(scores, (math.nan,) * 3).expression == expr
    # VAD decides between equal evidence: Fear and Happiness both 0.6
    scores = np.zeros(26)
    scores[EMOTIC_CATEGORIES.index('Fear')] = scores[EMOTIC_CATEGORIES.index('Happiness')] = 0.6
    assert to_expression(scores, (9.0, 7.0, 5)).expression == 'happy'
    assert to_expression(scores, (2.0, 8.5, 5)).expression == 'scared'
    assert vad_to_unit(10.0) == 1.0 and vad_to_unit(1.0) == -1.0 and vad_to_unit(5.5) == 0.0
    assert vad_to_unit(99.0) == 1.0
    with pytest.raises(ValueError):
        to_expression(np.full(26, np.nan), (5, 5, 5))


def test_rep155_id_rule():
    from emotion_perception.ros.detection_formats import is_name_token, rep155_id
    assert rep155_id('alice') == 'alice' and rep155_id('body_x1') == 'body_x1'
    assert rep155_id('7') == 'b7' and rep155_id('a-b/c') == 'ba_b_c' and rep155_id('') == ''
    assert all(is_name_token(rep155_id(t)) for t in ('7', '0', 'a b', '/x', '1.5', 'é'))


# -- conversion (messages, no DDS) ----------------------------------------------------------------
@needs_interfaces
def test_vision_msgs_and_yolo_conversion_rules():
    from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose
    from yolo_msgs.msg import Detection, DetectionArray

    from emotion_perception.ros.detection_formats import from_vision_msgs, from_yolo

    def vdet(cls_scores, cxcywh, ident=''):
        d = Detection2D(id=ident)
        (d.bbox.center.position.x, d.bbox.center.position.y, d.bbox.size_x,
         d.bbox.size_y) = map(float, cxcywh)
        for cls, score in cls_scores:
            h = ObjectHypothesisWithPose()
            h.hypothesis.class_id, h.hypothesis.score = cls, score
            d.results.append(h)
        return d
    msg = Detection2DArray(detections=[
        vdet([('person', 0.8), ('chair', 0.1)], BUS[0], '3'),
        vdet([('chair', 0.7), ('person', 0.2)], BUS[1], '4'),   # best hypothesis: chair
        vdet([('0', 0.9)], BUS[2]),                             # isaac_ros: '0' = person
        vdet([], BUS[3], '9'),                                  # no hypothesis
        vdet([('person', 0.1)], BUS[3], '10'),                  # below min_confidence
        vdet([('person', 0.9)], (100, 100, math.nan, 50), '11'),
        vdet([('person', 0.9)], (100, 100, -5, 50), '12'),
    ])
    conv = from_vision_msgs(msg, ['person', '0'], 0.5)
    assert [d.track_id for d in conv.msg.detections] == ['3', '', '11', '12']
    box = conv.msg.detections[0].bbox
    assert [box.x_offset, box.y_offset, box.width, box.height] == outward(*BUS[0])
    assert set(conv.errors) == {2, 3} and 'non-finite' in conv.errors[2] \
        and 'non-positive' in conv.errors[3]
    assert sorted(lo.kind for lo in conv.left_out) == ['below_min_confidence', 'no_hypothesis',
                                                       'not_person']

    ymsg = DetectionArray(detections=[
        Detection(class_id=0, class_name='person', score=0.9, id='1'),
        Detection(class_id=16, class_name='dog', score=0.9, id='2'),
        Detection(class_id=0, class_name='', score=0.9, id='3'),   # only the id says person
    ])
    for d, (cx, cy, w, h) in zip(ymsg.detections, BUS):
        d.bbox.center.position.x, d.bbox.center.position.y = cx, cy
        d.bbox.size.x, d.bbox.size.y = w, h
    yconv = from_yolo(ymsg, ['person', '0'], 0.0)
    assert [d.track_id for d in yconv.msg.detections] == ['1', '3']
    assert [lo.kind for lo in yconv.left_out] == ['not_person']


@needs_interfaces
def test_rep155_roi_rules():
    from hri_msgs.msg import NormalizedRegionOfInterest2D as Roi
    from std_msgs.msg import Header

    from emotion_perception.ros.detection_formats import from_rep155
    rois = {'a': Roi(xmin=0.1, ymin=0.2, xmax=0.5, ymax=0.9, c=0.8),
            'b': Roi(xmin=-0.5, ymin=0.0, xmax=0.2, ymax=1.4, c=0.8),   # clipped
            'c': Roi(xmin=1.2, ymin=0.0, xmax=1.5, ymax=0.5),            # outside [0, 1]
            'd': Roi(xmin=math.nan, ymin=0.0, xmax=0.5, ymax=0.5)}
    conv, clipped = from_rep155(Header(), ['a', 'b', 'c', 'd', 'e'], rois, BUS_W, BUS_H)
    assert [d.track_id for d in conv.msg.detections] == ['a', 'b', 'c', 'd', 'e']
    a = conv.msg.detections[0].bbox
    assert [a.x_offset, a.y_offset, a.width, a.height] == [81, 216, 324, 756]
    b = conv.msg.detections[1].bbox
    assert [b.x_offset, b.y_offset, b.width, b.height] == [0, 0, 162, BUS_H]
    assert clipped == 2
    assert 'outside [0, 1]' in conv.errors[2] and 'non-finite' in conv.errors[3]
    assert conv.errors[4] == 'no roi for this stamp'


# -- over DDS, the peer in another process -------------------------------------------------------
def _env() -> dict:
    return dict(os.environ)


def run_peer(tmp_path, steps, name='spec', linger_s=1.0, wait=True):
    spec = tmp_path / f'{name}.json'
    spec.write_text(json.dumps({'steps': steps, 'linger_s': linger_s}))
    proc = subprocess.Popen([sys.executable, '-m', 'emotion_perception.testing.detection_peer',
                             'publish', str(spec)], env=_env())
    if wait:
        assert proc.wait(timeout=120) == 0
    return proc


class Listener:
    """``detection_peer listen`` in another process; ``records()`` reads what it got."""

    def __init__(self, tmp_path, topics: dict[str, str]) -> None:
        self.path = tmp_path / 'listened.jsonl'
        self.proc = subprocess.Popen(
            [sys.executable, '-m', 'emotion_perception.testing.detection_peer', 'listen',
             str(self.path), *[f'{t}={k}' for t, k in topics.items()]],
            env=_env(), stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == 'listening'

    def records(self, topic: str | None = None) -> list[dict]:
        if not self.path.exists():
            return []
        rows = [json.loads(line) for line in self.path.read_text().splitlines() if line]
        return [r for r in rows if topic is None or r['topic'] == topic]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)


@pytest.fixture
def harness():
    from emotion_perception.testing.ros_harness import RosHarness
    h = RosHarness('formats_test')
    yield h
    h.close()


def start_node(harness, **params):
    from rclpy.parameter import Parameter

    from emotion_perception.msg import PersonEmotionArray
    from emotion_perception.nodes.emotion_node import EmotionNode
    from emotion_perception.ros.qos import RESULTS_QOS
    from emotion_perception.testing.fake_backends import FakeBackend, spec
    params = {'backend.name': spec(FakeBackend), 'image_reliability': 'reliable',
              'reuse.enabled': False, 'pair_timeout_s': 1.0, **params}
    node = harness.add(EmotionNode('emotion_node', context=harness.context,
                                   parameter_overrides=[Parameter(k, value=v)
                                                        for k, v in params.items()]))
    out: list = []
    harness.node.create_subscription(PersonEmotionArray, 'emotions', out.append, RESULTS_QOS)
    assert node.trigger_configure().name == 'SUCCESS', node.failure_reason
    assert node.trigger_activate().name == 'SUCCESS', node.failure_reason
    return node, out


def answer(harness, out, stamp, timeout=30.0):
    got = lambda: [m for m in out if (m.header.stamp.sec, m.header.stamp.nanosec) == stamp]
    nodes = [n for n in harness._nodes if hasattr(n, 'stats')]
    assert harness.wait_for(lambda: got(), timeout), (
        f'no answer for {stamp}; got {[(m.header.stamp.sec, m.header.stamp.nanosec) for m in out]}'
        f'; node counters {[n.stats.snapshot() for n in nodes]}')
    time.sleep(0.2)
    assert len(got()) == 1, 'one answer per array'
    return got()[0]


def rois_of(msg):
    return [[p.bbox.x_offset, p.bbox.y_offset, p.bbox.width, p.bbox.height] for p in msg.persons]


PERSON_DETS = [{'id': str(i + 1), 'class': 'person', 'class_id': 0, 'score': 0.9,
                'cxcywh': list(b)} for i, b in enumerate(BUS)]


@needs_interfaces
@pytest.mark.parametrize('fmt', ['vision_msgs', 'yolo'])
def test_foreign_detections_answered_over_dds(harness, tmp_path, fmt):
    node, out = start_node(harness, detections_format=fmt, min_confidence=0.3)
    extra = [
        {'id': '20', 'class': 'bus' if fmt == 'yolo' else '5', 'class_id': 5, 'score': 0.95,
         'cxcywh': [405, 600, 800, 500]},                       # not a person: left out
        {'id': '21', 'class': 'person', 'score': 0.1, 'cxcywh': list(BUS[0])},   # low score
        {'id': '22', 'class': 'person', 'score': 0.9, 'cxcywh': [100, 100, 'nan', 40]},
        {'id': '23', 'class': 'person', 'score': 0.9, 'cxcywh': [5000, 300, 100, 200]},
        {'id': '', 'class': 'person', 'score': 0.9, 'cxcywh': list(BUS[1])},     # untracked
    ]
    if fmt == 'vision_msgs':
        extra.append({'id': '24', 'hypotheses': False, 'cxcywh': list(BUS[2])})
    for d in extra:
        d['cxcywh'] = [float(v) for v in d['cxcywh']]
    run_peer(tmp_path, [
        {'kind': 'image', 'photo': 'bus', 'stamp': [10, 0]},
        {'kind': fmt, 'stamp': [10, 0], 'detections': PERSON_DETS + extra},
        {'kind': 'await', 'stamp': [10, 0]},  # answered before the next (else latest-wins)
        {'kind': fmt, 'stamp': [11, 0], 'detections': []},      # empty: answered empty
        {'kind': 'await', 'stamp': [11, 0]},
        {'kind': fmt, 'stamp': [12, 0], 'detections': PERSON_DETS[:1]},  # no image: ERROR
    ])
    msg = answer(harness, out, (10, 0))
    assert [p.track_id for p in msg.persons] == ['1', '2', '3', '4', '22', '23', '']
    assert rois_of(msg)[:4] == [outward(*b) for b in BUS]
    assert rois_of(msg)[6] == outward(*BUS[1])
    status = [p.status for p in msg.persons]
    assert status[:4] == [0, 0, 0, 0] and status[6] == 0
    assert status[4] == 3 and 'bad box: non-finite' in msg.persons[4].status_reason
    assert status[5] == 3 and 'outside' in msg.persons[5].status_reason
    assert msg.header.frame_id == 'camera'
    assert answer(harness, out, (11, 0)).persons == []
    late = answer(harness, out, (12, 0))
    assert late.persons[0].status == 3 and 'no image' in late.persons[0].status_reason
    counts = node.stats.snapshot()
    assert counts['left_out.not_person'] == 1 and counts['left_out.below_min_confidence'] == 1
    assert counts.get('left_out.no_hypothesis', 0) == (fmt == 'vision_msgs')
    assert counts['errors.bad_box'] >= 1 and node.lifecycle_state == 'active'


@needs_interfaces
@pytest.mark.parametrize('fmt', ['vision_msgs', 'yolo'])
def test_unrepresentable_score_or_class_id_answered_error_over_dds(harness, tmp_path, fmt,
                                                                    monkeypatch):
    """A float64 score beyond float32 (1e39, inf) or a vision_msgs class id beyond int32
    ('4294967296'): that person ERROR with the reason, the others of the array answered.
    Our messages check their fields as with ROS_PYTHON_CHECK_FIELDS=1 (without it, rosidl
    writes inf / a wrapped class id silently; with it, the callback raised)."""
    from emotion_perception.msg import _person_detection
    monkeypatch.setattr(_person_detection, 'ros_python_check_fields', '1')
    node, out = start_node(harness, detections_format=fmt,
                           person_classes=['person', '0', '4294967296'])
    dets = [dict(PERSON_DETS[0]),
            dict(PERSON_DETS[1], id='31', score=1e39),
            dict(PERSON_DETS[2], id='32', score=math.inf)]
    if fmt == 'vision_msgs':   # yolo_msgs' class_id is int32 already
        dets.append(dict(PERSON_DETS[3], id='33', **{'class': '4294967296'}))
    run_peer(tmp_path, [{'kind': 'image', 'photo': 'bus', 'stamp': [13, 0]},
                        {'kind': fmt, 'stamp': [13, 0], 'detections': dets}])
    msg = answer(harness, out, (13, 0))
    assert [p.track_id for p in msg.persons] == [d['id'] for d in dets]
    assert msg.persons[0].status == 0 and rois_of(msg)[0] == outward(*BUS[0])
    for p in msg.persons[1:3]:
        assert p.status == 3 and 'confidence' in p.status_reason \
            and 'float32' in p.status_reason, p.status_reason
    assert 'inf' in msg.persons[2].status_reason and '1e+39' in msg.persons[1].status_reason
    if fmt == 'vision_msgs':
        assert msg.persons[3].status == 3 and '4294967296' in msg.persons[3].status_reason \
            and 'int32' in msg.persons[3].status_reason
    assert node.stats.snapshot()['errors.bad_detection'] == len(dets) - 1
    assert node.lifecycle_state == 'active'


@needs_interfaces
def test_missing_message_package_fails_configure_naming_apt(harness, monkeypatch):
    from emotion_perception.ros import detection_formats
    real = detection_formats.importlib.import_module

    def none_of_them(name, *a, **kw):
        if name.split('.')[0] in ('hri_msgs', 'vision_msgs', 'yolo_msgs'):
            raise ImportError(f'No module named {name!r}')
        return real(name, *a, **kw)
    monkeypatch.setattr(detection_formats.importlib, 'import_module', none_of_them)
    from rclpy.parameter import Parameter

    from emotion_perception.nodes.emotion_node import EmotionNode
    from emotion_perception.nodes.person_detector import PersonDetectorNode
    from emotion_perception.testing.fake_backends import FakeBackend, spec
    for i, (params, apt) in enumerate([
            ({'detections_format': 'rep155'}, 'ros-jazzy-hri-msgs'),
            ({'detections_format': 'vision_msgs'}, 'ros-jazzy-vision-msgs'),
            ({'detections_format': 'yolo'}, 'yolo_ros'),
            ({'rep155.publish': True}, 'ros-jazzy-hri-msgs')]):
        node = harness.add(EmotionNode(f'emotion_node{i}', context=harness.context,
                                       parameter_overrides=[
            Parameter('backend.name', value=spec(FakeBackend)),
            *[Parameter(k, value=v) for k, v in params.items()]]))
        assert node.trigger_configure().name == 'FAILURE', params
        assert apt in node.failure_reason and node.lifecycle_state == 'unconfigured'
    det = harness.add(PersonDetectorNode(context=harness.context, parameter_overrides=[
        Parameter('publish_vision_msgs', value=True)]))
    assert det.trigger_configure().name == 'FAILURE'
    assert 'ros-jazzy-vision-msgs' in det.failure_reason
    # without them, the defaults configure (the package runs without these packages)
    node = harness.add(EmotionNode('emotion_node_plain', context=harness.context,
                                   parameter_overrides=[
        Parameter('backend.name', value=spec(FakeBackend))]))
    assert node.trigger_configure().name == 'SUCCESS', node.failure_reason


def body_frame(stamp, rois: dict, photo='bus', transport='raw'):
    """detection_peer steps of one REP-155 body frame: the image, then each body's roi."""
    steps = [{'kind': 'image', 'photo': photo, 'stamp': stamp, 'transport': transport}]
    steps += [{'kind': 'roi', 'topic': f'/humans/bodies/{b}/roi', 'stamp': stamp, 'xyxy': r}
              for b, r in rois.items()]
    return steps


def norm(cx, cy, w, h):
    return [(cx - w / 2) / BUS_W, (cy - h / 2) / BUS_H, (cx + w / 2) / BUS_W,
            (cy + h / 2) / BUS_H]


TRANSPORTS = ['raw', 'compressed']


@needs_interfaces
@pytest.mark.parametrize('transport', TRANSPORTS)
def test_rep155_bodies_in_over_dds(harness, tmp_path, transport):
    """Compressed frames too (issue 25, item 3: the boxes were built before the frame was
    decoded, 0x0, and every person answered ERROR)."""
    node, out = start_node(harness, detections_format='rep155', image_transport=transport,
                           **{'rep155.max_ids': 8})
    tracked = {'kind': 'ids', 'topic': '/humans/bodies/tracked', 'ids': ['alice', 'bob', '7',
                                                                         'a/b', 'alice']}
    alice, bob = norm(*BUS[0]), norm(*BUS[1])
    run_peer(tmp_path, [
        {**tracked, 'stamp': [20, 0]},
        {'kind': 'sleep', 's': 0.5},
        *body_frame([20, 0], {'alice': alice, 'bob': bob}, transport=transport),
        {'kind': 'await', 'stamp': [20, 0]},
        # bob's roi never comes for this stamp: answered after pair_timeout_s with bob ERROR
        *body_frame([21, 0], {'alice': alice}, transport=transport),
        {'kind': 'await', 'stamp': [21, 0]},  # (a newer frame ready meanwhile would win)
        # bob's roi reaches outside [0, 1] (clipped), alice's is NaN
        *body_frame([22, 0], {'alice': [math.nan, 0.1, 0.5, 0.5],
                              'bob': [-0.2, 0.3, 0.4, 1.3]}, transport=transport),
    ], linger_s=2.0)
    first = answer(harness, out, (20, 0))
    assert [p.track_id for p in first.persons] == ['alice', 'bob']
    assert [p.status for p in first.persons] == [0, 0]
    # the reference: normalised roi x the paired image's size, outwards
    for p, (cx, cy, w, h) in zip(first.persons, BUS[:2]):
        x, y, bw, bh = outward(cx, cy, w, h)
        got = rois_of(SimpleNamespace(persons=[p]))[0]
        # corners within a pixel (float32 normalised coordinates)
        assert np.allclose([got[0], got[1], got[0] + got[2], got[1] + got[3]],
                           [x, y, x + bw, y + bh], atol=1), (got, (x, y, bw, bh))
    second = answer(harness, out, (21, 0))
    assert [p.status for p in second.persons] == [0, 3]
    assert second.persons[1].status_reason == 'no roi for this stamp'
    third = answer(harness, out, (22, 0))
    assert third.persons[0].status == 3 and 'non-finite' in third.persons[0].status_reason
    assert third.persons[1].status == 0
    assert rois_of(third)[1][0] == 0 and rois_of(third)[1][3] == BUS_H - int(0.3 * BUS_H)
    counts = node.stats.snapshot()
    assert counts['rep155.invalid_ids'] >= 2 and counts['rep155.rois_clipped'] >= 1
    assert counts['errors.no_roi_for_this_stamp'] >= 1
    assert counts['detections_in'] == 3   # body frames count as this input's arrays
    assert 'no detections' not in node.diagnostics()[1]

    # 10,000 ids: at most rep155.max_ids subscriptions; then alice leaves: hers is destroyed
    many = [f'id{i}' for i in range(10000)]
    run_peer(tmp_path, [{**tracked, 'ids': many, 'stamp': [30, 0]}, {'kind': 'sleep', 's': 0.3},
                        {**tracked, 'ids': ['bob'], 'stamp': [31, 0]}], name='many')
    assert harness.wait_for(lambda: node.stats.snapshot().get('rep155.ids_over_cap', 0)
                            >= 10000 - 8)
    assert harness.wait_for(lambda: list(node._bodies.subs.subs) == ['bob'])
    assert harness.wait_for(lambda: harness.node.count_subscribers('/humans/bodies/alice/roi')
                            == 0 and harness.node.count_subscribers('/humans/bodies/id5/roi')
                            == 0)
    assert harness.node.count_subscribers('/humans/bodies/bob/roi') == 1
    assert node.lifecycle_state == 'active'


@needs_interfaces
def test_rep155_out_received_by_another_process(harness, tmp_path):
    node, out = start_node(harness, **{'rep155.publish': True, 'rep155.forget_after_s': 0.5})
    topics = {'/humans/bodies/b1/emotion': 'emotions', '/humans/bodies/b2/emotion': 'emotions',
              '/humans/faces/f1/expression': 'expression', '/humans/bodies/tracked': 'ids',
              '/humans/bodies/b1/roi': 'roi', '/emotion_states': 'states'}
    listener = Listener(tmp_path, topics)
    try:
        face = [BEIGE_FACE[0] / BUS_W, BEIGE_FACE[1] / BUS_H, BEIGE_FACE[2] / BUS_W,
                BEIGE_FACE[3] / BUS_H]
        frame = [{'kind': 'image', 'photo': 'bus', 'stamp': [40, 0]},
                 {'kind': 'ids', 'topic': '/humans/faces/tracked', 'ids': ['f1'],
                  'stamp': [40, 0]},
                 {'kind': 'roi', 'topic': '/humans/faces/f1/roi', 'xyxy': face,
                  'stamp': [40, 0]},
                 {'kind': 'native', 'stamp': [40, 0], 'width': BUS_W, 'height': BUS_H,
                  'detections': PERSON_DETS[:2]},
                 {'kind': 'await', 'stamp': [40, 0]}]   # one frame at a time
        # 8 frames with persons 1 and 2, then 8 frames with person 2 only
        gone = [dict(s, detections=PERSON_DETS[1:2]) if s['kind'] == 'native' else s
                for s in frame]
        run_peer(tmp_path, [{'kind': 'repeat', 'n': 8, 'hz': 4, 'steps': frame},
                            {'kind': 'repeat', 'n': 8, 'hz': 4,
                             'steps': [dict(s, stamp=[45, 0]) for s in gone]}])
        assert harness.wait_for(lambda: len(out) >= 16, 60), node.stats.snapshot()
        # (the first messages of a new per-id publisher may go before the other process has
        # discovered it: not all 8 / 16 are required)
        assert harness.wait_for(lambda: len(listener.records('/humans/faces/f1/expression'))
                                >= 2 and len(listener.records('/humans/bodies/b2/emotion'))
                                >= 6, 60), ({t: len(listener.records(t)) for t in topics},
                                            node.stats.snapshot())
        assert node.stats.snapshot().get('drops.stale_frame', 0) == 0
        emotions = listener.records('/humans/bodies/b1/emotion')
        assert emotions and all(len(r['persons']) == 1 and r['persons'][0]['track_id'] == '1'
                                for r in emotions)
        # the expression comes from the person's smoothed state (issue 23), same stamp
        states = {tuple(r['stamp']): p for r in listener.records('/emotion_states')
                  for p in r['persons'] if p['track_id'] == '1'}
        checked = 0
        for expr in listener.records('/humans/faces/f1/expression'):
            person = states.get(tuple(expr['stamp']))
            if person is None:
                continue
            checked += 1
            ref = to_expression(person['scores'], person['vad'])  # independent recomputation
            assert expr['expression'] == ref.expression
            assert expr['valence'] == pytest.approx(ref.valence, abs=1e-6)
            assert expr['confidence'] == pytest.approx(ref.confidence, abs=1e-6)
            assert -1 <= expr['valence'] <= 1 and 0 <= expr['confidence'] <= 1
        assert checked, 'no expression with the state of its stamp'
        # the face is the beige-coat man's (person 1): person 2 got no expression topic
        assert harness.node.count_publishers('/humans/faces/f2/expression') == 0
        rois = listener.records('/humans/bodies/b1/roi')
        ref = [v / s for v, s in zip(outward(*BUS[0]), (BUS_W, BUS_H, BUS_W, BUS_H))]
        assert rois and rois[0]['xyxy'][0] == pytest.approx(ref[0], abs=1e-4)
        lists = [r['ids'] for r in listener.records('/humans/bodies/tracked')]
        # b1 forgotten 0.5 s after its last frame (while b2's frames come) ...
        last_both = max(i for i, ids in enumerate(lists) if ids == ['b1', 'b2'])
        assert ['b2'] in lists[last_both:], lists
        assert harness.wait_for(lambda: harness.node.count_publishers('/humans/bodies/b1/roi')
                                == 0 and harness.node.count_publishers(
                                    '/humans/bodies/b1/emotion') == 0)
        # ... and b2 after the frames stopped: the node's timer forgets without a frame
        assert harness.wait_for(lambda: harness.node.count_publishers('/humans/bodies/b2/roi')
                                == 0 and listener.records('/humans/bodies/tracked')[-1]['ids']
                                == [], 10)
    finally:
        listener.close()


@needs_interfaces
def test_detector_vision_msgs_out_feeds_an_emotion_node_reading_vision_msgs(harness, tmp_path):
    """person_detector publish_vision_msgs -> a listener in another process sees the same
    persons as the native array; an emotion node with detections_format vision_msgs remapped
    to vision_detections answers them."""
    from emotion_perception.msg import PersonDetectionArray
    from emotion_perception.nodes.person_detector import PersonDetectorNode
    from emotion_perception.ros.qos import RESULTS_QOS
    from rclpy.parameter import Parameter
    det = harness.add(PersonDetectorNode(context=harness.context, parameter_overrides=[
        Parameter('image_reliability', value='reliable'),
        Parameter('publish_vision_msgs', value=True)]))
    assert det.trigger_configure().name == 'SUCCESS', det.failure_reason
    assert det.trigger_activate().name == 'SUCCESS'
    native = harness.collect(PersonDetectionArray, 'detections', RESULTS_QOS)
    node, out = start_node_remapped(harness)
    listener = Listener(tmp_path, {'/vision_detections': 'vision'})
    try:
        run_peer(tmp_path, [{'kind': 'image', 'photo': 'bus', 'stamp': [50, 0]},
                            {'kind': 'await', 'stamp': [50, 0], 'timeout_s': 60},
                            {'kind': 'image', 'photo': 'bus', 'stamp': [51, 0]}])
        assert harness.wait_for(lambda: len(native) >= 2 and len(listener.records()) >= 2, 60)
        msg = answer(harness, out, (51, 0), 60)
    finally:
        listener.close()
    ref = native[-1]
    vis = [r for r in listener.records() if r['stamp'] == [51, 0]][0]
    assert len(ref.detections) == 4   # bus.jpg: four people
    assert [d['id'] for d in vis['detections']] == [d.track_id for d in ref.detections]
    assert all(d['class'] == 'person' for d in vis['detections'])
    for d, r in zip(vis['detections'], ref.detections):
        assert d['cxcywh'] == [r.bbox.x_offset + r.bbox.width / 2,
                               r.bbox.y_offset + r.bbox.height / 2, r.bbox.width, r.bbox.height]
        assert d['score'] == pytest.approx(r.confidence, abs=1e-6)
    assert [p.track_id for p in msg.persons] == [d.track_id for d in ref.detections]
    assert rois_of(msg) == [[r.bbox.x_offset, r.bbox.y_offset, r.bbox.width, r.bbox.height]
                            for r in ref.detections]
    assert all(p.status == 0 for p in msg.persons)


def start_node_remapped(harness):
    """An emotion node reading vision_msgs from vision_detections (a remap, as a user would)."""
    from rclpy.parameter import Parameter

    from emotion_perception.msg import PersonEmotionArray
    from emotion_perception.nodes.emotion_node import EmotionNode
    from emotion_perception.ros.qos import RESULTS_QOS
    from emotion_perception.testing.fake_backends import FakeBackend, spec
    params = {'backend.name': spec(FakeBackend), 'image_reliability': 'reliable',
              'reuse.enabled': False, 'detections_format': 'vision_msgs'}
    node = harness.add(EmotionNode(
        'emotion_node', context=harness.context,
        cli_args=['--ros-args', '-r', 'detections:=vision_detections'],
        parameter_overrides=[Parameter(k, value=v) for k, v in params.items()]))
    out: list = []
    harness.node.create_subscription(PersonEmotionArray, 'emotions', out.append, RESULTS_QOS)
    assert node.trigger_configure().name == 'SUCCESS', node.failure_reason
    assert node.trigger_activate().name == 'SUCCESS', node.failure_reason
    return node, out


@needs_interfaces
@pytest.mark.slow
def test_bench_formats_answers_every_array_of_each_format():
    """bench/bench_formats.py (short): exit 0 = every array of each format's stream answered
    exactly once; both tables printed."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, os.path.join(repo, 'bench', 'bench_formats.py'),
                           '--seconds', '1', '--reps', '50'], env=_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert 'x native' in proc.stdout and 'answered' in proc.stdout
    for fmt in ('vision_msgs', 'yolo', 'rep155'):
        assert proc.stdout.count(fmt) == 2


@needs_interfaces
@pytest.mark.parametrize('transport', TRANSPORTS)
def test_rep155_in_and_out_uses_the_body_ids_and_is_not_a_body_source(harness, tmp_path,
                                                                       transport):
    from emotion_perception.msg import PersonEmotionArray
    from emotion_perception.ros.rep155 import HRI_QOS
    node, out = start_node(harness, detections_format='rep155', image_transport=transport,
                           **{'rep155.publish': True})
    got = harness.collect(PersonEmotionArray, '/humans/bodies/alice/emotion', HRI_QOS)
    tracked = {'kind': 'ids', 'topic': '/humans/bodies/tracked'}
    run_peer(tmp_path, [
        {**tracked, 'ids': ['alice', 'bob'], 'stamp': [60, 0]}, {'kind': 'sleep', 's': 0.5},
        # 5 frames at 5 Hz: a subscriber discovers the new per-body publisher meanwhile
        {'kind': 'repeat', 'n': 5, 'hz': 5, 'steps': [
            *body_frame([60, 0], {'alice': norm(*BUS[0]), 'bob': norm(*BUS[1])},
                        transport=transport),
            {'kind': 'await', 'stamp': [60, 0]}]},
        {**tracked, 'ids': ['bob'], 'stamp': [62, 0]}, {'kind': 'sleep', 's': 0.3},
        *body_frame([62, 0], {'bob': norm(*BUS[1])}, transport=transport),
    ])
    answer(harness, out, (62, 0))
    assert got and all([p.track_id for p in m.persons] == ['alice'] for m in got)
    assert all(m.persons[0].status == 0 for m in got)
    # not the body source: no tracked list nor rois from the node; alice's topic removed
    assert node.count_publishers('/humans/bodies/tracked') == 0
    assert harness.wait_for(lambda: harness.node.count_publishers(
        '/humans/bodies/alice/emotion') == 0)
    assert harness.node.count_publishers('/humans/bodies/bob/emotion') == 1
