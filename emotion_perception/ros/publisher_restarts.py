"""Telling a restarted detections publisher from a second one, per publisher (no rclpy here).

Why: after the detector restarts, its track ids start over and may name other people than the
emotion node's cached tracks, so the track cache must be cleared. A restart shows in what the
middleware reports with each message (``message_info``):

* the **publisher's gid** (the DDS writer's GUID): a restarted detector is a new writer with a
  new gid. rclpy passes it per message from rclpy 9 on (``message_info['publisher_gid']``); the
  Jazzy wheel (rclpy 7.1.6, ``Subscription::take_message``) does not, so the node takes it from
  the ROS graph (``get_publishers_info_by_topic``) when exactly one publisher is on the topic,
  and treats the message as "publisher unknown" when there are several.
* the **publication sequence number**, counted per writer from 1. rmw_fastrtps reports it;
  rmw_cyclonedds_cpp sets ``RMW_MESSAGE_INFO_SEQUENCE_NUMBER_UNSUPPORTED`` (UINT64_MAX) on every
  message (``message_info_from_sample_info`` in its rmw_node.cpp; rclpy turns that into None),
  and some RMWs leave it 0. Those values mean "unknown", never a restart.

Rules of :meth:`RestartDetector.observe` (one call per received message):

1. Publisher unknown (several publishers, no per-message gid): nothing is concluded.
2. A publisher seen before: a restart only if its known sequence number did not grow (the
   same identity counting again from the start). An unknown sequence number concludes nothing.
3. A publisher not seen before: a restart when publishers were seen before and none of them is
   still on the topic (it replaced them); a second publisher next to a live one is not a
   restart (two publishers on one topic must not clear the cache).
"""
from __future__ import annotations

import collections
from typing import Any, Callable, Iterable, Mapping

#: ``RMW_MESSAGE_INFO_SEQUENCE_NUMBER_UNSUPPORTED`` (rmw/types.h)
SEQUENCE_NUMBER_UNSUPPORTED = 2**64 - 1


def known_sequence_number(value: Any) -> int | None:
    """The sequence number, or None when the middleware does not really report one
    (None, UINT64_MAX, 0, or not an integer)."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    if value <= 0 or value >= SEQUENCE_NUMBER_UNSUPPORTED:
        return None
    return value


def gid_from_message_info(info: Mapping[str, Any] | None) -> bytes | None:
    """The publisher gid rclpy >= 9 puts into ``message_info`` (None when absent or empty)."""
    gid = (info or {}).get('publisher_gid')
    if isinstance(gid, Mapping):
        gid = gid.get('data')
    if isinstance(gid, (bytes, bytearray)) and any(gid):
        return bytes(gid)
    if isinstance(gid, (list, tuple)) and any(gid):
        return bytes(gid)
    return None


class RestartDetector:
    """Per-publisher sequence bookkeeping; see the module docstring for the rules.

    Not thread-safe: call from one thread (or under a lock).
    """

    def __init__(self, max_publishers: int = 16) -> None:
        #: gid -> last known sequence number (None: none known yet), oldest first
        self._last: collections.OrderedDict[bytes, int | None] = collections.OrderedDict()
        self._max = max_publishers

    @property
    def publishers_seen(self) -> int:
        return len(self._last)

    def observe(self, gid: bytes | None, sequence: Any,
                live_gids: Iterable[bytes] | Callable[[], Iterable[bytes]] | None = None
                ) -> str | None:
        """Record one message; return why it shows a restart, or None.

        Args:
            gid: the publisher of this message (None: unknown).
            sequence: its publication sequence number as reported (None/0/UINT64_MAX: unknown).
            live_gids: the gids of the publishers on the topic now (None: unknown), or a
                function returning them; only consulted for a publisher not seen before.
        """
        seq = known_sequence_number(sequence)
        if gid is None:
            return None
        if gid in self._last:
            last = self._last[gid]
            self._last.move_to_end(gid)
            if seq is None:
                return None
            self._last[gid] = seq
            if last is not None and seq <= last:
                return (f'the sequence number of the detections publisher started over '
                        f'({last} -> {seq})')
            return None
        previous = list(self._last)
        self._last[gid] = seq
        while len(self._last) > self._max:
            self._last.popitem(last=False)
        if not previous:
            return None
        if live_gids is None:
            return 'a new detections publisher replaced the previous one'
        live = set(live_gids() if callable(live_gids) else live_gids)
        if any(g in live for g in previous):
            return None  # a second publisher next to a live one
        for g in previous:
            self._last.pop(g, None)  # gone for good
        return 'a new detections publisher replaced the previous one (it left the topic)'
