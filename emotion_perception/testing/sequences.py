"""Camera sequences built from the real photos that ship in packages, with per-frame ground truth.

ROS-free and deterministic: a ``Sequence`` is a small description (who stands where and when,
what passes in front, the camera's noise) plus a seed, and frame ``i`` is rendered from it alone
(its random draws are seeded by ``(seed, i)``), so the same sequence gives the same frames, bit
for bit, in any order, without holding a video in memory.

The scene (``SCENE_SIZE``, 1280x720 like an HD webcam): a street-side wall (the building
facade at the top of ultralytics' bus.jpg) with people standing in front of it. The people are
the hand-annotated person boxes of ``sample_people.PEOPLE`` cut out of their photos (``PERSONS``:
rectangles that keep their own photo's background, like people seen through a doorway), scaled
to a common height. The occluder is the side of the bus in bus.jpg (a vehicle or panel passing
between the camera and the people), as tall as the frame.

Camera noise per frame (``CameraNoise``): a few pixels of shake (smooth sway + jitter), a slight
zoom breathing, brightness / contrast changes, Gaussian sensor noise and JPEG re-encoding at a
quality drawn per frame (mixed qualities). The sway, zoom and brightness are functions of time,
so a 10 fps and a 30 fps version of a scenario see the same camera motion.

Scenarios (each returns a ``Sequence`` with its ``events``):

* ``still_sequence``: people standing, only the camera's noise.
* ``occlusion_sequence``: the occluder passes in front of each person, hiding them for exactly
  ``hide_s`` (more than half of their box covered), optionally while they step sideways.
* ``swap_sequence``: a different person takes someone's place: a cut (one photo replaced by
  another, as in ``make demo``) or behind the passing occluder.
* ``expression_sequence``: one person's face changes expression half-way: a real face of
  another expression (another person's, ``EXPRESSION_CHANGES``) blended into the same spot.

Ground truth: ``Sequence.truth(i)`` gives, per person slot, who it is, their box in frame pixels
(the whole person, also while hidden), the fraction of it that is visible, and whose face
(expression) is shown. Boxes are xyxy pixels (floats), times are seconds from the first frame.

Example:
    >>> seq = occlusion_sequence(fps=10, hide_s=1.0, shift=0.6, seed=3)
    >>> for frame in seq.frames():      # frame.rgb: (720, 1280, 3) uint8
    ...     people = frame.truth.people  # PersonTruth per slot
    >>> [e.kind for e in seq.events]    # ['hidden', 'hidden', 'hidden', 'hidden']
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from typing import Iterator, Sequence as SequenceType

import cv2
import numpy as np

from ..core.model_files import sample_image_paths
from ..core.types import BBox
from .sample_people import PEOPLE

#: Width, height of the rendered frames (pixels).
SCENE_SIZE = (1280, 720)
#: A person counts as visible while at least this fraction of their box is not covered.
VISIBLE_FRACTION = 0.5
#: The bottom of people's boxes (fraction of the frame height), the same for everyone.
FLOOR = 0.93
#: Default height of a person's box (fraction of the frame height).
PERSON_HEIGHT = 0.45
#: The occluder is this much wider than what it must cover (the person, or both positions of a
#: person who steps sideways while hidden).
OCCLUDER_MARGIN = 1.15
#: Speed of the occluder (frame widths per second) unless a short ``hide_s`` needs it faster.
OCCLUDER_SPEED = 0.5
#: The facade (xyxy in bus.jpg) used as the background and the bus side used as the occluder:
#: both hold no person (the people of bus.jpg stand at x < 346 and x > 667 below y 388).
BACKGROUND_REGION = (0, 0, 810, 230)
OCCLUDER_REGION = (360, 300, 660, 650)


@dataclass(frozen=True)
class PersonSource:
    """A person of the sample photos: the photo (a key of ``sample_image_paths``), their box and
    face (xyxy pixels of that photo) and the expression the face shows."""

    photo: str
    box: tuple[float, float, float, float]
    face: tuple[float, float, float, float] | None
    expression: str


def _annotated(photo: str, index: int, expression: str, box=None) -> PersonSource:
    person = PEOPLE[photo][index]
    return PersonSource(photo, box or person.box, person.face, expression)


#: The people a sequence can show (the annotations of ``sample_people.PEOPLE``). Zidane's box is
#: cut at x=720: his stretched arm reaches over Ancelotti, who must not be in his picture.
PERSONS: dict[str, PersonSource] = {
    'eileen_collins': _annotated('astronaut', 0, 'smiling'),
    'grace_hopper': _annotated('grace_hopper', 0, 'neutral'),
    'carlo_ancelotti': _annotated('zidane', 0, 'neutral'),
    'zinedine_zidane': _annotated('zidane', 1, 'shouting', box=(120, 200, 720, 720)),
    'man_in_beige_coat': _annotated('bus', 0, 'neutral, sunglasses'),
    'man_in_black_coat': _annotated('bus', 1, 'neutral, sunglasses'),
}

#: Expression changes with real faces: (person, face before, face after), the faces being
#: ``PERSONS`` keys. The face baseline (FER2013 mini-Xception) reads Grace Hopper's own face as
#: Engagement/Peace and Eileen Collins' smile on her as Happiness (0.87); Ancelotti's own face
#: as mild Happiness (0.43) and Zidane's shouting face on him as Anger/Annoyance.
EXPRESSION_CHANGES: tuple[tuple[str, str, str], ...] = (
    ('grace_hopper', 'grace_hopper', 'eileen_collins'),
    ('carlo_ancelotti', 'carlo_ancelotti', 'zinedine_zidane'),
)


@dataclass(frozen=True)
class Appearance:
    """Person ``who`` stands in slot ``slot`` at ``box`` (xyxy scene pixels) from ``t0`` to
    ``t1`` (seconds, t0 inclusive; ``math.inf``: to the end), showing the face of ``face``
    (None: their own)."""

    slot: int
    who: str
    t0: float
    t1: float
    box: tuple[float, float, float, float]
    face: str | None = None


@dataclass(frozen=True)
class Occluder:
    """A panel as tall as the frame, ``width`` pixels wide; its left edge moves through the
    keyframes ``(t, x)`` (seconds, scene pixels), linearly between them, held outside them."""

    width: float
    keys: tuple[tuple[float, float], ...]

    def left(self, t: float) -> float:
        times, xs = zip(*self.keys)
        return float(np.interp(t, times, xs))


@dataclass(frozen=True)
class Event:
    """Something a tracker or a state must get right, from ``t0`` to ``t1`` (seconds).

    kind: 'hidden' (slot's person covered from t0 to t1, ``shift_px`` sideways meanwhile),
    'swap' (person ``before`` replaced by ``after`` in the slot; t0 == t1 for a cut) or
    'expression' (face ``before`` replaced by ``after`` at t0 == t1).
    """

    kind: str
    slot: int
    t0: float
    t1: float
    before: str
    after: str
    shift_px: float = 0.0


@dataclass(frozen=True)
class CameraNoise:
    """The camera's imperfections, per frame (all off: ``CameraNoise.none()``).

    Attributes:
        shake_px: amplitude of the smooth sway (pixels); jitter_px: per-frame jitter (std, px).
        zoom: amplitude of the zoom breathing (0.02 = +-2 %).
        brightness: amplitude of the gain change (0.12 = +-12 %), plus per-frame flicker of a
            quarter of it; contrast: amplitude of the contrast change around mid-grey.
        sensor_noise: standard deviation of the Gaussian noise (grey levels of 255).
        jpeg_quality: (low, high) JPEG quality drawn per frame; None: no re-encoding.
    """

    shake_px: float = 3.0
    jitter_px: float = 0.7
    zoom: float = 0.02
    brightness: float = 0.12
    contrast: float = 0.08
    sensor_noise: float = 3.0
    jpeg_quality: tuple[int, int] | None = (40, 95)

    @classmethod
    def none(cls) -> 'CameraNoise':
        return cls(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, None)


@dataclass(frozen=True)
class PersonTruth:
    """Ground truth of one slot in one frame.

    box: the whole person (xyxy frame pixels, also while hidden); visible_fraction: the part of
    the box not covered by an occluder, in [0, 1]; face: whose face is shown (``PERSONS`` key);
    expression: what that face shows.
    """

    slot: int
    who: str
    box: BBox
    visible_fraction: float
    face: str
    expression: str

    @property
    def visible(self) -> bool:
        return self.visible_fraction >= VISIBLE_FRACTION


@dataclass(frozen=True)
class FrameTruth:
    """Ground truth of frame ``index`` at ``stamp_s`` (seconds from the first frame)."""

    index: int
    stamp_s: float
    people: tuple[PersonTruth, ...]

    def slot(self, slot: int) -> PersonTruth | None:
        return next((p for p in self.people if p.slot == slot), None)


@dataclass(frozen=True)
class Frame:
    """A rendered frame: ``rgb`` (H, W, 3) uint8 and its ``truth``."""

    index: int
    stamp_s: float
    rgb: np.ndarray
    truth: FrameTruth


# -- the pictures ---------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _photo(name: str) -> np.ndarray:
    """A sample photo as (H, W, 3) uint8 RGB (read-only)."""
    paths = sample_image_paths()
    if name not in paths:
        raise FileNotFoundError(f'sample photo {name!r} is not installed (found {sorted(paths)}): '
                                'it ships in ultralytics, scikit-image or matplotlib')
    rgb = cv2.cvtColor(cv2.imread(str(paths[name])), cv2.COLOR_BGR2RGB)
    rgb.setflags(write=False)
    return rgb


def _region(photo: str, xyxy: SequenceType[float]) -> np.ndarray:
    x1, y1, x2, y2 = (int(round(v)) for v in xyxy)
    return _photo(photo)[y1:y2, x1:x2]


@functools.lru_cache(maxsize=24)
def _bus_region(region: tuple[int, int, int, int], width: int, height: int) -> np.ndarray:
    """A region of bus.jpg (the wall: BACKGROUND_REGION, the occluder: OCCLUDER_REGION)
    resized to ``width`` x ``height``, read-only (cached)."""
    out = cv2.resize(_region('bus', region), (width, height), interpolation=cv2.INTER_CUBIC)
    out.setflags(write=False)
    return out


def _feather_mask(height: int, width: int, border: float = 0.15) -> np.ndarray:
    """(H, W) float32 mask: 1 inside, falling to 0 over ``border`` of the smaller side."""
    k = max(2, int(border * min(height, width)))
    inner = np.ones((max(1, height - 2 * k), max(1, width - 2 * k)), np.float32)
    mask = cv2.copyMakeBorder(inner, k, height - k - inner.shape[0], k,
                              width - k - inner.shape[1], cv2.BORDER_CONSTANT, value=0.0)
    return cv2.blur(mask, (k | 1, k | 1))


def person_picture(who: str, face: str | None = None) -> np.ndarray:
    """The picture of ``who`` (their annotated box cut from their photo, (h, w, 3) uint8 RGB),
    with the face of ``face`` blended into their face box when given (another expression)."""
    src = PERSONS[who]
    crop = _region(src.photo, src.box).copy()
    if face is None or face == who:
        return crop
    donor = PERSONS[face]
    if src.face is None or donor.face is None:
        raise ValueError(f'{who!r} or {face!r} has no visible face to replace or give')
    x1, y1, x2, y2 = (int(round(v)) for v in src.face)
    bx, by = int(round(src.box[0])), int(round(src.box[1]))
    x1, x2, y1, y2 = x1 - bx, x2 - bx, y1 - by, y2 - by
    pasted = cv2.resize(_region(donor.photo, donor.face), (x2 - x1, y2 - y1),
                        interpolation=cv2.INTER_AREA).astype(np.float32)
    mask = _feather_mask(y2 - y1, x2 - x1)[..., None]
    region = crop[y1:y2, x1:x2].astype(np.float32)
    crop[y1:y2, x1:x2] = np.round(mask * pasted + (1 - mask) * region).astype(np.uint8)
    return crop


@functools.lru_cache(maxsize=64)
def _sprite(who: str, face: str | None, width: int, height: int) -> np.ndarray:
    out = cv2.resize(person_picture(who, face), (width, height), interpolation=cv2.INTER_AREA)
    out.setflags(write=False)
    return out


def person_box(who: str, center_x: float, height: float = PERSON_HEIGHT,
               size: tuple[int, int] = SCENE_SIZE) -> tuple[float, float, float, float]:
    """Scene box (xyxy pixels) of ``who`` standing on the floor line, centred at ``center_x``,
    ``height`` (fraction of the frame height) tall, with the aspect of their photo box."""
    x1, y1, x2, y2 = PERSONS[who].box
    h = height * size[1]
    w = h * (x2 - x1) / (y2 - y1)
    bottom = FLOOR * size[1]
    return (center_x - w / 2, bottom - h, center_x + w / 2, bottom)


# -- the sequence ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Camera:
    """The camera of one frame: scene -> frame ``x' = zoom * (x - cx) + cx + dx`` (same for y),
    then ``(v - 128) * contrast + 128``, times ``gain``, plus noise, JPEG at ``quality``."""

    zoom: float
    dx: float
    dy: float
    gain: float
    contrast: float
    quality: int | None
    noise_seed: int

    def matrix(self, width: int, height: int) -> np.ndarray:
        cx, cy = width / 2, height / 2
        return np.array([[self.zoom, 0.0, cx - self.zoom * cx + self.dx],
                         [0.0, self.zoom, cy - self.zoom * cy + self.dy]], np.float64)


@dataclass(frozen=True)
class Sequence:
    """A camera sequence: who stands where (``appearances``), what passes in front
    (``occluders``), what happens (``events``), the camera's ``noise``; rendered on demand.

    Attributes:
        name: a short description ('occlusion hide=1.0s shift=0.6 10fps seed=0').
        fps: frames per second; frame i is at ``i / fps`` seconds.
        duration_s: length; ``len(seq)`` frames.
        size: (width, height) of the frames in pixels.
    """

    name: str
    fps: float
    duration_s: float
    appearances: tuple[Appearance, ...]
    occluders: tuple[Occluder, ...] = ()
    events: tuple[Event, ...] = ()
    noise: CameraNoise = field(default_factory=CameraNoise)
    seed: int = 0
    size: tuple[int, int] = SCENE_SIZE

    def __len__(self) -> int:
        return int(round(self.duration_s * self.fps))

    def stamp(self, index: int) -> float:
        """Seconds of frame ``index`` from the first frame."""
        return index / self.fps

    def index_at(self, t: float) -> int:
        """The first frame at or after ``t`` seconds (clipped to the sequence)."""
        return min(len(self) - 1, max(0, math.ceil(t * self.fps - 1e-9)))

    def _camera(self, index: int) -> _Camera:
        n, t = self.noise, self.stamp(index)
        ph = np.random.default_rng([self.seed, 1]).uniform(0, 2 * math.pi, 8)
        rng = np.random.default_rng([self.seed, 2, index])
        jitter = rng.normal(0.0, 1.0, 3)
        sway = (0.6 * math.sin(2 * math.pi * 0.45 * t + ph[0])
                + 0.4 * math.sin(2 * math.pi * 1.3 * t + ph[1]),
                0.6 * math.sin(2 * math.pi * 0.35 * t + ph[2])
                + 0.4 * math.sin(2 * math.pi * 1.1 * t + ph[3]))
        quality = (int(rng.integers(n.jpeg_quality[0], n.jpeg_quality[1] + 1))
                   if n.jpeg_quality else None)
        return _Camera(zoom=1.0 + n.zoom * math.sin(2 * math.pi * t / 6.0 + ph[4]),
                       dx=n.shake_px * sway[0] + n.jitter_px * jitter[0],
                       dy=n.shake_px * sway[1] + n.jitter_px * jitter[1],
                       gain=(1.0 + n.brightness * math.sin(2 * math.pi * t / 4.3 + ph[5])
                             + n.brightness / 4 * jitter[2]),
                       contrast=1.0 + n.contrast * math.sin(2 * math.pi * t / 5.7 + ph[6]),
                       quality=quality, noise_seed=int(rng.integers(2**31)))

    def _active(self, t: float) -> list[Appearance]:
        """The appearance of each slot at ``t`` (the last one started when several match)."""
        by_slot: dict[int, Appearance] = {}
        for a in self.appearances:
            if a.t0 <= t < a.t1:
                by_slot[a.slot] = a
        return [by_slot[s] for s in sorted(by_slot)]

    def _covered(self, box: SequenceType[float], t: float) -> float:
        """Fraction of the scene box ``box`` covered by the occluders at ``t``."""
        x1, x2 = box[0], box[2]
        spans = sorted((o.left(t), o.left(t) + o.width) for o in self.occluders)
        covered, reach = 0.0, x1
        for a, b in spans:
            a, b = max(a, reach), min(b, x2)
            if b > a:
                covered += b - a
                reach = b
        return covered / max(x2 - x1, 1e-9)

    def truth(self, index: int) -> FrameTruth:
        """Ground truth of frame ``index``: per slot, who, the box in frame pixels (the camera's
        shake and zoom applied, clipped to the frame), the visible fraction, the face shown."""
        t = self.stamp(index)
        m = self._camera(index).matrix(*self.size)
        people = []
        for a in self._active(t):
            (x1, y1), (x2, y2) = np.array([[a.box[0], a.box[1], 1.0],
                                           [a.box[2], a.box[3], 1.0]]) @ m.T
            box = BBox(max(0.0, float(x1)), max(0.0, float(y1)),
                       min(float(self.size[0]), float(x2)), min(float(self.size[1]), float(y2)))
            face = a.face or a.who
            people.append(PersonTruth(a.slot, a.who, box, 1.0 - self._covered(a.box, t), face,
                                      PERSONS[face].expression))
        return FrameTruth(index, t, tuple(people))

    def visible_box(self, person: PersonTruth, t: float) -> BBox | None:
        """What a detector boxes of ``person`` (a slot's truth at ``t`` seconds): the part of
        their box the occluders leave (the occluders' scene position, within the camera's few
        pixels of the frame's); None when mostly hidden (not ``visible``)."""
        if not person.visible:
            return None
        x1, x2 = person.box.x1, person.box.x2
        for o in self.occluders:
            left, right = o.left(t), o.left(t) + o.width
            if left <= x1 < right:
                x1 = right
            elif left < x2 <= right:
                x2 = left
        return BBox(x1, person.box.y1, x2, person.box.y2) if x2 - x1 > 10 else None

    def render_scene(self, t: float) -> np.ndarray:
        """The scene at ``t`` seconds as the world shows it (no camera): (H, W, 3) uint8 RGB."""
        width, height = self.size
        canvas = _bus_region(BACKGROUND_REGION, width, height).copy()
        for a in self._active(t):
            x1, y1 = int(round(a.box[0])), int(round(a.box[1]))
            w, h = int(round(a.box[2])) - x1, int(round(a.box[3])) - y1
            sprite = _sprite(a.who, a.face, w, h)
            cx1, cy1, cx2, cy2 = max(x1, 0), max(y1, 0), min(x1 + w, width), min(y1 + h, height)
            if cx2 > cx1 and cy2 > cy1:
                canvas[cy1:cy2, cx1:cx2] = sprite[cy1 - y1:cy2 - y1, cx1 - x1:cx2 - x1]
        for o in self.occluders:
            left, w = int(round(o.left(t))), int(round(o.width))
            cx1, cx2 = max(left, 0), min(left + w, width)
            if cx2 > cx1:
                texture = _bus_region(OCCLUDER_REGION, w, height)
                canvas[:, cx1:cx2] = texture[:, cx1 - left:cx2 - left]
        return canvas

    def frame(self, index: int) -> np.ndarray:
        """Frame ``index`` as the camera delivers it: (H, W, 3) uint8 RGB."""
        cam = self._camera(index)
        width, height = self.size
        scene = self.render_scene(self.stamp(index))
        img = cv2.warpAffine(scene, cam.matrix(width, height), (width, height),
                             flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
        if self.noise == CameraNoise.none():
            return img
        out = img.astype(np.float32)
        out = ((out - 128.0) * cam.contrast + 128.0) * cam.gain
        if self.noise.sensor_noise > 0:  # OpenCV's generator: 4x faster than numpy's here
            noise = np.empty(out.shape, np.float32)
            cv2.setRNGSeed(cam.noise_seed)
            cv2.randn(noise.reshape(height, -1), 0.0, self.noise.sensor_noise)
            out += noise
        img = np.clip(np.round(out), 0, 255).astype(np.uint8)
        if cam.quality is not None:
            _, data = cv2.imencode('.jpg', cv2.cvtColor(img, cv2.COLOR_RGB2BGR),
                                    [cv2.IMWRITE_JPEG_QUALITY, cam.quality])
            img = cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        return img

    def frames(self, start: int = 0, stop: int | None = None) -> Iterator[Frame]:
        """Frames ``start`` .. ``stop`` - 1 (default: all) with their ground truth."""
        for i in range(start, len(self) if stop is None else min(stop, len(self))):
            yield Frame(i, self.stamp(i), self.frame(i), self.truth(i))


# -- scenarios ------------------------------------------------------------------------------------
def _centers(n: int, width: int) -> list[float]:
    """Where ``n`` people stand: evenly spaced across the frame."""
    return [width * (k + 0.5) / n for k in range(n)]


def _check_fps(fps: float, duration_s: float) -> None:
    if not fps > 0 or not duration_s > 0:
        raise ValueError(f'fps and duration_s must be > 0, got {fps}, {duration_s}')


def _shifted(box: SequenceType[float], dx: float) -> tuple[float, float, float, float]:
    return (box[0] + dx, box[1], box[2] + dx, box[3])


def _center_x(box: SequenceType[float]) -> float:
    return (box[0] + box[2]) / 2


@dataclass(frozen=True)
class _Hide:
    """One person hidden during a pass: slot, box before and after, who before and after."""

    slot: int
    before: tuple[float, float, float, float]
    after: tuple[float, float, float, float]
    who: str
    then: str


def _plan_pass(t_start: float, direction: int, hides: list[_Hide], hide_s: float,
               width: int) -> tuple[Occluder, list[tuple[_Hide, float, float, float]], float]:
    """The occluder crossing the frame (``direction`` +1: left to right), stopping in front of
    each person so that each is hidden (more than half covered) for exactly ``hide_s``.

    Its width covers a person's box before and after (a step sideways, or someone else there);
    it moves at ``OCCLUDER_SPEED`` frame widths per second, faster when ``hide_s`` is short.
    While the occluder covers both boxes completely (the middle of its stop) the person changes.

    Returns:
        the occluder, per hide (hide, hidden from, hidden until, change time), the end time.
    """
    unions = [max(h.before[2], h.after[2]) - min(h.before[0], h.after[0]) for h in hides]
    w_occ = OCCLUDER_MARGIN * max(unions)
    speed = max(OCCLUDER_SPEED * width,
                max((w_occ + abs(_center_x(h.after) - _center_x(h.before))) / hide_s
                    for h in hides))
    left = -w_occ if direction > 0 else float(width)
    t, keys, timed = t_start, [(t_start, left)], []
    for h in sorted(hides, key=lambda h: direction * _center_x(h.before)):
        c_old, c_new = _center_x(h.before), _center_x(h.after)
        stop = (c_old + c_new) / 2 - w_occ / 2          # the occluder centred on both boxes
        t_hidden = t + abs((c_old - w_occ if direction > 0 else c_old) - left) / speed
        t_arrive = t + abs(stop - left) / speed
        dwell = hide_s - (w_occ + direction * (c_new - c_old)) / speed
        timed.append((h, t_hidden, t_hidden + hide_s, t_arrive + dwell / 2))
        keys += [(t_arrive, stop), (t_arrive + dwell, stop)]
        t, left = t_arrive + dwell, stop
    end = float(width) if direction > 0 else -w_occ
    t_end = t + abs(end - left) / speed
    keys.append((t_end, end))
    return Occluder(w_occ, tuple(keys)), timed, t_end


def _apply_hides(timed, appearances: dict[int, list[Appearance]], kind: str) -> list[Event]:
    """Change each hidden slot's appearance at its change time; the events."""
    events = []
    for h, t1, t2, t_change in timed:
        last = appearances[h.slot][-1]
        appearances[h.slot][-1] = dataclasses.replace(last, t1=t_change)
        appearances[h.slot].append(Appearance(h.slot, h.then, t_change, math.inf, h.after))
        events.append(Event(kind, h.slot, t1, t2, h.who, h.then,
                            _center_x(h.after) - _center_x(h.before)))
    return events


def still_sequence(fps: float = 10.0, duration_s: float = 12.0,
                   people: SequenceType[str] = ('eileen_collins', 'grace_hopper'), seed: int = 0,
                   noise: CameraNoise = CameraNoise(), height: float = PERSON_HEIGHT
                   ) -> Sequence:
    """``people`` (``PERSONS`` keys) standing side by side; only the camera's noise changes."""
    _check_fps(fps, duration_s)
    width = SCENE_SIZE[0]
    apps = tuple(Appearance(k, who, 0.0, math.inf, person_box(who, cx, height))
                 for k, (who, cx) in enumerate(zip(people, _centers(len(people), width))))
    return Sequence(f'still {"+".join(people)} {fps:g}fps seed={seed}', fps, duration_s, apps,
                    noise=noise, seed=seed)


def occlusion_sequence(fps: float = 10.0, hide_s: float = 1.0, shift: float = 0.0,
                       people: SequenceType[str] = ('eileen_collins', 'grace_hopper'),
                       seed: int = 0, passes: int = 2, lead_s: float = 2.0, gap_s: float = 2.0,
                       noise: CameraNoise = CameraNoise(), height: float = PERSON_HEIGHT
                       ) -> Sequence:
    """The occluder passes ``passes`` times (left to right, then back), hiding each person for
    exactly ``hide_s`` seconds per pass; ``gap_s`` of clear view between passes, ``lead_s``
    before the first (for the tracker to confirm its tracks) and after the last.

    Args:
        shift: how far each person steps sideways while hidden, in widths of their box (0: they
            stay; 0.6: IoU 0.25 between before and after). They step towards the frame's centre
            on odd passes and back on even ones, so they stay in the frame.
    Events: one 'hidden' per person per pass (before == after: the same person).
    """
    _check_fps(fps, hide_s)
    width = SCENE_SIZE[0]
    apps = {k: [Appearance(k, who, 0.0, math.inf, person_box(who, cx, height))]
            for k, (who, cx) in enumerate(zip(people, _centers(len(people), width)))}
    occluders, events, t = [], [], lead_s
    for p in range(passes):
        hides = []
        for k, a_list in apps.items():
            box = a_list[-1].box
            inward = 1.0 if _center_x(box) <= width / 2 else -1.0
            dx = shift * (box[2] - box[0]) * (inward if p % 2 == 0 else -inward)
            hides.append(_Hide(k, box, _shifted(box, dx), a_list[-1].who, a_list[-1].who))
        occ, timed, t_end = _plan_pass(t, 1 if p % 2 == 0 else -1, hides, hide_s, width)
        occluders.append(occ)
        events += _apply_hides(timed, apps, 'hidden')
        t = t_end + gap_s
    duration = t - gap_s + lead_s
    name = (f'occlusion hide={hide_s:g}s shift={shift:g} {"+".join(people)} {fps:g}fps '
            f'seed={seed}')
    return Sequence(name, fps, duration, tuple(a for k in sorted(apps) for a in apps[k]),
                    tuple(occluders), tuple(sorted(events, key=lambda e: e.t0)), noise, seed)


#: Pairs (before, after) of ``swap_sequence``: the demo's (the astronaut, then Grace Hopper at
#: her place), both ways, and look-alikes in dark suits / coats.
SWAPS: tuple[tuple[str, str], ...] = (
    ('eileen_collins', 'grace_hopper'), ('carlo_ancelotti', 'man_in_black_coat'),
    ('grace_hopper', 'eileen_collins'), ('zinedine_zidane', 'carlo_ancelotti'),
    ('man_in_beige_coat', 'zinedine_zidane'), ('man_in_black_coat', 'man_in_beige_coat'),
)


def swap_sequence(fps: float = 10.0, pairs: SequenceType[tuple[str, str]] = SWAPS[:2],
                  mode: str = 'cut', hide_s: float = 1.0, seed: int = 0, lead_s: float = 3.0,
                  trail_s: float = 3.0, noise: CameraNoise = CameraNoise(),
                  height: float = PERSON_HEIGHT) -> Sequence:
    """A different person takes each slot's place: ``pairs`` (before, after), one per slot.

    mode 'cut': the pictures change between two frames at ``lead_s`` (slot 0) and
    ``lead_s + 1`` s (slot 1), as when one photo replaces another (``make demo``);
    'occluded': the occluder passes once and the person changes while hidden for ``hide_s``
    (someone walks behind a vehicle and someone else comes out). The new person stands at the
    same place (same centre and floor, same height). Events: one 'swap' per slot.
    """
    _check_fps(fps, hide_s)
    if mode not in ('cut', 'occluded'):
        raise ValueError(f"mode must be 'cut' or 'occluded', got {mode!r}")
    width = SCENE_SIZE[0]
    centers = _centers(len(pairs), width)
    apps = {k: [Appearance(k, a, 0.0, math.inf, person_box(a, cx, height))]
            for k, ((a, _), cx) in enumerate(zip(pairs, centers))}
    hides = [_Hide(k, apps[k][0].box, person_box(b, cx, height), a, b)
             for k, ((a, b), cx) in enumerate(zip(pairs, centers))]
    if mode == 'cut':
        timed = [(h, lead_s + k, lead_s + k, lead_s + k) for k, h in enumerate(hides)]
        occluders, t_end = (), lead_s + len(hides) - 1
    else:
        occ, timed, t_end = _plan_pass(lead_s, 1, hides, hide_s, width)
        occluders = (occ,)
    events = _apply_hides(timed, apps, 'swap')
    name = f'swap {mode} {",".join(f"{a}->{b}" for a, b in pairs)} {fps:g}fps seed={seed}'
    return Sequence(name, fps, t_end + trail_s, tuple(a for k in sorted(apps) for a in apps[k]),
                    occluders, tuple(events), noise, seed)


def expression_sequence(fps: float = 10.0, change: tuple[str, str, str] = EXPRESSION_CHANGES[0],
                        duration_s: float = 12.0, change_at_s: float | None = None,
                        seed: int = 0, noise: CameraNoise = CameraNoise(), height: float = 0.6
                        ) -> Sequence:
    """One person (``change[0]``) in the middle of the frame whose face changes from the face of
    ``change[1]`` to that of ``change[2]`` at ``change_at_s`` (default: half-way), the new face
    blended into the same spot (``person_picture``). Event: one 'expression'."""
    _check_fps(fps, duration_s)
    who, before, after = change
    t_change = duration_s / 2 if change_at_s is None else change_at_s
    box = person_box(who, SCENE_SIZE[0] / 2, height)
    apps = (Appearance(0, who, 0.0, t_change, box, before),
            Appearance(0, who, t_change, math.inf, box, after))
    events = (Event('expression', 0, t_change, t_change, before, after),)
    name = f'expression {who}: {before}->{after} face {fps:g}fps seed={seed}'
    return Sequence(name, fps, duration_s, apps, (), events, noise, seed)


__all__ = ['CameraNoise', 'EXPRESSION_CHANGES', 'Event', 'Frame', 'FrameTruth', 'Occluder',
           'PERSONS', 'PersonSource', 'PersonTruth', 'SCENE_SIZE', 'SWAPS', 'Sequence',
           'VISIBLE_FRACTION', 'expression_sequence', 'occlusion_sequence', 'person_box',
           'person_picture', 'still_sequence', 'swap_sequence']
