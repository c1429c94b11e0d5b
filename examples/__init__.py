"""Examples that are installed with the package (``ros2 run emotion_perception behaviour_node``)."""
