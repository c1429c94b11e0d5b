"""Start person_detector and emotion_node as lifecycle nodes, then configure and activate them.

    ros2 launch emotion_perception emotion_perception.launch.py \\
        camera_topic:=/camera/color/image_raw namespace:=perception backend:=vlm \\
        image_transport:=compressed params_file:=/path/to/my_params.yaml use_sim_time:=true

Parameters, later ones winning: the package's config/person_detector.yaml and
config/emotion_node.yaml; then ``params_file`` (a user's YAML with ``person_detector`` and/or
``emotion_node`` sections, e.g. ``/**/emotion_node: {ros__parameters: {backend: {name: vlm}}}``);
then the launch arguments ``backend`` (the emotion node's ``backend.name``) and
``image_transport`` when given (their default '' keeps the files' values), ``use_sim_time``,
and ``autostart: false`` (this launch file drives the lifecycle; a node's own autostart would
race it).

Both nodes subscribe ``image``, remapped to ``camera_topic``; with
``image_transport:=compressed`` they subscribe ``<camera_topic>/compressed`` (the nodes resolve
the remapped topic first, as image_transport does). emotion_node pairs the images with the
detector's ``detections`` (same namespace) and publishes ``emotions``.

Another stack's detector instead of ours (README "Use your own detector"):
``detections_format:=vision_msgs|yolo|rep155`` sets the emotion node's input format,
``detections_topic:=/yolo/tracking`` remaps its ``detections`` there, ``start_detector:=false``
leaves the project's person_detector out. ``publish_vision_msgs:=true`` makes our detector also
publish ``vision_detections`` (vision_msgs/Detection2DArray); ``rep155:=true`` sets the emotion
node's ``rep155.publish`` (ROS4HRI outputs).

Each node is sent ``configure`` at start and ``activate`` once it reaches ``inactive``. A
configure that fails (bad parameter, model not found) leaves that node unconfigured and
logs why; it is not retried.

The values the arguments accept (backends, image transports, detections formats) are the
installed package's own lists, imported from it, so the launch file and the nodes agree.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, OpaqueFunction, RegisterEventHandler
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from lifecycle_msgs.msg import Transition

from emotion_perception.core.backends import BACKENDS
from emotion_perception.ros.detection_formats import FORMATS
from emotion_perception.ros.node_utils import IMAGE_TRANSPORTS

PACKAGE = 'emotion_perception'
ARGUMENTS = {  # name: (default, description)
    'camera_topic': ('/camera/image_raw', 'sensor_msgs/Image topic both nodes subscribe (with '
                     'image_transport compressed: <camera_topic>/compressed)'),
    'image_transport': ('', "'raw' or 'compressed' ('' = from the parameter files: raw)"),
    'namespace': ('', 'namespace of both nodes and their topics'),
    'backend': ('', "emotion backend: face_baseline, vlm, caption_llm, remote or "
                "'package.module:Class' ('' = from the parameter files: face_baseline)"),
    'params_file': ('', 'a parameter YAML applied on top of the package config/ files'),
    'use_sim_time': ('false', "'true': the nodes take their clock from /clock (bag replay)"),
    'detections_format': ('', "emotion_node input: native, vision_msgs, yolo or rep155 ('' = "
                          'from the parameter files: native)'),
    'detections_topic': ('', "topic the emotion node reads detections from, e.g. /yolo/tracking "
                         "('' = detections in the namespace)"),
    'publish_vision_msgs': ('', "'true': person_detector also publishes vision_detections "
                            "(vision_msgs/Detection2DArray); '' = from the parameter files"),
    'start_detector': ('true', "'false': do not start the project's person_detector (another "
                       'stack publishes the detections)'),
    'rep155': ('', "'true': emotion_node publishes REP-155 (ROS4HRI) bodies, faces, "
               "expressions, emotions and face-body matches; '' = from the parameter files"),
}
BOOLS = ('', 'true', 'false')


def managed_lifecycle_node(executable: str, namespace: str, camera_topic: str,
                           parameters: list, remaps: list | None = None) -> list:
    """The node, a handler that activates it when it becomes inactive, and its configure event."""
    node = LifecycleNode(
        package=PACKAGE, executable=executable, name=executable, namespace=namespace,
        parameters=parameters, remappings=[('image', camera_topic), *(remaps or [])],
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


def launch_nodes(context) -> list:
    """Both nodes with the resolved launch arguments (OpaqueFunction: arguments may be '')."""
    arg = {name: LaunchConfiguration(name).perform(context) for name in ARGUMENTS}
    if arg['image_transport'] not in ('', *IMAGE_TRANSPORTS):
        raise RuntimeError(f"image_transport must be one of {list(IMAGE_TRANSPORTS)}, got "
                           f"{arg['image_transport']!r}")
    if arg['backend'] and arg['backend'] not in BACKENDS and ':' not in arg['backend']:
        raise RuntimeError(f"backend must be one of {sorted(BACKENDS)} or "
                           f"'package.module:Class', got {arg['backend']!r}")
    if arg['use_sim_time'].lower() not in ('true', 'false'):
        raise RuntimeError(f"use_sim_time must be 'true' or 'false', got {arg['use_sim_time']!r}")
    if arg['detections_format'] not in ('', *FORMATS):
        raise RuntimeError(f'detections_format must be one of {list(FORMATS)}, got '
                           f"{arg['detections_format']!r}")
    for name in ('publish_vision_msgs', 'start_detector', 'rep155'):
        if arg[name].lower() not in BOOLS:
            raise RuntimeError(f"{name} must be 'true' or 'false', got {arg[name]!r}")
    user_file = arg['params_file']
    if user_file and not os.path.isfile(user_file):
        raise RuntimeError(f'params_file {user_file!r} does not exist')
    config = os.path.join(get_package_share_directory(PACKAGE), 'config')
    common = {'use_sim_time': arg['use_sim_time'].lower() == 'true', 'autostart': False}
    if arg['image_transport']:
        common['image_transport'] = arg['image_transport']
    emotion, detector = dict(common), dict(common)
    if arg['backend']:
        emotion['backend.name'] = arg['backend']
    if arg['detections_format']:
        emotion['detections_format'] = arg['detections_format']
    if arg['rep155']:
        emotion['rep155.publish'] = arg['rep155'].lower() == 'true'
    if arg['publish_vision_msgs']:
        detector['publish_vision_msgs'] = arg['publish_vision_msgs'].lower() == 'true'
    remaps = {'person_detector': [], 'emotion_node': (
        [('detections', arg['detections_topic'])] if arg['detections_topic'] else [])}
    nodes = [('emotion_node', emotion)]
    if arg['start_detector'].lower() != 'false':
        nodes.insert(0, ('person_detector', detector))
    actions = []
    for executable, overrides in nodes:
        files = [os.path.join(config, f'{executable}.yaml')] + ([user_file] if user_file else [])
        actions += managed_lifecycle_node(executable, arg['namespace'], arg['camera_topic'],
                                          [*files, overrides], remaps[executable])
    return actions


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription([
        *[DeclareLaunchArgument(name, default_value=default, description=description)
          for name, (default, description) in ARGUMENTS.items()],
        OpaqueFunction(function=launch_nodes),
    ])
