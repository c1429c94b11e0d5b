#!/usr/bin/env python3
"""The person detector per runtime and the default pipeline end to end (issue 24), one run.

Section 0 of ``bench_pipeline.py`` (also runnable alone). The project's configuration
(config/*.yaml: detector confidence 0.4 at 512 px, the face baseline with per-track reuse)
with ByteTrack (the default BoT-SORT + ReID reads the PyTorch model's own features, so it keeps
the detector on torch: ``detector_runtime.reid_needs_torch``), on the CPU unless ``--device``
says otherwise:

0a. Detector ms per frame per runtime (torch, openvino, onnxruntime: whichever are installed),
    on the real photos at their own size (tracker off: independent scenes) and on a generated
    10 fps video (the photos at 640x480, each held for a second while the view pans; tracker
    on), frames interleaved across runtimes (order rotating); ratio vs torch; box agreement:
    min IoU of every box with its best match in torch's boxes of the same frame (tracker off,
    both ways; 'count' when the number of boxes differs).
0b. End to end on the video (detector + tracker + face baseline): today's pipeline (runtime
    torch) vs the default (runtime auto), frames interleaved: ms per frame split into detector
    and emotions, frames per second, the face detector's share (the backend's preprocess, where
    the face search runs) per person it ran for, and the same with reuse off (every person of
    every frame searched) to show the face detector's full cost.

    .venv/bin/python bench/bench_runtimes.py [--repeats 3] [--device cpu] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('YOLO_OFFLINE', '1')

import cv2  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emotion_perception.core import detector_runtime as dr  # noqa: E402
from emotion_perception.core.backends import create_backend  # noqa: E402
from emotion_perception.core.detector import PersonDetector  # noqa: E402
from emotion_perception.core.model_files import sample_image_paths  # noqa: E402
from emotion_perception.core.pipeline import EmotionPipeline, ReuseOptions  # noqa: E402
from emotion_perception.core.types import Status  # noqa: E402
from emotion_perception.tools.config import load_pipeline_config  # noqa: E402

PHOTOS = ('bus', 'zidane', 'astronaut', 'grace_hopper')
#: the generated video: 10 fps, each photo held this many frames while the view pans
VIDEO_FPS, HOLD, PAN = 10.0, 10, (4, 3)
VIDEO_SIZE = (640, 480)


def photos() -> dict[str, np.ndarray]:
    paths = sample_image_paths()
    return {n: cv2.cvtColor(cv2.imread(str(paths[n])), cv2.COLOR_BGR2RGB) for n in PHOTOS}


def video(pics: dict[str, np.ndarray]) -> list[np.ndarray]:
    """(480, 640, 3) RGB frames at 10 fps: each photo held ``HOLD`` frames, panning."""
    w, h = VIDEO_SIZE
    big = (w + PAN[0] * HOLD, h + PAN[1] * HOLD)
    out = []
    for rgb in pics.values():
        rgb = cv2.resize(rgb, big, interpolation=cv2.INTER_AREA)
        out += [np.ascontiguousarray(rgb[k * PAN[1]:k * PAN[1] + h, k * PAN[0]:k * PAN[0] + w])
                for k in range(HOLD)]
    return out


def min_iou(ref: np.ndarray, got: np.ndarray) -> float:
    """Smallest IoU of a box with its best match, both ways (NaN if the counts differ)."""
    if len(ref) != len(got):
        return float('nan')
    if len(ref) == 0:
        return 1.0
    x1 = np.maximum(ref[:, None, 0], got[None, :, 0])
    y1 = np.maximum(ref[:, None, 1], got[None, :, 1])
    x2 = np.minimum(ref[:, None, 2], got[None, :, 2])
    y2 = np.minimum(ref[:, None, 3], got[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])  # noqa: E731
    iou = inter / (area(ref)[:, None] + area(got)[None, :] - inter)
    return float(min(iou.max(1).min(), iou.max(0).min()))


def interleave(paths: dict[str, Callable[[int], Any]], n: int) -> dict[str, list[Any]]:
    """Frame i through every path, the order rotating per frame."""
    names, out = list(paths), {k: [] for k in paths}
    for i in range(n):
        for name in names[i % len(names):] + names[:i % len(names)]:
            out[name].append(paths[name](i))
    return out


def boxes(det: PersonDetector, rgb: np.ndarray) -> np.ndarray:
    return np.array([d.bbox.xyxy() for d in det.detect(rgb).detections], np.float32)


#: the configurations compared: label -> (runtime, half); 0a: detectors, 0b: whole pipelines
DETECTORS = {'torch': ('torch', False), 'openvino': ('openvino', False),
             'openvino half (bf16)': ('openvino', True), 'onnxruntime': ('onnxruntime', False)}
PIPELINES = {'today: torch': ('torch', False), 'default: auto': ('auto', False),
             'auto, half': ('auto', True)}


def _worker(conn, runtime: str, half: bool, device: str, with_pipeline: bool) -> None:
    """One configuration in a process of its own (as on a robot: one runtime per process, no
    thread pools of another runtime beside it), answering requests from the bench."""
    cfg = load_pipeline_config()
    pics = photos()
    sets = {'photos': list(pics.values()), 'video': video(pics)}
    # ByteTrack: the default BoT-SORT's ReID reads the PyTorch model's features, so it would
    # keep every runtime on torch; the runtimes are compared with the same tracker
    opts = replace(cfg.detector, device=device, runtime=runtime, half=half,
                   tracker='bytetrack.yaml')
    still, tracked = PersonDetector(replace(opts, tracker='')), PersonDetector(opts)
    for det in (still, tracked):
        det.load()
        det.warm_up()
    pipes = {}
    if with_pipeline:  # 'e2e': the configured reuse, 'e2e_no_reuse': every person every frame
        backend = create_backend(cfg.backend_name, dict(cfg.backend_options, device=device))
        backend.load()
        no_reuse = PersonDetector(opts)  # a tracker of its own
        no_reuse.load()
        pipes = {'e2e': (tracked, EmotionPipeline(backend, cfg.reuse)),
                 'e2e_no_reuse': (no_reuse, EmotionPipeline(backend, replace(cfg.reuse,
                                                                             enabled=False)))}
    conn.send({'runtime': still.runtime.runtime, 'reason': still.runtime.reason})
    while True:
        req = conn.recv()
        if req is None:
            return
        kind, name, i = req
        frames = sets[name]
        if kind == 'boxes':
            conn.send(boxes(still, frames[i % len(frames)]))
        elif kind == 'detect':
            t0 = time.perf_counter()
            (tracked if name == 'video' else still).detect(frames[i % len(frames)])
            conn.send((time.perf_counter() - t0) * 1e3)
        else:
            conn.send(_pipeline_frame(*pipes[kind], frames, i))


def _pipeline_frame(det: PersonDetector, pipe: EmotionPipeline, clip, i: int) -> dict:
    rgb = clip[i % len(clip)]
    t0 = time.perf_counter()
    found = det.detect(rgb)
    t1 = time.perf_counter()
    out = pipe.process(rgb, found.detections, i / VIDEO_FPS)
    t2 = time.perf_counter()
    fresh = [r for r in out.results if r.status != Status.CACHED]
    face_ms = fresh[0].timings.preprocess_ms if fresh else 0.0  # one backend call per frame
    return {'detect': (t1 - t0) * 1e3, 'emotions': (t2 - t1) * 1e3, 'face': face_ms,
            'calls': out.model_calls, 'persons': len(found.detections)}


def table(title: str, headers: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return '-' if v != v else (f'{v:.1f}' if abs(v) >= 10 else f'{v:.3f}')
        return str(v)
    out = [f'### {title}', '', '| ' + ' | '.join(headers) + ' |',
           '|' + '|'.join('---' for _ in headers) + '|']
    return '\n'.join(out + ['| ' + ' | '.join(cell(v) for v in r) + ' |' for r in rows]) + '\n'


class Workers:
    """One process per configuration; ``ask`` sends a request to one and waits (so only one
    computes at a time)."""

    def __init__(self, configs: dict[str, tuple[str, bool]], device: str, pipeline: bool):
        import multiprocessing as mp
        ctx = mp.get_context('spawn')
        self.conns, self.procs, self.info = {}, {}, {}
        for label, (runtime, half) in configs.items():
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child, runtime, half, device, pipeline),
                               daemon=True)
            proc.start()
            self.conns[label], self.procs[label] = parent, proc
        for label, conn in self.conns.items():  # loaded one after the other, then all idle
            self.info[label] = conn.recv()

    def ask(self, label: str, *req: Any) -> Any:
        self.conns[label].send(req)
        return self.conns[label].recv()

    def close(self) -> None:
        for label, conn in self.conns.items():
            conn.send(None)
            self.procs[label].join(30)


def bench_detectors(args, n_photos: int, n_video: int, report: dict) -> list[str]:
    """0a: ms per frame per runtime (photos, video) and the box agreement with torch."""
    configs = {k: v for k, v in DETECTORS.items() if v[0] in args.runtimes}
    w = Workers(configs, args.device, pipeline=False)
    try:
        names = [k for k in configs if w.info[k]['runtime'] == configs[k][0]]
        for k in set(configs) - set(names):
            print(f'({k} skipped: {w.info[k]["reason"]})')
        def ask(kind: str, name: str) -> dict[str, Callable[[int], Any]]:
            return {k: (lambda i, k=k: w.ask(k, kind, name, i)) for k in names}
        photo_ms = interleave(ask('detect', 'photos'), n_photos * args.repeats)
        video_ms = interleave(ask('detect', 'video'), n_video)
        got = {name: interleave(ask('boxes', name), n) for name, n in
               (('photos', n_photos), ('video', n_video))}
    finally:
        w.close()
    rows, ref = [], 'torch'
    for k in names:
        ious = {s: [min_iou(a, b) for a, b in zip(got[s][ref], got[s][k])] for s in got}
        p, v = statistics.median(photo_ms[k]), statistics.median(video_ms[k])
        rows.append([k, p, statistics.median(photo_ms[ref]) / p, v,
                     statistics.median(video_ms[ref]) / v, np.nanmin(ious['photos']),
                     np.nanmin(ious['video']),
                     sum(x != x for x in ious['photos'] + ious['video'])])
        report.setdefault('detectors', {})[k] = {
            'photo_ms': photo_ms[k], 'video_ms': video_ms[k], 'min_iou': ious,
            'reason': w.info[k]['reason']}
    return [table(f'0a. Person detector per runtime (median ms per frame, each in its own '
                  f'process, frames interleaved; the {n_photos} photos at their own size x '
                  f'{args.repeats}, tracker off; the {n_video}-frame 640x480 video, ByteTrack)',
                  ['runtime', 'photos ms', 'x torch', 'video ms', 'x torch',
                   'min IoU vs torch (photos)', 'min IoU vs torch (video)',
                   'frames with another box count'], rows)]


def bench_end_to_end(args, n_video: int, report: dict) -> list[str]:
    """0b: detector + tracker + face baseline per frame, today (torch) vs default (auto)."""
    w = Workers(PIPELINES, args.device, pipeline=True)
    n = n_video * args.video_loops
    try:
        runs = [(k, 'e2e') for k in PIPELINES] + [('default: auto', 'e2e_no_reuse')]
        paths = {(k, kind): (lambda i, k=k, kind=kind: w.ask(k, kind, 'video', i))
                 for k, kind in runs}
        res = interleave(paths, n)
    finally:
        w.close()
    rows, base = [], None
    for (k, kind), samples in res.items():
        total = statistics.fmean(s['detect'] + s['emotions'] for s in samples)
        base = base or total
        calls = sum(s['calls'] for s in samples)
        face = sum(s['face'] for s in samples) / calls if calls else float('nan')
        label = f'{k} ({w.info[k]["runtime"]}){", reuse off" if kind != "e2e" else ""}'
        rows.append([label, n, statistics.fmean(s['detect'] for s in samples),
                     statistics.fmean(s['emotions'] for s in samples), total, 1e3 / total,
                     base / total, calls / n, statistics.fmean(s['persons'] for s in samples),
                     face])
        report.setdefault('end_to_end', {})[label] = samples
    return [table('0b. Default pipeline end to end on the 10 fps video (detector + ByteTrack + '
                  'face baseline in one process per configuration, frames interleaved)',
                  ['pipeline', 'frames', 'detector ms', 'emotions ms', 'total ms/frame',
                   'frames/s', 'x today', 'persons run/frame', 'persons/frame',
                   'face search ms per person run'], rows)]


def run(args) -> list[str]:
    """Both tables (``args``: runtimes, repeats, video_loops, video_frames, device, report)."""
    n_video = min(len(PHOTOS) * HOLD, args.video_frames or len(PHOTOS) * HOLD)
    lines = bench_detectors(args, len(PHOTOS), n_video, args.report)
    return lines + bench_end_to_end(args, n_video, args.report)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument('--runtimes', default=','.join(r for r in dr.RUNTIMES if r != 'auto'),
                   help='runtimes compared in 0a (torch is the reference)')
    p.add_argument('--repeats', type=int, default=3, help='0a: passes over the photos')
    p.add_argument('--video-loops', type=int, default=1, help='0b: passes over the video')
    p.add_argument('--video-frames', type=int, default=0,
                   help='frames of the video used (default: all %d)' % (len(PHOTOS) * HOLD))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    add_arguments(p)
    p.add_argument('--device', default='cpu')
    p.add_argument('--json', type=Path, default=None)
    args = p.parse_args(argv)
    args.runtimes = args.runtimes.split(',')
    args.report = {}
    import torch
    print(f'# bench_runtimes: {os.cpu_count()} CPUs, torch {torch.__version__} '
          f'({torch.get_num_threads()} threads), installed: '
          + ', '.join(f'{d} {dr.installed_version(d) or "-"}'
                      for d in ('openvino', 'onnxruntime')) + '\n')
    for line in run(args):
        print(line, flush=True)
    if args.json:
        args.json.write_text(json.dumps(args.report, indent=1, default=str))
    return 0


if __name__ == '__main__':
    sys.exit(main())
