"""In-process ROS 2 test harness: real nodes, real topics, one private context.

Used by the tests and benchmarks to start the real node classes in-process, publish real
messages and collect what comes out. The caller must have set ROS_AUTOMATIC_DISCOVERY_RANGE=
LOCALHOST and a ROS_DOMAIN_ID (test/conftest.py and the bench scripts do).
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable

import rclpy
from rclpy.context import Context
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node


class RosHarness:
    """A context + executor spinning in a background thread + a helper node."""

    def __init__(self, name: str = 'harness', threads: int = 4) -> None:
        self.context = Context()
        rclpy.init(context=self.context)
        self.executor = MultiThreadedExecutor(num_threads=threads, context=self.context)
        self.node = Node(name, context=self.context)
        self.executor.add_node(self.node)
        self._nodes: list[Node] = []
        #: exceptions that escaped executor.spin() ('Type: message'); it was spun again
        self.spin_errors: list[str] = []
        self._closing = False
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        """Spin as a node process does (``nodes.lifecycle.spin_guarded``): an exception out of
        ``spin()`` is recorded in ``spin_errors`` and the executor spun again."""
        from ..nodes.lifecycle import spin_guarded
        spin_guarded(self.executor, lambda: self._closing or not self.context.ok(),
                     lambda exc, text, giving_up: self.spin_errors.append(
                         f'{type(exc).__name__}: {exc}'))

    def add(self, node: Node) -> Node:
        self.executor.add_node(node)
        self._nodes.append(node)
        return node

    def publisher(self, msg_type: type, topic: str, qos: Any = 10):
        return self.node.create_publisher(msg_type, topic, qos)

    def collect(self, msg_type: type, topic: str, qos: Any = 10) -> list:
        """Subscribe and return the list that received messages are appended to."""
        received: list = []
        self.node.create_subscription(msg_type, topic, received.append, qos)
        return received

    @staticmethod
    def wait_for(predicate: Callable[[], bool], timeout: float = 30.0, period: float = 0.02
                 ) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate():
                return True
            time.sleep(period)
        return predicate()

    def wait_matched(self, publisher, count: int = 1, timeout: float = 10.0) -> bool:
        return self.wait_for(lambda: publisher.get_subscription_count() >= count, timeout)

    def close(self) -> None:
        for node in self._nodes:
            teardown = getattr(node, '_teardown', None)
            if teardown is not None:
                try:
                    teardown()
                except Exception:  # noqa: BLE001
                    pass
        # Stop spinning and wait for the spin thread before destroying what it may still use.
        self._closing = True
        self.executor.shutdown(timeout_sec=5.0)
        self._thread.join(timeout=10.0)
        for node in [*self._nodes, self.node]:
            node.destroy_node()
        rclpy.shutdown(context=self.context)

    def __enter__(self) -> 'RosHarness':
        return self

    def __exit__(self, *exc) -> None:
        self.close()
