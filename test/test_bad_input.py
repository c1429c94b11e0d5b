"""Bad input, published to the running nodes (issue 5): the node keeps running, the affected
persons are answered ERROR/SKIPPED with a specific reason, and a counter per kind appears in
``node.stats`` (what /diagnostics publishes).

RegionOfInterest fields are unsigned integers, so NaN or negative boxes cannot come through a
message: the ROI cases possible on the wire are zero width/height and boxes partly or entirely
outside the image. NaN/inverted boxes are covered at the core level (``BBox.clipped``,
``EmotionBackend.predict``) by the hypothesis tests at the end.
"""
import array
import math
import tracemalloc
import types

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rclpy.parameter import Parameter
from sensor_msgs.msg import CompressedImage, Image

from emotion_perception.core.pipeline import EmotionPipeline, ReuseOptions
from emotion_perception.core.types import BBox, BoxError, PersonDetection, Status
from emotion_perception.msg import PersonDetectionArray, PersonEmotion
from emotion_perception.nodes.person_detector import PersonDetectorNode
from emotion_perception.ros.diagnostics import WARN
from emotion_perception.ros.image_conversion import (ENCODINGS, ImageConversionError,
                                                     compressed_to_rgb, image_msg_to_rgb,
                                                     numpy_to_image_msg, rgb_to_compressed)
from emotion_perception.ros.messages import bbox_to_roi, roi_to_bbox
from emotion_perception.ros.node_utils import KindLogger, decode_image
from emotion_perception.ros.qos import RESULTS_QOS, image_qos
from emotion_perception.testing import fake_backends as fb
from emotion_perception.testing.node_rig import EmotionRig, det_array, header
from emotion_perception.testing.ros_harness import RosHarness

pytestmark = pytest.mark.ros

W, H = 64, 48
ERROR, SKIPPED, OK, CACHED = (PersonEmotion.STATUS_ERROR, PersonEmotion.STATUS_SKIPPED,
                              PersonEmotion.STATUS_OK, PersonEmotion.STATUS_CACHED)
KINDS = {'unknown_encoding', 'zero_size', 'too_large', 'step_too_small', 'data_too_short',
         'no_data', 'corrupt', 'invalid', 'odd_width', 'unsupported_format'}


def rgb_image(seed=0, w=W, h=H):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def image_msg(stamp, **changes):
    msg = numpy_to_image_msg(rgb_image(stamp), 'rgb8', header=header(stamp))
    for k, v in changes.items():
        setattr(msg, k, v)
    return msg


PERSONS = [('1', (0, 0, 32, 48)), ('2', (32, 0, 32, 48))]


@pytest.fixture
def harness():
    with RosHarness() as h:
        yield h


def assert_still_answers(rig, stamp):
    ans = rig.send(det_array(header(stamp), PERSONS), image_msg(stamp))
    assert [p.status for p in ans.persons] == [OK, OK], [p.status_reason for p in ans.persons]


# -- images --------------------------------------------------------------------------------------
BAD_IMAGES = [  # (name, message changes, kind)
    ('unknown encoding', dict(encoding='yuv422_weird'), 'unknown_encoding'),
    ('step smaller than a row', dict(step=W * 3 - 1), 'step_too_small'),
    ('data shorter than step*height', None, 'data_too_short'),
    ('zero width', dict(width=0, step=0, data=array.array('B')), 'zero_size'),
    ('zero height', dict(height=0, data=array.array('B')), 'zero_size'),
    ('absurd size', dict(width=200_000, height=100_000, step=600_000), 'too_large'),
]


def test_bad_raw_images_answered_error_counted_and_on_diagnostics(harness):
    rig = EmotionRig(harness, diagnostics_period_s=0.2)
    for i, (name, changes, kind) in enumerate(BAD_IMAGES):
        stamp = 10 + i
        if changes is None:  # truncated data
            msg = image_msg(stamp)
            msg.data = msg.data[: len(msg.data) // 2]
        else:
            msg = image_msg(stamp, **changes)
        ans = rig.send(det_array(header(stamp), PERSONS), msg)
        assert [p.status for p in ans.persons] == [ERROR, ERROR], name
        for p in ans.persons:
            assert p.status_reason.startswith(f'bad image ({kind})'), (name, p.status_reason)
            assert all(math.isnan(s) for s in p.scores)
        assert_still_answers(rig, 100 + i)
    counts = rig.counts()
    assert counts['errors.bad_image'] == len(BAD_IMAGES)
    for kind, n in (('unknown_encoding', 1), ('step_too_small', 1), ('data_too_short', 1),
                    ('zero_size', 2), ('too_large', 1)):
        assert counts[f'errors.bad_image.{kind}'] == n, counts
    # the same counters on a real /diagnostics message, with a WARN level
    def diag_has_counter():
        for arr in list(rig.diagnostics):
            for st_ in arr.status:
                values = {kv.key: kv.value for kv in st_.values}
                if values.get('errors.bad_image.zero_size') == '2':
                    return st_, values
        return None
    assert harness.wait_for(lambda: diag_has_counter() is not None, 10)
    status, values = diag_has_counter()
    assert status.level == WARN and 'errors' in status.message
    for k in ('images_in_hz', 'detections_in_hz', 'emotions_out_hz', 'latency_ms_p50',
              'latency_ms_p90', 'latency_ms_p99', 'queue_depth', 'cache_hits', 'model_calls',
              'tracks_cached', 'model', 'device', 'backend', 'oom_retries', 'model_loaded'):
        assert k in values, k
    assert values['backend'] == 'fake' and values['device'] == 'cpu'


def test_max_image_pixels_parameter_refuses_before_decoding(harness):
    rig = EmotionRig(harness, max_image_pixels=W * H - 1)
    ans = rig.send(det_array(header(1), PERSONS), image_msg(1))
    assert all(p.status == ERROR and 'too_large' in p.status_reason and 'max_pixels'
               in p.status_reason for p in ans.persons)
    assert rig.counts()['errors.bad_image.too_large'] == 1


def test_absurd_image_is_refused_without_allocating():
    """200000 x 100000 rgb8 would be 60 GB: refused on the header, allocating almost nothing."""
    msg = image_msg(1, width=200_000, height=100_000, step=600_000)
    tracemalloc.start()
    try:
        with pytest.raises(ImageConversionError) as err:
            decode_image(msg)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert err.value.kind == 'too_large' and peak < 1_000_000


def _compressed(data, stamp):
    msg = CompressedImage(header=header(stamp), format='jpeg')
    msg.data = array.array('B', bytes(data))
    return msg


def test_corrupt_compressed_images_answered_error(harness):
    rig = EmotionRig(harness, image_transport='compressed')
    good_png = bytes(rgb_to_compressed(rgb_image(), 'png').data)
    good_jpg = bytes(rgb_to_compressed(rgb_image(), 'jpeg').data)
    # a JPEG whose frame header claims 60000 x 60000 px: refused before decoding
    sof = good_jpg.index(b'\xff\xc0')
    huge_jpg = good_jpg[:sof + 5] + (60000).to_bytes(2, 'big') * 2 + good_jpg[sof + 9:]
    cases = [('empty', b'', 'no_data'), ('random bytes', bytes(range(256)) * 4, 'corrupt'),
             ('truncated PNG header', good_png[:16], 'corrupt'),
             ('JPEG without frame header', b'\xff\xd8\xff\xe0\x00\x04ab\xff\xda', 'corrupt'),
             ('garbage after JPEG SOI', b'\xff\xd8' + b'\x00' * 100, 'corrupt'),
             ('huge JPEG', huge_jpg, 'too_large')]
    for i, (name, data, kind) in enumerate(cases):
        ans = rig.send(det_array(header(i + 1), PERSONS), _compressed(data, i + 1))
        assert all(p.status == ERROR and p.status_reason.startswith(f'bad image ({kind})')
                   for p in ans.persons), (name, [p.status_reason for p in ans.persons])
    ans = rig.send(det_array(header(50), PERSONS), _compressed(good_png, 50))
    assert [p.status for p in ans.persons] == [OK, OK]
    counts = rig.counts()
    assert counts['errors.bad_image.corrupt'] == 4 and counts['errors.bad_image.no_data'] == 1
    assert counts['errors.bad_image.too_large'] == 1


def test_person_detector_drops_bad_images_counts_them_and_keeps_running(harness):
    """The detector publishes nothing for an image it cannot decode (so nobody waits for an
    answer), counts it per kind and answers the next good image."""
    node = harness.add(PersonDetectorNode(context=harness.context, parameter_overrides=[
        Parameter('image_reliability', value='reliable'), Parameter('tracker', value='')]))
    assert node.trigger_configure().name == 'SUCCESS'
    assert node.trigger_activate().name == 'SUCCESS'
    pub = harness.publisher(Image, 'image', image_qos('reliable', 10))
    out = harness.collect(PersonDetectionArray, 'detections', RESULTS_QOS)
    assert harness.wait_matched(pub)
    for i, (name, changes, kind) in enumerate(BAD_IMAGES):
        if changes is None:
            msg = image_msg(i)
            msg.data = msg.data[:10]
        else:
            msg = image_msg(i, **changes)
        pub.publish(msg)
        assert harness.wait_for(
            lambda: node.stats.snapshot().get('errors.bad_image', 0) == i + 1, 30), name
    counts = node.stats.snapshot()
    assert counts['errors.bad_image.zero_size'] == 2 and counts['errors.bad_image.too_large'] == 1
    assert out == []
    pub.publish(image_msg(99))
    assert harness.wait_for(lambda: len(out) == 1, 60)
    assert out[0].header.stamp.sec == 99 and (out[0].image_width, out[0].image_height) == (W, H)


# -- boxes -----------------------------------------------------------------------------------------
def test_boxes_partly_outside_clipped_others_error(harness):
    rig = EmotionRig(harness)
    boxes = [('in', (0, 0, 32, 48)),
             ('partly_right', (40, 10, 100, 20)),     # x 40..140 on a 64 px image: clipped
             ('partly_bottom', (0, 30, 10, 1000)),    # y 30..1030: clipped
             ('outside', (1000, 1000, 10, 10)),       # entirely outside
             ('zero_width', (5, 5, 0, 10)),
             ('zero_height', (5, 5, 10, 0)),
             ('at_edge', (W, 0, 5, 5))]               # starts at x = width: no overlap
    ans = rig.send(det_array(header(1), boxes), image_msg(1))
    st_ = {p.track_id: (p.status, p.status_reason) for p in ans.persons}
    assert [p.track_id for p in ans.persons] == [b[0] for b in boxes]
    for tid in ('in', 'partly_right', 'partly_bottom'):
        assert st_[tid][0] == OK, st_[tid]
    for tid in ('outside', 'at_edge'):
        assert st_[tid][0] == ERROR and st_[tid][1].startswith('bad box') and 'outside' in st_[tid][1]
    for tid in ('zero_width', 'zero_height'):
        assert st_[tid][0] == ERROR and 'zero area' in st_[tid][1]
    assert rig.counts()['errors.bad_box'] == 4
    assert_still_answers(rig, 2)


def test_duplicate_track_ids_both_answered_cache_not_mixed(harness):
    rig = EmotionRig(harness, **{'reuse.enabled': True, 'reuse.max_age_s': 100.0})
    a, b = (0, 0, 20, 40), (40, 0, 20, 40)
    first = rig.send(det_array(header(1), [('5', a), ('5', b)]), image_msg(1))
    assert [p.status for p in first.persons] == [OK, OK]
    assert list(first.persons[0].scores) != list(first.persons[1].scores)  # not mixed up
    assert rig.counts()['duplicate_track_ids'] == 1
    assert len(rig.node.pipeline.cache) == 0  # neither stored under the shared id
    # the same two persons again: still evaluated, each with its own scores
    again = rig.send(det_array(header(2), [('5', b), ('5', a)]), image_msg(2))
    assert [p.status for p in again.persons] == [OK, OK]
    assert list(again.persons[0].scores) == list(first.persons[1].scores)
    # once the id is unique again, it is cached normally
    single = rig.send(det_array(header(3), [('5', a)]), image_msg(3))
    cached = rig.send(det_array(header(4), [('5', a)]), image_msg(4))
    assert single.persons[0].status == OK and cached.persons[0].status == CACHED
    assert list(cached.persons[0].scores) == list(first.persons[0].scores)


def test_duplicate_ids_never_get_a_cached_answer_when_dropped():
    """Core: a frame that is not evaluated answers shared ids SKIPPED, not with one person's
    cached result for both."""
    backend = fb.FakeBackend()
    backend.load()
    pipe = EmotionPipeline(backend, ReuseOptions(enabled=True, max_age_s=100))
    img = rgb_image()
    pipe.process(img, [PersonDetection(BBox(0, 0, 20, 40), track_id='5')], 1.0)
    dets = [PersonDetection(BBox(0, 0, 20, 40), track_id='5'),
            PersonDetection(BBox(40, 0, 60, 40), track_id='5'),
            PersonDetection(BBox(0, 0, 20, 40), track_id='6')]
    res = pipe.answer_unprocessed(dets, 2.0, Status.SKIPPED, 'dropped: test')
    assert [r.status for r in res] == [Status.SKIPPED] * 3
    single = pipe.answer_unprocessed(dets[:1], 2.0, Status.SKIPPED, 'dropped: test')
    assert single[0].status == Status.CACHED and single[0].reason == 'dropped: test'


# -- stamps ----------------------------------------------------------------------------------------
def test_stamp_without_image_and_evicted_image(harness):
    rig = EmotionRig(harness, image_cache_size=2, pair_timeout_s=0.2)
    ans = rig.send(det_array(header(7), PERSONS))  # no image was ever sent
    assert all(p.status == ERROR and p.status_reason.startswith('no image with this stamp')
               for p in ans.persons)
    for s in (1, 2, 3):  # cache of 2: stamp 1 is evicted by stamp 3
        rig.img_pub.publish(image_msg(s))
    assert harness.wait_for(lambda: rig.counts().get('images_in', 0) == 3, 30)
    ans = rig.send(det_array(header(1), PERSONS))
    assert all(p.status == ERROR and p.status_reason.startswith('image evicted')
               for p in ans.persons), [p.status_reason for p in ans.persons]
    counts = rig.counts()
    assert counts['errors.no_image'] == 1 and counts['errors.image_evicted'] == 1
    assert counts['images_evicted'] == 1
    ans = rig.send(det_array(header(3), PERSONS))  # still cached: answered OK
    assert [p.status for p in ans.persons] == [OK, OK]


def test_stamps_going_backwards_clear_the_track_cache(harness):
    rig = EmotionRig(harness, **{'reuse.enabled': True, 'reuse.max_age_s': 100.0})
    rig.send(det_array(header(100), PERSONS), image_msg(100))
    assert len(rig.node.pipeline.cache) == 2
    ans = rig.send(det_array(header(50), PERSONS[:1]), image_msg(50))  # a bag loop
    assert ans.persons[0].status == OK  # evaluated afresh, not from the cache
    assert rig.counts()['stamps_backwards'] == 1
    assert len(rig.node.pipeline.cache) == 1  # track 2 was cleared


# -- backends --------------------------------------------------------------------------------------
@pytest.mark.parametrize('backend,status,reason,counter', [
    (fb.RaisingBackend, ERROR, 'backend error: BackendError: scripted failure', 'errors.backend'),
    (fb.NaNBackend, ERROR, 'backend returned invalid scores',
     'errors.backend_returned_invalid_scores'),
    (fb.NoLabelBackend, SKIPPED, fb.NO_LABEL_REASON, 'skipped.no_known_label_in_answer'),
])
def test_backend_faults_answered_with_reason(harness, backend, status, reason, counter):
    rig = EmotionRig(harness, backend)
    for stamp in (1, 2):  # the second frame proves the node still answers
        ans = rig.send(det_array(header(stamp), PERSONS), image_msg(stamp))
        assert [p.status for p in ans.persons] == [status, status]
        assert all(p.status_reason.startswith(reason) for p in ans.persons), \
            [p.status_reason for p in ans.persons]
        assert all(math.isnan(s) for p in ans.persons for s in p.scores)
        assert all(list(p.labels) == [] for p in ans.persons)
    assert rig.counts()[counter] == (2 if counter == 'errors.backend' else 4)


def test_cuda_oom_in_the_node_retries_with_smaller_batches(harness):
    rig = EmotionRig(harness, fb.OOMBackend, **{'backend.model': 'oom_above=1'})
    boxes = [(str(i), (i * 10, 0, 10, 40)) for i in range(4)]
    ans = rig.send(det_array(header(1), boxes), image_msg(1))
    assert [p.status for p in ans.persons] == [OK] * 4
    assert rig.backend.batch_sizes == [4, 2, 1, 1, 2, 1, 1]
    assert rig.backend.oom_retries == 3
    assert rig.node.diagnostics()[2]['oom_retries'] == 3


def test_cuda_oom_even_for_one_person_is_reported(harness):
    rig = EmotionRig(harness, fb.OOMBackend, **{'backend.model': 'oom_above=0'})
    ans = rig.send(det_array(header(1), PERSONS), image_msg(1))
    assert [(p.status, p.status_reason) for p in ans.persons] == [(ERROR, 'out of GPU memory')] * 2
    assert rig.counts()['errors.out_of_gpu_memory'] == 2


# -- QoS -------------------------------------------------------------------------------------------
def test_qos_mismatch_is_counted_and_warned(harness):
    rig = EmotionRig(harness, activate=False, image_reliability='reliable')
    node = rig.node
    assert node.trigger_configure().name == 'SUCCESS'
    assert node.trigger_activate().name == 'SUCCESS'
    harness.publisher(Image, 'image', image_qos('best_effort'))  # a best-effort camera
    assert harness.wait_for(lambda: rig.counts().get('qos_incompatible', 0) >= 1, 20)
    level, message, values = node.diagnostics()
    assert level == WARN and 'QoS mismatch' in message and int(values['qos_incompatible']) >= 1


# -- properties (hypothesis) -----------------------------------------------------------------------
coord = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False)
any_coord = st.floats(allow_nan=True, allow_infinity=True)
size = st.integers(1, 4000)


@given(any_coord, any_coord, any_coord, any_coord, size, size)
@settings(max_examples=300, deadline=None)
def test_bbox_clipped_is_inside_integer_and_nonempty_or_raises(x1, y1, x2, y2, w, h):
    box = BBox(x1, y1, x2, y2)
    try:
        c = box.clipped(w, h)
    except BoxError as exc:
        finite = all(math.isfinite(v) for v in (x1, y1, x2, y2))
        if finite and x2 > x1 and y2 > y1:  # a valid box may only fail by lying outside
            assert 'outside' in str(exc)
            assert x2 <= 0 or y2 <= 0 or math.floor(x1) >= w or math.floor(y1) >= h
        return
    assert 0 <= c.x1 < c.x2 <= w and 0 <= c.y1 < c.y2 <= h
    assert all(float(v).is_integer() for v in c.xyxy())
    # the clipped box covers the part of the box inside the image
    assert c.x1 <= max(x1, 0) and c.y1 <= max(y1, 0)
    assert c.x2 >= min(x2, w) and c.y2 >= min(y2, h)


roi_int = st.integers(0, 2**32 - 1)


@given(roi_int, roi_int, roi_int, roi_int)
@settings(max_examples=200, deadline=None)
def test_roi_bbox_round_trip(x, y, w, h):
    from sensor_msgs.msg import RegionOfInterest
    roi = RegionOfInterest(x_offset=x, y_offset=y, width=w, height=h)
    back = bbox_to_roi(roi_to_bbox(roi))
    assert (back.x_offset, back.y_offset, back.width, back.height) == (x, y, w, h)


@given(coord, coord, coord, coord)
@settings(max_examples=200, deadline=None)
def test_bbox_to_roi_is_a_valid_message(x1, y1, x2, y2):
    roi = bbox_to_roi(BBox(x1, y1, x2, y2))
    assert min(roi.x_offset, roi.y_offset, roi.width, roi.height) >= 0


rois = st.tuples(st.sampled_from(['', '1', '2', '3']), st.integers(0, 200), st.integers(0, 200),
                 st.integers(0, 200), st.integers(0, 200))


@given(st.lists(rois, max_size=8), st.integers(1, 120), st.integers(1, 120), st.booleans())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_pipeline_answers_one_valid_result_per_detection(items, w, h, reuse):
    """Arbitrary ROIs (as they come from messages) and image sizes: one result per detection,
    OK exactly when the box overlaps the image, else ERROR 'bad box'."""
    backend = fb.FakeBackend()
    backend.load()
    pipe = EmotionPipeline(backend, ReuseOptions(enabled=reuse, max_age_s=10))
    img = np.zeros((h, w, 3), np.uint8)
    dets = [PersonDetection(BBox.from_xywh(x, y, bw, bh), track_id=t) for t, x, y, bw, bh in items]
    for stamp in (1.0, 2.0):
        frame = pipe.process(img, dets, stamp)
        assert len(frame.results) == len(dets)
        for (t, x, y, bw, bh), res in zip(items, frame.results):
            overlaps = bw > 0 and bh > 0 and x < w and y < h
            if overlaps:
                assert res.status in (Status.OK, Status.CACHED)
                assert np.isfinite(res.scores).all()
            else:
                assert res.status == Status.ERROR and res.reason.startswith('bad box')
        unprocessed = pipe.answer_unprocessed(dets, stamp + 0.5, Status.SKIPPED, 'dropped: x')
        assert len(unprocessed) == len(dets)
        assert {r.status for r in unprocessed} <= {Status.SKIPPED, Status.CACHED}


@given(st.sampled_from(sorted(ENCODINGS) + ['yuv422', '', 'rgb16']), st.integers(0, 40),
       st.integers(0, 40), st.integers(0, 200), st.integers(0, 3000), st.booleans())
@settings(max_examples=300, deadline=None)
def test_raw_image_conversion_never_fails_otherwise(encoding, w, h, step, n, big):
    msg = types.SimpleNamespace(encoding=encoding, width=w, height=h, step=step,
                                is_bigendian=big, data=bytes(n))
    try:
        rgb = image_msg_to_rgb(msg, max_pixels=1000)
    except ImageConversionError as exc:
        assert exc.kind in KINDS
        return
    assert rgb.shape == (h, w, 3) and rgb.dtype == np.uint8 and rgb.flags.c_contiguous


@given(st.binary(max_size=400), st.sampled_from([b'', b'\x89PNG\r\n\x1a\n', b'\xff\xd8']))
@settings(max_examples=200, deadline=None)
def test_compressed_conversion_never_fails_otherwise(data, prefix):
    msg = types.SimpleNamespace(format='jpeg', data=prefix + data)
    try:
        rgb = compressed_to_rgb(msg, max_pixels=10_000)
    except ImageConversionError as exc:
        assert exc.kind in KINDS
        return
    assert rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.shape[0] * rgb.shape[1] <= 10_000


# -- logging once per kind -------------------------------------------------------------------------
class _Recorder:
    def __init__(self):
        self.lines = []

    def warning(self, text):
        self.lines.append(text)

    error = warning


def test_each_kind_of_problem_is_logged_once_with_throttling(harness):
    rig = EmotionRig(harness)
    recorder = _Recorder()
    rig.node.kind_log = KindLogger(recorder, period_s=3600)
    for stamp in (1, 2, 3):
        rig.send(det_array(header(stamp), PERSONS), image_msg(stamp, encoding='yuv422_weird'))
    rig.send(det_array(header(4), PERSONS), image_msg(4, step=1))
    rig.send(det_array(header(5), [('1', (1000, 0, 5, 5)), ('2', (2000, 0, 5, 5))]),
             image_msg(5))
    kinds = [line.split(']')[0] + ']' for line in recorder.lines]
    assert kinds == ['[bad_image.unknown_encoding]', '[bad_image.step_too_small]',
                     '[errors.bad_box]'], recorder.lines
    assert rig.counts()['errors.bad_image.unknown_encoding'] == 3
    assert rig.counts()['errors.bad_box'] == 2


def test_kind_logger_reports_the_suppressed_count():
    recorder = _Recorder()
    log = KindLogger(recorder, period_s=0.0)
    log.warn('a', 'first')
    log._period_s = 3600
    log.warn('a', 'again')
    log.warn('a', 'again')
    log._period_s = 0.0
    log.warn('a', 'later')
    assert recorder.lines == ['[a] first', '[a] later (2 more since last report)']
