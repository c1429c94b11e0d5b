"""Example behaviour node: whom the robot attends to, whether it interacts calmly, whom it
greets and whom it approaches.

A behaviour node is how this package is meant to be used: it subscribes ``emotions``
(``emotion_perception/PersonEmotionArray``, the raw per-frame stream) and the per-person state
over time (``emotion_events``, ``emotion_states``) and turns them into decisions. This one decides

* ``attention_target`` (``std_msgs/String``): the track id of the person to attend to, '' for
  nobody. The most distressed person when someone's distress reaches ``attend_distress``,
  otherwise the nearest (largest box). The current target is kept while it is seen, unless
  another person beats it by ``switch_margin`` (no flicker between two similar people), and
  dropped after ``target_timeout_s`` without a usable result for it.
* ``interaction_mode`` (``std_msgs/String``): 'calm' (slower, quieter, more distance) or
  'normal', with hysteresis: calm when the highest distress reaches ``calm_enter``, back to
  normal only when it falls to ``calm_exit`` or below, so a score hovering at one threshold does
  not toggle the mode.

Both are published when they change, reliable and transient-local (depth 1), so a controller
that starts later still gets the current decision.

And, from the state over time (``EventPolicy``):

* ``greet`` (``std_msgs/String``: a track id) when ``greet_category`` (Happiness) switches on for
  a person (an ONSET event on ``emotion_events``): once per onset, since the state's labels
  have hysteresis and a minimum hold, a flickering smile does not give a burst of greetings.
* ``approach`` (``std_msgs/String``: a track id) when ``approach_category`` (Sadness) has been
  on for ``approach_after_s`` seconds (by the stamps of ``emotion_states``, whose
  ``label_since`` says since when), once per episode: again after its OFFSET (or the person
  left) and a new onset.

Both actions are published reliably (volatile: an action is for now, not for a late joiner).
Events older than ``max_delay_s`` by this node's clock are ignored (``emotion_events`` is
transient local: a restarted behaviour node receives the recent history, and must not greet
everyone again).

What it ignores: persons whose result is SKIPPED (no face, dropped frame) or ERROR, CACHED
results older than ``max_cache_age_s``, untracked persons (empty track id: nobody to follow),
and whole arrays older than ``max_delay_s`` by this node's clock or older than the last one
used (a late or replayed array must not undo a newer decision). A frame without usable persons
changes nothing: no information is not "nobody is distressed".

Distress of a person: the highest score among EMOTIC's categories of distress
(``DISTRESS_CATEGORIES``), in [0, 1].

    ros2 run emotion_perception behaviour_node --ros-args -r emotions:=/emotions
"""
from __future__ import annotations

import collections
import math
from dataclasses import dataclass
from typing import Sequence

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rcl_interfaces.msg import ParameterDescriptor
from std_msgs.msg import String

from emotion_perception.msg import (EmotionEvent, EmotionEventArray, PersonEmotion,
                                    PersonEmotionArray, PersonEmotionStateArray)
from emotion_perception.ros.messages import seconds_from_time, stamp_seconds
from emotion_perception.ros.qos import EVENTS_QOS, RESULTS_QOS

#: EMOTIC categories that say a person is in distress (a reason to slow down and attend).
DISTRESS_CATEGORIES = ('Anger', 'Annoyance', 'Aversion', 'Disquietment', 'Fear', 'Pain',
                       'Sadness', 'Suffering')
CATEGORY_NAMES = PersonEmotion.CATEGORY_NAMES.split(',')
_DISTRESS_INDEX = [CATEGORY_NAMES.index(c) for c in DISTRESS_CATEGORIES]

CALM, NORMAL = 'calm', 'normal'

#: Decisions: reliable, transient-local, last one kept (a late subscriber gets the current one).
DECISION_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                          reliability=ReliabilityPolicy.RELIABLE,
                          durability=DurabilityPolicy.TRANSIENT_LOCAL)
#: Actions (greet, approach): reliable, volatile (they are for now), a few kept while busy.
ACTION_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10,
                        reliability=ReliabilityPolicy.RELIABLE,
                        durability=DurabilityPolicy.VOLATILE)
GREET, APPROACH = 'greet', 'approach'


@dataclass
class Seen:
    """A usable person of one emotions array."""

    track_id: str
    distress: float  # [0, 1]
    area: float      # box area in pixels (bigger = nearer)


@dataclass
class Settings:
    """The node's parameters (see the module docstring)."""

    max_cache_age_s: float = 2.0
    max_delay_s: float = 1.0
    attend_distress: float = 0.4
    switch_margin: float = 0.15
    target_timeout_s: float = 3.0
    calm_enter: float = 0.5
    calm_exit: float = 0.3
    greet_category: str = 'Happiness'
    approach_category: str = 'Sadness'
    approach_after_s: float = 3.0


def usable_persons(msg: PersonEmotionArray, max_cache_age_s: float) -> list[Seen]:
    """The persons of ``msg`` a decision may rest on: OK, or CACHED and recent; tracked."""
    out = []
    for p in msg.persons:
        if not p.track_id:
            continue
        if p.status == PersonEmotion.STATUS_CACHED:
            if p.cache_age > max_cache_age_s:
                continue
        elif p.status != PersonEmotion.STATUS_OK:  # SKIPPED, ERROR: no scores to use
            continue
        scores = [p.scores[i] for i in _DISTRESS_INDEX]
        if not all(math.isfinite(s) for s in scores):
            continue
        out.append(Seen(p.track_id, max(scores), float(p.bbox.width) * float(p.bbox.height)))
    return out


class BehaviourPolicy:
    """Attention target and interaction mode from a stream of usable persons (no ROS)."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.target = ''
        self.mode = NORMAL
        self._target_seen_s = -math.inf

    def update(self, persons: Sequence[Seen], stamp_s: float) -> None:
        """Take the usable persons of the array stamped ``stamp_s`` (seconds) into account."""
        s = self.settings
        if self.target and stamp_s - self._target_seen_s > s.target_timeout_s:
            self.target = ''  # not seen (usable) for too long
        if not persons:
            return
        top = max(p.distress for p in persons)
        if self.mode == NORMAL and top >= s.calm_enter:
            self.mode = CALM
        elif self.mode == CALM and top <= s.calm_exit:
            self.mode = NORMAL

        def merit(p: Seen) -> tuple[int, float]:
            # distressed people first (by distress), then the others by nearness
            if p.distress >= s.attend_distress:
                return 1, p.distress
            return 0, p.area / max(q.area for q in persons)

        best = max(persons, key=merit)
        current = next((p for p in persons if p.track_id == self.target), None)
        if current is not None:
            self._target_seen_s = stamp_s
            mb, mc = merit(best), merit(current)
            if mb[0] == mc[0] and mb[1] - mc[1] < s.switch_margin or mb[0] < mc[0]:
                return  # keep the current target
        self.target = best.track_id
        self._target_seen_s = stamp_s


class EventPolicy:
    """Greet and approach from the state over time (no ROS): ``on_events`` and ``on_states``
    return the actions to take now, as (GREET or APPROACH, track id)."""

    #: most approach episodes remembered (a robot runs for hours; the oldest are dropped)
    MAX_EPISODES = 1024

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self._approached: dict[tuple[str, float], None] = {}  # (track, since) acted on

    def on_events(self, events: Sequence[EmotionEvent]) -> list[tuple[str, str]]:
        """React to the events of one ``emotion_events`` array (already checked for age)."""
        s, actions = self.settings, []
        for e in events:
            if e.kind == EmotionEvent.KIND_ONSET and e.category == s.greet_category:
                actions.append((GREET, e.track_id))
            ended = (e.kind == EmotionEvent.KIND_LEFT or e.kind == EmotionEvent.KIND_OFFSET
                     and e.category == s.approach_category)
            if ended:  # a later onset is a new episode
                for episode in [a for a in self._approached if a[0] == e.track_id]:
                    del self._approached[episode]
        return actions

    def on_states(self, msg: PersonEmotionStateArray) -> list[tuple[str, str]]:
        """Approach whoever has shown ``approach_category`` for ``approach_after_s`` by the
        array's stamp (sensor time), once per episode."""
        s, actions = self.settings, []
        now_s = stamp_seconds(msg.header)
        for p in msg.persons:
            if not p.track_id or s.approach_category not in p.labels:
                continue
            since_s = seconds_from_time(p.label_since[list(p.labels).index(s.approach_category)])
            episode = (p.track_id, since_s)
            if now_s - since_s >= s.approach_after_s and episode not in self._approached:
                self._approached[episode] = None
                while len(self._approached) > self.MAX_EPISODES:
                    del self._approached[next(iter(self._approached))]
                actions.append((APPROACH, p.track_id))
        return actions


class BehaviourNode(Node):
    """ROS adapter of ``BehaviourPolicy``: ``emotions`` in, ``attention_target`` and
    ``interaction_mode`` out (see the module docstring)."""

    def __init__(self, node_name: str = 'behaviour_node', **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        defaults = Settings()
        described = {
            'max_cache_age_s': 'ignore CACHED results older than this (s)',
            'max_delay_s': "ignore emotions arrays whose stamp is older than this by the node's "
                           'clock (s)',
            'attend_distress': 'attend to the most distressed person from this distress on',
            'switch_margin': 'change target only for a person better by this much',
            'target_timeout_s': 'forget the target after this long without a usable result (s)',
            'calm_enter': "switch to 'calm' when the highest distress reaches this",
            'calm_exit': "back to 'normal' when the highest distress falls to this",
            'greet_category': 'greet a person when this EMOTIC category switches on (onset)',
            'approach_category': 'approach a person who has shown this category for a while',
            'approach_after_s': 'approach once approach_category has been on this long (s)',
        }
        values = {name: self.declare_parameter(name, getattr(defaults, name),
                                               ParameterDescriptor(description=text)).value
                  for name, text in described.items()}
        settings = Settings(**values)
        if not settings.calm_exit < settings.calm_enter:
            raise ValueError(f'calm_exit ({settings.calm_exit}) must be below calm_enter '
                             f'({settings.calm_enter})')
        self.policy = BehaviourPolicy(settings)
        self.events_policy = EventPolicy(settings)
        self._last_stamp_s = -math.inf
        self.arrays_in = 0      # emotions arrays handled
        self.ignored_stale = 0  # of them, ignored as late or out of order
        self.events_in = 0      # emotion_events arrays handled
        self.states_in = 0      # emotion_states arrays handled
        self.ignored_old_events = 0  # events arrays older than max_delay_s (history, replays)
        #: the last (action, track id) published, in order
        self.actions: collections.deque[tuple[str, str]] = collections.deque(maxlen=100)
        self._action_pubs = {GREET: self.create_publisher(String, GREET, ACTION_QOS),
                             APPROACH: self.create_publisher(String, APPROACH, ACTION_QOS)}
        self._target_pub = self.create_publisher(String, 'attention_target', DECISION_QOS)
        self._mode_pub = self.create_publisher(String, 'interaction_mode', DECISION_QOS)
        self._published: tuple[str, str] | None = None
        # RESULTS_QOS: the profile emotion_node publishes with (reliable, deep history), so no
        # array is lost while this node's executor is busy.
        self.create_subscription(PersonEmotionArray, 'emotions', self.on_emotions, RESULTS_QOS)
        # the events are published transient local: asking for it too, a node that starts late
        # still gets an onset of the last moments (older ones are ignored in on_events)
        self.create_subscription(EmotionEventArray, 'emotion_events', self.on_events,
                                 EVENTS_QOS)
        self.create_subscription(PersonEmotionStateArray, 'emotion_states', self.on_states,
                                 RESULTS_QOS)

    def on_emotions(self, msg: PersonEmotionArray) -> None:
        try:
            stamp_s = stamp_seconds(msg.header)
            now_s = self.get_clock().now().nanoseconds * 1e-9
            late = now_s - stamp_s > self.policy.settings.max_delay_s
            if late or stamp_s <= self._last_stamp_s:
                self.ignored_stale += 1
                return
            self._last_stamp_s = stamp_s
            persons = usable_persons(msg, self.policy.settings.max_cache_age_s)
            self.policy.update(persons, stamp_s)
            self._publish(self.policy.target, self.policy.mode)
        finally:
            self.arrays_in += 1  # counted once handled (tests wait for it)

    def on_events(self, msg: EmotionEventArray) -> None:
        try:
            stamp_s = stamp_seconds(msg.header)
            now_s = self.get_clock().now().nanoseconds * 1e-9
            if now_s - stamp_s > self.policy.settings.max_delay_s:
                self.ignored_old_events += 1
                return
            self._act(self.events_policy.on_events(msg.events))
        finally:
            self.events_in += 1

    def on_states(self, msg: PersonEmotionStateArray) -> None:
        try:
            self._act(self.events_policy.on_states(msg))
        finally:
            self.states_in += 1

    def _act(self, actions: list[tuple[str, str]]) -> None:
        for action, track_id in actions:
            self._action_pubs[action].publish(String(data=track_id))
            self.actions.append((action, track_id))
            self.get_logger().info(f'{action} person {track_id}')

    @property
    def decision(self) -> tuple[str, str] | None:
        """The last published (attention_target, interaction_mode), None before the first."""
        return self._published

    def _publish(self, target: str, mode: str) -> None:
        if self._published is not None and (target, mode) == self._published:
            return
        if self._published is None or target != self._published[0]:
            self._target_pub.publish(String(data=target))
        if self._published is None or mode != self._published[1]:
            self._mode_pub.publish(String(data=mode))
        self._published = (target, mode)


def main(args: list[str] | None = None) -> int:
    # rclpy.init()/try_shutdown() rather than `with rclpy.init():`, which Humble's rclpy lacks
    rclpy.init(args=args)
    try:
        rclpy.spin(BehaviourNode())
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
