"""Faults (issue 5): a detector restarting mid-stream, lifecycle transitions freeing the model
and the worker threads, SIGINT/SIGTERM to node processes, model load failures, CUDA out of
memory during inference, and a stalled model reported as ERROR on /diagnostics."""
import os
import signal
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import pytest
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image

from emotion_perception.core.backends.base import (OUT_OF_GPU_MEMORY, BackendError,
                                                   is_out_of_memory)
from emotion_perception.core.model_files import sample_image_paths
from emotion_perception.core.types import BBox, Status
from emotion_perception.msg import PersonDetectionArray, PersonEmotion, PersonEmotionArray
from emotion_perception.nodes.emotion_node import EmotionNode
from emotion_perception.nodes.person_detector import PersonDetectorNode
from emotion_perception.ros.diagnostics import ERROR
from emotion_perception.ros.image_conversion import numpy_to_image_msg
from emotion_perception.ros.qos import RESULTS_QOS, image_qos
from emotion_perception.testing import fake_backends as fb
from emotion_perception.testing.node_rig import EmotionRig, det_array, header, key
from emotion_perception.testing.ros_harness import RosHarness

pytestmark = pytest.mark.ros

OK, CACHED = PersonEmotion.STATUS_OK, PersonEmotion.STATUS_CACHED
PERSONS = [('1', (0, 0, 32, 48)), ('2', (32, 0, 32, 48))]


@pytest.fixture
def harness():
    with RosHarness() as h:
        yield h


def worker_threads():
    return sorted(t.name for t in threading.enumerate()
                  if t.name in ('emotion_worker', 'person_detector_worker') and t.is_alive())


def state(node):
    return node.lifecycle_state


def image_msg(stamp, w=64, h=48):
    rgb = np.random.default_rng(stamp).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return numpy_to_image_msg(rgb, 'rgb8', header=header(stamp))


# -- the detector restarts mid-stream --------------------------------------------------------------
def _start_detector(harness):
    det = harness.add(PersonDetectorNode(context=harness.context, parameter_overrides=[
        Parameter('image_reliability', value='reliable'), Parameter('device', value='cpu')]))
    assert det.trigger_configure().name == 'SUCCESS', det.failure_reason
    assert det.trigger_activate().name == 'SUCCESS', det.failure_reason
    return det


@pytest.mark.slow
def test_emotion_node_recovers_when_the_detector_restarts(harness):
    """Real detector + emotion node in-process on a real photo. The detector is destroyed and
    created again mid-stream: the emotion node picks the new publisher up by itself, answers
    resume, and the restart (its track ids start over) clears the track cache."""
    bgr = cv2.imread(str(sample_image_paths()['bus']))
    rgb = cv2.cvtColor(cv2.resize(bgr, (405, 540)), cv2.COLOR_BGR2RGB)
    emo = EmotionNode(context=harness.context, parameter_overrides=[
        Parameter('backend.name', value=fb.spec(fb.FakeBackend)),
        Parameter('image_reliability', value='reliable'),
        Parameter('reuse.max_age_s', value=100.0)])
    harness.add(emo)
    assert emo.trigger_configure().name == 'SUCCESS'
    assert emo.trigger_activate().name == 'SUCCESS'
    out = harness.collect(PersonEmotionArray, 'emotions', RESULTS_QOS)
    dets = harness.collect(PersonDetectionArray, 'detections', RESULTS_QOS)
    pub = harness.publisher(Image, 'image', image_qos('reliable', 10))
    det = _start_detector(harness)
    assert harness.wait_matched(pub, 2)

    def frame(stamp):
        pub.publish(numpy_to_image_msg(rgb, 'rgb8', header=header(stamp)))
        assert harness.wait_for(lambda: any(key(m) == (stamp, 0) for m in out), 60), stamp
        return next(m for m in out if key(m) == (stamp, 0))

    before = [frame(s) for s in (1, 2, 3)]
    assert len(before[-1].persons) >= 3  # bus.jpg: four people
    assert any(p.status == CACHED for p in before[-1].persons)  # track reuse was working
    # the detector dies ...
    harness._nodes.remove(det)
    det._teardown()
    harness.executor.remove_node(det)
    det.destroy_node()
    assert harness.wait_for(lambda: pub.get_subscription_count() == 1, 10)
    pub.publish(numpy_to_image_msg(rgb, 'rgb8', header=header(4)))  # nobody detects this one
    # ... and comes back
    det = _start_detector(harness)
    assert harness.wait_matched(pub, 2)
    after = [frame(s) for s in (5, 6)]
    assert emo.stats.snapshot().get('detector_restarts') == 1
    assert all(p.status == OK for p in after[0].persons)  # cache cleared: evaluated afresh
    assert len(after[0].persons) == len(before[-1].persons)
    assert not any(key(m) == (4, 0) for m in out)
    assert len(out) == len(dets)  # every detections array answered once


# -- lifecycle -------------------------------------------------------------------------------------
@pytest.mark.parametrize('free', [False, True])
def test_emotion_node_lifecycle_keeps_or_frees_model_and_threads(harness, free):
    """inactive keeps the model (activate is fast) unless free_on_deactivate; cleanup and
    shutdown always free it; no worker thread outlives deactivate."""
    rig = EmotionRig(harness, activate=False, free_on_deactivate=free)
    node = rig.node
    assert worker_threads() == []
    assert node.trigger_configure().name == 'SUCCESS'
    backend = node.pipeline.backend
    assert backend.loaded and state(node) == 'inactive'
    assert node.trigger_activate().name == 'SUCCESS'
    assert worker_threads() == ['emotion_worker']
    assert rig.harness.wait_matched(rig.det_pub)
    rig.send(det_array(header(1), PERSONS), image_msg(1))
    assert node.trigger_deactivate().name == 'SUCCESS'
    assert backend.loaded is (not free) and worker_threads() == []
    # the old subscriptions gone from the publishers' matches before the new ones are awaited
    # (else a stale count of 1 lets the next frame go to nobody)
    assert rig.harness.wait_for(lambda: rig.img_pub.get_subscription_count() == 0
                                and rig.det_pub.get_subscription_count() == 0, 10)
    assert node.trigger_activate().name == 'SUCCESS'
    assert rig.harness.wait_matched(rig.img_pub) and rig.harness.wait_matched(rig.det_pub)
    assert node.pipeline.backend is backend  # the configured model, not a new one
    assert backend.loaded and worker_threads() == ['emotion_worker']
    ans = rig.send(det_array(header(2), PERSONS), image_msg(2))
    assert [p.status for p in ans.persons] == [OK, OK]
    assert node.trigger_deactivate().name == 'SUCCESS'
    assert node.trigger_cleanup().name == 'SUCCESS'
    assert node.pipeline is None and not backend.loaded and worker_threads() == []
    assert state(node) == 'unconfigured'
    # shutdown straight from active
    assert node.trigger_configure().name == 'SUCCESS'
    assert node.trigger_activate().name == 'SUCCESS'
    assert worker_threads() == ['emotion_worker']
    backend = node.pipeline.backend
    assert node.trigger_shutdown().name == 'SUCCESS'
    assert state(node) == 'finalized' and worker_threads() == [] and not backend.loaded


@pytest.mark.parametrize('free', [False, True])
def test_person_detector_lifecycle_keeps_or_frees_model_and_threads(harness, free):
    node = harness.add(PersonDetectorNode(context=harness.context, parameter_overrides=[
        Parameter('device', value='cpu'), Parameter('free_on_deactivate', value=free)]))
    assert node.trigger_configure().name == 'SUCCESS'
    detector = node.detector
    model = detector.model
    assert model is not None
    assert node.trigger_activate().name == 'SUCCESS'
    assert worker_threads() == ['person_detector_worker']
    assert node.trigger_deactivate().name == 'SUCCESS'
    assert (detector.model is None) is free and worker_threads() == []
    assert node.trigger_activate().name == 'SUCCESS'
    assert detector.model is not None and worker_threads() == ['person_detector_worker']
    assert (detector.model is model) is (not free)  # kept: the same model and tracker
    assert node.trigger_deactivate().name == 'SUCCESS'
    assert node.trigger_cleanup().name == 'SUCCESS'
    assert node.detector is None and detector.model is None and worker_threads() == []
    assert node.trigger_shutdown().name == 'SUCCESS' and state(node) == 'finalized'


# -- signals -----------------------------------------------------------------------------------------
def _start_process(module, extra=()):
    cmd = [sys.executable, '-m', f'emotion_perception.nodes.{module}', '--ros-args',
           '-p', 'autostart:=true', *extra]
    return subprocess.Popen(cmd, env=dict(os.environ), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_sigint_and_sigterm_exit_cleanly_with_code_0():
    """Four processes (both nodes x both signals), started together; each must say 'active',
    then exit with code 0 on the signal."""
    runs = [(m, sig) for m in ('emotion_node', 'person_detector')
            for sig in (signal.SIGINT, signal.SIGTERM)]
    procs = [_start_process(m, ['-r', f'__node:={m}_{sig.name.lower()}',
                                *(['-p', 'device:=cpu'] if m == 'person_detector' else [])])
             for m, sig in runs]
    logs = [[] for _ in procs]

    def read(i):
        for line in procs[i].stdout:
            logs[i].append(line)
    readers = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(len(procs))]
    for r in readers:
        r.start()
    try:
        end = time.monotonic() + 120
        while time.monotonic() < end and not all(
                any(line.rstrip().endswith('active') for line in log) for log in logs):
            assert all(p.poll() is None for p in procs), [''.join(log) for log in logs]
            time.sleep(0.2)
        for (m, sig), p, log in zip(runs, procs, logs):
            assert any(line.rstrip().endswith('active') for line in log), (m, ''.join(log))
            p.send_signal(sig)
        for (m, sig), p, log in zip(runs, procs, logs):
            assert p.wait(timeout=30) == 0, (m, sig.name, ''.join(log))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


# -- model load failures -------------------------------------------------------------------------------
@pytest.mark.parametrize('model,expected', [
    ('/nonexistent/emotion_model.hdf5', 'emotion_model.hdf5'),
    ('CORRUPT', 'corrupt.hdf5'),
])
def test_emotion_model_load_failure_leaves_node_unconfigured(harness, tmp_path, model, expected):
    if model == 'CORRUPT':
        model = str(tmp_path / 'corrupt.hdf5')
        with open(model, 'wb') as f:
            f.write(b'\x89HDF\r\n\x1a\n' + os.urandom(2048))  # HDF5 signature, garbage after
    node = harness.add(EmotionNode(context=harness.context, parameter_overrides=[
        Parameter('backend.model', value=model)]))
    assert node.trigger_configure().name == 'FAILURE'
    assert state(node) == 'unconfigured' and node.pipeline is None
    assert 'ModelLoadError' in node.failure_reason and expected in node.failure_reason


def test_gpu_out_of_memory_at_load_leaves_node_unconfigured(harness):
    node = harness.add(EmotionNode(context=harness.context, parameter_overrides=[
        Parameter('backend.name', value=fb.spec(fb.FakeBackend)),
        Parameter('backend.model', value='load_error=oom')]))
    assert node.trigger_configure().name == 'FAILURE'
    assert state(node) == 'unconfigured'
    assert 'OutOfMemoryError' in node.failure_reason and 'CUDA out of memory' in node.failure_reason


@pytest.mark.parametrize('which', ['missing', 'corrupt'])
def test_detector_load_failure_leaves_node_unconfigured(harness, tmp_path, which):
    path = '/nonexistent/yolo.pt'
    if which == 'corrupt':
        path = str(tmp_path / 'corrupt.pt')
        with open(path, 'wb') as f:
            f.write(b'PK\x03\x04' + os.urandom(4096))  # zip signature (torch format), garbage
    node = harness.add(PersonDetectorNode(context=harness.context, parameter_overrides=[
        Parameter('model', value=path), Parameter('device', value='cpu')]))
    assert node.trigger_configure().name == 'FAILURE'
    assert state(node) == 'unconfigured' and node.detector is None
    assert 'cannot load person detector' in node.failure_reason and path in node.failure_reason


# -- CUDA out of memory during inference (core) ----------------------------------------------------
def test_oom_retry_splits_batches_in_halves_then_reports():
    backend = fb.OOMBackend({'model': 'oom_above=2'})
    backend.load()
    img = np.zeros((48, 64, 3), np.uint8)
    boxes = [BBox(i * 10, 0, i * 10 + 10, 40) for i in range(5)]
    res = backend.predict(img, boxes)
    assert [r.status for r in res] == [Status.OK] * 5
    assert backend.batch_sizes == [5, 2, 3, 1, 2]  # 5 -> 2 + 3 -> 2 + (1 + 2)
    assert backend.oom_retries == 2
    # the scores are those of a run without OOM, in the right order
    ref = fb.FakeBackend()
    ref.load()
    assert all(np.array_equal(a.scores, b.scores) for a, b in zip(res, ref.predict(img, boxes)))
    backend = fb.OOMBackend({'model': 'oom_above=0'})
    backend.load()
    res = backend.predict(img, boxes[:3])
    assert [(r.status, r.reason) for r in res] == [(Status.ERROR, OUT_OF_GPU_MEMORY)] * 3


def test_is_out_of_memory_sees_through_wrapping():
    import torch
    try:
        try:
            raise torch.cuda.OutOfMemoryError('CUDA out of memory. Tried to allocate 2 GiB')
        except RuntimeError as exc:
            raise BackendError('model call failed') from exc
    except BackendError as wrapped:
        assert is_out_of_memory(wrapped)
    assert is_out_of_memory(RuntimeError('CUDA error: out of memory'))
    assert not is_out_of_memory(RuntimeError('shape mismatch'))


def test_other_backend_errors_are_not_retried():
    backend = fb.RaisingBackend()
    backend.load()
    with pytest.raises(BackendError):
        backend.predict(np.zeros((48, 64, 3), np.uint8), [BBox(0, 0, 10, 10), BBox(5, 5, 20, 20)])
    assert backend.calls == 1 and backend.oom_retries == 0


# -- a stalled model --------------------------------------------------------------------------------
def test_stalled_backend_turns_diagnostics_error_then_recovers(harness):
    rig = EmotionRig(harness, fb.BlockingBackend, stall_timeout_s=0.5, diagnostics_period_s=0.2)
    backend = rig.backend
    rig.img_pub.publish(image_msg(1))
    assert harness.wait_for(lambda: rig.counts().get('images_in', 0) == 1, 20)
    rig.det_pub.publish(det_array(header(1), PERSONS))
    assert backend.entered.wait(20)

    def levels():
        return [(s.level, s.message) for arr in list(rig.diagnostics) for s in arr.status]
    try:
        assert harness.wait_for(lambda: any(lv == ERROR and 'stalled' in msg
                                            for lv, msg in levels()), 20), levels()
    finally:
        backend.release()
    assert harness.wait_for(lambda: rig.answers((1, 0)), 20)
    n = len(rig.diagnostics)
    assert harness.wait_for(lambda: len(rig.diagnostics) > n + 1, 20)
    assert all(s.level != ERROR for s in rig.diagnostics[-1].status)
