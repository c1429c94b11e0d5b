"""SIGINT / SIGTERM at any moment of a node process's life: exit 0, quietly, promptly.

Imports nothing heavy (no rclpy), so that the entry points (``nodes.entry``, and a node module
run with ``python -m``) install the handlers before importing rclpy, torch and the models.

Phases:
  starting  (from :func:`install` until ``spin_node`` has initialised rclpy): nothing to clean
            up yet; a signal ends the process at once with exit code 0 (no
            ``KeyboardInterrupt`` traceback from inside an import, no exit -2 or -15).
  running   (after ``rclpy.init``, whose own handler shuts the context down and then calls
            this one): the handler only records the signal; ``spin_node`` sees the context
            shut down (wherever the main thread was: creating the node, spinning) and exits in
            order, with code 0, within ``lifecycle.EXIT_BUDGET_S``.
"""
from __future__ import annotations

import os
import signal
import sys
from typing import Any

_STATE: dict[str, Any] = {'phase': 'off', 'signum': 0}


def exit_now(code: int = 0) -> None:
    """Flush stdout/stderr and end the process at once (no interpreter finalization)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed pipe
            pass
    os._exit(code)


def _handler(signum: int, frame: Any) -> None:
    _STATE['signum'] = signum
    if _STATE['phase'] == 'starting':
        exit_now(0)


def install() -> None:
    """Install the handlers for SIGINT and SIGTERM, phase 'starting' (call first thing)."""
    _STATE['phase'] = 'starting'
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _handler)


def running() -> None:
    """rclpy is initialised: from now on a signal is only recorded (see the module docstring).
    No-op unless :func:`install` was called (an in-process ``spin_node`` keeps the process's
    own handlers)."""
    if _STATE['phase'] != 'off':
        _STATE['phase'] = 'running'


def signalled() -> int:
    """The signal number received (0: none)."""
    return int(_STATE['signum'])


def reset() -> None:
    """Forget a received signal (tests)."""
    _STATE['signum'] = 0
