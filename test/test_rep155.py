"""REP-155 input: pairing by stamp, bounded memory, threads (issue 25, items 3 and 4).

Real messages over DDS: the images (bus.jpg, raw and JPEG-compressed), tracked lists and rois
come from another process (``testing.detection_peer publish``); the emotion node runs here with
a fake backend. The threading checks drive the node's own code paths (deactivate, a worker that
gives up, the tracked-list callback racing teardown).
"""
from __future__ import annotations

import threading
import time

import pytest

from test_detection_formats import (BUS, TRANSPORTS, answer, body_frame, harness,  # noqa: F401
                                    needs_interfaces, norm, run_peer, start_node)

pytestmark = pytest.mark.ros

OK, CACHED, SKIPPED, ERROR = 0, 1, 2, 3
TRACKED = '/humans/bodies/tracked'


def tracked(ids, stamp):
    return {'kind': 'ids', 'topic': TRACKED, 'ids': list(ids), 'stamp': list(stamp)}


def roi(body, stamp, box):
    return {'kind': 'roi', 'topic': f'/humans/bodies/{body}/roi', 'stamp': list(stamp),
            'xyxy': box}


def image(stamp, transport):
    return {'kind': 'image', 'photo': 'bus', 'stamp': list(stamp), 'transport': transport}


def persons(msg):
    return [(p.track_id, p.status, p.status_reason) for p in msg.persons]


BOX = {'a': norm(*BUS[0]), 'b': norm(*BUS[1]), 'c': norm(*BUS[2])}


@needs_interfaces
@pytest.mark.parametrize('transport', TRANSPORTS)
def test_a_frame_pairs_with_the_tracked_list_of_its_own_stamp(harness, tmp_path, transport):
    """Frame 20: list {a}, c appears at 21 (the newest list when frame 20 comes): frame 20 is
    answered with a alone at once (it waited pair_timeout_s for c's roi and answered c ERROR).
    Frame 30: list {a, b}, b left at 31: frame 30 still has b (it was silently missing)."""
    node, out = start_node(harness, detections_format='rep155', image_transport=transport,
                           pair_timeout_s=20.0)
    run_peer(tmp_path, [
        tracked('abc', (5, 0)), {'kind': 'sleep', 's': 0.5},   # every roi subscribed
        roi('a', (20, 0), BOX['a']), roi('a', (21, 0), BOX['a']), roi('c', (21, 0), BOX['c']),
        roi('a', (30, 0), BOX['a']), roi('b', (30, 0), BOX['b']), roi('a', (31, 0), BOX['a']),
        {'kind': 'sleep', 's': 0.5},
        tracked('a', (20, 0)), tracked('ac', (21, 0)), {'kind': 'sleep', 's': 0.5},
        image((20, 0), transport), {'kind': 'await', 'stamp': [20, 0], 'timeout_s': 5},
        tracked('ab', (30, 0)), tracked('a', (31, 0)), {'kind': 'sleep', 's': 0.5},
        image((30, 0), transport), {'kind': 'await', 'stamp': [30, 0], 'timeout_s': 5},
    ])
    first = answer(harness, out, (20, 0), timeout=5)   # not after pair_timeout_s (20 s)
    assert persons(first) == [('a', OK, '')]
    left = answer(harness, out, (30, 0), timeout=5)
    assert persons(left) == [('a', OK, ''), ('b', OK, '')]
    assert 'errors.no_roi_for_this_stamp' not in node.stats.snapshot()


@needs_interfaces
@pytest.mark.parametrize('transport', TRANSPORTS)
def test_body_frames_answered_unprocessed_say_the_real_reason(harness, tmp_path, transport):
    """A frame still waiting for a roi at deactivate: the body with a roi is SKIPPED 'node
    deactivated', with its box; the other ERROR 'no roi'. Compressed frames said 'image size
    unknown' for both (the boxes were made before the size was known)."""
    node, out = start_node(harness, detections_format='rep155', image_transport=transport,
                           pair_timeout_s=30.0)
    run_peer(tmp_path, [tracked('ab', (40, 0)), {'kind': 'sleep', 's': 0.5},
                        roi('a', (41, 0), BOX['a']), image((41, 0), transport)])
    assert harness.wait_for(lambda: node.stats.snapshot().get('images_in', 0) >= 1
                            and node.stats.snapshot().get('rep155.rois_in', 0) >= 1, 10)
    assert not out
    assert node.trigger_deactivate().name == 'SUCCESS'
    msg = answer(harness, out, (41, 0), timeout=5)
    assert persons(msg) == [('a', SKIPPED, 'node deactivated before processing'),
                            ('b', ERROR, 'no roi for this stamp')]
    x1, y1 = msg.persons[0].bbox.x_offset, msg.persons[0].bbox.y_offset
    assert abs(x1 - (BUS[0][0] - BUS[0][2] / 2)) <= 1 and abs(y1 - (BUS[0][1] - BUS[0][3] / 2)) <= 1


@needs_interfaces
@pytest.mark.parametrize('transport', TRANSPORTS)
def test_body_frames_waiting_for_rois_are_bounded_in_count_and_bytes(harness, tmp_path,
                                                                     transport):
    """A roi that never comes: at most image_cache_size frames, image_cache_mb of images, wait
    (raw bus.jpg frames are 2.6 MB: the bytes bound; JPEG ones the count); the older ones are
    answered SKIPPED with why (they waited, bounded by max_pending = 100 full images, and the
    overflow said 'queue full')."""
    node, out = start_node(harness, detections_format='rep155', image_transport=transport,
                           pair_timeout_s=30.0, image_cache_size=4, image_cache_mb=6.0)
    frames = [(50 + i, 0) for i in range(8)]
    run_peer(tmp_path, [tracked('ab', (49, 0)), {'kind': 'sleep', 's': 0.5},
                        *[step for s in frames for step in (image(s, transport),
                                                            roi('a', s, BOX['a']),
                                                            {'kind': 'sleep', 's': 0.1})]])
    keep = 2 if transport == 'raw' else 4
    assert harness.wait_for(lambda: len(out) == len(frames) - keep, 10), node.stats.snapshot()
    time.sleep(0.3)
    assert len(out) == len(frames) - keep
    for msg in out:   # b's roi never came
        [(a, a_status, reason), (b, b_status, b_reason)] = persons(msg)
        assert (a, a_status, b, b_status, b_reason) == ('a', SKIPPED, 'b', ERROR,
                                                       'no roi for this stamp')
        assert 'newer camera frames were waiting for their body rois' in reason, reason
    assert node.stats.snapshot()['drops.body_frames_full'] == len(frames) - keep
    values = node.diagnostics()[2]
    assert values['body_frames_waiting'] == keep
    assert float(values['images_held_mb']) <= 6.0
    assert not node._images   # rep155 frames hold their image: no second copy in the cache
    assert node.trigger_deactivate().name == 'SUCCESS'
    assert harness.wait_for(lambda: len(out) == len(frames), 5)


class _Killed(BaseException):
    """Not an ``Exception``: ends the worker loop (as in test_worker_survival)."""


@needs_interfaces
def test_a_worker_that_gave_up_answers_and_clears_the_body_frames(harness, tmp_path):
    node, out = start_node(harness, detections_format='rep155', pair_timeout_s=0.5)
    node._worker.max_restarts = 1

    def always_dying(job, image):
        raise _Killed('injected')
    node._process = always_dying
    frames = [(60 + i, 0) for i in range(6)]
    run_peer(tmp_path, [tracked('a', (59, 0)), {'kind': 'sleep', 's': 0.5},
                        *[step for s in frames for step in (image(s, 'raw'),
                                                            roi('a', s, BOX['a']),
                                                            {'kind': 'sleep', 's': 0.3})]])
    assert harness.wait_for(lambda: len(out) == len(frames), 10), (len(out), node._waiting)
    assert not node._worker.running and not node._waiting
    reasons = [p.status_reason for m in out for p in m.persons]
    assert [p.status for m in out for p in m.persons] == [ERROR] * len(frames)
    assert all('worker thread' in r for r in reasons), reasons
    assert all('worker thread not running' in r for r in reasons[-2:]), reasons


@needs_interfaces
def test_deactivate_takes_the_waiting_body_frames_under_the_lock(harness, tmp_path):
    node, out = start_node(harness, detections_format='rep155', pair_timeout_s=30.0)
    held = []
    take = node._bodies.take

    def checked_take(key):
        held.append(node._cond._is_owned())
        return take(key)
    node._bodies.take = checked_take
    run_peer(tmp_path, [tracked('ab', (70, 0)), {'kind': 'sleep', 's': 0.5},
                        image((71, 0), 'raw'), image((72, 0), 'raw')])
    assert harness.wait_for(lambda: node.stats.snapshot().get('images_in', 0) == 2, 10)
    assert node.trigger_deactivate().name == 'SUCCESS'
    assert held == [True, True]
    assert harness.wait_for(lambda: len(out) == 2, 5)


@needs_interfaces
def test_per_id_subscriptions_torn_down_while_a_tracked_list_callback_follows(harness):
    """close() (deactivate, transition thread) racing follow() (a tracked-list callback that
    was already running): afterwards no per-id subscription is left, and a late follow()
    creates none (it re-created them: unsubscribed topics that kept receiving)."""
    from rclpy.node import Node

    from emotion_perception.ros import rep155
    from emotion_perception.ros.diagnostics import NodeStats
    from emotion_perception.ros.node_utils import KindLogger
    hri = rep155.load()
    node = harness.add(Node('rep155_teardown', context=harness.context))
    node.stats, node.kind_log = NodeStats(), KindLogger(node.get_logger())

    def per_id():
        return [s for s in node.subscriptions if s.topic_name.startswith('/humans/bodies/')]
    for attempt in range(5):
        subs = rep155.IdSubscriptions(node, rep155.BODIES, 'roi',
                                      hri.NormalizedRegionOfInterest2D, lambda i, m: None, 64)
        stop = threading.Event()
        errors = []

        def follow():
            n = 0
            try:
                while not stop.is_set():
                    subs.follow([f'b{(n + k) % 97}' for k in range(8)])
                    n += 3
            except Exception as exc:  # noqa: BLE001 - reported by the test
                errors.append(repr(exc))
        thread = threading.Thread(target=follow)
        thread.start()
        time.sleep(0.05 + 0.05 * attempt)
        subs.close()
        time.sleep(0.05)
        stop.set()
        thread.join()
        assert not errors
        assert per_id() == [] and subs.subscribed() == []
        subs.follow(['late'])
        assert per_id() == []
    assert not harness.spin_errors


@needs_interfaces
def test_image_cache_is_bounded_in_bytes_too(harness, tmp_path):
    """Native input: raw bus.jpg frames (2.6 MB) with image_cache_mb 6: two stay cached, the
    detections of the first of four frames find their image evicted."""
    node, out = start_node(harness, image_cache_mb=6.0)
    det = [{'id': '1', 'cxcywh': list(BUS[0])}]
    run_peer(tmp_path, [*[step for i in range(4) for step in (image((80 + i, 0), 'raw'),
                                                              {'kind': 'sleep', 's': 0.1})],
                        {'kind': 'sleep', 's': 0.5},
                        {'kind': 'native', 'stamp': [80, 0], 'detections': det},
                        {'kind': 'native', 'stamp': [83, 0], 'detections': det}])
    evicted = answer(harness, out, (80, 0))
    assert evicted.persons[0].status == ERROR
    assert 'image evicted' in evicted.persons[0].status_reason
    assert answer(harness, out, (83, 0)).persons[0].status == OK
    assert len(node._images) == 2 and node.stats.snapshot()['images_evicted'] == 2
