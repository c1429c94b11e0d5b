"""The optional debug images: boxes (and emotions) drawn, published only with subscribers."""
import numpy as np
import pytest
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image, RegionOfInterest
from std_msgs.msg import Header

from emotion_perception.msg import PersonDetection, PersonDetectionArray, PersonEmotionArray
from emotion_perception.nodes.emotion_node import EmotionNode
from emotion_perception.ros.image_conversion import image_msg_to_rgb, numpy_to_image_msg
from emotion_perception.ros.qos import RESULTS_QOS, image_qos
from emotion_perception.testing.ros_harness import RosHarness

pytestmark = pytest.mark.ros


def test_emotion_debug_image_has_the_input_header_and_drawn_box():
    with RosHarness() as harness:
        node = harness.add(EmotionNode(context=harness.context, parameter_overrides=[
            Parameter('publish_debug_image', value=True)]))
        assert node.trigger_configure().name == 'SUCCESS'
        assert node.trigger_activate().name == 'SUCCESS'
        img_pub = harness.publisher(Image, 'image', image_qos('best_effort'))
        det_pub = harness.publisher(PersonDetectionArray, 'detections', RESULTS_QOS)
        debug = harness.collect(Image, 'debug_image', 1)
        out = harness.collect(PersonEmotionArray, 'emotions', RESULTS_QOS)
        assert harness.wait_matched(img_pub) and harness.wait_matched(det_pub)
        assert harness.wait_for(lambda: node.count_subscribers('debug_image') > 0, 10)
        rgb = np.full((120, 160, 3), 128, np.uint8)
        hdr = Header(frame_id='cam')
        hdr.stamp.sec = 7
        img_pub.publish(numpy_to_image_msg(rgb, 'rgb8', header=hdr))
        det = PersonDetectionArray(header=hdr, image_width=160, image_height=120, detections=[
            PersonDetection(track_id='4', confidence=0.8,
                            bbox=RegionOfInterest(x_offset=40, y_offset=20, width=60, height=80))])
        det_pub.publish(det)
        assert harness.wait_for(lambda: len(out) == 1 and len(debug) == 1, 30)
        msg = debug[0]
        assert msg.header.stamp.sec == 7 and msg.header.frame_id == 'cam'
        drawn = image_msg_to_rgb(msg)
        assert drawn.shape == rgb.shape
        assert (drawn[20:100, 40] != 128).any()  # the box's left edge is drawn
        assert (drawn[5:15, 140:150] == 128).all()  # far from the box: untouched
