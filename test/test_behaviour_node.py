"""The example behaviour node (examples/behaviour_node.py) in-process: PersonEmotionArray messages
published over DDS on `emotions`, decisions read from `attention_target` / `interaction_mode`;
EmotionEventArray / PersonEmotionStateArray on `emotion_events` / `emotion_states`, actions read
from `greet` / `approach`."""
from __future__ import annotations

import math

import pytest
from sensor_msgs.msg import RegionOfInterest
from std_msgs.msg import Header, String

from builtin_interfaces.msg import Time

from emotion_perception.examples.behaviour_node import (ACTION_QOS, CALM, DECISION_QOS, NORMAL,
                                                        BehaviourNode, BehaviourPolicy, Seen)
from emotion_perception.msg import (EmotionEvent, EmotionEventArray, PersonEmotion,
                                    PersonEmotionArray, PersonEmotionState,
                                    PersonEmotionStateArray)
from emotion_perception.ros.qos import EVENTS_QOS, RESULTS_QOS
from emotion_perception.testing.ros_harness import RosHarness

pytestmark = pytest.mark.ros

NAMES = PersonEmotion.CATEGORY_NAMES.split(',')


def person(track: str, status: int = PersonEmotion.STATUS_OK, size: int = 100,
           cache_age: float = 0.0, **scores: float) -> PersonEmotion:
    """A person with a size x 2*size box and the given category scores (others 0.05)."""
    values = [scores.get(n, 0.05) for n in NAMES]
    if status in (PersonEmotion.STATUS_SKIPPED, PersonEmotion.STATUS_ERROR):
        values = [math.nan] * len(NAMES)
    return PersonEmotion(track_id=track, status=status, cache_age=cache_age, scores=values,
                         bbox=RegionOfInterest(width=size, height=2 * size),
                         valence=math.nan, arousal=math.nan, dominance=math.nan)


class Rig:
    def __init__(self, harness: RosHarness) -> None:
        self.harness = harness
        self.node = harness.add(BehaviourNode(context=harness.context))
        self.pub = harness.publisher(PersonEmotionArray, 'emotions', RESULTS_QOS)
        self.targets = harness.collect(String, 'attention_target', DECISION_QOS)
        self.modes = harness.collect(String, 'interaction_mode', DECISION_QOS)
        self.sent = 0
        assert harness.wait_matched(self.pub)

    def send(self, *persons: PersonEmotion, age_s: float = 0.0) -> None:
        """Publish one array stamped ``age_s`` seconds ago; wait until the node took it and its
        decisions arrived here."""
        stamp = self.node.get_clock().now().nanoseconds - round(age_s * 1e9)
        header = Header(frame_id='camera')
        header.stamp.sec, header.stamp.nanosec = divmod(stamp, 10**9)
        before = self.node.arrays_in
        self.pub.publish(PersonEmotionArray(header=header, persons=list(persons)))
        assert self.harness.wait_for(lambda: self.node.arrays_in > before, 10.0)
        assert self.harness.wait_for(lambda: self.node.decision is None or (
            self.targets and self.modes and self.decision == self.node.decision), 10.0)

    @property
    def decision(self) -> tuple[str, str]:
        return self.targets[-1].data, self.modes[-1].data


@pytest.fixture
def rig():
    with RosHarness() as h:
        yield Rig(h)


def test_attends_to_the_nearest_then_the_distressed_person_and_calms_down(rig):
    rig.send(person('1', size=120), person('2', size=60))
    assert rig.decision == ('1', NORMAL)  # nobody distressed: the nearest (larger box)
    rig.send(person('1', size=120), person('2', size=60, Sadness=0.8))
    assert rig.decision == ('2', CALM)
    # hysteresis: 0.4 is below calm_enter (0.5) but above calm_exit (0.3): still calm
    rig.send(person('1', size=120), person('2', size=60, Sadness=0.4))
    assert rig.decision == ('2', CALM)
    rig.send(person('1', size=120), person('2', size=60, Sadness=0.2))
    assert rig.decision[1] == NORMAL
    # decisions are published when they change, not per array
    assert [m.data for m in rig.modes] == [NORMAL, CALM, NORMAL]


def test_skipped_error_stale_and_old_cached_results_are_ignored(rig):
    rig.send(person('1', size=100))
    assert rig.decision == ('1', NORMAL)
    # a SKIPPED / ERROR person carries no scores; an old CACHED one is out of date; untracked
    # persons cannot be followed: none of them changes anything
    rig.send(person('1', size=100), person('7', PersonEmotion.STATUS_SKIPPED, size=300),
             person('8', PersonEmotion.STATUS_ERROR, size=300),
             person('9', PersonEmotion.STATUS_CACHED, size=300, cache_age=5.0, Fear=0.9),
             person('', size=300, Fear=0.9))
    assert rig.decision == ('1', NORMAL)
    # a whole array from 3 s ago (late, or a replayed bag) is ignored
    stale = rig.node.ignored_stale
    rig.send(person('5', size=300, Fear=0.9), age_s=3.0)
    assert rig.node.ignored_stale == stale + 1 and rig.decision == ('1', NORMAL)
    # a recent CACHED result counts
    rig.send(person('1', size=100), person('9', PersonEmotion.STATUS_CACHED, size=80,
                                           cache_age=0.5, Fear=0.9))
    assert rig.decision == ('9', CALM)
    # a frame where nobody could be evaluated is no news: the decision stays
    rig.send(person('9', PersonEmotion.STATUS_SKIPPED))
    assert rig.decision == ('9', CALM)


def test_policy_keeps_its_target_and_forgets_it():
    policy = BehaviourPolicy()
    policy.update([Seen('a', 0.1, 1000.0), Seen('b', 0.1, 950.0)], 0.0)
    assert policy.target == 'a'
    # 'b' comes a little nearer: within switch_margin, no flicker
    policy.update([Seen('a', 0.1, 950.0), Seen('b', 0.1, 1000.0)], 0.1)
    assert policy.target == 'a'
    policy.update([Seen('a', 0.1, 400.0), Seen('b', 0.1, 1000.0)], 0.2)
    assert policy.target == 'b'
    # 'b' leaves; nobody usable: kept for target_timeout_s (3 s), then dropped
    policy.update([], 2.0)
    assert policy.target == 'b'
    policy.update([], 3.5)
    assert policy.target == ''


# -- reacting to the state over time (emotion_events, emotion_states) ---------------------------
def event(track: str, category: str, kind: int) -> EmotionEvent:
    return EmotionEvent(track_id=track, category=category, kind=kind,
                        score=math.nan if kind == EmotionEvent.KIND_LEFT else 0.7)


def stamped(node, age_s: float = 0.0, at_s: float | None = None) -> Header:
    """A header stamped ``age_s`` ago by ``node``'s clock, or at ``at_s`` seconds."""
    ns = (round(at_s * 1e9) if at_s is not None
          else node.get_clock().now().nanoseconds - round(age_s * 1e9))
    hdr = Header(frame_id='camera')
    hdr.stamp.sec, hdr.stamp.nanosec = divmod(ns, 10**9)
    return hdr


def sad_since(track: str, since_s: float) -> PersonEmotionState:
    since = Time(sec=int(since_s), nanosec=round((since_s % 1) * 1e9))
    return PersonEmotionState(track_id=track, labels=['Sadness'], label_since=[since],
                              scores=[0.1] * 26, confidence=0.9, observations=10)


def test_greets_on_a_happiness_onset_and_approaches_once_sadness_has_held(rig):
    h, node = rig.harness, rig.node
    events_pub = h.publisher(EmotionEventArray, 'emotion_events', EVENTS_QOS)
    states_pub = h.publisher(PersonEmotionStateArray, 'emotion_states', RESULTS_QOS)
    greets = h.collect(String, 'greet', ACTION_QOS)
    approaches = h.collect(String, 'approach', ACTION_QOS)
    assert h.wait_matched(events_pub) and h.wait_matched(states_pub)

    def send_events(*events: EmotionEvent, age_s: float = 0.0) -> None:
        before = node.events_in
        events_pub.publish(EmotionEventArray(header=stamped(node, age_s), events=list(events)))
        assert h.wait_for(lambda: node.events_in > before, 10.0)

    def send_states(at_s: float, *persons: PersonEmotionState) -> None:
        before = node.states_in
        states_pub.publish(PersonEmotionStateArray(header=stamped(node, at_s=at_s),
                                                   persons=list(persons)))
        assert h.wait_for(lambda: node.states_in > before, 10.0)

    send_events(event('3', 'Happiness', EmotionEvent.KIND_ONSET),
                event('5', 'Sadness', EmotionEvent.KIND_ONSET))
    assert h.wait_for(lambda: [m.data for m in greets] == ['3'], 10.0)
    # an onset from 5 s ago (the transient-local history, or a replay) is not acted on
    send_events(event('8', 'Happiness', EmotionEvent.KIND_ONSET), age_s=5.0)
    assert node.ignored_old_events == 1
    # approach: Sadness on since t=100 s (sensor time of the states arrays): not at 101,
    # once at 103.5 (held 3 s), not again at 104
    for at in (101.0, 103.5, 104.0):
        send_states(at, sad_since('4', 100.0))
    assert h.wait_for(lambda: [m.data for m in approaches] == ['4'], 10.0)
    # her sadness ends (offset) and starts again at 110: a new episode, approached at 113
    send_events(event('4', 'Sadness', EmotionEvent.KIND_OFFSET))
    send_states(111.0, sad_since('4', 110.0))
    send_states(113.0, sad_since('4', 110.0))
    assert h.wait_for(lambda: [m.data for m in approaches] == ['4', '4'], 10.0)
    h.wait_for(lambda: False, 0.3)  # nothing more arrives
    assert [m.data for m in greets] == ['3'] and len(approaches) == 2
    assert list(node.actions) == [('greet', '3'), ('approach', '4'), ('approach', '4')]
