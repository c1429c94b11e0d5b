"""Who is in the sample photographs (hand-annotated), and scoring a detector + face baseline on
them: real people found, boxes without a person (phantoms), people answered with their own face.

The photographs ship inside installed packages (``core.model_files.sample_image_paths``):
bus.jpg and zidane.jpg (ultralytics), the astronaut (scikit-image), Grace Hopper (matplotlib).
Boxes were drawn by hand on a 50-pixel grid over each photo (xyxy pixels): the whole visible
person, and the face (brows to chin, ear to ear) where it is visible.

Used by ``test/test_sample_people.py`` and ``bench/bench_photos.py``. ROS-free.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from ..core.types import BBox


@dataclass(frozen=True)
class Person:
    """One annotated person: ``box`` (xyxy) and ``face`` (xyxy, None when not visible)."""

    name: str
    box: tuple[float, float, float, float]
    face: tuple[float, float, float, float] | None


#: The people in each photograph.
PEOPLE: dict[str, tuple[Person, ...]] = {
    'bus': (
        Person('man in the beige coat', (50, 397, 245, 903), (110, 415, 160, 470)),
        Person('man in the black coat', (224, 405, 346, 861), (265, 420, 310, 472)),
        # walking out of the picture on the right: the head is cut by the border, face away
        Person('man at the right border', (667, 388, 810, 878), None),
        # only the body is in the picture, at the left border
        Person('person at the left border', (0, 557, 76, 861), None),
    ),
    'zidane': (
        Person('Carlo Ancelotti (right)', (750, 40, 1150, 720), (900, 95, 1060, 280)),
        # shouting, in profile, his arm stretched out to the right (over Ancelotti)
        Person('Zinedine Zidane (left)', (120, 200, 1150, 720), (550, 255, 670, 435)),
    ),
    'astronaut': (
        Person('Eileen Collins', (15, 15, 400, 512), (175, 55, 275, 180)),
    ),
    'grace_hopper': (
        Person('Grace Hopper', (10, 20, 512, 600), (165, 105, 360, 340)),
    ),
}

#: A detection is a person's box when their IoU is at least this (the usual detection criterion).
MATCH_IOU = 0.5


def _bbox(xyxy: Sequence[float]) -> BBox:
    return BBox(*(float(v) for v in xyxy))


def match_people(people: Sequence[Person], boxes: Sequence[BBox], scores: Sequence[float]
                 ) -> list[int | None]:
    """Which person each detection is: greedy by detection score, one detection per person.

    Returns:
        Per detection, the index in ``people`` or None (a phantom: no person, or a second box
        on a person who already has one).
    """
    out: list[int | None] = [None] * len(boxes)
    taken: set[int] = set()
    for d in sorted(range(len(boxes)), key=lambda i: -scores[i]):
        best, best_iou = None, MATCH_IOU
        for p, person in enumerate(people):
            iou = boxes[d].iou(_bbox(person.box))
            if p not in taken and iou >= best_iou:
                best, best_iou = p, iou
        if best is not None:
            out[d] = best
            taken.add(best)
    return out


def face_on(face_box: BBox | None, person: Person) -> bool:
    """True when ``face_box`` (the face a backend used) is ``person``'s face: its centre lies in
    the annotated face."""
    if face_box is None or person.face is None:
        return False
    cx, cy = face_box.center
    x1, y1, x2, y2 = person.face
    return x1 <= cx <= x2 and y1 <= cy <= y2


@dataclass
class PhotoScore:
    """Counts on one or more photos (add them with ``+``)."""

    people: int = 0             # annotated people
    with_face: int = 0          # of them, with a visible face
    found: int = 0              # people with a detection
    boxes: int = 0              # detections
    phantoms: int = 0           # detections that are no person (or a second box on one)
    answered: int = 0           # people with a visible face answered OK with their own face
    wrong_face: int = 0         # detections answered OK with a face that is not their person's
    phantoms_answered: int = 0  # phantoms answered OK
    missed: list[str] = field(default_factory=list)  # visible faces not answered (names)

    def __add__(self, other: 'PhotoScore') -> 'PhotoScore':
        return PhotoScore(*(a + b for a, b in zip(
            (self.people, self.with_face, self.found, self.boxes, self.phantoms, self.answered,
             self.wrong_face, self.phantoms_answered, self.missed),
            (other.people, other.with_face, other.found, other.boxes, other.phantoms,
             other.answered, other.wrong_face, other.phantoms_answered, other.missed))))


def score_photo(photo: str, boxes: Sequence[BBox], scores: Sequence[float],
                answers: Sequence[tuple[bool, BBox | None]]) -> PhotoScore:
    """Score one photo.

    Args:
        photo: a key of ``PEOPLE``.
        boxes, scores: the detections (xyxy pixels) and their confidences.
        answers: per detection, (answered OK, the face box used or None).
    """
    people = PEOPLE[photo]
    who = match_people(people, boxes, scores)
    s = PhotoScore(people=len(people), with_face=sum(p.face is not None for p in people),
                   found=sum(w is not None for w in who), boxes=len(boxes),
                   phantoms=sum(w is None for w in who))
    answered = set()
    for w, (ok, face) in zip(who, answers):
        if not ok:
            continue
        if w is None:
            s.phantoms_answered += 1
        elif face_on(face, people[w]):
            answered.add(w)
        else:
            s.wrong_face += 1
    s.answered = len(answered)
    s.missed = [f'{photo}: {p.name}' for i, p in enumerate(people)
                if p.face is not None and i not in answered]
    return s


def evaluate_photos(images: dict[str, np.ndarray],
                    detect: Callable[[np.ndarray], tuple[list[BBox], list[float]]],
                    answer: Callable[[np.ndarray, list[BBox]], list[tuple[bool, BBox | None]]]
                    ) -> dict[str, PhotoScore]:
    """Run ``detect`` (image -> boxes, scores) and ``answer`` (image, boxes -> per box (OK, face
    box)) on each photo of ``images`` (name -> (H, W, 3) uint8 RGB) and score them."""
    out = {}
    for name, image in images.items():
        boxes, scores = detect(image)
        out[name] = score_photo(name, boxes, scores, answer(image, boxes) if boxes else [])
    return out


__all__ = ['MATCH_IOU', 'PEOPLE', 'Person', 'PhotoScore', 'evaluate_photos', 'face_on',
           'match_people', 'score_photo']
