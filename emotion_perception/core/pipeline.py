"""Per-frame emotion pipeline (ROS-free): backend + per-track result reuse.

A 30 Hz camera with several people must not mean hundreds of model calls a second: for a
tracked person, the backend runs again only when the box moved or changed size beyond a
threshold, or when the last result is older than ``max_age_s``; otherwise the last result is
returned with ``Status.CACHED`` and its age. Times are the frames' stamps (sensor time), so
replaying a bag behaves as the live camera did.

Faces (``with_faces``, for the REP-155 face output): one face-detection stage
(``core.faces.FaceFinder``: the backend's own when it has one, ``face_baseline``; else one of
the defaults) finds the face of every person of the frame, cached or not, once; a backend that
takes faces (``uses_faces``) gets those of the persons it evaluates instead of searching again.
Without ``with_faces`` nothing of this runs.

Duplicate track ids within one frame (a confused tracker, or two detectors on one topic): the
cache cannot tell the persons apart, so those persons are evaluated without the cache, their
results are not stored, and the id's cached entry is forgotten.

Thread safety: ``TrackCache`` is guarded by a lock (a node answers dropped frames from one
thread while its worker processes another frame).
"""
from __future__ import annotations

import collections
import copy
import dataclasses
import math
import threading
import time
from collections import OrderedDict
from typing import Any, Sequence

import numpy as np

from .backends.base import BackendError, EmotionBackend, validate_image
from .types import BBox, EmotionResult, PersonDetection, Status


@dataclasses.dataclass
class ReuseOptions:
    """When to reuse a track's last result instead of calling the model.

    Attributes:
        enabled: False = run the model for every person of every frame.
        max_age_s: re-run when the cached result is older than this (seconds of stamp time);
            < 0 = the backend's default (``EmotionBackend.reuse_max_age_s``: by its cost).
        min_iou: re-run when the IoU of the current and the cached box is below this.
        max_size_change: re-run when width or height changed by more than this fraction.
        max_tracks: bound on remembered tracks (least recently seen are evicted first).
    """

    enabled: bool = True
    max_age_s: float = -1.0
    min_iou: float = 0.6
    max_size_change: float = 0.25
    max_tracks: int = 256

    def validate(self) -> None:
        if (not math.isfinite(self.max_age_s) or not 0 <= self.min_iou <= 1
                or self.max_size_change < 0):
            raise ValueError(f'invalid reuse options {self}')
        if self.max_tracks < 1:
            raise ValueError(f'max_tracks must be >= 1, got {self.max_tracks}')


@dataclasses.dataclass
class _Entry:
    bbox: BBox
    stamp_s: float
    result: EmotionResult


class TrackCache:
    """Last result per track id, bounded (LRU)."""

    def __init__(self, options: ReuseOptions) -> None:
        self.options = options
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def forget(self, track_id: str) -> None:
        """Drop the entry of ``track_id`` (if any)."""
        with self._lock:
            self._entries.pop(track_id, None)

    def lookup(self, track_id: str, bbox: BBox, stamp_s: float, *, any_box: bool = False
               ) -> EmotionResult | None:
        """A CACHED copy of the track's last result if still valid, else None.

        Args:
            any_box: accept the cached result whatever the box (used when the frame cannot be
                evaluated at all, e.g. dropped under load); the age limit still applies.
        """
        opts = self.options
        with self._lock:
            entry = self._entries.get(track_id) if (opts.enabled and track_id) else None
        if entry is None:
            return None
        age = stamp_s - entry.stamp_s
        if age < 0 or age > opts.max_age_s:
            return None
        if not any_box:
            if bbox.iou(entry.bbox) < opts.min_iou:
                return None
            for now, then in ((bbox.width, entry.bbox.width), (bbox.height, entry.bbox.height)):
                if then <= 0 or abs(now - then) / then > opts.max_size_change:
                    return None
        with self._lock:
            if track_id in self._entries:
                self._entries.move_to_end(track_id)
        out = copy.copy(entry.result)
        out.scores = entry.result.scores.copy()
        out.labels = list(entry.result.labels)
        out.status, out.cache_age_s, out.latency_ms = Status.CACHED, float(age), 0.0
        return out

    def store(self, track_id: str, bbox: BBox, stamp_s: float, result: EmotionResult) -> None:
        if not (self.options.enabled and track_id) or result.status != Status.OK:
            return
        with self._lock:
            self._entries[track_id] = _Entry(bbox, stamp_s, result)
            self._entries.move_to_end(track_id)
            while len(self._entries) > self.options.max_tracks:
                self._entries.popitem(last=False)


@dataclasses.dataclass
class FrameEmotions:
    """Results for one frame, one per detection, plus accounting."""

    results: list[EmotionResult]
    model_calls: int = 0      # persons sent to the backend
    cache_hits: int = 0       # persons answered from the track cache
    latency_ms: float = 0.0   # wall time of process()
    duplicate_ids: int = 0    # track ids that occurred more than once in the frame
    #: with ``with_faces``: per detection, its ``core.faces.Face`` (full-image xyxy pixels)
    #: or None; else None
    faces: list[Any] | None = None


def duplicate_track_ids(detections: Sequence[PersonDetection]) -> set[str]:
    """Non-empty track ids that occur more than once among ``detections``."""
    counts = collections.Counter(d.track_id for d in detections if d.track_id)
    return {tid for tid, n in counts.items() if n > 1}


class EmotionPipeline:
    """Backend + track cache: ``process(image, detections, stamp_s)`` -> ``FrameEmotions``.

    ``face_finder``: the face stage for ``process(..., with_faces=True)`` (loaded; None: the
    backend's ``face_finder`` if it has one, found at the first such call, else none).
    """

    def __init__(self, backend: EmotionBackend, reuse: ReuseOptions | None = None,
                 face_finder: Any = None) -> None:
        self.backend = backend
        self.face_finder = face_finder
        reuse = reuse or ReuseOptions()
        reuse.validate()
        if reuse.max_age_s < 0:  # by the backend's cost
            reuse = dataclasses.replace(
                reuse, max_age_s=float(getattr(backend, 'reuse_max_age_s', 2.0)))
        self.reuse = reuse
        self.cache = TrackCache(self.reuse)

    def find_faces(self, image: np.ndarray, detections: Sequence[PersonDetection]
                   ) -> list[Any]:
        """The face stage on every person of the frame: per detection, its face or None.

        Raises:
            BackendError: no face stage (the backend has none and none was given).
        """
        finder = self.face_finder or getattr(self.backend, 'face_finder', None)
        if finder is None:
            raise BackendError(f'no face finder: backend {self.backend.name!r} has none and '
                               'the pipeline was given none')
        return finder.find(image, [d.bbox for d in detections])

    def process(self, image: np.ndarray, detections: Sequence[PersonDetection],
                stamp_s: float, with_faces: bool = False) -> FrameEmotions:
        """Emotions of ``detections`` on ``image`` ((H, W, 3) uint8 RGB) taken at ``stamp_s``;
        ``with_faces``: also the face of every person (``FrameEmotions.faces``).

        Raises what ``EmotionBackend.predict`` raises (ImageError, BackendError); per-person
        problems (bad box, no face) come back as results with status ERROR/SKIPPED.
        """
        t0 = time.perf_counter()
        faces = self.find_faces(validate_image(image), detections) if with_faces else None
        dups = duplicate_track_ids(detections)
        for tid in dups:
            self.cache.forget(tid)
        results: list[EmotionResult | None] = [None] * len(detections)
        todo: list[int] = []
        for i, det in enumerate(detections):
            hit = (None if det.track_id in dups
                   else self.cache.lookup(det.track_id, det.bbox, stamp_s))
            if hit is not None:
                results[i] = hit
            else:
                todo.append(i)
        if todo:
            # the persons answered from the cache are still in the picture (their faces, say)
            answered = set(todo)
            context = [d.bbox for i, d in enumerate(detections) if i not in answered]
            given = [faces[i] for i in todo] if faces is not None else None
            fresh = self.backend.predict(image, [detections[i].bbox for i in todo], context,
                                         given)
            for i, res in zip(todo, fresh):
                results[i] = res
                if detections[i].track_id not in dups:
                    self.cache.store(detections[i].track_id, detections[i].bbox, stamp_s, res)
        return FrameEmotions([r for r in results if r is not None], model_calls=len(todo),
                             cache_hits=len(detections) - len(todo),
                             latency_ms=(time.perf_counter() - t0) * 1e3,
                             duplicate_ids=len(dups), faces=faces)

    def answer_unprocessed(self, detections: Sequence[PersonDetection], stamp_s: float,
                           status: Status, reason: str) -> list[EmotionResult]:
        """Results for a frame that is not evaluated (dropped, no image): the track's cached
        result where one is recent enough (status CACHED, with ``reason`` saying why the frame
        was not evaluated), else ``status`` with ``reason``. Persons sharing a track id in the
        frame get no cached result (the cache cannot tell them apart)."""
        dups = duplicate_track_ids(detections)
        out = []
        for det in detections:
            hit = (None if det.track_id in dups
                   else self.cache.lookup(det.track_id, det.bbox, stamp_s, any_box=True))
            if hit is not None:
                hit.reason = reason
            out.append(hit if hit is not None else EmotionResult.failed(
                status, reason, self.backend.name, self.backend.model_id))
        return out
