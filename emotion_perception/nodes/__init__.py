"""ROS 2 lifecycle nodes: thin adapters between topics and the ROS-free core."""
