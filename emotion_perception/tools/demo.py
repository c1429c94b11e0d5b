"""``emotion-perception demo``: the real pipeline as on a robot, offline, on real photographs.

1. Builds a rosbag2 (MCAP) of ``sensor_msgs/Image`` on /camera/image_raw from photographs that
   ship inside installed packages (bus.jpg and zidane.jpg from ultralytics, the astronaut from
   scikit-image, grace_hopper from matplotlib); each photo is repeated for a few frames, as a
   camera would see a still scene, so the tracker confirms its tracks.
2. Starts ``person_detector`` and ``emotion_node`` as separate processes (as on a robot) and
   configures/activates them through their lifecycle services.
3. Replays the bag, records /detections, /emotions, /emotion_states and /emotion_events into a
   bag, and waits until every detections array has its emotions array.
4. Prints a table per person (image, track id, top-3 categories with scores, VAD, status) and
   writes annotated images, the recorded bag and ``emotions.jsonl`` into the output folder, and
   how each person felt over time as the node published it (``emotion_states``,
   ``emotion_events``): ``states.jsonl``, ``events.jsonl``, ``timelines/<track_id>.png``
   (``tools.state_outputs``; ``frame`` is the index in the bag).

DDS stays on loopback (ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, a random ROS_DOMAIN_ID) unless
the environment sets them.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

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


@dataclasses.dataclass
class CameraBag:
    """The demo's camera input: the photos (name -> (H, W, 3) uint8 RGB), the stamp (ns) of
    each frame -> its photo's name, and the written bag (``bags.write_image_bag``'s result)."""

    photos: dict
    stamp_to_image: dict
    frames: int
    bag: Any


@dataclasses.dataclass
class Recording:
    """What came out of the replay: every detections and emotions array received (arrival
    order) and the detections arrays without an emotions array of the same stamp."""

    detections: list
    emotions: list
    unanswered: list


def run_demo(output: Path, repeat: int = 4, rate_hz: float = 1.0,
             backend_params: dict | None = None, timeout_s: float = 240.0,
             detector_params: dict | None = None, state_params: dict | None = None,
             config: Path | None = None) -> int:
    """The demo (see the module docstring); returns the exit code: 0 when every detections
    array was answered and at least one person got emotions. ``backend_params`` /
    ``state_params`` / ``detector_params``: emotion node / person_detector parameters set on
    top of the config (None values: the config's); ``config``: a parameter file applied after
    the package's (both nodes)."""
    from ..ros.env import ensure_local_dds
    env = ensure_local_dds()
    t_start = time.monotonic()
    _prepare_output(output)
    camera = _write_camera_bag(output, repeat, rate_hz)  # 1.
    if camera is None:
        return 1
    procs, logs = _start_nodes(output, env, {**(backend_params or {}), **(state_params or {})},
                               detector_params, config)  # 2.
    observer = _Observer(output)
    rc = 1
    try:
        _activate(observer.node, procs, output)
        print(f'demo: nodes active after {time.monotonic() - t_start:.1f} s; replaying')
        rec = _replay_and_wait(observer, camera, timeout_s)  # 3.
        _deactivate(observer.node, procs)
        latest = _report(output, rec, camera)  # 4.
        print(f'demo: {_write_states(output, observer, rec, camera)}')
        rc = _summary(output, rec, camera, latest, time.monotonic() - t_start)
    except (RuntimeError, TimeoutError) as exc:
        print(f'demo failed: {exc}', file=sys.stderr)
    finally:
        observer.stop_recording()
        if not _stop_nodes(procs, logs, output):
            rc = 1
        observer.close()
    return rc


def _prepare_output(output: Path) -> None:
    """``output`` with fresh camera_bag/, recorded_bag/, annotated/ and logs/ folders."""
    output.mkdir(parents=True, exist_ok=True)
    for stale in ('camera_bag', 'recorded_bag', 'annotated', 'logs', 'timelines'):
        shutil.rmtree(output / stale, ignore_errors=True)
    (output / 'annotated').mkdir()
    (output / 'logs').mkdir()


def _write_camera_bag(output: Path, repeat: int, rate_hz: float) -> CameraBag | None:
    """Step 1: each demo photo ``repeat`` times at ``rate_hz`` into ``output/camera_bag``
    (stamps from ``START_NS``). None (with the reason on stderr) when a photo is missing."""
    from ..core.model_files import sample_image_paths
    from .bags import write_image_bag
    paths = sample_image_paths()
    missing = [n for n in DEMO_IMAGES if n not in paths]
    if missing:
        print(f'demo: sample photographs missing: {missing} (run `make venv`)', file=sys.stderr)
        return None
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
    return CameraBag(photos, stamp_to_image, len(frames), bag)


def _start_nodes(output: Path, env: dict, backend_params: dict | None,
                 detector_params: dict | None = None, config: Path | None = None
                 ) -> tuple[dict, dict]:
    """Step 2: person_detector and emotion_node as separate processes with the package's
    config (then ``config``, then ``detector_params`` / ``backend_params``: emotion node
    parameters), logging into ``output/logs``. Returns (name -> Popen, name -> open log
    file)."""
    from .config import config_dir
    cfg = config_dir()
    user = ['--params-file', str(config)] if config is not None else []
    emo_extra = user + [item for k, v in (backend_params or {}).items() if v not in (None, '')
                        for item in ('-p', f'{k}:={v}')]
    det_extra = user + [item for k, v in (detector_params or {}).items() if v is not None
                        for item in ('-p', ros_param_arg(k, v))]
    procs, logs = {}, {}
    for module, config, extra in (('person_detector', cfg / 'person_detector.yaml', det_extra),
                                  ('emotion_node', cfg / 'emotion_node.yaml', emo_extra)):
        logs[module] = open(output / 'logs' / f'{module}.log', 'w')
        procs[module] = subprocess.Popen(_node_cmd(module, config, extra), env=env,
                                         stdout=logs[module], stderr=subprocess.STDOUT)
    return procs, logs


class _Observer:
    """This process's side: rclpy, a node keeping every /detections, /emotions,
    /emotion_states and /emotion_events array and a recorder writing them into
    ``output/recorded_bag``, spun by a background executor."""

    def __init__(self, output: Path) -> None:
        import rclpy
        from rclpy.executors import MultiThreadedExecutor

        from ..msg import (EmotionEventArray, PersonDetectionArray, PersonEmotionArray,
                           PersonEmotionStateArray)
        from ..ros.qos import EVENTS_QOS, RESULTS_QOS
        from .bags import BagRecorder
        rclpy.init()
        self.node = rclpy.create_node('emotion_demo')
        self.executor = MultiThreadedExecutor(num_threads=3)
        self.executor.add_node(self.node)
        self.detections: list = []
        self.emotions: list = []
        self.lock = threading.Lock()
        self.node.create_subscription(PersonDetectionArray, '/detections',
                                      self._keep(self.detections), RESULTS_QOS)
        self.node.create_subscription(PersonEmotionArray, '/emotions',
                                      self._keep(self.emotions), RESULTS_QOS)
        self.states: list = []  # PersonEmotionStateArray
        self.events: list = []  # EmotionEventArray
        self.node.create_subscription(PersonEmotionStateArray, '/emotion_states',
                                      self._keep(self.states), RESULTS_QOS)
        self.node.create_subscription(EmotionEventArray, '/emotion_events',
                                      self._keep(self.events), EVENTS_QOS)
        recorded = {'/detections': 'PersonDetectionArray', '/emotions': 'PersonEmotionArray',
                    '/emotion_states': 'PersonEmotionStateArray',
                    '/emotion_events': 'EmotionEventArray'}
        self.recorder = BagRecorder(
            output / 'recorded_bag', list(recorded),
            types={k: f'emotion_perception/msg/{v}' for k, v in recorded.items()})
        self.executor.add_node(self.recorder)
        self._spin = threading.Thread(target=self.executor.spin, daemon=True)
        self._spin.start()

    def _keep(self, store: list):
        def cb(msg):
            with self.lock:
                store.append(msg)
        return cb

    def counts(self) -> tuple[int, int]:
        """(detections arrays, emotions arrays) received so far."""
        with self.lock:
            return len(self.detections), len(self.emotions)

    def received(self) -> tuple[list, list]:
        """Copies of (detections arrays, emotions arrays) received so far."""
        with self.lock:
            return list(self.detections), list(self.emotions)

    def stop_recording(self) -> None:
        try:
            self.recorder.stop()
        except Exception:  # noqa: BLE001 - the demo's result is decided elsewhere
            pass

    def close(self) -> None:
        """Stop the spin thread and destroy the nodes before rclpy and the interpreter go
        away: a daemon thread still inside rclpy's wait at interpreter exit aborts the process
        ('terminate called without an active exception', seen with Kilted's rclpy 9.1.2)."""
        import rclpy
        self.executor.shutdown(timeout_sec=2.0)
        self._spin.join(timeout=5.0)
        for ros_node in (self.recorder, self.node):
            self.executor.remove_node(ros_node)
            ros_node.destroy_node()
        rclpy.shutdown()


def _activate(node, procs: dict, output: Path) -> None:
    """configure + activate each node through its lifecycle services (raises RuntimeError
    naming the node and its log when one does not come up or a transition fails)."""
    from ..ros.lifecycle_client import LifecycleClient
    for name in procs:
        client = LifecycleClient(node, f'/{name}')
        if not client.wait_ready(60.0):
            raise RuntimeError(f'{name} did not come up (see {output}/logs/{name}.log)')
        for transition in ('configure', 'activate'):
            if not client.change(transition):
                raise RuntimeError(f'{name}: {transition} failed (see logs/{name}.log)')


def _deactivate(node, procs: dict) -> None:
    """Lifecycle down (deactivate, cleanup), like a manager would."""
    from ..ros.lifecycle_client import LifecycleClient
    for name in procs:
        client = LifecycleClient(node, f'/{name}')
        client.change('deactivate')
        client.change('cleanup')


def _replay_and_wait(observer: _Observer, camera: CameraBag, timeout_s: float) -> Recording:
    """Step 3: replay the camera bag, then wait (at most 60 s) until the emotions arrays have
    caught up with the detections arrays and no new detections came for 3 s."""
    from ..ros.messages import stamp_key
    from .bags import BagPlayer
    player = BagPlayer(camera.bag.path, node=observer.node, wait_subscribers=2,
                       wait_timeout_s=30.0)
    player.start()
    player.wait(timeout_s=timeout_s)
    end = time.monotonic() + 60.0
    last_n, last_change = -1, time.monotonic()
    while time.monotonic() < end:
        n_det, n_emo = observer.counts()
        if n_det != last_n:
            last_n, last_change = n_det, time.monotonic()
        if n_emo >= n_det and time.monotonic() - last_change > 3.0:
            break
        time.sleep(0.1)
    det_msgs, emo_msgs = observer.received()
    answered = {stamp_key(m.header) for m in emo_msgs}
    unanswered = [m for m in det_msgs if stamp_key(m.header) not in answered]
    return Recording(det_msgs, emo_msgs, unanswered)


def _status_names() -> dict[int, str]:
    """PersonEmotion status -> the word the table and emotions.jsonl use."""
    from ..msg import PersonEmotion
    return {PersonEmotion.STATUS_OK: 'ok', PersonEmotion.STATUS_CACHED: 'cached',
            PersonEmotion.STATUS_SKIPPED: 'skipped', PersonEmotion.STATUS_ERROR: 'error'}


def _report(output: Path, rec: Recording, camera: CameraBag) -> dict:
    """Step 4: the table (stdout) and ``emotions.jsonl`` of each person's last answer, and
    ``annotated/<photo>.jpg``. Returns (photo, track id) -> (emotions array, person)."""
    from ..ros.messages import stamp_ns
    latest: dict[tuple[str, str], tuple] = {}
    for msg in rec.emotions:
        image = camera.stamp_to_image.get(stamp_ns(msg.header), '?')
        for person in msg.persons:
            latest[(image, person.track_id)] = (msg, person)
    print()
    print(f'{"image":<13}{"track":>5}  {"top-3 categories (score)":<58}{"V":>5}{"A":>5}'
          f'{"D":>5}  status')
    print('-' * 100)
    with open(output / 'emotions.jsonl', 'w') as jf:
        for (image, track), (_msg, p) in sorted(latest.items(), key=lambda kv: (
                DEMO_IMAGES.index(kv[0][0]) if kv[0][0] in DEMO_IMAGES else 99, kv[0][1])):
            print(_table_row(image, track, p))
            jf.write(json.dumps(_person_record(image, p)) + '\n')
    _write_annotated(output, rec.emotions, camera)
    return latest


def _table_row(image: str, track: str, p) -> str:
    """One line of the table: photo, track id, top-3 categories with scores (or the reason
    when there are none), VAD, status."""
    from ..core.categories import EMOTIC_CATEGORIES
    scores = np.array(p.scores, dtype=np.float32)
    if np.isfinite(scores).any():
        order = np.argsort(-scores)[:3]
        top = ', '.join(f'{EMOTIC_CATEGORIES[i]} ({scores[i]:.2f})' for i in order)
    else:
        top = p.status_reason[:56]
    return (f'{image:<13}{track or "-":>5}  {top:<58}{_fmt(p.valence):>5}'
            f'{_fmt(p.arousal):>5}{_fmt(p.dominance):>5}  '
            f'{_status_names().get(p.status, p.status)}')


def _person_record(image: str, p) -> dict:
    """One line of emotions.jsonl (a PersonEmotion; NaN written as null)."""
    from ..core.categories import EMOTIC_CATEGORIES
    return {
        'image': image, 'track_id': p.track_id,
        'bbox_xywh': [p.bbox.x_offset, p.bbox.y_offset, p.bbox.width, p.bbox.height],
        'scores': {c: (None if math.isnan(s) else round(float(s), 4))
                   for c, s in zip(EMOTIC_CATEGORIES, p.scores)},
        'labels': list(p.labels),
        'vad': {k: (None if math.isnan(v) else round(float(v), 3)) for k, v in
                (('valence', p.valence), ('arousal', p.arousal), ('dominance', p.dominance))},
        'status': _status_names().get(p.status, str(p.status)),
        'reason': p.status_reason, 'backend': p.backend, 'model': p.model}


def _write_annotated(output: Path, emotions: list, camera: CameraBag) -> None:
    """``annotated/<photo>.jpg``: the last answered frame of each photo with persons, drawn."""
    from ..core.drawing import draw_persons
    from ..core.types import EmotionResult, Status
    from ..ros.messages import detections_from_msg, stamp_ns
    for image in DEMO_IMAGES:
        msgs = [m for m in emotions
                if camera.stamp_to_image.get(stamp_ns(m.header)) == image and m.persons]
        if not msgs:
            continue
        msg = msgs[-1]
        dets = detections_from_msg(msg_to_detections(msg))
        results = [EmotionResult(scores=np.array(p.scores, dtype=np.float32),
                                 labels=list(p.labels),
                                 vad=(p.valence, p.arousal, p.dominance),
                                 status=Status(p.status), reason=p.status_reason)
                   for p in msg.persons]
        drawn = draw_persons(camera.photos[image], dets, results)
        cv2.imwrite(str(output / 'annotated' / f'{image}.jpg'),
                    cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))


def _summary(output: Path, rec: Recording, camera: CameraBag, latest: dict, elapsed_s: float
             ) -> int:
    """The closing lines; returns 0 when every detections array was answered and at least
    one person got emotions (OK or CACHED), else 1."""
    from ..msg import PersonEmotion
    n_ok = sum(1 for _, p in latest.values() if p.status in (PersonEmotion.STATUS_OK,
                                                              PersonEmotion.STATUS_CACHED))
    print('-' * 100)
    print(f'demo: {camera.frames} frames replayed, {len(rec.detections)} detections arrays, '
          f'{len(rec.emotions)} emotions arrays, {len(rec.unanswered)} unanswered, '
          f'{len(latest)} persons ({n_ok} with emotions) in {elapsed_s:.1f} s')
    print(f'demo: annotated images in {output / "annotated"}, recorded bag '
          f'{output / "recorded_bag"}, table as {output / "emotions.jsonl"}')
    return 0 if (rec.detections and not rec.unanswered and n_ok > 0) else 1


def _stop_nodes(procs: dict, logs: dict, output: Path) -> bool:
    """SIGINT to the node processes, then wait (kill after 20 s); a process that did not exit
    0 has its last log lines printed. Returns True when all exited 0."""
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    ok = True
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
            ok = False
    return ok


def _write_states(output: Path, observer: _Observer, rec: Recording, camera: CameraBag) -> str:
    """states.jsonl, events.jsonl, timelines/ of what the node published (``frame``: the index
    in the camera bag)."""
    with observer.lock:
        state_msgs, event_msgs = list(observer.states), list(observer.events)
    stamp_to_frame = {stamp: i for i, stamp in enumerate(sorted(camera.stamp_to_image))}
    return write_states(output, rec.emotions, state_msgs, event_msgs, stamp_to_frame)


def write_states(output: Path, emo_msgs: list, state_msgs: list, event_msgs: list,
                 stamp_to_frame: dict) -> str:
    """states.jsonl, events.jsonl and timelines/ from the node's messages (in stamp order; the
    raw scores of the timelines from the emotions arrays of the same stamps). Returns a line
    saying what was written."""
    from ..ros.messages import events_from_msg, state_from_msg, stamp_seconds
    from .state_outputs import StateWriter

    def key(msg) -> int:
        return msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
    raw = {key(m): m for m in emo_msgs}
    events: dict[int, list] = {}
    for msg in event_msgs:
        events.setdefault(key(msg), []).extend(events_from_msg(msg))
    writer = StateWriter(output)
    for msg in sorted(state_msgs, key=key):
        stamp_s, emo = stamp_seconds(msg.header), raw.get(key(msg))
        results = ([_result_of(p) for p in emo.persons] if emo is not None
                   else [None] * len(msg.persons))
        writer.write_frame(stamp_to_frame.get(key(msg)), results,
                           [state_from_msg(p, stamp_s) for p in msg.persons],
                           events.pop(key(msg), []))
    for stamp in sorted(events):  # decided without a frame (the node's timer, a reset)
        writer.write_events(stamp_to_frame.get(stamp), events[stamp])
    pictures = writer.close()
    return (f'{writer.rows} person states in {output / "states.jsonl"}, {writer.event_rows} '
            f'events in {output / "events.jsonl"}, {len(pictures)} timelines in '
            f'{output / "timelines"}')


def _result_of(person):
    """The EmotionResult a PersonEmotion message carries (scores, VAD, status)."""
    from ..core.types import EmotionResult, Status
    return EmotionResult(scores=np.array(person.scores, dtype=np.float32),
                         labels=list(person.labels),
                         vad=(person.valence, person.arousal, person.dominance),
                         status=Status(person.status), reason=person.status_reason)


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
    p.add_argument('--detector-runtime', choices=['auto', 'torch', 'openvino', 'onnxruntime'],
                   help="person detector runtime (default: the config, 'auto')")
    add_tracker_arguments(p)
    p.add_argument('--config', type=Path, help='ROS 2 parameter YAML with person_detector and/or '
                   'emotion_node sections, applied after the package config/')
    from .process import add_state_arguments
    add_state_arguments(p)
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from .process import state_overrides
    return run_demo(args.output, repeat=args.repeat, rate_hz=args.rate,
                    backend_params={'backend.name': args.backend, 'backend.model': args.model},
                    detector_params={'runtime': args.detector_runtime,
                                     **tracker_overrides(args)},
                    state_params=state_overrides(args), config=args.config)
