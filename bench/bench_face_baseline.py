#!/usr/bin/env python3
"""Latency of the face-only baseline backend (MTCNN or Haar face + mini-Xception) on real photos.

Prints a table: load time, then per-frame and per-person milliseconds (median over repeats,
with the preprocess / inference / postprocess split) for 1 person and 4 persons with a face
(a 2x2 mosaic of astronaut.png), and for bus.jpg's 4 persons (2 faces towards the camera).

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 .venv/bin/python bench/bench_face_baseline.py \
        [--face-detector mtcnn|haar]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault('HF_HUB_OFFLINE', '1')

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from emotion_perception.core.backends import create_backend  # noqa: E402
from emotion_perception.core.model_files import sample_image_paths  # noqa: E402
from emotion_perception.core.types import BBox, Status  # noqa: E402

#: Hand-drawn person boxes (xyxy pixels) on the sample photographs.
ASTRONAUT_BOX = (60.0, 20.0, 470.0, 512.0)
BUS_BOXES = [(50, 397, 245, 903), (224, 405, 346, 861), (667, 388, 810, 878), (0, 557, 76, 861)]


def _rgb(name: str) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(sample_image_paths()[name])), cv2.COLOR_BGR2RGB)


def _cases() -> list[tuple[str, np.ndarray, list[BBox]]]:
    astro = _rgb('astronaut')
    h, w = astro.shape[:2]
    mosaic = np.concatenate([np.concatenate([astro, astro], axis=1)] * 2, axis=0)
    x1, y1, x2, y2 = ASTRONAUT_BOX
    four = [BBox(x1 + dx, y1 + dy, x2 + dx, y2 + dy) for dy in (0, h) for dx in (0, w)]
    return [('astronaut, 1 person', astro, [BBox(*ASTRONAUT_BOX)]),
            ('astronaut 2x2, 4 persons', mosaic, four),
            ('bus.jpg, 4 persons', _rgb('bus'), [BBox(*map(float, b)) for b in BUS_BOXES])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--repeats', type=int, default=20, help='timed runs per case')
    parser.add_argument('--device', default='auto', help="torch device ('auto', 'cpu', 'cuda')")
    parser.add_argument('--face-detector', default='mtcnn', choices=('mtcnn', 'haar'),
                        help='face_baseline face_detector option')
    args = parser.parse_args()

    loads = []
    for _ in range(3):
        backend = create_backend('face_baseline', {'device': args.device,
                                                   'face_detector': args.face_detector})
        t0 = time.perf_counter()
        backend.load()
        loads.append((time.perf_counter() - t0) * 1e3)
    print(f'face_baseline ({args.face_detector} faces) on {backend.device}, torch threads {torch.get_num_threads()}, '
          f'opencv {cv2.__version__}; median of {args.repeats} runs after 2 warm-up runs')
    print(f'load (HDF5 -> torch, face detector): {statistics.median(loads):.1f} ms '
          f'(median of 3; first {loads[0]:.1f} ms)\n')
    header = (f'{"case":<26} {"faces":>5} {"ms/frame":>9} {"ms/person":>10} {"prep":>7} '
              f'{"infer":>7} {"post":>6}')
    print(header)
    print('-' * len(header))
    for label, image, boxes in _cases():
        for _ in range(2):
            backend.predict(image, boxes)
        frame, prep, infer, post = [], [], [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            results = backend.predict(image, boxes)
            frame.append((time.perf_counter() - t0) * 1e3)
            tm = results[0].timings
            prep.append(tm.preprocess_ms)
            infer.append(tm.inference_ms)
            post.append(tm.postprocess_ms)
        faces = sum(r.status == Status.OK for r in results)
        med = statistics.median
        print(f'{label:<26} {faces:>5} {med(frame):>9.1f} {med(frame) / len(boxes):>10.1f} '
              f'{med(prep):>7.1f} {med(infer):>7.1f} {med(post):>6.2f}')


if __name__ == '__main__':
    main()
