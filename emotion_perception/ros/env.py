"""DDS environment for the tools: stay on loopback unless the user chose otherwise."""
from __future__ import annotations

import os
import random


def ensure_local_dds(environ: dict | None = None) -> dict:
    """Default ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` and a random ``ROS_DOMAIN_ID``
    (10-200) in ``environ`` (default ``os.environ``) where unset; returns it.

    Call before ``rclpy.init()``. A user who exported their own values keeps them.
    """
    env = os.environ if environ is None else environ
    env.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    env.setdefault('ROS_DOMAIN_ID', str(random.SystemRandom().randint(10, 200)))
    return env
