"""Detections of other stacks -> the emotion node's persons: the one place that reads them.

Formats (the emotion node's ``detections_format`` parameter):

``native``       our ``PersonDetectionArray`` (unchanged).
``vision_msgs``  ``vision_msgs/Detection2DArray`` (isaac_ros_yolov8 / detectnet, depthai-ros,
                 ultralytics_ros): a detection is a person when its best hypothesis (highest
                 score) has a ``class_id`` in ``person_classes`` and a score >=
                 ``min_confidence``; box = ``bbox.center.position`` +- ``bbox.size_x/y`` / 2
                 pixels; track id = ``Detection2D.id`` ('' = untracked).
``yolo``         ``yolo_msgs/DetectionArray`` (mgonzs13/yolo_ros ``/yolo/tracking``): a person
                 when ``class_name`` or ``str(class_id)`` is in ``person_classes`` and
                 ``score >= min_confidence``; box = ``bbox.center.position`` +- ``bbox.size`` / 2;
                 track id = ``id``.
``rep155``       ROS4HRI bodies: ``/humans/bodies/tracked`` (``hri_msgs/IdsList``) and each body's
                 ``/humans/bodies/<id>/roi`` (``hri_msgs/NormalizedRegionOfInterest2D``, xyxy
                 normalised to the image: multiplied by the paired image's size); track id = body
                 id. See :func:`from_rep155`.

Each conversion returns a :class:`Converted`: our ``PersonDetectionArray`` holding the persons
to answer (input order), the indices of those answered ERROR without being evaluated (a box
that is NaN or has no area, or a confidence / class id our message cannot hold: the person is
known, its detection is not usable) with their reasons,
and the detections left out of the answer (not persons, below ``min_confidence``, no
hypothesis) with a counter kind and a reason.

The message packages are optional: :func:`message_module` imports one only when its format is
chosen and raises :class:`FormatUnavailable` naming the apt package to install.

REP-155 ids: :func:`rep155_id` maps a track id that is not a valid ROS name token (our
detector's and yolo_ros' ids are numbers: ``/humans/bodies/7/roi`` is refused by rclpy) to
``'b' + id`` with every character outside ``[A-Za-z0-9_]`` replaced by ``'_'``; a valid token
is used as it is. The same rule is used everywhere an id appears (topics, ``tracked`` lists).
"""
from __future__ import annotations

import dataclasses
import importlib
import math
import re
from typing import Any, Iterable, Mapping, Sequence

from std_msgs.msg import Header

from emotion_perception.msg import PersonDetection as PersonDetectionMsg, PersonDetectionArray

from ..core.types import BBox
from .messages import bbox_to_roi

FORMATS = ('native', 'vision_msgs', 'yolo', 'rep155')
#: the message package each format needs
FORMAT_PACKAGE = {'vision_msgs': 'vision_msgs', 'yolo': 'yolo_msgs', 'rep155': 'hri_msgs'}
#: how to get each message package on a robot
INSTALL_HINT = {
    'vision_msgs': 'apt install ros-jazzy-vision-msgs',
    'hri_msgs': 'apt install ros-jazzy-hri-msgs',
    'yolo_msgs': 'yolo_msgs comes with yolo_ros (github.com/mgonzs13/yolo_ros): build it in '
                 'your workspace and source its setup',
}
#: boxes with a coordinate beyond this (pixels) are refused (RegionOfInterest is uint32, and no
#: camera is this large)
MAX_COORD = 1e6
#: the largest finite float32 (``PersonDetection.confidence``)
FLOAT32_MAX = 3.4028234663852886e38
#: the range of int32 (``PersonDetection.class_id``)
INT32_MIN, INT32_MAX = -2 ** 31, 2 ** 31 - 1
#: a normalised roi coordinate may lie this far outside [0, 1] before it counts as outside
UNIT_TOLERANCE = 1e-3

_NAME_TOKEN = re.compile(r'[A-Za-z_][A-Za-z0-9_]*\Z')


class FormatUnavailable(ImportError):
    """The message package of a detections format is not installed (the text says how)."""


def message_module(package: str) -> Any:
    """``<package>.msg``, imported now; :class:`FormatUnavailable` (with the install hint)
    when the package is not installed."""
    try:
        return importlib.import_module(f'{package}.msg')
    except ImportError as exc:
        raise FormatUnavailable(
            f'the message package {package!r} is not installed ({exc}); '
            f'{INSTALL_HINT.get(package, "install it")}') from exc


def format_message_type(fmt: str) -> type:
    """The message type subscribed on ``detections`` for ``fmt`` (rep155: IdsList)."""
    if fmt == 'native':
        return PersonDetectionArray
    names = {'vision_msgs': 'Detection2DArray', 'yolo': 'DetectionArray', 'rep155': 'IdsList'}
    return getattr(message_module(FORMAT_PACKAGE[fmt]), names[fmt])


def rep155_id(track_id: str) -> str:
    """The REP-155 id of a track id (see the module docstring); '' stays ''."""
    if not track_id or _NAME_TOKEN.match(track_id):
        return track_id
    return 'b' + re.sub(r'[^A-Za-z0-9_]', '_', track_id)


def is_name_token(text: str) -> bool:
    """Whether ``text`` can be one level of a ROS topic name (REP-155 ids must be)."""
    return bool(_NAME_TOKEN.match(text))


@dataclasses.dataclass
class LeftOut:
    """A detection not answered: ``kind`` (counter name) and a human-readable ``reason``."""

    index: int
    kind: str
    reason: str


@dataclasses.dataclass
class Converted:
    """One input array as the emotion node answers it.

    Attributes:
        msg: our array: header copied from the input, the persons to answer in input order.
        errors: index in ``msg.detections`` -> reason, for persons answered ERROR unevaluated.
        left_out: detections that are not answered (index in the input array).
    """

    msg: PersonDetectionArray
    errors: dict[int, str] = dataclasses.field(default_factory=dict)
    left_out: list[LeftOut] = dataclasses.field(default_factory=list)


def box_from_center(cx: float, cy: float, w: float, h: float) -> tuple[BBox | None, str]:
    """xyxy box from centre and size (pixels), or (None, reason) when it cannot be a box."""
    values = (cx, cy, w, h)
    if not all(math.isfinite(float(v)) for v in values):
        return None, f'bad box: non-finite centre/size {tuple(float(v) for v in values)}'
    if w <= 0 or h <= 0:
        return None, f'bad box: non-positive size {float(w)}x{float(h)}'
    box = BBox(cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0)
    if max(abs(c) for c in box.xyxy()) > MAX_COORD:
        return None, f'bad box: coordinates beyond {MAX_COORD:g} pixels {box.xyxy()}'
    if box.x2 <= 0 or box.y2 <= 0:
        return None, f'bad box: entirely left of / above the image, xyxy={box.xyxy()}'
    return box, ''


def unrepresentable(score: float, class_id: int) -> str:
    """Why a detection's score or class id cannot go into our ``PersonDetection`` (float32
    confidence, int32 class id; a foreign stack's float64 score or string class id can hold
    more), or '' when both fit."""
    if not -FLOAT32_MAX <= score <= FLOAT32_MAX:  # inf; NaN scores never get here
        return (f'bad detection: confidence {score!r} cannot be represented '
                f'(PersonDetection.confidence is float32)')
    if not INT32_MIN <= class_id <= INT32_MAX:
        return (f'bad detection: class id {class_id} cannot be represented '
                f'(PersonDetection.class_id is int32)')
    return ''


def _person(track_id: str, confidence: float, box: BBox | None, class_id: int = 0
            ) -> PersonDetectionMsg:
    """Our message; a confidence or class id that does not fit is written as 0."""
    conf = float(confidence)
    conf = conf if -FLOAT32_MAX <= conf <= FLOAT32_MAX else 0.0
    class_id = class_id if INT32_MIN <= class_id <= INT32_MAX else 0
    roi = bbox_to_roi(box) if box is not None else bbox_to_roi(BBox(0, 0, 0, 0))
    return PersonDetectionMsg(track_id=str(track_id), confidence=conf, bbox=roi,
                              class_id=int(class_id))


def _to_int(text: str) -> int:
    """A string class id as a number ('0' -> 0); names ('person') -> 0."""
    try:
        return int(text)
    except ValueError:
        return 0


def _add(out: Converted, track_id: str, score: float, box: BBox | None, reason: str,
         class_id: int) -> None:
    """Append one person; answered ERROR (``reason``) when its box is None or its score /
    class id cannot be represented."""
    if box is not None:
        reason = unrepresentable(score, class_id)
        box = None if reason else box
    if box is None:
        out.errors[len(out.msg.detections)] = reason
    out.msg.detections.append(_person(track_id, score, box, class_id))


def _check_class(out: Converted, index: int, names: Iterable[str], score: float,
                 person_classes: Sequence[str], min_confidence: float) -> bool:
    names = [n for n in names if n != '']
    if not any(n in person_classes for n in names):
        out.left_out.append(LeftOut(index, 'not_person', f'class {"/".join(names) or "?"} is '
                                    f'not in person_classes {list(person_classes)}'))
        return False
    if not (score >= min_confidence):  # NaN scores too
        out.left_out.append(LeftOut(index, 'below_min_confidence', f'score {score} < '
                                    f'min_confidence {min_confidence}'))
        return False
    return True


def from_vision_msgs(msg: Any, person_classes: Sequence[str], min_confidence: float = 0.0
                     ) -> Converted:
    """``vision_msgs/Detection2DArray`` -> persons (see the module docstring)."""
    out = Converted(PersonDetectionArray(header=msg.header))
    for i, det in enumerate(msg.detections):
        if not det.results:
            out.left_out.append(LeftOut(i, 'no_hypothesis', 'detection has no hypothesis '
                                        '(empty results): class unknown'))
            continue
        best = max(det.results, key=lambda r: r.hypothesis.score
                   if math.isfinite(r.hypothesis.score) else -math.inf).hypothesis
        score = float(best.score)
        if not _check_class(out, i, [best.class_id], score, person_classes, min_confidence):
            continue
        c = det.bbox.center.position
        box, reason = box_from_center(c.x, c.y, det.bbox.size_x, det.bbox.size_y)
        _add(out, det.id, score, box, reason, _to_int(best.class_id))
    return out


def from_yolo(msg: Any, person_classes: Sequence[str], min_confidence: float = 0.0
              ) -> Converted:
    """``yolo_msgs/DetectionArray`` -> persons (see the module docstring)."""
    out = Converted(PersonDetectionArray(header=msg.header))
    for i, det in enumerate(msg.detections):
        score = float(det.score)
        if not _check_class(out, i, [det.class_name, str(det.class_id)], score,
                            person_classes, min_confidence):
            continue
        c, s = det.bbox.center.position, det.bbox.size
        box, reason = box_from_center(c.x, c.y, s.x, s.y)
        _add(out, det.id, score, box, reason, det.class_id)
    return out


def roi_box(roi: Any, width: int, height: int) -> tuple[BBox | None, str, bool]:
    """A normalised REP-155 roi -> (xyxy pixel box or None, reason, clipped).

    Coordinates slightly outside [0, 1] (``UNIT_TOLERANCE``) are accepted; a roi reaching
    further out is clipped to [0, 1] (``clipped`` True) unless nothing of it is inside.
    """
    coords = (float(roi.xmin), float(roi.ymin), float(roi.xmax), float(roi.ymax))
    if not all(math.isfinite(c) for c in coords):
        return None, f'bad roi: non-finite coordinates {coords}', False
    x1, y1, x2, y2 = coords
    if x2 <= x1 or y2 <= y1:
        return None, f'bad roi: inverted or empty xyxy={coords}', False
    lo, hi = -UNIT_TOLERANCE, 1.0 + UNIT_TOLERANCE
    clipped = min(coords) < lo or max(coords) > hi
    cx1, cy1, cx2, cy2 = (min(max(c, 0.0), 1.0) for c in coords)
    if cx2 <= cx1 or cy2 <= cy1:
        return None, f'bad roi: outside [0, 1], xyxy={coords}', clipped
    if width <= 0 or height <= 0:
        return None, 'image size unknown', clipped
    return BBox(cx1 * width, cy1 * height, cx2 * width, cy2 * height), '', clipped


def from_rep155(header: Header, body_ids: Sequence[str], rois: Mapping[str, Any],
                width: int, height: int) -> tuple[Converted, int]:
    """One REP-155 body frame -> persons: one per id of ``body_ids`` (the latest tracked list),
    boxes from ``rois`` (body id -> NormalizedRegionOfInterest2D stamped with the image's
    stamp) times the image size; a body without a roi is answered ERROR 'no roi for this
    stamp'. Returns (converted, number of rois clipped to [0, 1])."""
    out = Converted(PersonDetectionArray(header=header, image_width=int(width),
                                         image_height=int(height)))
    clipped_n = 0
    for body_id in body_ids:
        roi = rois.get(body_id)
        if roi is None:
            _add(out, body_id, 0.0, None, 'no roi for this stamp', 0)
            continue
        box, reason, clipped = roi_box(roi, width, height)
        clipped_n += int(clipped)
        conf = float(roi.c) if math.isfinite(float(roi.c)) else 0.0
        _add(out, body_id, min(max(conf, 0.0), 1.0), box, reason, 0)
    return out, clipped_n


def convert(fmt: str, msg: Any, person_classes: Sequence[str], min_confidence: float
            ) -> Converted:
    """An array of format ``fmt`` (native, vision_msgs or yolo) -> :class:`Converted`."""
    if fmt == 'native':
        return Converted(msg)
    if fmt == 'vision_msgs':
        return from_vision_msgs(msg, person_classes, min_confidence)
    if fmt == 'yolo':
        return from_yolo(msg, person_classes, min_confidence)
    raise ValueError(f'detections_format {fmt!r} is not an array format')


def to_vision_msgs(msg: PersonDetectionArray) -> Any:
    """Our ``PersonDetectionArray`` -> ``vision_msgs/Detection2DArray`` (the same header; per
    person one hypothesis ``class_id='person'`` with the detector's score, ``id`` = track id,
    box centre / size in pixels), for displays and nodes that read vision_msgs."""
    vm = message_module('vision_msgs')
    out = vm.Detection2DArray(header=msg.header)
    for d in msg.detections:
        det = vm.Detection2D(header=msg.header, id=d.track_id)
        det.bbox.center.position.x = d.bbox.x_offset + d.bbox.width / 2.0
        det.bbox.center.position.y = d.bbox.y_offset + d.bbox.height / 2.0
        det.bbox.size_x, det.bbox.size_y = float(d.bbox.width), float(d.bbox.height)
        hyp = vm.ObjectHypothesisWithPose()
        hyp.hypothesis.class_id, hyp.hypothesis.score = 'person', float(d.confidence)
        det.results.append(hyp)
        out.detections.append(det)
    return out
