"""The per-person state and the identity check together, on frames rendered from the real photos
(testing.sequences: camera shake, zoom, brightness, sensor noise, JPEG): a different person who
takes a track id (the tracker keeps it across the swap, as measured by bench_tracking) starts a
fresh state and inherits no label; a person hidden behind a passing occluder and back keeps
theirs; with ``identity_check`` off the newcomer inherits (what the check is for).

The results fed are stand-ins keyed by the ground truth (the astronaut smiles: Happiness 0.9;
everyone else 0.1), so the test is about the state's bookkeeping on real pixels, not about the
emotion model; ``process`` with the real detector and model is in test_process.py."""
from __future__ import annotations

import numpy as np

from emotion_perception.core.categories import CATEGORY_INDEX, NUM_CATEGORIES
from emotion_perception.core.state import EmotionStates, EventKind, StateOptions
from emotion_perception.core.types import EmotionResult
from emotion_perception.testing import sequences as S

SMILER = 'eileen_collins'


def _result(who: str) -> EmotionResult:
    scores = np.full(NUM_CATEGORIES, 0.1, np.float32)
    scores[CATEGORY_INDEX['Happiness']] = 0.9 if who == SMILER else 0.1
    return EmotionResult(scores=scores, vad=(5.0, 5.0, 5.0))


def _run(seq: S.Sequence, options: StateOptions):
    """Every frame through ``EmotionStates.update_frame`` with its image, the boxes a detector
    would give (the visible part; none while mostly hidden) and one track id per slot (a
    tracker that keeps ids through occlusions and swaps). Returns per frame (stamp, truth,
    states by track id) and the events."""
    states = EmotionStates(options)
    frames, events = [], []
    for frame in seq.frames():
        people = [(p, seq.visible_box(p, frame.stamp_s)) for p in frame.truth.people]
        people = [(p, box) for p, box in people if box is not None]
        out = states.update_frame([f'id{p.slot}' for p, _ in people],
                                  [_result(p.who) for p, _ in people], frame.stamp_s,
                                  image=frame.rgb, boxes=[box for _, box in people])
        frames.append((frame.stamp_s, frame.truth, {s.track_id: s for s in out.states}))
        events += out.events
    return frames, events, states


def test_a_different_person_in_the_same_place_gets_a_fresh_state():
    """make demo's case: the astronaut (smiling) replaced by Grace Hopper in one cut."""
    seq = S.swap_sequence(fps=10, pairs=[(SMILER, 'grace_hopper')], mode='cut', lead_s=3.0,
                          trail_s=3.0, seed=2)
    t_swap = seq.events[0].t0
    options = StateOptions(half_life_s=0.5)
    frames, events, states = _run(seq, options)
    ends = [e for e in events if e.kind == EventKind.LEFT]
    assert [(e.track_id, e.reason) for e in ends] == [('id0', 'new_identity')]
    t_new = ends[0].stamp_s
    assert t_swap <= t_new <= t_swap + 0.5  # confirm_s (0.3 s) + a frame
    offsets = [e for e in events if e.kind == EventKind.OFFSET]
    assert [(e.category, e.stamp_s, e.reason) for e in offsets] == [
        ('Happiness', t_new, 'new_identity')]  # the astronaut's happiness ended with her
    after = [st['id0'] for t, truth, st in frames if t >= t_new]
    assert after and all(s.first_seen_s >= t_swap for s in after)  # no history of hers
    assert all('Happiness' not in s.labels for s in after)
    onsets = [e for e in events if e.kind == EventKind.ONSET and e.stamp_s >= t_swap]
    assert onsets == []  # no label inherited, none switched on for Grace Hopper
    assert states.counters()['new_identity'] == 1


def test_without_the_check_the_newcomer_inherits_the_state():
    seq = S.swap_sequence(fps=10, pairs=[(SMILER, 'grace_hopper')], mode='cut', lead_s=3.0,
                          trail_s=3.0, seed=2)
    t_swap = seq.events[0].t0
    frames, events, _ = _run(seq, StateOptions(half_life_s=0.5, identity_check=False))
    assert not [e for e in events if e.kind == EventKind.LEFT]
    first_after = next(st['id0'] for t, truth, st in frames if t >= t_swap)
    assert first_after.first_seen_s == 0.0 and 'Happiness' in first_after.labels


def test_a_person_hidden_and_back_keeps_their_state():
    """The occluder passes in front of both people (1 s hidden, stepping aside meanwhile),
    twice: no new identity, the state keeps its first stamp and the smile's label."""
    seq = S.occlusion_sequence(fps=10, hide_s=1.0, shift=0.6, seed=3, passes=2,
                               people=(SMILER, 'grace_hopper'))
    frames, events, states = _run(seq, StateOptions(half_life_s=0.5, forget_after_s=3.0))
    assert [e for e in events if e.kind == EventKind.LEFT] == []
    assert states.counters().get('new_identity', 0) == 0
    last = frames[-1][2]
    assert last['id0'].first_seen_s == 0.0 and last['id1'].first_seen_s == 0.0
    assert last['id0'].labels == ['Happiness'] and last['id1'].labels == []
    onsets = [(e.track_id, e.category) for e in events if e.kind == EventKind.ONSET]
    assert onsets == [('id0', 'Happiness')]  # once, at the start: not again after a hide
