"""Running a lifecycle node as a process: init, optional autostart, spin, clean exit."""
from __future__ import annotations

import signal

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn


def autostart(node: LifecycleNode) -> bool:
    """configure + activate (what a lifecycle manager or the launch file would do).

    Returns False (and leaves the node unconfigured/inactive) when a transition fails; the
    reason has been logged by the node.
    """
    if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
        node.get_logger().error('autostart: configure failed; the node stays unconfigured')
        return False
    return node.trigger_activate() == TransitionCallbackReturn.SUCCESS


def spin_node(node_cls: type[LifecycleNode], args: list[str] | None = None) -> int:
    """Create ``node_cls``, autostart it if its ``autostart`` parameter is true, spin until
    SIGINT/SIGTERM, then shut the node down (worker threads stopped). Returns the exit code."""
    rclpy.init(args=args)
    node = None
    # Two threads: lifecycle services and the diagnostics timer stay responsive while a
    # callback runs; the heavy work runs in the node's own worker thread anyway.
    executor = MultiThreadedExecutor(num_threads=2)
    try:
        node = node_cls()
        executor.add_node(node)
        if node.get_parameter('autostart').value:
            autostart(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        # A second SIGINT/SIGTERM during clean-up must not abort it (exit code stays 0).
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        if node is not None:
            try:
                node._teardown()
            except Exception:  # noqa: BLE001 - best effort during shutdown
                pass
            executor.remove_node(node)
            node.destroy_node()
        executor.shutdown()
        if rclpy.ok():
            rclpy.shutdown()
    return 0
