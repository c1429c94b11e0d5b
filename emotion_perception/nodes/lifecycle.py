"""Running a lifecycle node as a process: init, optional autostart, spin, clean exit.

SIGINT / SIGTERM at any moment end the process with exit code 0, no traceback, within about
``EXIT_TRANSITION_WAIT_S + EXIT_WORKER_TIMEOUT_S`` (< launch's 5 s): during the imports through
``nodes.signals`` (installed by the entry points, ``nodes.entry``), afterwards through rclpy's
handler (the context shut down wherever the main thread is) and :func:`spin_node`'s ordered exit;
an autostart thread that finds the context shut down ends quietly, and a transition that does
not finish (a model load that hangs) is not waited for.
"""
from __future__ import annotations

import logging
import signal
import threading

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn

from ..ros.rclpy_compat import lifecycle_state_label
from . import signals

#: executor threads of a node process: one may sit in a long transition (configure loading a
#: model) while the others serve get_state, the parameter services, /diagnostics and the
#: subscriptions (the model itself runs in the node's worker thread).
EXECUTOR_THREADS = 4
#: on SIGINT/SIGTERM, how long the exit waits for a worker inside a model call (e.g. the first
#: inference, which imports torch._dynamo lazily: seconds on a busy CPU) before the process
#: exits anyway (the worker is a daemon thread). Below launch's 5 s SIGINT -> SIGTERM escalation.
EXIT_WORKER_TIMEOUT_S = 3.0
#: on exit, how long to wait for a transition in progress (autostart's configure loading a
#: model) before exiting without the node's teardown: a load that hangs must not hold the exit
#: past launch's 5 s (the process ends with os._exit; the GPU memory goes with it)
EXIT_TRANSITION_WAIT_S = 1.0


def shutting_down() -> bool:
    """A signal was received or the default context was shut down (by rclpy's handler)."""
    return bool(signals.signalled()) or not rclpy.ok()


def autostart(node: LifecycleNode) -> bool:
    """configure + activate (what a lifecycle manager or the launch file would do).

    Takes the node from where it is: a node that a lifecycle manager already configured is only
    activated, one already active is left alone, so autostart and an external manager cannot
    drive it into an invalid transition (each transition is also checked and serialized by
    ``PerceptionNode.request_transition``). Returns False (the node stays unconfigured/inactive)
    when a transition fails; the node has logged why. Never raises: an error because the
    process is shutting down (SIGINT during configure) ends it quietly, any other is logged.
    """
    try:
        return _autostart(node)
    except Exception as exc:  # noqa: BLE001 - a thread's exception would print a traceback
        if shutting_down():
            return False
        node.get_logger().error(f'autostart failed: {type(exc).__name__}: {exc}')
        return False


def _autostart(node: LifecycleNode) -> bool:
    state = lifecycle_state_label(node)
    if state == 'unconfigured':
        if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            if shutting_down():
                return False
            if lifecycle_state_label(node) == 'unconfigured':
                node.get_logger().error('autostart: configure failed; the node stays '
                                        'unconfigured')
                return False
        state = lifecycle_state_label(node)
    if state == 'inactive' and not shutting_down():
        return node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    return state == 'active'


def spin_node(node_cls: type[LifecycleNode], args: list[str] | None = None) -> int:
    """Create ``node_cls``, autostart it if its ``autostart`` parameter is true, spin until
    SIGINT/SIGTERM, then shut the node down (worker threads stopped). Returns the exit code.

    Autostart runs in a thread next to the spinning executor, so the node answers its lifecycle
    and parameter services (and publishes /diagnostics) while it loads its model.
    """
    rclpy.init(args=args)
    signals.running()
    node = None
    executor = None
    try:
        executor = MultiThreadedExecutor(num_threads=EXECUTOR_THREADS)
        node = node_cls()
        executor.add_node(node)
        if node.get_parameter('autostart').value and not shutting_down():
            threading.Thread(target=autostart, args=(node,), name='autostart',
                             daemon=True).start()
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:  # noqa: BLE001 - re-raised unless it is the requested shutdown
        # SIGINT/SIGTERM run rclpy's handler, which shuts the context down wherever the main
        # thread is: creating the node ('RCLError: ... context is invalid'), building the
        # executor's next wait set ('... the given context is not valid ...'), ... It is the
        # requested shutdown, not a failure (exit code 0); any other error is raised.
        if not shutting_down():
            raise
    finally:
        # A second SIGINT/SIGTERM during clean-up must not abort it (exit code stays 0).
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        if node is not None:
            _close_node(node, executor)
        if executor is not None:
            executor.shutdown()
        if rclpy.ok():
            rclpy.shutdown()
    return 0


def _close_node(node: LifecycleNode, executor: MultiThreadedExecutor | None) -> None:
    """Stop the worker, free the model, destroy the node; all within EXIT_WORKER_TIMEOUT_S +
    EXIT_TRANSITION_WAIT_S. A transition still running after EXIT_TRANSITION_WAIT_S (a model
    load that hangs) is left alone: the node is neither torn down nor destroyed under it (the
    process exits next)."""
    lock = getattr(node, '_transition_lock', None)
    got = lock.acquire(timeout=EXIT_TRANSITION_WAIT_S) if lock is not None else True
    if not got:
        running = getattr(node, '_transition', None)
        node.get_logger().warning(
            f'exiting while the {running[0] if running else "current"} transition is still '
            f'running after {EXIT_TRANSITION_WAIT_S} s (a model load that does not return?): '
            'not waiting for it')
        return
    try:
        teardown = getattr(node, '_teardown', None)
        if teardown is not None:
            teardown(worker_timeout_s=EXIT_WORKER_TIMEOUT_S)
    except Exception:  # noqa: BLE001 - best effort during shutdown
        pass
    finally:
        if lock is not None:
            lock.release()
    try:
        if executor is not None:
            executor.remove_node(node)
        node.destroy_node()
    except Exception:  # noqa: BLE001 - best effort during shutdown
        pass


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
    signals.exit_now(code)
    return code  # not reached
