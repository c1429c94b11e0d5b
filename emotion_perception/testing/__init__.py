"""Helpers for tests and demos: synthetic data in the formats the package reads (no ROS)."""
