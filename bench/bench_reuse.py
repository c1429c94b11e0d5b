#!/usr/bin/env python3
"""Per-track reuse: model calls per frame on a 30 Hz sequence with several tracked people.

Five tracked persons on a 30 Hz camera: three standing (box jitter of +-2 px), one walking
slowly (3 px per frame), one walking fast (15 px per frame). The same frames and boxes go
through ``EmotionPipeline`` with reuse off and on (default ReuseOptions: re-run when IoU with
the cached box < 0.6, size change > 25 %, or age > 2 s), in the same run, with a tiny random
LLaVA (``vlm``, score mode) so the table shows real calls and their cost.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_reuse.py [--frames 30] [--fps 30]
"""
from __future__ import annotations

import os

os.environ.setdefault('HF_HUB_OFFLINE', '1')

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emotion_perception.core.backends import create_backend  # noqa: E402
from emotion_perception.core.pipeline import EmotionPipeline, ReuseOptions  # noqa: E402
from emotion_perception.core.types import BBox, PersonDetection, Status  # noqa: E402
from emotion_perception.testing.tiny_models import build_tiny_llava  # noqa: E402

#: (track id, first box xyxy, pixels per frame along x)
PEOPLE = [('1', (20, 60, 120, 300), 0.0), ('2', (140, 50, 240, 310), 0.0),
          ('3', (260, 70, 360, 300), 0.0), ('4', (380, 60, 470, 300), 3.0),
          ('5', (0, 40, 90, 280), 15.0)]
WIDTH, HEIGHT = 640, 360


def sequence(frames: int, fps: float, seed: int = 0):
    """Yields (stamp_s, [PersonDetection]) for each frame."""
    rng = np.random.default_rng(seed)
    for i in range(frames):
        dets = []
        for tid, (x1, y1, x2, y2), speed in PEOPLE:
            dx = (speed * i) % (WIDTH - (x2 - x1))
            jitter = rng.integers(-2, 3, size=4)
            box = BBox(x1 + dx + jitter[0], y1 + jitter[1], x2 + dx + jitter[2], y2 + jitter[3])
            dets.append(PersonDetection(bbox=box, confidence=0.9, track_id=tid))
        yield i / fps, dets


def run(backend, reuse: ReuseOptions, frames: int, fps: float, image: np.ndarray) -> dict:
    pipeline = EmotionPipeline(backend, reuse)
    calls, hits, per_track_calls, t0 = [], 0, {p[0]: 0 for p in PEOPLE}, time.perf_counter()
    for stamp, dets in sequence(frames, fps):
        out = pipeline.process(image, dets, stamp)
        calls.append(out.model_calls)
        hits += out.cache_hits
        for det, res in zip(dets, out.results):
            if res.status == Status.OK:
                per_track_calls[det.track_id] += 1
    total_s = time.perf_counter() - t0
    return {'calls': sum(calls), 'calls_per_frame': sum(calls) / frames, 'cache_hits': hits,
            'ms_per_frame': total_s * 1e3 / frames, 'per_track': per_track_calls}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--frames', type=int, default=30)
    ap.add_argument('--fps', type=float, default=30.0)
    args = ap.parse_args()
    image = np.random.default_rng(1).integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        backend = create_backend('vlm', {'model': str(build_tiny_llava(Path(tmp) / 'llava')),
                                         'device': 'cpu'})
        backend.load()
        rows = [('reuse off', run(backend, ReuseOptions(enabled=False), args.frames, args.fps,
                                  image)),
                ('reuse on (defaults)', run(backend, ReuseOptions(), args.frames, args.fps,
                                            image))]
    print(f'## Per-track reuse: {args.frames} frames at {args.fps:g} Hz, {len(PEOPLE)} tracked '
          'persons (3 standing, 1 walking 3 px/frame, 1 walking 15 px/frame); tiny random '
          'LLaVA, score mode, CPU\n')
    print('| run | model calls | calls/frame | cache hits | ms/frame | calls per track '
          '(1,2,3 standing; 4 slow; 5 fast) |')
    print('|---|---|---|---|---|---|')
    for name, r in rows:
        per = ', '.join(str(r['per_track'][p[0]]) for p in PEOPLE)
        print(f"| {name} | {r['calls']} | {r['calls_per_frame']:.2f} | {r['cache_hits']} | "
              f"{r['ms_per_frame']:.1f} | {per} |")
    off, on = rows[0][1], rows[1][1]
    print(f"\nreuse cuts model calls by {off['calls'] / max(1, on['calls']):.1f}x "
          f"({off['calls_per_frame']:.2f} -> {on['calls_per_frame']:.2f} per frame)")
    return 0


if __name__ == '__main__':
    sys.exit(main())
