"""Test-wide environment: DDS on loopback in a random domain, no model hub, few threads.

Set before anything imports rclpy (pytest imports conftest.py first).
"""
import os
import random

os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
os.environ.setdefault('ROS_DOMAIN_ID', str(random.Random().randint(10, 200)))
os.environ['HF_HUB_OFFLINE'] = '1'
os.environ['TRANSFORMERS_OFFLINE'] = '1'
os.environ['YOLO_OFFLINE'] = '1'
os.environ.setdefault('OMP_NUM_THREADS', '2')

import pytest  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: takes more than ~20 s (excluded by make test-fast)')
    config.addinivalue_line('markers', 'ros: needs rclpy and the generated messages')
