"""Per-person emotional state over time (ROS-free): smoothing, confidence, labels, events.

Each tracked person (track id) gets a state fed by the stream of their ``EmotionResult``s and
the frames' stamps (sensor time, seconds), never by wall time: a bag replayed at any rate gives
exactly the states and events of the live camera.

**Smoothing** (26 category scores and valence/arousal/dominance, each component alone): time-
aware exponential forgetting with half-life ``h`` seconds. From the track's fresh observations
``x_i`` at stamps ``t_1 < ... < t_n``, the state at time ``t`` is::

    tau_i  = min(t_i - t_{i-1}, h),   tau_1 = h     # seconds an observation stands for
    w_i(t) = 2^(-(t - t_i)/h) * (1 - 2^(-tau_i/h))  # its weight now
    S(t)   = sum_i w_i(t) x_i / sum_i w_i(t)        # smoothed value
    C(t)   = sum_i w_i(t)                           # confidence, in [0, 1]

``w_i(t)`` is the forgetting kernel ``(ln 2 / h) 2^(-(t - s)/h)`` integrated over the interval
``(t_i - tau_i, t_i]`` that the observation covers, so the state is the kernel-weighted mean of
the observed signal over the time it was observed. Irregular intervals: each observation counts
for the time since the previous one, so a 10 fps and a 30 fps stream of the same person give the
same state. Bursts: frames a few milliseconds apart add a few milliseconds of evidence each
(not a frame's worth each). Gaps: an observation after a gap stands for at most one half-life,
and the older evidence keeps the weight its age leaves it. The confidence is the share of the
recent past (weighted by the kernel) covered by observations: 0.5 after a first look, towards 1
while the person is observed, halving every half-life without fresh evidence. Computed
recursively (O(1) per observation): ``W <- W 2^(-dt/h) + w; S <- S + (w / W)(x - S)``.

Why probabilities, not log-odds: the mean of probabilities stays on the scale the per-category
thresholds were tuned on (``evaluate --tune-thresholds-on``), and one frame can move it by at
most its weight; averaging log-odds multiplies likelihoods as if frames were independent
evidence, while consecutive frames of one face are nearly the same observation (log-odds fusion
would grow overconfident), a single saturated frame (p = 0.9999, a softmax on a blurred face)
would outweigh many moderate ones, and the 0/1 scores of generated answers have infinite
log-odds. VAD (1-10 scale) is averaged the same way, linearly.

**Which results count**: only fresh evidence (``Status.OK``) updates the state. ``CACHED`` is
the same observation again and is not counted twice; ``SKIPPED`` and ``ERROR`` carry none. In
all three cases the person was in the frame (they are not forgotten) and the state ages: its
confidence falls.

**Labels** with hysteresis on the backend's per-category thresholds ``theta_c``
(``backend.thresholds``): a label switches on when ``S_c >= theta_c + margin``, off when
``S_c < theta_c - margin``, and never within ``min_hold_s`` of the category's previous switch.
Each switch is one event (``onset`` / ``offset``, with the smoothed score), exactly once.

**Ending a state**: a track not in any frame for more than ``forget_after_s`` (stamp time) is
forgotten (checked at each frame before its updates, and by ``tick``), the least recently seen
is evicted beyond ``max_tracks``, a ``new_identity`` observation (the tracker kept the id but it
is another person: given, or found by the identity check, ``StateOptions.identity_check``, on the
frame's image and boxes) ends the old state under that id, ``reset`` ends all (stamps going
backwards, a restarted detector). Ending gives an ``offset`` per active label, then one
``left`` event, both with the reason. Untracked persons (empty track id) and ids that occur twice
in one frame get a state of that observation alone (no history, no events).

Thread safety: ``EmotionStates`` is guarded by a lock (a node answers frames from two threads).
"""
from __future__ import annotations

import dataclasses
import enum
import math
import threading
from collections import Counter, OrderedDict
from typing import Any, Sequence

import numpy as np

from .categories import EMOTIC_CATEGORIES, NUM_CATEGORIES, VAD_NAMES, thresholds_array
from .identity import IdentityGuard, IdentityOptions
from .types import BBox, EmotionResult, Status

#: components of a state vector: the 26 scores, then valence, arousal, dominance
_DIM = NUM_CATEGORIES + len(VAD_NAMES)
#: why a state ended (``StateEvent.reason`` of its ``left`` event and of the offsets before it)
END_REASONS = ('forgotten', 'evicted', 'new_identity', 'reset')


class EventKind(enum.IntEnum):
    """Kind of a ``StateEvent``; values equal ``EmotionEvent.KIND_*``."""

    ONSET = 0
    OFFSET = 1
    LEFT = 2


def _num(x: float) -> float | None:
    """JSON number: NaN/inf -> None, else rounded to 6 decimals."""
    return round(float(x), 6) if math.isfinite(x) else None


@dataclasses.dataclass(frozen=True)
class StateEvent:
    """A change of a person's state.

    Attributes:
        track_id: the person's track id.
        category: the EMOTIC category switched on or off; '' for ``LEFT``.
        kind: ``ONSET``, ``OFFSET`` or ``LEFT``.
        stamp_s: when it was decided (stamp of the frame, seconds of sensor time).
        score: the category's smoothed score then, in [0, 1]; NaN for ``LEFT``.
        reason: '' for a hysteresis switch; one of ``END_REASONS`` when the state ended.
    """

    track_id: str
    category: str
    kind: EventKind
    stamp_s: float
    score: float = math.nan
    reason: str = ''

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (NaN becomes None)."""
        return {'stamp': round(self.stamp_s, 9), 'track_id': self.track_id,
                'category': self.category, 'kind': self.kind.name.lower(),
                'score': _num(self.score), 'reason': self.reason}


@dataclasses.dataclass
class PersonState:
    """A person's state at one moment (a snapshot; changing the state does not change it).

    Attributes:
        track_id: '' for an untracked person (a state of one observation, no history).
        stamp_s: the moment described (seconds of sensor time).
        scores: shape (26,) float32 smoothed scores in [0, 1], ``EMOTIC_CATEGORIES`` order;
            NaN before the first fresh observation.
        vad: smoothed (valence, arousal, dominance) on the 1-10 scale; NaN where none observed.
        labels: active labels (hysteresis), highest smoothed score first.
        label_since: active label -> stamp it switched on (seconds).
        confidence: how much recent evidence the state holds, in [0, 1] (module docstring).
        observations: fresh observations (``Status.OK`` results) that entered the state.
        first_seen_s: stamp of the first frame of this state.
        last_observed_s: stamp of the last fresh observation; NaN when none yet.
    """

    track_id: str
    stamp_s: float
    scores: np.ndarray
    vad: tuple[float, float, float]
    labels: list[str]
    label_since: dict[str, float]
    confidence: float
    observations: int
    first_seen_s: float
    last_observed_s: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (NaN becomes None); scores and vad keyed by name as in
        ``EmotionResult.to_dict``."""
        return {
            'stamp': round(self.stamp_s, 9), 'track_id': self.track_id,
            'scores': {n: _num(s) for n, s in zip(EMOTIC_CATEGORIES, self.scores.tolist())},
            'labels': list(self.labels),
            'label_since': {k: round(v, 9) for k, v in self.label_since.items()},
            'vad': {n: _num(v) for n, v in zip(VAD_NAMES, self.vad)},
            'confidence': round(self.confidence, 6), 'observations': self.observations,
            'first_seen': round(self.first_seen_s, 9), 'last_observed': _num(self.last_observed_s),
        }


@dataclasses.dataclass
class StateOptions:
    """Settings of the per-person state (the emotion node's ``state.*`` parameters).

    Attributes:
        enabled: False = no state (nodes publish no states or events, tools write none).
        half_life_s: forgetting half-life in seconds of stamp time; < 0 = the backend's
            default (``EmotionBackend.state_half_life_s``), see :meth:`resolved`.
        margin: hysteresis around each category's threshold (score units).
        min_hold_s: a label stays on (or off) at least this long after a switch.
        forget_after_s: a track in no frame for longer than this is forgotten (``left``).
        max_tracks: most states kept; beyond, the least recently seen is evicted.
        identity_check: check, per frame given with its image and boxes, that each track id
            still shows the same person (``core.identity.IdentityGuard``: the colours of the
            body); when another person took the id, that id's state restarts (``new_identity``)
            instead of passing the previous person's emotions on.
        identity_threshold: the check's colour-signature distance in (0, 1) above which the
            id shows someone else (``IdentityOptions.threshold``).
    """

    enabled: bool = True
    half_life_s: float = -1.0
    margin: float = 0.05
    min_hold_s: float = 1.0
    forget_after_s: float = 3.0
    max_tracks: int = 256
    identity_check: bool = True
    identity_threshold: float = 0.25

    def validate(self) -> None:
        """Raises ValueError naming the bad setting."""
        if not (math.isfinite(self.half_life_s) and self.half_life_s != 0):
            raise ValueError(f'state half_life_s must be > 0 (or < 0: the backend default), '
                             f'got {self.half_life_s}')
        if not 0.0 <= self.margin <= 0.5:
            raise ValueError(f'state margin must be in [0, 0.5], got {self.margin}')
        if not (0.0 <= self.min_hold_s < math.inf and 0.0 < self.forget_after_s < math.inf):
            raise ValueError(f'state min_hold_s must be >= 0 and forget_after_s > 0, got '
                             f'{self.min_hold_s} and {self.forget_after_s}')
        if self.max_tracks < 1:
            raise ValueError(f'state max_tracks must be >= 1, got {self.max_tracks}')
        if not 0.0 < self.identity_threshold < 1.0:
            raise ValueError(f'state identity_threshold must be in (0, 1), got '
                             f'{self.identity_threshold}')

    def resolved(self, default_half_life_s: float) -> 'StateOptions':
        """A copy with ``half_life_s < 0`` replaced by ``default_half_life_s``."""
        if self.half_life_s >= 0:
            return dataclasses.replace(self)
        return dataclasses.replace(self, half_life_s=float(default_half_life_s))


@dataclasses.dataclass
class FrameStates:
    """What one frame did to the states.

    Attributes:
        states: one per person of the frame, in the frame's order (the results' order).
        events: in the order they happened: forgetting first, then per person in order.
    """

    states: list[PersonState]
    events: list[StateEvent]


class _Track:
    """The mutable state of one track (see the module docstring for the quantities)."""

    __slots__ = ('track_id', 'mean', 'weight', 'weight_stamp', 'on', 'changed', 'since',
                 'first_seen', 'last_seen', 'last_fresh', 'observations')

    def __init__(self, track_id: str, stamp_s: float) -> None:
        self.track_id = track_id
        self.mean = np.full(_DIM, np.nan)       # S per component
        self.weight = np.zeros(_DIM)            # sum of w_i per component, at weight_stamp
        self.weight_stamp = stamp_s
        self.on = np.zeros(NUM_CATEGORIES, dtype=bool)
        self.changed = np.full(NUM_CATEGORIES, -np.inf)  # stamp of each label's last switch
        self.since = np.full(NUM_CATEGORIES, np.nan)     # stamp an active label switched on
        self.first_seen = self.last_seen = stamp_s
        self.last_fresh = math.nan
        self.observations = 0

    def observe(self, values: np.ndarray, stamp_s: float, half_life_s: float) -> None:
        """Add one fresh observation ``values`` (shape (29,); NaN components are left out)."""
        tau = half_life_s if math.isnan(self.last_fresh) else min(stamp_s - self.last_fresh,
                                                                  half_life_s)
        if tau <= 0.0:
            return  # the same instant again: no time covered, no evidence
        w = 1.0 - 2.0 ** (-tau / half_life_s)
        self.weight *= 2.0 ** (-(stamp_s - self.weight_stamp) / half_life_s)
        self.weight_stamp = stamp_s
        seen = np.isfinite(values)
        self.weight[seen] += w
        first = seen & ~np.isfinite(self.mean)
        self.mean[first] = values[first]
        again = seen & ~first
        self.mean[again] += (w / self.weight[again]) * (values[again] - self.mean[again])
        self.last_fresh = stamp_s
        self.observations += 1

    def confidence(self, stamp_s: float, half_life_s: float) -> float:
        decay = 2.0 ** (-max(0.0, stamp_s - self.weight_stamp) / half_life_s)
        return float(min(1.0, self.weight[0] * decay))

    def switch_labels(self, stamp_s: float, on_level: np.ndarray, off_level: np.ndarray,
                      min_hold_s: float) -> list[tuple[int, EventKind]]:
        """Apply the hysteresis at ``stamp_s``; returns the switches (category index, kind)."""
        if self.observations == 0:
            return []
        scores = self.mean[:NUM_CATEGORIES]
        free = stamp_s - self.changed >= min_hold_s
        rise = free & ~self.on & (scores >= on_level)
        fall = free & self.on & (scores < off_level)
        self.on[rise], self.since[rise] = True, stamp_s
        self.on[fall], self.since[fall] = False, np.nan
        self.changed[rise | fall] = stamp_s
        out = [(int(i), EventKind.ONSET) for i in np.flatnonzero(rise)]
        out += [(int(i), EventKind.OFFSET) for i in np.flatnonzero(fall)]
        return sorted(out)

    def snapshot(self, stamp_s: float, half_life_s: float) -> PersonState:
        scores = self.mean[:NUM_CATEGORIES].astype(np.float32)
        active = np.flatnonzero(self.on)
        active = active[np.argsort(-scores[active], kind='stable')]
        labels = [EMOTIC_CATEGORIES[i] for i in active]
        vad = tuple(float(v) for v in self.mean[NUM_CATEGORIES:])
        return PersonState(
            track_id=self.track_id, stamp_s=stamp_s, scores=scores, vad=vad,  # type: ignore
            labels=labels, label_since={EMOTIC_CATEGORIES[i]: float(self.since[i])
                                        for i in active},
            confidence=self.confidence(stamp_s, half_life_s), observations=self.observations,
            first_seen_s=self.first_seen, last_observed_s=self.last_fresh)


def observation_vector(result: EmotionResult) -> np.ndarray:
    """The (29,) float64 vector of a result: 26 scores then valence, arousal, dominance."""
    out = np.empty(_DIM)
    out[:NUM_CATEGORIES] = np.asarray(result.scores, dtype=np.float64).reshape(-1)
    out[NUM_CATEGORIES:] = result.vad
    return out


class EmotionStates:
    """The states of all tracked persons: ``update_frame(track_ids, results, stamp_s)``.

    See the module docstring for the rules. ``thresholds``: the backend's per-category
    thresholds (shape (26,), ``categories.thresholds_array``); default 0.5 for all.
    """

    def __init__(self, options: StateOptions | None = None,
                 thresholds: np.ndarray | None = None) -> None:
        options = options or StateOptions()
        if options.half_life_s < 0:
            raise ValueError('half_life_s < 0 (the backend default) must be resolved first: '
                             'use EmotionStates.for_backend or StateOptions.resolved')
        options.validate()
        self.options = options
        thr = thresholds_array(None if thresholds is None else np.asarray(thresholds))
        self._on_level = thr.astype(np.float64) + options.margin
        self._off_level = thr.astype(np.float64) - options.margin
        self._tracks: OrderedDict[str, _Track] = OrderedDict()  # least recently seen first
        self._lock = threading.Lock()
        self._clock = -math.inf
        self._counts: Counter[str] = Counter()
        self._identity = (IdentityGuard(IdentityOptions(
            threshold=options.identity_threshold, max_tracks=options.max_tracks,
            forget_after_s=options.forget_after_s)) if options.identity_check else None)

    @classmethod
    def for_backend(cls, options: StateOptions, backend: Any) -> 'EmotionStates':
        """States for ``backend``'s results: its thresholds and, when ``options.half_life_s``
        < 0, its default half-life (``state_half_life_s``)."""
        default = float(getattr(backend, 'state_half_life_s', 1.0))
        return cls(options.resolved(default), getattr(backend, 'thresholds', None))

    def __len__(self) -> int:
        with self._lock:
            return len(self._tracks)

    def track_ids(self) -> list[str]:
        """The track ids with a state now, least recently seen first."""
        with self._lock:
            return list(self._tracks)

    def counters(self) -> dict[str, int]:
        """Totals since creation: created, forgotten, evicted, new_identity, reset,
        out_of_order, duplicate_ids, onset, offset, left; and tracks (states held now)."""
        with self._lock:
            return {**self._counts, 'tracks': len(self._tracks)}

    def state(self, track_id: str, stamp_s: float | None = None) -> PersonState | None:
        """The state of ``track_id`` at ``stamp_s`` (default: the newest stamp seen)."""
        with self._lock:
            track = self._tracks.get(track_id)
            if track is None:
                return None
            at = self._clock if stamp_s is None else stamp_s
            return track.snapshot(at, self.options.half_life_s)

    def update_frame(self, track_ids: Sequence[str], results: Sequence[EmotionResult],
                     stamp_s: float, new_identity: Sequence[bool] | None = None,
                     image: np.ndarray | None = None, boxes: Sequence[BBox] | None = None
                     ) -> FrameStates:
        """One frame: forget the tracks unseen too long, then update each person.

        Args:
            track_ids: one per person ('' = untracked).
            results: the persons' results, same order.
            stamp_s: the frame's stamp (seconds of sensor time).
            new_identity: per person, True when the tracker kept the id but it is another
                person; None = the identity check decides (``identity_check`` with ``image``
                and ``boxes``), else all False.
            image: the frame, (H, W, 3) uint8 RGB, for the identity check (None: not checked).
            boxes: the persons' boxes (xyxy pixels of ``image``), same order.
        """
        if len(results) != len(track_ids) or (boxes is not None
                                              and len(boxes) != len(track_ids)):
            raise ValueError(f'{len(results)} results and {"no" if boxes is None else len(boxes)}'
                             f' boxes for {len(track_ids)} track ids')
        counts = Counter(t for t in track_ids if t)
        dups = {t for t, n in counts.items() if n > 1}
        with self._lock:
            events = self._forget(stamp_s)
            fresh = (list(new_identity) if new_identity is not None
                     else self._identity_changes(track_ids, dups, image, boxes, stamp_s))
            self._counts['duplicate_ids'] += len(dups)
            states = []
            for tid, res, new in zip(track_ids, results, fresh):
                state, evs = self._update(tid if tid not in dups else '', res, stamp_s, new)
                states.append(dataclasses.replace(state, track_id=tid))
                events += evs
        return FrameStates(states, events)

    def update(self, track_id: str, result: EmotionResult, stamp_s: float, *,
               new_identity: bool = False) -> tuple[PersonState, list[StateEvent]]:
        """One person's result at ``stamp_s`` (no forgetting of other tracks; see
        ``update_frame``). Returns the person's state now and the events."""
        with self._lock:
            return self._update(track_id, result, stamp_s, new_identity)

    def _identity_changes(self, track_ids: Sequence[str], skip: set[str],
                          image: np.ndarray | None, boxes: Sequence[BBox] | None,
                          stamp_s: float) -> list[bool]:
        """Per person: does the id now show another person? (the identity check; all False
        without it, an image or boxes; ids in ``skip`` are not checked). Under the lock."""
        if self._identity is None or image is None or boxes is None:
            return [False] * len(track_ids)
        return [self._identity.observe(tid if tid not in skip else '', image, box, stamp_s)
                for tid, box in zip(track_ids, boxes)]

    def tick(self, stamp_s: float) -> list[StateEvent]:
        """Forget the tracks in no frame for more than ``forget_after_s`` before ``stamp_s``
        (for a node whose input stopped: see README); returns their events."""
        with self._lock:
            return self._forget(stamp_s)

    def reset(self) -> list[StateEvent]:
        """End every state (at the newest stamp seen), e.g. when stamps go backwards."""
        with self._lock:
            events: list[StateEvent] = []
            at = self._clock if math.isfinite(self._clock) else 0.0
            for track in list(self._tracks.values()):
                events += self._end(track, at, 'reset')
            self._tracks.clear()
            if self._identity is not None:
                self._identity.clear()
            self._clock = -math.inf
            return events

    # -- under the lock ------------------------------------------------------------------------
    def _update(self, track_id: str, result: EmotionResult, stamp_s: float, new_identity: bool
                ) -> tuple[PersonState, list[StateEvent]]:
        h = self.options.half_life_s
        if not track_id:  # a state of this observation alone
            track = _Track('', stamp_s)
            if result.status == Status.OK:
                track.observe(observation_vector(result), stamp_s, h)
            self._switch(track, stamp_s)
            return track.snapshot(stamp_s, h), []
        self._clock = max(self._clock, stamp_s)
        events: list[StateEvent] = []
        track = self._tracks.get(track_id)
        if track is not None and new_identity:
            self._counts['new_identity'] += 1
            events += self._end(self._tracks.pop(track_id), stamp_s, 'new_identity')
            track = None
        if track is None:
            track = self._create(track_id, stamp_s, events)
        elif stamp_s < track.last_seen:
            self._counts['out_of_order'] += 1  # an older frame answered late: no change
            return track.snapshot(stamp_s, h), events
        track.last_seen = stamp_s
        self._tracks.move_to_end(track_id)
        if result.status == Status.OK:
            track.observe(observation_vector(result), stamp_s, h)
        events += self._switch(track, stamp_s)
        return track.snapshot(stamp_s, h), events

    def _create(self, track_id: str, stamp_s: float, events: list[StateEvent]) -> _Track:
        track = self._tracks[track_id] = _Track(track_id, stamp_s)
        self._counts['created'] += 1
        while len(self._tracks) > self.options.max_tracks:
            _, oldest = self._tracks.popitem(last=False)
            self._counts['evicted'] += 1
            events += self._end(oldest, stamp_s, 'evicted')
        return track

    def _switch(self, track: _Track, stamp_s: float) -> list[StateEvent]:
        """The label switches of ``track`` at ``stamp_s`` as events (none for a state of one
        observation: its labels are set, nothing happens over time)."""
        out = [StateEvent(track.track_id, EMOTIC_CATEGORIES[i], kind, stamp_s,
                          float(track.mean[i]))
               for i, kind in track.switch_labels(stamp_s, self._on_level, self._off_level,
                                                  self.options.min_hold_s)]
        if not track.track_id:
            return []
        for event in out:
            self._counts[event.kind.name.lower()] += 1
        return out

    def _end(self, track: _Track, stamp_s: float, reason: str) -> list[StateEvent]:
        """Offsets of the active labels, then ``left``."""
        out = [StateEvent(track.track_id, EMOTIC_CATEGORIES[i], EventKind.OFFSET, stamp_s,
                          float(track.mean[i]), reason) for i in np.flatnonzero(track.on)]
        out.append(StateEvent(track.track_id, '', EventKind.LEFT, stamp_s, math.nan, reason))
        self._counts['offset'] += len(out) - 1
        self._counts['left'] += 1
        return out

    def _forget(self, stamp_s: float) -> list[StateEvent]:
        self._clock = max(self._clock, stamp_s)
        limit = stamp_s - self.options.forget_after_s
        events: list[StateEvent] = []
        for track in [t for t in self._tracks.values() if t.last_seen < limit]:
            del self._tracks[track.track_id]
            if self._identity is not None:
                self._identity.forget(track.track_id)
            self._counts['forgotten'] += 1
            events += self._end(track, stamp_s, 'forgotten')
        return events
