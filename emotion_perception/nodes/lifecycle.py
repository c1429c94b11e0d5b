"""Running a lifecycle node as a process: init, optional autostart, spin, clean exit."""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn

from ..ros.rclpy_compat import lifecycle_state_label

#: executor threads of a node process: one may sit in a long transition (configure loading a
#: model) while the others serve get_state, the parameter services, /diagnostics and the
#: subscriptions (the model itself runs in the node's worker thread).
EXECUTOR_THREADS = 4
#: on SIGINT/SIGTERM, how long the exit waits for a worker inside a model call (e.g. the first
#: inference, which imports torch._dynamo lazily: seconds on a busy CPU) before the process
#: exits anyway (the worker is a daemon thread). Below launch's 5 s SIGINT -> SIGTERM escalation.
EXIT_WORKER_TIMEOUT_S = 3.0


def autostart(node: LifecycleNode) -> bool:
    """configure + activate (what a lifecycle manager or the launch file would do).

    Takes the node from where it is: a node that a lifecycle manager already configured is only
    activated, one already active is left alone, so autostart and an external manager cannot
    drive it into an invalid transition (each transition is also checked and serialized by
    ``PerceptionNode.request_transition``). Returns False (the node stays unconfigured/inactive)
    when a transition fails; the node has logged why.
    """
    state = lifecycle_state_label(node)
    if state == 'unconfigured':
        if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            if lifecycle_state_label(node) == 'unconfigured':
                node.get_logger().error('autostart: configure failed; the node stays '
                                        'unconfigured')
                return False
        state = lifecycle_state_label(node)
    if state == 'inactive':
        return node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    return state == 'active'


def spin_node(node_cls: type[LifecycleNode], args: list[str] | None = None) -> int:
    """Create ``node_cls``, autostart it if its ``autostart`` parameter is true, spin until
    SIGINT/SIGTERM, then shut the node down (worker threads stopped). Returns the exit code.

    Autostart runs in a thread next to the spinning executor, so the node answers its lifecycle
    and parameter services (and publishes /diagnostics) while it loads its model.
    """
    rclpy.init(args=args)
    node = None
    executor = MultiThreadedExecutor(num_threads=EXECUTOR_THREADS)
    try:
        node = node_cls()
        executor.add_node(node)
        if node.get_parameter('autostart').value:
            threading.Thread(target=autostart, args=(node,), name='autostart',
                             daemon=True).start()
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception as exc:  # noqa: BLE001 - re-raised unless it is the shutdown race
        # SIGINT/SIGTERM run rclpy's handler, which shuts the context down while the executor
        # may be building its next wait set: that raises RCLError('... the given context is
        # not valid ...') from executor.spin() instead of ExternalShutdownException. It is
        # the requested shutdown, not a failure (exit code 0); any other error is raised.
        if rclpy.ok() or 'context is not valid' not in str(exc):
            raise
    finally:
        # A second SIGINT/SIGTERM during clean-up must not abort it (exit code stays 0).
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        if node is not None:
            lock = getattr(node, '_transition_lock', None)
            got = lock.acquire(timeout=10.0) if lock is not None else False
            try:
                node._teardown(worker_timeout_s=EXIT_WORKER_TIMEOUT_S)
            except Exception:  # noqa: BLE001 - best effort during shutdown
                pass
            finally:
                if got:
                    lock.release()
            executor.remove_node(node)
            node.destroy_node()
        executor.shutdown()
        if rclpy.ok():
            rclpy.shutdown()
    return 0


def run_node_process(node_cls: type[LifecycleNode], args: list[str] | None = None) -> int:
    """The node process's entry point: :func:`spin_node`, then exit at once.

    After spin_node has stopped the workers, released the model, destroyed the node and shut
    rclpy down (the DDS participant is gone, peers see the node leave), the process ends with
    ``os._exit`` instead of running Python's interpreter finalization: with torch and
    ultralytics loaded that takes 2-4 s more on a busy 2-core machine (measured: a script that
    only loads the detector and runs one inference needs that long from its last line to its
    exit), which pushed a SIGINT-ed node past ``ros2 launch``'s 5 s SIGINT -> SIGTERM
    escalation. Nothing is left to finalize: no files are open for writing, stdout and stderr
    are flushed here.
    """
    code = spin_node(node_cls, args)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed pipe
            pass
    os._exit(code)
