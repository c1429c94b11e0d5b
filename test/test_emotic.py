"""core.emotic: the fixture reads identically from Annotations.mat and from the CSV export."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.io import loadmat

from emotion_perception.core.categories import EMOTIC_CATEGORIES
from emotion_perception.core.emotic import (EmoticError, EmoticNotFoundError, canonical_labels,
                                            load_emotic)
from emotion_perception.testing.emotic_fixture import write_emotic_fixture


@pytest.fixture(scope='module')
def fixture(tmp_path_factory):
    root = tmp_path_factory.mktemp('emotic')
    return root, write_emotic_fixture(root, seed=7)


@pytest.mark.parametrize('split', ['train', 'val', 'test'])
def test_mat_and_csv_read_identically(fixture, split):
    root, expected = fixture
    from_mat = load_emotic(root, split, 'mat')
    from_csv = load_emotic(root, split, 'csv')
    assert from_mat == from_csv == expected[split]
    assert load_emotic(root, split) == from_mat          # auto prefers the .mat
    assert len({p.key for p in from_mat}) == len(from_mat)
    for p in from_mat:
        assert p.image_path.is_file()
        assert all(1.0 <= v <= 10.0 for v in p.vad)
        assert list(p.labels) == [c for c in EMOTIC_CATEGORIES if c in p.labels]
        assert p.label_vector().sum() == len(p.labels)
        w, h = p.image_size
        assert 0 <= p.bbox.x1 < p.bbox.x2 <= w and 0 <= p.bbox.y1 < p.bbox.y2 <= h


def test_fixture_has_real_mat_layout_and_skipped_persons(fixture):
    root, expected = fixture
    mat = loadmat(str(root / 'Annotations' / 'Annotations.mat'))
    test = mat['test']
    assert test.shape[0] == 1 and test.dtype.names == (
        'filename', 'folder', 'image_size', 'original_database', 'person')
    person = test[0, 0]['person'][0, 0]
    assert person.dtype.names == ('body_bbox', 'annotations_categories', 'combined_categories',
                                  'annotations_continuous', 'combined_continuous', 'gender', 'age')
    assert mat['train'][0, 0]['person'][0, 0].dtype.names == (
        'body_bbox', 'annotations_categories', 'annotations_continuous', 'gender', 'age')
    n_mat = sum(img['person'].size for img in test.ravel())
    assert n_mat > len(expected['test'])                  # some persons had to be skipped


def test_skip_reasons_both_present(fixture):
    root, _ = fixture
    mat = loadmat(str(root / 'Annotations' / 'Annotations.mat'))
    no_cats = nan_vad = 0
    for img in mat['val'].ravel():
        for person in img['person'].ravel():
            no_cats += person['combined_categories'].size == 0
            nan_vad += math.isnan(float(person['combined_continuous'][0, 0]['valence'][0, 0]))
    assert no_cats >= 1 and nan_vad >= 1


def test_csv_literals_are_not_evaluated(tmp_path):
    (tmp_path / 'emotic').mkdir()
    (tmp_path / 'test.csv').write_text(
        'Index,Folder,Filename,Image Size,BBox,Categorical_Labels,Continuous_Labels,Gender,Age\n'
        '0,f,a.jpg,"[10, 10]","[0, 0, 5, 5]","__import__(\'os\').getcwd()","[5, 5, 5]",Male,Adult\n')
    with pytest.raises(EmoticError, match='Categorical_Labels'):
        load_emotic(tmp_path, 'test', 'csv')


def test_errors_say_what_root_must_hold(tmp_path):
    with pytest.raises(EmoticNotFoundError, match='Annotations/Annotations.mat'):
        load_emotic(tmp_path, 'test')
    with pytest.raises(EmoticNotFoundError, match='test.csv'):
        load_emotic(tmp_path, 'test', 'csv')
    with pytest.raises(FileNotFoundError, match='not a directory'):
        load_emotic(tmp_path / 'nope', 'test')
    with pytest.raises(EmoticError, match='split'):
        load_emotic(tmp_path, 'dev')
    with pytest.raises(EmoticError, match='format'):
        load_emotic(tmp_path, 'test', 'json')
    with pytest.raises(EmoticError, match='unknown EMOTIC categories'):
        canonical_labels(['Happiness', 'Joy'])
    assert canonical_labels(['Peace', 'Anger', 'Peace']) == ('Anger', 'Peace')


def test_csv_in_emotic_pre_folder(tmp_path):
    expected = write_emotic_fixture(tmp_path, {'val': 3}, seed=1)
    (tmp_path / 'Annotations' / 'Annotations.mat').unlink()
    (tmp_path / 'emotic_pre').mkdir()
    (tmp_path / 'val.csv').rename(tmp_path / 'emotic_pre' / 'val.csv')
    assert load_emotic(tmp_path, 'val') == expected['val']
    assert np.all([p.person >= 0 for p in expected['val']])
