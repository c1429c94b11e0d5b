"""Start person_detector and emotion_node as lifecycle nodes, then configure and activate them.

    ros2 launch emotion_perception emotion_perception.launch.py \\
        camera_topic:=/camera/color/image_raw namespace:=perception backend:=vlm

Parameters come from the package's config/person_detector.yaml and config/emotion_node.yaml;
``backend`` overrides the emotion node's ``backend.name``. Both nodes subscribe ``image``
(remapped to ``camera_topic``); emotion_node pairs it with the detector's ``detections``
(same namespace) and publishes ``emotions``.

Each node is sent ``configure`` at start and ``activate`` once it reaches ``inactive``. A
configure that fails (bad parameter, model not found) leaves that node unconfigured and
logs why; it is not retried.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, RegisterEventHandler
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from lifecycle_msgs.msg import Transition

PACKAGE = 'emotion_perception'
BACKENDS = ['face_baseline', 'vlm', 'caption_llm']


def managed_lifecycle_node(executable: str, parameters: list) -> list:
    """The node, a handler that activates it when it becomes inactive, and its configure event."""
    node = LifecycleNode(
        package=PACKAGE, executable=executable, name=executable,
        namespace=LaunchConfiguration('namespace'),
        parameters=parameters,
        remappings=[('image', LaunchConfiguration('camera_topic'))],
        output='screen', emulate_tty=True)
    activate_when_inactive = RegisterEventHandler(OnStateTransition(
        target_lifecycle_node=node, start_state='configuring', goal_state='inactive',
        entities=[EmitEvent(event=ChangeState(
            lifecycle_node_matcher=matches_action(node),
            transition_id=Transition.TRANSITION_ACTIVATE))]))
    configure = EmitEvent(event=ChangeState(
        lifecycle_node_matcher=matches_action(node),
        transition_id=Transition.TRANSITION_CONFIGURE))
    return [node, activate_when_inactive, configure]


def generate_launch_description() -> LaunchDescription:
    config = os.path.join(get_package_share_directory(PACKAGE), 'config')
    return LaunchDescription([
        DeclareLaunchArgument('camera_topic', default_value='/camera/image_raw',
                              description='sensor_msgs/Image topic both nodes subscribe'),
        DeclareLaunchArgument('namespace', default_value='',
                              description='namespace of both nodes and their topics'),
        DeclareLaunchArgument('backend', default_value='face_baseline', choices=BACKENDS,
                              description="emotion backend (the emotion node's backend.name)"),
        *managed_lifecycle_node(
            'person_detector', [os.path.join(config, 'person_detector.yaml')]),
        *managed_lifecycle_node(
            'emotion_node', [os.path.join(config, 'emotion_node.yaml'),
                             {'backend.name': LaunchConfiguration('backend')}]),
    ])
