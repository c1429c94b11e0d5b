"""The nodes as a ROS engineer drives them (issue 10): worker lifecycle, responsive services while
a model loads, the detector's track ids across deactivate/activate, read-only parameters,
unknown parameter-file keys, the detections/image size check, compressed topics following
remapping. All in-process with real topics and services."""
import threading
import time

import cv2
import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rcl_interfaces.srv import GetParameters, SetParameters
from rclpy.parameter import Parameter
from sensor_msgs.msg import CompressedImage, Image

from emotion_perception.core.model_files import sample_image_paths
from emotion_perception.msg import PersonDetectionArray, PersonEmotion, PersonEmotionArray
from emotion_perception.nodes.emotion_node import PARAMS as EMOTION_PARAMS
from emotion_perception.nodes.emotion_node import EmotionNode
from emotion_perception.nodes.person_detector import PARAMS as DETECTOR_PARAMS
from emotion_perception.nodes.person_detector import PersonDetectorNode
from emotion_perception.ros.image_conversion import numpy_to_image_msg, rgb_to_compressed
from emotion_perception.ros.node_utils import WorkerBusyError, WorkerThread
from emotion_perception.ros.qos import RESULTS_QOS, image_qos
from emotion_perception.testing import fake_backends as fb
from emotion_perception.testing.node_rig import EmotionRig, det_array, header
from emotion_perception.testing.ros_harness import RosHarness

pytestmark = pytest.mark.ros

OK, ERROR, CACHED = (PersonEmotion.STATUS_OK, PersonEmotion.STATUS_ERROR,
                     PersonEmotion.STATUS_CACHED)
PERSONS = [('1', (0, 0, 32, 48)), ('2', (32, 0, 32, 48))]


@pytest.fixture
def harness():
    with RosHarness() as h:
        yield h


def image_msg(stamp, w=64, h=48):
    rgb = np.random.default_rng(stamp).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return numpy_to_image_msg(rgb, 'rgb8', header=header(stamp))


def emotion_workers():
    return [t for t in threading.enumerate() if t.name == 'emotion_worker' and t.is_alive()]


# -- worker lifecycle ------------------------------------------------------------------------------
def test_worker_thread_gets_a_fresh_stop_event_and_refuses_a_second_thread():
    gate = threading.Event()
    seen = []

    def loop(stop):
        seen.append(stop)
        gate.wait()  # a model call that ignores the stop request until it returns
        while not stop.is_set():
            time.sleep(0.01)

    worker = WorkerThread('test_worker', loop)
    worker.start()
    assert worker.stop(timeout=0.05) is False and worker.straggler_age_s() is not None
    with pytest.raises(WorkerBusyError, match='still inside a model call'):
        worker.start()
    gate.set()
    deadline = time.monotonic() + 10
    while worker.straggler_age_s() is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert worker.straggler_age_s() is None
    worker.start()
    assert len(seen) == 2 and seen[0] is not seen[1]
    assert seen[0].is_set() and not seen[1].is_set()  # the new thread is not told to stop
    assert worker.stop(timeout=5) is True


def test_activate_fails_with_the_reason_while_the_old_worker_is_in_a_model_call(harness):
    rig = EmotionRig(harness, fb.BlockingBackend, worker_stop_timeout_s=0.3)
    node, backend = rig.node, rig.backend
    rig.img_pub.publish(image_msg(1))
    assert harness.wait_for(lambda: rig.counts().get('images_in', 0) == 1, 20)
    rig.det_pub.publish(det_array(header(1), PERSONS))
    assert backend.entered.wait(20)
    try:
        assert node.trigger_deactivate().name == 'SUCCESS'  # after the 0.3 s join timeout
        assert rig.counts()['worker_stop_timeouts'] == 1
        assert len(emotion_workers()) == 1  # the old worker, still in the model call
        assert node.trigger_activate().name == 'FAILURE'
        assert 'still inside a model call' in node.failure_reason
        assert node.lifecycle_state == 'inactive' and len(emotion_workers()) == 1
    finally:
        backend.release()
    assert harness.wait_for(lambda: not emotion_workers(), 10)  # it saw its stop event
    assert node.trigger_activate().name == 'SUCCESS'
    assert len(emotion_workers()) == 1 and node.failure_reason == ''
    assert harness.wait_matched(rig.det_pub)
    ans = rig.send(det_array(header(2), PERSONS), image_msg(2))
    assert [p.status for p in ans.persons] == [OK, OK]
    assert backend.calls == 2  # one model call per frame: no second worker on the model


# -- responsive services -----------------------------------------------------------------------
def test_get_state_parameters_and_diagnostics_answer_while_configure_loads(harness):
    fb.SlowLoadBackend.load_entered.clear()
    fb.SlowLoadBackend.load_release.clear()
    EmotionRig(harness, fb.SlowLoadBackend, activate=False, diagnostics_period_s=0.2)
    change = harness.node.create_client(ChangeState, '/emotion_node/change_state')
    get_state = harness.node.create_client(GetState, '/emotion_node/get_state')
    get_params = harness.node.create_client(GetParameters, '/emotion_node/get_parameters')
    for client in (change, get_state, get_params):
        assert client.wait_for_service(timeout_sec=10)
    diags = harness.collect(DiagnosticArray, '/diagnostics')
    configure = change.call_async(ChangeState.Request(
        transition=Transition(id=Transition.TRANSITION_CONFIGURE)))
    try:
        assert fb.SlowLoadBackend.load_entered.wait(20)  # configure is now blocked in load()
        for _ in range(3):
            t0 = time.monotonic()
            state = get_state.call_async(GetState.Request())
            assert harness.wait_for(state.done, 1.0), 'get_state did not answer within 1 s'
            assert state.result().current_state.label == 'configuring'
            assert time.monotonic() - t0 < 1.0
            params = get_params.call_async(GetParameters.Request(names=['backend.name']))
            assert harness.wait_for(params.done, 1.0), 'get_parameters did not answer in 1 s'
            assert params.result().values[0].string_value.endswith(':SlowLoadBackend')
        n = len(diags)
        assert harness.wait_for(lambda: len(diags) > n + 1, 2.0), '/diagnostics went silent'
        values = {kv.key: kv.value for kv in diags[-1].status[0].values}
        assert values['lifecycle_state'] == 'configuring'
        assert 'configure running for' in diags[-1].status[0].message
        assert not configure.done()
    finally:
        fb.SlowLoadBackend.load_release.set()
    assert harness.wait_for(configure.done, 20) and configure.result().success


# -- detector track ids across deactivate/activate ----------------------------------------------
@pytest.fixture(scope='module')
def bus_rgb():
    bgr = cv2.imread(str(sample_image_paths()['bus']))
    return cv2.cvtColor(cv2.resize(bgr, (405, 540)), cv2.COLOR_BGR2RGB)


@pytest.mark.parametrize('free', [True, False])
def test_detector_ids_after_reactivation_never_name_old_people(harness, bus_rgb, free):
    """free_on_deactivate: the tracker starts over with the new model, and its ids are shifted
    past the old ones; kept (default): the same tracker keeps the same people's ids. A jump
    back in time resets the tracker: new ids again."""
    node = harness.add(PersonDetectorNode(context=harness.context, parameter_overrides=[
        Parameter('device', value='cpu'), Parameter('image_reliability', value='reliable'),
        Parameter('free_on_deactivate', value=free)]))
    pub = harness.publisher(Image, 'image', image_qos('reliable'))
    out = harness.collect(PersonDetectionArray, 'detections', RESULTS_QOS)

    def frames(stamps):
        for s in stamps:
            n = len(out)
            pub.publish(numpy_to_image_msg(bus_rgb, 'rgb8', header=header(s)))
            assert harness.wait_for(lambda: len(out) > n, 60), s
        return {d.track_id for d in out[-1].detections}

    assert node.trigger_configure().name == 'SUCCESS'
    assert node.trigger_activate().name == 'SUCCESS'
    assert harness.wait_matched(pub)
    before = frames([1, 2, 3])
    assert len(before) >= 3 and '' not in before
    assert node.trigger_deactivate().name == 'SUCCESS'
    # the old subscription must be gone from the publisher's matches first: else the count of
    # 1 may still be the destroyed one and frame 4 is published to nobody (seen on a busy host)
    assert harness.wait_for(lambda: pub.get_subscription_count() == 0, 10)
    assert node.trigger_activate().name == 'SUCCESS'
    assert harness.wait_matched(pub)
    after = frames([4, 5, 6])
    if free:
        assert after and not after & before, (before, after)
        assert min(int(i) for i in after) > max(int(i) for i in before)
    else:
        assert after == before  # the kept tracker still follows the same people
    back = frames([2, 3, 4])  # stamps went backwards (bag loop): tracker reset
    assert back and not back & (before | after), (before, after, back)


# -- read-only parameters ------------------------------------------------------------------------
READ_ONLY_EMOTION = {'backend.name', 'backend.model', 'backend.adapter',
                     'backend.trust_remote_code', 'backend.llm', 'backend.url',
                     'backend.api_key_env', 'backend.ca_bundle', 'backend.verify_tls',
                     'backend.processor', 'backend.quantization', 'backend.quantization_library',
                     'detections_format'}  # chooses which message package is imported


def test_parameters_that_load_code_or_weights_are_read_only():
    flags = {s.name: s.read_only for s in EMOTION_PARAMS}
    assert {n for n, ro in flags.items() if ro} == READ_ONLY_EMOTION
    # the generic rule: anything naming a remote endpoint or key variable must be read-only
    for spec in EMOTION_PARAMS:
        if spec.name.endswith(('.url', '.api_key_env', '.adapter', '.model')):
            assert spec.read_only, spec.name
    assert {s.name for s in DETECTOR_PARAMS if s.read_only} == {'model'}


def test_run_time_set_parameters_of_a_read_only_parameter_is_refused(harness, capfd):
    node = harness.add(EmotionNode(context=harness.context, parameter_overrides=[
        Parameter('backend.model', value='')]))
    # set at start-up (an override, as a parameter file / launch / -p give it): accepted
    assert node.get_parameter('backend.model').value == ''
    result = node.set_parameters([Parameter('backend.model', value='/tmp/evil.hdf5')])[0]
    assert not result.successful and 'read-only' in result.reason
    assert node.get_parameter('backend.model').value == ''
    # through the real service, as `ros2 param set` does
    client = harness.node.create_client(SetParameters, '/emotion_node/set_parameters')
    assert client.wait_for_service(timeout_sec=10)
    for name, value in (('backend.name', 'os:system'), ('backend.trust_remote_code', True),
                        ('reuse.max_age_s', 5.0)):
        future = client.call_async(SetParameters.Request(
            parameters=[Parameter(name, value=value).to_parameter_msg()]))
        assert harness.wait_for(future.done, 10)
        res = future.result().results[0]
        if name == 'reuse.max_age_s':
            assert res.successful  # an ordinary parameter still changes
        else:
            assert not res.successful and 'read-only' in res.reason, (name, res.reason)
    assert node.get_parameter('backend.name').value == 'face_baseline'
    assert node.get_parameter('backend.trust_remote_code').value is False
    assert node.stats.snapshot()['parameters.read_only_refused'] == 3
    described = node.describe_parameter('backend.name')
    assert described.read_only and 'read-only' in described.description
    assert 'refused a run-time change of read-only parameter' in capfd.readouterr().err
    det = harness.add(PersonDetectorNode(context=harness.context))
    assert not det.set_parameters([Parameter('model', value='x.pt')])[0].successful


# -- unknown keys in a parameter file -----------------------------------------------------------
def test_a_typo_in_the_parameter_file_is_reported_with_the_closest_name(harness, tmp_path,
                                                                          capfd):
    params = tmp_path / 'params.yaml'
    params.write_text(
        '/**/emotion_node:\n'
        '  ros__parameters:\n'
        '    reuse:\n'
        '      max_age: 3.0\n'          # typo of reuse.max_age_s
        '      min_iou: 0.4\n'          # correct
        '    image_trasport: raw\n'     # typo of image_transport
        '    completely_unrelated_key: 1\n')
    node = harness.add(EmotionNode(context=harness.context,
                                   cli_args=['--ros-args', '--params-file', str(params)]))
    assert node.unknown_parameters == {'reuse.max_age': 'reuse.max_age_s',
                                       'image_trasport': 'image_transport',
                                       'completely_unrelated_key': None}
    assert node.get_parameter('reuse.min_iou').value == 0.4  # the correct key applies
    assert node.stats.snapshot()['unknown_parameters'] == 3
    err = capfd.readouterr().err
    assert "'reuse.max_age' (did you mean 'reuse.max_age_s'?)" in err
    assert "'image_trasport' (did you mean 'image_transport'?)" in err
    assert 'does not declare' in err
    # the shipped defaults have no unknown key
    from emotion_perception.tools.config import config_dir
    for cls, name in ((EmotionNode, 'emotion_node'), (PersonDetectorNode, 'person_detector')):
        n = harness.add(cls(name, context=harness.context, cli_args=[
            '--ros-args', '--params-file', str(config_dir() / f'{name}.yaml')]))
        assert n.unknown_parameters == {}, name


# -- size check ---------------------------------------------------------------------------------
def test_detections_for_another_image_size_are_errors_with_both_sizes(harness):
    rig = EmotionRig(harness)
    ans = rig.send(det_array(header(1), PERSONS, width=640, height=480), image_msg(1))
    assert [p.status for p in ans.persons] == [ERROR, ERROR]
    for p in ans.persons:
        assert p.status_reason.startswith('size mismatch')
        assert '640x480' in p.status_reason and '64x48' in p.status_reason
    assert rig.counts()['errors.size_mismatch'] == 1
    ans = rig.send(det_array(header(2), PERSONS), image_msg(2))  # right size: evaluated
    assert [p.status for p in ans.persons] == [OK, OK]
    ans = rig.send(det_array(header(3), PERSONS, width=0, height=0), image_msg(3))
    assert [p.status for p in ans.persons] == [OK, OK]  # 0x0: size not given, not checked
    assert rig.counts()['errors.size_mismatch'] == 1


# -- compressed topics follow remapping ----------------------------------------------------------
def test_compressed_subscription_follows_the_remapped_image_topic(harness, bus_rgb):
    remap = ['--ros-args', '-r', 'image:=/cam/image_raw']
    emo = harness.add(EmotionNode(context=harness.context, cli_args=remap, parameter_overrides=[
        Parameter('image_transport', value='compressed'),
        Parameter('image_reliability', value='reliable'),
        Parameter('backend.name', value=fb.spec(fb.FakeBackend))]))
    det = harness.add(PersonDetectorNode(context=harness.context, cli_args=remap,
                                         parameter_overrides=[
        Parameter('image_transport', value='compressed'), Parameter('device', value='cpu'),
        Parameter('image_reliability', value='reliable'), Parameter('tracker', value='')]))
    for node in (emo, det):
        assert node.trigger_configure().name == 'SUCCESS'
        assert node.trigger_activate().name == 'SUCCESS'
    assert det._subs[0].topic_name == '/cam/image_raw/compressed'
    assert emo._subs[0].topic_name == '/cam/image_raw/compressed'
    assert harness.node.count_subscribers('/image/compressed') == 0
    pub = harness.publisher(CompressedImage, '/cam/image_raw/compressed',
                            image_qos('reliable'))
    out = harness.collect(PersonEmotionArray, 'emotions', RESULTS_QOS)
    assert harness.wait_matched(pub, 2)
    pub.publish(rgb_to_compressed(bus_rgb, 'jpeg', header=header(9)))
    assert harness.wait_for(lambda: len(out) == 1, 60)
    assert out[0].header.stamp.sec == 9 and len(out[0].persons) >= 3
    assert all(p.status == OK for p in out[0].persons)
