"""Building and reading our messages from/to core value objects: the one place that does it."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import RegionOfInterest
from std_msgs.msg import Header

from emotion_perception.msg import (EmotionEvent, EmotionEventArray,
                                    PersonDetection as PersonDetectionMsg, PersonDetectionArray,
                                    PersonEmotion, PersonEmotionArray, PersonEmotionState,
                                    PersonEmotionStateArray)

from ..core.categories import EMOTIC_CATEGORIES
from ..core.state import EventKind, PersonState, StateEvent
from ..core.types import BBox, DetectionResult, EmotionResult, PersonDetection

assert tuple(PersonEmotion.CATEGORY_NAMES.split(',')) == EMOTIC_CATEGORIES, \
    'msg/PersonEmotion.msg CATEGORY_NAMES is out of sync with core.categories'
assert [EmotionEvent.KIND_ONSET, EmotionEvent.KIND_OFFSET, EmotionEvent.KIND_LEFT] == \
    [int(k) for k in EventKind], 'msg/EmotionEvent.msg KIND_* are out of sync with core.state'


def bbox_to_roi(box: BBox) -> RegionOfInterest:
    """xyxy float box -> RegionOfInterest (integer pixels, rounded outwards, non-negative)."""
    x1 = max(0, int(math.floor(box.x1))) if math.isfinite(box.x1) else 0
    y1 = max(0, int(math.floor(box.y1))) if math.isfinite(box.y1) else 0
    x2 = int(math.ceil(box.x2)) if math.isfinite(box.x2) else x1
    y2 = int(math.ceil(box.y2)) if math.isfinite(box.y2) else y1
    return RegionOfInterest(x_offset=x1, y_offset=y1, width=max(0, x2 - x1),
                            height=max(0, y2 - y1), do_rectify=False)


def roi_to_bbox(roi: RegionOfInterest) -> BBox:
    return BBox.from_xywh(roi.x_offset, roi.y_offset, roi.width, roi.height)


def detections_to_msg(result: DetectionResult, header: Header) -> PersonDetectionArray:
    msg = PersonDetectionArray(header=header, image_width=result.image_width,
                               image_height=result.image_height)
    msg.detections = [PersonDetectionMsg(track_id=d.track_id, confidence=float(d.confidence),
                                         bbox=bbox_to_roi(d.bbox), class_id=int(d.class_id))
                      for d in result.detections]
    return msg


def detections_from_msg(msg: PersonDetectionArray) -> list[PersonDetection]:
    return [PersonDetection(bbox=roi_to_bbox(d.bbox), confidence=float(d.confidence),
                            track_id=d.track_id, class_id=int(d.class_id))
            for d in msg.detections]


def stamp_seconds(header: Header) -> float:
    """A header's stamp (sensor time) in seconds; the one conversion, used everywhere."""
    return header.stamp.sec + header.stamp.nanosec * 1e-9


def stamp_ns(header: Header) -> int:
    """A header's stamp in integer nanoseconds (exact: bag log times, stamp lookups)."""
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def stamp_key(header: Header) -> tuple[int, int]:
    """A header's stamp as an exact, ordered key: (sec, nanosec)."""
    return header.stamp.sec, header.stamp.nanosec


def emotion_to_msg(det: PersonDetectionMsg, res: EmotionResult) -> PersonEmotion:
    return PersonEmotion(
        track_id=det.track_id, bbox=det.bbox,
        scores=[float(s) for s in res.scores], labels=list(res.labels),
        valence=float(res.vad[0]), arousal=float(res.vad[1]), dominance=float(res.vad[2]),
        status=int(res.status), status_reason=res.reason, cache_age=float(res.cache_age_s),
        backend=res.backend, model=res.model, latency_ms=float(res.latency_ms))


def emotions_to_msg(detections: PersonDetectionArray, results: Sequence[EmotionResult],
                    latency_ms: float) -> PersonEmotionArray:
    """The answer to ``detections``: same header, one entry per detection, in order."""
    if len(results) != len(detections.detections):
        raise ValueError(f'{len(results)} results for {len(detections.detections)} detections')
    return PersonEmotionArray(
        header=detections.header, latency_ms=float(latency_ms),
        persons=[emotion_to_msg(d, r) for d, r in zip(detections.detections, results)])


# -- per-person state (core.state) -------------------------------------------------------------
def time_from_seconds(stamp_s: float) -> Time:
    """Seconds (float) -> builtin_interfaces/Time, to the nanosecond of the float; NaN or a
    negative time -> zero."""
    if not math.isfinite(stamp_s) or stamp_s < 0:
        return Time()
    ns = int(round(stamp_s * 1e9))
    return Time(sec=ns // 10**9, nanosec=ns % 10**9)


def seconds_from_time(t: Time) -> float:
    return t.sec + t.nanosec * 1e-9


def state_to_msg(det: PersonDetectionMsg, state: PersonState) -> PersonEmotionState:
    """The state of the person of ``det`` (its box; the track id is the state's)."""
    return PersonEmotionState(
        track_id=state.track_id, bbox=det.bbox, scores=[float(s) for s in state.scores],
        labels=list(state.labels),
        label_since=[time_from_seconds(state.label_since[k]) for k in state.labels],
        valence=float(state.vad[0]), arousal=float(state.vad[1]),
        dominance=float(state.vad[2]), confidence=float(state.confidence),
        observations=int(state.observations),
        first_seen=time_from_seconds(state.first_seen_s),
        last_observed=time_from_seconds(state.last_observed_s))


def states_to_msg(detections: PersonDetectionArray, states: Sequence[PersonState]
                  ) -> PersonEmotionStateArray:
    """The states of ``detections``' persons: same header, one entry per detection, in order."""
    if len(states) != len(detections.detections):
        raise ValueError(f'{len(states)} states for {len(detections.detections)} detections')
    return PersonEmotionStateArray(
        header=detections.header,
        persons=[state_to_msg(d, s) for d, s in zip(detections.detections, states)])


def state_from_msg(msg: PersonEmotionState, stamp_s: float) -> PersonState:
    """A ``PersonState`` from a received message (``stamp_s``: its array's header stamp)."""
    observed = seconds_from_time(msg.last_observed)
    return PersonState(
        track_id=msg.track_id, stamp_s=stamp_s, scores=np.array(msg.scores, dtype=np.float32),
        vad=(float(msg.valence), float(msg.arousal), float(msg.dominance)),
        labels=list(msg.labels),
        label_since={k: seconds_from_time(t) for k, t in zip(msg.labels, msg.label_since)},
        confidence=float(msg.confidence), observations=int(msg.observations),
        first_seen_s=seconds_from_time(msg.first_seen),
        last_observed_s=observed if msg.observations else math.nan)


def events_to_msg(header: Header, events: Sequence[StateEvent]) -> EmotionEventArray:
    return EmotionEventArray(header=header, events=[
        EmotionEvent(track_id=e.track_id, category=e.category, kind=int(e.kind),
                     stamp=time_from_seconds(e.stamp_s), score=float(e.score), reason=e.reason)
        for e in events])


def events_from_msg(msg: EmotionEventArray) -> list[StateEvent]:
    return [StateEvent(e.track_id, e.category, EventKind(e.kind), seconds_from_time(e.stamp),
                       float(e.score), e.reason) for e in msg.events]
