#!/usr/bin/env python3
"""Overload of the emotion node (issue 5): a 30 Hz camera with 5 people and a backend that
takes 300 ms per call, for 60 s, in-process on real topics.

What it shows, as a table:
* memory stays flat: RSS after warm-up and at the end; the peaks of the bounded structures
  (image cache, pending detections, track cache) sampled while running;
* stale frames are dropped on purpose (latest-wins) and every detections array still gets
  exactly one emotions array (persons OK, CACHED or SKIPPED);
* the drops and their reasons are exact: the node's counters (what /diagnostics carries, read
  from a real /diagnostics message after the run) equal what the subscriber saw.

The camera and the detector are simulated: every frame publishes a ``sensor_msgs/Image`` and
then its ``PersonDetectionArray`` (5 tracked persons, 4 of them walking at 1-4 px per frame, so
the track cache is missed regularly and the model runs). The backend is
``emotion_perception.testing.fake_backends:SlowBackend`` (sleeps ``--delay`` per call).
Exit code 1 when an invariant fails.

    .venv/bin/python bench/bench_overload.py               # 60 s
    .venv/bin/python bench/bench_overload.py --seconds 8 --json out/overload.json
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import random
import sys
import threading
import time
import types

os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
os.environ.setdefault('ROS_DOMAIN_ID', str(random.SystemRandom().randint(10, 200)))
os.environ.setdefault('HF_HUB_OFFLINE', '1')

import numpy as np  # noqa: E402
import psutil  # noqa: E402

from emotion_perception.msg import PersonEmotion  # noqa: E402
from emotion_perception.ros.image_conversion import numpy_to_image_msg  # noqa: E402
from emotion_perception.testing import fake_backends as fb  # noqa: E402
from emotion_perception.testing.node_rig import EmotionRig, det_array, header, key  # noqa: E402
from emotion_perception.testing.ros_harness import RosHarness  # noqa: E402

STATUS = {PersonEmotion.STATUS_OK: 'ok', PersonEmotion.STATUS_CACHED: 'cached',
          PersonEmotion.STATUS_SKIPPED: 'skipped', PersonEmotion.STATUS_ERROR: 'error'}
#: reason prefixes of arrays answered without evaluation -> node counter
DROP_REASONS = {'dropped: stale frame': 'drops.stale_frame',
                'dropped: queue full': 'drops.queue_full'}
MB = 1 / (1 << 20)


class Answer:
    """What the bench keeps of one emotions array (not the message: 1800 messages would grow
    the process's RSS by ~20 MB and hide the node's own memory behaviour)."""

    __slots__ = ('header', 'persons')

    def __init__(self, msg) -> None:
        self.header = types.SimpleNamespace(stamp=types.SimpleNamespace(
            sec=msg.header.stamp.sec, nanosec=msg.header.stamp.nanosec))
        self.persons = tuple(Person(p) for p in msg.persons)


class Person:
    __slots__ = ('status', 'status_reason')

    def __init__(self, p) -> None:
        self.status = p.status
        self.status_reason = sys.intern(p.status_reason)


def rss_mb() -> float:
    return psutil.Process().memory_info().rss * MB


def run(seconds: float = 60.0, rate_hz: float = 30.0, persons: int = 5, delay_s: float = 0.3,
        width: int = 320, height: int = 240, warmup_s: float = 2.0) -> dict:
    """Run the overload scenario; returns the figures (see the module docstring)."""
    frames = int(round(seconds * rate_hz))
    with RosHarness('overload_bench', threads=4) as harness:
        rig = EmotionRig(harness, fb.SlowBackend, diagnostics_period_s=1.0, keep=Answer,
                         **{'backend.model': f'delay={delay_s}', 'reuse.enabled': True,
                            'pair_timeout_s': 1.0,
                            # frames lost in the middleware under a stalled executor are not the
                            # node's drops (they would be answered ERROR 'no image'): 1 s of them
                            'image_queue_depth': int(rate_hz)})
        node = rig.node
        rng = np.random.default_rng(0)
        rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        image = numpy_to_image_msg(rgb, 'rgb8')
        bw, bh = max(8, width // 8), max(16, height // 3)

        def boxes(i: int) -> list:
            out = []
            for k in range(persons):
                span = max(1, width - bw)
                x = (k * span // max(1, persons) + k * i) % span  # person k walks k px/frame
                out.append((str(k + 1), (x, height // 3, bw, bh)))
            return out

        peaks = collections.Counter()
        stop = threading.Event()
        rss_trace: list[tuple[float, float]] = []  # (seconds since start, MB)

        def monitor() -> None:
            last_rss = -1.0
            while not stop.is_set():
                t = time.monotonic() - t0
                if t - last_rss >= 1.0:
                    rss_trace.append((t, rss_mb()))
                    last_rss = t
                with node._cond:
                    sizes = {'image_cache': len(node._images), 'pending': len(node._pending)}
                sizes['track_cache'] = len(node.pipeline.cache)
                for k, v in sizes.items():
                    peaks[k] = max(peaks[k], v)
                stop.wait(0.05)
        sent: list[tuple[int, int]] = []
        rss_start = None
        t0 = time.monotonic()
        mon = threading.Thread(target=monitor, daemon=True)
        mon.start()
        base_sec = 1_000
        for i in range(frames):
            target = t0 + i / rate_hz
            now = time.monotonic()
            if target > now:
                time.sleep(target - now)
            if rss_start is None and time.monotonic() - t0 >= warmup_s:
                rss_start = rss_mb()
            ns = round(i * 1e9 / rate_hz)
            hdr = header(base_sec + ns // 10**9, ns % 10**9)
            image.header = hdr
            rig.img_pub.publish(image)
            msg = det_array(hdr, boxes(i), width, height)
            rig.det_pub.publish(msg)
            sent.append(key(msg))
        stream_s = time.monotonic() - t0
        if rss_start is None:
            rss_start = rss_mb()
        # every array must come back; then one more /diagnostics message after the last answer
        harness.wait_for(lambda: len(rig.out) >= len(sent), 60.0)
        harness.wait_for(lambda: False, 0.5)  # nothing more may arrive
        n_diag = len(rig.diagnostics)
        harness.wait_for(lambda: len(rig.diagnostics) >= n_diag + 2, 10.0)
        rss_end = rss_mb()
        stop.set()
        mon.join()
        out = list(rig.out)
        diag_values = {kv.key: kv.value for kv in rig.diagnostics[-1].status[0].values} \
            if rig.diagnostics else {}
        level, message, _ = node.diagnostics()
        counts = node.stats.snapshot()

    answered = collections.Counter(key(m) for m in out)
    person_status = collections.Counter(STATUS[p.status] for m in out for p in m.persons)
    seen_drops = collections.Counter()
    for m in out:
        reasons = {p.status_reason for p in m.persons}
        for prefix, counter in DROP_REASONS.items():
            if m.persons and all(r.startswith(prefix) for r in reasons):
                seen_drops[counter] += 1
    seen_errors = collections.Counter(p.status_reason.split(':')[0] for m in out
                                      for p in m.persons if p.status == PersonEmotion.STATUS_ERROR)
    return {
        'seconds': seconds, 'stream_s': round(stream_s, 2), 'rate_hz': rate_hz,
        'persons': persons, 'delay_s': delay_s, 'image': f'{width}x{height} rgb8',
        'frames_sent': len(sent), 'arrays_received': len(out),
        'arrays_unanswered': sum(1 for k in sent if answered[k] == 0),
        'arrays_answered_twice': sum(1 for n in answered.values() if n > 1),
        'persons_by_status': dict(person_status),
        'drops_seen_by_subscriber': {k: seen_drops.get(k, 0) for k in DROP_REASONS.values()},
        'drops_in_node': {k: counts.get(k, 0) for k in DROP_REASONS.values()},
        'drops_in_diagnostics_msg': {k: int(diag_values.get(k, 0)) for k in DROP_REASONS.values()},
        'errors_seen_by_subscriber': dict(seen_errors),
        'node_counters': counts,
        'diagnostics_level_after': ord(level) if isinstance(level, bytes) else int(level), 'diagnostics_message_after': message,
        'rss_mb_start': round(rss_start, 1), 'rss_mb_end': round(rss_end, 1),
        'peak_image_cache': peaks['image_cache'], 'peak_pending': peaks['pending'],
        'peak_track_cache': peaks['track_cache'],
        'rss_mb_quarters': [round(_rss_at(rss_trace, stream_s * q), 1) for q in (0.25, 0.5, 0.75)],
    }


def _rss_at(trace: list[tuple[float, float]], t: float) -> float:
    return min(trace, key=lambda s: abs(s[0] - t))[1] if trace else float('nan')


def check(r: dict, max_rss_growth_mb: float = 50.0) -> list[str]:
    """The invariants; returns what failed (empty = all hold)."""
    failed = []
    if r['arrays_unanswered'] or r['arrays_answered_twice'] or \
            r['arrays_received'] != r['frames_sent']:
        failed.append('every detections array answered exactly once')
    if r['drops_seen_by_subscriber'] != r['drops_in_node']:
        failed.append('node drop counters == drops seen by the subscriber')
    if r['drops_in_diagnostics_msg'] != r['drops_in_node']:
        failed.append('/diagnostics drop counters == node counters')
    if r['node_counters'].get('emotions_out') != r['arrays_received'] or \
            r['node_counters'].get('detections_in') != r['frames_sent']:
        failed.append('node in/out counters == what was sent/received')
    if r['drops_in_node']['drops.stale_frame'] == 0:
        failed.append('stale frames dropped under overload')
    if r['rss_mb_end'] - r['rss_mb_start'] > max_rss_growth_mb:
        failed.append(f'RSS growth <= {max_rss_growth_mb} MB')
    return failed


def table(r: dict) -> str:
    c = r['node_counters']
    rows = [
        ('scenario', f"{r['rate_hz']:g} Hz camera ({r['image']}), {r['persons']} persons, "
                     f"backend {r['delay_s'] * 1e3:.0f} ms/call, {r['seconds']:g} s"),
        ('frames (images + detections arrays) sent', r['frames_sent']),
        ('emotions arrays received', r['arrays_received']),
        ('arrays unanswered / answered twice',
         f"{r['arrays_unanswered']} / {r['arrays_answered_twice']}"),
        ('persons by status', ', '.join(f'{k} {v}' for k, v in
                                        sorted(r['persons_by_status'].items()))),
        ('model calls (persons) / cache hits', f"{c.get('model_calls', 0)} / "
                                               f"{c.get('cache_hits', 0)}"),
    ]
    for k in r['drops_in_node']:
        rows.append((f'{k}: node / subscriber / /diagnostics',
                     f"{r['drops_in_node'][k]} / {r['drops_seen_by_subscriber'][k]} / "
                     f"{r['drops_in_diagnostics_msg'][k]}"))
    errors = {k: v for k, v in c.items() if k.startswith('errors.')}
    rows += [
        ('errors (node counters)', ', '.join(f'{k} {v}' for k, v in errors.items()) or 'none'),
        ('RSS start (after warm-up) / end, MB', f"{r['rss_mb_start']} / {r['rss_mb_end']} "
                                                f"({r['rss_mb_end'] - r['rss_mb_start']:+.1f})"),
        ('RSS at 25% / 50% / 75% of the run, MB', ' / '.join(map(str, r['rss_mb_quarters']))),
        ('peak image cache / pending / track cache',
         f"{r['peak_image_cache']} / {r['peak_pending']} / {r['peak_track_cache']}"),
        ('images evicted from the cache', c.get('images_evicted', 0)),
        ('diagnostics after the run', r['diagnostics_message_after']),
    ]
    width = max(len(a) for a, _ in rows)
    lines = [f"| {'quantity':<{width}} | value |", f"|{'-' * (width + 2)}|-------|"]
    lines += [f'| {a:<{width}} | {b} |' for a, b in rows]
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--seconds', type=float, default=60.0, help='camera run time (default 60)')
    ap.add_argument('--rate', type=float, default=30.0, help='camera rate in Hz')
    ap.add_argument('--persons', type=int, default=5)
    ap.add_argument('--delay', type=float, default=0.3, help='backend seconds per call')
    ap.add_argument('--width', type=int, default=320)
    ap.add_argument('--height', type=int, default=240)
    ap.add_argument('--max-rss-growth-mb', type=float, default=50.0)
    ap.add_argument('--json', help='also write the figures to this file')
    args = ap.parse_args(argv)
    r = run(args.seconds, args.rate, args.persons, args.delay, args.width, args.height)
    failed = check(r, args.max_rss_growth_mb)
    r['invariants_failed'] = failed
    print('### Emotion node under overload\n')
    print(table(r))
    print(f"\ninvariants: {'all hold' if not failed else 'FAILED: ' + '; '.join(failed)}")
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(r, f, indent=1)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
