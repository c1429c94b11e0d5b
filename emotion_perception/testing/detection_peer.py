"""Another stack, as a separate process: publishes images and detections in each format, or
listens to what the emotion node publishes (tests and benches of ``detections_format`` and
REP-155).

    python -m emotion_perception.testing.detection_peer publish SPEC.json
    python -m emotion_perception.testing.detection_peer listen OUT.json TOPIC=TYPE ...

``publish`` runs the steps of SPEC (JSON: {"steps": [...]}) in order; each publish step waits
until the topic has a subscriber (at most ``match_timeout_s``, default 10 s) and then publishes:

  {"kind": "image", "photo": "bus", "stamp": [sec, nsec]}          sensor_msgs/Image on image
   ("transport": "compressed": a JPEG sensor_msgs/CompressedImage on image/compressed)
  (every step with a stamp may also give "frame_id"; default 'camera')
  {"kind": "native" | "vision_msgs" | "yolo", "stamp": [...], "topic": "detections",
   "detections": [{"id": "7", "class": "person", "class_id": 0, "score": 0.9,
                   "cxcywh": [cx, cy, w, h]}, ...]}      (vision_msgs: "hypotheses": false
                                                           gives an empty results list)
  {"kind": "ids", "topic": "/humans/bodies/tracked", "stamp": [...], "ids": [...]}
  {"kind": "roi", "topic": "/humans/bodies/a/roi", "stamp": [...], "xyxy": [...], "c": 0.9}
  {"kind": "sleep", "s": 0.1}
  {"kind": "await", "stamp": [...], "timeout_s": 30}   until ``emotions`` with that stamp came
                                                        (lockstep with the emotion node)
  {"kind": "repeat", "n": 30, "hz": 30, "steps": [...]}  (stamps get +i/hz seconds)
  {"kind": "stream", ...}   a camera + tracker at a fixed rate whose people come and go, with
                            every answer accounted for (see :class:`Stream`; soak tests)

``listen`` records every message of the given topics (types: emotions, states, events,
expression, ids, roi, vision) as JSON lines of simplified fields to OUT, flushing each, until
SIGTERM/SIGINT.
The caller sets ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST and ROS_DOMAIN_ID.
"""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
from typing import Any

import rclpy
import rclpy.executors
from rclpy.node import Node

from ..ros.messages import stamp_key
from ..ros.qos import RESULTS_QOS, image_qos
from ..ros.rep155 import HRI_QOS


def _header(stamp: list[int], frame: str = 'camera') -> Any:
    from std_msgs.msg import Header
    h = Header(frame_id=frame)
    h.stamp.sec, h.stamp.nanosec = int(stamp[0]), int(stamp[1])
    return h


def _photo(name: str, transport: str = 'raw') -> Any:
    """A sample photo as a raw Image (rgb8) or, ``transport`` 'compressed', a JPEG
    CompressedImage."""
    import numpy as np
    from PIL import Image as PILImage

    from ..core.model_files import sample_image_paths
    from ..ros.image_conversion import numpy_to_image_msg, rgb_to_compressed
    rgb = np.asarray(PILImage.open(sample_image_paths()[name]).convert('RGB'))
    if transport == 'compressed':
        return rgb_to_compressed(rgb, 'jpeg')
    return numpy_to_image_msg(rgb, 'rgb8')


def build(step: dict, photos: dict) -> tuple[type, str, Any, Any]:
    """(message type, topic, message, QoS) of one publish step."""
    kind, hdr = step['kind'], _header(step.get('stamp', [0, 0]), step.get('frame_id', 'camera'))
    if kind == 'image':
        transport = step.get('transport', 'raw')
        if (step['photo'], transport) not in photos:
            photos[step['photo'], transport] = _photo(step['photo'], transport)
        msg = photos[step['photo'], transport]
        msg.header = hdr
        topic = step.get('topic', 'image/compressed' if transport == 'compressed' else 'image')
        return type(msg), topic, msg, image_qos('reliable', 10)
    if kind == 'native':
        from sensor_msgs.msg import RegionOfInterest

        from emotion_perception.msg import PersonDetection, PersonDetectionArray
        msg = PersonDetectionArray(header=hdr, image_width=step.get('width', 0),
                                   image_height=step.get('height', 0))
        for d in step['detections']:
            cx, cy, w, h = d['cxcywh']
            msg.detections.append(PersonDetection(
                track_id=d.get('id', ''), confidence=d.get('score', 0.9),
                bbox=RegionOfInterest(x_offset=int(cx - w / 2), y_offset=int(cy - h / 2),
                                      width=int(w), height=int(h))))
        return PersonDetectionArray, step.get('topic', 'detections'), msg, RESULTS_QOS
    if kind == 'vision_msgs':
        from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose
        msg = Detection2DArray(header=hdr)
        for d in step['detections']:
            det = Detection2D(header=hdr, id=d.get('id', ''))
            det.bbox.center.position.x, det.bbox.center.position.y = map(float, d['cxcywh'][:2])
            det.bbox.size_x, det.bbox.size_y = map(float, d['cxcywh'][2:])
            if d.get('hypotheses', True):
                hyp = ObjectHypothesisWithPose()
                hyp.hypothesis.class_id = str(d.get('class', 'person'))
                hyp.hypothesis.score = float(d.get('score', 0.9))
                det.results.append(hyp)
            msg.detections.append(det)
        return Detection2DArray, step.get('topic', 'detections'), msg, RESULTS_QOS
    if kind == 'yolo':
        from yolo_msgs.msg import Detection, DetectionArray
        msg = DetectionArray(header=hdr)
        for d in step['detections']:
            det = Detection(class_id=int(d.get('class_id', 0)), class_name=d.get('class', ''),
                            score=float(d.get('score', 0.9)), id=d.get('id', ''))
            det.bbox.center.position.x, det.bbox.center.position.y = map(float, d['cxcywh'][:2])
            det.bbox.size.x, det.bbox.size.y = map(float, d['cxcywh'][2:])
            msg.detections.append(det)
        return DetectionArray, step.get('topic', 'detections'), msg, RESULTS_QOS
    if kind == 'ids':
        from hri_msgs.msg import IdsList
        return IdsList, step['topic'], IdsList(header=hdr, ids=list(step['ids'])), HRI_QOS
    if kind == 'roi':
        from hri_msgs.msg import NormalizedRegionOfInterest2D as Roi
        x1, y1, x2, y2 = (float(v) for v in step['xyxy'])
        return Roi, step['topic'], Roi(header=hdr, xmin=x1, ymin=y1, xmax=x2, ymax=y2,
                                       c=float(step.get('c', 0.9))), HRI_QOS
    raise ValueError(f'unknown step kind {kind!r}')


def _shifted(step: dict, dt: float) -> dict:
    out = dict(step)
    if 'stamp' in step:
        ns = int(step['stamp'][0]) * 10**9 + int(step['stamp'][1]) + int(round(dt * 1e9))
        out['stamp'] = [ns // 10**9, ns % 10**9]
    return out


class Publisher(Node):
    """Runs publish steps (see the module docstring)."""

    def __init__(self, match_timeout_s: float = 10.0) -> None:
        super().__init__('detection_peer')
        self.pubs: dict[tuple[str, type], Any] = {}
        self.photos: dict = {}
        self.match_timeout_s = match_timeout_s
        self.answered: set = set()
        self._answers_sub = None
        self._executor = rclpy.executors.SingleThreadedExecutor()
        self._executor.add_node(self)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the spin thread before the context goes (else the process aborts at exit)."""
        self._executor.shutdown(timeout_sec=5.0)
        self._thread.join(timeout=10.0)
        self.destroy_node()

    def _spin(self) -> None:
        try:
            self._executor.spin()
        except Exception:  # noqa: BLE001 - shutdown
            pass

    def _await(self, stamp: list[int], timeout_s: float) -> None:
        if self._answers_sub is None:
            from emotion_perception.msg import PersonEmotionArray
            self._answers_sub = self.create_subscription(
                PersonEmotionArray, 'emotions',
                lambda m: self.answered.add(stamp_key(m.header)),
                RESULTS_QOS)
        end = time.monotonic() + timeout_s
        while tuple(stamp) not in self.answered and time.monotonic() < end:
            time.sleep(0.01)

    def _publisher(self, msg_type: type, topic: str, qos: Any) -> Any:
        key = (topic, msg_type)
        if key not in self.pubs:
            self.pubs[key] = self.create_publisher(msg_type, topic, qos)
            end = time.monotonic() + self.match_timeout_s
            while self.pubs[key].get_subscription_count() < 1 and time.monotonic() < end:
                time.sleep(0.01)
        return self.pubs[key]

    def run(self, steps: list[dict]) -> None:
        for step in steps:
            if step['kind'] == 'sleep':
                time.sleep(float(step['s']))
            elif step['kind'] == 'await':
                self._await(step['stamp'], float(step.get('timeout_s', 30.0)))
            elif step['kind'] == 'stream':
                Stream(self, step).run()
            elif step['kind'] == 'repeat':
                period = 1.0 / float(step['hz'])
                t0 = time.monotonic()
                for i in range(int(step['n'])):
                    self.run([_shifted(s, i * period) for s in step['steps']])
                    time.sleep(max(0.0, t0 + (i + 1) * period - time.monotonic()))
            else:
                msg_type, topic, msg, qos = build(step, self.photos)
                self._publisher(msg_type, topic, qos).publish(msg)


class Stream:
    """A camera and a tracker: ``hz`` frames a second for ``seconds``, each an image (raw
    ``image`` or compressed ``image/compressed``) of ``photo`` and its native detections array
    (the photo's annotated people, ``testing.sample_people``), whose track ids change every
    ``id_period_s`` (person ``j`` of period ``k`` is ``p<k>_<j>``, the periods of the people
    shifted so ids come and go all the time). Every ``emotions`` array is counted by stamp.

    Step keys: photo ('zidane'), transport ('raw' | 'compressed'), hz (5), seconds (10),
    start ([1000, 0]: the first stamp), id_period_s (2.0), answer_timeout_s (30: how long the
    end waits for the last answers), report (a JSON file, rewritten every ``report_every_s``
    (5) seconds and at the end: frames sent, stamps answered once / more than once / not at
    all, track ids used, persons by status), faces (false; true: also count the face ids seen
    in ``/humans/faces/tracked``, ``face_ids``: the REP-155 face output under id churn).
    """

    def __init__(self, peer: 'Publisher', step: dict) -> None:
        from .sample_people import PEOPLE
        self.peer, self.step = peer, step
        self.photo = step.get('photo', 'zidane')
        self.boxes = [p.box for p in PEOPLE[self.photo]]
        self.hz, self.seconds = float(step.get('hz', 5)), float(step.get('seconds', 10))
        self.id_period_s = float(step.get('id_period_s', 2.0))
        self.answers: dict[tuple[int, int], int] = {}
        self.status: dict[int, int] = {}
        self.lock = threading.Lock()
        self.sent: list[tuple[int, int]] = []
        self.ids: set[str] = set()
        self.face_ids: set[str] = set()

    def _on_answer(self, msg: Any) -> None:
        key = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        with self.lock:
            self.answers[key] = self.answers.get(key, 0) + 1
            for p in msg.persons:
                self.status[int(p.status)] = self.status.get(int(p.status), 0) + 1

    def _image(self) -> tuple[type, str, Any]:
        transport = self.step.get('transport', 'raw')
        image = _photo(self.photo, transport)
        return type(image), 'image/compressed' if transport == 'compressed' else 'image', image

    def _detections(self, hdr: Any, t: float, width: int, height: int) -> Any:
        from sensor_msgs.msg import RegionOfInterest

        from emotion_perception.msg import PersonDetection, PersonDetectionArray
        msg = PersonDetectionArray(header=hdr, image_width=width, image_height=height)
        for j, (x1, y1, x2, y2) in enumerate(self.boxes):
            period = int(t / self.id_period_s + j / max(1, len(self.boxes)))
            track_id = f'p{period}_{j}'
            self.ids.add(track_id)
            msg.detections.append(PersonDetection(
                track_id=track_id, confidence=0.9,
                bbox=RegionOfInterest(x_offset=int(x1), y_offset=int(y1),
                                      width=int(x2 - x1), height=int(y2 - y1))))
        return msg

    def report(self, done: bool) -> dict:
        with self.lock:
            answers, status = dict(self.answers), dict(self.status)
        counts = [answers.get(k, 0) for k in self.sent]
        out = {'done': done, 'sent': len(self.sent), 'answered_once': counts.count(1),
               'answered_twice_or_more': sum(1 for c in counts if c > 1),
               'unanswered': counts.count(0), 'ids': len(self.ids),
               'face_ids': len(self.face_ids),
               'first_unanswered': [list(k) for k, c in zip(self.sent, counts) if c == 0][:5],
               'persons_by_status': {str(k): v for k, v in sorted(status.items())}}
        path = self.step.get('report')
        if path:
            with open(path + '.tmp', 'w') as f:
                json.dump(out, f)
            os.replace(path + '.tmp', path)
        return out

    def run(self) -> None:
        from emotion_perception.msg import PersonDetectionArray, PersonEmotionArray
        self.peer.create_subscription(PersonEmotionArray, 'emotions', self._on_answer,
                                      RESULTS_QOS)
        if self.step.get('faces'):
            from hri_msgs.msg import IdsList
            self.peer.create_subscription(IdsList, '/humans/faces/tracked',
                                          lambda m: self.face_ids.update(m.ids), HRI_QOS)
        img_type, img_topic, image = self._image()
        width, height = _photo_size(image)
        img_pub = self.peer._publisher(img_type, img_topic, image_qos('reliable', 10))
        det_pub = self.peer._publisher(PersonDetectionArray, 'detections', RESULTS_QOS)
        start = self.step.get('start', [1000, 0])
        t0 = time.monotonic()
        last_report = t0
        every = float(self.step.get('report_every_s', 5.0))
        for i in range(int(self.hz * self.seconds)):
            t = i / self.hz
            hdr = _header(_shifted({'stamp': start}, t)['stamp'])
            image.header = hdr
            img_pub.publish(image)
            det_pub.publish(self._detections(hdr, t, width, height))
            self.sent.append((hdr.stamp.sec, hdr.stamp.nanosec))
            if time.monotonic() - last_report >= every:
                last_report = time.monotonic()
                self.report(False)
            time.sleep(max(0.0, t0 + (i + 1) / self.hz - time.monotonic()))
        end = time.monotonic() + float(self.step.get('answer_timeout_s', 30.0))
        while time.monotonic() < end:
            with self.lock:
                if all(k in self.answers for k in self.sent):
                    break
            time.sleep(0.05)
        time.sleep(0.5)  # a duplicate answer would come right after the first
        self.report(True)


def _photo_size(image: Any) -> tuple[int, int]:
    """(width, height) of a raw or compressed image message."""
    if hasattr(image, 'width'):
        return int(image.width), int(image.height)
    from ..ros.image_conversion import compressed_image_size
    return compressed_image_size(bytes(image.data))


def _num(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def summary(kind: str, msg: Any) -> dict:
    """JSON-able fields of a received message."""
    out: dict = {'stamp': list(stamp_key(msg.header)), 'frame_id': msg.header.frame_id}
    if kind == 'emotions':
        out['persons'] = [{'track_id': p.track_id, 'status': int(p.status),
                           'reason': p.status_reason,
                           'bbox': [p.bbox.x_offset, p.bbox.y_offset, p.bbox.width,
                                    p.bbox.height],
                           'scores': [_num(s) for s in p.scores],
                           'vad': [_num(p.valence), _num(p.arousal), _num(p.dominance)]}
                          for p in msg.persons]
    elif kind == 'states':
        out['persons'] = [{'track_id': p.track_id, 'scores': [_num(s) for s in p.scores],
                           'labels': list(p.labels),
                           'label_since': [[t.sec, t.nanosec] for t in p.label_since],
                           'vad': [_num(p.valence), _num(p.arousal), _num(p.dominance)],
                           'confidence': _num(p.confidence), 'observations': p.observations,
                           'first_seen': [p.first_seen.sec, p.first_seen.nanosec],
                           'last_observed': [p.last_observed.sec, p.last_observed.nanosec]}
                          for p in msg.persons]
    elif kind == 'events':
        out['events'] = [{'track_id': e.track_id, 'category': e.category, 'kind': int(e.kind),
                          'stamp': [e.stamp.sec, e.stamp.nanosec], 'score': _num(e.score),
                          'reason': e.reason} for e in msg.events]
    elif kind == 'expression':
        out.update(expression=msg.expression, valence=_num(msg.valence),
                   arousal=_num(msg.arousal), confidence=_num(msg.confidence))
    elif kind == 'ids':
        out['ids'] = list(msg.ids)
    elif kind == 'roi':
        out['xyxy'] = [msg.xmin, msg.ymin, msg.xmax, msg.ymax]
    elif kind == 'vision':
        out['detections'] = [{'id': d.id, 'class': d.results[0].hypothesis.class_id,
                              'score': d.results[0].hypothesis.score,
                              'cxcywh': [d.bbox.center.position.x, d.bbox.center.position.y,
                                         d.bbox.size_x, d.bbox.size_y]}
                             for d in msg.detections]
    return out


def listen(path: str, specs: list[str]) -> None:
    from emotion_perception.msg import (EmotionEventArray, PersonEmotionArray,
                                        PersonEmotionStateArray)

    from ..ros.qos import EVENTS_QOS
    types: dict[str, tuple[Any, Any]] = {'emotions': (PersonEmotionArray, RESULTS_QOS),
                                         'states': (PersonEmotionStateArray, RESULTS_QOS),
                                         'events': (EmotionEventArray, EVENTS_QOS)}
    if any(s.rsplit('=', 1)[1] not in types for s in specs):
        from hri_msgs.msg import Expression, IdsList, NormalizedRegionOfInterest2D
        types.update(expression=(Expression, HRI_QOS), ids=(IdsList, HRI_QOS),
                     roi=(NormalizedRegionOfInterest2D, HRI_QOS))
    if any(s.endswith('=vision') for s in specs):
        from vision_msgs.msg import Detection2DArray
        types['vision'] = (Detection2DArray, RESULTS_QOS)
    node = Node('detection_listener')
    out = open(path, 'w')
    for spec in specs:
        topic, kind = spec.rsplit('=', 1)
        msg_type, qos = types[kind]

        def record(msg: Any, topic: str = topic, kind: str = kind) -> None:
            out.write(json.dumps({'topic': topic, **summary(kind, msg)}) + '\n')
            out.flush()
        node.create_subscription(msg_type, topic, record, qos)
    print('listening', flush=True)
    try:
        rclpy.spin(node)
    finally:
        out.close()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    rclpy.init()
    try:
        if argv[0] == 'publish':
            with open(argv[1]) as f:
                spec = json.load(f)
            node = Publisher(spec.get('match_timeout_s', 10.0))
            try:
                node.run(spec['steps'])
                time.sleep(spec.get('linger_s', 1.0))  # reliable delivery of the last messages
            finally:
                node.close()
        else:
            listen(argv[1], argv[2:])
    except KeyboardInterrupt:
        pass
    finally:
        if rclpy.ok():
            rclpy.shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
