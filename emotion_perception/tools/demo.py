"""``emotion-perception demo``: the real pipeline as on a robot, offline, on real photographs.

1. Builds a rosbag2 (MCAP) of ``sensor_msgs/Image`` on /camera/image_raw from photographs that
   ship inside installed packages (bus.jpg and zidane.jpg from ultralytics, the astronaut from
   scikit-image, grace_hopper from matplotlib); each photo is repeated for a few frames, as a
   camera would see a still scene, so the tracker confirms its tracks.
2. Starts ``person_detector`` and ``emotion_node`` as separate processes (as on a robot) and
   configures/activates them through their lifecycle services.
3. Replays the bag, records /detections and /emotions into a bag, and waits until every
   detections array has its emotions array.
4. Prints a table per person (image, track id, top-3 categories with scores, VAD, status) and
   writes annotated images, the recorded bag and ``emotions.jsonl`` into the output folder.

DDS stays on loopback (ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, a random ROS_DOMAIN_ID) unless
the environment sets them.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2

from .config import add_tracker_arguments, ros_param_arg, tracker_overrides

DEMO_IMAGES = ('bus', 'zidane', 'astronaut', 'grace_hopper')
CAMERA_TOPIC = '/camera/image_raw'
START_NS = 1_767_225_600 * 10**9  # 2026-01-01T00:00:00Z, fixed so runs are comparable


def _node_cmd(module: str, config: Path, extra: list[str]) -> list[str]:
    # The bag player publishes reliably, as many camera drivers do; large images (bus.jpg is
    # 2.6 MB) sent best-effort are fragmented over UDP and may be lost on a busy machine.
    return [sys.executable, '-m', f'emotion_perception.nodes.{module}', '--ros-args',
            '--params-file', str(config), '-r', f'image:={CAMERA_TOPIC}',
            '-p', 'image_reliability:=reliable', *extra]


def _fmt(v: float) -> str:
    return '  -' if v is None or (isinstance(v, float) and math.isnan(v)) else f'{v:4.1f}'


def run_demo(output: Path, repeat: int = 4, rate_hz: float = 1.0, backend_params: dict | None = None,
             timeout_s: float = 240.0, detector_params: dict | None = None) -> int:
    from ..ros.env import ensure_local_dds
    env = ensure_local_dds()

    import numpy as np
    import rclpy
    from rclpy.executors import MultiThreadedExecutor

    from ..core.categories import EMOTIC_CATEGORIES
    from ..core.drawing import draw_persons
    from ..core.model_files import sample_image_paths
    from ..core.types import EmotionResult, Status
    from ..msg import PersonDetectionArray, PersonEmotion, PersonEmotionArray
    from ..ros.lifecycle_client import LifecycleClient
    from ..ros.messages import detections_from_msg
    from ..ros.qos import RESULTS_QOS
    from .bags import BagPlayer, BagRecorder, write_image_bag
    from .config import config_dir

    t_start = time.monotonic()
    output.mkdir(parents=True, exist_ok=True)
    for stale in ('camera_bag', 'recorded_bag', 'annotated', 'logs'):
        shutil.rmtree(output / stale, ignore_errors=True)
    (output / 'annotated').mkdir()
    (output / 'logs').mkdir()

    # 1. the bag ------------------------------------------------------------------------------
    paths = sample_image_paths()
    missing = [n for n in DEMO_IMAGES if n not in paths]
    if missing:
        print(f'demo: sample photographs missing: {missing} (run `make venv`)', file=sys.stderr)
        return 1
    photos = {}
    for name in DEMO_IMAGES:
        photos[name] = cv2.cvtColor(cv2.imread(str(paths[name])), cv2.COLOR_BGR2RGB)
    frames, stamp_to_image = [], {}
    for name in DEMO_IMAGES:
        for _ in range(repeat):
            stamp_to_image[START_NS + round(len(frames) * 1e9 / rate_hz)] = name
            frames.append(photos[name])
    bag = write_image_bag(frames, output / 'camera_bag', topic=CAMERA_TOPIC, rate_hz=rate_hz,
                          frame_id='camera', start_ns=START_NS)
    print(f'demo: wrote {bag.frames} frames ({len(DEMO_IMAGES)} photos x {repeat}) '
          f'at {rate_hz} Hz into {bag.path}')

    # 2. the nodes, as separate processes -----------------------------------------------------
    cfg = config_dir()
    emo_extra = [item for k, v in (backend_params or {}).items() if v not in (None, '')
                 for item in ('-p', f'{k}:={v}')]
    det_extra = [item for k, v in (detector_params or {}).items()
                 for item in ('-p', ros_param_arg(k, v))]
    procs, logs = {}, {}
    for module, config, extra in (('person_detector', cfg / 'person_detector.yaml', det_extra),
                                  ('emotion_node', cfg / 'emotion_node.yaml', emo_extra)):
        logs[module] = open(output / 'logs' / f'{module}.log', 'w')
        procs[module] = subprocess.Popen(_node_cmd(module, config, extra), env=env,
                                         stdout=logs[module], stderr=subprocess.STDOUT)

    rclpy.init()
    node = rclpy.create_node('emotion_demo')
    executor = MultiThreadedExecutor(num_threads=3)
    executor.add_node(node)
    detections: list = []
    emotions: list = []
    lock = threading.Lock()

    def keep(store):
        def cb(msg):
            with lock:
                store.append(msg)
        return cb

    node.create_subscription(PersonDetectionArray, '/detections', keep(detections), RESULTS_QOS)
    node.create_subscription(PersonEmotionArray, '/emotions', keep(emotions), RESULTS_QOS)
    recorder = BagRecorder(output / 'recorded_bag', ['/detections', '/emotions'],
                           types={'/detections': 'emotion_perception/msg/PersonDetectionArray',
                                  '/emotions': 'emotion_perception/msg/PersonEmotionArray'})
    executor.add_node(recorder)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()
    rc = 1
    try:
        for name in procs:
            client = LifecycleClient(node, f'/{name}')
            if not client.wait_ready(60.0):
                raise RuntimeError(f'{name} did not come up (see {output}/logs/{name}.log)')
            for transition in ('configure', 'activate'):
                if not client.change(transition):
                    raise RuntimeError(f'{name}: {transition} failed (see logs/{name}.log)')
        print(f'demo: nodes active after {time.monotonic() - t_start:.1f} s; replaying')

        # 3. replay and wait for every answer ---------------------------------------------------
        player = BagPlayer(bag.path, node=node, wait_subscribers=2, wait_timeout_s=30.0)
        player.start()
        player.wait(timeout_s=timeout_s)
        end = time.monotonic() + 60.0
        last_n, last_change = -1, time.monotonic()
        while time.monotonic() < end:
            with lock:
                n_det, n_emo = len(detections), len(emotions)
            if n_det != last_n:
                last_n, last_change = n_det, time.monotonic()
            if n_emo >= n_det and time.monotonic() - last_change > 3.0:
                break
            time.sleep(0.1)
        with lock:
            det_msgs, emo_msgs = list(detections), list(emotions)
        answered = {(m.header.stamp.sec, m.header.stamp.nanosec) for m in emo_msgs}
        unanswered = [m for m in det_msgs
                      if (m.header.stamp.sec, m.header.stamp.nanosec) not in answered]
        for name in procs:  # lifecycle down, like a manager would
            client = LifecycleClient(node, f'/{name}')
            client.change('deactivate')
            client.change('cleanup')

        # 4. report ------------------------------------------------------------------------------
        latest: dict[tuple[str, str], tuple] = {}
        for msg in emo_msgs:
            stamp_ns = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
            image = stamp_to_image.get(stamp_ns, '?')
            for person in msg.persons:
                latest[(image, person.track_id)] = (msg, person)
        status_name = {PersonEmotion.STATUS_OK: 'ok', PersonEmotion.STATUS_CACHED: 'cached',
                       PersonEmotion.STATUS_SKIPPED: 'skipped', PersonEmotion.STATUS_ERROR: 'error'}
        print()
        print(f'{"image":<13}{"track":>5}  {"top-3 categories (score)":<58}{"V":>5}{"A":>5}'
              f'{"D":>5}  status')
        print('-' * 100)
        with open(output / 'emotions.jsonl', 'w') as jf:
            for (image, track), (msg, p) in sorted(latest.items(), key=lambda kv: (
                    DEMO_IMAGES.index(kv[0][0]) if kv[0][0] in DEMO_IMAGES else 99, kv[0][1])):
                scores = np.array(p.scores, dtype=np.float32)
                if np.isfinite(scores).any():
                    order = np.argsort(-scores)[:3]
                    top = ', '.join(f'{EMOTIC_CATEGORIES[i]} ({scores[i]:.2f})' for i in order)
                else:
                    top = p.status_reason[:56]
                print(f'{image:<13}{track or "-":>5}  {top:<58}{_fmt(p.valence):>5}'
                      f'{_fmt(p.arousal):>5}{_fmt(p.dominance):>5}  '
                      f'{status_name.get(p.status, p.status)}')
                jf.write(json.dumps({
                    'image': image, 'track_id': p.track_id,
                    'bbox_xywh': [p.bbox.x_offset, p.bbox.y_offset, p.bbox.width, p.bbox.height],
                    'scores': {c: (None if math.isnan(s) else round(float(s), 4))
                               for c, s in zip(EMOTIC_CATEGORIES, p.scores)},
                    'labels': list(p.labels),
                    'vad': {k: (None if math.isnan(v) else round(float(v), 3)) for k, v in
                            (('valence', p.valence), ('arousal', p.arousal),
                             ('dominance', p.dominance))},
                    'status': status_name.get(p.status, str(p.status)),
                    'reason': p.status_reason, 'backend': p.backend, 'model': p.model}) + '\n')
        # annotated images: the last answered frame of each photo
        for image in DEMO_IMAGES:
            msgs = [m for m in emo_msgs if stamp_to_image.get(
                m.header.stamp.sec * 10**9 + m.header.stamp.nanosec) == image and m.persons]
            if not msgs:
                continue
            msg = msgs[-1]
            dets = detections_from_msg(msg_to_detections(msg))
            results = [EmotionResult(scores=np.array(p.scores, dtype=np.float32),
                                     labels=list(p.labels),
                                     vad=(p.valence, p.arousal, p.dominance),
                                     status=Status(p.status), reason=p.status_reason)
                       for p in msg.persons]
            drawn = draw_persons(photos[image], dets, results)
            cv2.imwrite(str(output / 'annotated' / f'{image}.jpg'),
                        cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
        n_ok = sum(1 for _, p in latest.values() if p.status in (PersonEmotion.STATUS_OK,
                                                                  PersonEmotion.STATUS_CACHED))
        print('-' * 100)
        print(f'demo: {len(frames)} frames replayed, {len(det_msgs)} detections arrays, '
              f'{len(emo_msgs)} emotions arrays, {len(unanswered)} unanswered, '
              f'{len(latest)} persons ({n_ok} with emotions) in '
              f'{time.monotonic() - t_start:.1f} s')
        print(f'demo: annotated images in {output / "annotated"}, recorded bag '
              f'{output / "recorded_bag"}, table as {output / "emotions.jsonl"}')
        rc = 0 if (det_msgs and not unanswered and n_ok > 0) else 1
    except (RuntimeError, TimeoutError) as exc:
        print(f'demo failed: {exc}', file=sys.stderr)
    finally:
        try:
            recorder.stop()
        except Exception:  # noqa: BLE001
            pass
        for name, proc in procs.items():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for name, proc in procs.items():
            try:
                code = proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = 'killed'
            logs[name].close()
            if code != 0:
                print(f'demo: {name} exited with {code}; last log lines:', file=sys.stderr)
                print(''.join((output / 'logs' / f'{name}.log').read_text().splitlines(True)[-15:]),
                      file=sys.stderr)
                rc = 1
        # Stop the spin thread and destroy the nodes before rclpy and the interpreter go away:
        # a daemon thread still inside rclpy's wait at interpreter exit aborts the process
        # ('terminate called without an active exception', seen with Kilted's rclpy 9.1.2).
        executor.shutdown(timeout_sec=2.0)
        spin.join(timeout=5.0)
        for ros_node in (recorder, node):
            executor.remove_node(ros_node)
            ros_node.destroy_node()
        rclpy.shutdown()
    return rc


def msg_to_detections(msg):
    """A PersonDetectionArray view of a PersonEmotionArray (same header, ids and boxes)."""
    from ..msg import PersonDetection, PersonDetectionArray
    return PersonDetectionArray(header=msg.header, detections=[
        PersonDetection(track_id=p.track_id, confidence=1.0, bbox=p.bbox) for p in msg.persons])


def register(subparsers) -> None:
    p = subparsers.add_parser('demo', help=__doc__.split('\n')[0], description=__doc__,
                              formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument('--output', '-o', type=Path, default=Path('out/demo'), help='output folder')
    p.add_argument('--repeat', type=int, default=4, help='frames per photo (>= 2 for tracking)')
    p.add_argument('--rate', type=float, default=1.0, help='camera rate of the bag in Hz')
    p.add_argument('--backend', help='emotion backend (default: the config, face_baseline)')
    p.add_argument('--model', help='emotion model id or path')
    add_tracker_arguments(p)
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    return run_demo(args.output, repeat=args.repeat, rate_hz=args.rate,
                    backend_params={'backend.name': args.backend, 'backend.model': args.model},
                    detector_params=tracker_overrides(args))
