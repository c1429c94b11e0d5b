"""What a ROS4HRI (libhri) application sees of the emotion node (issue 23): faces found by the
node itself, with roi, cropped and expression; bodies with roi and cropped; face-body matches.

Three processes over DDS: the emotion node runs here (fake emotion backend, the real MTCNN face
stage), the camera + tracker is ``testing.detection_peer publish`` replaying real photos (bus.jpg,
then zidane.jpg with other track ids: the bus people leave, two others come), and the consumer
below runs in its own process, written after libhri 2.3.0's ``HRIListener`` / ``Face`` /
``Body`` (read from its source): it subscribes ``/humans/{faces,bodies}/tracked``, creates a
face (body) only when its id is listed there and then subscribes its ``roi`` and ``cropped``
(and, for a face, ``expression``), all with ``SystemDefaultsQoS``; an id that leaves the list
is dropped with its subscriptions. It also listens to ``/humans/candidate_matches`` (the person
manager's input). Raw and JPEG-compressed camera frames.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from emotion_perception.core.types import BBox
from emotion_perception.testing.sample_people import PEOPLE, face_on
from test_detection_formats import (BEIGE_FACE, BUS_H, BUS_W, PERSON_DETS,  # noqa: F401
                                    TRANSPORTS, _env, harness, needs_interfaces, run_peer,
                                    start_node)

pytestmark = pytest.mark.ros

CONSUMER = r'''
import json, signal, sys
import rclpy
from rclpy.node import Node
from rclpy.qos import qos_profile_system_default as QOS  # rclcpp::SystemDefaultsQoS (libhri)
from hri_msgs.msg import Expression, IdsList, IdsMatch, NormalizedRegionOfInterest2D as Roi
from sensor_msgs.msg import Image


class Consumer(Node):
    def __init__(self, path):
        super().__init__('libhri_like_consumer')
        self.out = open(path, 'w')
        self.features = {'face': {}, 'body': {}}
        self.ns = {'face': '/humans/faces', 'body': '/humans/bodies'}
        for kind in self.features:
            self.create_subscription(IdsList, f'{self.ns[kind]}/tracked',
                                     lambda m, kind=kind: self.tracked(kind, m), QOS)
        # hri_person_manager: the default QoS of a depth of 10 (reliable, volatile)
        self.create_subscription(IdsMatch, '/humans/candidate_matches', self.match, 10)

    def write(self, **row):
        self.out.write(json.dumps(row) + '\n')
        self.out.flush()

    def head(self, msg):
        return {'stamp': [msg.header.stamp.sec, msg.header.stamp.nanosec],
                'frame_id': msg.header.frame_id}

    def tracked(self, kind, msg):
        table, ns = self.features[kind], self.ns[kind]
        for ident in [i for i in table if i not in msg.ids]:   # lost: invalidate
            for sub in table.pop(ident):
                self.destroy_subscription(sub)
            self.write(ev='removed', kind=kind, id=ident)
        for ident in msg.ids:
            if ident in table:
                continue
            subs = [self.create_subscription(Roi, f'{ns}/{ident}/roi',
                                             lambda m, i=ident: self.roi(kind, i, m), QOS),
                    self.create_subscription(Image, f'{ns}/{ident}/cropped',
                                             lambda m, i=ident: self.cropped(kind, i, m), QOS)]
            if kind == 'face':
                subs.append(self.create_subscription(
                    Expression, f'{ns}/{ident}/expression',
                    lambda m, i=ident: self.expression(i, m), QOS))
            table[ident] = subs
            self.write(ev='added', kind=kind, id=ident)

    def roi(self, kind, ident, m):
        self.write(ev='roi', kind=kind, id=ident, xyxy=[m.xmin, m.ymin, m.xmax, m.ymax], c=m.c,
                   **self.head(m))

    def cropped(self, kind, ident, m):
        self.write(ev='cropped', kind=kind, id=ident, w=m.width, h=m.height,
                   encoding=m.encoding, **self.head(m))

    def expression(self, ident, m):
        self.write(ev='expression', id=ident, expression=m.expression, valence=m.valence,
                   arousal=m.arousal, confidence=m.confidence, **self.head(m))

    def match(self, m):
        self.write(ev='match', id1=m.id1, id1_type=m.id1_type, id2=m.id2, id2_type=m.id2_type,
                   confidence=m.confidence)


signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
rclpy.init()
node = Consumer(sys.argv[1])
print('listening', flush=True)
try:
    rclpy.spin(node)
except KeyboardInterrupt:
    pass
finally:
    node.out.close()
    if rclpy.ok():
        rclpy.shutdown()
'''


class Consumer:
    """The libhri-like consumer above, in its own process."""

    def __init__(self, tmp_path) -> None:
        script = tmp_path / 'consumer.py'
        script.write_text(CONSUMER)
        self.path = tmp_path / 'consumer.jsonl'
        self.proc = subprocess.Popen([sys.executable, str(script), str(self.path)], env=_env(),
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == 'listening'

    def rows(self, ev: str | None = None, **match) -> list[dict]:
        if not self.path.exists():
            return []
        rows = [json.loads(line) for line in self.path.read_text().splitlines() if line]
        return [r for r in rows if (ev is None or r['ev'] == ev)
                and all(r.get(k) == v for k, v in match.items())]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)


def test_expression_comes_from_the_state_else_the_frame():
    """ROS-free: the state's smoothed scores when it holds evidence, else the frame's OK /
    CACHED result, else nothing; compared with the expression table computed directly."""
    import numpy as np

    from emotion_perception.core.categories import CATEGORY_INDEX
    from emotion_perception.core.expressions import to_expression
    from emotion_perception.core.types import EmotionResult, Status
    from emotion_perception.ros.rep155_output import expression_of
    sad, happy = np.zeros(26, np.float32), np.zeros(26, np.float32)
    sad[CATEGORY_INDEX['Sadness']], happy[CATEGORY_INDEX['Happiness']] = 0.9, 0.9
    nan3 = (float('nan'),) * 3
    frame = EmotionResult(scores=happy, vad=nan3, status=Status.OK)
    state = type('State', (), {'scores': sad, 'vad': nan3})()
    assert expression_of(frame, state) == to_expression(sad, nan3)
    assert expression_of(frame, state).expression == 'sad'
    empty = type('State', (), {'scores': np.full(26, np.nan, np.float32), 'vad': nan3})()
    assert expression_of(frame, empty).expression == 'happy'
    assert expression_of(frame, None).expression == 'happy'
    failed = EmotionResult.failed(Status.SKIPPED, 'no face found in person box')
    assert expression_of(failed, empty) is None and expression_of(failed, state) is not None


def _expressions() -> set[str]:
    from hri_msgs.msg import Expression
    return {v for k, v in vars(Expression).items() if k.isupper() and isinstance(v, str)}


def _dets(photo: str, ids: list[str]) -> list[dict]:
    return [{'id': i, 'score': 0.9, 'cxcywh': [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]}
            for i, (x1, y1, x2, y2) in zip(ids, (p.box for p in PEOPLE[photo]))]


SIZES = {'bus': (BUS_W, BUS_H), 'zidane': (1280, 720)}


def _frames(photo: str, ids: list[str], stamp: list[int], n: int, transport: str) -> dict:
    width, height = SIZES[photo]
    return {'kind': 'repeat', 'n': n, 'hz': 4, 'steps': [
        {'kind': 'image', 'photo': photo, 'stamp': stamp, 'transport': transport},
        {'kind': 'native', 'stamp': stamp, 'width': width, 'height': height,
         'detections': _dets(photo, ids)},
        {'kind': 'await', 'stamp': stamp}]}


def _pixels(xyxy: list[float], photo: str) -> BBox:
    width, height = SIZES[photo]
    return BBox(xyxy[0] * width, xyxy[1] * height, xyxy[2] * width, xyxy[3] * height)


def _check_faces(consumer: Consumer, photo: str, ids: list[str]) -> None:
    """Every visible face of ``photo`` reached the consumer: a roi inside its person's body roi
    (same stamp) on the annotated face, a cropped image of the roi's size, an expression that
    is an Expression constant, all with the image's header; a match with its body."""
    people = PEOPLE[photo]
    expressions = _expressions()
    for track, person in zip(ids, people):
        face, body = f'fb{track}', f'b{track}'
        if person.face is None:
            assert not consumer.rows('added', kind='face', id=face), (photo, person.name)
            continue
        assert consumer.rows('added', kind='face', id=face), (photo, person.name)
        rois = consumer.rows('roi', kind='face', id=face)
        assert rois, (face, consumer.rows('added'))
        body_rois = {tuple(r['stamp']): r for r in consumer.rows('roi', kind='body', id=body)}
        paired = 0
        for r in rois:
            assert r['frame_id'] == 'camera'
            box = _pixels(r['xyxy'], photo)
            assert face_on(box, person), (face, r["xyxy"])
            b = body_rois.get(tuple(r['stamp']))
            if b is not None:
                paired += 1
                assert (b['xyxy'][0] <= r['xyxy'][0] and b['xyxy'][1] <= r['xyxy'][1]
                        and r['xyxy'][2] <= b['xyxy'][2] and r['xyxy'][3] <= b['xyxy'][3]), \
                    (face, r['xyxy'], b['xyxy'])
        assert paired, (face, 'no body roi of the same stamp')
        by_stamp = {tuple(r['stamp']): _pixels(r['xyxy'], photo) for r in rois}
        crops = consumer.rows('cropped', kind='face', id=face)
        # (each subscription matches on its own: a crop may come whose roi did not)
        sized = [(c, by_stamp[tuple(c['stamp'])]) for c in crops if tuple(c['stamp']) in by_stamp]
        assert sized, (face, crops)
        for c, box in sized:
            assert c['encoding'] == 'rgb8' and c['frame_id'] == 'camera'
            assert abs(c['w'] - box.width) < 0.5 and abs(c['h'] - box.height) < 0.5, (c, box)
        exprs = consumer.rows('expression', id=face)
        assert exprs and all(e['expression'] in expressions for e in exprs), exprs
        assert all(-1 <= e['valence'] <= 1 and 0 <= e['confidence'] <= 1 for e in exprs)
        matches = consumer.rows('match', id1=face)
        assert matches and all(m['id2'] == body and m['id1_type'] == 2 and m['id2_type'] == 3
                               for m in matches), matches
        assert any(m['confidence'] > 0.5 for m in matches)


@needs_interfaces
@pytest.mark.parametrize('transport', TRANSPORTS)
def test_a_libhri_consumer_sees_our_faces_bodies_and_matches(harness, tmp_path, transport):
    node, out = start_node(harness, image_transport=transport,
                           **{'rep155.publish': True, 'rep155.forget_after_s': 0.5})
    consumer = Consumer(tmp_path)
    try:
        bus_ids, zidane_ids = ['1', '2', '3', '4'], ['11', '12']
        run_peer(tmp_path, [_frames('bus', bus_ids, [30, 0], 8, transport),
                            _frames('zidane', zidane_ids, [40, 0], 8, transport)])
        assert harness.wait_for(lambda: len(out) >= 16, 60), node.stats.snapshot()
        # after the frames stop, the timer forgets everyone: every id left
        assert harness.wait_for(lambda: len(consumer.rows('removed', kind='face')) >= 4
                                and len(consumer.rows('removed', kind='body')) >= 6, 15), \
            (consumer.rows('added'), consumer.rows('removed'), node.stats.snapshot())
        _check_faces(consumer, 'bus', bus_ids)
        _check_faces(consumer, 'zidane', zidane_ids)
        faces = {r['id'] for r in consumer.rows('added', kind='face')}
        assert faces == {'fb1', 'fb2', 'fb11', 'fb12'}
        assert faces == {r['id'] for r in consumer.rows('removed', kind='face')}
        # the bus people left when zidane's came (forget_after_s), before the frames stopped
        rows = consumer.rows()
        last_zidane = max(i for i, r in enumerate(rows) if r['ev'] == 'roi'
                          and r['id'] == 'fb11')
        assert {r['id'] for r in rows[:last_zidane] if r['ev'] == 'removed'} >= {'fb1', 'fb2'}
        # a face that leaves is 'not associated' any more (IdsMatch: confidence 0)
        assert {m['id1'] for m in consumer.rows('match') if m['confidence'] == 0} == faces
        # bodies: cropped of the body's size, the image's header (a body's first frames may go
        # before the consumer's subscription matched: not every body needs one)
        got = 0
        for photo, ids in (('bus', bus_ids), ('zidane', zidane_ids)):
            for track, person in zip(ids, PEOPLE[photo]):
                x1, y1, x2, y2 = person.box
                for c in consumer.rows('cropped', kind='body', id=f'b{track}'):
                    got += 1
                    assert c['frame_id'] == 'camera' and c['encoding'] == 'rgb8'
                    assert abs(c['w'] - (x2 - x1)) <= 1 and abs(c['h'] - (y2 - y1)) <= 1, c
        assert got, 'no cropped body image'
        assert len(consumer.rows('roi', kind='body')) >= 6
        # the publishers went with the ids
        assert harness.wait_for(lambda: all(
            harness.node.count_publishers(f'/humans/faces/{f}/{leaf}') == 0
            for f in faces for leaf in ('roi', 'cropped', 'expression')), 5)
        assert node.lifecycle_state == 'active' and not harness.spin_errors
    finally:
        consumer.close()


@needs_interfaces
def test_faces_of_another_stack_no_second_face_source(harness, tmp_path):
    """Another stack publishes /humans/faces/tracked (the man in the beige coat, 'f1'): the node
    (rep155.faces auto) publishes no face of its own (no /humans/faces/tracked message, no face
    roi or cropped), the expression of f1 from the state of the person it is on, and, as body
    source, the match f1 - b1."""
    node, out = start_node(harness, **{'rep155.publish': True})
    consumer = Consumer(tmp_path)
    face = [BEIGE_FACE[0] / BUS_W, BEIGE_FACE[1] / BUS_H, BEIGE_FACE[2] / BUS_W,
            BEIGE_FACE[3] / BUS_H]
    try:
        run_peer(tmp_path, [
            {'kind': 'ids', 'topic': '/humans/faces/tracked', 'ids': ['f1'], 'stamp': [50, 0]},
            {'kind': 'sleep', 's': 0.5},
            {'kind': 'repeat', 'n': 8, 'hz': 4, 'steps': [
                {'kind': 'image', 'photo': 'bus', 'stamp': [50, 0]},
                {'kind': 'ids', 'topic': '/humans/faces/tracked', 'ids': ['f1'],
                 'stamp': [50, 0]},
                {'kind': 'roi', 'topic': '/humans/faces/f1/roi', 'xyxy': face, 'stamp': [50, 0]},
                {'kind': 'native', 'stamp': [50, 0], 'width': BUS_W, 'height': BUS_H,
                 'detections': PERSON_DETS},
                {'kind': 'await', 'stamp': [50, 0]}]}])
        assert harness.wait_for(lambda: len(out) >= 8, 60)
        assert harness.wait_for(lambda: consumer.rows('expression', id='f1')
                                and consumer.rows('match', id1='f1'), 10), consumer.rows()
        assert {r['id'] for r in consumer.rows('added', kind='face')} == {'f1'}
        assert node.stats.snapshot().get('rep155.faces_out', 0) == 0
        assert not [p for p in node.publishers if p.topic_name.startswith('/humans/faces/')
                    and not p.topic_name.endswith('/expression')
                    and p.topic_name != '/humans/faces/tracked']
        assert all(m['id2'] == 'b1' for m in consumer.rows('match', id1='f1'))
        exprs = consumer.rows('expression', id='f1')
        assert all(e['expression'] in _expressions() for e in exprs)
    finally:
        consumer.close()


@needs_interfaces
@pytest.mark.parametrize('mode', ['input', 'detect'])
def test_rep155_faces_modes(harness, mode):
    """'input': faces from another stack only, no face stage loaded, no face topics of our own;
    'detect': always the face source (with a backend that finds no faces: the pipeline's own
    face stage), never reading another's faces."""
    node, _ = start_node(harness, **{'rep155.publish': True, 'rep155.faces': mode})
    out = node._rep155_out
    if mode == 'input':
        assert node.pipeline.face_finder is None
        assert out.faces_pub is None and not out.face_source() and out.faces is not None
    else:
        assert node.pipeline.face_finder.loaded
        assert out.faces_pub is not None and out.face_source() and out.faces is None
