"""Scoring track ids against a sequence's ground truth: did each person keep their id through an
occlusion, did a different person take over someone's id (``testing.sequences`` events), and
did the identity check (``core.identity.IdentityGuard``) flag the swaps and nothing else.

Used by ``bench/bench_tracking.py`` and ``bench/bench_temporal.py``. ROS-free.

Example:
    >>> ids = run_detectors(seq, {'bytetrack': DetectorOptions(...)})['bytetrack']
    >>> outcomes = event_outcomes(seq, ids)       # one per 'hidden' / 'swap' event
    >>> sum(o.same_id for o in outcomes), len(outcomes)
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence as SequenceType

from ..core.types import PersonDetection
from .sample_people import Person, match_people
from .sequences import Event, Frame, FrameTruth, Sequence

#: Track ids are read over this many seconds of clear view before and after an event.
WINDOW_S = 1.0


@dataclass(frozen=True)
class EventOutcome:
    """The track ids of an event's slot before and after it ('' when none was seen).

    ``same_id``: the id after is the id before: for a 'hidden' event the person kept their id
    (good); for a 'swap' event a different person inherited it (bad).
    """

    event: Event
    id_before: str
    id_after: str

    @property
    def same_id(self) -> bool:
        return bool(self.id_before) and self.id_after == self.id_before


def slot_track_ids(truth: FrameTruth, detections: SequenceType[PersonDetection]
                   ) -> dict[int, str]:
    """Which track id each person slot has in one frame: detections matched to the true boxes
    (IoU >= ``sample_people.MATCH_IOU``, greedy by confidence, one detection per person)."""
    people = [Person(p.who, tuple(p.box.xyxy()), None) for p in truth.people]
    who = match_people(people, [d.bbox for d in detections], [d.confidence for d in detections])
    return {truth.people[w].slot: detections[i].track_id
            for i, w in enumerate(who) if w is not None}


def _clear_frames(seq: Sequence, slot: int, frames: range) -> list[int]:
    """The frames of ``frames`` in which the person of ``slot`` is entirely visible."""
    return [i for i in frames
            if (p := seq.truth(i).slot(slot)) is not None and p.visible_fraction >= 1.0]


def _mode_id(ids: SequenceType[Mapping[int, str]], slot: int, frames: SequenceType[int]) -> str:
    """The most frequent (non-empty) track id of ``slot`` over ``frames``; '' if none."""
    seen = Counter(ids[i][slot] for i in frames if ids[i].get(slot))
    return seen.most_common(1)[0][0] if seen else ''


def event_outcomes(seq: Sequence, ids: SequenceType[Mapping[int, str]],
                   kinds: SequenceType[str] = ('hidden', 'swap'), window_s: float = WINDOW_S
                   ) -> list[EventOutcome]:
    """Per event of ``kinds``: the slot's id over its last ``window_s`` of clear view before
    ``t0`` and over its first ``window_s`` of clear view after ``t1`` (the person entirely
    visible; a track confirmed late still counts, a track never confirmed gives '').

    Args:
        ids: per frame of ``seq``, slot -> track id (``slot_track_ids``).
    """
    out = []
    n = max(1, round(window_s * seq.fps))
    for e in seq.events:
        if e.kind not in kinds:
            continue
        before = _clear_frames(seq, e.slot, range(seq.index_at(e.t0)))[-n:]
        after = _clear_frames(seq, e.slot, range(seq.index_at(e.t1), len(seq)))[:n]
        out.append(EventOutcome(e, _mode_id(ids, e.slot, before), _mode_id(ids, e.slot, after)))
    return out


def owners(truth: FrameTruth, slot_ids: Mapping[int, str]) -> dict[str, str]:
    """Track id -> the person (``PERSONS`` key) it is on, in one frame (from ``slot_track_ids``)."""
    return {tid: truth.slot(slot).who for slot, tid in slot_ids.items() if tid}


def sequence_owners(seq: Sequence, ids: SequenceType[Mapping[int, str]]
                    ) -> list[tuple[float, dict[str, str]]]:
    """Per frame of ``seq``: (stamp_s, ``owners``), from per-frame slot -> track id."""
    return [(seq.stamp(i), owners(seq.truth(i), per_slot)) for i, per_slot in enumerate(ids)]


def run_detectors(seq: Sequence, detectors: Mapping[str, Callable],
                  on_frame: Callable[[Frame, dict], None] | None = None
                  ) -> dict[str, list[dict[int, str]]]:
    """Run each ``detectors[name]`` (rgb -> ``DetectionResult``, e.g. ``PersonDetector.detect``)
    over every frame of ``seq``, each frame rendered once for all of them; ``on_frame(frame,
    {name: DetectionResult})`` sees every frame and its results.

    Returns:
        name -> per frame, slot -> track id.
    """
    out: dict[str, list[dict[int, str]]] = {name: [] for name in detectors}
    for frame in seq.frames():
        results = {name: detect(frame.rgb) for name, detect in detectors.items()}
        for name, result in results.items():
            out[name].append(slot_track_ids(frame.truth, result.detections))
        if on_frame is not None:
            on_frame(frame, results)
    return out


@dataclass
class GuardRun:
    """Feeds an ``IdentityGuard`` every tracked detection of one detector (as ``on_frame`` of
    ``run_detectors``), and keeps its flags and who (ground truth) each track id showed.

    Attributes:
        flags: (stamp_s, track_id) of each new identity flagged.
        flag_distances: the colour distance of each flag (``IdentityCheck.distance``).
        owners: per frame, (stamp_s, {track_id: the person it is on}).
    """

    guard: object  # core.identity.IdentityGuard
    detector: str
    observations: int = 0
    flags: list = field(default_factory=list)
    flag_distances: list = field(default_factory=list)
    owners: list = field(default_factory=list)

    def __call__(self, frame: Frame, results: Mapping) -> None:
        detections = results[self.detector].detections
        self.owners.append((frame.stamp_s,
                            owners(frame.truth, slot_track_ids(frame.truth, detections))))
        for det in detections:
            check = self.guard.check(det.track_id, frame.rgb, det.bbox, frame.stamp_s)
            if check.reason not in ('untracked', 'small'):
                self.observations += 1
            if check.new_identity:
                self.flags.append((frame.stamp_s, det.track_id))
                self.flag_distances.append(check.distance)


def handovers(per_frame: SequenceType[tuple[float, Mapping[str, str]]], min_s: float = 0.3
              ) -> list[tuple[float, str, str, str]]:
    """When a track id passed from one person to another: (stamp_s, track_id, before, after),
    from per-frame (stamp_s, ``owners``) (``sequence_owners``, ``GuardRun.owners``). Only
    stretches of at least ``min_s`` on a person count (a box mixed up for a frame or two is no
    handover). A swap the tracker follows with the same id is one, and so is an id taken over
    by another person while its owner was hidden."""
    stretches: dict[str, list[list]] = {}  # track id -> [[who, first stamp, last stamp]]
    for stamp, on in per_frame:
        for tid, who in on.items():
            runs = stretches.setdefault(tid, [])
            if runs and runs[-1][0] == who:
                runs[-1][2] = stamp
            else:
                runs.append([who, stamp, stamp])
    out = []
    for tid, runs in stretches.items():
        kept = [r for r in runs if r[2] - r[1] >= min_s - 1e-9]
        out += [(b[1], tid, a[0], b[0]) for a, b in zip(kept, kept[1:]) if a[0] != b[0]]
    return sorted(out)


@dataclass(frozen=True)
class GuardScore:
    """The check's verdicts on a sequence: observations checked, flags, flags that match no
    handover (false: the same person), handovers (``handovers``) and those flagged from
    0.5 s before to ``within_s`` after them (caught); the colour distances of the true flags and
    of the false ones (to place ``IdentityOptions.threshold``)."""

    observations: int
    flags: int
    false_flags: int
    handovers: int
    caught: int
    true_distances: tuple = ()
    false_distances: tuple = ()


def score_guard(run: GuardRun, within_s: float, min_s: float = 0.3) -> GuardScore:
    """Match ``run``'s flags to the handovers of its track ids (``handovers``)."""
    matched, caught = set(), 0
    found = handovers(run.owners, min_s)
    for stamp, tid, _before, _after in found:
        hits = [f for f in run.flags if f[1] == tid and stamp - 0.5 <= f[0] <= stamp + within_s]
        matched.update(hits)
        caught += bool(hits)
    true = [d for f, d in zip(run.flags, run.flag_distances) if f in matched]
    false = [d for f, d in zip(run.flags, run.flag_distances) if f not in matched]
    return GuardScore(run.observations, len(run.flags), len(false), len(found), caught,
                      tuple(true), tuple(false))


__all__ = ['EventOutcome', 'GuardRun', 'GuardScore', 'WINDOW_S', 'event_outcomes', 'handovers',
           'owners', 'run_detectors', 'score_guard', 'sequence_owners', 'slot_track_ids']
