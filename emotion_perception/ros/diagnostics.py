"""Counters, rates and latency percentiles of a node, published as ``DiagnosticArray`` at 1 Hz.

Thread-safe: callbacks and worker threads update it, a timer publishes it.
"""
from __future__ import annotations

import collections
import threading
import time
from typing import Iterable

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

OK, WARN, ERROR, STALE = (DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR,
                          DiagnosticStatus.STALE)


class NodeStats:
    """What a node counts: events by name (inputs, outputs, drops.<reason>, errors.<reason>),
    latencies (bounded window) and per-second rates over a sliding window."""

    def __init__(self, window: int = 500, rate_window_s: float = 5.0) -> None:
        self._lock = threading.Lock()
        self.counts: collections.Counter[str] = collections.Counter()
        self._latency: collections.deque[float] = collections.deque(maxlen=window)
        self._events: dict[str, collections.deque[float]] = {}
        self._rate_window_s = rate_window_s
        self.last_output_time = 0.0

    #: a safety net: counters beyond this many names are summed in 'counters_overflow'
    MAX_NAMES = 512

    def count(self, name: str, n: int = 1) -> None:
        now = time.monotonic()
        with self._lock:
            if name not in self.counts and len(self.counts) >= self.MAX_NAMES:
                name = 'counters_overflow'
            self.counts[name] += n
            q = self._events.setdefault(name, collections.deque(maxlen=2048))
            q.extend([now] * min(n, 2048))

    def latency(self, ms: float) -> None:
        with self._lock:
            self._latency.append(float(ms))
            self.last_output_time = time.monotonic()

    def rate(self, name: str) -> float:
        now = time.monotonic()
        with self._lock:
            q = self._events.get(name)
            if not q:
                return 0.0
            recent = sum(1 for t in q if now - t <= self._rate_window_s)
        return recent / self._rate_window_s

    def percentiles(self, qs: Iterable[float] = (50, 90, 99)) -> dict[float, float]:
        with self._lock:
            data = np.array(self._latency, dtype=np.float64)
        if not data.size:
            return {q: float('nan') for q in qs}
        return {q: float(np.percentile(data, q)) for q in qs}

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)


def make_status(name: str, hardware_id: str, level: int, message: str,
                values: dict[str, object]) -> DiagnosticStatus:
    return DiagnosticStatus(level=level, name=name, hardware_id=hardware_id, message=message,
                            values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])


def diagnostics_msg(stamp, statuses: list[DiagnosticStatus]) -> DiagnosticArray:
    msg = DiagnosticArray()
    msg.header.stamp = stamp
    msg.status = statuses
    return msg
