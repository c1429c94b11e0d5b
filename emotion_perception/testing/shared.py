"""How a test that needs ../shared skips, and whether it may (no ROS, no pytest import).

The interface packages of other stacks (``../shared/ros2_interfaces``: vision_msgs, hri_msgs,
yolo_msgs) and launch/launch_ros (``../shared/ros2_launch``) are not on PyPI: without apt ROS,
the tests build them from those sources. A test that cannot run without them skips with a
reason that starts with :data:`PREFIX` (:func:`skip_reason`). test/conftest.py lists every
skip by reason at the end of a run, and where ``EP_REQUIRE_SHARED=1`` (``.ci/run`` sets it
when ../shared exists) reports such a skip as a failure: the sources are there, so the test
must run.
"""
from __future__ import annotations

import os

#: the start of the skip reason of every test that needs ../shared
PREFIX = 'needs ../shared'
#: the environment variable that turns those skips into failures
REQUIRE_ENV = 'EP_REQUIRE_SHARED'


def skip_reason(why: str) -> str:
    """The skip reason of a test that needs ../shared: :data:`PREFIX` + ``why``."""
    return f'{PREFIX}: {why}'


def is_shared_skip(reason: str) -> bool:
    """Whether a skip reason (as pytest reports it, possibly 'Skipped: ...') is one of
    :func:`skip_reason`'s."""
    text = reason.strip()
    if text.startswith('Skipped: '):
        text = text[len('Skipped: '):]
    return text.startswith(PREFIX)


def required() -> bool:
    """Whether such a skip is a failure here (``EP_REQUIRE_SHARED=1``)."""
    return os.environ.get(REQUIRE_ENV) == '1'
