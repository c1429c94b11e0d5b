"""The per-person state over time (core.state, ROS-free): smoothing against a straightforward
reference of the documented formula, confidence, hysteresis and hold, events exactly once,
forgetting / eviction / new identities, replay at any rate, bounded memory."""
from __future__ import annotations

import gc
import math
import time
import tracemalloc

import numpy as np
import pytest

from emotion_perception.core.categories import CATEGORY_INDEX, EMOTIC_CATEGORIES
from emotion_perception.core.state import (EmotionStates, EventKind, StateEvent, StateOptions,
                                           observation_vector)
from emotion_perception.core.types import EmotionResult, Status
from emotion_perception.testing.fake_backends import FakeBackend

HAPPY, SAD = CATEGORY_INDEX['Happiness'], CATEGORY_INDEX['Sadness']


def result(scores=None, vad=(5.0, 5.0, 5.0), status=Status.OK, **set_scores) -> EmotionResult:
    """A result with ``scores`` (26) or 0.1 everywhere except the named categories."""
    if scores is None:
        scores = np.full(26, 0.1, np.float32)
        for name, value in set_scores.items():
            scores[CATEGORY_INDEX[name]] = value
    if status in (Status.SKIPPED, Status.ERROR):
        return EmotionResult.failed(status, 'no face found in person box')
    return EmotionResult(scores=np.asarray(scores, np.float32), vad=vad, status=status)


def reference(fresh: list[tuple[float, np.ndarray]], t: float, h: float
              ) -> tuple[np.ndarray, float]:
    """The documented formula written out: (S(t) per component, C(t)) from the fresh
    observations (stamp, (29,) values) up to ``t``."""
    num, den, prev = np.zeros(29), np.zeros(29), None
    for ti, xi in fresh:
        tau = h if prev is None else min(ti - prev, h)
        prev = ti
        w = 2.0 ** (-(t - ti) / h) * (1.0 - 2.0 ** (-tau / h))
        seen = ~np.isnan(xi)
        num[seen] += w * xi[seen]
        den[seen] += w
    with np.errstate(invalid='ignore', divide='ignore'):
        return np.where(den > 0, num / den, np.nan), float(den[0])


def test_smoothing_equals_the_reference_with_irregular_stamps_gaps_bursts_and_statuses():
    rng = np.random.default_rng(3)
    h = 0.5
    states = EmotionStates(StateOptions(half_life_s=h, forget_after_s=1000.0))
    t, fresh, last, first_t = 100.0, [], None, None
    kinds = {s: 0 for s in Status}
    for step in range(400):
        # bursts (1 ms), 30 / 10 / 4 fps, gaps of 2 and 6 s
        t += float(rng.choice([0.001, 0.033, 0.1, 0.25, 2.0, 6.0],
                              p=[0.15, 0.3, 0.3, 0.15, 0.05, 0.05]))
        status = Status(int(rng.choice(4, p=[0.55, 0.25, 0.1, 0.1])))
        kinds[status] += 1
        if status == Status.OK:
            vad = tuple(rng.uniform(1, 10, 3)) if rng.random() < 0.7 else (math.nan,) * 3
            res = result(rng.uniform(0, 1, 26), vad)
            last = res
            fresh.append((t, observation_vector(res)))
        elif status == Status.CACHED and last is not None:
            # the same observation again, as the track cache returns it: must not count
            res = EmotionResult(scores=last.scores.copy(), vad=last.vad, status=Status.CACHED)
        else:
            res = result(status=Status.SKIPPED if status == Status.CACHED else status)
        frame = states.update_frame(['7'], [res], t)
        first_t = t if first_t is None else first_t
        state = frame.states[0]
        want, conf = reference(fresh, t, h)
        assert state.observations == len(fresh), step
        if not fresh:
            assert np.isnan(state.scores).all() and state.confidence == 0.0
            continue
        np.testing.assert_allclose(state.scores, want[:26].astype(np.float32), rtol=1e-5,
                                   atol=1e-6, err_msg=f'step {step}')
        np.testing.assert_allclose(state.vad, want[26:], rtol=1e-9, atol=1e-9)
        assert state.confidence == pytest.approx(conf, rel=1e-9, abs=1e-12)
        assert state.last_observed_s == fresh[-1][0] and state.first_seen_s == first_t
    assert min(kinds.values()) > 20, kinds  # every status was exercised


def test_confidence_half_after_a_first_look_towards_one_and_halving_unobserved():
    states = EmotionStates(StateOptions(half_life_s=1.0, forget_after_s=100.0))
    first = states.update_frame(['a'], [result(Happiness=0.9)], 0.0).states[0]
    assert first.confidence == pytest.approx(0.5) and first.observations == 1
    for i in range(1, 101):  # observed at 10 fps for 10 half-lives
        state = states.update_frame(['a'], [result(Happiness=0.9)], i / 10).states[0]
    assert state.confidence == pytest.approx(1.0, abs=1e-3)
    # unobserved (no face: SKIPPED) for 1 and 3 half-lives: confidence halves each, the
    # scores stay what was last known
    s1 = states.update_frame(['a'], [result(status=Status.SKIPPED)], 11.0).states[0]
    s3 = states.update_frame(['a'], [result(status=Status.SKIPPED)], 13.0).states[0]
    assert s1.confidence == pytest.approx(state.confidence / 2)
    assert s3.confidence == pytest.approx(state.confidence / 8)
    assert s3.scores[HAPPY] == pytest.approx(0.9) and s3.observations == 101


def test_the_same_signal_at_10_and_30_fps_or_with_bursts_gives_the_same_state():
    """Each observation counts for the time it covers: the frame rate does not matter."""
    rng = np.random.default_rng(5)
    segments = rng.uniform(0, 1, (40, 26))  # the signal: one value per 0.1 s
    runs = {}
    for name, offsets in (('10fps', [0.1]), ('30fps', [1 / 30, 2 / 30, 0.1]),
                          ('bursts', [0.001, 0.002, 0.1])):
        states = EmotionStates(StateOptions(half_life_s=0.4))
        states.update_frame(['p'], [result(segments[0])], 0.0)  # all start together
        out = []
        for k, seg in enumerate(segments):  # seg: the value on (0.1 k, 0.1 (k + 1)]
            for off in offsets:
                frame = states.update_frame(['p'], [result(seg)], round(k * 0.1 + off, 9))
            out.append(frame.states[0])  # the state at the segment's end
        runs[name] = out
    for name in ('30fps', 'bursts'):
        for a, b in zip(runs['10fps'], runs[name]):
            np.testing.assert_allclose(b.scores, a.scores, rtol=1e-5, atol=1e-6)
            assert b.confidence == pytest.approx(a.confidence, abs=1e-9)
            assert b.labels == a.labels


def follow(states: EmotionStates, track: str, values: list[float], dt: float = 0.1,
           t0: float = 0.0, category: str = 'Happiness') -> list[StateEvent]:
    events = []
    for i, v in enumerate(values):
        events += states.update_frame([track], [result(**{category: v})], t0 + i * dt).events
    return events


def instant(**kw) -> EmotionStates:
    """States that follow each observation (a half-life far below the frame interval)."""
    return EmotionStates(StateOptions(half_life_s=1e-3, **kw))


def test_hysteresis_margin_and_hold_time():
    states = instant(margin=0.1, min_hold_s=0.5)
    #        0     0.1   0.2   0.3   0.4   0.5   0.6   0.7   0.8
    vals = [0.55, 0.61, 0.45, 0.39, 0.39, 0.39, 0.39, 0.65, 0.55]
    events = follow(states, 'a', vals)
    got = [(e.kind, round(e.stamp_s, 3), round(e.score, 2)) for e in events]
    # on at 0.61 (>= 0.5 + 0.1; 0.55 is not); 0.45 keeps it (>= 0.4); 0.39 is below 0.4 but
    # the label was switched on 0.2 s before: held until 0.5 s after the onset (t=0.6);
    # back on only 0.5 s after the offset (t=1.1 > 0.8): not in this run
    assert got == [(EventKind.ONSET, 0.1, 0.61), (EventKind.OFFSET, 0.6, 0.39)]
    assert states.state('a').labels == []
    more = follow(states, 'a', [0.65], t0=1.1)
    assert [(e.kind, e.category) for e in more] == [(EventKind.ONSET, 'Happiness')]
    assert states.state('a').label_since == {'Happiness': pytest.approx(1.1)}


def test_labels_use_the_backends_per_category_thresholds():
    backend = FakeBackend({'thresholds': {'Happiness': 0.3, 'Sadness': 0.8}})
    states = EmotionStates.for_backend(StateOptions(half_life_s=1e-3, margin=0.05), backend)
    state = states.update_frame(['a'], [result(Happiness=0.36, Sadness=0.8, Fear=0.56)],
                                0.0).states[0]
    # Happiness on (>= 0.35), Sadness not (< 0.85), Fear by the default 0.5 (>= 0.55)
    assert state.labels == ['Fear', 'Happiness']
    # half_life_s < 0: the backend's default (by its cost)
    auto = EmotionStates.for_backend(StateOptions(), backend)
    assert auto.options.half_life_s == FakeBackend.state_half_life_s


def transitions_from_snapshots(snapshots) -> list[tuple[str, str, str]]:
    """(track, category, 'onset'/'offset') from consecutive label sets (an independent view;
    a new ``first_seen_s`` is a new state: the old one's labels ended)."""
    out, before = [], {}
    for state in snapshots:
        first, prev = before.get(state.track_id, (state.first_seen_s, set()))
        if first != state.first_seen_s:
            out += [(state.track_id, c, 'offset') for c in sorted(prev)]
            prev = set()
        now = set(state.labels)
        out += [(state.track_id, c, 'onset') for c in sorted(now - prev)]
        out += [(state.track_id, c, 'offset') for c in sorted(prev - now)]
        before[state.track_id] = (state.first_seen_s, now)
    return out


def test_events_exactly_once_per_transition_and_every_onset_has_one_offset():
    rng = np.random.default_rng(11)
    states = EmotionStates(StateOptions(half_life_s=0.3, margin=0.03, min_hold_s=0.2,
                                        forget_after_s=1.0))
    snapshots, events = [], []
    level = rng.uniform(0, 1, (3, 26))
    for i in range(600):
        t = i * 0.05
        level += rng.normal(0, 0.08, level.shape)
        level = np.clip(level, 0, 1)
        ids = [tid for k, tid in enumerate('abc') if not (k == 2 and 200 <= i < 260)]
        results = [result(level['abc'.index(tid)]) for tid in ids]
        frame = states.update_frame(ids, results, t)
        events += frame.events
        snapshots += frame.states
    events += states.reset()
    hysteresis = [(e.track_id, e.category, e.kind.name.lower()) for e in events
                  if e.kind != EventKind.LEFT and not e.reason]
    assert len(hysteresis) > 100
    # 'c' left for 3 s (> forget_after_s): its state ended (offsets + left) and restarted
    ended = [e for e in events if e.reason]
    assert {e.reason for e in ended} == {'forgotten', 'reset'}
    assert [e.track_id for e in ended if e.kind == EventKind.LEFT].count('c') == 2
    # the hysteresis events are exactly the label changes seen in the snapshots, apart from
    # the labels that ended with the state ('c' forgotten)
    from_snapshots = transitions_from_snapshots(snapshots)
    forgotten = [(e.track_id, e.category, 'offset') for e in ended
                 if e.reason == 'forgotten' and e.kind == EventKind.OFFSET]
    for item in forgotten:
        from_snapshots.remove(item)
    assert sorted(hysteresis) == sorted(from_snapshots)
    # per (track, category): onset, offset, onset, offset... and every onset closed
    open_labels: dict = {}
    for e in events:
        key = (e.track_id, e.category)
        if e.kind == EventKind.ONSET:
            assert not open_labels.get(key), f'second onset without offset: {e}'
            open_labels[key] = True
        elif e.kind == EventKind.OFFSET:
            assert open_labels.pop(key, False), f'offset without onset: {e}'
    assert not open_labels
    assert len(states) == 0


def test_forgetting_by_stamps_and_by_tick_when_no_frame_arrives():
    states = instant(forget_after_s=2.0, min_hold_s=0.0)
    follow(states, 'a', [0.9])
    follow(states, 'b', [0.9], t0=1.0)
    # frames keep arriving without 'a': forgotten at the first frame more than 2 s after it
    assert states.update_frame([], [], 2.0).events == []
    events = states.update_frame([], [], 2.05).events
    assert [(e.track_id, e.kind, e.category, e.reason) for e in events] == [
        ('a', EventKind.OFFSET, 'Happiness', 'forgotten'),
        ('a', EventKind.LEFT, '', 'forgotten')]
    assert events[0].score == pytest.approx(0.9) and math.isnan(events[1].score)
    # no frame at all: tick with a stamp (the node's timer when its input stopped)
    assert states.tick(2.9) == []
    assert [e.kind for e in states.tick(3.5)] == [EventKind.OFFSET, EventKind.LEFT]
    assert len(states) == 0 and states.counters()['forgotten'] == 2
    # the same id again later: a new state
    again = states.update_frame(['a'], [result(Happiness=0.2)], 4.0).states[0]
    assert again.first_seen_s == 4.0 and again.observations == 1 and again.labels == []


def test_skipped_cached_and_error_keep_the_person_but_add_no_evidence():
    states = instant(forget_after_s=1.0)
    follow(states, 'a', [0.9])
    for i, status in enumerate([Status.CACHED, Status.SKIPPED, Status.ERROR] * 4):
        res = (EmotionResult(scores=np.full(26, 0.0, np.float32), status=Status.CACHED)
               if status == Status.CACHED else result(status=status))
        frame = states.update_frame(['a'], [res], 0.5 * (i + 1))
        assert frame.events == []  # in the frame: not forgotten (6 s > forget_after_s)
    state = frame.states[0]
    assert state.observations == 1 and state.labels == ['Happiness']
    assert state.scores[HAPPY] == pytest.approx(0.9)  # the CACHED zeros did not count


def test_a_new_identity_ends_the_old_state_and_starts_a_fresh_one_under_the_same_id():
    states = instant(min_hold_s=0.0)
    follow(states, '6', [0.9, 0.9])
    frame = states.update_frame(['6'], [result(Sadness=0.9)], 0.3, new_identity=[True])
    got = [(e.track_id, e.kind, e.category, e.reason) for e in frame.events]
    assert got == [('6', EventKind.OFFSET, 'Happiness', 'new_identity'),
                   ('6', EventKind.LEFT, '', 'new_identity'),
                   ('6', EventKind.ONSET, 'Sadness', '')]
    state = frame.states[0]
    assert state.first_seen_s == 0.3 and state.observations == 1
    assert state.labels == ['Sadness'] and state.scores[HAPPY] == pytest.approx(0.1)
    # the same through the one-person entry point: no evidence yet for the new person (no face)
    state, events = states.update('6', result(status=Status.SKIPPED), 0.4, new_identity=True)
    assert [(e.kind, e.category) for e in events] == [(EventKind.OFFSET, 'Sadness'),
                                                      (EventKind.LEFT, '')]
    assert state.observations == 0 and state.labels == [] and state.confidence == 0.0
    assert np.isnan(state.scores).all() and states.counters()['new_identity'] == 2


def test_untracked_and_duplicate_ids_get_a_state_of_that_frame_alone():
    states = instant()
    follow(states, 'x', [0.9])
    frame = states.update_frame(['', 'x', 'x'], [result(Happiness=0.9),
                                                 result(Sadness=0.9), result(Sadness=0.9)], 0.5)
    assert frame.events == []  # nothing happens over time to them; 'x' is not updated
    assert [s.track_id for s in frame.states] == ['', 'x', 'x']
    assert frame.states[0].labels == ['Happiness'] and frame.states[0].observations == 1
    assert frame.states[1].labels == ['Sadness'] and frame.states[1].observations == 1
    assert states.state('x').labels == ['Happiness'] and states.state('x').observations == 1
    assert states.counters()['duplicate_ids'] == 1


def test_an_older_frame_answered_late_changes_nothing():
    states = instant()
    follow(states, 'a', [0.9], t0=5.0)
    late = states.update_frame(['a'], [result(Happiness=0.1)], 4.0)
    assert late.events == [] and states.state('a').scores[HAPPY] == pytest.approx(0.9)
    assert states.counters()['out_of_order'] == 1


def replay(inputs, pace_s: float | None):
    """Feed ``inputs`` ((stamp, ids, results)) pacing wall time by ``pace_s`` per stamp second
    (None: as fast as possible)."""
    states = EmotionStates(StateOptions(half_life_s=0.3, min_hold_s=0.2, forget_after_s=0.5))
    out, t_wall = [], time.monotonic()
    for stamp, ids, results in inputs:
        if pace_s is not None:
            time.sleep(max(0.0, t_wall + (stamp - inputs[0][0]) * pace_s - time.monotonic()))
        frame = states.update_frame(ids, results, stamp)
        out.append(([s.to_dict() for s in frame.states], [e.to_dict() for e in frame.events]))
    return out


def test_replay_at_1x_5x_and_as_fast_as_possible_gives_identical_states_and_events():
    rng = np.random.default_rng(2)
    inputs, level = [], rng.uniform(0, 1, (2, 26))
    for i in range(15):  # 1.5 s at 10 fps; 'b' leaves after 0.5 s
        level = np.clip(level + rng.normal(0, 0.2, level.shape), 0, 1)
        ids = ['a', 'b'] if i < 5 else ['a']
        status = [Status.OK, Status.CACHED, Status.SKIPPED][i % 3]
        inputs.append((1000.0 + i * 0.1, ids, [result(level[k], status=status)
                                               for k in range(len(ids))]))
    runs = [replay(inputs, pace) for pace in (1.0, 0.2, None)]
    assert runs[0] == runs[1] == runs[2]
    assert any(events for _, events in runs[0])  # something happened


def test_at_most_max_tracks_states_with_10000_track_ids_and_memory_stays_flat():
    states = EmotionStates(StateOptions(half_life_s=0.5, max_tracks=64, min_hold_s=0.0,
                                        forget_after_s=1e6))
    reasons: dict[tuple[str, str], int] = {}

    def feed(first: int, last: int) -> None:
        for i in range(first, last):
            for e in states.update_frame([f'id{i}'], [result(Happiness=0.9)], i * 0.01).events:
                key = (e.kind.name, e.reason)
                reasons[key] = reasons.get(key, 0) + 1

    feed(0, 7000)
    tracemalloc.start()
    try:
        feed(7000, 7500)  # the 64 states held are allocated (and traced) by now
        gc.collect()
        base = tracemalloc.get_traced_memory()[0]
        feed(7500, 10_000)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert len(states) == 64 and len(states.track_ids()) == 64
    counts = states.counters()
    assert counts['created'] == 10_000 and counts['evicted'] == 10_000 - 64
    # each evicted state ended with the offset of its label and its left
    assert reasons == {('ONSET', ''): 10_000, ('OFFSET', 'evicted'): 10_000 - 64,
                       ('LEFT', 'evicted'): 10_000 - 64}
    assert grown < 16 * 1024, f'{grown} bytes retained after 2,500 more ids'


def test_soak_ids_coming_and_going_keep_states_and_counters_bounded():
    """Hours of a street scene, compressed: every person stays 2 s then leaves; new ids all the
    time. The states held stay at what forget_after_s allows; every state ends with a left."""
    states = EmotionStates(StateOptions(half_life_s=0.5, forget_after_s=1.05, min_hold_s=0.5))
    rng = np.random.default_rng(0)
    most, lefts = 0, 0
    for i in range(10_000):  # 10,000 frames at 10 fps; person k in frames 5k .. 5k+19
        ids = [f'p{k}' for k in range(max(0, i // 5 - 3), i // 5 + 1)]
        frame = states.update_frame(ids, [result(rng.uniform(0, 1, 26)) for _ in ids], i * 0.1)
        most = max(most, len(states))
        lefts += sum(e.kind == EventKind.LEFT for e in frame.events)
    # 4 in the picture, and at most 2 left less than forget_after_s ago
    assert most == 6
    # person k is forgotten at frame 5k + 30 (1.1 s after its last): k = 0 .. 1993
    assert lefts == 1994 == states.counters()['forgotten']
    counts = states.counters()
    active = sum(len(states.state(t).labels) for t in states.track_ids())
    assert counts['onset'] - counts['offset'] == active


def test_options_are_validated_with_the_reason():
    for bad in (dict(half_life_s=0.0), dict(margin=0.7), dict(min_hold_s=-1.0),
                dict(forget_after_s=0.0), dict(max_tracks=0)):
        with pytest.raises(ValueError, match='state '):
            StateOptions(**bad).validate()
    with pytest.raises(ValueError, match='resolved'):
        EmotionStates(StateOptions(half_life_s=-1.0))
    assert len(EMOTIC_CATEGORIES) == 26 and SAD != HAPPY
