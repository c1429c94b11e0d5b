"""The VLM backends inside emotion_node over a replayed bag: a bag of real photographs is
replayed into person_detector + emotion_node (in-process), with `vlm` (a tiny random LLaVA) and
`caption_llm` (a tiny captioner + a tiny text LM) loaded through the same from_pretrained path
users take. Asserts one emotions array per detections array, scores from the backend."""
import cv2
import numpy as np
import pytest
from rclpy.parameter import Parameter

from emotion_perception.core.model_files import sample_image_paths
from emotion_perception.msg import PersonDetectionArray, PersonEmotion, PersonEmotionArray
from emotion_perception.nodes.emotion_node import EmotionNode
from emotion_perception.nodes.person_detector import PersonDetectorNode
from emotion_perception.ros.qos import RESULTS_QOS
from emotion_perception.testing.ros_harness import RosHarness
from emotion_perception.testing.tiny_models import (build_tiny_captioner, build_tiny_llava,
                                                    build_tiny_text_llm)
from emotion_perception.tools.bags import BagPlayer, write_image_bag

pytestmark = [pytest.mark.ros, pytest.mark.slow]


@pytest.fixture(scope='module')
def bag(tmp_path_factory):
    rgb = cv2.cvtColor(cv2.imread(str(sample_image_paths()['astronaut'])), cv2.COLOR_BGR2RGB)
    path = tmp_path_factory.mktemp('bag') / 'astronaut_bag'
    write_image_bag([rgb] * 3, path, topic='/camera/image_raw', rate_hz=1.0, start_ns=10**18)
    return path


@pytest.fixture(scope='module')
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp('models')
    return {'vlm': build_tiny_llava(root / 'llava'),
            'captioner': build_tiny_captioner(root / 'captioner'),
            'llm': build_tiny_text_llm(root / 'llm')}


def run_bag(bag, emotion_params):
    with RosHarness() as harness:
        remap = ['--ros-args', '-r', 'image:=/camera/image_raw']
        det = harness.add(PersonDetectorNode(
            context=harness.context, cli_args=remap,
            parameter_overrides=[Parameter('image_reliability', value='reliable'),
                                 Parameter('tracker', value='')]))
        emo = harness.add(EmotionNode(
            context=harness.context, cli_args=remap,
            parameter_overrides=[Parameter('image_reliability', value='reliable'),
                                 Parameter('pair_timeout_s', value=5.0)]
            + [Parameter(k, value=v) for k, v in emotion_params.items()]))
        for node in (det, emo):
            assert node.trigger_configure().name == 'SUCCESS'
            assert node.trigger_activate().name == 'SUCCESS'
        dets = harness.collect(PersonDetectionArray, 'detections', RESULTS_QOS)
        out = harness.collect(PersonEmotionArray, 'emotions', RESULTS_QOS)
        # one frame at a time (the detector drops stale frames by design): 0.5x speed
        player = BagPlayer(bag, node=harness.node, wait_subscribers=2, rate_scale=0.5)
        player.start()
        assert player.wait(120)
        player.close()

        def detector_done():
            c = det.stats.snapshot()
            return c.get('images_in', 0) == 3 and c['images_in'] == (
                c.get('detections_out', 0) + c.get('drops.stale_frame', 0))

        assert harness.wait_for(detector_done, 120), det.stats.snapshot()
        assert harness.wait_for(lambda: len(out) == len(dets), 120), (len(dets), len(out))
        return dets, out, emo.diagnostics()[2]


@pytest.mark.parametrize('backend', ['vlm', 'caption_llm'])
def test_vlm_backends_inside_emotion_node_over_a_bag(bag, models, backend):
    params = {'backend.name': backend, 'backend.device': 'cpu', 'reuse.enabled': False}
    if backend == 'vlm':
        params['backend.model'] = str(models['vlm'])
    else:
        params.update({'backend.model': str(models['captioner']),
                       'backend.llm': str(models['llm'])})
    dets, out, diag = run_bag(bag, params)
    assert len(out) == len(dets) >= 1
    # the backend's own state reaches /diagnostics: the questions shared the prefix, VAD read
    assert diag['backend.prefix_sharing'] is True and diag['backend.vad'] == 'ok'
    assert sorted(m.header.stamp.nanosec for m in out) == sorted(
        m.header.stamp.nanosec for m in dets)
    answered = [p for m in out for p in m.persons]
    assert answered and len(answered) == sum(len(m.detections) for m in dets)
    for p in answered:
        assert p.status == PersonEmotion.STATUS_OK, p.status_reason
        assert p.backend == backend
        scores = np.array(p.scores)
        assert scores.shape == (26,) and np.all((scores >= 0) & (scores <= 1))
        assert 1.0 <= p.valence <= 10.0
