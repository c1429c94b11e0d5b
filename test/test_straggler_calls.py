"""Straggler model calls (issue 18, item 1): a model call that outlives deactivate's
``worker_stop_timeout_s``. configure and activate are refused with the reason while it runs;
cleanup's release and ``free_on_deactivate``'s unload wait for it, so that never two models are
alive and the model (and the GPU cache) is freed once the call has returned, not under it."""
import threading

import numpy as np
import pytest

from emotion_perception.core.backends import base as backend_base
from emotion_perception.msg import PersonEmotion
from emotion_perception.ros.image_conversion import numpy_to_image_msg
from emotion_perception.testing import fake_backends as fb
from emotion_perception.testing.node_rig import EmotionRig, det_array, header
from emotion_perception.testing.ros_harness import RosHarness

pytestmark = pytest.mark.ros

OK = PersonEmotion.STATUS_OK
PERSONS = [('1', (0, 0, 32, 48)), ('2', (32, 0, 32, 48))]


@pytest.fixture
def harness():
    with RosHarness() as h:
        yield h


@pytest.fixture
def models(monkeypatch):
    """Fresh fake-model bookkeeping and a record of every GPU cache release: for each, the
    number of fake forward calls running then."""
    fb.FakeBackend.loaded_now.clear()
    fb.FakeBackend.unloads.clear()
    fb.FakeBackend.most_loaded = 0
    frees = []
    backends = []
    monkeypatch.setattr(backend_base, 'free_gpu_cache',
                        lambda: frees.append(sum(b.in_call for b in backends)))
    return fb.FakeBackend, frees, backends


def image_msg(stamp):
    rgb = np.random.default_rng(stamp).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    return numpy_to_image_msg(rgb, 'rgb8', header=header(stamp))


def workers():
    return [t for t in threading.enumerate() if t.name == 'emotion_worker' and t.is_alive()]


def start_stuck_call(harness, rig):
    rig.img_pub.publish(image_msg(1))
    assert harness.wait_for(lambda: rig.counts().get('images_in', 0) == 1, 20)
    rig.det_pub.publish(det_array(header(1), PERSONS))
    assert rig.backend.entered.wait(20)


def test_cleanup_then_configure_never_loads_a_second_model_under_a_running_call(
        harness, models):
    fake, frees, backends = models
    rig = EmotionRig(harness, fb.BlockingBackend, worker_stop_timeout_s=0.3)
    node, old = rig.node, rig.backend
    backends.append(old)
    start_stuck_call(harness, rig)
    try:
        assert node.trigger_deactivate().name == 'SUCCESS'  # after the 0.3 s join timeout
        assert node.trigger_cleanup().name == 'SUCCESS'
        assert rig.counts()['model_free_deferred'] == 1
        assert id(old) in fake.loaded_now and fake.unloads == [] and frees == []
        assert node.trigger_configure().name == 'FAILURE'
        assert 'still inside a model call' in node.failure_reason
        assert rig.counts()['configure_refused.worker_busy'] == 1
        assert node.lifecycle_state == 'unconfigured' and fake.most_loaded == 1
    finally:
        old.release()
    assert harness.wait_for(lambda: not workers(), 10)
    # released by the worker once the call returned, and the GPU cache emptied after it
    assert fake.unloads == [{'backend': id(old), 'in_call': 0}]
    assert frees == [0] and fake.loaded_now == set() and node.pipeline is None
    assert node.trigger_configure().name == 'SUCCESS', node.failure_reason
    assert node.trigger_activate().name == 'SUCCESS'
    assert fake.most_loaded == 1 and rig.backend is not old
    rig.backend.release()  # the new model does not block
    assert harness.wait_matched(rig.det_pub)
    ans = rig.send(det_array(header(2), PERSONS), image_msg(2))
    assert [p.status for p in ans.persons] == [OK, OK]


def test_free_on_deactivate_unloads_after_the_running_call_returns(harness, models):
    fake, frees, backends = models
    rig = EmotionRig(harness, fb.BlockingBackend, worker_stop_timeout_s=0.3,
                     free_on_deactivate=True)
    node, backend = rig.node, rig.backend
    backends.append(backend)
    start_stuck_call(harness, rig)
    try:
        assert node.trigger_deactivate().name == 'SUCCESS'
        assert backend.loaded and fake.unloads == [] and frees == []
        assert node.trigger_activate().name == 'FAILURE'
        assert 'still inside a model call' in node.failure_reason
    finally:
        backend.release()
    assert harness.wait_for(lambda: not workers(), 10)
    assert fake.unloads == [{'backend': id(backend), 'in_call': 0}] and frees == [0]
    assert not backend.loaded
    assert node.trigger_activate().name == 'SUCCESS'  # reloads the freed model
    assert backend.loaded and fake.most_loaded == 1
    assert harness.wait_matched(rig.det_pub)
    ans = rig.send(det_array(header(2), PERSONS), image_msg(2))
    assert [p.status for p in ans.persons] == [OK, OK]


class CancellingBackend(fb.BlockingBackend):
    """Like the remote backend: unload makes the running call return (and holds no weights)."""

    unload_cancels_calls = True

    def unload(self):
        super().unload()
        self.release()


def test_a_backend_whose_unload_cancels_calls_is_unloaded_at_once(harness, models):
    fake, frees, backends = models
    rig = EmotionRig(harness, fb.spec(CancellingBackend).replace(
        'emotion_perception.testing.fake_backends', __name__), worker_stop_timeout_s=0.3)
    node, backend = rig.node, rig.backend
    backends.append(backend)
    start_stuck_call(harness, rig)
    assert node.trigger_deactivate().name == 'SUCCESS'
    assert node.trigger_cleanup().name == 'SUCCESS'
    assert fake.unloads == [{'backend': id(backend), 'in_call': 1}]  # at once, under the call
    assert harness.wait_for(lambda: not workers(), 10)
    assert node.trigger_configure().name == 'SUCCESS'
