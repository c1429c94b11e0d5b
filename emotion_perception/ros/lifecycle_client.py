"""Driving another process's lifecycle node through its standard services (what a lifecycle
manager or the launch file does): ``<node>/change_state`` and ``<node>/get_state``.

A service response can be lost while discovery is still matching the reply channel (the
request channel was matched, so ``wait_for_service`` returned). The client therefore never
waits on one call forever: when an answer is late it asks the node's state, and re-sends the
request when the node is still where it was.
"""
from __future__ import annotations

import time

from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState

TRANSITIONS = {'configure': Transition.TRANSITION_CONFIGURE,
               'activate': Transition.TRANSITION_ACTIVATE,
               'deactivate': Transition.TRANSITION_DEACTIVATE,
               'cleanup': Transition.TRANSITION_CLEANUP}
#: transition -> (state it starts from, state it reaches on SUCCESS)
_STATES = {'configure': ('unconfigured', 'inactive'), 'activate': ('inactive', 'active'),
           'deactivate': ('active', 'inactive'), 'cleanup': ('inactive', 'unconfigured')}
#: how long one call may stay unanswered before the client checks the state
ANSWER_PATIENCE_S = 5.0


class LifecycleClient:
    """Lifecycle service client for the node ``target`` (fully qualified name, e.g. '/ns/node').

    The owning ``node`` must be spun by an executor in another thread.
    """

    def __init__(self, node, target: str) -> None:
        self.target = target.rstrip('/')
        self._change = node.create_client(ChangeState, f'{self.target}/change_state')
        self._get = node.create_client(GetState, f'{self.target}/get_state')

    def wait_ready(self, timeout_s: float = 30.0) -> bool:
        ready = (self._change.wait_for_service(timeout_sec=timeout_s)
                 and self._get.wait_for_service(timeout_sec=timeout_s))
        return ready

    @staticmethod
    def _wait(future, timeout_s: float) -> bool:
        end = time.monotonic() + timeout_s
        while not future.done() and time.monotonic() < end:
            time.sleep(0.01)
        return future.done()

    def state(self, timeout_s: float = 10.0) -> str:
        """Current state label ('unconfigured', 'inactive', 'active', 'finalized'), or a
        transition state ('configuring', ...). Re-asks when an answer is late."""
        end = time.monotonic() + timeout_s
        while True:
            future = self._get.call_async(GetState.Request())
            if self._wait(future, min(ANSWER_PATIENCE_S, max(0.1, end - time.monotonic()))):
                return future.result().current_state.label
            if time.monotonic() >= end:
                raise TimeoutError(f'{self.target}/get_state did not answer in {timeout_s} s')

    def change(self, transition: str, timeout_s: float = 120.0) -> bool:
        """Run ``transition`` ('configure', 'activate', ...); True when it succeeded.

        Raises:
            TimeoutError: no answer and no state change within ``timeout_s``.
        """
        start_state, goal_state = _STATES[transition]
        req = ChangeState.Request()
        req.transition.id = TRANSITIONS[transition]
        end = time.monotonic() + timeout_s
        future = self._change.call_async(req)
        while time.monotonic() < end:
            if self._wait(future, min(ANSWER_PATIENCE_S, max(0.1, end - time.monotonic()))):
                return bool(future.result().success)
            try:  # late answer: was it lost, is the transition still running, or never started?
                current = self.state(timeout_s=min(10.0, max(0.1, end - time.monotonic())))
            except TimeoutError:
                continue
            if current == goal_state:
                return True
            if current == start_state:  # the request (or a FAILURE answer) got lost: ask again
                future = self._change.call_async(req)
        raise TimeoutError(f'{self.target}: {transition} got no answer in {timeout_s} s')
