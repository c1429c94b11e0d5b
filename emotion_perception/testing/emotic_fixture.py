"""A tiny synthetic data set in EMOTIC's formats, for tests (EMOTIC itself is licensed).

``write_emotic_fixture(root)`` writes, from random numbers only::

    root/Annotations/Annotations.mat     struct arrays train/val/test with the original layout
    root/{train,val,test}.csv            the common CSV export of the same persons
    root/emotic/<folder>/<filename>      random JPEG images

The .mat mirrors the original nesting (as read by ``scipy.io.loadmat`` with its defaults):
each split is a 1 x N struct array of images (filename, folder, image_size{n_col, n_row},
original_database{name, info}, person); ``person`` is a 1 x P struct array. Train persons:
body_bbox (1 x 4 double), annotations_categories (1 x 1 struct, ``categories`` = 1 x K cell of
names), annotations_continuous (1 x 1 struct valence/arousal/dominance), gender, age. Val/test
persons: body_bbox, annotations_categories (1 x A struct, one per annotator),
combined_categories (1 x K cell), annotations_continuous (1 x A struct), combined_continuous
(1 x 1 struct), gender, age. A few persons have no categories or a NaN valence: loaders must
skip them (the CSV export leaves them out).

Run ``python -m emotion_perception.testing.emotic_fixture OUT`` to write one by hand.
"""
from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..core.categories import CATEGORY_INDEX, EMOTIC_CATEGORIES
from ..core.emotic import CSV_HEADER, IMAGES_DIRNAME, MAT_RELPATH, EmoticPerson
from ..core.types import BBox

FOLDERS: tuple[str, ...] = ('mscoco/images', 'framesdb/images', 'ade20k/images',
                            'emodb_small/images')
DEFAULT_IMAGES: Mapping[str, int] = {'train': 4, 'val': 6, 'test': 8}


def _struct_array(records: Sequence[Mapping[str, Any]], fields: Sequence[str]) -> np.ndarray:
    """A 1 x len(records) MATLAB struct array (numpy record array of object fields)."""
    arr = np.zeros((1, len(records)), dtype=[(f, object) for f in fields])
    for i, rec in enumerate(records):
        for f in fields:
            arr[0, i][f] = rec[f]
    return arr


def _cell(strings: Sequence[str]) -> np.ndarray:
    """A 1 x K MATLAB cell array of char arrays (0 x 0 when empty)."""
    if not strings:
        return np.zeros((0, 0), dtype=object)
    arr = np.empty((1, len(strings)), dtype=object)
    for i, s in enumerate(strings):
        arr[0, i] = s
    return arr


def _vad_struct(vad: Sequence[float]) -> np.ndarray:
    return _struct_array([{'valence': float(vad[0]), 'arousal': float(vad[1]),
                           'dominance': float(vad[2])}], ('valence', 'arousal', 'dominance'))


def _random_person(rng: np.random.Generator, width: int, height: int, split: str
                   ) -> dict[str, Any]:
    """Ground truth of one person: box, categories (random order), VAD, gender, age."""
    x1 = int(rng.integers(0, width // 2))
    y1 = int(rng.integers(0, height // 2))
    x2 = int(rng.integers(x1 + 8, width + 1))
    y2 = int(rng.integers(y1 + 8, height + 1))
    n_labels = int(rng.integers(1, 5))
    cats = [EMOTIC_CATEGORIES[i] for i in rng.choice(len(EMOTIC_CATEGORIES), n_labels,
                                                     replace=False)]
    if split == 'train':
        vad = [float(v) for v in rng.integers(1, 11, size=3)]
    else:  # combined values: means over annotators, e.g. 5.5 (exact in binary and in text)
        vad = [float(v) / 2.0 for v in rng.integers(2, 21, size=3)]
    return {'bbox': [x1, y1, x2, y2], 'categories': cats, 'vad': vad,
            'gender': str(rng.choice(['Male', 'Female'])),
            'age': str(rng.choice(['Kid', 'Teenager', 'Adult']))}


def _mat_person(p: Mapping[str, Any], split: str, rng: np.random.Generator) -> dict[str, Any]:
    bbox = np.asarray(p['bbox'], dtype=np.float64).reshape(1, 4)
    if split == 'train':
        return {'body_bbox': bbox,
                'annotations_categories': _struct_array([{'categories': _cell(p['categories'])}],
                                                        ('categories',)),
                'annotations_continuous': _vad_struct(p['vad']),
                'gender': p['gender'], 'age': p['age']}
    # val/test: per-annotator entries (random subsets / jitter) plus the combined ground truth
    n_ann = int(rng.integers(1, 4))
    per_ann_cats = [{'categories': _cell(list(p['categories'][:max(1, len(p['categories']) - a)]))}
                    for a in range(n_ann)]
    per_ann_cont = [{'valence': float(rng.integers(1, 11)), 'arousal': float(rng.integers(1, 11)),
                     'dominance': float(rng.integers(1, 11))} for _ in range(n_ann)]
    return {'body_bbox': bbox,
            'annotations_categories': _struct_array(per_ann_cats, ('categories',)),
            'combined_categories': _cell(p['categories']),
            'annotations_continuous': _struct_array(per_ann_cont,
                                                    ('valence', 'arousal', 'dominance')),
            'combined_continuous': _vad_struct(p['vad']),
            'gender': p['gender'], 'age': p['age']}


TRAIN_PERSON_FIELDS = ('body_bbox', 'annotations_categories', 'annotations_continuous',
                       'gender', 'age')
EVAL_PERSON_FIELDS = ('body_bbox', 'annotations_categories', 'combined_categories',
                      'annotations_continuous', 'combined_continuous', 'gender', 'age')
IMAGE_FIELDS = ('filename', 'folder', 'image_size', 'original_database', 'person')


def write_emotic_fixture(root: Path | str, n_images: Mapping[str, int] | None = None,
                         seed: int = 0, max_persons: int = 3,
                         image_size: tuple[int, int] = (96, 72)) -> dict[str, list[EmoticPerson]]:
    """Write a tiny EMOTIC-format data set under ``root`` (see the module docstring).

    Args:
        root: output folder (created).
        n_images: images per split (default ``DEFAULT_IMAGES``).
        seed: everything (images, boxes, labels) derives from it.
        max_persons: 1..max_persons persons per image.
        image_size: (width, height) of the base size; images vary by up to +50 %.

    Returns:
        split -> the persons a correct loader must return (skipped persons left out), in order.
    """
    import cv2
    from scipy.io import savemat

    root = Path(root)
    rng = np.random.default_rng(seed)
    n_images = dict(DEFAULT_IMAGES if n_images is None else n_images)
    mat: dict[str, np.ndarray] = {}
    expected: dict[str, list[EmoticPerson]] = {}
    for split, count in n_images.items():
        images, rows, kept = [], [], []
        for i in range(count):
            folder = FOLDERS[i % len(FOLDERS)]
            filename = f'{split}_{i:04d}.jpg'
            width = int(image_size[0] * rng.uniform(1.0, 1.5))
            height = int(image_size[1] * rng.uniform(1.0, 1.5))
            path = root / IMAGES_DIRNAME / folder / filename
            path.parent.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
            if not cv2.imwrite(str(path), pixels):
                raise OSError(f'cv2.imwrite failed for {path}')
            persons_gt = [_random_person(rng, width, height, split)
                          for _ in range(int(rng.integers(1, max_persons + 1)))]
            # every third image gets a person that loaders must skip (alternating reasons)
            if i % 3 == 1:
                bad = _random_person(rng, width, height, split)
                if (i // 3) % 2 == 0:
                    bad['categories'] = []
                else:
                    bad['vad'][0] = math.nan
                persons_gt.insert(int(rng.integers(0, len(persons_gt) + 1)), bad)
            fields = TRAIN_PERSON_FIELDS if split == 'train' else EVAL_PERSON_FIELDS
            person_arr = _struct_array([_mat_person(p, split, rng) for p in persons_gt], fields)
            images.append({
                'filename': filename, 'folder': folder,
                'image_size': _struct_array([{'n_col': float(width), 'n_row': float(height)}],
                                            ('n_col', 'n_row')),
                'original_database': _struct_array(
                    [{'name': folder.split('/')[0],
                      'info': _struct_array([{'image_id': float(i)}], ('image_id',))}],
                    ('name', 'info')),
                'person': person_arr})
            index = 0
            for p in persons_gt:
                if not p['categories'] or not all(math.isfinite(v) for v in p['vad']):
                    continue
                kept.append(EmoticPerson(
                    image_path=root / IMAGES_DIRNAME / folder / filename,
                    image_key=f'{folder}/{filename}', person=index,
                    bbox=BBox(*(float(v) for v in p['bbox'])),
                    labels=tuple(sorted(p['categories'], key=CATEGORY_INDEX.__getitem__)),
                    vad=(p['vad'][0], p['vad'][1], p['vad'][2]), gender=p['gender'],
                    age=p['age'], image_size=(width, height)))
                rows.append([len(rows), folder, filename, str([width, height]), str(p['bbox']),
                             str(list(p['categories'])), str(list(p['vad'])), p['gender'],
                             p['age']])
                index += 1
        mat[split] = _struct_array(images, IMAGE_FIELDS)
        expected[split] = kept
        with (root / f'{split}.csv').open('w', newline='') as f:
            writer = csv.writer(f)
            writer.writerow(CSV_HEADER)
            writer.writerows(rows)
    mat_path = root / MAT_RELPATH
    mat_path.parent.mkdir(parents=True, exist_ok=True)
    savemat(str(mat_path), mat)
    return expected


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('root', help='output folder')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--images', type=int, nargs=3, metavar=('TRAIN', 'VAL', 'TEST'),
                        default=[DEFAULT_IMAGES[s] for s in ('train', 'val', 'test')])
    args = parser.parse_args(argv)
    expected = write_emotic_fixture(args.root, dict(zip(('train', 'val', 'test'), args.images)),
                                    seed=args.seed)
    for split, persons in expected.items():
        print(f'{split}: {len(persons)} persons')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
