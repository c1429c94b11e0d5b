"""The node process's exit path: SIGINT/SIGTERM racing the executor must not be an error.

rclpy's signal handler shuts the context down from the signal; if the executor was between
its ``context.ok()`` check and building its next wait set, ``executor.spin()`` raises
``RCLError('failed to initialize wait set: the given context is not valid ...')`` instead of
``ExternalShutdownException`` (seen in CI: the installed node exited 1 on SIGINT). Here the race
is made certain: the executor's spin shuts the context down and then creates a guard condition
on it (public API; rclpy's executor creates guard conditions and wait sets on its context, and
both raise the same RCLError '... the given context is not valid ...'), so the real RCLError is
raised.
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


def test_other_errors_in_spin_are_raised(monkeypatch):
    def failing_spin(self):
        raise RuntimeError('a real bug')
    monkeypatch.setattr(MultiThreadedExecutor, 'spin', failing_spin)
    with pytest.raises(RuntimeError, match='a real bug'):
        lifecycle.spin_node(_Node, [])
    assert not rclpy.ok()
