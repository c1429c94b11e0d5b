#!/usr/bin/env python3
"""The offline pipeline on the sample photographs: people found, phantom boxes, people answered.

For each detector setting (image size, confidence) and face detector of the face baseline, runs
the offline person detector (no tracking) and the face baseline on bus.jpg, zidane.jpg, the
astronaut and Grace Hopper, and scores them against the hand annotations in
``emotion_perception.testing.sample_people``:

* found: annotated people with a detection (IoU >= 0.5); phantoms: detections that are no person
  (or a second box on one);
* answered: people whose face is visible answered OK *with their own face* (the face used lies
  on the annotated face); wrong face: persons answered OK from someone else's face.

    HF_HUB_OFFLINE=1 YOLO_OFFLINE=1 .venv/bin/python bench/bench_photos.py
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('YOLO_OFFLINE', '1')

import cv2  # noqa: E402

from emotion_perception.core.backends import create_backend  # noqa: E402
from emotion_perception.core.detector import DetectorOptions, PersonDetector  # noqa: E402
from emotion_perception.core.model_files import sample_image_paths  # noqa: E402
from emotion_perception.core.types import Status  # noqa: E402
from emotion_perception.testing.sample_people import PEOPLE, PhotoScore, evaluate_photos  # noqa: E402
from emotion_perception.tools.config import load_pipeline_config  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--device', default='cpu')
    args = parser.parse_args()
    images = {n: cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)
              for n, p in sample_image_paths().items() if n in PEOPLE}
    configured = load_pipeline_config().detector
    settings = [('ultralytics defaults', 640, 0.25),
                ('config/person_detector.yaml', configured.image_size, configured.confidence)]
    backends = {}
    for face in ('haar', 'mtcnn'):
        backends[face] = create_backend('face_baseline', {'device': args.device,
                                                          'face_detector': face})
        backends[face].load()
    header = (f'{"detector (imgsz, conf)":<38}{"faces":>6}{"found":>8}{"phantoms":>10}'
              f'{"answered":>10}{"wrong face":>11}{"phantoms OK":>12}{"ms/photo":>9}')
    print(header)
    print('-' * len(header))
    for label, imgsz, conf in settings:
        det = PersonDetector(DetectorOptions(device=args.device, image_size=imgsz,
                                             confidence=conf, tracker=''))
        det.load()

        def detect(image):
            ds = det.detect(image).detections
            return [d.bbox for d in ds], [d.confidence for d in ds]

        for face, backend in backends.items():
            def answer(image, boxes, backend=backend):
                h, w = image.shape[:2]
                results = backend.predict(image, boxes)
                faces = backend.preprocess(image, [b.clipped(w, h) for b in boxes]).face_boxes
                return [(r.status == Status.OK, f) for r, f in zip(results, faces)]

            evaluate_photos({'bus': images['bus']}, detect, answer)  # warm-up
            t0 = time.perf_counter()
            scores = evaluate_photos(images, detect, answer)
            ms = (time.perf_counter() - t0) * 1e3 / len(images)
            total = sum(scores.values(), PhotoScore())
            print(f'{f"{label} ({imgsz}, {conf})":<38}{face:>6}'
                  f'{f"{total.found}/{total.people}":>8}{f"{total.phantoms}/{total.boxes}":>10}'
                  f'{f"{total.answered}/{total.with_face}":>10}{total.wrong_face:>11}'
                  f'{total.phantoms_answered:>12}{ms:>9.0f}')
            if total.missed:
                print(f'{"":<44}not answered: {"; ".join(total.missed)}')
    print('\nfound = annotated people with a box (IoU >= 0.5); phantoms = boxes without a person '
          '(or a 2nd box on one) / all boxes;\nanswered = people with a visible face answered OK '
          'with their own face / people with a visible face')


if __name__ == '__main__':
    main()
