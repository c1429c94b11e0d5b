"""ROS <-> core adapters shared by the nodes and the tools (images, messages, QoS, env)."""
