"""REP-155 (ROS4HRI) input of the emotion node: bodies and faces in (the output:
``ros.rep155_output``), and what both share (topics, QoS, the face id rule).

Topics (REP-155): ``/humans/bodies/tracked`` and ``/humans/faces/tracked`` (hri_msgs/IdsList),
``/humans/bodies/<id>/roi`` and ``/humans/faces/<id>/roi`` (hri_msgs/
NormalizedRegionOfInterest2D, normalised xyxy), ``/humans/faces/<id>/expression``
(hri_msgs/Expression); and ours: ``/humans/bodies/<id>/emotion`` (PersonEmotionArray with that
one person). QoS: reliable, volatile, as libhri (SystemDefaultsQoS) subscribes; a best-effort
publisher would be invisible to it.

Pairing (:class:`BodyInput`): tracked lists and rois are kept by stamp (the last
``max_stamps`` stamps of each). A camera frame stamped ``t`` pairs with the tracked list of its
own stamp: the list stamped ``t``, or, where there is none (a body source that publishes its
list only when it changes), the latest list stamped before ``t``. So a body that appears later
does not make an older frame wait for a roi it can never get, and a body that left is still a
person of the frames it was in. When a frame is complete: see :meth:`BodyInput.ready`.

Bounded: at most ``max_ids`` per-id subscriptions (per kind) and per-id publishers exist; ids
beyond are refused with a counter (``rep155.ids_over_cap``) and a throttled warning, ids that
are not valid ROS name tokens are refused (``rep155.invalid_ids``). Subscriptions follow the
newest tracked list; publishers of ids gone from it (or, where this node is the body source,
unseen for ``forget_after_s``: checked on every frame and by the node's timer calling
:meth:`~.rep155_output.Rep155Output.prune`, so also when no frame comes) are destroyed.

Threads and ROS entities. The per-id subscriptions are created and destroyed in the tracked-list
callbacks (an executor thread) and at deactivate (the transition thread); the per-id publishers
by whichever thread answers a frame (the worker; an executor thread answering an overflow; the
transition thread draining the queue) and by the timer. None of these is a place where the
executor cannot be waiting on the entity: rclpy's executors (7.1.6 and 9.1.2; what they do is
told in :func:`~.rclpy_compat.destroy_entity`) gather the node's entities, enter their handles
and add them to the wait set in the spinning thread without a lock, and with the
``MultiThreadedExecutor`` of ``nodes.lifecycle`` the callbacks run in pool threads meanwhile.
Keeping the per-id entities and reusing them is not possible either (the id is in the topic
name). What makes it safe (``ros.rclpy_compat``): per-id entities carry no QoS event handler
(:func:`~.rclpy_compat.no_publisher_events`, :func:`~.rclpy_compat.no_subscription_events`). A
publisher without one is never part of a wait set; a subscription's handle is entered by the
executor before it waits (its destruction then waits for the wait to end), and one destroyed
before that is skipped (rclpy catches ``InvalidHandle`` there). What ended ``spin()`` with
``InvalidHandle`` (issue 25) was the event handlers of a per-id publisher destroyed between the
executor gathering and entering them: rclpy catches that one at the entering but raises it again
from ``EventHandler.add_to_wait_set``. The entities that keep their event handlers (the tracked-
list subscriptions and publisher, made at activate) are destroyed through
:func:`~.rclpy_compat.destroy_entity`, which detaches the handlers instead of destroying them
under the executor. Between our own threads, each class holds a lock around its entities, and
nothing is created after ``close()``.

The message package hri_msgs is imported by :func:`load` only (optional dependency).
"""
from __future__ import annotations

import bisect
import collections
import threading
from typing import Any, Callable, Sequence

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from .detection_formats import is_name_token, message_module, roi_box
from .messages import stamp_key, stamp_seconds
from .rclpy_compat import destroy_entity, no_subscription_events

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

Stamp = tuple[int, int]  # (sec, nanosec) of a header stamp


def load() -> Any:
    """``hri_msgs.msg`` (FormatUnavailable with the apt package when missing)."""
    return message_module('hri_msgs')


def face_id(body_id: str) -> str:
    """The REP-155 id of the face this node finds on body ``body_id``: ``'f' + body_id``
    (track 7 -> body ``b7`` -> face ``fb7``; body ``alice`` -> face ``falice``). Stable for as
    long as the track is, a valid name token whenever the body id is one, never equal to a body
    id of the same frame's face (ROS4HRI's person manager refuses a match of an id with
    itself), and one face per body."""
    return 'f' + body_id


class IdSubscriptions:
    """Per-id subscriptions (``<prefix>/<id>/<leaf>``) following a tracked list, bounded.

    Thread-safe: :meth:`follow` runs in the tracked-list callback (an executor thread) and
    :meth:`close` on the transition thread; after ``close`` nothing is subscribed any more.
    """

    def __init__(self, node: Any, prefix: str, leaf: str, msg_type: type,
                 callback: Callable[[str, Any], None], max_ids: int) -> None:
        self.node, self.prefix, self.leaf = node, prefix, leaf
        self.msg_type, self.callback, self.max_ids = msg_type, callback, max_ids
        self.subs: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._closed = False

    def accept(self, ids: Sequence[str]) -> list[str]:
        """The ids of a tracked list this node follows: valid ROS name tokens, first
        occurrence, at most ``max_ids`` (the others are counted and warned about)."""
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
        return accepted

    def follow(self, accepted: Sequence[str]) -> None:
        """Subscribe the ids of ``accepted`` (from :meth:`accept`), unsubscribe the others."""
        keep = set(accepted)
        with self._lock:
            if self._closed:
                return
            for i in [i for i in self.subs if i not in keep]:
                destroy_entity(self.node, self.subs.pop(i))
            for i in accepted:
                if i not in self.subs:
                    self.subs[i] = self.node.create_subscription(
                        self.msg_type, f'{self.prefix}/{i}/{self.leaf}',
                        lambda msg, i=i: self.callback(i, msg), HRI_QOS,
                        event_callbacks=no_subscription_events())

    def subscribed(self) -> list[str]:
        """The ids subscribed now."""
        with self._lock:
            return list(self.subs)

    def close(self) -> None:
        """Unsubscribe all, for good."""
        with self._lock:
            self._closed = True
            subs, self.subs = list(self.subs.values()), {}
            for sub in subs:
                destroy_entity(self.node, sub)


class BodyInput:
    """``rep155`` input: the tracked lists and the rois of the bodies, by stamp.

    The lists and rois are read and changed under ``cond`` (the emotion node's condition, which
    is notified when one arrives); :meth:`ready` and :meth:`take` are called holding it.
    """

    def __init__(self, node: Any, cond: threading.Condition, max_ids: int, max_stamps: int
                 ) -> None:
        self.hri = load()
        self.node, self.cond, self.max_stamps = node, cond, max_stamps
        #: (stamp, accepted ids) of the tracked lists received, oldest stamp first
        self.lists: list[tuple[Stamp, tuple[str, ...]]] = []
        self.rois: collections.OrderedDict[Stamp, dict[str, Any]] = collections.OrderedDict()
        self.subs = IdSubscriptions(node, BODIES, 'roi', self.hri.NormalizedRegionOfInterest2D,
                                    self._on_roi, max_ids)
        self.tracked_sub = node.create_subscription(self.hri.IdsList, f'{BODIES}/tracked',
                                                    self._on_tracked, HRI_QOS)

    def _on_tracked(self, msg: Any) -> None:
        self.node.stats.count('rep155.tracked_in')
        ids = tuple(self.subs.accept(list(msg.ids)))
        key = stamp_key(msg.header)
        with self.cond:
            newest = not self.lists or key >= self.lists[-1][0]
            at = bisect.bisect_left(self.lists, key, key=lambda entry: entry[0])
            if at < len(self.lists) and self.lists[at][0] == key:
                self.lists[at] = (key, ids)
            else:
                self.lists.insert(at, (key, ids))
            del self.lists[:-self.max_stamps]
            self.cond.notify_all()
        if newest:  # the subscriptions follow the newest list (not a late older one)
            self.subs.follow(ids)

    def _on_roi(self, body_id: str, msg: Any) -> None:
        self.node.stats.count('rep155.rois_in')
        key = stamp_key(msg.header)
        with self.cond:
            self.rois.setdefault(key, {})[body_id] = msg
            self.rois.move_to_end(key)
            while len(self.rois) > self.max_stamps:
                self.rois.popitem(last=False)
            self.cond.notify_all()

    def tracked_ids(self) -> list[str]:
        """The ids of the newest tracked list."""
        with self.cond:
            return list(self.lists[-1][1]) if self.lists else []

    def _list_for(self, key: Stamp) -> tuple[int, tuple[str, ...] | None]:
        """(index in ``lists`` of the list stamped ``key`` or the latest one before it (-1:
        none), its ids or None)."""
        at = bisect.bisect_right(self.lists, key, key=lambda entry: entry[0]) - 1
        return at, (self.lists[at][1] if at >= 0 else None)

    def ready(self, key: Stamp) -> bool:
        """Whether the body frame of the image stamped ``key`` is complete (under ``cond``):
        every id of its tracked list has a roi stamped ``key``, where its list is

        * the list stamped ``key`` when it came;
        * else the latest list before ``key`` when a later list came (none for ``key`` will);
        * else (the list of ``key`` may still come) the latest list before ``key``, if it is
          not empty and no roi stamped ``key`` comes from a body outside it (a body that
          appeared: its list is on its way). An empty or no list waits for the list of ``key``
          (or ``pair_timeout_s``).
        """
        at, ids = self._list_for(key)
        got = self.rois.get(key, {})
        if ids is None:
            return False
        if self.lists[at][0] == key or at + 1 < len(self.lists):
            return all(i in got for i in ids)
        return bool(ids) and all(i in got for i in ids) and all(i in ids for i in got)

    def take(self, key: Stamp) -> tuple[list[str], dict]:
        """(ids of the frame's tracked list, rois by id) of the image stamped ``key`` (under
        ``cond``); forgets its rois."""
        _, ids = self._list_for(key)
        return list(ids or ()), self.rois.pop(key, {})

    def close(self) -> None:
        """Unsubscribe the per-id rois (the tracked-list subscription is the node's) and forget
        the lists and rois."""
        self.subs.close()
        with self.cond:
            self.rois.clear()
            self.lists.clear()


class FaceInput:
    """``/humans/faces/tracked`` and each face's roi (newest kept), for the expressions.

    ``ignore``: while it returns True (this node is the face source itself: the lists on the
    topic are its own), the lists are ignored and no roi is subscribed.
    """

    def __init__(self, node: Any, hri: Any, max_ids: int,
                 ignore: Callable[[], bool] | None = None) -> None:
        self.node, self.lock, self.ignore = node, threading.Lock(), ignore
        self.ids: list[str] = []
        self.rois: dict[str, Any] = {}
        self.subs = IdSubscriptions(node, FACES, 'roi', hri.NormalizedRegionOfInterest2D,
                                    self._on_roi, max_ids)
        self.tracked_sub = node.create_subscription(hri.IdsList, f'{FACES}/tracked',
                                                    self._on_tracked, HRI_QOS)

    def _on_tracked(self, msg: Any) -> None:
        ids = [] if self.ignore is not None and self.ignore() else self.subs.accept(list(msg.ids))
        self.subs.follow(ids)
        with self.lock:
            self.ids = ids
            self.rois = {i: r for i, r in self.rois.items() if i in ids}

    def _on_roi(self, face_id: str, msg: Any) -> None:
        with self.lock:
            if face_id in self.ids:
                self.rois[face_id] = msg

    def tracked_ids(self) -> list[str]:
        with self.lock:
            return list(self.ids)

    def faces(self, stamp_s: float, width: int, height: int) -> list[tuple[str, Any]]:
        """(face id, Face in pixels) of the tracked faces with a usable roi no older than
        ``FACE_ROI_MAX_AGE_S`` before ``stamp_s`` (nor after it)."""
        from ..core.faces import Face  # imports torch: only where faces are published
        out = []
        with self.lock:
            items = [(i, self.rois[i]) for i in self.ids if i in self.rois]
        for face_id, roi in items:
            if not 0.0 <= stamp_s - stamp_seconds(roi.header) <= FACE_ROI_MAX_AGE_S:
                continue
            box, _, _ = roi_box(roi, width, height)
            if box is None or box.area <= 0:
                continue
            score = float(roi.c) if 0 < roi.c <= 1 else 1.0  # (NaN fails the test)
            out.append((face_id, Face(box=box, score=score, source='rep155')))
        return out

    def close(self) -> None:
        """Unsubscribe the per-id rois (the tracked-list subscription is the node's)."""
        self.subs.close()
