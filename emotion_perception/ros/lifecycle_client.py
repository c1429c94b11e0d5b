"""Driving another process's lifecycle node through its standard services (what a lifecycle
manager or the launch file does): ``<node>/change_state`` and ``<node>/get_state``."""
from __future__ import annotations

import time

from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState

TRANSITIONS = {'configure': Transition.TRANSITION_CONFIGURE,
               'activate': Transition.TRANSITION_ACTIVATE,
               'deactivate': Transition.TRANSITION_DEACTIVATE,
               'cleanup': Transition.TRANSITION_CLEANUP}


class LifecycleClient:
    """Lifecycle service client for the node ``target`` (fully qualified name, e.g. '/ns/node').

    The owning ``node`` must be spun by an executor in another thread.
    """

    def __init__(self, node, target: str) -> None:
        self.target = target.rstrip('/')
        self._change = node.create_client(ChangeState, f'{self.target}/change_state')
        self._get = node.create_client(GetState, f'{self.target}/get_state')

    def wait_ready(self, timeout_s: float = 30.0) -> bool:
        return (self._change.wait_for_service(timeout_sec=timeout_s)
                and self._get.wait_for_service(timeout_sec=timeout_s))

    @staticmethod
    def _result(future, timeout_s: float):
        end = time.monotonic() + timeout_s
        while not future.done() and time.monotonic() < end:
            time.sleep(0.01)
        if not future.done():
            raise TimeoutError('lifecycle service call timed out')
        return future.result()

    def state(self, timeout_s: float = 10.0) -> str:
        """Current state label ('unconfigured', 'inactive', 'active', 'finalized')."""
        return self._result(self._get.call_async(GetState.Request()), timeout_s).current_state.label

    def change(self, transition: str, timeout_s: float = 120.0) -> bool:
        """Run ``transition`` ('configure', 'activate', ...); True when it succeeded."""
        req = ChangeState.Request()
        req.transition.id = TRANSITIONS[transition]
        return bool(self._result(self._change.call_async(req), timeout_s).success)
