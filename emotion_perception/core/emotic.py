"""Read the EMOTIC data set (Kosti et al.) from its original .mat file or the common CSV export.

Layout of a data set root ``ROOT`` (either annotation form is enough)::

    ROOT/Annotations/Annotations.mat        original annotations (train, val, test)
    ROOT/{train,val,test}.csv               or the CSV export (also looked up in ROOT/emotic_pre/)
    ROOT/emotic/<folder>/<filename>         images; folder is e.g. 'mscoco/images'

The .mat holds struct arrays ``train``/``val``/``test`` (1 x N images) with the fields filename,
folder, image_size (struct n_col, n_row), original_database and person (1 x P struct array).
A train person has body_bbox [x1 y1 x2 y2], annotations_categories (struct with a
``categories`` cell of names), annotations_continuous (struct valence, arousal, dominance),
gender and age. A val/test person has one annotations_categories/annotations_continuous entry
per annotator plus combined_categories (cell of names) and combined_continuous (struct), which
are the ground truth used here, as in EMOTIC's own evaluation.

The CSV export (``Index,Folder,Filename,Image Size,BBox,Categorical_Labels,Continuous_Labels,
Gender,Age``) holds one row per annotated person, list cells written as Python literals
(parsed with ``ast.literal_eval``, never ``eval``); for val/test it holds the combined labels.

Persons without categories or with a missing (NaN) valence/arousal/dominance are skipped, as the
CSV export does; ``EmoticPerson.person`` counts only the kept persons of an image, so both
sources give the same keys. Body boxes from the .mat are clipped to the image, as in the export.
"""
from __future__ import annotations

import ast
import csv
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from .categories import CATEGORY_INDEX, EMOTIC_CATEGORIES
from .types import BBox

LOG = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ('train', 'val', 'test')
FORMATS: tuple[str, ...] = ('auto', 'mat', 'csv')
MAT_RELPATH = Path('Annotations') / 'Annotations.mat'
IMAGES_DIRNAME = 'emotic'
#: where the CSV export is looked for, relative to ROOT, in order
CSV_DIRS: tuple[str, ...] = ('.', 'emotic_pre')
CSV_HEADER: tuple[str, ...] = ('Index', 'Folder', 'Filename', 'Image Size', 'BBox',
                               'Categorical_Labels', 'Continuous_Labels', 'Gender', 'Age')

_LAYOUT_HELP = (
    'ROOT must hold the EMOTIC annotations as Annotations/Annotations.mat (the original '
    'release) or as train.csv / val.csv / test.csv (the common CSV export, in ROOT or '
    'ROOT/emotic_pre), and the images under ROOT/emotic/<folder>/<filename>')


class EmoticError(ValueError):
    """The EMOTIC files are missing or malformed (the message says which and what to do)."""


class EmoticNotFoundError(EmoticError, FileNotFoundError):
    """A required EMOTIC file is missing."""


@dataclass(frozen=True)
class EmoticPerson:
    """One annotated person of EMOTIC.

    Attributes:
        image_path: the image file, ``ROOT/emotic/<folder>/<filename>``.
        image_key: ``'<folder>/<filename>'``: the image's id, independent of ROOT.
        person: index of this person among the kept persons of the image (0-based).
        bbox: body box, xyxy pixels of the full image.
        labels: true categories, unique, in ``EMOTIC_CATEGORIES`` order.
        vad: true (valence, arousal, dominance) on the 1-10 scale.
        gender: 'Male' / 'Female' (as annotated).
        age: 'Kid' / 'Teenager' / 'Adult' (as annotated).
        image_size: (width, height) in pixels as annotated (n_col, n_row).
    """

    image_path: Path
    image_key: str
    person: int
    bbox: BBox
    labels: tuple[str, ...]
    vad: tuple[float, float, float]
    gender: str = ''
    age: str = ''
    image_size: tuple[int, int] = (0, 0)

    @property
    def key(self) -> tuple[str, int]:
        """(image_key, person): unique within a split."""
        return self.image_key, self.person

    def label_vector(self) -> np.ndarray:
        """Multi-hot bool array of shape (26,) in ``EMOTIC_CATEGORIES`` order."""
        out = np.zeros(len(EMOTIC_CATEGORIES), dtype=bool)
        out[[CATEGORY_INDEX[name] for name in self.labels]] = True
        return out


def canonical_labels(names: Iterable[str], where: str = '') -> tuple[str, ...]:
    """Unique category names in EMOTIC order.

    Raises:
        EmoticError: a name that is not one of the 26 categories.
    """
    names = [str(n).strip() for n in names]
    unknown = sorted(set(names) - set(CATEGORY_INDEX))
    if unknown:
        raise EmoticError(f'{where}unknown EMOTIC categories {unknown}; '
                          f'valid: {", ".join(EMOTIC_CATEGORIES)}')
    return tuple(sorted(set(names), key=CATEGORY_INDEX.__getitem__))


# -- .mat ----------------------------------------------------------------------------------------
def _strings(value: Any) -> list[str]:
    """All strings inside a loadmat value (char array, cell array, nested), in order."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, bytes):
        return [value.decode()]
    if isinstance(value, np.ndarray):
        if value.dtype.kind in 'US':
            return [str(v) for v in value.ravel().tolist()]
        if value.dtype == object:
            return [s for v in value.ravel() for s in _strings(v)]
    return []


def _string(value: Any) -> str:
    found = _strings(value)
    return found[0] if found else ''


def _floats(value: Any) -> list[float]:
    arr = np.asarray(value)
    if arr.dtype == object:
        return [f for v in arr.ravel() for f in _floats(v)]
    if arr.dtype.kind not in 'biuf':
        return []
    return [float(v) for v in arr.ravel()]


def _first_record(value: Any) -> np.void | None:
    """The first element of a (possibly empty) struct array, or None."""
    arr = np.asarray(value)
    if arr.dtype.names is None or arr.size == 0:
        return None
    return arr.ravel()[0]


def _field(record: Any, name: str) -> Any:
    names = record.dtype.names or ()
    if name not in names:
        raise EmoticError(f'Annotations.mat: struct has no field {name!r} (fields: {names}); '
                          f'is this the original EMOTIC Annotations.mat?')
    return record[name]


def _mat_vad(value: Any) -> tuple[float, float, float] | None:
    rec = _first_record(value)
    if rec is None:
        return None
    out = []
    for dim in ('valence', 'arousal', 'dominance'):
        vals = _floats(_field(rec, dim))
        if not vals or not math.isfinite(vals[0]):
            return None
        out.append(vals[0])
    return out[0], out[1], out[2]


def _mat_categories(person: np.void, split: str) -> list[str]:
    if split == 'train':
        rec = _first_record(_field(person, 'annotations_categories'))
        return [] if rec is None else _strings(_field(rec, 'categories'))
    return _strings(_field(person, 'combined_categories'))


def _clip_box(box: list[float], width: int, height: int) -> BBox:
    x1, y1, x2, y2 = box
    if width > 0 and height > 0:
        x1, x2 = (min(float(width), max(0.0, v)) for v in (x1, x2))
        y1, y2 = (min(float(height), max(0.0, v)) for v in (y1, y2))
    return BBox(float(x1), float(y1), float(x2), float(y2))


def read_mat(mat_path: Path | str, split: str, images_root: Path | str) -> list[EmoticPerson]:
    """Annotated persons of ``split`` from an EMOTIC ``Annotations.mat``.

    Args:
        mat_path: the .mat file.
        split: 'train', 'val' or 'test'.
        images_root: the folder holding ``<folder>/<filename>`` (``ROOT/emotic``).
    """
    from scipy.io import loadmat

    mat_path, images_root = Path(mat_path), Path(images_root)
    try:
        mat = loadmat(str(mat_path), variable_names=[split])
    except Exception as exc:  # scipy raises several types for a corrupt file
        raise EmoticError(f'cannot read {mat_path}: {exc}') from exc
    if split not in mat:
        raise EmoticError(f'{mat_path} has no {split!r} struct array (has {sorted(k for k in mat if not k.startswith("__"))})')
    images = np.asarray(mat[split])
    if images.dtype.names is None:
        raise EmoticError(f'{mat_path}: {split!r} is not a struct array')
    persons: list[EmoticPerson] = []
    kept_per_image: dict[str, int] = {}
    skipped = 0
    for img in images.ravel():
        filename, folder = _string(_field(img, 'filename')), _string(_field(img, 'folder'))
        size = _first_record(_field(img, 'image_size'))
        width = int(_floats(_field(size, 'n_col'))[0]) if size is not None else 0
        height = int(_floats(_field(size, 'n_row'))[0]) if size is not None else 0
        key = f'{folder}/{filename}'
        for person in np.asarray(_field(img, 'person')).ravel():
            categories = _mat_categories(person, split)
            vad = _mat_vad(_field(person, 'annotations_continuous' if split == 'train'
                                  else 'combined_continuous'))
            box = _floats(_field(person, 'body_bbox'))
            if not categories or vad is None or len(box) != 4:
                skipped += 1
                continue
            index = kept_per_image.get(key, 0)
            kept_per_image[key] = index + 1
            persons.append(EmoticPerson(
                image_path=images_root / folder / filename, image_key=key, person=index,
                bbox=_clip_box(box, width, height),
                labels=canonical_labels(categories, f'{mat_path} {split} {key}: '), vad=vad,
                gender=_string(_field(person, 'gender')), age=_string(_field(person, 'age')),
                image_size=(width, height)))
    LOG.debug('%s %s: %d persons, %d skipped (no categories or NaN VAD)',
              mat_path, split, len(persons), skipped)
    return persons


# -- CSV -----------------------------------------------------------------------------------------
def _literal(cell: str, what: str, where: str) -> Any:
    try:
        return ast.literal_eval(cell.strip())
    except (ValueError, SyntaxError) as exc:
        raise EmoticError(f'{where}: cannot parse {what} cell {cell!r} as a Python literal') from exc


def read_csv(csv_path: Path | str, images_root: Path | str) -> list[EmoticPerson]:
    """Annotated persons from one file of the EMOTIC CSV export (see the module docstring)."""
    csv_path, images_root = Path(csv_path), Path(images_root)
    persons: list[EmoticPerson] = []
    kept_per_image: dict[str, int] = {}
    with csv_path.open(newline='') as f:
        reader = csv.DictReader(f)
        missing = [c for c in CSV_HEADER if c not in (reader.fieldnames or [])]
        if missing:
            raise EmoticError(f'{csv_path}: missing columns {missing}; expected header '
                              f'{",".join(CSV_HEADER)}')
        for line, row in enumerate(reader, start=2):
            where = f'{csv_path}:{line}'
            size = _literal(row['Image Size'], 'Image Size', where)
            box = _literal(row['BBox'], 'BBox', where)
            cats = _literal(row['Categorical_Labels'], 'Categorical_Labels', where)
            cont = _literal(row['Continuous_Labels'], 'Continuous_Labels', where)
            if isinstance(cats, str):
                cats = [cats]
            if not isinstance(box, (list, tuple)) or len(box) != 4:
                raise EmoticError(f'{where}: BBox must be [x1, y1, x2, y2], got {box!r}')
            vad = tuple(float(v) for v in cont) if isinstance(cont, (list, tuple)) else ()
            if not cats or len(vad) != 3 or not all(math.isfinite(v) for v in vad):
                continue
            width, height = (int(size[0]), int(size[1])) if len(size) == 2 else (0, 0)
            folder, filename = row['Folder'].strip(), row['Filename'].strip()
            key = f'{folder}/{filename}'
            index = kept_per_image.get(key, 0)
            kept_per_image[key] = index + 1
            persons.append(EmoticPerson(
                image_path=images_root / folder / filename, image_key=key, person=index,
                bbox=BBox(*(float(v) for v in box)),
                labels=canonical_labels(cats, f'{where}: '), vad=(vad[0], vad[1], vad[2]),
                gender=row['Gender'].strip(), age=row['Age'].strip(),
                image_size=(width, height)))
    return persons


def find_csv(root: Path | str, split: str) -> Path | None:
    """``<split>.csv`` in ROOT or ROOT/emotic_pre, or None."""
    for sub in CSV_DIRS:
        path = Path(root) / sub / f'{split}.csv'
        if path.is_file():
            return path
    return None


def load_emotic(root: Path | str, split: str, fmt: str = 'auto') -> list[EmoticPerson]:
    """The annotated persons of one EMOTIC split.

    Args:
        root: data set root (see the module docstring for the files it must hold).
        split: 'train', 'val' or 'test'.
        fmt: 'mat' (Annotations/Annotations.mat), 'csv' (<split>.csv) or 'auto' (the .mat when
            present, else the CSV).

    Returns:
        Persons in file order (images in order, persons in order within an image).

    Raises:
        EmoticNotFoundError: ROOT or the annotation file is missing.
        EmoticError: bad split/format name or a malformed file.
    """
    if split not in SPLITS:
        raise EmoticError(f'unknown EMOTIC split {split!r}; choose one of {SPLITS}')
    if fmt not in FORMATS:
        raise EmoticError(f'unknown EMOTIC format {fmt!r}; choose one of {FORMATS}')
    root = Path(root).expanduser()
    if not root.is_dir():
        raise EmoticNotFoundError(f'EMOTIC root {root} is not a directory. {_LAYOUT_HELP}')
    images_root = root / IMAGES_DIRNAME
    mat_path = root / MAT_RELPATH
    if fmt == 'mat' or (fmt == 'auto' and mat_path.is_file()):
        if not mat_path.is_file():
            raise EmoticNotFoundError(f'{mat_path} not found. {_LAYOUT_HELP}')
        persons = read_mat(mat_path, split, images_root)
    else:
        csv_path = find_csv(root, split)
        if csv_path is None:
            tried = ', '.join(str(root / d / f'{split}.csv') for d in CSV_DIRS)
            extra = '' if fmt == 'csv' else f', {mat_path}'
            raise EmoticNotFoundError(f'no EMOTIC annotations for split {split!r} '
                                      f'(tried {tried}{extra}). {_LAYOUT_HELP}')
        persons = read_csv(csv_path, images_root)
    if not images_root.is_dir():
        LOG.warning('EMOTIC images folder %s does not exist; images will fail to load', images_root)
    return persons


__all__ = ['CSV_HEADER', 'EmoticError', 'EmoticNotFoundError', 'EmoticPerson', 'FORMATS',
           'SPLITS', 'canonical_labels', 'find_csv', 'load_emotic', 'read_csv', 'read_mat']
