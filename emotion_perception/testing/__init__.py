"""Helpers for tests, benchmarks and demos: tiny random models, an EMOTIC-format fixture and
fake backends (no ROS), plus an in-process ROS harness and node rig (``ros_harness``,
``node_rig``: these import rclpy)."""
