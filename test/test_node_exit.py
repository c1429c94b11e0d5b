"""The node process's exit path: SIGINT/SIGTERM racing the executor must not be an error.

rclpy's signal handler shuts the context down from the signal; if the executor was between
its ``context.ok()`` check and building its next wait set, ``executor.spin()`` raises
``RCLError('failed to initialize wait set: the given context is not valid ...')`` instead of
``ExternalShutdownException`` (seen in CI: the installed node exited 1 on SIGINT). Here the race
is made certain: the executor's spin shuts the context down and then creates a guard condition
on it (public API; rclpy's executor creates guard conditions and wait sets on its context, and
both raise the same RCLError '... the given context is not valid ...'), so the real RCLError is
raised.

Any other exception out of ``spin()`` is reported and the executor spun again (issue 25).
"""
import pytest

pytest.importorskip('rclpy')

import rclpy  # noqa: E402
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.guard_condition import GuardCondition  # noqa: E402
from rclpy.lifecycle import LifecycleNode  # noqa: E402

from emotion_perception.nodes import lifecycle  # noqa: E402

pytestmark = pytest.mark.ros


class _Node(LifecycleNode):
    def __init__(self):
        super().__init__('exit_race_node')
        self.declare_parameter('autostart', False)

    def _teardown(self, worker_timeout_s=0.0):
        pass


def _racing_spin(self):
    context = self.context
    rclpy.shutdown()  # what the SIGINT handler does (the default context)
    # the executor's wait set needs a guard condition on the context, as rclpy builds it:
    # raises RCLError('failed to create guard_condition: the given context is not valid ...')
    GuardCondition(None, None, context=context)


def test_shutdown_race_in_spin_exits_with_code_0(monkeypatch):
    monkeypatch.setattr(MultiThreadedExecutor, 'spin', _racing_spin)
    assert lifecycle.spin_node(_Node, []) == 0
    assert not rclpy.ok()


class _Perception(_Node):
    """Records what ``spin_node`` reports to the node."""

    failures: list = []

    def executor_failed(self, exc, text, giving_up):
        _Perception.failures.append((f'{type(exc).__name__}: {exc}', 'Traceback' in text,
                                     giving_up))


def test_other_errors_in_spin_are_reported_and_the_executor_spun_again(monkeypatch):
    """Issue 25: an exception out of executor.spin() (rclpy's InvalidHandle race) ended the
    process. Now it is reported to the node (logged, counted, in /diagnostics) and the
    executor spun again; the process still ends with code 0 on the shutdown that follows."""
    calls = []

    def flaky_spin(self):
        calls.append(1)
        if len(calls) <= 2:
            raise RuntimeError(f'a race, time {len(calls)}')
        rclpy.shutdown()  # then SIGINT
    monkeypatch.setattr(MultiThreadedExecutor, 'spin', flaky_spin)
    _Perception.failures = []
    assert lifecycle.spin_node(_Perception, []) == 0
    assert len(calls) == 3 and not rclpy.ok()
    assert _Perception.failures == [('RuntimeError: a race, time 1', True, False),
                                    ('RuntimeError: a race, time 2', True, False)]


def test_a_spin_that_keeps_raising_ends_the_process_with_code_1(monkeypatch):
    def failing_spin(self):
        raise RuntimeError('broken for good')
    monkeypatch.setattr(MultiThreadedExecutor, 'spin', failing_spin)
    monkeypatch.setattr(lifecycle, 'SPIN_RETRY_S', 0.0)
    _Perception.failures = []
    assert lifecycle.spin_node(_Perception, []) == 1
    assert not rclpy.ok()
    assert len(_Perception.failures) == lifecycle.MAX_SPIN_FAILURES + 1
    assert [f[2] for f in _Perception.failures] == [False] * lifecycle.MAX_SPIN_FAILURES + [True]


def test_a_spin_failure_turns_the_node_diagnostics_warn_with_the_reason():
    """``PerceptionNode.executor_failed``: counted, logged, /diagnostics WARN naming it."""
    from diagnostic_msgs.msg import DiagnosticStatus

    from emotion_perception.nodes.emotion_node import EmotionNode
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        node = EmotionNode('spin_failure_node', context=context)
        sent = []
        node._diag_pub.publish = sent.append
        node._publish_diagnostics()
        assert sent[-1].status[0].level == DiagnosticStatus.OK
        node.executor_failed(RuntimeError('InvalidHandle race'), 'Traceback ...', False)
        node._publish_diagnostics()
        status = sent[-1].status[0]
        values = {kv.key: kv.value for kv in status.values}
        assert status.level == DiagnosticStatus.WARN
        assert 'the executor raised RuntimeError: InvalidHandle race' in status.message
        assert values['errors.executor'] == '1'
        assert values['executor_last_error'] == 'RuntimeError: InvalidHandle race'
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)
