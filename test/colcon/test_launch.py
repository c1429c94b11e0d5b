"""The real launch: ``launch/emotion_perception.launch.py`` run by the real Jazzy launch /
launch_ros, as ``ros2 launch`` runs it (``test/colcon/ros2_launch.py``: a LaunchService with
IncludeLaunchDescription), on the package as colcon INSTALLED it (issue 10).

`colcon test` runs this file (CMakeLists.txt) with EP_COLCON_TEST=1; test/colcon/run_colcon.sh
(``make colcon-test``, and ``make test`` through test/test_colcon_build.py) builds launch /
launch_ros from ``../shared/ros2_launch`` when apt's are not importable, sources them and sets
EP_REQUIRE_LAUNCH=1, so there the test fails instead of skipping. Elsewhere it skips with the
reason.

1. A replayed bag, with ``namespace``, ``camera_topic``, ``backend``, ``params_file`` (a user's
   YAML on top of config/) and ``use_sim_time:=true`` (a /clock is published): both nodes
   reach ``active`` through the launch file's lifecycle event handlers, the user's parameters
   and the launch overrides arrive, the nodes' clock follows /clock, every detections array
   gets its emotions array and the astronaut is happy.
2. ``camera_topic:=/cam/image_raw image_transport:=compressed``: both nodes subscribe
   ``/cam/image_raw/compressed`` and emotions come out of JPEG frames published there.
3. Another stack's detector (isaac_ros / depthai-ros style): ``start_detector:=false
   detections_format:=vision_msgs detections_topic:=/my_detector/detections``: no
   person_detector is started, emotion_node reaches ``active``, and every
   ``vision_msgs/Detection2DArray`` the test publishes (next to the images) gets its emotions
   array with the persons' track ids and boxes, the non-person class left out. vision_msgs is
   not on PyPI: run_colcon.sh sources the interface packages that ``make interfaces`` built
   against the same venv (or apt's) and sets EP_REQUIRE_INTERFACES=1, so there the case fails
   instead of skipping; elsewhere (e.g. ``make test-kilted``: they are built against the Jazzy
   venv) it skips with run_colcon.sh's reason (EP_ROS2_INTERFACES_MISSING).
Each ends as Ctrl-C in the terminal ends ``ros2 launch``: SIGINT to the launch's process group
(launch and the nodes; an interactive launch does not forward a SIGINT of its own to the
nodes, it expects the terminal to have sent it to all of them). Launch exits 0 and reports
both nodes finished cleanly, i.e. exited 0 on SIGINT, without needing the SIGTERM that launch
escalates to after 5 s.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.environ.get('EP_COLCON_TEST') != '1',
                                reason='runs the installed package; run by `colcon test`')

HERE = Path(__file__).resolve().parent
LAUNCHER = HERE / 'ros2_launch.py'
PACKAGE, LAUNCH_FILE = 'emotion_perception', 'emotion_perception.launch.py'
START_S = 240.0  # node processes import torch/ultralytics and load models on 2 busy cores


@pytest.fixture(scope='module', autouse=True)
def launch_available():
    try:
        import launch  # noqa: F401
        import launch_ros  # noqa: F401
    except ImportError as exc:
        reason = (f'launch/launch_ros not importable ({exc}): source apt ROS 2 Jazzy, or build '
                  'them with ../shared/ros2_launch/build.sh VENV DIR and source '
                  'DIR/install/setup.bash')
        if os.environ.get('EP_REQUIRE_LAUNCH') == '1':
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture
def harness():
    from emotion_perception.testing.ros_harness import RosHarness
    with RosHarness('launch_test') as h:
        yield h


@pytest.fixture(scope='module')
def astronaut():
    import cv2

    from emotion_perception.core.model_files import sample_image_paths
    bgr = cv2.imread(str(sample_image_paths()['astronaut']))  # 512x512, a smiling woman
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


class Launch:
    """``ros2 launch emotion_perception emotion_perception.launch.py ARGS`` as a process."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log_path = log
        self._log = open(log, 'w')
        # its own session: a process group to signal like a terminal does, nothing else in it
        self.proc = subprocess.Popen([sys.executable, str(LAUNCHER), PACKAGE, LAUNCH_FILE, *args],
                                     stdout=self._log, stderr=subprocess.STDOUT,
                                     env=dict(os.environ), start_new_session=True)

    def text(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors='replace')

    def tail(self, n: int = 60) -> str:
        return '\n'.join(self.text().splitlines()[-n:])

    def ctrl_c(self, timeout: float = 60.0) -> int:
        """SIGINT to the whole process group, as Ctrl-C in a terminal."""
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        """Leave nothing running (launch and the nodes)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        if not self._log.closed:
            self._log.close()


def wait_active(harness, launch: Launch, nodes: list[str]) -> None:
    from emotion_perception.ros.lifecycle_client import LifecycleClient
    for name in nodes:
        client = LifecycleClient(harness.node, name)
        assert client.wait_ready(START_S), f'{name} has no lifecycle services\n{launch.tail()}'

        def active() -> bool:
            assert launch.proc.poll() is None, f'launch exited\n{launch.tail()}'
            return client.state(timeout_s=30) == 'active'
        assert harness.wait_for(active, START_S, period=0.5), \
            f'{name} did not reach active\n{launch.tail()}'


def get_params(harness, node: str, names: list[str]) -> dict:
    from rcl_interfaces.srv import GetParameters
    from rclpy.parameter import parameter_value_to_python
    client = harness.node.create_client(GetParameters, f'{node}/get_parameters')
    assert client.wait_for_service(timeout_sec=30)
    future = client.call_async(GetParameters.Request(names=names))
    assert harness.wait_for(future.done, 30)
    return {n: parameter_value_to_python(v) for n, v in zip(names, future.result().values)}


def finished_cleanly(launch: Launch,
                     executables: tuple[str, ...] = ('person_detector', 'emotion_node')) -> None:
    code = launch.ctrl_c()
    text = launch.text()
    assert code == 0, f'launch exited {code}\n{launch.tail()}'
    for exe in executables:
        assert re.search(rf'\[{exe}-\d+\]: process has finished cleanly', text), \
            f'{exe} did not finish cleanly\n{launch.tail()}'
    assert 'process has died' not in text and 'Traceback' not in text, launch.tail(120)
    assert 'escalating to' not in text, launch.tail(120)  # SIGINT alone was enough


def test_launch_file_with_a_replayed_bag_namespace_params_file_and_sim_time(
        harness, astronaut, tmp_path):
    from diagnostic_msgs.msg import DiagnosticArray
    from rosgraph_msgs.msg import Clock

    from emotion_perception.msg import PersonDetectionArray, PersonEmotion, PersonEmotionArray
    from emotion_perception.ros.qos import RESULTS_QOS
    from emotion_perception.tools.bags import BagPlayer, write_image_bag

    camera = '/camera/color/image_raw'
    bag = write_image_bag([astronaut] * 3, tmp_path / 'bag', topic=camera, rate_hz=1.0,
                          start_ns=1_000 * 10**9)
    user = tmp_path / 'my_params.yaml'
    user.write_text(
        '/**/emotion_node:\n  ros__parameters:\n'
        '    reuse:\n      max_age_s: 7.5\n'
        '    image_reliability: reliable\n    pair_timeout_s: 5.0\n'
        '/**/person_detector:\n  ros__parameters:\n'
        '    image_reliability: reliable\n    device: cpu\n')
    # sim time: a /clock at 1000 s and on (the bag's stamps)
    clock_pub = harness.publisher(Clock, '/clock', 10)
    sim = {'t': 1000.0}

    def tick():
        sim['t'] += 0.1
        msg = Clock()
        msg.clock.sec, msg.clock.nanosec = int(sim['t']), int((sim['t'] % 1) * 1e9)
        clock_pub.publish(msg)
    harness.node.create_timer(0.1, tick)
    dets = harness.collect(PersonDetectionArray, '/robot1/detections', RESULTS_QOS)
    emotions = harness.collect(PersonEmotionArray, '/robot1/emotions', RESULTS_QOS)
    diags = harness.collect(DiagnosticArray, '/diagnostics')
    launch = Launch(['namespace:=robot1', f'camera_topic:={camera}', 'backend:=face_baseline',
                     f'params_file:={user}', 'use_sim_time:=true'], tmp_path / 'launch.log')
    try:
        wait_active(harness, launch, ['/robot1/person_detector', '/robot1/emotion_node'])
        got = get_params(harness, '/robot1/emotion_node', [
            'reuse.max_age_s', 'image_reliability', 'backend.name', 'use_sim_time', 'autostart',
            'reuse.min_iou'])
        assert got == {'reuse.max_age_s': 7.5, 'image_reliability': 'reliable',
                       'backend.name': 'face_baseline', 'use_sim_time': True,
                       'autostart': False, 'reuse.min_iou': 0.6}, got  # min_iou: config/
        got = get_params(harness, '/robot1/person_detector',
                         ['device', 'use_sim_time', 'image_transport'])
        assert got == {'device': 'cpu', 'use_sim_time': True, 'image_transport': 'raw'}, got

        def sim_stamped() -> bool:
            return any(st.hardware_id == '/robot1/emotion_node' and 1000 <= arr.header.stamp.sec
                       < 2000 for arr in list(diags) for st in arr.status)
        assert harness.wait_for(sim_stamped, 30), 'the nodes do not use /clock'

        player = BagPlayer(bag.path, node=harness.node, wait_subscribers=2, rate_scale=1.0)
        player.start()
        assert player.wait(60) and player.error is None, player.error
        assert harness.wait_for(lambda: len(dets) >= 1 and len(emotions) == len(dets), 120), \
            (len(dets), len(emotions), launch.tail())
        harness.wait_for(lambda: False, 2.0)  # late arrays
        assert len(emotions) == len(dets) and sorted(
            (m.header.stamp.sec, m.header.stamp.nanosec) for m in emotions) == sorted(
            (m.header.stamp.sec, m.header.stamp.nanosec) for m in dets)
        persons = [p for m in emotions for p in m.persons
                   if p.status in (PersonEmotion.STATUS_OK, PersonEmotion.STATUS_CACHED)]
        assert persons and all(p.backend == 'face_baseline' for p in persons)
        assert any('Happiness' in p.labels for p in persons), [p.labels for p in persons]
        finished_cleanly(launch)
    finally:
        launch.kill()


def test_launch_file_compressed_transport_follows_camera_topic(harness, astronaut, tmp_path):
    from sensor_msgs.msg import CompressedImage

    from emotion_perception.msg import PersonEmotion, PersonEmotionArray
    from emotion_perception.ros.image_conversion import rgb_to_compressed
    from emotion_perception.ros.qos import RESULTS_QOS, image_qos
    from emotion_perception.testing.node_rig import header

    user = tmp_path / 'reliable.yaml'
    user.write_text('/**:\n  ros__parameters:\n    image_reliability: reliable\n')
    emotions = harness.collect(PersonEmotionArray, '/emotions', RESULTS_QOS)
    pub = harness.publisher(CompressedImage, '/cam/image_raw/compressed', image_qos('reliable'))
    launch = Launch(['camera_topic:=/cam/image_raw', 'image_transport:=compressed',
                     f'params_file:={user}'], tmp_path / 'launch.log')
    try:
        wait_active(harness, launch, ['/person_detector', '/emotion_node'])
        assert harness.wait_matched(pub, 2, timeout=30), launch.tail()
        assert harness.node.count_subscribers('/image/compressed') == 0
        assert harness.node.count_subscribers('/cam/image_raw') == 0
        for i in range(3):
            n = len(emotions)
            pub.publish(rgb_to_compressed(astronaut, 'jpeg', header=header(500 + i)))
            assert harness.wait_for(lambda: len(emotions) > n, 120), launch.tail()
        assert [m.header.stamp.sec for m in emotions] == [500, 501, 502]
        persons = [p for m in emotions for p in m.persons]
        assert persons and all(p.status in (PersonEmotion.STATUS_OK, PersonEmotion.STATUS_CACHED)
                               for p in persons), [p.status_reason for p in persons]
        finished_cleanly(launch)
    finally:
        launch.kill()


@pytest.fixture(scope='module')
def vision_msgs_available():
    try:
        import vision_msgs.msg  # noqa: F401
    except ImportError as exc:
        reason = os.environ.get('EP_ROS2_INTERFACES_MISSING') or (
            f'vision_msgs not importable ({exc}): apt install ros-jazzy-vision-msgs, or '
            '`make interfaces` and run this through test/colcon/run_colcon.sh')
        if os.environ.get('EP_REQUIRE_INTERFACES') == '1':
            pytest.fail(reason)
        pytest.skip(reason)


def test_launch_file_foreign_vision_msgs_detector_without_our_detector(
        harness, vision_msgs_available, tmp_path):
    from emotion_perception.msg import PersonEmotion, PersonEmotionArray
    from emotion_perception.ros.qos import RESULTS_QOS
    from emotion_perception.testing import detection_peer

    camera, det_topic = '/my_camera/image_raw', '/my_detector/detections'
    # astronaut.png is 512x512; whole-pixel boxes: centre +- size / 2 is exact
    dets = [{'id': 'track-7', 'class': 'person', 'score': 0.9, 'cxcywh': [256, 260, 360, 480]},
            {'id': '42', 'class': '0', 'score': 0.8, 'cxcywh': [100, 400, 80, 160]},  # COCO id
            {'id': '9', 'class': 'chair', 'score': 0.95, 'cxcywh': [450, 450, 60, 60]}]
    expected = {'track-7': [76, 20, 360, 480], '42': [60, 320, 80, 160]}
    user = tmp_path / 'reliable.yaml'
    user.write_text('/**:\n  ros__parameters:\n    image_reliability: reliable\n')
    emotions = harness.collect(PersonEmotionArray, '/emotions', RESULTS_QOS)
    photos: dict = {}

    def step(kind: str, topic: str, sec: int, **extra) -> tuple:
        """(type, topic, message, QoS) as detection_peer (the peer process of the format
        tests) builds them for this step."""
        return detection_peer.build({'kind': kind, 'topic': topic, 'stamp': [sec, 0],
                                     'photo': 'astronaut', 'detections': dets, **extra}, photos)
    topics = {'image': camera, 'vision_msgs': det_topic}
    pubs = {}
    for kind, topic in topics.items():
        msg_type, _, _, qos = step(kind, topic, 0)
        pubs[kind] = harness.publisher(msg_type, topic, qos)
    launch = Launch(['start_detector:=false', 'detections_format:=vision_msgs',
                     f'detections_topic:={det_topic}', f'camera_topic:={camera}',
                     f'params_file:={user}'], tmp_path / 'launch.log')
    try:
        wait_active(harness, launch, ['/emotion_node'])
        assert harness.wait_matched(pubs['image'], 1, timeout=30), launch.tail()
        assert harness.wait_matched(pubs['vision_msgs'], 1, timeout=30), launch.tail()
        assert harness.node.count_subscribers('/detections') == 0  # remapped away
        names = harness.node.get_node_names_and_namespaces()
        assert not any(n == 'person_detector' for n, _ in names), names
        assert not re.search(r'\[person_detector-\d+\]', launch.text()), launch.tail()
        stamps = [700, 701, 702]
        for sec in stamps:
            n = len(emotions)
            for kind, topic in topics.items():  # the image first, as a camera + detector
                pubs[kind].publish(step(kind, topic, sec)[2])
            assert harness.wait_for(lambda: len(emotions) > n, 120), launch.tail()
        harness.wait_for(lambda: False, 1.0)  # nothing more (one answer per array)
        assert [(m.header.stamp.sec, m.header.stamp.nanosec) for m in emotions] == \
            [(s, 0) for s in stamps]
        for msg in emotions:
            assert msg.header.frame_id == 'camera'
            got = {p.track_id: [p.bbox.x_offset, p.bbox.y_offset, p.bbox.width, p.bbox.height]
                   for p in msg.persons}
            assert got == expected, got  # the chair is left out
            status = {p.track_id: (p.status, p.status_reason) for p in msg.persons}
            assert all(s != PersonEmotion.STATUS_ERROR for s, _ in status.values()), status
            assert status['track-7'][0] in (PersonEmotion.STATUS_OK,
                                            PersonEmotion.STATUS_CACHED), status
        finished_cleanly(launch, ('emotion_node',))
    finally:
        launch.kill()
