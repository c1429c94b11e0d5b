"""QoS profiles for images, and a subscription option that warns on QoS mismatches.

The most common failure of perception nodes is silent: a camera publishing best-effort and a
subscriber asking for reliable (or the reverse for some drivers) never connect. Every image
subscription here registers an ``incompatible_qos`` callback that logs which policy is wrong.
"""
from __future__ import annotations

from typing import Callable

from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.qos import (HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data,
                       DurabilityPolicy)

RELIABILITY = {'best_effort': ReliabilityPolicy.BEST_EFFORT,
               'reliable': ReliabilityPolicy.RELIABLE}


def image_qos(reliability: str = 'best_effort', depth: int = 5) -> QoSProfile:
    """Sensor-data-like QoS (keep last ``depth``, volatile) with the given reliability."""
    if reliability not in RELIABILITY:
        raise ValueError(f'image_reliability must be one of {sorted(RELIABILITY)}, '
                         f'got {reliability!r}')
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=RELIABILITY[reliability],
                      durability=DurabilityPolicy.VOLATILE)


#: Detections/emotions are small (a few KB) and every array matters: reliable, with a deep
#: history. Measured (bench/bench_overload.py, 30 Hz, 5 persons, 300 ms backend): with depth 30
#: a reader whose executor stalls for about a second under load lost ~8% of the arrays
#: (KEEP_LAST overwrote them); with depth 200 (~6.7 s at 30 Hz, < 1 MB) none were lost.
#: Subscribers that must see every array should use this profile too.
RESULTS_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=200,
                         reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.VOLATILE)

#: Emotion events (onsets, offsets, left: ``emotion_events``) are rare and each one matters: a
#: lost onset is a greeting the robot never makes. Reliable with the same deep history as
#: RESULTS_QOS (an array per frame at most: 200 arrays are ~6.7 s at 30 Hz), and transient local:
#: the publisher keeps them, so a subscriber that matches a moment after the first events (or
#: restarts) and asks for transient local gets them; volatile subscribers are compatible and get
#: the new ones only. Late-joining subscribers should ignore events older than they care for.
EVENTS_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=200,
                        reliability=ReliabilityPolicy.RELIABLE,
                        durability=DurabilityPolicy.TRANSIENT_LOCAL)

SENSOR_DATA = qos_profile_sensor_data


def warn_on_incompatible_qos(logger, topic: str,
                             on_event: Callable[[object], None] | None = None
                             ) -> SubscriptionEventCallbacks:
    """Event callbacks that log a clear warning when a publisher's QoS cannot match ours.

    Args:
        on_event: also called with each ``QoSRequestedIncompatibleQoSInfo`` event (e.g. to
            count it in the node's diagnostics).
    """
    def on_incompatible(event) -> None:
        if on_event is not None:
            on_event(event)
        logger.warning(
            f'QoS mismatch on {topic}: a publisher is incompatible with this subscription '
            f'(policy {event.last_policy_kind.name}, {event.total_count} incompatible so far); '
            'no messages will arrive. Set the image_reliability parameter to match the '
            "publisher (e.g. 'reliable' or 'best_effort').")
    return SubscriptionEventCallbacks(incompatible_qos=on_incompatible)
