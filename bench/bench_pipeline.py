#!/usr/bin/env python3
"""Node overhead of the perception pipeline (issue 2): ROS nodes vs calling the core directly.

0. First (issue 24, ``bench_runtimes.py``): the person detector per runtime (torch, OpenVINO,
   ONNX Runtime) on the real photos and a generated 10 fps video, with the box agreement
   against torch, and the default pipeline end to end (detector + tracker + face baseline),
   today's (runtime torch) against the default (runtime auto). ``--no-runtimes`` skips it.

Everything runs on the same real photographs (bus.jpg and zidane.jpg from ultralytics,
astronaut.png from scikit-image; resized to 640x480, each held for a few frames with a slow pan so the tracker sees a video), in one
process and one run, and every ratio is against a baseline measured in this process. Baseline
and node calls are interleaved frame by frame (order rotating), so background load on a shared
machine hits both alike.

1. Detector throughput, frames/s: ``PersonDetector.detect`` (core) and raw
   ``ultralytics.YOLO(...).track(...)`` vs the ``PersonDetectorNode`` in-process, closed loop
   (the next frame is published when the previous frame's detections came back; measured at
   the subscriber) and open loop (a fixed publishing rate above what the node can do; drops
   counted from ``node.stats``). Target: node / core >= 0.9.
2. Image-to-emotions latency, ms: publish an image, wait for the ``emotions`` array with its
   stamp (person_detector + emotion_node, face_baseline backend, reuse disabled so every
   person runs the model), in-process and (unless ``--no-processes``) as two node processes;
   baseline: ``PersonDetector.detect`` + ``EmotionPipeline.process`` on the same frame.
   Target: node mean / baseline mean <= 1.15.
3. Peak RSS of this process (and of the node processes), MB.

    HF_HUB_OFFLINE=1 YOLO_OFFLINE=1 .venv/bin/python bench/bench_pipeline.py [--frames N]
        [--quick] [--device cpu|cuda|auto] [--no-processes] [--json results.json]

DDS stays on loopback (ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST) in a random ROS_DOMAIN_ID.
"""
from __future__ import annotations

import faulthandler
import os
import random

faulthandler.enable()  # a native crash (rclpy/DDS teardown) prints where it happened

# Before anything imports rclpy (or torch/ultralytics): loopback DDS, private domain, no hubs.
os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
os.environ['ROS_DOMAIN_ID'] = str(random.SystemRandom().randint(10, 200))
os.environ['HF_HUB_OFFLINE'] = '1'
os.environ['TRANSFORMERS_OFFLINE'] = '1'
os.environ['YOLO_OFFLINE'] = '1'
#: ultralytics sets OMP_NUM_THREADS=1 on import when unset; the node processes get the original.
OMP_AT_START = os.environ.get('OMP_NUM_THREADS')

import argparse  # noqa: E402
import gc  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from emotion_perception.core.backends import create_backend  # noqa: E402
from emotion_perception.core.detector import DetectorOptions, PersonDetector  # noqa: E402
from emotion_perception.core.model_files import resolve_model_path, sample_image_paths  # noqa: E402
from emotion_perception.core.pipeline import EmotionPipeline, ReuseOptions  # noqa: E402
from emotion_perception.core.types import Status  # noqa: E402
from emotion_perception.msg import PersonDetectionArray, PersonEmotionArray  # noqa: E402
from emotion_perception.nodes.emotion_node import EmotionNode  # noqa: E402
from emotion_perception.nodes.person_detector import PersonDetectorNode  # noqa: E402
from emotion_perception.ros.image_conversion import numpy_to_image_msg  # noqa: E402
from emotion_perception.ros.messages import stamp_key  # noqa: E402
from emotion_perception.ros.qos import RESULTS_QOS, image_qos  # noqa: E402
from emotion_perception.testing.ros_harness import RosHarness  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_runtimes  # noqa: E402 - section 0, a script of its own beside this one

REPO = Path(__file__).resolve().parents[1]
#: Frame size every path sees (width, height).
FRAME_SIZE = (640, 480)
#: Photographs cycled through (bus: 4 people, zidane: 2, astronaut: 1 large face, so the face
#: model runs on some frames; the bus faces are too small for the Haar cascade at 640x480), and how many consecutive frames each is held (panning).
PHOTOS = ('bus', 'zidane', 'astronaut')
HOLD_FRAMES = 3
#: Pan per held frame in pixels (x, y): the crop window moves over a slightly larger resize.
PAN_STEP = (8, 6)
#: How long one frame may take through any path before the bench gives up (seconds).
FRAME_TIMEOUT_S = 120.0
#: How long the node processes may take to load their models and match (seconds).
STARTUP_TIMEOUT_S = 180.0
#: Open loop: publish this many times faster than the core detector ran.
OPEN_LOOP_OVERLOAD = 2.0


# -- frames, stamps, small helpers -----------------------------------------------------------
def make_frames() -> list[np.ndarray]:
    """The distinct (480, 640, 3) uint8 RGB frames; frame i of a run is ``frames[i % len]``."""
    paths = sample_image_paths()
    missing = [p for p in PHOTOS if p not in paths]
    if missing:
        raise SystemExit(f'sample photographs {missing} not found (install ultralytics)')
    w, h = FRAME_SIZE
    big = (w + PAN_STEP[0] * (HOLD_FRAMES - 1), h + PAN_STEP[1] * (HOLD_FRAMES - 1))
    frames = []
    for name in PHOTOS:
        rgb = cv2.cvtColor(cv2.imread(str(paths[name])), cv2.COLOR_BGR2RGB)
        rgb = cv2.resize(rgb, big, interpolation=cv2.INTER_AREA)
        for k in range(HOLD_FRAMES):
            x, y = k * PAN_STEP[0], k * PAN_STEP[1]
            frames.append(np.ascontiguousarray(rgb[y:y + h, x:x + w]))
    return frames


_STAMPS = itertools.count()


def next_header() -> Header:
    """A fresh, strictly increasing stamp (trackers reset on backwards stamps)."""
    k = next(_STAMPS)
    hdr = Header(frame_id='bench_camera')
    hdr.stamp.sec, hdr.stamp.nanosec = 1_000_000 + k // 10, (k % 10) * 100_000_000
    return hdr


key = stamp_key  # (sec, nanosec) of a header


def summary(ms: list[float]) -> dict[str, float]:
    arr = np.asarray(ms, dtype=float)
    return {'n': int(arr.size), 'mean': float(arr.mean()), 'p50': float(np.percentile(arr, 50)),
            'p90': float(np.percentile(arr, 90)), 'min': float(arr.min()),
            'max': float(arr.max())}


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def proc_peak_rss_mb(pid: int) -> float | None:
    """VmHWM (peak resident set) of a running process, MB; None when unreadable."""
    try:
        for line in Path(f'/proc/{pid}/status').read_text().splitlines():
            if line.startswith('VmHWM:'):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    try:
        return psutil.Process(pid).memory_info().rss / 2**20
    except psutil.Error:
        return None


def table(title: str, headers: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f'{v:.1f}' if abs(v) >= 10 else f'{v:.2f}'
        return str(v)
    lines = [f'### {title}', '', '| ' + ' | '.join(headers) + ' |',
             '|' + '|'.join('---' for _ in headers) + '|']
    lines += ['| ' + ' | '.join(cell(v) for v in row) + ' |' for row in rows]
    return '\n'.join(lines) + '\n'


class Arrivals:
    """Receive times (perf_counter) of messages by header stamp; wait for one stamp."""

    def __init__(self) -> None:
        self.times: dict[tuple[int, int], float] = {}
        self.msgs: dict[tuple[int, int], Any] = {}
        self._cond = threading.Condition()

    def __call__(self, msg: Any) -> None:
        now = time.perf_counter()
        with self._cond:
            self.times[key(msg.header)] = now
            self.msgs[key(msg.header)] = msg
            self._cond.notify_all()

    def wait(self, stamp: tuple[int, int], timeout: float = FRAME_TIMEOUT_S) -> float:
        end = time.monotonic() + timeout
        with self._cond:
            while stamp not in self.times:
                left = end - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f'no answer for stamp {stamp} within {timeout:.0f} s')
                self._cond.wait(left)
            return self.times[stamp]

    def __len__(self) -> int:
        with self._cond:
            return len(self.times)


def roundtrip(pub, msg: Image, arrivals: Arrivals) -> float:
    """Publish ``msg`` with a fresh stamp, wait for the answer; milliseconds."""
    msg.header = next_header()
    t0 = time.perf_counter()
    pub.publish(msg)
    return (arrivals.wait(key(msg.header)) - t0) * 1e3


def interleaved(paths: dict[str, Callable[[int], Any]], n: int, warmup: int
                ) -> dict[str, list[Any]]:
    """Run frame i through every path (order rotating per frame); the first ``warmup`` frames
    are not kept. Each path returns its sample for the frame."""
    names = list(paths)
    out: dict[str, list[Any]] = {name: [] for name in names}
    for i in range(warmup + n):
        order = names[i % len(names):] + names[:i % len(names)]
        for name in order:
            sample = paths[name](i)
            if i >= warmup:
                out[name].append(sample)
    return out


# -- 1. detector throughput --------------------------------------------------------------------
def bench_detector(args, frames, core: PersonDetector, report: dict) -> list[str]:
    from ultralytics import YOLO

    opts = core.options
    raw = YOLO(resolve_model_path(opts.model), task='detect')
    raw_kwargs = dict(conf=opts.confidence, iou=opts.iou, imgsz=opts.image_size,
                      classes=core.class_ids, device=core.device, max_det=opts.max_detections,
                      verbose=False)
    bgr_frames = [np.ascontiguousarray(f[..., ::-1]) for f in frames]

    def run_core(i: int) -> float:
        t0 = time.perf_counter()
        core.detect(frames[i % len(frames)])
        return (time.perf_counter() - t0) * 1e3

    def run_raw(i: int) -> float:
        t0 = time.perf_counter()
        raw.track(bgr_frames[i % len(frames)], persist=True, tracker=core.tracker_file,
                  **raw_kwargs)  # the same tracker settings as the core's
        return (time.perf_counter() - t0) * 1e3

    lines = []
    with RosHarness('bench_detector') as h:
        node = h.add(PersonDetectorNode(context=h.context, parameter_overrides=[
            Parameter('device', value=args.device),
            Parameter('image_reliability', value='reliable')]))
        assert node.trigger_configure().name == 'SUCCESS', 'person_detector configure failed'
        assert node.trigger_activate().name == 'SUCCESS', 'person_detector activate failed'
        pub = h.publisher(Image, 'image', image_qos('reliable'))
        arrivals = Arrivals()
        h.node.create_subscription(PersonDetectionArray, 'detections', arrivals, RESULTS_QOS)
        if not h.wait_matched(pub):
            raise RuntimeError('image publisher never matched the person_detector')
        msgs = [numpy_to_image_msg(f, 'rgb8') for f in frames]

        def run_node(i: int) -> float:
            return roundtrip(pub, msgs[i % len(msgs)], arrivals)

        ms = interleaved({'core': run_core, 'raw': run_raw, 'node': run_node}, args.frames,
                         args.warmup)
        fps = {k: 1e3 / statistics.fmean(v) for k, v in ms.items()}
        closed_stats = node.stats.snapshot()

        # open loop: a fixed rate above what the detector does; latest-wins drops are counted
        rate = args.open_rate or OPEN_LOOP_OVERLOAD * fps['core']
        n_open = args.open_frames or max(4, 2 * args.frames)
        before = node.stats.snapshot()
        received_before = len(arrivals)
        period = 1.0 / rate
        t_start = time.perf_counter()
        for i in range(n_open):
            target = t_start + i * period
            delay = target - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            msg = msgs[i % len(msgs)]
            msg.header = next_header()
            pub.publish(msg)
        t_pub_end = time.perf_counter()

        def settled() -> bool:
            s = node.stats.snapshot()
            done = (s.get('detections_out', 0) - before.get('detections_out', 0)
                    + s.get('drops.stale_frame', 0) - before.get('drops.stale_frame', 0))
            got = s.get('images_in', 0) - before.get('images_in', 0)
            return got >= n_open and done >= got
        h.wait_for(settled, timeout=FRAME_TIMEOUT_S)
        h.wait_for(lambda: len(arrivals) - received_before
                   >= node.stats.snapshot().get('detections_out', 0)
                   - before.get('detections_out', 0), timeout=10.0)
        after = node.stats.snapshot()
        times = sorted(arrivals.times.values())[received_before:]
        delta = {k: after.get(k, 0) - before.get(k, 0)
                 for k in ('images_in', 'detections_out', 'drops.stale_frame')}
        received = len(times)
        span = (times[-1] - t_start) if times else float('nan')
        open_fps = received / span if times else 0.0
        unaccounted = delta['images_in'] - delta['detections_out'] - delta['drops.stale_frame']
        del raw
        gc.collect()

    ratio_core = fps['node'] / fps['core']
    rows = [
        ['PersonDetector.detect (core)', args.frames, statistics.fmean(ms['core']),
         summary(ms['core'])['p50'], fps['core'], 1.0],
        ['ultralytics YOLO.track (raw)', args.frames, statistics.fmean(ms['raw']),
         summary(ms['raw'])['p50'], fps['raw'], fps['raw'] / fps['core']],
        ['PersonDetectorNode, closed loop', args.frames, statistics.fmean(ms['node']),
         summary(ms['node'])['p50'], fps['node'], ratio_core],
    ]
    lines.append(table('1. Detector throughput (closed loop, frames interleaved)',
                       ['path', 'frames', 'mean ms/frame', 'p50 ms', 'frames/s',
                        'ratio vs core'], rows))
    verdict = 'OK' if ratio_core >= 0.9 else 'BELOW TARGET'
    lines.append(f'node/core = {ratio_core:.3f} (target >= 0.9: {verdict}); '
                 f'node/raw ultralytics = {fps["node"] / fps["raw"]:.3f}; '
                 f'node overhead = {statistics.fmean(ms["node"]) - statistics.fmean(ms["core"]):+.1f}'
                 f' ms/frame\n')
    lines.append(table(f'1b. PersonDetectorNode open loop ({rate:.2f} Hz published, '
                       f'{OPEN_LOOP_OVERLOAD:g}x the core rate unless --open-rate)',
                       ['published', 'images_in', 'processed', 'drops.stale_frame',
                        'unaccounted', 'received', 'publish s', 'frames/s at subscriber',
                        'ratio vs core'],
                       [[n_open, delta['images_in'], delta['detections_out'],
                         delta['drops.stale_frame'], unaccounted, received,
                         t_pub_end - t_start, open_fps, open_fps / fps['core']]]))
    report['detector'] = {
        'frames': args.frames, 'warmup': args.warmup, 'ms': ms,
        'fps': fps, 'ratio_node_core': ratio_core, 'ratio_node_raw': fps['node'] / fps['raw'],
        'node_stats_closed_loop': closed_stats,
        'open_loop': {'rate_hz': rate, 'published': n_open, **delta,
                      'unaccounted': unaccounted, 'received': received,
                      'fps': open_fps, 'ratio_node_core': open_fps / fps['core']},
    }
    return lines


# -- 2. image-to-emotions latency --------------------------------------------------------------
def baseline_call(core: PersonDetector, pipeline: EmotionPipeline, frames, i: int
                  ) -> dict[str, float]:
    rgb = frames[i % len(frames)]
    t0 = time.perf_counter()
    det = core.detect(rgb)
    t1 = time.perf_counter()
    out = pipeline.process(rgb, det.detections, float(i))
    t2 = time.perf_counter()
    return {'total': (t2 - t0) * 1e3, 'detect': (t1 - t0) * 1e3, 'emotions': (t2 - t1) * 1e3,
            'persons': len(det.detections),
            'ok': sum(r.status == Status.OK for r in out.results)}


def node_call(pub, msgs, dets: Arrivals, emos: Arrivals, i: int) -> dict[str, float]:
    msg = msgs[i % len(msgs)]
    msg.header = next_header()
    stamp = key(msg.header)
    t0 = time.perf_counter()
    pub.publish(msg)
    t_emo = emos.wait(stamp)
    try:  # the detections normally arrive first; both subscriptions run on the executor
        t_det = dets.wait(stamp, timeout=2.0)
    except TimeoutError:
        t_det = float('nan')
    ans = emos.msgs[stamp]
    return {'total': (t_emo - t0) * 1e3, 'detect': (t_det - t0) * 1e3,
            'emotions': (t_emo - t_det) * 1e3, 'persons': len(ans.persons),
            'ok': sum(p.status == p.STATUS_OK for p in ans.persons)}


def latency_rows(label: str, samples: list[dict], base: dict) -> list[Any]:
    tot = summary([s['total'] for s in samples])
    return [label, tot['n'], tot['mean'], tot['p50'], tot['p90'],
            statistics.fmean(s['detect'] for s in samples),
            statistics.fmean(s['emotions'] for s in samples),
            statistics.fmean(s['persons'] for s in samples),
            statistics.fmean(s['ok'] for s in samples),
            tot['mean'] / base['mean'], tot['p50'] / base['p50']]


LATENCY_HEADERS = ['path', 'frames', 'mean ms', 'p50 ms', 'p90 ms', 'detect ms', 'emotions ms',
                   'persons/frame', 'faces run/frame', 'ratio mean', 'ratio p50']


def bench_latency_inprocess(args, frames, core, pipeline, report: dict) -> list[str]:
    with RosHarness('bench_latency') as h:
        det_node = h.add(PersonDetectorNode(context=h.context, parameter_overrides=[
            Parameter('device', value=args.device),
            Parameter('image_reliability', value='reliable')]))
        emo_node = h.add(EmotionNode(context=h.context, parameter_overrides=[
            Parameter('backend.device', value=args.device),
            Parameter('reuse.enabled', value=False),
            Parameter('image_reliability', value='reliable')]))
        for node in (det_node, emo_node):
            assert node.trigger_configure().name == 'SUCCESS', f'{node.get_name()} configure'
            assert node.trigger_activate().name == 'SUCCESS', f'{node.get_name()} activate'
        pub = h.publisher(Image, 'image', image_qos('reliable'))
        dets, emos = Arrivals(), Arrivals()
        h.node.create_subscription(PersonDetectionArray, 'detections', dets, RESULTS_QOS)
        h.node.create_subscription(PersonEmotionArray, 'emotions', emos, RESULTS_QOS)
        if not (h.wait_matched(pub, 2) and h.wait_for(
                lambda: h.node.count_publishers('emotions') >= 1, 10.0)):
            raise RuntimeError('in-process nodes never matched the bench topics')
        msgs = [numpy_to_image_msg(f, 'rgb8') for f in frames]
        res = interleaved({'base': lambda i: baseline_call(core, pipeline, frames, i),
                           'node': lambda i: node_call(pub, msgs, dets, emos, i)},
                          args.frames, args.warmup)
        res['emotion_node_stats'] = emo_node.stats.snapshot()
        res['detector_node_stats'] = det_node.stats.snapshot()
    base = summary([s['total'] for s in res['base']])
    node = summary([s['total'] for s in res['node']])
    report['latency_inprocess'] = {'baseline': base, 'nodes': node,
                                   'ratio_mean': node['mean'] / base['mean'],
                                   'ratio_p50': node['p50'] / base['p50'], 'samples': res}
    rows = [latency_rows('detect + EmotionPipeline.process (core)', res['base'], base),
            latency_rows('person_detector + emotion_node, in-process', res['node'], base)]
    ratio = node['mean'] / base['mean']
    verdict = 'OK' if ratio <= 1.15 else 'ABOVE TARGET'
    return [table('2. Image-to-emotions latency, in-process nodes (closed loop, interleaved)',
                  LATENCY_HEADERS, rows),
            f'nodes/core mean latency = {ratio:.3f} (target <= 1.15: {verdict}); node overhead = '
            f'{node["mean"] - base["mean"]:+.1f} ms/frame. Node "detect ms" = publish -> '
            'detections received, "emotions ms" = detections -> emotions received.\n']


def _spawn(module: str, params_file: str, extra: list[str], log: Path) -> subprocess.Popen:
    cmd = [sys.executable, '-m', module, '--ros-args', '--params-file',
           str(REPO / 'config' / params_file), *extra]
    env = dict(os.environ)
    if OMP_AT_START is None:
        env.pop('OMP_NUM_THREADS', None)  # as a node started from a shell would have it
    return subprocess.Popen(cmd, stdout=log.open('wb'), stderr=subprocess.STDOUT,
                            cwd=str(REPO), env=env)


def bench_latency_processes(args, frames, core, pipeline, report: dict) -> list[str]:
    logdir = Path(tempfile.mkdtemp(prefix='bench_pipeline_'))
    remaps = ['-r', 'image:=/bench/image', '-r', 'detections:=/bench/detections']
    specs = {
        'person_detector': ('emotion_perception.nodes.person_detector', 'person_detector.yaml',
                            ['-p', 'autostart:=true', '-p', 'image_reliability:=reliable',
                             '-p', f'device:={args.device}', *remaps]),
        'emotion_node': ('emotion_perception.nodes.emotion_node', 'emotion_node.yaml',
                         ['-p', 'autostart:=true', '-p', 'image_reliability:=reliable',
                          '-p', 'reuse.enabled:=false', '-p', f'backend.device:={args.device}',
                          *remaps, '-r', 'emotions:=/bench/emotions']),
    }
    procs: dict[str, subprocess.Popen] = {}
    peaks: dict[str, float | None] = {}
    t_spawn = time.perf_counter()
    try:
        for name, (module, yaml, extra) in specs.items():
            procs[name] = _spawn(module, yaml, extra, logdir / f'{name}.log')
        with RosHarness('bench_processes') as h:
            pub = h.publisher(Image, '/bench/image', image_qos('reliable'))
            dets, emos = Arrivals(), Arrivals()
            h.node.create_subscription(PersonDetectionArray, '/bench/detections', dets,
                                       RESULTS_QOS)
            h.node.create_subscription(PersonEmotionArray, '/bench/emotions', emos, RESULTS_QOS)

            def ready() -> bool:
                dead = [n for n, p in procs.items() if p.poll() is not None]
                if dead:
                    raise RuntimeError(f'node process {dead} exited early')
                return (pub.get_subscription_count() >= 2
                        and h.node.count_publishers('/bench/emotions') >= 1
                        and h.node.count_publishers('/bench/detections') >= 1)
            if not h.wait_for(ready, STARTUP_TIMEOUT_S, period=0.1):
                raise RuntimeError('node processes did not come up (see logs in '
                                   f'{logdir})')
            startup_s = time.perf_counter() - t_spawn
            msgs = [numpy_to_image_msg(f, 'rgb8') for f in frames]
            res = interleaved({'base': lambda i: baseline_call(core, pipeline, frames, i),
                               'node': lambda i: node_call(pub, msgs, dets, emos, i)},
                              args.frames, args.warmup)
            for name, proc in procs.items():
                peaks[name] = proc_peak_rss_mb(proc.pid)
    except Exception:
        for name in specs:
            log = logdir / f'{name}.log'
            if log.exists():
                print(f'--- {name} log (tail) ---\n'
                      + '\n'.join(log.read_text(errors='replace').splitlines()[-20:]),
                      file=sys.stderr)
        raise
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(2)  # SIGINT: the nodes shut down cleanly
        for proc in procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
    base = summary([s['total'] for s in res['base']])
    node = summary([s['total'] for s in res['node']])
    report['latency_processes'] = {'baseline': base, 'nodes': node, 'startup_s': startup_s,
                                   'ratio_mean': node['mean'] / base['mean'],
                                   'ratio_p50': node['p50'] / base['p50'],
                                   'peak_rss_mb': peaks, 'samples': res}
    report.setdefault('rss', {})['processes'] = peaks
    rows = [latency_rows('detect + EmotionPipeline.process (core)', res['base'], base),
            latency_rows('person_detector + emotion_node, 2 processes', res['node'], base)]
    ratio = node['mean'] / base['mean']
    verdict = 'OK' if ratio <= 1.15 else 'ABOVE TARGET'
    return [table('2b. Image-to-emotions latency, nodes as separate processes (closed loop, '
                  'interleaved)', LATENCY_HEADERS, rows),
            f'nodes/core mean latency = {ratio:.3f} (target <= 1.15: {verdict}); processes '
            f'started, models loaded and matched in {startup_s:.1f} s. Each node process has '
            'its own torch thread pool, the baseline runs in this process.\n']


# -- main ------------------------------------------------------------------------------------
def machine_header(args, core: PersonDetector, pipeline: EmotionPipeline) -> tuple[str, dict]:
    cpu_model = platform.processor() or ''
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                cpu_model = line.split(':', 1)[1].strip()
                break
    except OSError:
        pass
    import rclpy  # noqa: F401 - version only
    import ultralytics
    from importlib.metadata import version
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'
    info = {
        'cpu_count': os.cpu_count(), 'cpu_affinity': len(os.sched_getaffinity(0)),
        'cpu_model': cpu_model, 'torch_threads': torch.get_num_threads(),
        'torch_interop_threads': torch.get_num_interop_threads(),
        'omp_num_threads_env': os.environ.get('OMP_NUM_THREADS', ''),
        'loadavg_at_start': os.getloadavg(), 'python': platform.python_version(),
        'torch': torch.__version__, 'ultralytics': ultralytics.__version__,
        'rclpy': version('ros-jazzy-rclpy') if _has_dist('ros-jazzy-rclpy') else '?',
        'device_arg': args.device, 'detector_device': core.device,
        'emotion_device': str(getattr(pipeline.backend, 'device', '')), 'gpu': gpu,
        'ros_domain_id': os.environ['ROS_DOMAIN_ID'],
        'detector_model': core.options.model, 'emotion_backend': pipeline.backend.name,
        'frames': args.frames, 'warmup': args.warmup,
        'frame_size': f'{FRAME_SIZE[0]}x{FRAME_SIZE[1]}', 'photos': list(PHOTOS),
    }
    text = (f'# bench_pipeline: ROS nodes vs direct core calls\n\n'
            f'- machine: {info["cpu_count"]} CPUs ({info["cpu_affinity"]} usable), '
            f'{cpu_model}; load average at start {info["loadavg_at_start"][0]:.2f}\n'
            f'- torch {info["torch"]} threads {info["torch_threads"]} (interop '
            f'{info["torch_interop_threads"]}, OMP_NUM_THREADS={info["omp_num_threads_env"]!r}; '
            f'ultralytics sets it on CPU), ultralytics {info["ultralytics"]}, rclpy '
            f'{info["rclpy"]}, Python {info["python"]}\n'
            f'- device: --device {args.device} -> detector {core.device!r}, emotion backend '
            f'{info["emotion_device"]!r}; GPU {gpu}\n'
            f'- models: detector {core.options.model} (tracker {core.options.tracker or "off"}),'
            f' emotions {pipeline.backend.name} ({pipeline.backend.model_id})\n'
            f'- frames: {args.frames} timed after {args.warmup} warm-up, {info["frame_size"]}'
            f' RGB from {", ".join(PHOTOS)} (each held {HOLD_FRAMES} frames, panning); '
            f'ROS_DOMAIN_ID {info["ros_domain_id"]}, DDS on loopback\n')
    return text, info


def _has_dist(name: str) -> bool:
    from importlib.metadata import PackageNotFoundError, version
    try:
        version(name)
        return True
    except PackageNotFoundError:
        return False


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--frames', type=int, default=10,
                        help='timed frames per measurement (default 10: about 3 min on a '
                        '2-core CPU, where one detection takes ~1.5 s)')
    parser.add_argument('--warmup', type=int, default=None,
                        help='untimed frames first (default 2, --quick 1)')
    parser.add_argument('--quick', action='store_true',
                        help='smoke run: 2 frames, 1 warm-up (all tables, numbers meaningless)')
    parser.add_argument('--device', default='auto', help="'auto', 'cpu', 'cuda', 'cuda:0'")
    parser.add_argument('--open-rate', type=float, default=0.0,
                        help=f'open-loop publishing rate in Hz (default: {OPEN_LOOP_OVERLOAD:g}x'
                        ' the measured core rate)')
    parser.add_argument('--open-frames', type=int, default=0,
                        help='frames published in the open loop (default 2 x --frames)')
    parser.add_argument('--no-processes', dest='processes', action='store_false',
                        help='skip the run with the nodes as separate processes')
    parser.add_argument('--json', type=Path, default=None, help='also write results here')
    parser.add_argument('--no-runtimes', dest='runtimes_section', action='store_false',
                        help='skip section 0 (detector runtimes, end to end)')
    bench_runtimes.add_arguments(parser)
    args = parser.parse_args(argv)
    args.runtimes = args.runtimes.split(',')
    if args.quick:
        args.repeats, args.video_frames = 1, args.video_frames or 8
        args.frames = 2
        args.warmup = 1 if args.warmup is None else args.warmup
    if args.warmup is None:
        args.warmup = 2
    if args.frames < 1 or args.warmup < 0:
        parser.error('--frames must be >= 1 and --warmup >= 0')
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_run = time.perf_counter()
    frames = make_frames()
    report: dict[str, Any] = {'args': {k: str(v) for k, v in vars(args).items()}}
    rss_rows = [['start (imports, frames)', rss_mb(), peak_rss_mb()]]

    core = PersonDetector(DetectorOptions(device=args.device))
    core.load()
    backend = create_backend('face_baseline', {'device': args.device})
    backend.load()
    pipeline = EmotionPipeline(backend, ReuseOptions(enabled=False))
    core.detect(frames[0])  # first inference: ultralytics sets torch's CPU threads here
    core.reset_tracker()
    rss_rows.append(['core models loaded', rss_mb(), peak_rss_mb()])
    header, info = machine_header(args, core, pipeline)
    report['machine'] = info
    print(header, flush=True)
    if args.runtimes_section:
        args.report = report.setdefault('runtimes', {})
        restore = {k: os.environ.get(k) for k in ('OMP_NUM_THREADS',)}
        if OMP_AT_START is None:  # the worker processes start as a node would
            os.environ.pop('OMP_NUM_THREADS', None)
        for line in bench_runtimes.run(args):
            print(line, flush=True)
        for k, v in restore.items():
            if v is not None:
                os.environ[k] = v

    for line in bench_detector(args, frames, core, report):
        print(line, flush=True)
    rss_rows.append(['after 1. (raw YOLO + detector node, freed)', rss_mb(), peak_rss_mb()])
    for line in bench_latency_inprocess(args, frames, core, pipeline, report):
        print(line, flush=True)
    rss_rows.append(['after 2. in-process (both nodes, freed)', rss_mb(), peak_rss_mb()])
    if args.processes:
        for line in bench_latency_processes(args, frames, core, pipeline, report):
            print(line, flush=True)
        rss_rows.append(['after 2b. (this process: publisher + core)', rss_mb(),
                         peak_rss_mb()])
    else:
        print('### 2b. Image-to-emotions latency, nodes as separate processes\n\n'
              'skipped (--no-processes)\n', flush=True)

    rows = [[stage, cur, peak] for stage, cur, peak in rss_rows]
    for name, peak in report.get('rss', {}).get('processes', {}).items():
        rows.append([f'{name} process (VmHWM)', '', peak if peak is not None else '?'])
    print(table('3. Memory (RSS, MB)', ['stage', 'current RSS MB', 'peak RSS MB'], rows))
    report.setdefault('rss', {})['this_process'] = [
        {'stage': s, 'rss_mb': c, 'peak_rss_mb': p} for s, c, p in rss_rows]
    report['wall_s'] = time.perf_counter() - t_run
    print(f'total wall time {report["wall_s"]:.0f} s', flush=True)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1, default=_json_default))
        print(f'results written to {args.json}')
    return 0


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, tuple):
        return list(obj)
    return str(obj)


if __name__ == '__main__':
    sys.exit(main())
