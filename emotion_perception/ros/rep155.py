"""REP-155 (ROS4HRI) plumbing of the emotion node: bodies and faces in, emotions out.

Topics (REP-155): ``/humans/bodies/tracked`` and ``/humans/faces/tracked`` (hri_msgs/IdsList),
``/humans/bodies/<id>/roi`` and ``/humans/faces/<id>/roi`` (hri_msgs/
NormalizedRegionOfInterest2D, normalised xyxy), ``/humans/faces/<id>/expression``
(hri_msgs/Expression); and ours: ``/humans/bodies/<id>/emotion`` (PersonEmotionArray with that
one person). QoS: reliable, volatile, as libhri (SystemDefaultsQoS) subscribes; a best-effort
publisher would be invisible to it.

Bounded: at most ``max_ids`` per-id subscriptions (per kind) and per-id publishers exist; ids
beyond are refused with a counter (``rep155.ids_over_cap``) and a throttled warning, ids that
are not valid ROS name tokens are refused (``rep155.invalid_ids``). Subscriptions and
publishers of ids gone from a tracked list (or unseen for ``forget_after_s`` where this node is
the body source) are destroyed.

The message package hri_msgs is imported by :func:`load` only (optional dependency).
"""
from __future__ import annotations

import collections
import math
import threading
import time
from typing import Any, Callable, Sequence

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from emotion_perception.msg import PersonEmotionArray

from ..core.expressions import to_expression
from ..core.types import BBox, Status
from .detection_formats import is_name_token, message_module, rep155_id
from .messages import emotion_to_msg, roi_to_bbox, stamp_key

#: libhri subscribes with rclcpp::SystemDefaultsQoS: reliable, volatile
HRI_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10,
                     reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.VOLATILE)
BODIES = '/humans/bodies'
FACES = '/humans/faces'
#: a face must have its centre in the top fraction of a person's box (the face baseline's
#: default ``face_search_fraction``)
FACE_SEARCH_FRACTION = 0.6
#: the roi of a face is used for frames up to this long after its stamp (faces may come from a
#: slower detector than the bodies)
FACE_ROI_MAX_AGE_S = 1.0


def load() -> Any:
    """``hri_msgs.msg`` (FormatUnavailable with the apt package when missing)."""
    return message_module('hri_msgs')


class IdSubscriptions:
    """Per-id subscriptions (``<prefix>/<id>/<leaf>``) following a tracked list, bounded."""

    def __init__(self, node: Any, prefix: str, leaf: str, msg_type: type,
                 callback: Callable[[str, Any], None], max_ids: int) -> None:
        self.node, self.prefix, self.leaf = node, prefix, leaf
        self.msg_type, self.callback, self.max_ids = msg_type, callback, max_ids
        self.subs: dict[str, Any] = {}

    def update(self, ids: Sequence[str]) -> list[str]:
        """Follow the tracked list ``ids``; returns the ids accepted (valid, within the cap)."""
        accepted: list[str] = []
        seen: set[str] = set()
        invalid = over = 0
        for i in ids:
            if i in seen:
                continue
            seen.add(i)
            if not is_name_token(i):
                invalid += 1
            elif len(accepted) >= self.max_ids:
                over += 1
            else:
                accepted.append(i)
        stats, log = self.node.stats, self.node.kind_log
        if invalid:
            stats.count('rep155.invalid_ids', invalid)
            log.warn('rep155.invalid_ids', f'{invalid} id(s) in {self.prefix}/tracked are not '
                     'valid ROS name tokens (REP-155 ids must be): ignored')
        if over:
            stats.count('rep155.ids_over_cap', over)
            log.warn('rep155.ids_over_cap', f'{self.prefix}/tracked names more than '
                     f'rep155.max_ids={self.max_ids} ids: {over} ignored (no subscription)')
        keep = set(accepted)
        for i in [i for i in self.subs if i not in keep]:
            self.node.destroy_subscription(self.subs.pop(i))
        for i in accepted:
            if i not in self.subs:
                self.subs[i] = self.node.create_subscription(
                    self.msg_type, f'{self.prefix}/{i}/{self.leaf}',
                    lambda msg, i=i: self.callback(i, msg), HRI_QOS)
        return accepted

    def close(self) -> None:
        self.update([])


class BodyInput:
    """``rep155`` input: the tracked bodies and their rois by stamp (see emotion_node)."""

    def __init__(self, node: Any, cond: threading.Condition, max_ids: int, max_stamps: int
                 ) -> None:
        self.hri = load()
        self.node, self.cond, self.max_stamps = node, cond, max_stamps
        self.ids: list[str] = []                 # the latest tracked list (accepted ids)
        self.list_stamp: tuple[int, int] = (0, 0)
        self.rois: collections.OrderedDict = collections.OrderedDict()  # stamp -> {id: roi}
        self.subs = IdSubscriptions(node, BODIES, 'roi', self.hri.NormalizedRegionOfInterest2D,
                                    self._on_roi, max_ids)
        self.tracked_sub = node.create_subscription(self.hri.IdsList, f'{BODIES}/tracked',
                                                    self._on_tracked, HRI_QOS)

    def _on_tracked(self, msg: Any) -> None:
        self.node.stats.count('rep155.tracked_in')
        ids = self.subs.update(list(msg.ids))
        with self.cond:
            self.ids, self.list_stamp = ids, stamp_key(msg.header)
            self.cond.notify_all()

    def _on_roi(self, body_id: str, msg: Any) -> None:
        self.node.stats.count('rep155.rois_in')
        key = stamp_key(msg.header)
        with self.cond:
            if body_id not in self.ids:
                self.node.stats.count('rep155.roi_unknown_body')
                return
            self.rois.setdefault(key, {})[body_id] = msg
            self.rois.move_to_end(key)
            while len(self.rois) > self.max_stamps:
                self.rois.popitem(last=False)
            self.cond.notify_all()

    def ready(self, key: tuple[int, int]) -> bool:
        """Whether the body frame of the image stamped ``key`` is complete (under ``cond``):
        every id of the latest tracked list has its roi for this stamp, and the list is not
        empty or is stamped at or after the image (an empty list from before the image may
        just not have been updated yet)."""
        got = self.rois.get(key, {})
        if not self.ids:
            return self.list_stamp >= key
        return all(i in got for i in self.ids)

    def take(self, key: tuple[int, int]) -> tuple[list[str], dict]:
        """(ids, rois) of the frame stamped ``key`` (under ``cond``); forgets its rois."""
        return list(self.ids), self.rois.pop(key, {})

    def close(self) -> list:
        self.subs.close()
        with self.cond:
            self.rois.clear()
            self.ids = []
        return [self.tracked_sub]


class FaceInput:
    """``/humans/faces/tracked`` and each face's roi (newest kept), for the expressions."""

    def __init__(self, node: Any, hri: Any, max_ids: int) -> None:
        self.node, self.lock = node, threading.Lock()
        self.ids: list[str] = []
        self.rois: dict[str, Any] = {}
        self.subs = IdSubscriptions(node, FACES, 'roi', hri.NormalizedRegionOfInterest2D,
                                    self._on_roi, max_ids)
        self.tracked_sub = node.create_subscription(hri.IdsList, f'{FACES}/tracked',
                                                    self._on_tracked, HRI_QOS)

    def _on_tracked(self, msg: Any) -> None:
        ids = self.subs.update(list(msg.ids))
        with self.lock:
            self.ids = ids
            self.rois = {i: r for i, r in self.rois.items() if i in ids}

    def _on_roi(self, face_id: str, msg: Any) -> None:
        with self.lock:
            if face_id in self.ids:
                self.rois[face_id] = msg

    def faces(self, stamp_s: float, width: int, height: int) -> list[tuple[str, Any]]:
        """(face id, Face in pixels) of the tracked faces with a roi no older than
        ``FACE_ROI_MAX_AGE_S`` before ``stamp_s`` (nor after it)."""
        from ..core.faces import Face  # imports torch: only where faces are published
        out = []
        with self.lock:
            items = [(i, self.rois[i]) for i in self.ids if i in self.rois]
        for face_id, roi in items:
            t = roi.header.stamp.sec + roi.header.stamp.nanosec * 1e-9
            coords = (roi.xmin, roi.ymin, roi.xmax, roi.ymax)
            if not (0.0 <= stamp_s - t <= FACE_ROI_MAX_AGE_S) or not all(
                    math.isfinite(c) for c in coords):
                continue
            score = float(roi.c) if math.isfinite(roi.c) and 0 < roi.c <= 1 else 1.0
            box = BBox(roi.xmin * width, roi.ymin * height, roi.xmax * width, roi.ymax * height)
            if box.area > 0:
                out.append((face_id, Face(box=box, score=score, source='rep155')))
        return out

    def close(self) -> list:
        self.subs.close()
        return [self.tracked_sub]


class Rep155Output:
    """Publishes per-body emotions, face expressions and (as body source) bodies.

    All calls from the emotion node's worker thread.
    """

    def __init__(self, node: Any, max_ids: int, forget_after_s: float, body_source: bool,
                 tracked: Callable[[], set] | None = None) -> None:
        self.hri = load()
        self.tracked = tracked  # rep155 input: the body ids tracked now
        self.node, self.max_ids = node, max_ids
        self.forget_after_s, self.body_source = forget_after_s, body_source
        self.pubs: dict[tuple[str, str], Any] = {}   # (kind, id) -> publisher
        self.last_seen: dict[str, float] = {}        # body id -> monotonic (body source)
        self.faces = FaceInput(node, self.hri, max_ids)
        self.tracked_pub = (node.create_publisher(self.hri.IdsList, f'{BODIES}/tracked', HRI_QOS)
                            if body_source else None)

    def _pub(self, kind: str, ident: str, msg_type: type, topic: str) -> Any:
        key = (kind, ident)
        pub = self.pubs.get(key)
        if pub is None:
            if sum(1 for k, _ in self.pubs if k == kind) >= self.max_ids:
                self.node.stats.count('rep155.ids_over_cap')
                self.node.kind_log.warn('rep155.pubs_over_cap', f'more than rep155.max_ids='
                                        f'{self.max_ids} {kind} publishers: {topic} not published')
                return None
            pub = self.pubs[key] = self.node.create_publisher(msg_type, topic, HRI_QOS)
        return pub

    def _drop(self, keep: Callable[[str, str], bool]) -> None:
        for key in [k for k in self.pubs if not keep(*k)]:
            self.node.destroy_publisher(self.pubs.pop(key))
            self.node.stats.count('rep155.publishers_removed')

    def publish(self, header: Any, width: int, height: int, persons: Sequence[Any],
                results: Sequence[Any]) -> None:
        """One answered frame: ``persons`` (PersonDetection msgs), ``results`` (EmotionResult)
        and the image size in pixels (0 = unknown: no rois nor faces then)."""
        now = time.monotonic()
        stamp_s = header.stamp.sec + header.stamp.nanosec * 1e-9
        answered = []  # (body id, person msg, result) of OK / CACHED persons with an id
        for det, res in zip(persons, results):
            bid = rep155_id(det.track_id)
            if not bid:
                continue
            if self.body_source:
                self.last_seen[bid] = now
            if res.status in (Status.OK, Status.CACHED):
                answered.append((bid, det, res))
        if self.body_source:
            self._publish_bodies(header, width, height, persons, now)
        elif self.tracked is not None:
            live = self.tracked()
            self._drop(lambda kind, ident: ident in live if kind == 'emotion' else True)
        for bid, det, res in answered:
            pub = self._pub('emotion', bid, PersonEmotionArray, f'{BODIES}/{bid}/emotion')
            if pub is not None:
                person = self._person_msg(det, res)
                pub.publish(PersonEmotionArray(header=header, persons=[person]))
                self.node.stats.count('rep155.emotions_out')
        if answered and width > 0 and height > 0:
            self._publish_expressions(header, stamp_s, width, height, answered)

    @staticmethod
    def _person_msg(det: Any, res: Any) -> Any:
        return emotion_to_msg(det, res)

    def _publish_bodies(self, header: Any, width: int, height: int, persons: Sequence[Any],
                        now: float) -> None:
        gone = [b for b, t in self.last_seen.items() if now - t > self.forget_after_s]
        for b in gone:
            del self.last_seen[b]
        ids = list(self.last_seen)[:self.max_ids]
        self._drop(lambda kind, ident: ident in self.last_seen if kind in ('emotion', 'roi')
                   else True)
        self.tracked_pub.publish(self.hri.IdsList(header=header, ids=ids))
        if width <= 0 or height <= 0:
            return
        for det in persons:
            bid = rep155_id(det.track_id)
            if not bid or bid not in ids:
                continue
            box = roi_to_bbox(det.bbox)
            if box.area <= 0:
                continue
            pub = self._pub('roi', bid, self.hri.NormalizedRegionOfInterest2D,
                            f'{BODIES}/{bid}/roi')
            if pub is not None:
                pub.publish(self.hri.NormalizedRegionOfInterest2D(
                    header=header, xmin=min(1.0, box.x1 / width),
                    ymin=min(1.0, box.y1 / height), xmax=min(1.0, box.x2 / width),
                    ymax=min(1.0, box.y2 / height), c=float(det.confidence)))

    def _publish_expressions(self, header: Any, stamp_s: float, width: int, height: int,
                             answered: list) -> None:
        faces = self.faces.faces(stamp_s, width, height)
        if not faces:
            return
        from ..core.faces import assign_faces
        boxes = [roi_to_bbox(det.bbox) for _, det, _ in answered]
        chosen = assign_faces(boxes, [f for _, f in faces], FACE_SEARCH_FRACTION)
        by_face = {id(f): i for i, f in faces}
        live = set()
        for (bid, det, res), face in zip(answered, chosen):
            if face is None:
                continue
            face_id = by_face[id(face)]
            live.add(face_id)
            try:
                est = to_expression(res.scores, res.vad)
            except ValueError:
                continue
            pub = self._pub('expression', face_id, self.hri.Expression,
                            f'{FACES}/{face_id}/expression')
            if pub is not None:
                pub.publish(self.hri.Expression(
                    header=header, expression=est.expression, valence=est.valence,
                    arousal=est.arousal, confidence=est.confidence))
                self.node.stats.count('rep155.expressions_out')
        tracked = set(self.faces.ids)
        self._drop(lambda kind, ident: ident in tracked if kind == 'expression' else True)

    def prune(self) -> None:
        """Forget bodies unseen for ``forget_after_s`` (also when no frame comes)."""
        if self.body_source:
            now = time.monotonic()
            for b in [b for b, t in self.last_seen.items() if now - t > self.forget_after_s]:
                del self.last_seen[b]
            self._drop(lambda kind, ident: ident in self.last_seen
                       if kind in ('emotion', 'roi') else True)

    def close(self) -> list:
        self._drop(lambda kind, ident: False)
        subs = self.faces.close()
        if self.tracked_pub is not None:
            self.node.destroy_publisher(self.tracked_pub)
            self.tracked_pub = None
        return subs
