"""Flagging a track id that has passed to a different person, from the colours of the body.

A tracker keeps an id across a person swap when someone else appears where a person was (one
photo replaced by the next in ``make demo``; someone stepping out from behind a vehicle that
another person walked behind): the id's per-person state would then inherit the previous
person's emotions. ``IdentityGuard`` keeps a colour signature per track id and answers, per
observation, whether the id now shows a different person (``new_identity``), so the state can
start over. ROS-free, numpy + OpenCV, ~0.3 ms per person; state is fed by stamps (sensor time).

Signature (``body_signature``): the box's central 70 % of width (less background), resized to
24x48 pixels, in a grid of 4 rows x 2 columns (head, shoulders, torso, legs; left and right);
per cell a histogram of the coloured pixels' hue x saturation (8 x 3 bins) and of the grey
pixels' brightness (4 bins: dark suits, white shirts), with soft bins (each value shared by
its two nearest bins, so noise, JPEG and exposure changes move little mass), normalised to sum
1. Distance: the mean over the cells of the Bhattacharyya (Hellinger) distance
``sqrt(1 - sum(sqrt(p * q)))``, 0 (same colours) .. 1 (disjoint).

Decision per observation of a track id:

* the reference is learnt from the id's first stable appearance (observations that agree with
  one another in box shape and colours for ``confirm_s``), not from its first box: a track
  often starts on a person half out from behind something;
* an observation that agrees with the id's reference (box shape within ``max_size_change`` of
  the reference box, distance <= ``threshold``) is the same person: the reference follows it
  (the mean of the first observations, then an exponential average with ``learning_rate``)
  and nothing is flagged;
* any other observation (far colours, or a box of another shape: partly hidden, a different
  build) is *pending*; pending observations that agree with one another (shape and colours)
  for ``confirm_s`` seconds and at least ``min_observations`` observations are a stable new
  appearance: if its colours are far from the reference it is a new identity (flagged once,
  the reference restarts from it), else the same person with a new box shape (adopted, not
  flagged). A pending run that changes (a person sliding behind an occluder: the box shrinks
  frame by frame) restarts, so passing occlusions are never confirmed.

Bounded memory: at most ``max_tracks`` ids (least recently seen evicted, counted in
``evicted``); an id unseen for ``forget_after_s`` starts over; stamps going backwards (a bag
loop) restart that id.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field

import cv2
import numpy as np

from .types import BBox

#: Crop size the signature is computed on (width, height), and its grid of cells (rows, cols).
SIGNATURE_SIZE = (24, 48)
GRID = (4, 2)
#: Fraction of the box width kept, centred (the sides of a person box are mostly background).
CENTRAL_WIDTH = 0.7
#: Hue x saturation bins of coloured pixels, brightness bins of grey ones (per cell).
HUE_BINS, SAT_BINS, GREY_BINS = 8, 3, 4
SIGNATURE_BINS = HUE_BINS * SAT_BINS + GREY_BINS
#: A pixel is grey (no reliable hue) below this saturation or value (OpenCV's 0..255 scale),
#: with a linear ramp of GREY_RAMP levels between grey and coloured.
MIN_SATURATION, MIN_VALUE, GREY_RAMP = 40.0, 40.0, 30.0
#: Boxes smaller than this (pixels, either side) carry too little colour to compare.
MIN_BOX_SIDE = 12


@dataclass
class IdentityOptions:
    """Settings of ``IdentityGuard`` (see the module docstring; defaults from
    bench/bench_tracking.py).

    Attributes:
        threshold: signature distance in [0, 1] above which colours belong to someone else.
        confirm_s: seconds a new appearance must hold (stamp time) before it is decided.
        min_observations: and at least this many observations.
        max_size_change: a box whose width or height differs from the reference box by more
            than this fraction is not compared directly (partly hidden, another build).
        learning_rate: weight of an agreeing observation in the reference (0..1].
        max_tracks: most track ids remembered (least recently seen evicted first).
        forget_after_s: an id unseen this long (stamp time) starts over.
    """

    threshold: float = 0.25
    confirm_s: float = 0.3
    min_observations: int = 2
    max_size_change: float = 0.25
    learning_rate: float = 0.1
    max_tracks: int = 256
    forget_after_s: float = 60.0

    def validate(self) -> None:
        """Raise ValueError naming the offending setting."""
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f'threshold must be in (0, 1), got {self.threshold}')
        if self.confirm_s < 0 or self.min_observations < 1:
            raise ValueError(f'confirm_s must be >= 0 and min_observations >= 1, got '
                             f'{self.confirm_s}, {self.min_observations}')
        if self.max_size_change <= 0 or not 0.0 < self.learning_rate <= 1.0:
            raise ValueError(f'max_size_change must be > 0 and learning_rate in (0, 1], got '
                             f'{self.max_size_change}, {self.learning_rate}')
        if self.max_tracks < 1 or self.forget_after_s <= 0:
            raise ValueError(f'max_tracks must be >= 1 and forget_after_s > 0, got '
                             f'{self.max_tracks}, {self.forget_after_s}')


def _soft_bins(x: np.ndarray, n: int, top: float, circular: bool
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear interpolation between the centres of ``n`` bins over [0, top): per value the two
    nearest bins and the weight of the second (a value between two bins is shared by both, so a
    small change of colour moves little mass: hard bins flip whole pixels at their edges)."""
    pos = x * (n / top) - 0.5
    low = np.floor(pos)
    weight = pos - low
    low = low.astype(np.int64)
    high = low + 1
    if circular:
        return low % n, high % n, weight
    return np.clip(low, 0, n - 1), np.clip(high, 0, n - 1), weight


def body_signature(rgb: np.ndarray, bbox: BBox) -> np.ndarray | None:
    """Colour signature of the person in ``bbox`` (xyxy pixels) of ``rgb`` ((H, W, 3) uint8):
    (GRID[0] * GRID[1], SIGNATURE_BINS) float32, each cell summing to 1; None when the box
    (clipped to the image) is smaller than ``MIN_BOX_SIDE``."""
    h, w = rgb.shape[:2]
    x1, x2 = max(0.0, bbox.x1), min(float(w), bbox.x2)
    y1, y2 = max(0.0, bbox.y1), min(float(h), bbox.y2)
    margin = (x2 - x1) * (1.0 - CENTRAL_WIDTH) / 2
    x1, x2 = int(round(x1 + margin)), int(round(x2 - margin))
    y1, y2 = int(round(y1)), int(round(y2))
    if x2 - x1 < MIN_BOX_SIDE * CENTRAL_WIDTH or y2 - y1 < MIN_BOX_SIDE:
        return None
    crop = cv2.resize(np.ascontiguousarray(rgb[y1:y2, x1:x2]), SIGNATURE_SIZE,
                      interpolation=cv2.INTER_AREA)
    rows, cols = GRID
    hsv = cv2.cvtColor(crop, cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv = hsv.reshape(rows, SIGNATURE_SIZE[1] // rows, cols, SIGNATURE_SIZE[0] // cols, 3)
    hsv = hsv.transpose(0, 2, 1, 3, 4).reshape(rows * cols, -1, 3)  # (cells, pixels, 3)
    hue, sat, val = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    chroma = np.clip((np.minimum(sat - MIN_SATURATION, val - MIN_VALUE) + GREY_RAMP / 2)
                     / GREY_RAMP, 0.0, 1.0)  # 0: grey (no reliable hue), 1: coloured
    cell = np.arange(rows * cols)[:, None] * SIGNATURE_BINS
    h0, h1, hw = _soft_bins(hue, HUE_BINS, 180.0, circular=True)
    s0, s1, sw = _soft_bins(sat, SAT_BINS, 256.0, circular=False)
    v0, v1, vw = _soft_bins(val, GREY_BINS, 256.0, circular=False)
    index, weight = [], []
    for hb, hwt in ((h0, 1 - hw), (h1, hw)):
        for sb, swt in ((s0, 1 - sw), (s1, sw)):
            index.append(cell + hb * SAT_BINS + sb)
            weight.append(chroma * hwt * swt)
    for vb, vwt in ((v0, 1 - vw), (v1, vw)):
        index.append(cell + HUE_BINS * SAT_BINS + vb)
        weight.append((1 - chroma) * vwt)
    hist = np.bincount(np.concatenate(index).ravel(), np.concatenate(weight).ravel(),
                       minlength=rows * cols * SIGNATURE_BINS)
    hist = hist.reshape(rows * cols, SIGNATURE_BINS).astype(np.float32)
    return hist / hist.sum(axis=1, keepdims=True)


def signature_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over the cells of the Bhattacharyya (Hellinger) distance, in [0, 1]."""
    overlap = np.sqrt(a * b).sum(axis=1)
    return float(np.mean(np.sqrt(np.clip(1.0 - overlap, 0.0, 1.0))))


@dataclass(frozen=True)
class IdentityCheck:
    """The verdict on one observation.

    new_identity: the id now shows a different person (flagged once per change).
    distance: signature distance to the id's reference (nan when not computed).
    reason: 'first' (a new id), 'learnt' (its first stable appearance is the reference),
    'same', 'pending' (an appearance being confirmed), 'adopted' (the same colours with a new
    box shape), 'changed' (new_identity), 'small' (box too small), 'untracked' (no track id),
    'restarted' (stamps went backwards or the id was forgotten).
    """

    new_identity: bool
    distance: float
    reason: str


@dataclass
class _Track:
    reference: np.ndarray | None  # None until a first stable appearance is learnt
    width: float
    height: float
    last_stamp_s: float
    learnt: int = 0  # observations averaged into the reference
    pending: list = field(default_factory=list)  # [(stamp_s, signature, width, height)]


class IdentityGuard:
    """Per track id: does it still show the same person? (see the module docstring)

    Example:
        >>> guard = IdentityGuard()
        >>> guard.observe('6', rgb, BBox(15, 15, 400, 512), stamp_s=12.3)  # rgb: (H, W, 3) uint8
        False
    """

    def __init__(self, options: IdentityOptions | None = None) -> None:
        self.options = options or IdentityOptions()
        self.options.validate()
        self._tracks: OrderedDict[str, _Track] = OrderedDict()
        self.evicted = 0   # ids dropped because max_tracks was reached
        self.flagged = 0   # new identities found

    def __len__(self) -> int:
        return len(self._tracks)

    def forget(self, track_id: str) -> None:
        """Drop what is known about ``track_id`` (e.g. when its state is forgotten)."""
        self._tracks.pop(track_id, None)

    def clear(self) -> None:
        self._tracks.clear()

    def observe(self, track_id: str, rgb: np.ndarray, bbox: BBox, stamp_s: float) -> bool:
        """True when ``track_id`` now shows a different person than before (once per change).

        Args:
            track_id: the tracker's id ('' = untracked: never flagged, nothing kept).
            rgb: the frame, (H, W, 3) uint8 RGB.
            bbox: the person's box, xyxy pixels of ``rgb``.
            stamp_s: the frame's stamp in seconds (sensor time).
        """
        return self.check(track_id, rgb, bbox, stamp_s).new_identity

    def check(self, track_id: str, rgb: np.ndarray, bbox: BBox, stamp_s: float
              ) -> IdentityCheck:
        """``observe`` with the distance and the reason (``IdentityCheck``)."""
        if not track_id:
            return IdentityCheck(False, math.nan, 'untracked')
        signature = body_signature(rgb, bbox)
        if signature is None:
            return IdentityCheck(False, math.nan, 'small')
        track = self._tracks.get(track_id)
        reason = 'first'
        if track is not None and not (0.0 <= stamp_s - track.last_stamp_s
                                      <= self.options.forget_after_s):
            self._tracks.pop(track_id)
            track, reason = None, 'restarted'
        if track is None:  # learnt once it has looked the same for confirm_s
            self._remember(track_id, _Track(None, bbox.width, bbox.height, stamp_s, 0, [
                (stamp_s, signature, bbox.width, bbox.height)]))
            return IdentityCheck(False, math.nan, reason)
        self._tracks.move_to_end(track_id)
        track.last_stamp_s = stamp_s
        return self._decide(track, signature, bbox, stamp_s)

    def _remember(self, track_id: str, track: _Track) -> None:
        self._tracks[track_id] = track
        while len(self._tracks) > self.options.max_tracks:
            self._tracks.popitem(last=False)
            self.evicted += 1

    def _same_shape(self, width: float, height: float, bbox: BBox) -> bool:
        limit = self.options.max_size_change
        return (abs(bbox.width / max(width, 1e-9) - 1.0) <= limit
                and abs(bbox.height / max(height, 1e-9) - 1.0) <= limit)

    def _decide(self, track: _Track, signature: np.ndarray, bbox: BBox, stamp_s: float
                ) -> IdentityCheck:
        """Same person (learn), pending, or a confirmed stable appearance: the first one learnt,
        a later one flagged (far colours) or adopted (a new box shape)."""
        o = self.options
        distance = math.nan
        if track.reference is not None:
            distance = signature_distance(track.reference, signature)
            if self._same_shape(track.width, track.height, bbox) and distance <= o.threshold:
                self._learn(track, signature, bbox)
                return IdentityCheck(False, distance, 'same')
        if not self._pending_confirmed(track, signature, bbox, stamp_s):
            return IdentityCheck(False, distance, 'pending')
        before = track.reference
        track.reference = np.mean([p[1] for p in track.pending], axis=0)
        track.width = float(np.mean([p[2] for p in track.pending]))
        track.height = float(np.mean([p[3] for p in track.pending]))
        track.learnt = len(track.pending)
        track.pending.clear()
        if before is None:
            return IdentityCheck(False, math.nan, 'learnt')
        distance = signature_distance(before, track.reference)
        if distance > o.threshold:
            self.flagged += 1
            return IdentityCheck(True, distance, 'changed')
        return IdentityCheck(False, distance, 'adopted')

    def _learn(self, track: _Track, signature: np.ndarray, bbox: BBox) -> None:
        """An agreeing observation: the mean of the first ones, then an exponential average
        (a convex mix of distributions stays one)."""
        track.pending.clear()
        track.learnt += 1
        rate = max(self.options.learning_rate, 1.0 / track.learnt)
        track.reference = (1.0 - rate) * track.reference + rate * signature
        track.width += rate * (bbox.width - track.width)
        track.height += rate * (bbox.height - track.height)

    def _pending_confirmed(self, track: _Track, signature: np.ndarray, bbox: BBox,
                           stamp_s: float) -> bool:
        """Add to the pending run (restarted unless it agrees with the run's first observation
        in shape and colours); True once it held ``confirm_s`` and ``min_observations``."""
        o = self.options
        if track.pending:
            _, first, width, height = track.pending[0]
            if not (self._same_shape(width, height, bbox)
                    and signature_distance(first, signature) <= o.threshold):
                track.pending.clear()
        track.pending.append((stamp_s, signature, bbox.width, bbox.height))
        return (len(track.pending) >= o.min_observations
                and stamp_s - track.pending[0][0] >= o.confirm_s)


__all__ = ['IdentityCheck', 'IdentityGuard', 'IdentityOptions', 'body_signature',
           'signature_distance']
