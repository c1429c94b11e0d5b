"""Running a lifecycle node as a process: init, optional autostart, spin, clean exit.

SIGINT / SIGTERM at any moment end the process with exit code 0, no traceback, within about
``EXIT_TRANSITION_WAIT_S + EXIT_WORKER_TIMEOUT_S`` (< launch's 5 s): during the imports through
``nodes.signals`` (installed by the entry points, ``nodes.entry``), afterwards through rclpy's
handler (the context shut down wherever the main thread is) and :func:`spin_node`'s ordered exit;
an autostart thread that finds the context shut down ends quietly, and a transition that does
not finish (a model load that hangs) is not waited for.

Any other exception out of ``executor.spin()`` (an rclpy race, a bug in code that no guard
wraps) does not end the process: :func:`spin_guarded` logs it with its traceback, the node
counts and reports it in ``/diagnostics`` (``PerceptionNode.executor_failed``), and the
executor is spun again, after a short pause; only ``MAX_SPIN_FAILURES`` of them within
``SPIN_FAILURE_WINDOW_S`` (something broken for good) end it, with exit code 1 (a launch file's
``respawn`` can then start it again).
"""
from __future__ import annotations

import collections
import logging
import signal
import threading
import time
import traceback
from typing import Callable

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn

from ..core.heap import trim_periodically
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
#: exceptions out of ``executor.spin()`` tolerated within SPIN_FAILURE_WINDOW_S seconds; one
#: more ends the process (exit code 1)
MAX_SPIN_FAILURES = 10
SPIN_FAILURE_WINDOW_S = 60.0
#: pause before spinning again after the n-th recent failure: SPIN_RETRY_S * 2**(n-1), at most
#: 1 s (a failure that repeats at once must not take a core)
SPIN_RETRY_S = 0.01


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


def spin_guarded(executor, stopping: Callable[[], bool],
                 on_failure: Callable[[BaseException, str, bool], None]) -> bool:
    """``executor.spin()`` until the executor or its context is shut down, spinning it again
    after any exception but a shutdown (see the module docstring).

    ``stopping()`` tells a shutdown in progress (an exception then ends the spin quietly: the
    executor raises ``RCLError`` on a context shut down under it); ``on_failure(exc, text,
    giving_up)`` is told each other exception (``text``: its traceback) before the executor is
    spun again (``giving_up`` False) or, past ``MAX_SPIN_FAILURES``, not (True).

    Returns True when the spin ended by a shutdown, False when it gave up.
    """
    failures: collections.deque[float] = collections.deque()
    while True:
        try:
            executor.spin()
            return True
        except (KeyboardInterrupt, ExternalShutdownException):
            return True
        except Exception as exc:  # noqa: BLE001 - logged, reported, spun again
            if stopping():
                return True
            now = time.monotonic()
            failures.append(now)
            while failures and now - failures[0] > SPIN_FAILURE_WINDOW_S:
                failures.popleft()
            giving_up = len(failures) > MAX_SPIN_FAILURES
            on_failure(exc, traceback.format_exc(), giving_up)
            if giving_up:
                return False
            time.sleep(min(1.0, SPIN_RETRY_S * 2 ** (len(failures) - 1)))


def _report_spin_failure(node, exc: BaseException, text: str, giving_up: bool) -> None:
    """Log (and have the node count and report) an exception out of ``executor.spin()``."""
    failed = getattr(node, 'executor_failed', None)
    if failed is not None:
        failed(exc, text, giving_up)
        return
    what = 'exiting' if giving_up else 'spinning it again'
    node.get_logger().error(f'the executor raised {type(exc).__name__}: {exc} ({what})\n{text}')


def spin_node(node_cls: type[LifecycleNode], args: list[str] | None = None) -> int:
    """Create ``node_cls``, autostart it if its ``autostart`` parameter is true, spin until
    SIGINT/SIGTERM (:func:`spin_guarded`), then shut the node down (worker threads stopped).
    Returns the exit code (0; 1 when the executor kept raising).

    Autostart runs in a thread next to the spinning executor, so the node answers its lifecycle
    and parameter services (and publishes /diagnostics) while it loads its model.
    """
    rclpy.init(args=args)
    signals.running()
    node = None
    executor = None
    code = 0
    try:
        executor = MultiThreadedExecutor(num_threads=EXECUTOR_THREADS)
        node = node_cls()
        executor.add_node(node)
        if node.get_parameter('autostart').value and not shutting_down():
            threading.Thread(target=autostart, args=(node,), name='autostart',
                             daemon=True).start()
        if not spin_guarded(executor, shutting_down,
                            lambda exc, text, giving_up: _report_spin_failure(
                                node, exc, text, giving_up)):
            code = 1
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
    return code


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
    trim_periodically()  # a heap that does not creep up with frame-sized buffers (core.heap)
    code = spin_node(node_cls, args)
    logging.shutdown()
    signals.exit_now(code)
    return code  # not reached
