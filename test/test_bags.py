"""emotion_perception.tools.bags: make-bag, reading, replay -> record over DDS, custom types."""
from __future__ import annotations

import math
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
os.environ.setdefault('ROS_DOMAIN_ID', str(random.randint(10, 200)))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import rclpy  # noqa: E402
from rclpy.context import Context  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402

from emotion_perception.tools import bags  # noqa: E402
from emotion_perception.tools.cli import main as cli_main  # noqa: E402

IMAGE_TOPIC = '/camera/image_raw'
EMOTION_TOPIC = '/emotions'
EMOTION_TYPE = 'emotion_perception/msg/PersonEmotionArray'
#: generous upper bounds for waits on DDS (never asserted as timings)
DDS_TIMEOUT_S = 30.0


def write_pngs(folder: Path, count: int, size=(48, 64), seed: int = 0) -> list[np.ndarray]:
    """``count`` random RGB images as lossless PNGs named 000.png...; returns them (H, W, 3)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(count):
        rgb = rng.integers(0, 255, (*size, 3), np.uint8, endpoint=True)
        assert cv2.imwrite(str(folder / f'{i:03d}.png'), rgb[..., ::-1])
        frames.append(rgb)
    return frames


# --- make-bag and reading --------------------------------------------------------------------

def test_make_bag_from_images_reads_back_identical_pixels_and_stamps(tmp_path):
    frames = write_pngs(tmp_path / 'imgs', 6)
    extra = write_pngs(tmp_path / 'single', 1, seed=7)
    bag = tmp_path / 'bag'
    rc = cli_main(['make-bag', str(tmp_path / 'imgs'), str(tmp_path / 'single' / '000.png'),
                   '--output', str(bag), '--rate', '4', '--start-time', '1700000000.5',
                   '--frame-id', 'cam_optical', '--topic', '/cam/image'])
    assert rc == 0
    assert bags.bag_topics(bag) == {'/cam/image': ('sensor_msgs/msg/Image', 7)}
    assert (bag / 'metadata.yaml').is_file() and list(bag.glob('*.mcap'))

    got = list(bags.iter_bag_images(bag))
    assert [g.index for g in got] == list(range(7))
    start = 1_700_000_000_500_000_000
    assert [g.stamp_ns for g in got] == [start + i * 250_000_000 for i in range(7)]
    assert {g.frame_id for g in got} == {'cam_optical'}
    for g, want in zip(got, frames + extra):
        np.testing.assert_array_equal(g.rgb, want)
    # log time equals the header stamp
    assert [m.log_time_ns for m in bags.iter_raw_messages(bag)] == [g.stamp_ns for g in got]


def test_bgr8_repeat_and_resize(tmp_path):
    frames = write_pngs(tmp_path / 'imgs', 3, size=(40, 60))
    result = bags.make_bag([tmp_path / 'imgs'], tmp_path / 'bag', rate_hz=30.0, encoding='bgr8',
                           repeat=2, resize=(30, 20), start_ns=0, progress=False)
    assert result.frames == 6 and result.first_stamp_ns == 0
    assert result.last_stamp_ns == round(5 * 1e9 / 30)
    msgs = list(bags.iter_bag_messages(tmp_path / 'bag'))
    assert [m.msg.encoding for m in msgs] == ['bgr8'] * 6
    assert {(m.msg.width, m.msg.height, m.msg.step) for m in msgs} == {(30, 20, 90)}
    got = [g.rgb for g in bags.iter_bag_images(tmp_path / 'bag', IMAGE_TOPIC)]
    want = [cv2.resize(f, (30, 20), interpolation=cv2.INTER_AREA) for f in frames] * 2
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_write_image_bag_python_api_keeps_sizes_and_rate(tmp_path):
    rng = np.random.default_rng(3)
    frames = [rng.integers(0, 255, (h, w, 3), np.uint8) for h, w in [(5, 7), (9, 4), (1, 1)]]
    result = bags.write_image_bag(iter(frames), tmp_path / 'b', topic='/x', rate_hz=3.0,
                                  frame_id='f', encoding='rgb8', start_ns=10)
    assert result.frames == 3
    got = list(bags.iter_bag_images(tmp_path / 'b'))
    assert [g.stamp_ns for g in got] == [10, 10 + round(1e9 / 3), 10 + round(2e9 / 3)]
    for g, f in zip(got, frames):
        np.testing.assert_array_equal(g.rgb, f)


def test_video_file_into_bag(tmp_path):
    video = tmp_path / 'clip.avi'
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*'MJPG'), 12.0, (64, 48))
    assert writer.isOpened()
    for i in range(15):
        bgr = np.zeros((48, 64, 3), np.uint8)
        cv2.rectangle(bgr, (i * 3, 10), (i * 3 + 12, 30), (0, 255 - i * 10, 200), -1)
        writer.write(bgr)
    writer.release()
    # what OpenCV itself decodes from the file is what the bag must hold, bit for bit
    cap = cv2.VideoCapture(str(video))
    decoded = []
    while (ok_frame := cap.read())[0]:
        decoded.append(ok_frame[1][..., ::-1].copy())
    cap.release()
    assert len(decoded) == 15

    rc = cli_main(['make-bag', str(video), '--output', str(tmp_path / 'bag'), '--start-time', '5'])
    assert rc == 0
    got = list(bags.iter_bag_images(tmp_path / 'bag'))
    assert len(got) == 15
    # no --rate: the video's own frame rate (12 fps)
    assert [g.stamp_ns for g in got] == [5_000_000_000 + round(i * 1e9 / 12) for i in range(15)]
    for g, want in zip(got, decoded):
        np.testing.assert_array_equal(g.rgb, want)


def test_make_bag_errors(tmp_path):
    write_pngs(tmp_path / 'imgs', 1)
    bags.make_bag([tmp_path / 'imgs'], tmp_path / 'bag', progress=False)
    with pytest.raises(bags.BagError, match='exists already'):
        bags.make_bag([tmp_path / 'imgs'], tmp_path / 'bag', progress=False)
    with pytest.raises(bags.BagError, match='does not exist'):
        bags.make_bag([tmp_path / 'missing.png'], tmp_path / 'b2', progress=False)
    (tmp_path / 'empty').mkdir()
    with pytest.raises(bags.BagError, match='holds no images or videos'):
        bags.make_bag([tmp_path / 'empty'], tmp_path / 'b3', progress=False)
    (tmp_path / 'notes.txt').write_text('hello')
    with pytest.raises(bags.BagError, match='unsupported file type'):
        bags.make_bag([tmp_path / 'notes.txt'], tmp_path / 'b4', progress=False)
    (tmp_path / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\ngarbage')
    with pytest.raises(bags.BagError, match='cannot read the image'):
        bags.make_bag([tmp_path / 'broken.png'], tmp_path / 'b5', progress=False)
    assert not (tmp_path / 'b5').exists()  # a failed bag is removed
    with pytest.raises(bags.BagError, match='no frames to write'):
        bags.write_image_bag([], tmp_path / 'b6')
    with pytest.raises(bags.BagError, match='expected \\(H, W, 3\\) uint8'):
        bags.write_image_bag([np.zeros((4, 4), np.uint8)], tmp_path / 'b7')
    with pytest.raises(bags.BagError, match='rate must be a positive'):
        bags.write_image_bag([np.zeros((4, 4, 3), np.uint8)], tmp_path / 'b8', rate_hz=0)
    with pytest.raises(bags.BagError, match="is not an image topic"):
        list(bags.iter_bag_images(tmp_path / 'bag', topic='/nope'))
    with pytest.raises(bags.BagError, match='bag .* does not exist'):
        list(bags.iter_bag_messages(tmp_path / 'nobag'))
    with pytest.raises(SystemExit):
        cli_main(['make-bag', str(tmp_path / 'imgs'), '-o', str(tmp_path / 'b9'),
                  '--resize', '10by4'])
    # the command line reports such errors in one line and exits 1
    assert cli_main(['make-bag', str(tmp_path / 'missing.png'), '-o', str(tmp_path / 'b10')]) == 1
    assert cli_main(['make-bag', str(tmp_path / 'imgs'), '-o', str(tmp_path / 'bag')]) == 1


def test_parse_helpers():
    assert bags.parse_remap(['/a:=/b', '/c:=/d/e']) == {'/a': '/b', '/c': '/d/e'}
    with pytest.raises(bags.BagError, match='FROM:=TO'):
        bags.parse_remap(['/a=/b'])
    assert bags.parse_size('640x480') == (640, 480)
    from sensor_msgs.msg import Image
    assert bags.message_class('sensor_msgs/msg/Image') is Image
    assert bags.message_class('sensor_msgs/Image') is Image
    with pytest.raises(bags.BagError, match='install the ROS package nonexistent_msgs'):
        bags.message_class('nonexistent_msgs/msg/Foo')


# --- our message types in rosbags ------------------------------------------------------------

def make_emotion_array(store, stamp_ns: int, n_persons: int):
    """A rosbags PersonEmotionArray with ``n_persons`` filled-in persons."""
    t = store.types
    persons = []
    for k in range(n_persons):
        scores = np.linspace(0, 1, 26, dtype=np.float32) * (k + 1) / (n_persons + 1)
        persons.append(t['emotion_perception/msg/PersonEmotion'](
            track_id=f'track-{k}',
            bbox=t['sensor_msgs/msg/RegionOfInterest'](x_offset=10 * k, y_offset=5, height=40,
                                                      width=30, do_rectify=False),
            scores=scores, labels=['Happiness', 'Peace'][: k + 1],
            valence=6.5, arousal=float('nan'), dominance=3.0, status=k % 4,
            status_reason='' if k % 4 == 0 else 'no face', cache_age=0.25 * k,
            backend='face_baseline', model='mini-xception', latency_ms=1.5))
    header = t['std_msgs/msg/Header'](
        stamp=t['builtin_interfaces/msg/Time'](sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9),
        frame_id='camera')
    return t[EMOTION_TYPE](header=header, persons=persons, latency_ms=12.5)


def test_our_msg_files_are_found_and_parse():
    files = bags.our_msg_files()
    assert {f.stem for f in files} >= {'PersonDetection', 'PersonDetectionArray',
                                       'PersonEmotion', 'PersonEmotionArray'}
    store = bags.typestore_with_our_msgs()
    for stem in ('PersonDetection', 'PersonDetectionArray', 'PersonEmotion', 'PersonEmotionArray'):
        assert f'emotion_perception/msg/{stem}' in store.types
    emo = store.types['emotion_perception/msg/PersonEmotion']
    assert emo.NUM_CATEGORIES == 26 and emo.STATUS_ERROR == 3
    assert emo.CATEGORY_NAMES.split(',')[9] == 'Doubt/Confusion'


def test_person_emotion_array_round_trip_in_rosbags(tmp_path):
    store = bags.typestore_with_our_msgs()
    msg = make_emotion_array(store, 1_234_567_890_123, 3)
    raw = store.serialize_cdr(msg, EMOTION_TYPE)
    back = store.deserialize_cdr(raw, EMOTION_TYPE)
    assert back.header.frame_id == 'camera' and back.latency_ms == 12.5
    assert [p.track_id for p in back.persons] == ['track-0', 'track-1', 'track-2']
    assert back.persons[1].labels == ['Happiness', 'Peace']
    np.testing.assert_array_equal(back.persons[2].scores, msg.persons[2].scores)
    assert math.isnan(back.persons[0].arousal) and back.persons[1].status_reason == 'no face'
    assert back.persons[2].bbox.x_offset == 20

    # into a bag and out again (definitions embedded in the MCAP)
    writer = bags.open_bag_writer(tmp_path / 'emo')
    conn = writer.add_connection(EMOTION_TOPIC, EMOTION_TYPE, typestore=store)
    writer.write(conn, 42, raw)
    writer.close()
    (item,) = list(bags.iter_bag_messages(tmp_path / 'emo'))
    assert (item.topic, item.msgtype, item.log_time_ns) == (EMOTION_TOPIC, EMOTION_TYPE, 42)
    assert [p.track_id for p in item.msg.persons] == ['track-0', 'track-1', 'track-2']


def test_rosbags_bytes_equal_rclpy_serialization():
    """Our typestore serializes exactly as the rosidl-generated type (needs `make build`)."""
    msgs = pytest.importorskip('emotion_perception.msg')
    from rclpy.serialization import deserialize_message, serialize_message
    store = bags.typestore_with_our_msgs()
    raw = bytes(store.serialize_cdr(make_emotion_array(store, 5_000_000_007, 2), EMOTION_TYPE))
    ros_msg = deserialize_message(raw, msgs.PersonEmotionArray)
    assert ros_msg.header.stamp.sec == 5 and ros_msg.header.stamp.nanosec == 7
    assert [p.track_id for p in ros_msg.persons] == ['track-0', 'track-1']
    assert list(ros_msg.persons[1].labels) == ['Happiness', 'Peace']
    # same layout; rclpy leaves CDR padding bytes uninitialised, so compare by content
    ros_raw = serialize_message(ros_msg)
    assert len(ros_raw) == len(raw)
    back = store.deserialize_cdr(ros_raw, EMOTION_TYPE)
    assert store.serialize_cdr(back, EMOTION_TYPE) == raw
    rosbags_emotion = store.types['emotion_perception/msg/PersonEmotion']
    assert msgs.PersonEmotion.NUM_CATEGORIES == rosbags_emotion.NUM_CATEGORIES
    assert msgs.PersonEmotion.CATEGORY_NAMES == rosbags_emotion.CATEGORY_NAMES


# --- replay -> record over DDS ---------------------------------------------------------------

def make_mixed_bag(path: Path, n_images: int, period_ns: int) -> None:
    """Images on IMAGE_TOPIC and, after each, a PersonEmotionArray on EMOTION_TOPIC."""
    store = bags.typestore_with_our_msgs()
    rng = np.random.default_rng(11)
    t = store.types
    writer = bags.open_bag_writer(path)
    img_conn = writer.add_connection(IMAGE_TOPIC, 'sensor_msgs/msg/Image', typestore=store)
    emo_conn = writer.add_connection(EMOTION_TOPIC, EMOTION_TYPE, typestore=store)
    start = 1_000_000_000_000
    for i in range(n_images):
        stamp = start + i * period_ns
        rgb = rng.integers(0, 255, (24, 32, 3), np.uint8)
        header = t['std_msgs/msg/Header'](
            stamp=t['builtin_interfaces/msg/Time'](sec=stamp // 10**9, nanosec=stamp % 10**9),
            frame_id='camera')
        img = t['sensor_msgs/msg/Image'](header=header, height=24, width=32, encoding='rgb8',
                                         is_bigendian=0, step=96, data=rgb.reshape(-1))
        writer.write(img_conn, stamp, store.serialize_cdr(img, 'sensor_msgs/msg/Image'))
        emo = make_emotion_array(store, stamp, i % 3)
        writer.write(emo_conn, stamp + period_ns // 2, store.serialize_cdr(emo, EMOTION_TYPE))
    writer.close()


def assert_same_messages(original: Path, recorded: Path, topic_map: dict[str, str]) -> None:
    """Per topic: same count, same CDR bytes (hence stamps) in the same order."""
    want: dict[str, list[bytes]] = {}
    for m in bags.iter_raw_messages(original):
        if m.topic in topic_map:
            want.setdefault(topic_map[m.topic], []).append(m.raw)
    got: dict[str, list[bytes]] = {}
    log_times = []
    for m in bags.iter_raw_messages(recorded):
        got.setdefault(m.topic, []).append(m.raw)
        log_times.append(m.log_time_ns)
    assert {k: len(v) for k, v in got.items()} == {k: len(v) for k, v in want.items()}
    for topic in want:
        assert got[topic] == want[topic], f'{topic}: recorded bytes differ'
    assert log_times == sorted(log_times)


@pytest.fixture()
def ros_context():
    """An initialised rclpy context of its own, with a spinning executor (yields both)."""
    ctx = Context()
    rclpy.init(context=ctx)
    executor = SingleThreadedExecutor(context=ctx)
    thread = threading.Thread(target=executor.spin, daemon=True)
    yield ctx, executor, thread
    executor.shutdown()
    if thread.is_alive():
        thread.join(5.0)
    rclpy.try_shutdown(context=ctx)


def test_replay_and_record_in_process(tmp_path, ros_context):
    ctx, executor, thread = ros_context
    n, period_ns, rate_scale = 8, 50_000_000, 2.0
    make_mixed_bag(tmp_path / 'orig', n, period_ns)
    recorder = bags.BagRecorder(tmp_path / 'rec', ['/cam2', EMOTION_TOPIC], context=ctx,
                                max_count=2 * n)
    executor.add_node(recorder)
    thread.start()
    player = bags.BagPlayer(tmp_path / 'orig', context=ctx, remap={IMAGE_TOPIC: '/cam2'},
                            rate_scale=rate_scale, wait_subscribers=1,
                            wait_timeout_s=DDS_TIMEOUT_S)
    t0 = time.monotonic()
    player.start()
    assert player.wait(DDS_TIMEOUT_S) and player.error is None
    elapsed = time.monotonic() - t0
    assert player.published == {'/cam2': n, EMOTION_TOPIC: n}
    # the original timing is kept: publishing cannot be faster than the bag's span / rate_scale
    span_s = ((n - 1) * period_ns + period_ns // 2) / 1e9
    assert elapsed >= span_s / rate_scale
    deadline = time.monotonic() + DDS_TIMEOUT_S
    while recorder.total < 2 * n and time.monotonic() < deadline:
        time.sleep(0.01)
    assert recorder.done_future.done()
    recorder.stop()
    assert recorder.counts == {'/cam2': n, EMOTION_TOPIC: n}
    player.close()
    executor.remove_node(recorder)
    recorder.destroy_node()
    assert_same_messages(tmp_path / 'orig', tmp_path / 'rec',
                         {IMAGE_TOPIC: '/cam2', EMOTION_TOPIC: EMOTION_TOPIC})
    # the recorded bag reads back as images with the original stamps
    stamps = [g.stamp_ns for g in bags.iter_bag_images(tmp_path / 'rec', '/cam2')]
    assert stamps == [1_000_000_000_000 + i * period_ns for i in range(n)]
    emos = list(bags.iter_bag_messages(tmp_path / 'rec', [EMOTION_TOPIC]))
    assert [len(e.msg.persons) for e in emos] == [i % 3 for i in range(n)]


def test_player_fast_with_topic_filter_and_sensor_qos(tmp_path, ros_context):
    ctx, executor, thread = ros_context
    make_mixed_bag(tmp_path / 'orig', 5, 10**9)  # 1 s apart: only --fast finishes quickly
    from rclpy.qos import qos_profile_sensor_data
    recorder = bags.BagRecorder(tmp_path / 'rec', [IMAGE_TOPIC], context=ctx,
                                qos=qos_profile_sensor_data,
                                types={IMAGE_TOPIC: 'sensor_msgs/msg/Image'})
    executor.add_node(recorder)
    thread.start()
    player = bags.BagPlayer(tmp_path / 'orig', context=ctx, topics=[IMAGE_TOPIC], fast=True,
                            qos=bags.player_qos(depth=10), wait_subscribers=1,
                            wait_timeout_s=DDS_TIMEOUT_S)
    assert player.run() == 5
    deadline = time.monotonic() + DDS_TIMEOUT_S
    while recorder.total < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    recorder.stop()
    player.close()
    executor.remove_node(recorder)
    recorder.destroy_node()
    assert_same_messages(tmp_path / 'orig', tmp_path / 'rec', {IMAGE_TOPIC: IMAGE_TOPIC})
    with pytest.raises(bags.BagError, match=r"topics \['/nope'\] are not in"):
        bags.BagPlayer(tmp_path / 'orig', context=ctx, topics=['/nope'])
    with pytest.raises(bags.BagError, match='exists already'):
        bags.BagRecorder(tmp_path / 'rec', [IMAGE_TOPIC], context=ctx)
    with pytest.raises(bags.BagError, match='unknown to the rosbags typestore'):
        bags.BagRecorder(tmp_path / 'rec2', ['/x'], context=ctx, types={'/x': 'foo_msgs/msg/Bar'})


def test_cli_replay_and_record_in_two_processes(tmp_path):
    """`emotion-perception record` and `replay` as separate processes, custom type included.
    Run outside the source tree (``-m`` puts the working directory first on sys.path): the
    installed package of the Kilted test environment, not the source tree, must be the one
    imported."""
    pytest.importorskip('emotion_perception.msg')
    n = 6
    make_mixed_bag(tmp_path / 'orig', n, 20_000_000)
    cmd = [sys.executable, '-m', 'emotion_perception.tools.cli']
    env = dict(os.environ)
    recorder = subprocess.Popen(
        cmd + ['record', str(tmp_path / 'rec'), '--topics', IMAGE_TOPIC, EMOTION_TOPIC,
               '--count', str(2 * n), '--duration', str(DDS_TIMEOUT_S)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        replay = subprocess.run(
            cmd + ['replay', str(tmp_path / 'orig'), '--wait-subscribers', '1',
                   '--wait-timeout', str(DDS_TIMEOUT_S), '--rate-scale', '4'],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=2 * DDS_TIMEOUT_S)
        assert replay.returncode == 0, replay.stdout + replay.stderr
        assert f'published {2 * n} messages' in replay.stderr
        out, _ = recorder.communicate(timeout=2 * DDS_TIMEOUT_S)
    finally:
        if recorder.poll() is None:
            recorder.kill()
            recorder.wait()
    assert recorder.returncode == 0, out
    assert f'recorded {2 * n} messages' in out
    assert_same_messages(tmp_path / 'orig', tmp_path / 'rec',
                         {IMAGE_TOPIC: IMAGE_TOPIC, EMOTION_TOPIC: EMOTION_TOPIC})
