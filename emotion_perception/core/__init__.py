"""ROS-free core: nothing below this package imports rclpy or ROS messages."""
