"""REP-155 (ROS4HRI) output of the emotion node: bodies, faces, expressions and face-body
matches, as libhri and ROS4HRI's person manager read them.

What is published (README "ROS4HRI" has the table per configuration); every message carries
the header of the frame's image (stamp and frame_id), QoS reliable + volatile
(``rep155.HRI_QOS``, what libhri subscribes with):

* always: ``/humans/bodies/<id>/emotion`` (ours: PersonEmotionArray with that one person);
* as body source (a non-rep155 input): ``/humans/bodies/tracked`` (IdsList) and per body
  ``roi`` (NormalizedRegionOfInterest2D) and ``cropped`` (sensor_msgs/Image rgb8, the body's
  pixels);
* as face source (:meth:`Rep155Output.face_source`: ``rep155.faces`` 'detect', or 'auto' while no
  other node publishes ``/humans/faces/tracked``): ``/humans/faces/tracked`` and per face
  ``roi``, ``cropped`` (the face's pixels: exactly the roi, in whole pixels) and ``expression``;
  face ids are :func:`~.rep155.face_id` of the body id, one face per body (the faces are the
  pipeline's face stage's: ``core.faces.FaceFinder``, assignment by ``assign_faces``);
* with another stack's faces: ``/humans/faces/<id>/expression`` for the faces in its
  ``/humans/faces/tracked`` (given to bodies by ``assign_faces``), none of the face topics
  above (no second face source);
* ``/humans/candidate_matches`` (IdsMatch: face id, FACE, body id, BODY, confidence = the face
  detector's score) for every face given to a body in a frame, where this node publishes the
  face or the body (the person manager fuses them into one person); a face forgotten gets a
  match of confidence 0 ("not associated any more", hri_msgs/IdsMatch).

Expressions come from the person's smoothed state (``core.state``) when it holds evidence,
else from the frame's result (OK or CACHED).

Forgetting: a body (body source) or a face (face source) unseen for ``forget_after_s`` leaves
its tracked list, and its publishers are destroyed; with the rep155 input, bodies leave with the
input's newest list, and their faces with them. :meth:`prune` (the node's timer) does it also
when no frame comes. Images are converted for ``cropped`` only while someone subscribes.

Threads and entities: the rules of ``ros.rep155`` (per-id publishers without QoS event handlers,
destroyed through ``rclpy_compat.destroy_entity``; all under one lock; nothing after close).
"""
from __future__ import annotations

import math
import threading
import time
from typing import Any, Callable, Collection, Sequence

import numpy as np
from sensor_msgs.msg import Image

from emotion_perception.msg import PersonEmotionArray

from ..core.expressions import ExpressionEstimate, to_expression
from ..core.types import Status
from .detection_formats import rep155_id
from .image_conversion import numpy_to_image_msg
from .messages import emotion_to_msg, roi_to_bbox, stamp_seconds
from .rclpy_compat import destroy_entity, no_publisher_events
from .rep155 import BODIES, FACE_SEARCH_FRACTION, FACES, HRI_QOS, FaceInput, face_id, load

#: how often the emotion node's timer calls :meth:`Rep155Output.prune` (seconds)
PRUNE_PERIOD_S = 0.5
#: ``/humans/candidate_matches``
MATCHES = '/humans/candidate_matches'
#: ``rep155.faces``: who publishes the faces
FACE_MODES = ('auto', 'detect', 'input')
#: 'auto' looks at the ROS graph for another face source at most this often (seconds)
FACE_SOURCE_CHECK_S = 0.5

Box = tuple[int, int, int, int]  # x1, y1, x2, y2 whole pixels, x2/y2 exclusive


def pixel_box(box: Any, width: int, height: int) -> Box | None:
    """The whole pixels of a ``BBox`` (xyxy floats) inside a ``width`` x ``height`` image:
    floor of the top-left, ceil of the bottom-right, clipped; None when nothing is left."""
    coords = (box.x1, box.y1, box.x2, box.y2)
    if not all(math.isfinite(c) for c in coords):
        return None
    x1, y1 = max(0, math.floor(box.x1)), max(0, math.floor(box.y1))
    x2, y2 = min(width, math.ceil(box.x2)), min(height, math.ceil(box.y2))
    return (x1, y1, x2, y2) if x2 > x1 and y2 > y1 else None


def expression_of(result: Any, state: Any) -> ExpressionEstimate | None:
    """The expression of a person: from its state when that holds evidence (finite smoothed
    scores), else from the frame's result when OK / CACHED; None when neither can say."""
    for scores, vad, usable in (
            (getattr(state, 'scores', None), getattr(state, 'vad', None), state is not None),
            (result.scores, result.vad, result.status in (Status.OK, Status.CACHED))):
        if usable and scores is not None and np.isfinite(np.asarray(scores, float)).any():
            try:
                return to_expression(scores, vad)
            except ValueError:
                return None
    return None


class Rep155Output:
    """Publishes per-body emotions and, by configuration, bodies, faces, expressions and
    face-body matches (see the module docstring).

    Thread-safe: :meth:`publish` runs in whichever thread answers a frame, :meth:`prune` in
    the node's timer, :meth:`close` on the transition thread; nothing is published or created
    after ``close``.
    """

    def __init__(self, node: Any, max_ids: int, forget_after_s: float, body_source: bool,
                 faces: str = 'auto', tracked: Callable[[], Collection[str]] | None = None
                 ) -> None:
        """``faces``: ``rep155.faces`` (:data:`FACE_MODES`); ``tracked``: with the rep155
        input, the body ids tracked now (its newest list)."""
        if faces not in FACE_MODES:
            raise ValueError(f'rep155.faces must be one of {FACE_MODES}, got {faces!r}')
        self.hri = load()
        self.tracked, self.face_mode = tracked, faces
        self.node, self.max_ids = node, max_ids
        self.forget_after_s, self.body_source = forget_after_s, body_source
        self.pubs: dict[tuple[str, str], Any] = {}   # (kind, id) -> publisher
        self.last_seen: dict[str, float] = {}        # body id -> monotonic (body source)
        self.face_seen: dict[str, tuple[str, float]] = {}  # own face id -> (body id, monotonic)
        self._lock = threading.Lock()
        self._closed = False
        self._frame_id = ''
        self._other_faces, self._checked = False, -math.inf
        self.faces = (FaceInput(node, self.hri, max_ids, ignore=self.face_source)
                      if faces != 'detect' else None)
        self.tracked_pub = (node.create_publisher(self.hri.IdsList, f'{BODIES}/tracked', HRI_QOS)
                            if body_source else None)
        self.faces_pub = (node.create_publisher(self.hri.IdsList, f'{FACES}/tracked', HRI_QOS)
                          if faces != 'input' else None)
        self.matches_pub = (node.create_publisher(self.hri.IdsMatch, MATCHES, HRI_QOS)
                            if body_source or faces != 'input' else None)

    # -- who publishes the faces -----------------------------------------------------------------
    def face_source(self) -> bool:
        """Whether this node publishes the faces now: ``rep155.faces`` 'detect'; 'auto' while
        no other node publishes ``/humans/faces/tracked`` (the ROS graph, looked at every
        ``FACE_SOURCE_CHECK_S``); never with 'input'."""
        if self.face_mode != 'auto':
            return self.face_mode == 'detect'
        now = time.monotonic()
        if now - self._checked >= FACE_SOURCE_CHECK_S:
            self._checked, self._other_faces = now, self._another_face_source()
        return not self._other_faces

    def _another_face_source(self) -> bool:
        me = (self.node.get_name(), self.node.get_namespace())
        try:
            infos = self.node.get_publishers_info_by_topic(f'{FACES}/tracked')
        except Exception:  # noqa: BLE001 - graph query during shutdown
            return self._other_faces
        return any((i.node_name, i.node_namespace) != me for i in infos)

    # -- publishers ------------------------------------------------------------------------------
    def _pub(self, kind: str, ident: str, msg_type: type, topic: str) -> Any:
        key = (kind, ident)
        pub = self.pubs.get(key)
        if pub is None:
            if sum(1 for k, _ in self.pubs if k == kind) >= self.max_ids:
                self.node.stats.count('rep155.ids_over_cap')
                self.node.kind_log.warn('rep155.pubs_over_cap', f'more than rep155.max_ids='
                                        f'{self.max_ids} {kind} publishers: {topic} not published')
                return None
            pub = self.pubs[key] = self.node.create_publisher(
                msg_type, topic, HRI_QOS, event_callbacks=no_publisher_events())
        return pub

    def _bodies_now(self) -> set[str] | None:
        """The body ids tracked now (body source: not forgotten; rep155 input: its newest list;
        None: unknown)."""
        if self.body_source:
            return set(self.last_seen)
        return set(self.tracked()) if self.tracked is not None else None

    def _drop_gone(self, own_faces: bool) -> None:
        """Destroy the publishers of bodies no longer tracked and of faces no longer tracked
        (own faces: ``face_seen``; else the other stack's ``/humans/faces/tracked``)."""
        bodies = self._bodies_now()
        faces = (set(self.face_seen) if own_faces else
                 set(self.faces.tracked_ids()) if self.faces is not None else set())
        for kind, ident in list(self.pubs):
            gone = ident not in faces if kind.startswith('face') else (
                bodies is not None and ident not in bodies)
            if gone:
                destroy_entity(self.node, self.pubs.pop((kind, ident)))
                self.node.stats.count('rep155.publishers_removed')

    def _forget(self, now: float, header: Any) -> bool:
        """Forget the bodies (body source) and own faces unseen for ``forget_after_s``, and the
        faces of bodies no longer tracked (a 0-confidence match for each face); whether any
        own face or body went."""
        gone = [b for b, t in self.last_seen.items() if now - t > self.forget_after_s]
        for b in gone:
            del self.last_seen[b]
        bodies = self._bodies_now()
        faces = [f for f, (b, t) in self.face_seen.items()
                 if now - t > self.forget_after_s or (bodies is not None and b not in bodies)]
        for f in faces:
            body, _ = self.face_seen.pop(f)
            self._match(header, f, body, 0.0)
        return bool(gone or faces)

    # -- one frame -------------------------------------------------------------------------------
    def publish(self, header: Any, width: int, height: int, persons: Sequence[Any],
                results: Sequence[Any], states: Sequence[Any] | None = None,
                rgb: np.ndarray | None = None, faces: Sequence[Any] | None = None) -> None:
        """One answered frame: ``persons`` (PersonDetection msgs), ``results`` (EmotionResult),
        ``states`` (PersonState, same order, or None), the image size in pixels (0 = unknown:
        no rois nor faces then), ``header`` (the image's), ``rgb`` ((H, W, 3) uint8, for the
        cropped images; None: not decoded) and ``faces`` (per person its ``core.faces.Face`` or
        None, from the face stage; None: not searched)."""
        with self._lock:
            if self._closed:
                return
            now = time.monotonic()
            own_faces = self.face_source()
            if not own_faces and self.face_seen:  # another stack took over: its faces now
                self.face_seen.clear()
            states = list(states) if states is not None else [None] * len(persons)
            people = []  # (index, body id) of the persons with an id
            for i, det in enumerate(persons):
                bid = rep155_id(det.track_id)
                if bid:
                    people.append((i, bid))
                    if self.body_source:
                        self.last_seen[bid] = now
            self._forget(now, header)
            if self.body_source:
                self._frame_id = header.frame_id
                self._publish_bodies(header, width, height, persons, people, rgb)
            self._drop_gone(own_faces)
            for i, bid in people:
                if results[i].status in (Status.OK, Status.CACHED):
                    pub = self._pub('emotion', bid, PersonEmotionArray,
                                    f'{BODIES}/{bid}/emotion')
                    if pub is not None:
                        pub.publish(PersonEmotionArray(
                            header=header, persons=[emotion_to_msg(persons[i], results[i])]))
                        self.node.stats.count('rep155.emotions_out')
            sized = width > 0 and height > 0
            if own_faces:
                if sized:
                    self._publish_own_faces(header, width, height, people, results, states,
                                            rgb, faces, now)
                self._face_list(header)
            elif sized and self.faces is not None:
                self._publish_expressions(header, width, height, persons, people, results,
                                          states)

    def _crop(self, kind: str, ident: str, topic: str, header: Any, rgb: np.ndarray | None,
              box: Box) -> None:
        """``cropped``: the pixels of ``box``, converted only while someone subscribes."""
        pub = self._pub(kind, ident, Image, topic)
        if pub is None or rgb is None or pub.get_subscription_count() == 0:
            return
        x1, y1, x2, y2 = box
        pub.publish(numpy_to_image_msg(np.ascontiguousarray(rgb[y1:y2, x1:x2]), 'rgb8',
                                       header=header))
        self.node.stats.count('rep155.cropped_out')

    def _roi(self, kind: str, ident: str, topic: str, header: Any, box: Box, width: int,
             height: int, c: float) -> None:
        pub = self._pub(kind, ident, self.hri.NormalizedRegionOfInterest2D, topic)
        if pub is not None:
            x1, y1, x2, y2 = box
            pub.publish(self.hri.NormalizedRegionOfInterest2D(
                header=header, xmin=x1 / width, ymin=y1 / height, xmax=x2 / width,
                ymax=y2 / height, c=min(1.0, max(0.0, float(c)))))

    def _body_list(self, header: Any) -> None:
        ids = list(self.last_seen)[:self.max_ids]
        self.tracked_pub.publish(self.hri.IdsList(header=header, ids=ids))

    def _face_list(self, header: Any) -> None:
        if self.faces_pub is not None:
            ids = list(self.face_seen)[:self.max_ids]
            self.faces_pub.publish(self.hri.IdsList(header=header, ids=ids))

    def _publish_bodies(self, header: Any, width: int, height: int, persons: Sequence[Any],
                        people: list, rgb: np.ndarray | None) -> None:
        self._body_list(header)
        if width <= 0 or height <= 0:
            return
        for i, bid in people:
            box = pixel_box(roi_to_bbox(persons[i].bbox), width, height)
            if box is None or bid not in self.last_seen:
                continue
            self._roi('roi', bid, f'{BODIES}/{bid}/roi', header, box, width, height,
                      persons[i].confidence)
            self._crop('cropped', bid, f'{BODIES}/{bid}/cropped', header, rgb, box)

    def _match(self, header: Any, face: str, body: str, confidence: float) -> None:
        """One ``/humans/candidate_matches`` message (face, body, confidence in [0, 1])."""
        if self.matches_pub is None:
            return
        m = self.hri.IdsMatch
        self.matches_pub.publish(m(id1=face, id1_type=m.FACE, id2=body, id2_type=m.BODY,
                                   confidence=min(1.0, max(0.0, float(confidence)))))
        self.node.stats.count('rep155.matches_out')

    def _expression(self, face: str, header: Any, est: ExpressionEstimate | None) -> None:
        if est is None:
            return
        pub = self._pub('face_expression', face, self.hri.Expression,
                        f'{FACES}/{face}/expression')
        if pub is not None:
            pub.publish(self.hri.Expression(
                header=header, expression=est.expression, valence=est.valence,
                arousal=est.arousal, confidence=est.confidence))
            self.node.stats.count('rep155.expressions_out')

    def _publish_own_faces(self, header: Any, width: int, height: int, people: list,
                           results: Sequence[Any], states: list, rgb: np.ndarray | None,
                           faces: Sequence[Any] | None, now: float) -> None:
        """This node is the face source: each person's face (from the face stage) as
        ``face_id(body id)``: roi, cropped, expression, and its match with the body."""
        if faces is None:
            return
        for i, bid in people:
            face = faces[i]
            box = None if face is None else pixel_box(face.box, width, height)
            if box is None:
                continue
            fid = face_id(bid)
            if fid not in self.face_seen and len(self.face_seen) >= self.max_ids:
                self.node.stats.count('rep155.ids_over_cap')
                continue
            self.face_seen[fid] = (bid, now)
            self._roi('face_roi', fid, f'{FACES}/{fid}/roi', header, box, width, height,
                      face.score)
            self._crop('face_cropped', fid, f'{FACES}/{fid}/cropped', header, rgb, box)
            self._expression(fid, header, expression_of(results[i], states[i]))
            self._match(header, fid, bid, face.score)
            self.node.stats.count('rep155.faces_out')

    def _publish_expressions(self, header: Any, width: int, height: int,
                             persons: Sequence[Any], people: list, results: Sequence[Any],
                             states: list) -> None:
        """Faces from another stack: each goes to the body it fits (``assign_faces``), which
        gives it its expression (and, as body source, a match)."""
        faces = self.faces.faces(stamp_seconds(header), width, height)
        if not faces or not people:
            return
        from ..core.faces import assign_faces
        boxes = [roi_to_bbox(persons[i].bbox) for i, _ in people]
        chosen = assign_faces(boxes, [f for _, f in faces], FACE_SEARCH_FRACTION)
        by_face = {id(f): i for i, f in faces}
        for (i, bid), face in zip(people, chosen):
            if face is None:
                continue
            fid = by_face[id(face)]
            self._expression(fid, header, expression_of(results[i], states[i]))
            if self.body_source:
                self._match(header, fid, bid, face.score)

    def prune(self) -> None:
        """Forget what left also when no frame comes (the emotion node's timer, every
        ``PRUNE_PERIOD_S``): bodies (body source) and own faces unseen for
        ``forget_after_s`` (the shorter tracked lists are published, stamped with the node's
        clock), bodies the input no longer tracks, faces no longer tracked; their publishers
        are destroyed."""
        with self._lock:
            if self._closed:
                return
            from std_msgs.msg import Header
            header = Header(stamp=self.node.get_clock().now().to_msg(), frame_id=self._frame_id)
            own_faces = self.face_source()
            bodies_before = len(self.last_seen)
            if self._forget(time.monotonic(), header):
                if self.body_source and len(self.last_seen) != bodies_before:
                    self._body_list(header)
                if own_faces:
                    self._face_list(header)
            self._drop_gone(own_faces)

    def close(self) -> None:
        """Destroy every publisher and the face subscriptions, for good."""
        with self._lock:
            self._closed = True
            for key in list(self.pubs):
                destroy_entity(self.node, self.pubs.pop(key))
            for name in ('tracked_pub', 'faces_pub', 'matches_pub'):
                pub = getattr(self, name)
                if pub is not None:
                    destroy_entity(self.node, pub)
                    setattr(self, name, None)
        if self.faces is not None:
            self.faces.close()
