"""Entry points of the node executables (console scripts and ``ros2 run``).

Each installs the quiet signal handlers (``nodes.signals``) before it imports the node module
(rclpy, torch, the model code: seconds on a robot computer), so that SIGINT / SIGTERM during
those imports ends the process with exit code 0 and no traceback.
"""
from __future__ import annotations

from . import signals


def emotion_node(args: list[str] | None = None) -> int:
    """``emotion_node``: see ``nodes.emotion_node``."""
    signals.install()
    from .emotion_node import main
    return main(args)


def person_detector(args: list[str] | None = None) -> int:
    """``person_detector``: see ``nodes.person_detector``."""
    signals.install()
    from .person_detector import main
    return main(args)
