"""Restart detection per detections publisher (issue 10): the emotion node clears its track cache
when the detector restarts, and only then.

What each RMW reports was read from its source (rmw_cyclonedds_cpp ``rmw_node.cpp``,
``message_info_from_sample_info``: publisher_gid = the DDS publication handle, both sequence
numbers = RMW_MESSAGE_INFO_SEQUENCE_NUMBER_UNSUPPORTED = UINT64_MAX; rclpy's
``Subscription::take_message`` turns UINT64_MAX into None, and only rclpy >= 9 passes the gid);
the unit tests feed those values. The in-process tests run the real node on this machine's
Fast DDS, where sequence numbers are real and the Jazzy rclpy gives no gid per message.
"""
import numpy as np
import pytest

from emotion_perception.ros.publisher_restarts import (SEQUENCE_NUMBER_UNSUPPORTED,
                                                       RestartDetector, gid_from_message_info,
                                                       known_sequence_number)

A, B, C = b'\x01' * 16, b'\x02' * 16, b'\x03' * 16


def run(detector, events):
    """events: (gid, seq, live) per message -> list of restart reasons (None = no restart)."""
    return [detector.observe(gid, seq, live) for gid, seq, live in events]


def test_unknown_sequence_numbers():
    for value in (None, 0, SEQUENCE_NUMBER_UNSUPPORTED, -3, True, 'x', 2**64 + 5):
        assert known_sequence_number(value) is None, value
    assert known_sequence_number(1) == 1 and known_sequence_number(2**63) == 2**63


def test_one_publisher_counting_up_is_never_a_restart():
    assert run(RestartDetector(), [(A, s, [A]) for s in range(1, 50)]) == [None] * 49


def test_a_publisher_replaced_by_a_new_one_is_one_restart():
    d = RestartDetector()
    out = run(d, [(A, 1, [A]), (A, 2, [A]), (A, 3, [A]), (B, 1, [B]), (B, 2, [B]), (B, 3, [B])])
    assert [r is not None for r in out] == [False, False, False, True, False, False]
    assert 'replaced' in out[3]


def test_the_same_publisher_counting_again_is_a_restart():
    """gid taken from the graph: a restarted detector that the graph still lists under the
    old gid shows as the sequence starting over."""
    out = run(RestartDetector(), [(A, 5, [A]), (A, 6, [A]), (A, 1, [A]), (A, 2, [A])])
    assert [r is not None for r in out] == [False, False, True, False]
    assert '6 -> 1' in out[2]


@pytest.mark.parametrize('unsupported', [None, SEQUENCE_NUMBER_UNSUPPORTED, 0])
def test_cyclonedds_unsupported_sequence_numbers_never_clear(unsupported):
    """rmw_cyclonedds_cpp: every message carries UINT64_MAX (None through rclpy), some RMWs
    0: no clearing and no counting from sequence numbers, whatever arrives."""
    d = RestartDetector()
    assert run(d, [(A, unsupported, [A])] * 30) == [None] * 30
    # with per-message gids (rclpy >= 9) a replaced publisher is still told by its gid
    assert d.observe(B, unsupported, [B]) is not None


def test_two_live_publishers_never_clear_the_cache():
    """rclpy >= 9: gids per message; two detectors on one topic, each counting from 1."""
    events = []
    for s in range(1, 20):
        events += [(A, s, [A, B]), (B, s, [A, B])]
    assert run(RestartDetector(), events) == [None] * len(events)


def test_publisher_unknown_concludes_nothing():
    """Jazzy rclpy with several publishers on the topic: no gid for the message."""
    d = RestartDetector()
    assert run(d, [(None, s % 3 + 1, None) for s in range(30)]) == [None] * 30
    assert d.publishers_seen == 0


def test_second_publisher_joining_then_first_leaving():
    d = RestartDetector()
    assert d.observe(A, 10, [A]) is None
    assert d.observe(B, 1, [A, B]) is None     # joins next to a live A: not a restart
    assert d.observe(B, 2, [B]) is None        # A left; B is known, counting up
    assert d.observe(C, 1, [C]) is not None    # C replaces B
    assert d.observe(C, 2, lambda: [C]) is None


def test_live_gids_are_only_queried_for_a_new_publisher():
    calls = []

    def live():
        calls.append(1)
        return [A]
    d = RestartDetector()
    for s in range(1, 10):
        d.observe(A, s, live)
    assert calls == []  # first publisher: nothing to compare with
    d.observe(B, 1, live)
    assert calls == [1]


def test_gid_from_message_info():
    assert gid_from_message_info({'publication_sequence_number': 3}) is None
    assert gid_from_message_info(None) is None
    info = {'publisher_gid': {'implementation_identifier': 'rmw_cyclonedds_cpp',
                              'data': b'\x07' + b'\x00' * 15}}
    assert gid_from_message_info(info) == b'\x07' + b'\x00' * 15
    assert gid_from_message_info({'publisher_gid': {'data': b'\x00' * 16}}) is None


# -- in-process: the real emotion node, two publishers on its detections topic ----------------
@pytest.mark.ros
def test_two_detection_publishers_keep_the_cache_a_replacing_one_clears_it():
    from emotion_perception.msg import PersonDetectionArray, PersonEmotion
    from emotion_perception.ros.image_conversion import numpy_to_image_msg
    from emotion_perception.ros.qos import RESULTS_QOS
    from emotion_perception.testing.node_rig import EmotionRig, det_array, header, key
    from emotion_perception.testing.ros_harness import RosHarness

    ok, cached = PersonEmotion.STATUS_OK, PersonEmotion.STATUS_CACHED
    persons = [('1', (0, 0, 32, 48)), ('2', (32, 0, 32, 48))]

    def image(stamp):
        rgb = np.random.default_rng(stamp).integers(0, 256, (48, 64, 3), dtype=np.uint8)
        return numpy_to_image_msg(rgb, 'rgb8', header=header(stamp))

    with RosHarness() as harness:
        rig = EmotionRig(harness, **{'reuse.enabled': True, 'reuse.max_age_s': 1000.0})

        def send(pub, stamp):
            before = rig.counts().get('images_in', 0)
            rig.img_pub.publish(image(stamp))
            assert harness.wait_for(lambda: rig.counts().get('images_in', 0) > before, 20)
            pub.publish(det_array(header(stamp), persons))
            assert harness.wait_for(lambda: rig.answers((stamp, 0)), 20), stamp
            return [p.status for p in rig.answers((stamp, 0))[0].persons]

        assert send(rig.det_pub, 1) == [ok, ok]
        assert send(rig.det_pub, 2) == [cached, cached]
        # a second publisher on the same topic, counting from 1 while the first is at 3
        second = harness.publisher(PersonDetectionArray, 'detections', RESULTS_QOS)
        assert harness.wait_matched(second)
        statuses = [send(pub, 3 + i) for i, pub in enumerate([second, rig.det_pub] * 3)]
        assert statuses == [[cached, cached]] * 6, statuses
        assert rig.counts().get('detector_restarts', 0) == 0
        # both go away, a new one comes: a restarted detector, whose ids name other people
        for pub in (rig.det_pub, second):
            harness.node.destroy_publisher(pub)
        assert harness.wait_for(lambda: rig.node.count_publishers('/detections') == 0, 10)
        third = harness.publisher(PersonDetectionArray, 'detections', RESULTS_QOS)
        assert harness.wait_matched(third)
        assert send(third, 20) == [ok, ok]  # cache cleared: evaluated afresh
        assert send(third, 21) == [cached, cached]
        assert rig.counts()['detector_restarts'] == 1
        assert len({key(m) for m in rig.out}) == len(rig.out)  # each array answered once
