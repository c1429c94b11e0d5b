"""A node that silently stops answering is the worst failure a robot can have (issue 18, item 0).

Logging can never raise into a node's threads (rclpy raises when one call site changes
severity), and a worker thread that dies for any reason is restarted, or /diagnostics turns
ERROR with the reason, while every detections array is still answered.
"""
import array
import threading

import numpy as np
import pytest
import rclpy.logging
from sensor_msgs.msg import CompressedImage

from emotion_perception.msg import PersonEmotion
from emotion_perception.ros.diagnostics import ERROR as DIAG_ERROR
from emotion_perception.ros.image_conversion import numpy_to_image_msg, rgb_to_compressed
from emotion_perception.ros.node_utils import KindLogger, SafeLogger
from emotion_perception.testing import fake_backends as fb
from emotion_perception.testing import image_bombs
from emotion_perception.testing.node_rig import EmotionRig, det_array, header
from emotion_perception.testing.ros_harness import RosHarness

pytestmark = pytest.mark.ros

OK, ERROR = PersonEmotion.STATUS_OK, PersonEmotion.STATUS_ERROR
PERSONS = [('1', (0, 0, 32, 48)), ('2', (32, 0, 32, 48))]


@pytest.fixture
def harness():
    with RosHarness() as h:
        yield h


def rgb(seed):
    return np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)


def compressed(data: bytes, stamp: int) -> CompressedImage:
    msg = CompressedImage(header=header(stamp), format='png')
    msg.data = array.array('B', data)
    return msg


def good_compressed(stamp):
    return compressed(bytes(rgb_to_compressed(rgb(stamp), 'png').data), stamp)


def reasons(ans):
    return [p.status_reason for p in ans.persons]


# -- the logger ---------------------------------------------------------------------------------
def test_rclpy_raises_on_a_severity_change_at_one_call_site_and_safe_logger_does_not():
    """The hazard itself (the reference), then the same pattern through the wrappers."""
    raw = rclpy.logging.get_logger('severity_probe_raw')
    with pytest.raises(ValueError, match='severity cannot be changed'):
        for error in (False, True):
            (raw.error if error else raw.warning)('probe')
    safe = SafeLogger(rclpy.logging.get_logger('severity_probe_safe'))
    kinds = KindLogger(rclpy.logging.get_logger('severity_probe_kind'), period_s=0.0)
    for error in (False, True, False, True):
        (safe.error if error else safe.warning)('probe')
        kinds.warn('k', 'probe', error=error)
    assert safe.failures == 0


def test_safe_logger_swallows_any_logger_failure(capfd):
    class Broken:
        def warning(self, text):
            raise RuntimeError('context is invalid')
        error = info = debug = fatal = warning
    log = SafeLogger(Broken())
    log.warning('a')
    log.error('b')
    KindLogger(Broken()).warn('x', 'c', error=True)
    assert log.failures == 2
    assert '[ERROR] b (logger failed: RuntimeError: context is invalid)' in capfd.readouterr().err


# -- the sequences that killed the worker -------------------------------------------------------
@pytest.mark.parametrize('order', ['png_then_bmp', 'bmp_then_png'])
def test_huge_png_and_bmp_in_either_order_leave_the_node_answering(harness, order):
    rig = EmotionRig(harness, image_transport='compressed')
    bombs = [image_bombs.png(30000, 30000), image_bombs.bmp(40000, 40000)]
    assert len(bombs[1]) == 118
    if order == 'bmp_then_png':
        bombs.reverse()
    for round_ in range(2):  # twice: a second report from the same call sites
        for i, data in enumerate(bombs):
            stamp = 10 * round_ + i + 1
            ans = rig.send(det_array(header(stamp), PERSONS), compressed(data, stamp))
            assert [p.status for p in ans.persons] == [ERROR, ERROR], reasons(ans)
            assert not any('Logger' in r for r in reasons(ans)), reasons(ans)
        ans = rig.send(det_array(header(100 + round_), PERSONS), good_compressed(100 + round_))
        assert [p.status for p in ans.persons] == [OK, OK], reasons(ans)
    assert rig.node._worker.running and rig.node._worker.restarts == 0
    assert rig.node.get_logger().failures == 0


def test_a_backend_failing_after_a_warning_leaves_the_node_answering(harness):
    rig = EmotionRig(harness, fb.RaisingBackend)
    for stamp in (1, 2, 3, 4):
        image = numpy_to_image_msg(rgb(stamp), 'rgb8', header=header(stamp))
        if stamp % 2:
            image.encoding = 'weird'  # a warning
        ans = rig.send(det_array(header(stamp), PERSONS), image)
        assert [p.status for p in ans.persons] == [ERROR, ERROR]
        expected = 'bad image (unknown_encoding)' if stamp % 2 else 'backend error: BackendError'
        assert all(r.startswith(expected) for r in reasons(ans)), reasons(ans)
    assert rig.counts()['errors.backend'] == 2 and rig.node._worker.restarts == 0


# -- a worker that dies anyway ---------------------------------------------------------------------
class _Killed(BaseException):
    """Not an ``Exception``: passes every ``except Exception`` in the node."""


def _diag_values(rig):
    out = []
    for arr in list(rig.diagnostics):
        for st in arr.status:
            out.append((st.level, st.message, {kv.key: kv.value for kv in st.values}))
    return out


def test_a_worker_killed_by_an_exception_is_restarted_and_its_array_answered(harness):
    rig = EmotionRig(harness, diagnostics_period_s=0.2)
    node = rig.node
    process, calls = node._process, []

    def dying_once(job, image):
        calls.append(job)
        if len(calls) == 1:
            raise _Killed('injected')
        return process(job, image)
    node._process = dying_once
    ans = rig.send(det_array(header(1), PERSONS), numpy_to_image_msg(rgb(1), 'rgb8',
                                                                      header=header(1)))
    assert [p.status for p in ans.persons] == [ERROR, ERROR]
    assert all('worker thread died (_Killed: injected' in r for r in reasons(ans)), reasons(ans)
    for stamp in (2, 3):
        ans = rig.send(det_array(header(stamp), PERSONS),
                       numpy_to_image_msg(rgb(stamp), 'rgb8', header=header(stamp)))
        assert [p.status for p in ans.persons] == [OK, OK], reasons(ans)
    assert node._worker.restarts == 1 and node._worker.running
    assert rig.counts()['errors.worker_died'] == 1
    assert harness.wait_for(lambda: any(v.get('worker_restarts') == '1' and 'injected' in
                                        v.get('worker_last_failure', '')
                                        for _, _, v in _diag_values(rig)), 10)
    assert len([t for t in threading.enumerate() if t.name == 'emotion_worker']) == 1


def test_a_worker_that_keeps_dying_turns_diagnostics_error_and_arrays_are_still_answered(
        harness):
    rig = EmotionRig(harness, diagnostics_period_s=0.2)
    node = rig.node
    node._worker.max_restarts = 1

    def always_dying(job, image):
        raise _Killed('injected every time')
    node._process = always_dying
    for stamp in (1, 2, 3, 4):  # deaths 1, 2 (gives up), then answered by the callback
        ans = rig.send(det_array(header(stamp), PERSONS),
                       numpy_to_image_msg(rgb(stamp), 'rgb8', header=header(stamp)))
        assert [p.status for p in ans.persons] == [ERROR, ERROR]
        assert all('injected every time' in r for r in reasons(ans)), reasons(ans)
    assert not node._worker.running and 'died 2 times' in node._worker.failed_reason
    assert harness.wait_for(lambda: any(
        lv == DIAG_ERROR and msg.startswith('worker thread not running') and 'injected' in msg
        for lv, msg, _ in _diag_values(rig)), 10), _diag_values(rig)[-1:]
    # deactivate + activate starts a fresh worker
    del node._process
    assert node.trigger_deactivate().name == 'SUCCESS'
    assert node.trigger_activate().name == 'SUCCESS'
    assert harness.wait_matched(rig.det_pub)
    ans = rig.send(det_array(header(9), PERSONS),
                   numpy_to_image_msg(rgb(9), 'rgb8', header=header(9)))
    assert [p.status for p in ans.persons] == [OK, OK], reasons(ans)


def test_worker_thread_restarts_a_dying_loop_then_gives_up_with_the_reason():
    """The mechanism both nodes share (``WorkerThread``), without ROS."""
    import time

    from emotion_perception.ros.node_utils import WorkerThread
    deaths, runs = [], []
    done = threading.Event()

    def loop(stop):
        runs.append(1)
        if len(runs) <= 3:
            raise _Killed(f'death {len(runs)}')
        done.set()
        stop.wait()
    worker = WorkerThread('survivor', loop, on_death=lambda r, g: deaths.append((r, g)))
    worker.start()
    assert done.wait(10) and worker.running
    assert [g for _, g in deaths] == [False] * 3 and worker.restarts == 3
    assert deaths[0][0].startswith('_Killed: death 1 at test_worker_survival.py:')
    assert worker.stop(timeout=5)

    def always(stop):
        raise RuntimeError('broken for good')
    worker = WorkerThread('doomed', always, on_death=lambda r, g: deaths.append((r, g)),
                          max_restarts=2)
    deaths.clear()
    worker.start()
    end = time.monotonic() + 10
    while worker.running and time.monotonic() < end:
        time.sleep(0.01)
    assert not worker.running and [g for _, g in deaths] == [False, False, True]
    assert 'died 3 times' in worker.failed_reason and 'broken for good' in worker.failed_reason


def test_callback_guard_logs_a_failure_but_not_the_shutdown_itself():
    """After SIGINT the context is invalid and a timer's publish raises RCLError: that is the
    shutdown, not a failure to report with a traceback (the launch test's clean exit)."""
    lines, counted = [], []

    class Logger:
        def error(self, text):
            lines.append(text)

        def warning(self, text):
            lines.append(text)

    from emotion_perception.ros.node_utils import CallbackGuard
    stopping = [False]
    guard = CallbackGuard(Logger(), counted.append)
    guard.shutting_down = lambda: stopping[0]

    def boom():
        raise RuntimeError('publisher context is invalid')

    wrapped = guard.wrap('timer', boom)
    wrapped()
    assert counted == ['timer'] and len(lines) == 1 and 'Traceback' in lines[0]
    stopping[0] = True
    wrapped()
    assert counted == ['timer', 'timer'] and len(lines) == 1
