"""In-process tests of the person_detector node on real photographs: publish Image /
CompressedImage messages, assert on the PersonDetectionArray messages that come out."""
import cv2
import pytest
from rclpy.parameter import Parameter
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from emotion_perception.core.model_files import sample_image_paths
from emotion_perception.msg import PersonDetectionArray
from emotion_perception.nodes.person_detector import PersonDetectorNode
from emotion_perception.ros.image_conversion import numpy_to_image_msg, rgb_to_compressed
from emotion_perception.ros.qos import RESULTS_QOS, image_qos
from emotion_perception.testing.ros_harness import RosHarness

pytestmark = pytest.mark.ros


@pytest.fixture(scope='module')
def bus_rgb():
    return cv2.cvtColor(cv2.imread(str(sample_image_paths()['bus'])), cv2.COLOR_BGR2RGB)


@pytest.fixture
def harness():
    with RosHarness() as h:
        yield h


def start(harness, **params):
    node = harness.add(PersonDetectorNode(context=harness.context, parameter_overrides=[
        Parameter(k, value=v) for k, v in params.items()]))
    assert node.trigger_configure().name == 'SUCCESS'
    assert node.trigger_activate().name == 'SUCCESS'
    return node


def header(i):
    h = Header(frame_id='cam')
    h.stamp.sec, h.stamp.nanosec = 1000 + i, 123
    return h


def run_frames(harness, pub, out, msgs):
    for i, msg in enumerate(msgs):
        pub.publish(msg)
        assert harness.wait_for(lambda: len(out) >= i + 1, 60), f'frame {i} not answered'


def test_detects_and_tracks_the_four_people_on_bus(harness, bus_rgb):
    start(harness, image_reliability='reliable')
    pub = harness.publisher(Image, 'image', image_qos('reliable'))
    out = harness.collect(PersonDetectionArray, 'detections', RESULTS_QOS)
    assert harness.wait_matched(pub)
    h, w = bus_rgb.shape[:2]
    run_frames(harness, pub, out, [numpy_to_image_msg(bus_rgb, 'rgb8', header=header(i))
                                   for i in range(3)])
    assert [m.header.stamp.sec for m in out] == [1000, 1001, 1002]
    assert all(m.header.frame_id == 'cam' and m.header.stamp.nanosec == 123 for m in out)
    assert all((m.image_width, m.image_height) == (w, h) for m in out)
    ids = [sorted(d.track_id for d in m.detections) for m in out]
    assert len(ids[-1]) == 4, ids  # bus.jpg shows four people
    assert ids[1] == ids[2] and all(i != '' for i in ids[2])  # stable ids while tracked
    for d in out[-1].detections:
        assert 0.0 < d.confidence <= 1.0
        assert d.bbox.width > 0 and d.bbox.height > 0
        assert d.bbox.x_offset + d.bbox.width <= w and d.bbox.y_offset + d.bbox.height <= h


def test_compressed_transport_and_no_tracking(harness, bus_rgb):
    start(harness, image_transport='compressed', image_reliability='reliable', tracker='')
    pub = harness.publisher(CompressedImage, 'image/compressed', image_qos('reliable'))
    out = harness.collect(PersonDetectionArray, 'detections', RESULTS_QOS)
    assert harness.wait_matched(pub)
    run_frames(harness, pub, out, [rgb_to_compressed(bus_rgb, 'png', header=header(0))])
    assert len(out[0].detections) == 4  # lossless PNG; no tracker: all from frame 1
    assert all(d.track_id == '' for d in out[0].detections)


def test_bad_image_is_counted_and_node_keeps_running(harness, bus_rgb):
    node = start(harness, image_reliability='reliable', tracker='')
    pub = harness.publisher(Image, 'image', image_qos('reliable'))
    out = harness.collect(PersonDetectionArray, 'detections', RESULTS_QOS)
    assert harness.wait_matched(pub)
    bad = numpy_to_image_msg(bus_rgb, 'rgb8', header=header(0))
    bad.encoding = 'yuv422_weird'
    pub.publish(bad)
    assert harness.wait_for(lambda: node.stats.snapshot().get('errors.bad_image', 0) == 1, 30)
    run_frames(harness, pub, out, [numpy_to_image_msg(bus_rgb, 'rgb8', header=header(1))])
    assert out[0].header.stamp.sec == 1001 and len(out[0].detections) == 4


def test_missing_weights_leave_the_node_unconfigured(harness):
    node = harness.add(PersonDetectorNode(context=harness.context, parameter_overrides=[
        Parameter('model', value='/nonexistent/yolo.pt')]))
    assert node.trigger_configure().name == 'FAILURE'
    assert node.detector is None


def test_invalid_parameter_is_refused_on_set(harness):
    node = harness.add(PersonDetectorNode(context=harness.context))
    result = node.set_parameters([Parameter('confidence', value=1.5)])[0]
    assert not result.successful and 'confidence' in result.reason
    assert node.get_parameter('confidence').value == 0.25


def test_tracker_parameters_configure_the_tracker(harness, bus_rgb):
    """The tracking.* parameters reach ultralytics' tracker through the node; a bad one is
    refused on set with its reason, the old value kept."""
    node = start(harness, image_reliability='reliable', tracker='botsort.yaml', **{
        'tracking.track_buffer': 90, 'tracking.with_reid': True,
        'tracking.proximity_thresh': 0.0, 'tracking.appearance_thresh': 0.9,
        'tracking.gmc_method': 'none'})
    pub = harness.publisher(Image, 'image', image_qos('reliable'))
    out = harness.collect(PersonDetectionArray, 'detections', RESULTS_QOS)
    assert harness.wait_matched(pub)
    run_frames(harness, pub, out, [numpy_to_image_msg(bus_rgb, 'rgb8', header=header(i))
                                   for i in range(2)])
    assert len(out[-1].detections) == 4 and all(d.track_id for d in out[-1].detections)
    tracker = node.detector.model.predictor.trackers[0]
    assert type(tracker).__name__ == 'BOTSORT' and tracker.max_frames_lost == 90
    assert tracker.encoder is not None and tracker.proximity_thresh == 0.0
    assert tracker.appearance_thresh == 0.9 and tracker.gmc.method is None
    for name, bad in (('tracking.match_thresh', 1.5), ('tracking.gmc_method', 'optical'),
                      ('tracking.track_buffer', 0)):
        result = node.set_parameters([Parameter(name, value=bad)])[0]
        assert not result.successful and name in result.reason, (name, result.reason)
    assert node.get_parameter('tracking.track_buffer').value == 90
